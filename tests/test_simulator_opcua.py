"""The OPC UA station simulator through asyncua's client: values against the station model,
every edge of a fast cycle, the data ready / data taken handshake, restarts that move the
namespace index, security (users, trust list, no downgrade) and an honest Republish."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, Node, ua
from asyncua.common.subscription import DataChangeNotif
from asyncua.crypto import cert_gen
from asyncua.crypto import security_policies as sp
from asyncua.crypto.uacrypto import CertProperties
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from simulators.opcua.points import POINT_TYPES
from simulators.opcua.security import SECURE_POLICIES, server_identity
from simulators.opcua_server import OpcUaStationServer
from simulators.station import (
    GTIN,
    HANDSHAKE_PHASE,
    REGISTER_MAP,
    RESULT_IN_WORK,
    RESULT_NOK,
    RESULT_OK,
    StationModel,
)
from tests.modbus_helpers import no_leaks, wait_until
from tests.waiting import deadline

pytestmark = pytest.mark.timeout(30)

ANALOG = ("temperature", "force", "pressure", "position")
"""Points that change continuously with the phase."""
FLAGS = ("running", "cycle_complete", "data_ready", "data_taken")
CLIENT_URI = "urn:edge-agent:test:opcua-client"
V = ua.VariantType
EXPECTED_TYPES = {  # written out: the simulator derives its table from REGISTER_MAP
    "cycle_counter": V.UInt32,
    "temperature": V.Float,
    "force": V.Float,
    "pressure": V.Double,
    "status": V.UInt16,
    "cycle_time_ms": V.UInt32,
    "energy": V.UInt64,
    "position": V.Double,
    "offset": V.Int16,
    "part_serial": V.String,
    "material_lot": V.String,
    "final_force": V.Float,
    "final_depth": V.Float,
    "result": V.UInt16,
    "part_label": V.String,
    "running": V.Boolean,
    "cycle_complete": V.Boolean,
    "data_ready": V.Boolean,
    "data_taken": V.Boolean,
}


@pytest.fixture(autouse=True)
async def _no_leaks() -> AsyncIterator[None]:
    async with no_leaks():
        yield


def f32(x: float) -> float:
    value: float = struct.unpack(">f", struct.pack(">f", x))[0]
    return value


def truth(model: StationModel, k: int, phase: float) -> dict[str, Any]:
    """What the variables must hold: float32 registers as float32, pressure in bar."""
    out: dict[str, Any] = {}
    for name, value in model.values(k, phase).items():
        _a, kind, _o, _c, _u, scale = REGISTER_MAP[name]
        if kind == "float32":
            out[name] = f32(value)
        elif name == "pressure":
            assert scale == 0.01
            out[name] = value / 100
        else:
            out[name] = value
    return out


async def resolve(client: Client, expanded: str) -> ua.NodeId:
    """What a driver does with ``nsu=``: look the URI up in the server's NamespaceArray."""
    node_id = ua.NodeId.from_string(expanded)
    assert isinstance(node_id, ua.ExpandedNodeId)
    assert node_id.NamespaceUri
    index = await client.get_namespace_index(node_id.NamespaceUri)
    return ua.NodeId(node_id.Identifier, index)


async def variables(client: Client, server: OpcUaStationServer, unit: int) -> dict[str, Node]:
    names = [*REGISTER_MAP, *FLAGS]
    ids = [await resolve(client, server.expanded_node_id(unit, n)) for n in names]
    return {n: client.get_node(i) for n, i in zip(names, ids, strict=True)}


async def read(client: Client, nodes: dict[str, Node]) -> dict[str, ua.DataValue]:
    """One Read request: one instant of the server."""
    params = ua.ReadParameters()
    for node in nodes.values():
        params.NodesToRead.append(
            ua.ReadValueId(NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value)
        )
    values = await client.uaclient.read(params)
    return dict(zip(nodes, values, strict=True))


