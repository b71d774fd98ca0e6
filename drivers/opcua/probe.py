"""The commissioning probe of OPC UA devices, run by ``edge-agent config probe``.

Connects as the agent would (same security, same identity), resolves every point (namespace
URIs, browse paths), reads each node's BrowseName, DataType and Value in one Read, and says
per point what came back: the resolved NodeId, the data type, the value, the status code, the
source and server timestamps, and why a point failed (a namespace the server does not have, a
browse path that leads nowhere, a node that does not exist, a value of another type than the
config says). Nothing is written and no subscription is created.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from asyncua import ua
from asyncua.client.client import Client

from drivers.opcua import nodes, security, values
from drivers.opcua.config import OpcUaDevice, OpcUaPoint
from drivers.opcua.errors import describe
from drivers.probing import DeviceProbe, PointProbe
from drivers.registry import DriverContext
from kernel.model import Quality

log = logging.getLogger("edge_agent.probe")

_ATTRIBUTES = (ua.AttributeIds.BrowseName, ua.AttributeIds.DataType, ua.AttributeIds.Value)


async def probe_device(
    dev: OpcUaDevice, attempt_timeout: float | None, context: DriverContext
) -> DeviceProbe:
    """Probe one OPC UA server on a session of its own."""
    if attempt_timeout is not None:
        dev = dev.model_copy(update={"timeout": attempt_timeout})
    result = DeviceProbe(
        dev.name,
        dev.type,
        f"{dev.endpoint}  {dev.security_policy.value}/{dev.security_mode.value}",
        dev.timeout,
        {
            "endpoint": dev.endpoint,
            "security_policy": dev.security_policy.value,
            "security_mode": dev.security_mode.value,
        },
    )
    client = Client(dev.endpoint, timeout=dev.timeout)
    client.application_uri = dev.application_uri
    client.session_timeout = int(dev.session_timeout * 1000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await security.apply(client, dev)
        await client.connect()
    except Exception as exc:
        result.error = describe(exc, dev)
        return result
    try:
        result.connected = True
        result.connect_latency = loop.time() - started
        result.points = await _points(client, dev, result)
    except Exception as exc:
        result.error = describe(exc, dev)
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), dev.timeout)
        except Exception:
            log.debug("probe of %s: error while disconnecting", dev.name, exc_info=True)
    return result


async def _points(client: Client, dev: OpcUaDevice, result: DeviceProbe) -> list[PointProbe]:
    namespaces = list(await client.get_namespace_array())
    resolved = await nodes.resolve(client, dev, dev.points, namespaces)
    found, failed = resolved.nodes, resolved.failed
    result.requests += 1
    if resolved.index_only:
        result.notes.append(
            f"{', '.join(resolved.index_only)}: addressed by namespace index (ns=), which can "
            "change when the server restarts; write nsu=<namespace URI> instead"
        )
    readable = [p for p in dev.points if p.name in found]
    reads: dict[str, list[ua.DataValue]] = {}
    latency: float | None = None
    if readable:
        ids = [found[p.name] for p in readable]
        request = [ua.ReadValueId(NodeId=i, AttributeId=a) for i in ids for a in _ATTRIBUTES]
        sent = time.monotonic()
        answers = await _read(client, request)
        latency = time.monotonic() - sent
        result.requests += 1
        per = len(_ATTRIBUTES)
        for j, p in enumerate(readable):
            reads[p.name] = answers[j * per : (j + 1) * per]
    out = []
    for p in dev.points:
        written = p.node if p.node is not None else p.browse_path or ""
        if p.name not in found:
            why = failed.get(p.name, "not resolved")
            out.append(_row(p, written, "", "-", "-", None, Quality.BAD, None, why, {}))
            continue
        browse, data_type, value = reads[p.name]
        obs = values.observation(dev.name, p, value)
        status = value.StatusCode.name if value.StatusCode is not None else "Good"
        browse_name = browse.Value.Value if browse.Value is not None else None
        type_name = await _type_name(client, data_type)
        details = {
            "node_id": found[p.name].to_string(),
            "status": status,
            "source_timestamp": _iso(value.SourceTimestamp),
            "server_timestamp": _iso(value.ServerTimestamp),
        }
        table = browse_name.to_string() if browse_name is not None else "-"
        error = obs.error
        if status == "BadNodeIdUnknown":
            error = "no such node on the server (check the NodeId, or browse for it)"
        out.append(
            _row(p, written, found[p.name].to_string(), table, type_name, obs.value,
                 obs.quality, latency, error, details, status)
        )  # fmt: skip
    return out


async def _read(client: Client, request: list[Any]) -> list[ua.DataValue]:
    params = ua.ReadParameters()
    params.NodesToRead = request
    params.TimestampsToReturn = ua.TimestampsToReturn.Both
    results: list[ua.DataValue] = await client.uaclient.read(params)
    return results


async def _type_name(client: Client, data_type: ua.DataValue) -> str:
    node_id = data_type.Value.Value if data_type.Value is not None else None
    if not isinstance(node_id, ua.NodeId):
        return "-"
    if node_id.NamespaceIndex == 0 and isinstance(node_id.Identifier, int):
        try:
            return str(ua.VariantType(node_id.Identifier).name)
        except ValueError:
            pass
    try:
        name = await client.get_node(node_id).read_browse_name()
    except Exception:
        return str(node_id.to_string())
    return str(name.Name)


def _row(
    p: OpcUaPoint,
    written: str,
    resolved: str,
    table: str,
    type_name: str,
    value: Any,
    quality: Quality,
    latency: float | None,
    error: str | None,
    details: dict[str, Any],
    raw: str | None = None,
) -> PointProbe:
    return PointProbe(
        p.name, table, written, resolved or written, type_name, raw, value, p.unit, quality,
        latency, "read" if latency is not None else None, error, details,
    )  # fmt: skip


def _iso(stamp: Any) -> str | None:
    if stamp is None:
        return None
    return values.iso(stamp)
