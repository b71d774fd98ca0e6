"""A simulated press-fit station, as its PLC exposes it over Modbus.

Parts flow through a fixed cycle: part ``k`` (0, 1, 2, ...) is at the station from
``t0 + k * cycle_time`` to ``t0 + (k + 1) * cycle_time``. Everything the PLC shows is a pure
function of the cycle number and the phase inside the cycle, so the ground truth (which serial
went with which cycle counter, which lot, which result) is known to any test without asking
the simulator, even one running in another process.

In the last tenth of a cycle (phase >= 0.9) the part is complete: ``result`` holds 1 (OK) or
2 (NOK) and the cycle-complete and data-ready coils are set. ``final_force`` and
``final_depth`` are the part's results and stay constant for the whole cycle, so any read in
that window sees the same values.

With ``handshake=True`` the station instead waits for the agent (see :class:`HandshakePlc`):
it holds each finished part until the agent has written "data taken", so no part is ever
skipped whatever the agent's speed. Its values are still the pure functions of the cycle
number; only *when* a cycle runs depends on the agent.

The register image is encoded here with ``struct``, independently of the driver's codec, so
an end-to-end test cannot pass on a decoding bug that both sides share.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# name: (address, type, word order, registers, unit, scale) -- the PLC's register list.
REGISTER_MAP: dict[str, tuple[int, str, str, int, str | None, float]] = {
    "cycle_counter": (0, "uint32", "ABCD", 2, None, 1.0),
    "temperature": (2, "float32", "CDAB", 2, "degC", 1.0),
    "force": (4, "float32", "ABCD", 2, "kN", 1.0),
    "pressure": (6, "int16", "ABCD", 1, "bar", 0.01),
    "status": (7, "uint16", "ABCD", 1, None, 1.0),
    "cycle_time_ms": (8, "uint32", "BADC", 2, "ms", 1.0),
    "energy": (10, "uint64", "ABCD", 4, "Wh", 1.0),
    "position": (14, "float64", "DCBA", 4, "mm", 1.0),
    "offset": (18, "int16", "ABCD", 1, "um", 1.0),
    "part_serial": (20, "string", "ABCD", 6, None, 1.0),
    "material_lot": (26, "string", "BADC", 4, None, 1.0),
    "final_force": (30, "float32", "ABCD", 2, "kN", 1.0),
    "final_depth": (32, "float32", "CDAB", 2, "mm", 1.0),
    "result": (34, "uint16", "ABCD", 1, None, 1.0),
    # The label the station's camera read from the part: a GS1 DataMatrix element string.
    "part_label": (40, "string", "ABCD", 24, None, 1.0),
}
HOLDING_REGISTERS = 64
GTIN = "09501101020917"
"""The product's GTIN (a GS1 example number with a valid check digit)."""
STATUS_RUNNING, STATUS_PART_PRESENT, STATUS_NOK = 0, 1, 2
RESULT_IN_WORK, RESULT_OK, RESULT_NOK = 0, 1, 2
# Coils 0..2 are set by the PLC; the agent writes coil 3 (the only writable address).
COIL_RUNNING, COIL_CYCLE_COMPLETE, COIL_DATA_READY, COIL_DATA_TAKEN = 0, 1, 2, 3
COILS = 16
COMPLETE_PHASE = 0.9
"""From this phase on the cycle is complete: result set, cycle_complete (and data_ready) on."""
HANDSHAKE_PHASE = 0.95
"""Where a handshake station freezes a finished part while it waits for "data taken"."""
FORCE_NOK_ABOVE, FORCE_OK_AT_MOST = 22.5, 21.0
"""final_force of NOK parts is above the first, of OK parts at most the second, so a limit
``max: 22.5`` on final_force judges exactly as :meth:`StationModel.ok` does."""


@dataclass(frozen=True)
class PartTruth:
    """What the simulated PLC knows about one cycle."""

    cycle: int
    serial: str
    lot: str
    ok: bool


