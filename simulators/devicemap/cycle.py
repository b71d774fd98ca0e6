"""A station's part cycle, as its PLC shows it: serials from a pattern, a counter, a result,
the trigger, and with a handshake the wait for the agent's data taken.

Free-running, part k (0, 1, ...) occupies ``[k * period, (k + 1) * period)`` from the start:
its serial and counter show from its first instant; in its last ``pulse`` seconds the result
is set and the trigger is active. With a handshake (the station's config has one) part k is
worked for ``period`` seconds, then holds data ready (the trigger) with its result until the
agent writes data taken; the PLC then drops data ready, waits for data taken to fall (or
clears it itself when the agent does not reset it) and starts part k + 1. The same levels as
:class:`simulators.station.HandshakePlc`, so no part is skipped whatever the agent's speed.

Everything the PLC shows is a function of the part number, so a test knows the ground truth
(:meth:`PartCycle.truth`) without asking the simulator. Clocked by the caller (seconds since
the scenario started), like the station simulators.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from kernel.model import Value

PointKey = tuple[str, str]
"""(device, point)."""


@dataclass(frozen=True)
class CycleRoles:
    """Which points a station's cycle drives, resolved from its config and its script."""

    station: str
    trigger: PointKey
    edge: str = "rising"
    trigger_numeric: bool = False
    serial: PointKey | None = None
    serial_numeric: bool = False
    counter: PointKey | None = None
    result: PointKey | None = None
    ok: Value = None
    nok: Value = None
    taken: PointKey | None = None
    """With a handshake: the agent's data taken (the trigger is data ready)."""
    reset: bool = True
    """With a handshake: the agent resets data taken; False: the PLC clears it itself."""

    def driven(self) -> dict[PointKey, str]:
        """Point -> its role, for every point the cycle drives."""
        roles = {self.trigger: "trigger"}
        for key, role in (
            (self.serial, "serial"),
            (self.counter, "counter"),
            (self.result, "result"),
            (self.taken, "data taken"),
        ):
            if key is not None:
                roles.setdefault(key, role)
        return roles


@dataclass(frozen=True)
class PartTruth:
    """What the PLC knows of part k."""

    k: int
    serial: str
    counter: int
    ok: bool


class Stage(StrEnum):
    WORKING = "working"
    READY = "ready"  # handshake: data ready on, waiting for data taken
    RELEASING = "releasing"  # handshake: data ready off, waiting for data taken to fall


class PartCycle:
    """One station's parts. ``now`` is seconds since the scenario started."""

    def __init__(
        self,
        roles: CycleRoles,
        *,
        period: float,
        serial: str,
        first: int,
        pulse: float,
        nok_ratio: float,
        seed: int,
    ) -> None:
        self.roles = roles
        self.period = period
        self.pattern = serial
        self.first = first
        self.pulse = min(pulse, period)
        self.nok_ratio = nok_ratio
        self.seed = seed
        self.handshake = roles.taken is not None
        # Handshake state (levels, as PLC logic has them).
        self.k = 0
        self.started = 0.0
        self.stage = Stage.WORKING
        self.taken = False
        self.released = 0
        """Handshake: parts whose data the agent took."""

    # ---- ground truth (pure) ---------------------------------------------------------------

    def serial(self, k: int) -> str:
        return self.pattern.format(n=self.first + k)

    def ok(self, k: int) -> bool:
        if self.nok_ratio <= 0:
            return True
        draw = random.Random(f"{self.seed}/{self.roles.station}/part/{k}").random()
        return draw >= self.nok_ratio

    def truth(self, k: int) -> PartTruth:
        return PartTruth(k, self.serial(k), k + 1, self.ok(k))

    def completed(self, now: float) -> int:
        """Parts whose trigger has gone active by ``now``."""
        if self.handshake:
            self.advance(now)
            return self.k + (self.stage is not Stage.WORKING)
        return max(0, int((now + self.pulse) // self.period))

    # ---- state -----------------------------------------------------------------------------

    def _position(self, now: float) -> tuple[int, bool]:
        """(part shown, whether its end is active: result set, trigger on)."""
        if self.handshake:
            self.advance(now)
            return self.k, self.stage is Stage.READY
        k = max(0, int(now // self.period))
        return k, now - k * self.period >= self.period - self.pulse

    def advance(self, now: float) -> None:
        """Handshake: bring the state up to ``now``."""
        if self.stage is Stage.WORKING and now - self.started >= self.period:
            self.stage = Stage.READY
        if self.stage is Stage.READY and self.taken:
            self.stage = Stage.RELEASING
            self.released += 1
            if not self.roles.reset:
                self.taken = False  # the PLC clears it: the agent never will
        if self.stage is Stage.RELEASING and not self.taken:
            self.k += 1
            self.started = now
            self.stage = Stage.WORKING

    def value(self, key: PointKey, now: float) -> Value:
        """What the cycle shows on point ``key`` now (None: it shows nothing there yet)."""
        r = self.roles
        k, active = self._position(now)
        if key == r.taken:
            return self.taken
        if key == r.trigger:
            return self._trigger(k, active)
        if key == r.serial:
            text = self.serial(k)
            return int(text) if r.serial_numeric else text
        if key == r.counter:
            return k + 1
        if key == r.result:
            done = k if active else k - 1  # the result of the last part finished
            if done < 0:
                return None
            return r.ok if self.ok(done) else r.nok
        return None

    def _trigger(self, k: int, active: bool) -> Value:
        r = self.roles
        if r.edge == "change":
            ends = k + int(active)  # part ends seen so far
            return ends if r.trigger_numeric else bool(ends % 2)
        level = active if r.edge == "rising" else not active
        return int(level) if r.trigger_numeric else level

    def written(self, key: PointKey, value: Value, now: float) -> None:
        """The agent wrote a point of the cycle (data taken)."""
        if key != self.roles.taken:
            return
        self.advance(now)  # a take that arrives after the part got ready is on time
        self.taken = bool(value)
        self.advance(now)
