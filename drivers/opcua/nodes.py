"""Points to NodeIds, resolved on every connection.

A namespace index (``ns=3``) is only valid for one server run: a server may register its
namespaces in another order after a restart. So points name namespaces by URI
(``nsu=urn:...;s=Name``) or by browse path, and the index is looked up in the server's
NamespaceArray each time a session starts. A point that cannot be resolved now (a namespace or
node the server does not have yet) is reported with the reason and resolved again later;
the others are unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asyncua import ua

from drivers.opcua.config import OpcUaDevice, OpcUaPoint


@dataclass(frozen=True, slots=True)
class Resolved:
    nodes: dict[str, ua.NodeId]
    """Point name -> NodeId, for the points resolved."""
    failed: dict[str, str]
    """Point name -> why it could not be resolved now."""
    index_only: list[str]
    """Points addressed by namespace index (``ns=``), which a restart can break."""


def parse(text: str, namespaces: list[str]) -> ua.NodeId:
    """``nsu=URI;s=Name`` (the index looked up in ``namespaces``), ``ns=2;s=Name``, ``i=85``.
    Raises ValueError with the reason."""
    if text.startswith("nsu="):
        uri, _, rest = text[4:].partition(";")
        if uri not in namespaces:
            raise ValueError(f"the server has no namespace {uri!r}")
        bare = ua.NodeId.from_string(rest)
        return ua.NodeId(bare.Identifier, namespaces.index(uri), bare.NodeIdType)
    try:
        return ua.NodeId.from_string(text)
    except Exception as exc:  # asyncua raises bare exceptions for malformed text
        raise ValueError(f"{text!r} is not a NodeId: {exc}") from exc


def qualified_names(
    path: str, default_namespace: str | None, namespaces: list[str]
) -> list[ua.QualifiedName]:
    """``ST10/nsu=urn:x;part_serial`` -> browse names with the server's current indexes."""
    out: list[ua.QualifiedName] = []
    for segment in path.strip("/").split("/"):
        uri, name = default_namespace, segment
        if segment.startswith("nsu="):
            uri, _, name = segment[4:].partition(";")
        if uri is None:
            raise ValueError(f"{segment!r} names no namespace")
        if uri not in namespaces:
            raise ValueError(f"the server has no namespace {uri!r}")
        out.append(ua.QualifiedName(name, namespaces.index(uri)))
    return out


def browse_request(names: list[ua.QualifiedName]) -> ua.BrowsePath:
    """One TranslateBrowsePathsToNodeIds path from the Objects folder, forward through
    hierarchical references (Organizes, HasComponent, HasProperty ...)."""
    elements = []
    for name in names:
        element = ua.RelativePathElement()
        element.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HierarchicalReferences)
        element.IsInverse = False
        element.IncludeSubtypes = True
        element.TargetName = name
        elements.append(element)
    path = ua.BrowsePath()
    path.StartingNode = ua.NodeId(ua.ObjectIds.ObjectsFolder)
    path.RelativePath = ua.RelativePath(Elements=elements)
    return path


async def resolve(
    client: Any, device: OpcUaDevice, points: Sequence[OpcUaPoint], namespaces: list[str]
) -> Resolved:
    """NodeIds of ``points`` with this session's namespace indexes: NodeId texts parsed,
    browse paths translated in one TranslateBrowsePathsToNodeIds call."""
    resolved = by_node_id(device, points, namespaces)
    paths: list[tuple[OpcUaPoint, ua.BrowsePath]] = []
    for p in points:
        if p.browse_path is None:
            continue
        try:
            names = qualified_names(p.browse_path, device.namespace, namespaces)
        except ValueError as exc:
            resolved.failed[p.name] = str(exc)
            continue
        paths.append((p, browse_request(names)))
    if not paths:
        return resolved
    results = await client.uaclient.translate_browsepaths_to_nodeids([bp for _, bp in paths])
    for (p, _), result in zip(paths, results, strict=True):
        if result.StatusCode.is_good() and result.Targets:
            target = result.Targets[0].TargetId  # an ExpandedNodeId, local to this server
            resolved.nodes[p.name] = ua.NodeId(
                target.Identifier, target.NamespaceIndex, target.NodeIdType
            )
        else:
            why = f"browse path {p.browse_path!r} leads nowhere: {result.StatusCode.name}"
            resolved.failed[p.name] = why
    return resolved


def by_node_id(
    device: OpcUaDevice, points: Sequence[OpcUaPoint], namespaces: list[str]
) -> Resolved:
    """Resolve the points given by ``node``; those given by browse path are left out (their
    translation needs the server: see ``driver``)."""
    nodes: dict[str, ua.NodeId] = {}
    failed: dict[str, str] = {}
    index_only: list[str] = []
    for p in points:
        if p.node is None:
            continue
        try:
            nodes[p.name] = parse(p.node, namespaces)
        except ValueError as exc:
            failed[p.name] = str(exc)
            continue
        if p.node.startswith("ns="):
            index_only.append(p.name)
    return Resolved(nodes, failed, index_only)
