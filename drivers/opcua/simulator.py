"""Simulated OPC UA servers from the config (``edge-agent simulate --config``): one asyncua
server per endpoint of the config, holding a variable for every point at its node id
(``nsu=URI;s=Name``, ``ns=2;i=17``: the namespaces are registered so that their indexes and
URIs are the config's) or at its browse path (objects created along the path, in the
device's namespace), typed by the point's ``type`` (bool: Boolean, int: Int64, float:
Double, string: String; any: the scripted value's own type).

Scripted values are written as they change (every :data:`UPDATE` seconds, with their source
timestamp); every variable is writable, and a client's write reaches the scenario before the
Write response goes out (a handshake's data taken). The server offers security None only:
the overrides turn a secured device's security off (and its user certificate); a username is
accepted with the config's password.

Faults: ``restart`` and ``unplug`` (the server stops, sessions and subscriptions are lost,
and it starts again on the same port after the fault's duration, with the same node ids),
and ``silent`` (the server hangs: connections stay open, even new ones, but no request is
read, so none is answered; the agent learns it from its timeouts and the missing
keep-alives, and its session may live on once the server reads again). A fault on one device
of an endpoint is the whole server's: every device it serves is affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlparse

from asyncua import Server, ua

from drivers.device import DeviceConfig
from drivers.opcua.config import OpcUaDevice, OpcUaPoint, ValueType
from kernel.model import Value
from simulators.devicemap.kinds import (
    ActiveFault,
    Endpoint,
    KindSimulator,
    Placement,
    ValueSpec,
    World,
)
from simulators.opcua.internals import StationInternalServer, StationWrites
from simulators.opcua.security import StationUsers, identity_tokens

log = logging.getLogger(__name__)

UPDATE = 0.02
"""Seconds between two looks at the scripted values."""
DUMMY_NAMESPACE = "urn:edge-agent:simulate:ns{}"
_NODE = re.compile(r"^(?:(?:nsu=(?P<uri>[^;]+)|ns=(?P<index>\d+));)?(?P<id>[sigb]=.+)$")
_VARIANTS = {
    ValueType.BOOL: ua.VariantType.Boolean,
    ValueType.INT: ua.VariantType.Int64,
    ValueType.FLOAT: ua.VariantType.Double,
    ValueType.STRING: ua.VariantType.String,
}
_DEFAULTS: dict[ua.VariantType, Any] = {
    ua.VariantType.Boolean: False,
    ua.VariantType.Int64: 0,
    ua.VariantType.Double: 0.0,
    ua.VariantType.String: "",
}


def point_spec(point: OpcUaPoint) -> ValueSpec | None:
    if point.type is ValueType.BOOL:
        return ValueSpec("Boolean", "bool")
    if point.type is ValueType.INT:
        return ValueSpec("Int64", "number", integer=True, low=-(2**63), high=2**63 - 1)
    if point.type is ValueType.FLOAT:
        return ValueSpec("Double", "number")
    if point.type is ValueType.STRING:
        return ValueSpec("String", "text", encoding="utf-8")
    if point.type is ValueType.ANY:
        return ValueSpec("any", "any")
    return None  # datetime, bytes, arrays: served with no value, not scripted


def variant(point: OpcUaPoint, value: Value) -> ua.Variant:
    """``value`` as the variable of ``point`` holds it."""
    vtype = _VARIANTS.get(point.type)
    if vtype is None:  # any: the value's own type
        if isinstance(value, bool):
            vtype = ua.VariantType.Boolean
        elif isinstance(value, int):
            vtype = ua.VariantType.Int64
        elif isinstance(value, float):
            vtype = ua.VariantType.Double
        else:
            vtype = ua.VariantType.String
    if value is None:
        value = _DEFAULTS[vtype]
    elif vtype is ua.VariantType.Int64 and not isinstance(value, bool):
        value = round(float(value)) if isinstance(value, float) else int(value)
    elif vtype is ua.VariantType.Double:
        value = float(value)
    return ua.Variant(value, vtype)


class _Variable:
    """A point's variable: where it is, and what was last shown."""

    def __init__(self, device: str, point: OpcUaPoint) -> None:
        self.device = device
        self.point = point
        self.node: ua.NodeId | None = None
        self.last: Any = object()


