"""A Modbus TCP server that plays one or more simulated stations (one unit id each),
like a gateway with several PLCs behind it.

Built on pymodbus' current server API (``SimDevice``/``SimData``); the ``action`` hook fills
the register image from the station model at the moment of each request, so every response
is one consistent snapshot of the PLC. Input registers mirror the holding registers and
discrete inputs mirror the coils.

A unit id no station plays is answered with exception 11 (gateway target device failed to
respond), as a gateway does for a PLC it cannot reach.

The only writable address is coil 3, data_taken (FC5 or FC15). Any other write is answered
with exception 2 (illegal data address), as a PLC that maps nothing there would, so a wrong
handshake address shows up at commissioning rather than as a PLC that never releases parts.

pymodbus calls the action once per data access with the request's function code; a write
comes as ``set_values`` (the values about to be stored, applied by pymodbus after the action
returns), followed for FC5/FC6 by a second call with ``set_values=None`` that reads the value
back for the reply. Bit tables are handed over as 16-bit words (bit 0 = lowest), so all 16
coils are ``registers[0]``.
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

from simulators.station import (
    COIL_DATA_TAKEN,
    COILS,
    HOLDING_REGISTERS,
    HandshakePlc,
    StationModel,
)

log = logging.getLogger(__name__)

FC_READ_COILS, FC_READ_DISCRETE, FC_WRITE_COIL, FC_WRITE_COILS = 1, 2, 5, 15
_COIL_FCS = frozenset({FC_READ_COILS, FC_WRITE_COIL, FC_WRITE_COILS})
_REGISTER_READ_FCS = frozenset({3, 4})


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
        """Data accesses served (a single write counts twice: pymodbus reads it back)."""
        # Station state lives here, not in the pymodbus server, so it survives stop/start
        # like a PLC's memory survives a network outage.
        self._plcs = {
            st.unit_id: HandshakePlc(st, st.t0 or now) for st in self.stations if st.handshake
        }
        self._taken = {st.unit_id: False for st in self.stations if not st.handshake}
        self._server: ModbusTcpServer | None = None

    def plc(self, unit_id: int) -> HandshakePlc:
        """The handshake state of the station at ``unit_id`` (built with handshake=True)."""
        try:
            return self._plcs[unit_id]
        except KeyError:
            raise LookupError(f"unit {unit_id} is not a handshake station") from None

    def data_taken(self, unit_id: int) -> bool:
        """The data_taken coil of any station, as the agent last wrote it."""
        if unit_id in self._plcs:
            return self._plcs[unit_id].data_taken
        return self._taken[unit_id]

    async def start(self) -> None:
        devices = [
            SimDevice(
                id=st.unit_id,
                simdata=(
                    [SimData(0, count=COILS, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=COILS, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=HOLDING_REGISTERS, values=0, datatype=DataType.REGISTERS)],
                    [SimData(0, count=HOLDING_REGISTERS, values=0, datatype=DataType.REGISTERS)],
                ),
                action=partial(self._serve, st),
            )
            for st in self.stations
        ]
        if all(st.unit_id != 0 for st in self.stations):
            # pymodbus answers a unit it does not know with exception 4 (device failure); a
            # gateway says 11 (target failed to respond), which the driver treats as the
            # device being down. SimDevice id 0 catches every unit not defined above.
            devices.append(
                SimDevice(
                    id=0,
                    simdata=[SimData(0, count=65536, values=0, datatype=DataType.REGISTERS)],
                    action=_no_such_unit,
                )
            )
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
        if set_values is not None:
            if function_code not in (FC_WRITE_COIL, FC_WRITE_COILS) or any(
                a != COIL_DATA_TAKEN for a in range(address, address + len(set_values))
            ):
                return ExcCodes.ILLEGAL_ADDRESS
            self._write_taken(station, bool(set_values[-1]), now)
        if function_code in _COIL_FCS or function_code == FC_READ_DISCRETE:
            registers[0] = self._coils(station, now)
        elif function_code in _REGISTER_READ_FCS:
            plc = self._plcs.get(station.unit_id)
            image = plc.holding_registers(now) if plc else station.holding_registers(now)
            registers[: len(image)] = image
        return None

    def _write_taken(self, station: StationModel, value: bool, now: float) -> None:
        plc = self._plcs.get(station.unit_id)
        if plc is not None:
            plc.write_taken(value, now)
        else:
            self._taken[station.unit_id] = value

    def _coils(self, station: StationModel, now: float) -> int:
        plc = self._plcs.get(station.unit_id)
        if plc is not None:
            return plc.coils(now)
        taken = self._taken[station.unit_id]
        return station.coils(now) | (int(taken) << COIL_DATA_TAKEN)


async def _no_such_unit(
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    return ExcCodes.GATEWAY_NO_RESPONSE
