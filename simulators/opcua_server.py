"""An OPC UA server (asyncua) that plays simulated stations, as :mod:`simulators.modbus_server`
does over Modbus: same :class:`~simulators.station.StationModel`, same handshake
(:class:`~simulators.station.HandshakePlc`), so an OPC UA driver is tested end to end against
the same ground truth.

Address space, in the namespace ``namespace_uri`` (index ``namespace_index``)::

    Objects/
      <ns>:ST10                      ns=<ns>;s=ST10            (unit 1; ST20 is unit 2, ...)
        <ns>:cycle_counter           ns=<ns>;s=ST10.cycle_counter   UInt32
        ...                          every REGISTER_MAP point, then running, cycle_complete,
                                     data_ready and data_taken (Boolean, the only writable one)

Types and values: :mod:`simulators.opcua.points`. Address by ``nsu=<uri>;s=ST10.force``
(:func:`~simulators.opcua.points.expanded_node_id`): the index moves when
``shift_namespaces`` changes between a stop and a start, as it may after a real server restart.

Values follow the model in time. A background task writes the variables that changed, each with
SourceTimestamp = the instant the value changed: it wakes at every cycle-complete edge (computed
from the model, so a 10 ms cycle's 1 ms complete window shows), replays edges it woke too late
for, and samples the analog values every ``sample_interval`` in between. A write to data_taken
is applied to the station before the Write response goes out, like a coil write on Modbus.

Station state lives in this object, not in the asyncua server: stop() then start() (same port)
is a power cycle of the network side only; a handshake station still waits where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from asyncua import Server, ua

from simulators.opcua.internals import StationInternalServer, StationWrites
from simulators.opcua.points import (
    NAMESPACE_URI,
    POINT_TYPES,
    WRITABLE,
    expanded_node_id,
    free_running_values,
    node_id_string,
    process_values,
)
from simulators.opcua.security import (
    APPLICATION_URI,
    NONE_ONLY,
    Policy,
    ServerIdentity,
    StationUsers,
    check_policies,
    identity_tokens,
    is_secure,
    server_identity,
    trust_list_validator,
)
from simulators.scenario import station_name
from simulators.station import COMPLETE_PHASE, HandshakePlc, Stage, StationModel
from simulators.station_server import StationServerBase

log = logging.getLogger(__name__)

MAX_REPLAY = 64
"""At most this many missed edges per station are replayed after the loop woke late."""
DUMMY_NAMESPACE = "urn:edge-agent:sim:dummy:{}"
FIRST_SUBSCRIPTION_ID = 1000


class _Feed:
    """One station's variables: what it shows at an instant, and what was last written."""

    def __init__(self, station: StationModel, plc: HandshakePlc | None) -> None:
        self.station = station
        self.plc = plc
        self.name = station_name(station.unit_id - 1)
        self.nodes: dict[str, ua.NodeId] = {}
        self.last: dict[str, Any] = {}
        self.segment = -1  # free-running: 2 * cycle + (complete ? 1 : 0) of the last state shown

    @property
    def moving(self) -> bool:
        """Analog values change with time (a handshake station holding a part is frozen)."""
        return self.plc is None or self.plc.stage is Stage.WORKING

    def due(self, now: float) -> float:
        """When the next edge (cycle complete on or off) comes by itself; inf if it waits."""
        model = self.station
        if self.plc is None:
            k, phase = model.cycle_at(now)
            return self._at(k, COMPLETE_PHASE if phase < COMPLETE_PHASE else 1.0)
        if self.plc.stage is Stage.WORKING:
            return self.plc.started + model.cycle_time
        return math.inf

    def states(self, now: float, taken: bool) -> list[tuple[float, dict[str, Any]]]:
        """The states to show at ``now``, oldest first, each with the instant it began."""
        if self.plc is not None:
            return [self._handshake_state(now)]
        model = self.station
        k, phase = model.cycle_at(now)
        segment = 2 * k + (phase >= COMPLETE_PHASE)
        out = []
        if self.segment >= 0:
            # Each edge since the last state shown, at its instant: none is lost to a late wake.
            for s in range(max(self.segment + 1, segment - MAX_REPLAY + 1), segment + 1):
                ks, complete = divmod(s, 2)
                start = COMPLETE_PHASE if complete else 0.0
                values = free_running_values(model, ks, start)
                out.append((self._at(ks, start), {**values, "data_taken": taken}))
        self.segment = segment
        out.append((now, {**free_running_values(model, k, phase), "data_taken": taken}))
        return out

    def _handshake_state(self, now: float) -> tuple[float, dict[str, Any]]:
        plc = self.plc
        assert plc is not None
        ready_at = plc.started + self.station.cycle_time if plc.stage is Stage.WORKING else None
        plc.advance(now)
        at = ready_at if ready_at is not None and plc.stage is not Stage.WORKING else now
        return at, {
            **process_values(self.station, plc.cycle, plc.phase(now)),
            "running": True,
            "cycle_complete": plc.stage is not Stage.WORKING,
            "data_ready": plc.data_ready,
            "data_taken": plc.data_taken,
        }

    def _at(self, cycle: int, phase: float) -> float:
        return (self.station.t0 or 0.0) + (cycle + phase) * self.station.cycle_time