def plain(values: dict[str, ua.DataValue]) -> dict[str, Any]:
    out = {}
    for name, dv in values.items():
        assert dv.StatusCode is not None
        assert dv.StatusCode.is_good(), name
        assert dv.Value is not None
        out[name] = dv.Value.Value
    return out


@dataclass
class Change:
    point: str
    value: Any
    source: datetime


class Changes:
    """A subscription handler that keeps every data change, in arrival order."""

    def __init__(self, names: dict[ua.NodeId, str]) -> None:
        self.names = names
        self.seen: list[Change] = []
        self.arrived = asyncio.Event()

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        source = data.monitored_item.Value.SourceTimestamp
        assert source is not None
        self.seen.append(Change(self.names[node.nodeid], val, source))
        self.arrived.set()

    def of(self, point: str) -> list[Change]:
        return [c for c in self.seen if c.point == point]

    async def until(
        self, condition: Callable[[], bool], within: float = 5.0, what: str = "changes"
    ) -> None:
        try:
            async with asyncio.timeout(within):
                while not condition():
                    self.arrived.clear()
                    await self.arrived.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {within}s waiting for {what}") from None


async def subscribe(client: Client, nodes: dict[str, Node], period: float = 10) -> Changes:
    changes = Changes({n.nodeid: name for name, n in nodes.items()})
    sub = await client.create_subscription(period, changes)
    # Sampling interval 0 and a queue: asyncua's defaults (50 ms, queue 1) lose short pulses.
    await sub.subscribe_data_change(list(nodes.values()), queuesize=100, sampling_interval=0)
    return changes


def client_identity(uri: str = CLIENT_URI) -> tuple[bytes, bytes]:
    """A self-signed client certificate (DER) and its key (PEM), as asyncua's tools make them."""
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "edge-agent test client",
        {},
        [x509.UniformResourceIdentifier(uri), x509.DNSName(socket.gethostname())],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    return cert.public_bytes(serialization.Encoding.DER), cert_gen.dump_private_key_as_pem(key)


async def secure_client(
    server: OpcUaStationServer,
    identity: tuple[bytes, bytes],
    policy: type[sp.SecurityPolicy] = sp.SecurityPolicyBasic256Sha256,
    mode: ua.MessageSecurityMode = ua.MessageSecurityMode.SignAndEncrypt,
    user: tuple[str, str] | None = None,
) -> Client:
    client = Client(server.endpoint, timeout=2)
    client.application_uri = CLIENT_URI
    if user is not None:
        client.set_user(user[0])
        client.set_password(user[1])
    cert, key = identity
    await client.set_security(
        policy,
        CertProperties(cert, extension="der"),
        CertProperties(key, extension="pem"),
        mode=mode,
    )
    return client


async def read_counter(client: Client, server: OpcUaStationServer, unit: int = 1) -> Any:
    node = client.get_node(await resolve(client, server.expanded_node_id(unit, "cycle_counter")))
    return await node.read_value()


# -- the variables --------------------------------------------------------------------------


def test_variables_have_the_natural_opcua_types() -> None:
    assert POINT_TYPES == EXPECTED_TYPES


