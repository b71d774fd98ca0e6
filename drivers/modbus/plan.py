"""Which Modbus requests read a device's points: a pure planner, computed once at start-up.

Points polled at the same interval are grouped; within a group, points of one table whose
addresses are close are coalesced into one request, because on a line PLC the round trip
costs far more than a few unused registers. Overlapping points (several bits of one status
word, a string and a number sharing registers) share the request. Points reported only in
snapshots are left out of the poll plan; :func:`snapshot_requests` plans those reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from drivers.modbus.codec import compile_decoder
from drivers.modbus.config import BIT_TABLES, ModbusDevice, ModbusPoint, Report, Table
from kernel.model import Value
from kernel.names import Issue

MAX_BITS = 2000
"""Largest coil / discrete input read the Modbus spec allows (FC1, FC2)."""

_TABLE_ORDER = {t: i for i, t in enumerate(Table)}


@dataclass(frozen=True, slots=True)
class PlannedPoint:
    """A point inside a request: its first register (or bit) is ``offset`` from the start."""

    point: ModbusPoint
    offset: int
    length: int = field(init=False, compare=False, repr=False)
    decode: Callable[[bytes], Value] = field(init=False, compare=False, repr=False)
    """The point's value from the response's bytes (``codec.response_bytes``); registers only."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "length", self.point.register_count)
        object.__setattr__(self, "decode", compile_decoder(self.point, self.offset))


@dataclass(frozen=True, slots=True)
class Request:
    """One Modbus read: ``count`` registers (or bits) of ``table`` from protocol ``address``."""

    table: Table
    address: int
    count: int
    points: tuple[PlannedPoint, ...]


@dataclass(frozen=True, slots=True)
class PollGroup:
    """Requests performed together, every ``interval`` seconds."""

    interval: float
    requests: tuple[Request, ...]

    @property
    def points(self) -> list[ModbusPoint]:
        return [pp.point for r in self.requests for pp in r.points]


def protocol_address(point: ModbusPoint, address_base: int) -> int:
    """Address on the wire: manuals that count from 1 are shifted down by one."""
    addr = point.address - address_base
    if addr < 0:
        raise ValueError(f"point {point.name!r}: address {point.address} is below {address_base}")
    return addr


def plan_requests(
    points: Iterable[ModbusPoint],
    *,
    address_base: int = 0,
    max_registers: int = 125,
    max_gap: int = 8,
    max_bits: int = MAX_BITS,
) -> list[Request]:
    """Coalesce ``points`` into as few requests as the limits allow.

    Tables are never mixed; a request spans at most ``max_registers`` registers
    (``max_bits`` bits for coil tables) and bridges at most ``max_gap`` unused addresses,
    since unused addresses can be unmapped on the PLC and fail the whole request. Requests come
    out ordered by table, then address. A point longer than the limit is a config error.
    """
    by_table: dict[Table, list[tuple[int, ModbusPoint]]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append((protocol_address(p, address_base), p))

    out: list[Request] = []
    for table in sorted(by_table, key=_TABLE_ORDER.__getitem__):
        limit = max_bits if table in BIT_TABLES else max_registers
        # Longest first at one address, so the span is known as soon as a request starts.
        items = sorted(by_table[table], key=lambda ap: (ap[0], -ap[1].register_count))
        start = end = 0
        members: list[tuple[int, ModbusPoint]] = []
        for addr, p in items:
            n = p.register_count
            if n > limit:
                raise ValueError(
                    f"point {p.name!r} needs {n} {_unit(table)}, more than one request "
                    f"may read ({limit})"
                )
            if members and addr - end <= max_gap and max(end, addr + n) - start <= limit:
                end = max(end, addr + n)
                members.append((addr, p))
                continue
            if members:
                out.append(_request(table, start, end, members))
            start, end, members = addr, addr + n, [(addr, p)]
        if members:
            out.append(_request(table, start, end, members))
    return out


def _unit(table: Table) -> str:
    return "bits" if table in BIT_TABLES else "registers"


def _request(table: Table, start: int, end: int, members: list[tuple[int, ModbusPoint]]) -> Request:
    return Request(
        table=table,
        address=start,
        count=end - start,
        points=tuple(PlannedPoint(p, addr - start) for addr, p in members),
    )


def effective_interval(device: ModbusDevice, point: ModbusPoint) -> float:
    return point.poll_interval if point.poll_interval is not None else device.poll_interval


def plan_device(device: ModbusDevice) -> list[PollGroup]:
    """Group the device's polled points by poll interval (fastest first) and plan each group.

    Snapshot-only points are not polled, so a device with nothing else has no groups."""
    by_interval: dict[float, list[ModbusPoint]] = {}
    for p in device.points:
        if p.report is not Report.SNAPSHOT:
            by_interval.setdefault(effective_interval(device, p), []).append(p)
    return [
        PollGroup(
            interval,
            tuple(
                plan_requests(
                    pts,
                    address_base=device.address_base,
                    max_registers=device.max_registers,
                    max_gap=device.max_gap,
                )
            ),
        )
        for interval, pts in sorted(by_interval.items())
    ]


def snapshot_requests(device: ModbusDevice, names: Sequence[str]) -> list[Request]:
    """The requests that read the named points now, whatever their poll intervals or report
    modes: one per table as long as the points fit in max_registers (max_bits).

    Unlike polling, a snapshot bridges gaps of any width: its values must come from one
    instant, which is worth a few unused registers. A PLC that leaves the gap unmapped
    answers with an exception, which the first part record shows as its error.

    Names may repeat (read once). An unknown name is a ValueError: config validation
    rejects it before a driver ever plans it.
    """
    by_name = {p.name: p for p in device.points}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"device {device.name!r} has no point(s) {', '.join(map(repr, unknown))}")
    return plan_requests(
        (by_name[n] for n in dict.fromkeys(names)),
        address_base=device.address_base,
        max_registers=device.max_registers,
        max_gap=MAX_BITS,
    )


def plan_issues(device: ModbusDevice) -> list[Issue]:
    """Points no single request can hold, as config issues (key paths relative to the device),
    so they are reported at load time with the YAML line rather than when the driver starts."""
    out: list[Issue] = []
    for i, p in enumerate(device.points):
        limit = MAX_BITS if p.table in BIT_TABLES else device.max_registers
        if p.register_count > limit:
            out.append(
                (
                    ("points", i, "count"),
                    f"{p.register_count} {_unit(p.table)} do not fit one request "
                    f"(max_registers is {limit})",
                )
            )
    return out


def request_count(groups: Sequence[PollGroup]) -> int:
    """Requests one poll of every group costs (for logs and capacity checks)."""
    return sum(len(g.requests) for g in groups)
