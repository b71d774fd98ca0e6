"""Modbus TCP: PLCs and gateway units polled over TCP (pymodbus).

The codec, planner and driver here also serve ``drivers/modbus_rtu``, which reaches the same
register maps over a serial line.
"""

from drivers.modbus.config import ModbusPoint, ModbusTcpDevice
from drivers.registry import DriverKind

KIND = DriverKind(
    type="modbus_tcp",
    config=ModbusTcpDevice,
    driver="drivers.modbus.tcp:ModbusTcpDriver",
    summary="A PLC or a gateway unit polled over Modbus TCP.",
    probe="drivers.modbus.probe:probe_device",
    sections=(("points[]", ModbusPoint),),
)