async def test_values_match_the_station_model() -> None:
    now = time.monotonic()
    nok = next(k for k in range(100) if not StationModel().ok(k))
    # Cycles of 1000 s hold the free-running stations at their phase for the whole test; the
    # phases keep pressure (a rounded register) away from a rounding edge.
    complete = StationModel(unit_id=1, cycle_time=1000.0, t0=now - (nok + 0.92) * 1000)
    frozen = StationModel(
        unit_id=2, cycle_time=0.05, handshake=True, serial_prefix="B-", first_serial=500,
        lot_prefix="X", parts_per_lot=1,
    )  # fmt: skip
    working = StationModel(unit_id=3, cycle_time=1000.0, t0=now - 3.42 * 1000, lot_prefix="W")
    server = OpcUaStationServer([complete, frozen, working])
    async with server, Client(server.endpoint) as client:
        nodes = {u: await variables(client, server, u) for u in (1, 2, 3)}
        # The handshake station finishes part 0 and holds it: every value is frozen.
        async with deadline(5, "ST20's data_ready for part 0"):
            while not await nodes[2]["data_ready"].read_value():
                pass
        got = {u: await read(client, nodes[u]) for u in (1, 2, 3)}
        station = await client.nodes.objects.get_child(f"{server.namespace_index}:ST20")
        assert station.nodeid == ua.NodeId("ST20", server.namespace_index)
        child = await station.get_child(f"{server.namespace_index}:final_force")
        assert child.nodeid == nodes[2]["final_force"].nodeid

    types = {u: {n: dv.Value.VariantType for n, dv in got[u].items() if dv.Value} for u in got}
    assert types[1] == types[2] == types[3]
    assert types[1] == EXPECTED_TYPES

    # Frozen at the handshake phase: everything, analog values included, is exact.
    assert plain(got[2]) == {
        **truth(frozen, 0, HANDSHAKE_PHASE),
        "running": True, "cycle_complete": True, "data_ready": True, "data_taken": False,
    }  # fmt: skip
    assert plain(got[2])["part_serial"] == "B-00000500"
    assert plain(got[2])["part_label"] == f"]d201{GTIN}10X00001\x1d21B-00000500"

    for unit, model, k, done in ((1, complete, nok, True), (3, working, 3, False)):
        values = plain(got[unit])
        steady = truth(model, k, 0.92 if done else 0.42)
        for name in ANALOG:
            del steady[name]
        assert {n: values[n] for n in steady} == steady, unit
        assert values["result"] == (
            (RESULT_OK if model.ok(k) else RESULT_NOK) if done else RESULT_IN_WORK
        )
        assert (values["cycle_complete"], values["data_ready"]) == (done, done)
        # Analog values are the model's at the instant the server stamped on them.
        for name in ANALOG:
            stamp = got[unit][name].SourceTimestamp
            assert stamp is not None
            k_at, phase_at = model.cycle_at(server.monotonic_at(stamp))
            assert k_at == k
            assert values[name] == pytest.approx(truth(model, k, phase_at)[name], rel=1e-6), name
    assert plain(got[1])["result"] == RESULT_NOK
    assert plain(got[1])["final_force"] > 22.5


async def test_only_data_taken_is_writable() -> None:
    async with OpcUaStationServer([StationModel(cycle_time=1000.0)]) as server:
        async with Client(server.endpoint) as client:
            nodes = await variables(client, server, 1)
            await nodes["data_taken"].write_value(True)
            assert server.data_taken(1) is True
            assert await nodes["data_taken"].read_value() is True
            for name, value in (("status", ua.Variant(0, V.UInt16)), ("cycle_complete", True)):
                with pytest.raises(ua.uaerrors.BadNotWritable):
                    await nodes[name].write_value(value)
            with pytest.raises(ua.uaerrors.BadTypeMismatch):
                await nodes["data_taken"].write_value(ua.Variant(0, V.Int32))
            await nodes["data_taken"].write_value(False)
            assert server.data_taken(1) is False
            assert plain(await read(client, {"status": nodes["status"]}))["status"] == 3
        with pytest.raises(LookupError, match="unit 1 is not a handshake station"):
            server.plc(1)


