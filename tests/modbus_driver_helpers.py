"""Building Modbus TCP devices and points for the driver tests, and reading what they report."""

from __future__ import annotations

from typing import Any

from drivers.modbus.config import (
    DataType,
    ModbusPoint,
    ModbusTcpDevice,
    Table,
)
from drivers.modbus.tcp import ModbusTcpDriver
from kernel.model import DeviceState, Observation

H, IN, C, D = Table.HOLDING, Table.INPUT, Table.COIL, Table.DISCRETE_INPUT
# Short enough to keep the suite fast, long enough for a loaded 2-core CI box.
FAST = {"timeout": 0.3, "backoff_initial": 0.01, "backoff_max": 0.05}


def pt(name: str, address: int, type_: str, table: Table = H, **kw: Any) -> ModbusPoint:
    return ModbusPoint(name=name, address=address, table=table, type=DataType(type_), **kw)


def device(port: int, points: list[ModbusPoint], **kw: Any) -> ModbusTcpDevice:
    dev = ModbusTcpDevice(
        type="modbus_tcp",
        name=kw.pop("name", "plc"),
        host="127.0.0.1",
        port=port,
        points=points,
        **kw,
    )
    # Some tests poll faster than the timeout on purpose (the check that forbids it in a
    # config file is tested in test_config_checks).
    assert [m for _, m in dev.issues() if "overrun the next poll" not in m] == []
    return dev


def state(driver: ModbusTcpDriver) -> DeviceState:
    # A call, not an attribute, so mypy does not narrow it across awaits.
    return driver.status.state


def by_point(observations: list[Observation]) -> dict[str, Observation]:
    out = {o.point: o for o in observations}
    assert len(out) == len(observations), "one observation per point per read"
    return out
