"""Modbus RTU driver: one unit, taking turns on its bus.

Requests, decoding, writes and the probe's single requests are ``ModbusDriver``'s, as for
TCP; this class only gets the unit its turn on the shared wire (``RtuBus``). Opening the
device acquires the bus (opening the port if no other unit has), closing releases it: so a
dead unit backed off by its runner holds nothing, and its neighbours keep the line.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from pymodbus.client.base import ModbusBaseClient

from drivers.bus import Buses, BusUnavailable
from drivers.modbus.driver import ModbusDriver
from drivers.modbus_rtu.bus import RtuBus
from drivers.modbus_rtu.config import ModbusRtuDevice
from drivers.registry import DriverContext
from kernel.errors import ConnectError


class ModbusRtuDriver(ModbusDriver):
    """One Modbus RTU unit on a serial port or behind an RTU-over-TCP gateway."""

    device: ModbusRtuDevice

    def __init__(self, device: ModbusRtuDevice, context: DriverContext | None = None) -> None:
        super().__init__(device)
        # Alone (a test, a tool) the unit gets a bus of its own; in the agent, units on one
        # wire get the same bus object.
        self._buses = context.buses if context is not None else Buses()
        self._bus: RtuBus | None = None

    async def open(self) -> None:
        await self.close()
        claim = self.device.bus()
        try:
            bus = self._buses.get(claim.key, claim.settings, RtuBus, lambda: RtuBus(self.device))
            await bus.acquire()
        except BusUnavailable as exc:
            raise ConnectError(self.name, str(exc)) from exc
        self._bus = bus
        self._connected()

    async def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            await bus.release()

    async def watch_connection(self) -> None:
        bus = self._bus
        if bus is None:
            raise ConnectError(self.name, "not connected")
        await bus.lost.wait()
        raise ConnectError(self.name, f"{bus.what} lost")

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[ModbusBaseClient]:
        bus = self._bus
        if bus is None:
            raise ConnectError(self.name, "not connected")
        d = self.device
        try:
            async with bus.turn(d.timeout, d.retries, d.request_delay) as client:
                yield client
        except BusUnavailable as exc:  # only the turn raises it, never a request
            raise ConnectError(self.name, str(exc)) from exc
