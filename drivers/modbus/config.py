"""Config models of Modbus devices and their points (live beside the drivers they configure).

``ModbusDevice`` holds what TCP and RTU share; ``drivers/modbus_rtu`` adds the serial side."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.device import DeviceConfig, backoff_issues, duplicate_point_issues
from kernel.model import Value
from kernel.names import Issue, Name


class Table(StrEnum):
    """Modbus data table a point lives in."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"


class DataType(StrEnum):
    """How the raw registers (or bits) of a point decode to a value."""

    BOOL = "bool"  # a coil or discrete input
    BIT = "bit"  # one bit of a 16-bit register (``bit: 0..15``)
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"  # two characters per register; ``count`` registers


class WordOrder(StrEnum):
    """Byte and word order of multi-register values, in the notation PLC manuals use.

    ABCD: big-endian words and bytes (Modbus standard). CDAB: words swapped (common on
    Schneider/Siemens gateways). BADC: bytes swapped within each word. DCBA: little-endian.
    For strings only ABCD (high byte first) and BADC (low byte first) make sense.
    """

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


class Report(StrEnum):
    """When a polled value becomes a reading record."""

    EVERY_POLL = "every_poll"
    ON_CHANGE = "on_change"
    SNAPSHOT = "snapshot"  # not polled; read only when a trigger's snapshot asks for it


# Registers a type occupies; None means "given by count" (strings).
REGISTERS: dict[DataType, int | None] = {
    DataType.BOOL: 1,
    DataType.BIT: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT64: 4,
    DataType.STRING: None,
}

BIT_TABLES = frozenset({Table.COIL, Table.DISCRETE_INPUT})


