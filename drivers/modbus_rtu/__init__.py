"""Modbus RTU: units on an RS-485 port (or behind an RTU-over-TCP gateway), one shared bus
per wire. Register maps, planning and decoding are ``drivers/modbus``'s."""

from drivers.modbus.config import ModbusPoint
from drivers.modbus_rtu.config import ModbusRtuDevice
from drivers.registry import DriverKind

KIND = DriverKind(
    type="modbus_rtu",
    config=ModbusRtuDevice,
    driver="drivers.modbus_rtu.driver:ModbusRtuDriver",
    summary="A Modbus RTU unit on a serial port or behind an RTU-over-TCP gateway.",
    probe="drivers.modbus.probe:probe_device",
    sections=(("points[]", ModbusPoint),),
)
