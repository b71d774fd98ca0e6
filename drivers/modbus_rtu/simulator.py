"""Simulated Modbus RTU units laid out from the config's register maps (``edge-agent
simulate --config``): each serial port of the config becomes a null modem (a pty pair,
:class:`~simulators.serial_link.NullModem`) with every unit of that port on its far end, at
the port's baud rate and parity; each RTU-over-TCP gateway a TCP server speaking RTU frames.

The registers are :class:`drivers.modbus.simulator.UnitImage`'s, shared with Modbus TCP.
Faults: ``silent`` (the unit's answers never reach the line), ``exception``, ``garbage``
(the unit's answers arrive with a broken CRC: the driver retries, then counts the unit as
not answering; duration 0: one answer) and ``unplug`` (the cable is pulled: both ptys hang
up and vanish for every unit of the line, and come back under the same path; on a gateway
its TCP server closes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import suppress
from typing import Any, cast

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from drivers.device import DeviceConfig
from drivers.modbus.config import ModbusDevice
from drivers.modbus.simulator import ModbusTcpEndpoint, UnitImage, answer, point_spec
from drivers.modbus_rtu.config import ModbusRtuDevice
from simulators.devicemap.kinds import (
    ActiveFault,
    Endpoint,
    KindSimulator,
    Placement,
    ValueSpec,
    World,
)
from simulators.modbus_rtu_server import serve_rtu
from simulators.serial_link import NullModem

log = logging.getLogger(__name__)

REOPEN_INTERVAL = 0.05
"""Seconds between attempts to reopen a line's port after it was lost (a replugged cable)."""


async def _unanswered(
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    return None  # a unit nobody plays: its reply is dropped in _trace, as on a real line


class RtuLineEndpoint(Endpoint):
    """Units on one RS-485 line: the agent's end of a null modem is the port it opens."""

    def __init__(
        self, units: Sequence[UnitImage], world: World, modem: NullModem, settings: ModbusRtuDevice
    ) -> None:
        self.units = {u.device.unit_id: u for u in units}
        self.devices = tuple(u.name for u in units)
        self.world = world
        self.modem = modem
        self.settings = settings
        self._server: ModbusSerialServer | None = None
        self._running = False
        self._reopen: asyncio.Task[None] | None = None
        self._unplugged: set[str] = set()
        self._garble_once: set[str] = set()

    async def start(self) -> None:
        await self.modem.start()
        try:
            await self._open()
        except BaseException:
            await self.modem.close()
            raise
        self._running = True

    async def stop(self) -> None:
        self._running = False
        if self._reopen is not None:
            task, self._reopen = self._reopen, None
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await self._close()
        await self.modem.close()

    def overrides(self) -> dict[str, dict[str, Any]]:
        return {name: {"port": str(self.modem.a_path)} for name in self.devices}

    def describe(self) -> str:
        s = self.settings
        units = ", ".join(f"{u.name} (unit {uid})" for uid, u in sorted(self.units.items()))
        line = f"{s.baudrate} baud {s.bytesize}{s.parity}{s.stopbits}"
        return f"Modbus RTU line {self.modem.a_path} ({line}): {units}"

    async def fault_started(self, device: str, fault: ActiveFault) -> None:
        if fault.kind == "unplug":
            self._unplugged.add(device)
            self.modem.unplug()  # the server notices the hang-up and waits for the port
        elif fault.kind == "garbage" and fault.duration == 0:
            self._garble_once.add(device)

    async def fault_ended(self, device: str, fault: ActiveFault) -> None:
        if fault.kind == "unplug" and device in self._unplugged:
            self._unplugged.discard(device)
            if not self._unplugged:
                self.modem.replug()

    async def _open(self) -> None:
        units = [u.sim_device() for u in self.units.values()]
        if 0 not in self.units:
            # pymodbus needs a device for any other unit it hears; _trace drops its replies.
            small = [SimData(0, count=1, values=0, datatype=SimType.REGISTERS)]
            units.append(SimDevice(id=0, simdata=small, action=_unanswered))
        s = self.settings
        self._server = await serve_rtu(
            units,
            str(self.modem.b_path),
            baudrate=s.baudrate,
            parity=s.parity,
            bytesize=s.bytesize,
            stopbits=s.stopbits,
            trace_packet=self._trace,
            trace_connect=self._on_connect,
        )

    async def _close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()  # type: ignore[no-untyped-call]

    def _trace(self, sending: bool, packet: bytes) -> bytes:
        if not sending or not packet:
            return packet
        unit = self.units.get(packet[0])
        if unit is None:
            return b""  # silence for units nobody plays
        return answer(unit, self.world, packet, self._garble_once)

    def _on_connect(self, connected: bool) -> None:
        # pymodbus' serial server is done for good once its port fails (the pty hung up):
        # reopen it by path until the cable is back. Also called on our own close.
        if connected or not self._running or self._server is None or self._reopen:
            return
        self._reopen = asyncio.get_running_loop().create_task(
            self._reopen_port(), name=f"reopen {self.modem.b_path}"
        )

    async def _reopen_port(self) -> None:
        try:
            await self._close()
            while True:
                try:
                    await self._open()
                except OSError:
                    await asyncio.sleep(REOPEN_INTERVAL)
                else:
                    return
        finally:
            if self._reopen is asyncio.current_task():
                self._reopen = None


class ModbusRtuSimulator(KindSimulator):
    """Modbus RTU units: a null modem per serial port, a TCP server per gateway."""

    faults = frozenset({"silent", "exception", "garbage", "unplug"})

    def value_spec(self, device: DeviceConfig, point: str) -> ValueSpec | None:
        p = cast(ModbusDevice, device).point(point)
        return None if p is None else point_spec(p)

    def endpoints(
        self, devices: Sequence[DeviceConfig], world: World, place: Placement
    ) -> list[Endpoint]:
        lines: dict[str, list[ModbusRtuDevice]] = {}
        for d in devices:
            rtu = cast(ModbusRtuDevice, d)
            lines.setdefault(rtu.bus().key, []).append(rtu)
        out: list[Endpoint] = []
        for units in lines.values():
            images = [UnitImage(u, world) for u in units]
            first = units[0]
            if first.port is None:
                out.append(
                    ModbusTcpEndpoint(
                        images, world, place.host, framer=FramerType.RTU, port_key="tcp_port"
                    )
                )
                continue
            stem = place.port_name(first.port)
            modem = NullModem(place.pty_dir, stem, f".{stem}.device")
            out.append(RtuLineEndpoint(images, world, modem, first))
        return out


SIMULATOR = ModbusRtuSimulator()