# -- in time ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cycle_time", [0.05, 0.01])
async def test_a_subscription_sees_every_cycle_complete_edge(cycle_time: float) -> None:
    """At 10 ms the complete window lasts 1 ms: the server wakes at each edge."""
    cycles = 20
    async with OpcUaStationServer([StationModel(cycle_time=cycle_time)]) as server:
        [model] = server.stations  # with the t0 the server gave it
        async with Client(server.endpoint) as client:
            nodes = await variables(client, server, 1)
            watched = {n: nodes[n] for n in ("cycle_complete", "cycle_counter", "part_serial")}
            changes = await subscribe(client, watched)

            def rising() -> list[Change]:
                edges = changes.of("cycle_complete")
                return [c for p, c in itertools.pairwise(edges) if c.value and not p.value]

            await changes.until(lambda: len(rising()) >= cycles + 1, within=10)
    edges = changes.of("cycle_complete")
    assert all(a.value != b.value for a, b in itertools.pairwise(edges)), "an edge was lost"
    # Each edge carries the instant it happened: the cycle it belongs to, and a phase of 0.9
    # (complete) or 0 (the next part starts).
    ks = []
    for change in edges[1:]:
        k, phase = model.cycle_at(server.monotonic_at(change.source))
        if change.value:
            assert phase == pytest.approx(0.9, abs=1e-3)
            ks.append(k)
        else:
            assert phase == pytest.approx(0.0, abs=1e-3) or phase == pytest.approx(1.0, abs=1e-3)
    assert len(ks) >= cycles
    assert ks == list(range(ks[0], ks[0] + len(ks))), ks
    counters = [c.value for c in changes.of("cycle_counter")]
    assert counters == list(range(counters[0], counters[0] + len(counters)))
    assert counters[-1] >= ks[-1] + 1
    # Serial and counter change together, at the same instant.
    serials = {c.source: c.value for c in changes.of("part_serial")}
    for c in changes.of("cycle_counter")[1:]:
        assert serials[c.source] == model.serial(c.value - 1)


async def test_handshake_end_to_end() -> None:
    model = StationModel(unit_id=2, cycle_time=0.05, handshake=True, serial_prefix="HS-")
    parts = 5
    async with OpcUaStationServer([model]) as server:
        plc = server.plc(2)
        async with Client(server.endpoint) as client:
            nodes = await variables(client, server, 2)
            changes = await subscribe(client, {"data_ready": nodes["data_ready"]})
            snapshot = {n: nodes[n] for n in ("cycle_counter", "part_serial", "material_lot",
                                               "final_force", "final_depth", "result")}  # fmt: skip
            got = []
            for k in range(parts):
                # As the agent does it: the trigger, one snapshot read, then "taken".
                await changes.until(lambda: any(c.value for c in changes.of("data_ready")))
                got.append(plain(await read(client, snapshot)))
                assert plc.parts_released == k
                await nodes["data_taken"].write_value(True)
                assert plc.parts_released == k + 1  # acted on before the Write returned
                await changes.until(lambda: not changes.of("data_ready")[-1].value)
                await nodes["data_taken"].write_value(False)
                changes.seen.clear()
    assert [g["cycle_counter"] for g in got] == [1, 2, 3, 4, 5]
    for k, part in enumerate(got):
        assert part == {
            "cycle_counter": k + 1,
            "part_serial": model.serial(k),
            "material_lot": model.lot(k),
            **model.final_values(k),
            "result": RESULT_OK if model.ok(k) else RESULT_NOK,
        }
    assert (plc.cycle, plc.parts_released, plc.premature_takes) == (parts, parts, 0)


# -- restarts ---------------------------------------------------------------------------------


