"""The scenario while it plays: what each point shows now, what the agent wrote, which
fault is in force. The kinds' simulators ask it (:class:`simulators.devicemap.kinds.World`)
at each request; the simulation's clock starts it and its timeline sets the faults.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from kernel.model import Value
from simulators.devicemap.cycle import PartCycle, PointKey
from simulators.devicemap.kinds import ActiveFault
from simulators.devicemap.loader import LoadedScenario
from simulators.devicemap.scenario import TriggerReads
from simulators.devicemap.signals import Signal, signal

MAX_WRITES = 10_000
"""Agent writes kept as ground truth (the oldest are dropped first)."""


@dataclass(frozen=True)
class Write:
    """A value the agent wrote to a point, at ``t`` seconds from the start."""

    t: float
    device: str
    point: str
    value: Value


class ScriptedWorld:
    """Points driven by scripts and part cycles, faults by the timeline; the clock starts at
    :meth:`start` (before it, every script shows its value at 0 s)."""

    def __init__(self, loaded: LoadedScenario | None = None) -> None:
        self._t0: float | None = None
        self.signals: dict[PointKey, Signal] = {}
        self.cycles: dict[str, PartCycle] = {}
        self._cycle_of: dict[PointKey, PartCycle] = {}
        self.faults: dict[str, ActiveFault] = {}
        self.writes: deque[Write] = deque(maxlen=MAX_WRITES)
        self.reads: dict[str, TriggerReads] = {}
        if loaded is None:
            return
        scenario = loaded.scenario
        self.reads = dict(scenario.reads)
        for device, scripts in scenario.points.items():
            for point, script in scripts.items():
                self.signals[(device, point)] = signal(script, device, point, scenario.seed)
        for station, roles in loaded.roles.items():
            parts = scenario.stations[station].part_cycle
            assert parts is not None
            cycle = PartCycle(
                roles,
                period=parts.period,
                serial=parts.serial,
                first=parts.first,
                pulse=parts.pulse,
                nok_ratio=parts.nok_ratio,
                seed=scenario.seed,
            )
            self.cycles[station] = cycle
            for key in roles.driven():
                self._cycle_of[key] = cycle

    def start(self) -> None:
        self._t0 = time.monotonic()

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def now(self) -> float:
        """Seconds since the scenario started (0 before)."""
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def at(self, t: float) -> float:
        """The monotonic time of scenario time ``t`` (the clock must be started)."""
        assert self._t0 is not None
        return self._t0 + t

    # ---- World -------------------------------------------------------------------------------

    def value(self, device: str, point: str) -> Value:
        key = (device, point)
        cycle = self._cycle_of.get(key)
        if cycle is not None:
            return cycle.value(key, self.now())
        fn = self.signals.get(key)
        return None if fn is None else fn(self.now())

    def written(self, device: str, point: str, value: Value) -> None:
        now = self.now()
        self.writes.append(Write(now, device, point, value))
        cycle = self._cycle_of.get((device, point))
        if cycle is not None:
            cycle.written((device, point), value, now)

    def fault(self, device: str) -> ActiveFault | None:
        return self.faults.get(device)

    def trigger_answers(self, device: str) -> TriggerReads | None:
        return self.reads.get(device)
