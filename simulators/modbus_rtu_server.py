"""A Modbus RTU server that plays simulated stations on a serial port: several PLCs on one
RS-485 line, one unit id each.

The register image, write rules and handshake are the TCP server's
(:class:`simulators.station_server.StationServerBase`); only the wire differs. Put it on one
end of a :class:`simulators.serial_link.NullModem` and the driver under test on the other.

Two things a real RS-485 line does that pymodbus' serial server does not do by itself:

- A unit id no station plays gets no answer at all: on a multidrop line a frame for a dead or
  absent unit is met with silence, so the master times out. pymodbus 3.16's
  ``ignore_missing_devices`` is no help here: it only applies to the old datastore
  (``ModbusServerContext``); with ``SimDevice`` an unknown id goes to SimDevice id 0, or, with
  none, fails inside the datastore and is answered with exception 4. So a catch-all device
  takes those requests and ``trace_packet`` drops every frame addressed from a unit no station
  plays before it reaches the wire.
- A PLC keeps its port. pymodbus' serial server is done for good once its port fails (a
  cable pulled: the pty hangs up); this one notices (``trace_connect``) and reopens the port
  by its path every ``reopen_interval`` until it is back, so a test can unplug and replug the
  null modem without restarting the "PLC". :meth:`stop`/:meth:`start` is a power cycle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import termios
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer

from simulators.station import StationModel
from simulators.station_server import StationServerBase

log = logging.getLogger(__name__)


class ModbusRtuStationServer(StationServerBase):
    """Serve ``stations`` over Modbus RTU on the serial port at ``port_path``."""

    def __init__(
        self,
        stations: Sequence[StationModel],
        port_path: str | os.PathLike[str],
        baudrate: int = 19200,
        parity: str = "E",
        bytesize: int = 8,
        stopbits: int = 1,
        reopen_interval: float = 0.05,
    ) -> None:
        super().__init__(stations)
        self.port_path = os.fspath(port_path)
        self.baudrate = baudrate
        self.parity = parity
        self.bytesize = bytesize
        self.stopbits = stopbits
        self.reopen_interval = reopen_interval
        self._units = self.unit_ids
        self._server: ModbusSerialServer | None = None
        self._running = False
        self._reopen_task: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        """Whether the port is open and served (False while stopped or waiting to reopen)."""
        return self._server is not None

    async def start(self) -> None:
        """Open the port and serve; OSError if it cannot be opened."""
        if self._running:
            return
        await self._open()
        self._running = True
        log.info("simulated RTU PLC on %s, units %s", self.port_path, sorted(self._units))

    async def stop(self) -> None:
        self._running = False
        if self._reopen_task is not None:
            task, self._reopen_task = self._reopen_task, None
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await self._close()

    async def __aenter__(self) -> ModbusRtuStationServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _open(self) -> None:
        self._server = await serve_rtu(
            self.sim_devices(other_units=_unanswered),
            self.port_path,
            baudrate=self.baudrate,
            parity=self.parity,
            bytesize=self.bytesize,
            stopbits=self.stopbits,
            trace_packet=self._only_own_units,
            trace_connect=self._on_connect,
        )

    async def _close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()  # type: ignore[no-untyped-call]

    def _only_own_units(self, sending: bool, packet: bytes) -> bytes:
        """Silence on the wire for a unit no station plays (an RTU frame starts with it)."""
        if sending and packet and packet[0] not in self._units:
            return b""
        return packet

    def _on_connect(self, connected: bool) -> None:
        # Also called when we close the port ourselves; then _server is already None.
        if connected or not self._running or self._server is None or self._reopen_task:
            return
        log.warning("simulated RTU PLC lost its port %s; reopening", self.port_path)
        self._reopen_task = asyncio.get_running_loop().create_task(
            self._reopen(), name=f"reopen {self.port_path}"
        )

    async def _reopen(self) -> None:
        try:
            await self._close()
            while True:
                try:
                    await self._open()
                except OSError:
                    await asyncio.sleep(self.reopen_interval)
                else:
                    log.info("simulated RTU PLC reopened %s", self.port_path)
                    return
        finally:
            if self._reopen_task is asyncio.current_task():
                self._reopen_task = None


async def _unanswered(
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    """Takes requests for units no station plays; their replies never reach the wire."""
    return None


async def serve_rtu(
    devices: Any,
    port: str,
    *,
    baudrate: int,
    parity: str,
    bytesize: int,
    stopbits: int,
    trace_packet: Callable[[bool, bytes], bytes],
    trace_connect: Callable[[bool], None],
) -> ModbusSerialServer:
    """A pymodbus RTU server on ``port`` (a pty's end), serving in the background. One that
    cannot open its port is shut down again and raises OSError naming the port."""
    server = ModbusSerialServer(
        devices,
        framer=FramerType.RTU,
        port=port,
        baudrate=baudrate,
        parity=parity,
        bytesize=bytesize,
        stopbits=stopbits,
        reconnect_delay=0,
        trace_packet=trace_packet,
        trace_connect=trace_connect,
    )
    try:
        await server.serve_forever(background=True)
    except (RuntimeError, termios.error) as exc:  # RuntimeError: "Could not start listen"
        await server.shutdown()  # type: ignore[no-untyped-call]
        raise OSError(f"simulated PLC could not open {port}") from exc
    return server
