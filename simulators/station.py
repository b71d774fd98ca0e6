"""A simulated press-fit station, as its PLC exposes it over Modbus.

Parts flow through a fixed cycle: part ``k`` (0, 1, 2, ...) is at the station from
``t0 + k * cycle_time`` to ``t0 + (k + 1) * cycle_time``. Everything the PLC shows is a pure
function of the cycle number and the phase inside the cycle, so the ground truth (which serial
went with which cycle counter, which lot, which result) is known to any test without asking
the simulator, even one running in another process.

The register image is encoded here with ``struct``, independently of the driver's codec, so
an end-to-end test cannot pass on a decoding bug that both sides share.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
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
}
HOLDING_REGISTERS = 32
STATUS_RUNNING, STATUS_PART_PRESENT, STATUS_NOK = 0, 1, 2
COIL_RUNNING, COIL_CYCLE_COMPLETE = 0, 1


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
        }

    def holding_registers(self, t: float) -> list[int]:
        """The whole holding-register image at time ``t``."""
        k, phase = self.cycle_at(t)
        image = [0] * HOLDING_REGISTERS
        for name, value in self.values(k, phase).items():
            address, kind, order, count, _unit, _scale = REGISTER_MAP[name]
            image[address : address + count] = encode(kind, value, order, count)
        return image

    def coils(self, t: float) -> int:
        """Coil bits (LSB = coil 0) at time ``t``: running, and cycle-complete in the last
        tenth of the cycle."""
        _k, phase = self.cycle_at(t)
        return (1 << COIL_RUNNING) | ((1 if phase >= 0.9 else 0) << COIL_CYCLE_COMPLETE)


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