class OpcUaEndpoint(Endpoint):
    """One OPC UA server, holding the variables of every device the config reaches at its
    endpoint."""

    def __init__(self, devices: Sequence[OpcUaDevice], world: World, place: Placement) -> None:
        self.configs = list(devices)
        self.devices = tuple(d.name for d in devices)
        self.world = world
        self.host = place.host
        self.port = 0
        self.variables = [_Variable(d.name, p) for d in devices for p in d.points]
        self.writes: list[tuple[str, str, Value]] = []
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_subscription = 1000
        self._down: set[str] = set()
        self._silent: set[str] = set()
        first = urlparse(devices[0].endpoint)
        self._path = first.path or "/"

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self._path}"

    async def start(self) -> None:
        users = {
            d.username: d.password.get_secret_value()
            for d in self.configs
            if d.username is not None and d.password is not None
        }
        writes = StationWrites()
        iserver = StationInternalServer(
            StationUsers(users, anonymous=True, secure_only=False), writes, self._next_subscription
        )
        server = Server(iserver=iserver)
        await server.init()
        server.set_server_name("edge-agent simulate")
        server.set_endpoint(self.endpoint)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens(identity_tokens(users, True))
        try:
            await self._build(server, writes)
            await server.start()
        except BaseException:
            await self._shutdown(server)
            raise
        assert server.bserver is not None
        self.port = int(server.bserver.port)  # the same port after a restart
        for description in server.iserver.endpoints:
            description.EndpointUrl = self.endpoint
            description.Server.DiscoveryUrls = [self.endpoint]
        self._server = server
        self._hush()
        self._task = asyncio.create_task(self._show_values(), name=f"simulate: opcua {self.port}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._server = self._server, None
        if server is not None:
            await self._shutdown(server)

    def overrides(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for d in self.configs:
            keys: dict[str, Any] = {"endpoint": self.endpoint}
            if d.security_policy != "None" or d.security_mode != "None":
                keys |= {"security_policy": "None", "security_mode": "None"}
            if d.user_certificate is not None:
                keys |= {"user_certificate": None, "user_private_key": None}
            out[d.name] = keys
        return out

    def describe(self) -> str:
        return f"OPC UA server {self.endpoint}: {', '.join(self.devices)}"

    async def fault_started(self, device: str, fault: ActiveFault) -> None:
        if fault.kind in ("restart", "unplug"):
            if not self._down:
                await self.stop()
            self._down.add(device)
        elif fault.kind == "silent":
            self._silent.add(device)
            self._hush()

    async def fault_ended(self, device: str, fault: ActiveFault) -> None:
        if fault.kind in ("restart", "unplug") and device in self._down:
            self._down.discard(device)
            if not self._down:
                await self.start()
        elif fault.kind == "silent":
            self._silent.discard(device)
            self._hush()

    def _hush(self) -> None:
        """The server silent while any of its devices has a silent fault (a restarted server
        is silent from its start if one is still in force)."""
        if self._server is not None:
            iserver = self._server.iserver
            assert isinstance(iserver, StationInternalServer)
            iserver.set_silent(bool(self._silent))

    # ---- the address space -------------------------------------------------------------------

    async def _build(self, server: Server, writes: StationWrites) -> None:
        explicit = [
            int(m["index"]) for v in self.variables if (m := _match(v.point)) and m["index"]
        ]
        for i in range(2, max(explicit, default=1) + 1):
            await server.register_namespace(DUMMY_NAMESPACE.format(i))
        indexes: dict[str, int] = {}

        async def index(uri: str) -> int:
            if uri not in indexes:
                indexes[uri] = int(await server.register_namespace(uri))
            return indexes[uri]

        folders: dict[tuple[str, ...], Any] = {}
        for var in self.variables:
            device = next(d for d in self.configs if d.name == var.device)
            value = self.world.value(var.device, var.point.name)
            initial = variant(var.point, value)
            if var.point.node is not None:
                m = _match(var.point)
                assert m is not None
                ns = await index(m["uri"]) if m["uri"] else int(m["index"] or 0)
                node_id = ua.NodeId.from_string(f"ns={ns};{m['id']}")
                if ns == 0:
                    continue  # the server's own nodes (i=2258 ...) answer for themselves
                name = ua.QualifiedName(m["id"][2:], ns)
                parent = server.nodes.objects
            else:
                segments = (var.point.browse_path or "").strip("/").split("/")
                names = []
                for seg in segments:
                    uri, _, text = seg.rpartition(";") if seg.startswith("nsu=") else ("", "", seg)
                    uri = uri.removeprefix("nsu=") or (device.namespace or "")
                    names.append(ua.QualifiedName(text, await index(uri)))
                parent = server.nodes.objects
                for depth in range(1, len(names)):
                    key = tuple(f"{q.NamespaceIndex}:{q.Name}" for q in names[:depth])
                    if key not in folders:
                        folder_id = ua.NodeId(
                            "/".join(q.Name for q in names[:depth]), names[depth - 1].NamespaceIndex
                        )
                        folders[key] = await parent.add_object(folder_id, names[depth - 1])
                    parent = folders[key]
                name = names[-1]
                node_id = ua.NodeId("/".join(q.Name for q in names), name.NamespaceIndex)
            try:
                node = await parent.add_variable(node_id, name, initial)
            except ua.UaStatusCodeError:  # two points at one node: the first one holds it
                var.node = node_id
                continue
            await node.set_writable()
            var.node = node_id
            var.last = initial.Value
            writes.watched[node_id] = self._written(var)

    def _written(self, var: _Variable) -> Any:
        async def written(value: ua.DataValue) -> None:
            got = value.Value.Value if value.Value is not None else None
            shown: Value = got if isinstance(got, bool | int | float | str) else None
            self.writes.append((var.device, var.point.name, shown))
            self.world.written(var.device, var.point.name, shown)

        return written

    async def _show_values(self) -> None:
        server = self._server
        assert server is not None
        while True:
            stamp = datetime.now(UTC)
            for var in self.variables:
                if var.node is None:
                    continue
                value = self.world.value(var.device, var.point.name)
                if value is None or (value == var.last and type(value) is type(var.last)):
                    continue
                try:
                    data = ua.DataValue(
                        variant(var.point, value), SourceTimestamp=stamp, ServerTimestamp=stamp
                    )
                except (TypeError, ValueError, OverflowError) as exc:
                    log.error("%s.%s: cannot hold %r: %s", var.device, var.point.name, value, exc)
                    var.node = None
                    continue
                await server.write_attribute_value(var.node, data)
                var.last = value
            await asyncio.sleep(UPDATE)

    async def _shutdown(self, server: Server) -> None:
        iserver = server.iserver
        assert isinstance(iserver, StationInternalServer)
        self._next_subscription = iserver.station_subscriptions.next_id
        await iserver.stop_clock()
        await server.stop()
        await iserver.close_sessions()
        for var in self.variables:
            var.last = object()  # a new server shows every value again


def _match(point: OpcUaPoint) -> re.Match[str] | None:
    return None if point.node is None else _NODE.match(point.node)


class OpcUaSimulator(KindSimulator):
    faults = frozenset({"silent", "restart", "unplug"})

    def value_spec(self, device: DeviceConfig, point: str) -> ValueSpec | None:
        p = next((q for q in cast(OpcUaDevice, device).points if q.name == point), None)
        return None if p is None else point_spec(p)

    def endpoints(
        self, devices: Sequence[DeviceConfig], world: World, place: Placement
    ) -> list[Endpoint]:
        groups: dict[str, list[OpcUaDevice]] = {}
        for d in devices:
            ua_device = cast(OpcUaDevice, d)
            url = urlparse(ua_device.endpoint)
            groups.setdefault(f"{(url.hostname or '').lower()}:{url.port}", []).append(ua_device)
        return [OpcUaEndpoint(group, world, place) for group in groups.values()]


SIMULATOR = OpcUaSimulator()
