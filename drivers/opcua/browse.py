"""``edge-agent config browse CONFIG --device NAME``: the variables of an OPC UA server.

Walks the address space from a starting node (default: the Objects folder, without the
standard Server object) through hierarchical references, and prints every variable with its
browse path, its NodeId in the namespace-URI form the config should use, its data type and
current value; with ``--yaml``, as ready-to-paste ``points:`` entries. It connects with the
device's own endpoint, security and user, so it sees what the agent will see.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any, TextIO

import yaml
from asyncua import ua
from asyncua.client.client import Client

from drivers.opcua import nodes, security, values
from drivers.opcua.config import OpcUaDevice, ValueType
from drivers.opcua.errors import describe
from drivers.registry import DriverContext

CHUNK = 500
"""Nodes per Read call."""
MAX_NODES = 20_000
"""Nodes visited at most: a walk from the root of a big server stops here and says so."""
_TYPES = {
    "Boolean": "bool",
    "String": "string",
    "LocalizedText": "string",
    "DateTime": "datetime",
    "ByteString": "bytes",
    "Float": "float",
    "Double": "float",
}


@dataclass(frozen=True)
class Variable:
    path: str
    node: str
    data_type: str
    value: Any
    writable: bool
    array: bool


async def browse(
    device: OpcUaDevice,
    start: str | None,
    depth: int,
    as_yaml: bool,
    out: TextIO,
    context: DriverContext,
) -> int:
    """Print the variables below ``start``; 0 when the walk completed, 1 when it failed or
    was cut short."""
    client = Client(device.endpoint, timeout=device.timeout)
    client.application_uri = device.application_uri
    client.session_timeout = int(device.session_timeout * 1000)
    try:
        await security.apply(client, device)
        await client.connect()
    except Exception as exc:
        print(f"{device.name}: {describe(exc, device)}", file=out)
        return 1
    try:
        found, complete = await _walk(client, start, depth, device.namespace)
    except Exception as exc:
        print(f"{device.name}: {describe(exc, device)}", file=out)
        return 1
    finally:
        try:
            await client.disconnect()
        except Exception:  # the walk's result stands; a dead server is let go of
            client.disconnect_socket()
    if as_yaml:
        out.write(_yaml(found))
    else:
        _table(found, out)
    if not complete:
        print(
            f"# stopped after {MAX_NODES} nodes: give --from a node deeper in the tree",
            file=out,
        )
    return 0 if complete else 1


async def _walk(
    client: Client, start: str | None, depth: int, home: str | None
) -> tuple[list[Variable], bool]:
    namespaces = list(await client.get_namespace_array())
    root = client.nodes.objects
    if start is not None:
        root = client.get_node(nodes.parse(start, namespaces))
    queue: deque[tuple[Any, str, int]] = deque([(root, "", 0)])
    seen: set[str] = set()
    found: list[tuple[str, Any]] = []
    while queue:
        node, path, level = queue.popleft()
        if len(seen) >= MAX_NODES:
            return await _describe(client, found, namespaces), False
        refs = await node.get_references(
            refs=ua.ObjectIds.HierarchicalReferences,
            direction=ua.BrowseDirection.Forward,
            nodeclassmask=ua.NodeClass.Object | ua.NodeClass.Variable,
        )
        for ref in refs:
            target = ref.NodeId
            key = target.to_string()
            if key in seen or (start is None and level == 0 and key == "i=2253"):
                continue  # the standard Server object: diagnostics, not the PLC's data
            seen.add(key)
            name = _qualified(ref.BrowseName, namespaces, home)
            child_path = f"{path}/{name}" if path else name
            child = client.get_node(target)
            if ref.NodeClass == ua.NodeClass.Variable:
                found.append((child_path, child))
            if level + 1 < depth:
                queue.append((child, child_path, level + 1))
    return await _describe(client, found, namespaces), True


async def _describe(
    client: Client, found: list[tuple[str, Any]], namespaces: list[str]
) -> list[Variable]:
    """Value, data type and access of every variable, in a few Read calls (not three per
    node: a big server has thousands)."""
    out: list[Variable] = []
    for first in range(0, len(found), CHUNK):
        chunk = found[first : first + CHUNK]
        ids = [node for _, node in chunk]
        data = await client.read_attributes(ids, ua.AttributeIds.Value)
        kinds = await client.read_attributes(ids, ua.AttributeIds.DataType)
        access = await client.read_attributes(ids, ua.AttributeIds.UserAccessLevel)
        for (path, node), dv, kind, level in zip(chunk, data, kinds, access, strict=True):
            if dv.StatusCode is not None and dv.StatusCode.name == "BadUserAccessDenied":
                continue  # a node the user may not read is not offered as a point
            raw = dv.Value.Value if dv.Value is not None else None
            type_name = _type_name(kind.Value.Value if kind.Value is not None else None)
            value, _ = values.convert(raw, ValueType.ANY)
            bits = level.Value.Value if level.Value is not None else 0
            out.append(
                Variable(
                    path=path,
                    node=_uri_form(node.nodeid, namespaces),
                    data_type=type_name,
                    value=value,
                    writable=bool((bits or 0) & ua.AccessLevel.CurrentWrite.mask),
                    array=isinstance(raw, list),
                )
            )
    return out


def _type_name(node_id: Any) -> str:
    """The built-in type a DataType NodeId stands for (i=1..25), else its text."""
    if isinstance(node_id, ua.NodeId) and node_id.NamespaceIndex == 0:
        try:
            return str(ua.VariantType(node_id.Identifier).name)
        except ValueError:
            pass
    return "Structure" if isinstance(node_id, ua.NodeId) else "-"


def _qualified(name: ua.QualifiedName, namespaces: list[str], home: str | None) -> str:
    """A browse path segment as ``browse_path`` takes it: bare in the device's namespace."""
    index = name.NamespaceIndex
    if index >= len(namespaces) or namespaces[index] == home:
        return str(name.Name)
    return f"nsu={namespaces[index]};{name.Name}"


