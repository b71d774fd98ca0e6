"""OPC UA tests' helpers: the scenario's press device on an endpoint, and a sink's good values."""

from __future__ import annotations

from typing import Any

from drivers.opcua.config import OpcUaDevice
from kernel.model import Quality
from simulators.scenario import opcua_device
from tests.modbus_helpers import Collector


def device(endpoint: str, **kw: Any) -> OpcUaDevice:
    raw = {**opcua_device("press1", "ST10", endpoint, parts=True), **kw}
    dev = OpcUaDevice.model_validate(raw)
    assert dev.issues() == []
    return dev


def good(sink: Collector, point: str) -> list[Any]:
    return [o.value for o in sink.of(point) if o.quality is Quality.GOOD]