class ModbusPoint(BaseModel):
    """One named value in the PLC's register map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(
        description="Point name, unique on the device; used in records and references.",
        examples=["cycle_counter", "final_force", "part_serial"],
    )
    address: int = Field(
        ge=0,
        le=65535,
        description="Register or coil address (see the device's address_base).",
        examples=[0, 20, 100],
    )
    table: Table = Field(
        default=Table.HOLDING,
        description="holding (FC3), input (FC4), coil (FC1) or discrete_input (FC2).",
        examples=["holding", "coil"],
    )
    type: DataType = Field(
        description="Data type; decides how many registers are read.",
        examples=["float32", "uint16", "string"],
    )
    count: int | None = Field(
        default=None,
        ge=1,
        le=125,
        description="Registers to read. Required for string; must match the type otherwise.",
        examples=[6, 10],
    )
    bit: int | None = Field(
        default=None, ge=0, le=15, description="Bit index for type bit.", examples=[0, 7]
    )
    word_order: WordOrder = Field(
        default=WordOrder.ABCD,
        description="Byte and word order of multi-register values.",
        examples=["CDAB", "BADC"],
    )
    scale: float = Field(
        default=1.0,
        description="value = raw * scale + offset (numbers only).",
        examples=[0.1, 0.01],
    )
    offset: float = Field(
        default=0.0,
        description="value = raw * scale + offset (numbers only).",
        examples=[-40.0],
    )
    unit: str | None = Field(
        default=None,
        max_length=32,
        description="Engineering unit.",
        examples=["kN", "mm", "degC", "bar"],
    )
    poll_interval: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        description="Seconds; defaults to the device's.",
        examples=[0.2, 5],
    )
    station: Name | None = Field(
        default=None,
        description="Station this point belongs to; defaults to the device's.",
        examples=["ST10"],
    )
    report: Report = Field(
        default=Report.EVERY_POLL,
        description="every_poll; on_change to record changes only; snapshot: not polled, read "
        "only when a part trigger's snapshot asks for it.",
        examples=["on_change", "snapshot"],
    )

    @property
    def register_count(self) -> int:
        """Registers (or bits, for coil tables) this point occupies."""
        fixed = REGISTERS[self.type]
        if fixed is not None:
            return fixed
        return self.count or 1

    def write_issue(self) -> str | None:
        """Why the driver cannot write this point, or None if it can.

        Writable are coils (type bool, FC5) and unscaled int16/uint16 holding registers (FC6):
        single-request writes the PLC either applies whole or refuses.
        """
        if self.table in (Table.INPUT, Table.DISCRETE_INPUT):
            return f"{self.table.value} is read-only in Modbus; use a coil or holding register"
        if self.table is Table.COIL:
            return None if self.type is DataType.BOOL else "a coil holds one bit; use type bool"
        if self.type is DataType.BIT:
            # The PLC may change other bits of the word between our read and our write, and
            # the write would silently put them back.
            return (
                "type bit would need a read-modify-write of the whole register, which can undo "
                "bits the PLC changes in between; use a coil or a whole int16/uint16 register"
            )
        if self.type not in (DataType.INT16, DataType.UINT16):
            return (
                f"only single-register int16/uint16 points are written (FC6), not {self.type.value}"
            )
        if self.scale != 1.0 or self.offset != 0.0:
            return "scaled points are not written; use scale 1 and offset 0 (the raw register)"
        return None

    def issues(self) -> list[Issue]:
        """Cross-field problems, each with the key path (relative to the point) it belongs to."""
        out: list[Issue] = []
        fixed = REGISTERS[self.type]
        if self.type is DataType.STRING and self.count is None:
            out.append((("count",), "type string needs count (registers, two characters each)"))
        if fixed is not None and self.count is not None and self.count != fixed:
            out.append(
                (("count",), f"{self.type.value} occupies {fixed} register(s), not {self.count}")
            )
        if self.type is DataType.BOOL and self.table not in BIT_TABLES:
            out.append(
                (
                    ("type",),
                    f"type bool reads a coil or discrete_input, not a {self.table.value} "
                    "register; use type bit with bit: 0..15 for a bit inside a register",
                )
            )
        if self.type is not DataType.BOOL and self.table in BIT_TABLES:
            out.append((("type",), f"a {self.table.value} holds one bit; use type bool"))
        if self.type is DataType.BIT and self.bit is None:
            out.append((("bit",), "type bit needs bit: 0..15"))
        if self.type is not DataType.BIT and self.bit is not None:
            out.append((("bit",), "bit is only for type bit"))
        if self.type is DataType.STRING and self.word_order not in (WordOrder.ABCD, WordOrder.BADC):
            out.append((("word_order",), "strings take ABCD or BADC only"))
        numeric = self.type not in (DataType.BOOL, DataType.BIT, DataType.STRING)
        for key, number in (("scale", self.scale), ("offset", self.offset)):
            if not math.isfinite(number):
                out.append(((key,), f"expected a finite number, found {number}"))
        if not numeric and (self.scale != 1.0 or self.offset != 0.0):
            out.append((("scale",), f"scale and offset apply to numbers, not {self.type.value}"))
        if self.report is Report.SNAPSHOT and self.poll_interval is not None:
            out.append((("poll_interval",), "report snapshot is never polled; drop poll_interval"))
        if self.address + self.register_count - 1 > 65535:
            out.append(
                (("address",), f"{self.address} + {self.register_count} registers passes 65535")
            )
        return out


class ModbusDevice(DeviceConfig):
    """What every Modbus device has, over TCP or RTU: timing, request planning, the map."""

    unit_id: int = Field(
        default=1,
        ge=0,
        le=255,
        description="Modbus unit (device) id.",
        examples=[1, 2, 255],
    )
    timeout: float = Field(
        default=1.0, gt=0, le=60, description="Seconds per request.", examples=[0.5, 2.0]
    )
    poll_interval: float = Field(
        default=1.0, gt=0, le=86400, description="Default, seconds.", examples=[0.2, 1.0]
    )
    address_base: Literal[0, 1] = Field(
        default=0,
        description="0 if addresses are protocol addresses; 1 if the PLC manual counts from 1.",
        examples=[1],
    )
    max_registers: int = Field(
        default=125,
        ge=1,
        le=125,
        description="Largest single register request.",
        examples=[100, 64],
    )
    max_gap: int = Field(
        default=8,
        ge=0,
        le=124,
        description="Unused registers a coalesced request may span to save a round trip.",
        examples=[0, 16],
    )
    request_delay: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Pause between requests (slow gateways).",
        examples=[0.05],
    )
    backoff_initial: float = Field(
        default=0.5, gt=0, le=60, description="Reconnect backoff base.", examples=[1.0]
    )
    backoff_max: float = Field(
        default=30.0, gt=0, le=3600, description="Reconnect backoff cap.", examples=[60.0]
    )
    points: list[ModbusPoint] = Field(
        min_length=1,
        description="The PLC's register map: one entry per named value.",
        examples=[
            [
                {"name": "cycle_counter", "address": 0, "type": "uint32"},
                {
                    "name": "force",
                    "address": 4,
                    "type": "float32",
                    "word_order": "CDAB",
                    "unit": "kN",
                },
            ]
        ],
    )

    def issues(self) -> list[Issue]:
        """Cross-field problems with key paths relative to this device."""
        out: list[Issue] = duplicate_point_issues(self.points)
        for i, p in enumerate(self.points):
            out.extend((("points", i, *path), msg) for path, msg in p.issues())
            if self.address_base == 1 and p.address == 0:
                out.append((("points", i, "address"), "address_base is 1, so addresses start at 1"))
        out.extend(_overlap_issues(self.points))
        out.extend(backoff_issues(self.backoff_initial, self.backoff_max))
        if not out:
            from drivers.modbus.plan import plan_issues  # the planner imports this module

            out.extend(plan_issues(self))
        out.extend(self._poll_issues())
        return out

    def _poll_issues(self) -> list[Issue]:
        """Polled points whose interval is shorter than the device's timeout."""
        out: list[Issue] = []
        device_default = False
        for j, p in enumerate(self.points):
            if p.report is Report.SNAPSHOT:
                continue
            if p.poll_interval is None:
                device_default = device_default or self.poll_interval < self.timeout
            elif p.poll_interval < self.timeout:
                out.append(
                    (("points", j, "poll_interval"), _overrun(p.poll_interval, self.timeout))
                )
        if device_default:
            out.insert(0, (("poll_interval",), _overrun(self.poll_interval, self.timeout)))
        return out

    def trigger_issue(self, point: str) -> str | None:
        if any(p.name == point and p.report is Report.SNAPSHOT for p in self.points):
            return (
                f"{point!r} has report: snapshot, so it is never read on its own and cannot "
                "trigger a part: give it report: on_change"
            )
        return None

    def named_points(self) -> list[ModbusPoint]:
        return self.points

    def point(self, name: str) -> ModbusPoint | None:
        return next((p for p in self.points if p.name == name), None)

    def snapshot_issue(self, points: Sequence[str]) -> tuple[tuple[str | int, ...], str] | None:
        from drivers.modbus.plan import snapshot_requests  # the planner imports this module

        requests = snapshot_requests(self, points)
        if len(requests) <= 1:
            return None
        spans = ", ".join(f"{r.table.value} {r.address}+{r.count}" for r in requests)
        return (
            ("points",),
            f"needs {len(requests)} requests ({spans}); a consistent snapshot is one request: "
            "keep its points in one table within max_registers",
        )

    def write_issue(self, point: str) -> str | None:
        p = self.point(point)
        return None if p is None else p.write_issue()

    def value_issue(self, point: str, value: Value) -> str | None:
        from drivers.modbus.codec import CodecError, write_value  # the codec imports this module

        p = self.point(point)
        if p is None:
            return None
        try:
            write_value(p, value)
        except CodecError as exc:
            return str(exc)
        return None

    def value_digits(self, point: str) -> int | None:
        p = self.point(point)
        if p is None:
            return None
        if p.type is DataType.FLOAT32:
            return 7
        if p.type is DataType.FLOAT64 or p.scale != 1.0 or p.offset != 0.0:
            return 15
        return None

    def request_timeout(self) -> float:
        return self.timeout

    def link(self) -> str:
        """Where the device is reached, for messages: ``10.0.0.5:502``, ``/dev/ttyUSB0``."""
        raise NotImplementedError

    def describe(self) -> str:
        """The device's address as the probe's table shows it."""
        return f"{self.link()}  unit {self.unit_id}"

    def probe_details(self) -> dict[str, object]:
        """What ``config probe --json`` says about where the device is."""
        raise NotImplementedError

    def settle_time(self) -> float:
        """Pause after opening before the first request (not part of the connect time)."""
        return 0.0


