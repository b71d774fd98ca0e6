"""OPC UA (asyncua, the ``opcua`` extra): subscriptions for changes, one Read for a part's
snapshot, writes for the handshake, security that never downgrades."""

from drivers.opcua.config import OpcUaDevice, OpcUaPoint
from drivers.registry import DriverKind

KIND = DriverKind(
    type="opcua",
    config=OpcUaDevice,
    driver="drivers.opcua.driver:OpcUaDriver",
    summary="A PLC or other OPC UA server: subscriptions, consistent reads, handshake writes.",
    extra="opcua",
    requires=("asyncua",),
    probe="drivers.opcua.probe:probe_device",
    browse="drivers.opcua.browse:browse",
    sections=(("points[]", OpcUaPoint),),
)