async def test_restart_moves_the_namespace_index_and_keeps_the_plc_state() -> None:
    model = StationModel(cycle_time=0.02, handshake=True)
    server = OpcUaStationServer([model], shift_namespaces=0)
    await server.start()
    try:
        port = server.port
        # A client that does not reconnect, subscribed, stays connected through the stop:
        # its session and subscription must not outlive the server (no_leaks checks).
        async with Client(server.endpoint) as client:
            ready = await resolve(client, server.expanded_node_id(1, "data_ready"))
            assert ready == ua.NodeId("ST10.data_ready", 2)
            old_taken = await resolve(client, server.expanded_node_id(1, "data_taken"))
            changes = await subscribe(client, {"data_ready": client.get_node(ready)})
            await changes.until(lambda: any(c.value for c in changes.seen))
            await client.get_node(old_taken).write_value(True)
            await server.stop()
        server.shift_namespaces = 2
        await server.start()
        assert (server.port, server.namespace_index) == (port, 4)
        async with Client(server.endpoint) as client:
            namespaces = await client.get_namespace_array()
            assert namespaces.index(server.namespace_uri) == 4
            nodes = await variables(client, server, 1)
            assert nodes["data_taken"].nodeid == ua.NodeId("ST10.data_taken", 4)
            # Like a PLC after a network outage: still waiting for taken to be reset.
            got = plain(
                await read(
                    client, {n: nodes[n] for n in ("data_ready", "data_taken", "cycle_counter")}
                )
            )
            assert got == {"data_ready": False, "data_taken": True, "cycle_counter": 1}
            with pytest.raises(ua.uaerrors.BadNodeIdUnknown):
                await client.get_node(old_taken).read_value()
    finally:
        await server.stop()


async def test_republish_is_answered_as_the_specification_says(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """asyncua's server answers Republish for a message it does not hold with an empty
    message; its client then replays forever after a reconnect. Ours answers
    Bad_MessageNotAvailable, so asyncua's client finishes reconnecting."""
    caplog.set_level(logging.INFO, logger="asyncua.client.client")
    async with OpcUaStationServer([StationModel(cycle_time=0.05)]) as server:
        client = Client(server.endpoint, timeout=2)
        await client.connect(auto_reconnect=True)
        try:
            nodes = await variables(client, server, 1)
            changes = Changes({nodes["cycle_counter"].nodeid: "cycle_counter"})
            sub = await client.create_subscription(10, changes)
            await sub.subscribe_data_change(
                nodes["cycle_counter"], queuesize=100, sampling_interval=0
            )
            await changes.until(lambda: len(changes.seen) >= 2)
            session = client.uaclient.session
            assert sub.subscription_id is not None
            with pytest.raises(ua.uaerrors.BadMessageNotAvailable):
                await session.republish(sub.subscription_id, 1_000_000)
            with pytest.raises(ua.uaerrors.BadSubscriptionIdInvalid):
                await session.republish(sub.subscription_id + 1000, 1)

            server.drop_connections()  # sessions and subscriptions stay on the server
            await wait_until(
                lambda: any("Reconnected successfully (session reused)" in r.getMessage()
                            for r in caplog.records),
                what="the client to finish reconnecting",
            )  # fmt: skip
            seen = len(changes.seen)
            await changes.until(lambda: len(changes.seen) >= seen + 2)
            counters = [c.value for c in changes.seen]
            assert counters[-1] > counters[0]
        finally:
            await client.disconnect()


# -- security ---------------------------------------------------------------------------------


async def test_username_and_trust_list_on_a_secure_endpoint(tmp_path: Path) -> None:
    trusted, stranger = client_identity(), client_identity()
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "client.der").write_bytes(trusted[0])
    server = OpcUaStationServer(
        [StationModel(cycle_time=1000.0)],
        security=[ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt],
        users={"operator": "s3cret"},
        anonymous=False,
        trust_dir=tmp_path / "trusted",
        pki_dir=tmp_path / "pki",
    )
    async with server:
        endpoints = await Client(server.endpoint).connect_and_get_server_endpoints()
        assert [(e.SecurityPolicyUri, e.SecurityMode) for e in endpoints] == [
            (sp.SecurityPolicyBasic256Sha256.URI, ua.MessageSecurityMode.SignAndEncrypt)
        ]
        assert [t.TokenType for t in endpoints[0].UserIdentityTokens] == [ua.UserTokenType.UserName]

        client = await secure_client(server, trusted, user=("operator", "s3cret"))
        async with client:
            assert await read_counter(client, server) == 1

        client = await secure_client(server, trusted, user=("operator", "wrong"))
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await client.connect()

        client = await secure_client(server, stranger, user=("operator", "s3cret"))
        with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
            await client.connect()

        # Trusting it is dropping it into the folder: the next session is accepted.
        (tmp_path / "trusted" / "stranger.der").write_bytes(stranger[0])
        client = await secure_client(server, stranger, user=("operator", "s3cret"))
        async with client:
            assert await read_counter(client, server) == 1

        # No session over a None channel: asyncua's own client refuses by itself, so ask
        # the way a less careful client would.
        with pytest.raises(ua.uaerrors.BadSecurityModeInsufficient):
            await raw_session_over_none(server)

    assert server.certificate is not None
    assert (tmp_path / "pki" / "server_cert.der").read_bytes() == server.certificate
    # The next server (or start) with this pki_dir reuses the certificate.
    assert server_identity(tmp_path / "pki", "127.0.0.1").der == server.certificate


