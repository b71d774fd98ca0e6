"""Driver registry: a device config's ``type:`` name -> the factory that builds its driver.

A new kind of device adds one entry to ``FACTORIES``. Factories import their driver module
lazily so an agent that has no OPC UA device never imports the OPC UA stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drivers.base import PolledDriver, StreamingDriver

Driver = PolledDriver | StreamingDriver
Factory = Callable[[Any], Driver]


def _modbus_tcp(config: Any) -> Driver:
    from drivers.modbus.config import ModbusTcpDevice
    from drivers.modbus.driver import ModbusTcpDriver

    if not isinstance(config, ModbusTcpDevice):
        raise TypeError(f"modbus_tcp expects a ModbusTcpDevice, got {type(config).__name__}")
    return ModbusTcpDriver(config)


FACTORIES: dict[str, Factory] = {
    "modbus_tcp": _modbus_tcp,
}


def create_driver(config: Any) -> Driver:
    """Build the driver for one validated device config, chosen by its ``type`` field."""
    kind = getattr(config, "type", None)
    factory = FACTORIES.get(kind) if isinstance(kind, str) else None
    if factory is None:
        known = ", ".join(sorted(FACTORIES))
        name = getattr(config, "name", "?")
        raise ValueError(f"device {name!r}: no driver for type {kind!r} (known: {known})")
    return factory(config)
