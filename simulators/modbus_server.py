"""A Modbus TCP server that plays one or more simulated stations (one unit id each),
like a gateway with several PLCs behind it.

Built on pymodbus' current server API (``SimDevice``/``SimData``); the ``action`` hook fills
the register image from the station model at the moment of each request, so every response
is one consistent snapshot of the PLC. Input registers mirror the holding registers and
discrete inputs mirror the coils. The register image, the write rules and the handshake are
:class:`simulators.station_server.StationServerBase`, shared with the RTU server.

A unit id no station plays is answered with exception 11 (gateway target device failed to
respond), as a gateway does for a PLC it cannot reach.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer

from simulators.station import StationModel
from simulators.station_server import FC_READ_COILS as FC_READ_COILS
from simulators.station_server import FC_READ_DISCRETE as FC_READ_DISCRETE
from simulators.station_server import FC_WRITE_COIL as FC_WRITE_COIL
from simulators.station_server import FC_WRITE_COILS as FC_WRITE_COILS
from simulators.station_server import StationServerBase

log = logging.getLogger(__name__)


class ModbusStationServer(StationServerBase):
    """Serve ``stations`` on ``host:port`` (port 0 picks a free one; see ``port``)."""

    def __init__(
        self,
        stations: Sequence[StationModel],
        host: str = "127.0.0.1",
        port: int = 0,
        framer: FramerType = FramerType.SOCKET,
    ) -> None:
        super().__init__(stations)
        self.framer = framer
        """SOCKET: Modbus TCP (MBAP header); RTU: an RTU-over-TCP gateway (RTU frames with
        their CRC inside TCP)."""
        self.host = host
        self._requested_port = port
        self.port = port
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        # A gateway says 11 (target failed to respond) for a unit it cannot reach, which the
        # driver treats as the device being down.
        devices = self.sim_devices(other_units=_no_such_unit)
        server = ModbusTcpServer(
            devices, address=(self.host, self._requested_port), framer=self.framer
        )
        await server.serve_forever(background=True)
        transport = server.transport
        sockets = getattr(transport, "sockets", None)
        if not sockets:
            await server.shutdown()  # type: ignore[no-untyped-call]
            raise OSError(f"simulator could not listen on {self.host}:{self._requested_port}")
        self.port = int(sockets[0].getsockname()[1])
        # Reuse the same port after a restart (tests stop and start the "PLC").
        self._requested_port = self.port
        self._server = server
        log.info(
            "simulated PLC on %s:%d, units %s",
            self.host,
            self.port,
            [s.unit_id for s in self.stations],
        )

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()  # type: ignore[no-untyped-call]
            # pymodbus closes client connections asynchronously; give it one loop turn.
            await asyncio.sleep(0)

    async def __aenter__(self) -> ModbusStationServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _no_such_unit(
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    return ExcCodes.GATEWAY_NO_RESPONSE