@dataclass(frozen=True)
class StationModel:
    """One station behind one Modbus unit id."""

    unit_id: int = 1
    serial_prefix: str = "SN"
    first_serial: int = 1
    lot_prefix: str = "L"
    parts_per_lot: int = 50
    cycle_time: float = 1.0
    t0: float | None = None  # monotonic start of cycle 0; None: when the server starts
    handshake: bool = False  # hold each finished part until the agent writes data_taken

    # ---- ground truth (pure) -----------------------------------------------------------

    def serial(self, cycle: int) -> str:
        """Serial of the part in cycle ``cycle`` (cycle 0 is the first part). 12 chars max."""
        return f"{self.serial_prefix}{self.first_serial + cycle:08d}"[:12]

    def lot(self, cycle: int) -> str:
        return f"{self.lot_prefix}{cycle // self.parts_per_lot + 1:05d}"[:8]

    def ok(self, cycle: int) -> bool:
        return cycle % 17 != 16  # every 17th part fails, deterministically

    def truth(self, cycle: int) -> PartTruth:
        return PartTruth(cycle, self.serial(cycle), self.lot(cycle), self.ok(cycle))

    def final_values(self, cycle: int) -> dict[str, float]:
        """The part's final force (kN) and depth (mm).

        Multiples of 1/64 and 1/1024 near 20 and 5: exactly representable in float32, so what
        the driver decodes compares equal (==) to these, with no rounding allowance.
        """
        k = cycle
        return {
            "final_force": 20.0 + (k % 64) / 64 + (0.0 if self.ok(k) else 3.0),
            "final_depth": 5.0 + (k % 1024) / 1024,
        }

    def result(self, cycle: int, phase: float) -> int:
        """0 while the part is in work, then 1 (OK) or 2 (NOK) once the cycle is complete."""
        if phase < COMPLETE_PHASE:
            return RESULT_IN_WORK
        return RESULT_OK if self.ok(cycle) else RESULT_NOK

    def cycle_at(self, t: float) -> tuple[int, float]:
        """(cycle number, phase in [0, 1)) at monotonic time ``t``."""
        x = max(0.0, (t - (self.t0 or 0.0)) / self.cycle_time)
        k = int(x)
        return k, x - k

    def values(self, cycle: int, phase: float) -> dict[str, Any]:
        """Engineering values at a point in a cycle (before encoding)."""
        k = cycle
        return {
            # The counter is the number of parts started, so it is 1 for cycle 0.
            "cycle_counter": k + 1,
            "temperature": 180.0 + 3.0 * math.sin(2 * math.pi * phase) + (k % 10) * 0.1,
            "force": 20.0 + 5.0 * phase + (0.5 if not self.ok(k) else 0.0),
            "pressure": round((6.0 + 0.5 * phase) * 100),
            "status": (1 << STATUS_RUNNING)
            | (1 << STATUS_PART_PRESENT)
            | ((0 if self.ok(k) else 1) << STATUS_NOK),
            "cycle_time_ms": round(self.cycle_time * 1000),
            "energy": 10_000_000_000 + 37 * k,
            "position": 12.5 + phase,
            "offset": -250 + (k % 500),
            "part_serial": self.serial(k),
            "material_lot": self.lot(k),
            **self.final_values(k),
            "result": self.result(k, phase),
            "part_label": self.label(k),
        }

    def label(self, cycle: int) -> str:
        """The part's GS1 DataMatrix as a scanner sends it: AIM id ]d2, then GTIN (01), lot
        (10, variable length, so a GS ends it) and serial (21)."""
        return f"]d201{GTIN}10{self.lot(cycle)}\x1d21{self.serial(cycle)}"

    def register_image(self, cycle: int, phase: float) -> list[int]:
        """The whole holding-register image at a point in a cycle."""
        image = [0] * HOLDING_REGISTERS
        for name, value in self.values(cycle, phase).items():
            address, kind, order, count, _unit, _scale = REGISTER_MAP[name]
            image[address : address + count] = encode(kind, value, order, count)
        return image

    def holding_registers(self, t: float) -> list[int]:
        """The whole holding-register image at time ``t`` (free-running station)."""
        return self.register_image(*self.cycle_at(t))

    def coils(self, t: float) -> int:
        """Coil bits (LSB = coil 0) at time ``t`` of a free-running station: running, and
        cycle-complete in the last tenth of the cycle. Such a station does not wait for the
        agent, so data_ready simply mirrors cycle-complete (and data_taken is not its to set)."""
        _k, phase = self.cycle_at(t)
        return coil_bits(complete=phase >= COMPLETE_PHASE, ready=phase >= COMPLETE_PHASE)


