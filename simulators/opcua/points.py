"""What a simulated station shows over OPC UA: one variable per point, typed and valued.

The values are :class:`simulators.station.StationModel`'s, converted the way a PLC that
publishes them natively would: a float32 register becomes a ``Float`` holding exactly the
float32 the Modbus image holds, a scaled register (pressure, 0.01 bar) becomes a ``Double`` in
engineering units, strings are the text without the register padding. The coils become
``Boolean`` variables; ``data_taken`` is the only one a client may write.

Pure functions, so a test computes what the server must show without asking it.
"""

from __future__ import annotations

import struct
from typing import Any

from asyncua import ua

from simulators.station import COMPLETE_PHASE, REGISTER_MAP, StationModel

NAMESPACE_URI = "urn:edge-agent:sim:stations"

_VARIANT = {
    "int16": ua.VariantType.Int16,
    "uint16": ua.VariantType.UInt16,
    "uint32": ua.VariantType.UInt32,
    "uint64": ua.VariantType.UInt64,
    "float32": ua.VariantType.Float,
    "float64": ua.VariantType.Double,
    "string": ua.VariantType.String,
}
FLAGS = ("running", "cycle_complete", "data_ready", "data_taken")
"""The coils, as Boolean variables (same names as the Modbus demo config's coil points)."""
WRITABLE = frozenset({"data_taken"})

POINT_TYPES: dict[str, ua.VariantType] = {
    # A scaled register is an engineering value: a Double in its unit.
    name: ua.VariantType.Double if scale != 1.0 else _VARIANT[kind]
    for name, (_address, kind, _order, _count, _unit, scale) in REGISTER_MAP.items()
} | dict.fromkeys(FLAGS, ua.VariantType.Boolean)
"""Every variable of a station and its OPC UA type."""


def f32(x: float) -> float:
    """``x`` rounded to float32, as a Float variable (and a float32 register pair) holds it."""
    value: float = struct.unpack("<f", struct.pack("<f", x))[0]
    return value


def process_values(model: StationModel, cycle: int, phase: float) -> dict[str, Any]:
    """The REGISTER_MAP points at a point in a cycle, as the OPC UA variables hold them."""
    out: dict[str, Any] = {}
    for name, value in model.values(cycle, phase).items():
        _address, kind, _order, _count, _unit, scale = REGISTER_MAP[name]
        if kind == "float32":
            out[name] = f32(value)
        elif scale != 1.0:
            # 612 (0.01 bar) -> 6.12: the double nearest the decimal value, as a PLC computing
            # in bar would hold it (raw * 0.01 can be one ulp off).
            out[name] = value / round(1 / scale)
        else:
            out[name] = value
    return out


def free_running_values(model: StationModel, cycle: int, phase: float) -> dict[str, Any]:
    """Every variable of a free-running station except data_taken (which the client writes):
    cycle_complete and data_ready are on in the last tenth of the cycle."""
    complete = phase >= COMPLETE_PHASE
    return {
        **process_values(model, cycle, phase),
        "running": True,
        "cycle_complete": complete,
        "data_ready": complete,
    }


def node_id_string(station: str, point: str | None = None) -> str:
    """The string identifier of a station's object (``ST10``) or variable (``ST10.force``)."""
    return station if point is None else f"{station}.{point}"


def expanded_node_id(station: str, point: str | None, namespace_uri: str = NAMESPACE_URI) -> str:
    """``nsu=<uri>;s=<Station>.<point>``: the address that survives namespace index changes."""
    return f"nsu={namespace_uri};s={node_id_string(station, point)}"