async def raw_session_over_none(server: OpcUaStationServer) -> None:
    client = Client(server.endpoint, timeout=2)
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        description = ua.ApplicationDescription(
            ApplicationUri=CLIENT_URI, ApplicationType=ua.ApplicationType.Client
        )
        await client.uaclient.create_session(
            ua.CreateSessionParameters(
                ClientDescription=description,
                EndpointUrl=server.endpoint,
                SessionName="over None",
                ClientNonce=bytes(32),
                RequestedSessionTimeout=10_000,
            )
        )
        try:
            token = ua.UserNameIdentityToken(
                PolicyId="username", UserName="operator", Password=b"s3cret"
            )
            await client.uaclient.activate_session(
                ua.ActivateSessionParameters(UserIdentityToken=token)
            )
        finally:
            await client.uaclient.close_session(True)
    finally:
        await client.close_secure_channel()
        client.disconnect_socket()


POLICY_CLASSES: dict[str, type[sp.SecurityPolicy]] = {
    cls.URI: cls
    for cls in (
        sp.SecurityPolicyBasic256Sha256,
        sp.SecurityPolicyAes128Sha256RsaOaep,
        sp.SecurityPolicyAes256Sha256RsaPss,
    )
}


async def test_every_secure_policy_and_mode_connects() -> None:
    """With a username, so the password's encryption (Sign mode) is exercised per policy."""
    identity = client_identity()
    user = ("operator", "s3cret")
    async with OpcUaStationServer(
        [StationModel(cycle_time=1000.0)],
        security=SECURE_POLICIES,
        users=dict([user]),
        anonymous=False,
    ) as server:
        endpoints = await Client(server.endpoint).connect_and_get_server_endpoints()
        offered = sorted((e.SecurityPolicyUri, e.SecurityMode.name) for e in endpoints)
        assert offered == sorted((p, m) for p in POLICY_CLASSES for m in ("Sign", "SignAndEncrypt"))
        for policy, mode in offered:
            client = await secure_client(
                server, identity, POLICY_CLASSES[policy], ua.MessageSecurityMode[mode], user
            )
            async with client:
                assert await read_counter(client, server) == 1, (policy, mode)


async def test_a_none_only_server_offers_nothing_to_downgrade_to() -> None:
    async with OpcUaStationServer([StationModel(cycle_time=1000.0)]) as server:
        endpoints = await Client(server.endpoint).connect_and_get_server_endpoints()
        assert [(e.SecurityPolicyUri, e.SecurityMode) for e in endpoints] == [
            (sp.SecurityPolicyNone.URI, ua.MessageSecurityMode.None_)
        ]
        assert server.certificate is None
        with pytest.raises(ua.UaError, match="No matching endpoints"):
            await secure_client(server, client_identity())
        async with Client(server.endpoint) as client:  # anonymous over None still works
            assert await read_counter(client, server) == 1