def coil_bits(*, complete: bool, ready: bool, taken: bool = False) -> int:
    """The coil word (LSB = coil 0) of a running station."""
    return (
        (1 << COIL_RUNNING)
        | (int(complete) << COIL_CYCLE_COMPLETE)
        | (int(ready) << COIL_DATA_READY)
        | (int(taken) << COIL_DATA_TAKEN)
    )


class Stage(StrEnum):
    """Where a handshake station is with its current part."""

    WORKING = "working"  # the part is being pressed; phase runs with time, below 0.9
    READY = "ready"  # finished and frozen, data_ready on: waiting for data_taken = 1
    RELEASING = "releasing"  # data_ready off: waiting for data_taken = 0 to start the next


class HandshakePlc:
    """The PLC side of the data ready / data taken handshake, for one station.

    Part k is worked for ``cycle_time`` seconds (phase 0 -> 0.9 with time), then frozen at
    phase 0.95: values fixed, result set, cycle_complete and data_ready on. The PLC waits
    there, indefinitely, until data_taken is 1; then it drops data_ready and waits,
    indefinitely, until data_taken is 0; only then does part k+1 start (its cycle_time counts
    from that moment). The counter stays k+1 through all of it.

    Like PLC logic the conditions are levels, not edges: a data_taken left at 1 from before
    would release the next part the moment it is ready, unseen. That is an agent bug the
    handshake exists to catch, so such early writes are counted in ``premature_takes``.

    Mutable and clocked by the caller (``now``: monotonic seconds), so it runs the same behind
    the Modbus server as in a unit test.
    """

    def __init__(self, model: StationModel, start: float) -> None:
        self.model = model
        self.cycle = 0
        self.started = start  # when the current part started being worked
        self.stage = Stage.WORKING
        self.data_taken = False
        self.parts_released = 0  # parts whose data the agent took
        self.premature_takes = 0  # data_taken written 1 while no part was ready

    @property
    def data_ready(self) -> bool:
        return self.stage is Stage.READY

    def advance(self, now: float) -> None:
        """Bring the state up to ``now``."""
        if self.stage is Stage.WORKING and now - self.started >= self.model.cycle_time:
            self.stage = Stage.READY
        if self.stage is Stage.READY and self.data_taken:
            self.stage = Stage.RELEASING
            self.parts_released += 1
        if self.stage is Stage.RELEASING and not self.data_taken:
            self.cycle += 1
            self.started = now
            self.stage = Stage.WORKING

    def phase(self, now: float) -> float:
        if self.stage is not Stage.WORKING:
            return HANDSHAKE_PHASE
        elapsed = (now - self.started) / self.model.cycle_time
        return min(COMPLETE_PHASE * max(0.0, elapsed), math.nextafter(COMPLETE_PHASE, 0.0))

    def write_taken(self, value: bool, now: float) -> None:
        """The agent wrote the data_taken coil."""
        self.advance(now)  # a take that arrives after the part got ready is on time
        if value and not self.data_taken and self.stage is Stage.WORKING:
            self.premature_takes += 1
        self.data_taken = value
        self.advance(now)

    def holding_registers(self, now: float) -> list[int]:
        self.advance(now)
        return self.model.register_image(self.cycle, self.phase(now))

    def coils(self, now: float) -> int:
        self.advance(now)
        return coil_bits(
            complete=self.stage is not Stage.WORKING, ready=self.data_ready, taken=self.data_taken
        )


_STRUCT = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
    "float32": ">f",
    "float64": ">d",
}


def encode(kind: str, value: Any, order: str, count: int) -> list[int]:
    """Registers a PLC with byte/word order ``order`` (ABCD, CDAB, BADC, DCBA) would hold."""
    if kind == "string":
        raw = str(value).encode("latin-1")[: count * 2].ljust(count * 2, b"\x00")
    else:
        raw = struct.pack(_STRUCT[kind], value)
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    return [int.from_bytes(w, "big") for w in words]


def point_config(name: str) -> dict[str, Any]:
    """The YAML point entry that reads ``name`` from this simulator's register map."""
    address, kind, order, count, unit, scale = REGISTER_MAP[name]
    out: dict[str, Any] = {"name": name, "address": address, "type": kind}
    if order != "ABCD":
        out["word_order"] = order
    if kind == "string":
        out["count"] = count
    if unit:
        out["unit"] = unit
    if scale != 1.0:
        out["scale"] = scale
    return out
