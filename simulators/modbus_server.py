"""A Modbus TCP server that plays one or more simulated stations (one unit id each),
like a gateway with several PLCs behind it.

Built on pymodbus' current server API (``SimDevice``/``SimData``); the ``action`` hook fills
the register image from the station model at the moment of each request, so every response
is one consistent snapshot of the PLC.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.station import HOLDING_REGISTERS, StationModel

log = logging.getLogger(__name__)

FC_READ_COILS = 1


class ModbusStationServer:
    """Serve ``stations`` on ``host:port`` (port 0 picks a free one; see ``port``)."""

    def __init__(
        self, stations: Sequence[StationModel], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if not stations:
            raise ValueError("at least one station")
        now = time.monotonic()
        self.stations = [st if st.t0 is not None else replace(st, t0=now) for st in stations]
        self.host = host
        self._requested_port = port
        self.port = port
        self.requests = 0
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        devices = [
            SimDevice(
                id=st.unit_id,
                simdata=(
                    [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=HOLDING_REGISTERS, values=0, datatype=DataType.REGISTERS)],
                    [SimData(0, count=HOLDING_REGISTERS, values=0, datatype=DataType.REGISTERS)],
                ),
                action=partial(self._serve, st),
            )
            for st in self.stations
        ]
        server = ModbusTcpServer(devices, address=(self.host, self._requested_port))
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

    async def _serve(
        self,
        station: StationModel,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.requests += 1
        now = time.monotonic()
        if function_code == FC_READ_COILS:
            registers[0] = station.coils(now)
        else:
            image = station.holding_registers(now)
            registers[: len(image)] = image
        return None
