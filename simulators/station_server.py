"""The wire-independent half of a simulated PLC: its stations' Modbus image and handshake.

Shared by the TCP server (:mod:`simulators.modbus_server`) and the RTU server
(:mod:`simulators.modbus_rtu_server`), so both wires show the same registers, coils and write
rules: a driver test passes on RTU for the same reasons as on TCP, never because one copy of
this logic drifted from the other.

pymodbus calls the action once per data access with the request's function code; a write
comes as ``set_values`` (the values about to be stored, applied by pymodbus after the action
returns), followed for FC5/FC6 by a second call with ``set_values=None`` that reads the value
back for the reply. Bit tables are handed over as 16-bit words (bit 0 = lowest), so all 16
coils are ``registers[0]``.

The only writable address is coil 3, data_taken (FC5 or FC15). Any other write is answered
with exception 2 (illegal data address), as a PLC that maps nothing there would, so a wrong
handshake address shows up at commissioning rather than as a PLC that never releases parts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

from simulators.station import (
    COIL_DATA_TAKEN,
    COILS,
    HOLDING_REGISTERS,
    HandshakePlc,
    StationModel,
)

FC_READ_COILS, FC_READ_DISCRETE, FC_WRITE_COIL, FC_WRITE_COILS = 1, 2, 5, 15
_COIL_FCS = frozenset({FC_READ_COILS, FC_WRITE_COIL, FC_WRITE_COILS})
_REGISTER_READ_FCS = frozenset({3, 4})


class StationServerBase:
    """Stations (one unit id each) and their state; a subclass puts them on a wire.

    Station state lives here, not in the pymodbus server, so it survives stop/start like a
    PLC's memory survives a network outage or a cable pulled.
    """

    def __init__(self, stations: Sequence[StationModel]) -> None:
        if not stations:
            raise ValueError("at least one station")
        now = time.monotonic()
        self.stations = [st if st.t0 is not None else replace(st, t0=now) for st in stations]
        self.requests = 0
        """Data accesses served (a single write counts twice: pymodbus reads it back)."""
        self._plcs = {
            st.unit_id: HandshakePlc(st, st.t0 or now) for st in self.stations if st.handshake
        }
        self._taken = {st.unit_id: False for st in self.stations if not st.handshake}

    @property
    def unit_ids(self) -> frozenset[int]:
        return frozenset(st.unit_id for st in self.stations)

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

    def sim_devices(self, other_units: SimAction | None = None) -> list[SimDevice]:
        """One SimDevice per station; with ``other_units``, also a catch-all (SimDevice id 0)
        whose action answers every unit no station plays, unless a station plays unit 0."""
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
        if other_units is not None and 0 not in self.unit_ids:
            # pymodbus picks SimDevice id 0 for any unit it does not know; without one it
            # fails the request internally and answers exception 4 (device failure).
            devices.append(
                SimDevice(
                    id=0,
                    simdata=[SimData(0, count=65536, values=0, datatype=DataType.REGISTERS)],
                    action=other_units,
                )
            )
        return devices

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