def _overrun(interval: float, timeout: float) -> str:
    return (
        f"poll_interval {float(interval)} s is shorter than timeout {float(timeout)} s: a slow "
        "answer would overrun the next poll; raise poll_interval or lower timeout"
    )


class ModbusTcpDevice(ModbusDevice):
    """A PLC (or a gateway unit) reached over Modbus TCP."""

    type: Literal["modbus_tcp"] = Field(description="Driver: modbus_tcp.", examples=["modbus_tcp"])
    host: str = Field(
        min_length=1,
        description="PLC or gateway IP address or host name.",
        examples=["192.168.10.21", "plc-st10.line3.local"],
    )
    port: int = Field(
        default=502,
        ge=1,
        le=65535,
        description="TCP port of the PLC or gateway; 502 is the Modbus standard.",
        examples=[502, 5020],
    )
    connect_delay: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="Pause after connecting (some PLCs need it).",
        examples=[0.5],
    )

    def link(self) -> str:
        return f"{self.host}:{self.port}"

    def probe_details(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "unit_id": self.unit_id}

    def settle_time(self) -> float:
        return self.connect_delay

    def identity(self) -> Hashable | None:
        return ("modbus_tcp", self.host.strip().lower(), self.port, self.unit_id)

    def duplicate_issue(self, first: int) -> Issue:
        return (
            ("unit_id",),
            f"same PLC as devices[{first}] ({self.host}:{self.port} unit {self.unit_id}): give "
            "each PLC unit one entry (its points may each set poll_interval and station)",
        )


