"""What kind of scale it is (:class:`ScaleModel`) and its physics (:class:`ScaleState`).

The load follows a scenario a test writes: :meth:`ScaleSimulator.place` puts a load on the pan;
the reading ramps towards it (dynamic) and settles (stable) ``settle_time`` later. The ground
truth is kept for the test: every :class:`Placement` (what, when, stable from when), and
:meth:`ScaleSimulator.expected_weight`, the stable reading once it settles. Zero and tare move
the reading as on a scale: the displayed weight is the load minus the zero point minus the
tare. Above ``capacity`` the scale is in overload; below minus the zero range, in underload.

No I/O and no clock: the state is told the time (``now``). A model is checked against what
its protocol can express (Toledo's unit codes and six digits, SBI's eight characters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class ScaleProtocol(StrEnum):
    MTSICS = "mtsics"
    SBI = "sbi"
    TOLEDO = "toledo"


_TOLEDO_UNIT_CODES = {"lb": 0, "kg": 0, "g": 1, "t": 2}
"""Toledo's unit codes (status C): the units a Toledo model may have; :mod:`.formats` sends them."""


@dataclass(frozen=True)
class ScaleModel:
    """What kind of scale it is and how it is configured."""

    protocol: ScaleProtocol = ScaleProtocol.MTSICS
    capacity: float = 6200.0
    unit: str = "g"
    decimals: int = 2
    settle_time: float = 0.3
    """Seconds from placing a load until the reading is stable."""
    zero_range: float = 0.02
    """Zeroing is possible within +- this fraction of capacity around the power-up zero; a load
    below minus that is an underload (the pan lifted off)."""
    stable_timeout: float = 2.0
    """How long ``S``/``Z``/``T`` wait for stability before answering ``I``."""
    repeat_interval: float = 0.05
    """SIR, SBI auto print and Toledo continuous output: one reading every this many seconds."""
    serial_number: str = "0123456789"
    sbi_id_codes: bool = False
    """SBI: 22-character lines with an ID code (``N``/``G#``) instead of 16-character lines."""
    sbi_auto_print: bool = False
    """SBI: print every ``repeat_interval`` without being asked."""
    toledo_checksum: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.decimals <= 5:
            raise ValueError("decimals must be 0..5 (what Toledo status A can express)")
        if self.protocol is ScaleProtocol.TOLEDO:
            if self.unit not in _TOLEDO_UNIT_CODES:
                raise ValueError(f"Toledo continuous output has no code for unit {self.unit!r}")
            if round(self.capacity * 10**self.decimals) > 999_999:
                raise ValueError("capacity does not fit the six digits of a Toledo frame")
        if self.protocol is ScaleProtocol.SBI and len(f"{self.capacity:.{self.decimals}f}") > 8:
            raise ValueError("capacity does not fit the eight weight characters of an SBI line")

    @property
    def zero_limit(self) -> float:
        return self.zero_range * self.capacity


@dataclass(frozen=True)
class Placement:
    """Ground truth: the load on the pan from ``placed_at``; stable from ``stable_at``."""

    load: float
    placed_at: float
    stable_at: float


@dataclass(frozen=True)
class Reading:
    """What the display shows at one moment."""

    value: float
    stable: bool
    overload: bool
    underload: bool
    net: bool


class ScaleState:
    """The scale's physics and memory, as pure functions of loop time ``now``."""

    def __init__(self, model: ScaleModel, now: float) -> None:
        self.model = model
        self.zero_point = 0.0
        self.tare = 0.0
        self.placements: list[Placement] = [Placement(0.0, now, now)]
        self._ramp_from = 0.0

    @property
    def current(self) -> Placement:
        return self.placements[-1]

    def place(self, load: float, now: float) -> Placement:
        self._ramp_from = self.raw(now)
        placement = Placement(load, now, now + self.model.settle_time)
        self.placements.append(placement)
        return placement

    def stable(self, now: float) -> bool:
        return now >= self.current.stable_at

    def raw(self, now: float) -> float:
        """What the load cell measures: towards the load with a decaying wobble."""
        p = self.current
        if self.stable(now):
            return p.load
        done = (now - p.placed_at) / (p.stable_at - p.placed_at)
        step = p.load - self._ramp_from
        wobble = 0.03 * step * math.sin(done * 6 * math.pi) * (1 - done)
        return self._ramp_from + step * (1 - (1 - done) ** 2) + wobble

    def reading(self, now: float) -> Reading:
        raw = self.raw(now)
        value = self._round(raw - self.zero_point - self.tare)
        return Reading(
            value=value,
            stable=self.stable(now),
            overload=raw > self.model.capacity,
            underload=raw < -self.model.zero_limit,
            net=self.tare != 0.0,
        )

    def zero(self, now: float) -> str | None:
        """Set the zero point to the load now; ``"+"``/``"-"`` when outside the zero range."""
        raw = self.raw(now)
        if raw > self.model.zero_limit:
            return "+"
        if raw < -self.model.zero_limit:
            return "-"
        self.zero_point = raw
        self.tare = 0.0
        return None

    def take_tare(self, now: float) -> str | None:
        """Tare the gross load now; ``"+"``/``"-"`` when outside the taring range."""
        raw = self.raw(now)
        gross = raw - self.zero_point
        if raw > self.model.capacity:
            return "+"
        if gross < 0:
            return "-"
        self.tare = self._round(gross)
        return None

    def reset(self) -> None:
        self.tare = 0.0

    def expected_weight(self) -> float:
        """The stable reading once the current load has settled (zero and tare as now)."""
        return self._round(self.current.load - self.zero_point - self.tare)

    def _round(self, value: float) -> float:
        return round(value, self.model.decimals) + 0.0  # + 0.0: no "-0.00"