def _uri_form(node_id: ua.NodeId, namespaces: list[str]) -> str:
    """``nsu=URI;s=Name``: the form that survives a server reordering its namespaces."""
    text = node_id.to_string()
    if node_id.NamespaceIndex == 0 or node_id.NamespaceIndex >= len(namespaces):
        return str(text)
    bare = re.sub(r"^ns=\d+;", "", text)
    return f"nsu={namespaces[node_id.NamespaceIndex]};{bare}"


def _table(found: list[Variable], out: TextIO) -> None:
    rows = [("PATH", "NODE", "TYPE", "VALUE", "ACCESS")]
    for v in found:
        shown = repr(v.value) if isinstance(v.value, str) else str(v.value)
        rows.append((v.path, v.node, v.data_type + ("[]" if v.array else ""), shown[:40],
                     "rw" if v.writable else "r"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        cells = "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False))
        print(f"{cells}  {r[4]}", file=out)
    print(f"{len(found)} variable(s)", file=out)


def _yaml(found: list[Variable]) -> str:
    used: set[str] = set()
    points = []
    for v in found:
        last = v.path.rsplit("/", 1)[-1].split(";")[-1]
        name = _point_name(last, used)
        entry: dict[str, Any] = {"name": name, "node": v.node}
        kind = "array" if v.array else _TYPES.get(v.data_type)
        if kind is None and v.data_type.startswith(("Int", "UInt", "SByte", "Byte")):
            kind = "int"
        if kind is not None:
            entry["type"] = kind
        points.append(entry)
    return yaml.safe_dump({"points": points}, sort_keys=False, allow_unicode=True)


def _point_name(text: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.\-]", "_", text).strip("_") or "point"
    if not re.match(r"^[A-Za-z_]", base):
        base = f"p_{base}"
    base = base[:60]
    name, n = base, 2
    while name in used:
        name, n = f"{base}_{n}", n + 1
    used.add(name)
    return name