def _overlap_issues(points: list[ModbusPoint]) -> list[Issue]:
    """Points of one table whose registers (or bits) overlap, which means a misread register
    map: a uint32 at 10 and an int16 at 11. Sharing is fine for bits of one register, for a
    whole 16-bit word beside its bits, and for exact aliases (same address and type). Each
    clash is reported once, at the later point."""
    out: list[Issue] = []
    for table in Table:
        active: list[tuple[int, ModbusPoint]] = []  # (index, point) still covering addresses
        entries = sorted(
            ((i, p) for i, p in enumerate(points) if p.table is table),
            key=lambda e: (e[1].address, e[0]),
        )
        for i, p in entries:
            active = [(j, q) for j, q in active if q.address + q.register_count > p.address]
            for j, q in active:
                if _may_share(p, q):
                    continue
                (k, later), (m, earlier) = ((i, p), (j, q)) if i > j else ((j, q), (i, p))
                other = f"{earlier.name!r} (points[{m}], {earlier.type.value} at {_span(earlier)})"
                out.append(
                    (
                        ("points", k, "address"),
                        f"{later.type.value} at {_span(later)} overlaps {other}: only bits of "
                        "one register or exact aliases (same address and type) may share",
                    )
                )
            active.append((i, p))
    return out


def _may_share(p: ModbusPoint, q: ModbusPoint) -> bool:
    words = (DataType.INT16, DataType.UINT16)
    if p.type is DataType.BIT and (q.type is DataType.BIT or q.type in words):
        return True
    if q.type is DataType.BIT and p.type in words:
        return True
    return (p.type, p.address, p.register_count) == (q.type, q.address, q.register_count)


def _span(p: ModbusPoint) -> str:
    what = p.table.value if p.table in BIT_TABLES else "register"
    if p.register_count == 1:
        return f"{what} {p.address}"
    return f"{what}s {p.address}..{p.address + p.register_count - 1}"
