"""Simulated Modbus devices laid out from the config's register map (``edge-agent simulate
--config``): every point at its table, address, type, word order, count, scale and bit.

Values are encoded with :mod:`drivers.modbus.codec`, the codec the driver decodes with, so a
scenario's value comes back from the driver exactly (a float32 as the nearest float32).
Each unit's memory is an image of its four tables; at every request the points the request
touches are refreshed from the scenario (:class:`~simulators.devicemap.kinds.World`), and the
agent's writes land in the image, so a point the scenario does not drive holds what the
agent wrote (a handshake's data taken). Reads of addresses between points answer zeros;
writes to addresses no point maps are refused with exception 2 (illegal data address).

One server per host:port of the config with every unit_id the config has there (a
gateway), answering exception 11 for other units as a gateway does. Faults: ``silent`` (the
unit's answers are dropped: the driver times out), ``exception`` (requests touching the
fault's points, or all, answer with its code) and ``unplug`` (the server closes, its
connections drop and new ones are refused, until the fault ends).

RTU units (``drivers/modbus_rtu/simulator.py``) reuse :class:`UnitImage` and, for an
RTU-over-TCP gateway, :class:`ModbusTcpEndpoint` with the RTU framer.
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from drivers.device import DeviceConfig
from drivers.modbus.codec import CodecError, decode, encode
from drivers.modbus.config import (
    BIT_TABLES,
    DataType,
    ModbusDevice,
    ModbusPoint,
    ModbusTcpDevice,
    Table,
)
from drivers.modbus.plan import protocol_address
from kernel.model import Value
from simulators.devicemap.kinds import (
    ActiveFault,
    Endpoint,
    KindSimulator,
    Placement,
    ValueSpec,
    World,
)

log = logging.getLogger(__name__)

_INT_RANGES: dict[DataType, tuple[int, int]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
_FLOAT_MAX = {DataType.FLOAT32: 3.4028234663852886e38, DataType.FLOAT64: 1.7976931348623157e308}
_FC_TABLE = {1: Table.COIL, 2: Table.DISCRETE_INPUT, 3: Table.HOLDING, 4: Table.INPUT}
_FC_TABLE |= {5: Table.COIL, 15: Table.COIL, 6: Table.HOLDING, 16: Table.HOLDING}


# ---- values --------------------------------------------------------------------------------


def point_spec(point: ModbusPoint) -> ValueSpec:
    """What values ``point`` takes, in engineering units (scale and offset applied)."""
    name = point.type.value
    if point.type in (DataType.BOOL, DataType.BIT):
        return ValueSpec(name, "bool")
    if point.type is DataType.STRING:
        n = point.register_count
        return ValueSpec(name, "text", max_bytes=2 * n, detail=f"({n} registers)")
    if point.type in _INT_RANGES:
        lo, hi = _INT_RANGES[point.type]
        low: float | int = lo
        high: float | int = hi
        if point.scale != 1.0 or point.offset != 0.0:
            a, b = lo * point.scale + point.offset, hi * point.scale + point.offset
            low, high = min(a, b), max(a, b)
        return ValueSpec(
            name,
            "number",
            integer=True,
            low=low,
            high=high,
            scale=point.scale,
            offset=point.offset,
        )
    top = _FLOAT_MAX[point.type] * abs(point.scale)
    return ValueSpec(
        name,
        "number",
        low=point.offset - top,
        high=point.offset + top,
        scale=point.scale,
        offset=point.offset,
    )


def point_words(point: ModbusPoint, value: Value) -> list[int]:
    """The registers holding ``value`` (an engineering value) as the PLC would. Numbers
    beyond the type are clamped, fractions of an integer type rounded: a ramp or noise may
    pass a bound that a constant could not."""
    if point.type in (DataType.BOOL, DataType.BIT):
        return encode(point.type, bool(value), bit=point.bit)
    if point.type is DataType.STRING:
        return encode(point.type, str(value), point.word_order, point.register_count)
    if isinstance(value, str) or value is None:
        raise CodecError(f"{point.type.value} cannot hold {value!r}")
    raw: int | float
    if isinstance(value, int) and point.scale == 1.0 and point.offset == 0.0:
        raw = int(value)  # exact, also beyond a float's 53 bits (int64, uint64)
    else:
        raw = (float(value) - point.offset) / point.scale
    if point.type in _INT_RANGES:
        lo, hi = _INT_RANGES[point.type]
        raw = min(hi, max(lo, round(raw) if raw == raw else 0))
    else:
        top = _FLOAT_MAX[point.type]
        raw = min(top, max(-top, raw)) if abs(raw) != float("inf") else raw
    return encode(point.type, raw, point.word_order)


@dataclass(frozen=True)
class _Placed:
    """A point at its protocol address: registers (or bits) ``start`` .. ``end - 1``."""

    point: ModbusPoint
    start: int
    end: int


# ---- one unit's memory ---------------------------------------------------------------------


class UnitImage:
    """One Modbus unit (a PLC): its four tables, laid out from the config's points, and the
    pymodbus action that serves them."""

    def __init__(self, device: ModbusDevice, world: World) -> None:
        self.device = device
        self.name = device.name
        self.world = world
        self.requests = 0
        placed: dict[Table, list[_Placed]] = {t: [] for t in Table}
        for p in device.points:
            start = protocol_address(p, device.address_base)
            placed[p.table].append(_Placed(p, start, start + p.register_count))
        # Each table as far as its last point: every request the driver plans ends at a point,
        # and a short block keeps a unit small (pymodbus holds a list entry per register).
        self._size: dict[Table, int] = {}
        for t, ps in placed.items():
            end = max((pl.end for pl in ps), default=1)
            self._size[t] = -(-end // 16) if t in BIT_TABLES else end
        # Bit tables hold 16 coils per word, coil 0 in the lowest bit (as pymodbus packs them).
        self._image = {t: array("H", bytes(2 * self._size[t])) for t in Table}
        # Whole words before the bits inside them, so both can be driven.
        self._placed = {
            t: sorted(ps, key=lambda x: (x.point.type is DataType.BIT, x.start))
            for t, ps in placed.items()
        }
        self._by_name = {pl.point.name: pl for ps in placed.values() for pl in ps}
        self._failed: set[str] = set()

    def sim_device(self) -> SimDevice:
        def block(table: Table) -> list[SimData]:
            n = self._size[table]
            if table in BIT_TABLES:
                # A list of words, not count=: pymodbus checks a counted bit block in
                # quadratic time.
                return [SimData(0, values=[0] * n, datatype=SimType.BITS)]
            return [SimData(0, count=n, values=0, datatype=SimType.REGISTERS)]

        tables = (Table.COIL, Table.DISCRETE_INPUT, Table.HOLDING, Table.INPUT)
        coils, discrete, holding, inputs = (block(t) for t in tables)
        return SimDevice(
            id=self.device.unit_id,
            simdata=(coils, discrete, holding, inputs),
            action=self.action,
        )

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus' hook for every data access: faults, writes, then a fresh image."""
        table = _FC_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        self.requests += 1
        # Bit tables: ``address`` is the first bit, ``count`` and the block are in words.
        lo, hi = (
            (address, (address // 16 + count) * 16)
            if table in BIT_TABLES
            else (address, address + count)
        )
        fault = self.world.fault(self.name)
        if fault is not None and fault.kind == "exception" and self._touches(fault, table, lo, hi):
            return ExcCodes(fault.code or 4)
        if set_values is not None:
            refused = self._write(table, address, set_values)
            if refused is not None:
                return refused
        first = address // 16 if table in BIT_TABLES else address
        self._refresh(table, lo, hi)
        image = self._image[table]
        offset = first - start_address
        registers[offset : offset + count] = image[first : first + count]
        return None

    def _touches(self, fault: ActiveFault, table: Table, lo: int, hi: int) -> bool:
        if not fault.points:
            return True
        for name in fault.points:
            pl = self._by_name.get(name)
            if pl is not None and pl.point.table is table and pl.start < hi and pl.end > lo:
                return True
        return False

    def _refresh(self, table: Table, lo: int, hi: int) -> None:
        """Bring the points in [lo, hi) of ``table`` to the scenario's values now."""
        image = self._image[table]
        for pl in self._placed[table]:
            if pl.start >= hi or pl.end <= lo:
                continue
            value = self.world.value(self.name, pl.point.name)
            if value is None:
                continue
            try:
                words = point_words(pl.point, value)
            except (CodecError, ValueError, TypeError, OverflowError) as exc:
                if pl.point.name not in self._failed:  # say it once, keep serving
                    self._failed.add(pl.point.name)
                    log.error("%s.%s: cannot hold %r: %s", self.name, pl.point.name, value, exc)
                continue
            p = pl.point
            if table in BIT_TABLES:
                word, bit = divmod(pl.start, 16)
                image[word] = (image[word] | (1 << bit)) if words[0] else image[word] & ~(1 << bit)
            elif p.type is DataType.BIT:
                mask = 1 << (p.bit or 0)
                image[pl.start] = (image[pl.start] | mask) if words[0] else image[pl.start] & ~mask
            else:
                image[pl.start : pl.end] = array("H", words)

    def _write(self, table: Table, address: int, values: list[int] | list[bool]) -> ExcCodes | None:
        """The agent writes: into the image, then each point written is reported."""
        if table not in (Table.COIL, Table.HOLDING):
            return ExcCodes.ILLEGAL_FUNCTION
        end = address + len(values)
        touched = [pl for pl in self._placed[table] if pl.start < end and pl.end > address]
        covered = {a for pl in touched for a in range(pl.start, pl.end)}
        if any(a not in covered for a in range(address, end)):
            return ExcCodes.ILLEGAL_ADDRESS
        image = self._image[table]
        for i, v in enumerate(values):
            if table is Table.COIL:
                word, bit = divmod(address + i, 16)
                image[word] = (image[word] | (1 << bit)) if v else image[word] & ~(1 << bit)
            else:
                image[address + i] = int(v) & 0xFFFF
        for pl in touched:
            self.world.written(self.name, pl.point.name, self.read(pl.point.name))
        return None

    def read(self, point: str) -> Value:
        """The point's value as the image holds it now (what the driver would decode)."""
        pl = self._by_name[point]
        image = self._image[pl.point.table]
        if pl.point.table in BIT_TABLES:
            word, bit = divmod(pl.start, 16)
            return bool(image[word] >> bit & 1)
        return decode(pl.point, list(image[pl.start : pl.end]))


# ---- the TCP wire --------------------------------------------------------------------------


async def _no_such_unit(
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    return ExcCodes.GATEWAY_NO_RESPONSE


def garbled(packet: bytes) -> bytes:
    """An RTU frame with its CRC broken (the last byte flipped): line noise."""
    return packet[:-1] + bytes([packet[-1] ^ 0xFF]) if packet else packet


class ModbusTcpEndpoint(Endpoint):
    """Units served on one TCP port: a PLC, a gateway with units behind it, or (with the RTU
    framer) an RTU-over-TCP serial device server."""

    def __init__(
        self,
        units: Sequence[UnitImage],
        world: World,
        host: str,
        *,
        framer: FramerType = FramerType.SOCKET,
        port_key: str = "port",
    ) -> None:
        self.units = {u.device.unit_id: u for u in units}
        self.devices = tuple(u.name for u in units)
        self.world = world
        self.host = host
        self.port = 0
        self.framer = framer
        self.port_key = port_key
        self._server: ModbusTcpServer | None = None
        self._unplugged: set[str] = set()
        self._garble_once: set[str] = set()

    async def start(self) -> None:
        devices = [u.sim_device() for u in self.units.values()]
        if 0 not in self.units and self.framer is FramerType.SOCKET:
            # A gateway answers 11 for a unit it cannot reach, which the driver takes as down.
            devices.append(
                SimDevice(
                    id=0,
                    simdata=[SimData(0, count=1, values=0, datatype=SimType.REGISTERS)],
                    action=_no_such_unit,
                )
            )
        server = ModbusTcpServer(
            devices, address=(self.host, self.port), framer=self.framer, trace_packet=self._trace
        )
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None)
        if not sockets:
            await server.shutdown()  # type: ignore[no-untyped-call]
            raise OSError(f"cannot listen on {self.host}:{self.port}")
        self.port = int(sockets[0].getsockname()[1])  # the same port after an unplug
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()  # type: ignore[no-untyped-call]
            await asyncio.sleep(0)  # pymodbus closes its connections on the next turn

    def overrides(self) -> dict[str, dict[str, Any]]:
        return {name: {"host": self.host, self.port_key: self.port} for name in self.devices}

    def describe(self) -> str:
        what = "Modbus TCP" if self.framer is FramerType.SOCKET else "Modbus RTU over TCP"
        units = ", ".join(f"{u.name} (unit {uid})" for uid, u in sorted(self.units.items()))
        return f"{what} on {self.host}:{self.port}: {units}"

    async def fault_started(self, device: str, fault: ActiveFault) -> None:
        if fault.kind == "unplug":
            if not self._unplugged:
                await self.stop()
            self._unplugged.add(device)
        elif fault.kind == "garbage" and fault.duration == 0:
            self._garble_once.add(device)

    async def fault_ended(self, device: str, fault: ActiveFault) -> None:
        if fault.kind == "unplug" and device in self._unplugged:
            self._unplugged.discard(device)
            if not self._unplugged:
                await self.start()

    def _trace(self, sending: bool, packet: bytes) -> bytes:
        if not sending or not packet:
            return packet
        unit_at = 6 if self.framer is FramerType.SOCKET else 0
        unit = self.units.get(packet[unit_at]) if len(packet) > unit_at else None
        return answer(unit, self.world, packet, self._garble_once)


def answer(unit: UnitImage | None, world: World, packet: bytes, once: set[str]) -> bytes:
    """What goes on the wire for a unit's answer, under its fault: nothing while it is
    silent, a broken CRC while there is garbage (RTU framing only), or once after a one-off
    garbage fault (``once`` holds the units waiting for theirs)."""
    if unit is None:
        return packet
    if unit.name in once:
        once.discard(unit.name)
        return garbled(packet)
    fault = world.fault(unit.name)
    if fault is not None and fault.kind == "silent":
        return b""
    if fault is not None and fault.kind == "garbage":
        return garbled(packet)
    return packet


# ---- the kind ------------------------------------------------------------------------------


class ModbusSimulator(KindSimulator):
    """Modbus TCP devices, one server per host:port of the config."""

    faults = frozenset({"silent", "exception", "unplug"})

    def value_spec(self, device: DeviceConfig, point: str) -> ValueSpec | None:
        p = cast(ModbusDevice, device).point(point)
        return None if p is None else point_spec(p)

    def endpoints(
        self, devices: Sequence[DeviceConfig], world: World, place: Placement
    ) -> list[Endpoint]:
        groups: dict[tuple[str, int], list[UnitImage]] = {}
        for d in devices:
            tcp = cast(ModbusTcpDevice, d)
            groups.setdefault((tcp.host.strip().lower(), tcp.port), []).append(
                UnitImage(tcp, world)
            )
        return [ModbusTcpEndpoint(units, world, place.host) for units in groups.values()]


SIMULATOR = ModbusSimulator()