class OpcUaStationServer(StationServerBase):
    """Serve ``stations`` on ``opc.tcp://host:port/`` (port 0 picks a free one; see ``port``).

    Security (checked here, at construction):

    - ``security``: the endpoints offered, asyncua's ``ua.SecurityPolicyType`` values; default
      :data:`~simulators.opcua.security.NONE_ONLY`. Any of
      :data:`~simulators.opcua.security.SECURE_POLICIES` (Basic256Sha256,
      Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss; Sign or SignAndEncrypt), with or without
      NoSecurity. Without NoSecurity, sessions over a None channel are refused.
    - ``pki_dir``: where the self-signed server certificate (``server_cert.der``,
      ``server_key.pem``) is created on the first start and reused after; None keeps it in
      memory for the life of this object. Only needed with a secure endpoint.
    - ``users``: username -> password; ``anonymous``: whether anonymous sessions are allowed;
      ``user_certificates``: DER certificates accepted as user identities (X509 tokens).
    - ``trust_dir``: a folder of trusted client certificates (DER or PEM). When set, a client
      certificate that is not in it (nor issued by a CA in it), or that fails asyncua's other
      checks (validity, application URI, key usage), fails CreateSession.

    ``requests`` (from the base class) is not counted here; ``updates`` counts variable writes.
    """

    def __init__(
        self,
        stations: Sequence[StationModel],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        namespace_uri: str = NAMESPACE_URI,
        security: Sequence[Policy] = NONE_ONLY,
        users: Mapping[str, str] | None = None,
        user_certificates: Sequence[bytes] = (),
        anonymous: bool = True,
        trust_dir: str | Path | None = None,
        pki_dir: str | Path | None = None,
        shift_namespaces: int = 0,
        sample_interval: float = 0.01,
    ) -> None:
        super().__init__(stations)
        self.host = host
        self.port = port
        self.namespace_uri = namespace_uri
        self.security = check_policies(security)
        self.users = dict(users or {})
        self.anonymous = anonymous
        self.user_certificates = [bytes(c) for c in user_certificates]
        """DER certificates accepted as user identities (X509IdentityToken)."""
        identity_tokens(self.users, anonymous, self.user_certificates)  # fails if nobody could
        self.trust_dir = Path(trust_dir) if trust_dir is not None else None
        self.pki_dir = Path(pki_dir) if pki_dir is not None else None
        if shift_namespaces < 0:
            raise ValueError("shift_namespaces must be >= 0")
        self.shift_namespaces = shift_namespaces
        """Dummy namespaces registered before the stations' one; change it between stop()
        and start() to move ``namespace_index``."""
        if sample_interval <= 0:
            raise ValueError("sample_interval must be > 0")
        self.sample_interval = sample_interval
        self.namespace_index = -1
        """The stations' namespace index while running (-1 before the first start)."""
        self.updates = 0
        """Variable values written by the simulation (each one a data change)."""
        self._feeds = [_Feed(st, self._plcs.get(st.unit_id)) for st in self.stations]
        self._identity: ServerIdentity | None = None
        self._next_subscription_id = FIRST_SUBSCRIPTION_ID
        self._wall_offset = time.time() - time.monotonic()
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # made again by start(), in the loop that runs it
        self._wake = asyncio.Event()

    # ---- addresses and clocks -------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def certificate(self) -> bytes | None:
        """The server certificate (DER), once created; for clients that pin it."""
        return self._identity.der if self._identity is not None else None

    def station_name(self, unit_id: int) -> str:
        return station_name(unit_id - 1)

    def node_id(self, unit_id: int, point: str | None = None) -> ua.NodeId:
        """The NodeId of a station's object (point None) or variable, with the current index."""
        if self.namespace_index < 0:
            raise RuntimeError("the server has not been started")
        return ua.NodeId(node_id_string(self.station_name(unit_id), point), self.namespace_index)

    def expanded_node_id(self, unit_id: int, point: str | None = None) -> str:
        """``nsu=<namespace_uri>;s=<Station>.<point>``: valid whatever the index."""
        return expanded_node_id(self.station_name(unit_id), point, self.namespace_uri)

    def source_time(self, monotonic: float) -> datetime:
        """The UTC wall-clock time the server stamps for a monotonic instant."""
        return datetime.fromtimestamp(monotonic + self._wall_offset, UTC)

    def monotonic_at(self, stamp: datetime) -> float:
        """The monotonic instant of a server timestamp (inverse of :meth:`source_time`, to
        the microsecond)."""
        return stamp.timestamp() - self._wall_offset

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("already running")
        self._lock, self._wake = asyncio.Lock(), asyncio.Event()
        writes = StationWrites()
        secure_only = Policy.NoSecurity not in self.security
        users = StationUsers(
            self.users,
            anonymous=self.anonymous,
            secure_only=secure_only,
            certificates=self.user_certificates,
        )
        iserver = StationInternalServer(users, writes, self._next_subscription_id)
        server = Server(iserver=iserver)
        await server.init()
        await server.set_application_uri(APPLICATION_URI)
        server.set_server_name("edge-agent OPC UA station simulator")
        server.set_endpoint(self.endpoint)
        server.set_security_policy(list(self.security))
        server.set_identity_tokens(
            identity_tokens(self.users, self.anonymous, self.user_certificates)
        )
        if is_secure(self.security):
            if self._identity is None:
                self._identity = server_identity(self.pki_dir, self.host)
            iserver.certificate = self._identity.certificate
            iserver.private_key = self._identity.private_key
        if self.trust_dir is not None:
            server.set_certificate_validator(trust_list_validator(self.trust_dir))
        for i in range(self.shift_namespaces):
            await server.register_namespace(DUMMY_NAMESPACE.format(i + 1))
        index = await server.register_namespace(self.namespace_uri)
        now = time.monotonic()
        for feed in self._feeds:
            await self._build(server, index, feed, writes, now)
        await server.start()
        try:
            self._adopt_port(server)
        except BaseException:
            await self._shutdown(server)
            raise
        self.namespace_index = index
        self._server = server
        self._task = asyncio.create_task(self._run(), name=f"opcua-sim-{self.port}")
        log.info(
            "simulated OPC UA server on %s, stations %s, ns=%d, endpoints %s",
            self.endpoint,
            [f.name for f in self._feeds],
            index,
            [p.name for p in self.security],
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._server = self._server, None
        if server is not None:
            await self._shutdown(server)

    async def __aenter__(self) -> OpcUaStationServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def drop_connections(self) -> None:
        """Close every client connection, keeping the server, its sessions and their
        subscriptions: a network outage, after which clients reactivate their sessions."""
        if self._server is not None:
            for transport in list(self._server.iserver.asyncio_transports):
                transport.close()

    # ---- internals --------------------------------------------------------------------------

    async def _build(
        self, server: Server, ns: int, feed: _Feed, writes: StationWrites, now: float
    ) -> None:
        obj = await server.nodes.objects.add_object(
            ua.NodeId(node_id_string(feed.name), ns), ua.QualifiedName(feed.name, ns)
        )
        feed.segment = -1
        states = feed.states(now, self.data_taken(feed.station.unit_id))
        initial = states[-1][1]
        feed.nodes = {}
        for point, vtype in POINT_TYPES.items():
            nodeid = ua.NodeId(node_id_string(feed.name, point), ns)
            var = await obj.add_variable(
                nodeid, ua.QualifiedName(point, ns), ua.Variant(initial[point], vtype)
            )
            if point in WRITABLE:
                await var.set_writable()
                writes.watched[nodeid] = partial(self._taken_written, feed)
            else:
                writes.read_only.add(nodeid)
            feed.nodes[point] = nodeid
        feed.last = {}
        await self._show(server, feed, states)  # every value again, now with its timestamps

    def _adopt_port(self, server: Server) -> None:
        """Learn the port the OS picked, keep it for restarts, and put it in the endpoint
        descriptions asyncua built with the requested one."""
        assert server.bserver is not None
        self.port = int(server.bserver.port)
        url = self.endpoint
        server.endpoint = urlparse(url)
        for description in server.iserver.endpoints:
            description.EndpointUrl = url
            description.Server.DiscoveryUrls = [url]

    async def _shutdown(self, server: Server) -> None:
        iserver = server.iserver
        assert isinstance(iserver, StationInternalServer)
        self._next_subscription_id = iserver.station_subscriptions.next_id
        await iserver.stop_clock()
        await server.stop()
        await iserver.close_sessions()

    async def _run(self) -> None:
        assert self._server is not None
        try:
            await self._simulate(self._server)
        except Exception:
            log.exception("the OPC UA simulation stopped; values no longer change")
            raise

    async def _simulate(self, server: Server) -> None:
        while True:
            now = time.monotonic()
            async with self._lock:
                for feed in self._feeds:
                    await self._show(server, feed, self._states(feed, now))
            wake = min(feed.due(now) for feed in self._feeds)
            if any(feed.moving for feed in self._feeds):
                wake = min(wake, now + self.sample_interval)
            self._wake.clear()
            delay = wake - time.monotonic()
            if delay <= 0:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if math.isinf(delay) else delay):
                    await self._wake.wait()

    def _states(self, feed: _Feed, now: float) -> list[tuple[float, dict[str, Any]]]:
        return feed.states(now, self.data_taken(feed.station.unit_id))

    async def _show(
        self, server: Server, feed: _Feed, states: list[tuple[float, dict[str, Any]]]
    ) -> None:
        for at, values in states:
            changed = {n: v for n, v in values.items() if n not in feed.last or feed.last[n] != v}
            if not changed:
                continue
            source = self.source_time(at)
            stamp = datetime.now(UTC)
            for name, value in changed.items():
                data = ua.DataValue(
                    ua.Variant(value, POINT_TYPES[name]),
                    SourceTimestamp=source,
                    ServerTimestamp=stamp,
                )
                await server.write_attribute_value(feed.nodes[name], data)
                self.updates += 1
            feed.last.update(changed)

    async def _taken_written(self, feed: _Feed, value: ua.DataValue) -> None:
        """A client wrote data_taken (asyncua has stored it): the PLC acts on it now."""
        taken = bool(value.Value.Value) if value.Value is not None else False
        server = self._server
        if server is None:
            return
        now = time.monotonic()
        async with self._lock:
            self._write_taken(feed.station, taken, now)
            feed.last["data_taken"] = taken
            await self._show(server, feed, self._states(feed, now))
        self._wake.set()  # a released part starts its cycle: the loop re-plans
