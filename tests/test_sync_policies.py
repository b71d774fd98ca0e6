"""MqttSync's policies against a real Mosquitto: ranges, MQTT 5, TLS and mutual TLS,
credentials, the retained status with its Last Will, live-first order and end-to-end
confirmation (the test plays the trace store's part of the protocol)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import trustme
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr, ValidationError

from buffer.sqlite import SqliteBuffer
from simulators.broker import free_port
from sync.config import MqttTls
from tests.mqtt_helpers import Mosquitto, Received, Subscriber
from tests.sync_helpers import (
    AGENT,
    LINE,
    SITE,
    append,
    config,
    drained,
    new_sync,
    records,
    running,
)
from tests.waiting import wait_until

STATUS_TOPIC = f"trace/{SITE}/{LINE}/{AGENT}/status"
CONFIRM_TOPIC = f"trace/{SITE}/{LINE}/{AGENT}/confirmed"


def record_messages(messages: list[Received]) -> list[Received]:
    return [m for m in messages if m.topic.endswith("/records")]


def statuses(messages: list[Received]) -> list[dict[str, Any]]:
    return [m.payload for m in messages if m.topic == STATUS_TOPIC]


def publish_retained(port: int, topic: str, payload: dict[str, Any]) -> None:
    """Publish one retained QoS 1 message and wait for its PUBACK (the store's side)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-store")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, json.dumps(payload), qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def confirm(port: int, seq: int, agent: str = AGENT) -> None:
    publish_retained(
        port,
        CONFIRM_TOPIC,
        {"schema": "edge-agent.confirm", "v": 1, "agent": agent, "seq": seq, "store": "test"},
    )


async def test_each_range_states_exactly_what_the_journal_held(
    buffer: SqliteBuffer, mosquitto: Mosquitto, mqtt_subscriber: Subscriber
) -> None:
    await append(buffer, 300)
    await buffer.delete(list(range(50, 100)))  # as telemetry evicted before it went out
    sync = new_sync(buffer, mosquitto.port)
    async with running(sync):
        await drained(buffer)
        await mqtt_subscriber.wait_for(
            lambda ms: sum(len(m.payload["records"]) for m in record_messages(ms)) >= 250
        )
    by_range: dict[tuple[int, int], dict[tuple[str, int], list[int]]] = defaultdict(dict)
    counts: dict[tuple[int, int], int] = {}
    for m in record_messages(mqtt_subscriber.messages()):
        span = m.payload["range"]
        key = (span["after"], span["last"])
        by_range[key][(m.payload["station"], m.payload["first_seq"])] = [
            r["seq"] for r in m.payload["records"]
        ]
        counts[key] = span["count"]
    held = set(range(1, 301)) - set(range(50, 100))
    covered: set[int] = set()
    for (after, last), messages in by_range.items():
        seqs = sorted(s for seqs in messages.values() for s in seqs)
        assert len(seqs) == counts[(after, last)], "a range's messages add up to its count"
        assert seqs == sorted(s for s in held if after < s <= last), "and hold every seq in it"
        assert seqs[-1] == last
        covered.update(range(after + 1, last + 1))
    assert covered == set(range(1, 301)), "the ranges cover the journal, voids included"
    assert not {r["seq"] for r in records(mqtt_subscriber.messages())} & set(range(50, 100))


async def test_mqtt5_delivers_and_status_is_retained_online_then_offline_on_stop(
    buffer: SqliteBuffer, mosquitto: Mosquitto, mqtt_subscriber: Subscriber
) -> None:
    await append(buffer, 100)
    sync = new_sync(buffer, mosquitto.port, protocol="5", status=True)
    async with running(sync):
        await drained(buffer)
        await mqtt_subscriber.wait_for(lambda ms: any(s["state"] == "online" for s in statuses(ms)))
    await mqtt_subscriber.wait_for(lambda ms: statuses(ms)[-1]["state"] == "offline")
    online, offline = statuses(mqtt_subscriber.messages())[-2:]
    assert online["state"] == "online"
    assert (online["schema"], online["agent"], online["alarms"]) == ("edge-agent.status", AGENT, [])
    assert (offline["state"], offline["reason"]) == ("offline", "stopped")
    assert {r["seq"] for r in records(mqtt_subscriber.messages())} == set(range(1, 101))
    # Retained: a client that subscribes afterwards learns the agent is offline at once.
    late = Subscriber(mosquitto.port, STATUS_TOPIC, client_id="late")
    late.start()
    try:
        await late.wait_for(lambda ms: len(ms) == 1)
        assert late.messages()[0].payload["state"] == "offline"
    finally:
        late.stop()


async def test_the_status_says_what_the_journal_holds_every_minute(
    buffer: SqliteBuffer,
    mosquitto: Mosquitto,
    mqtt_subscriber: Subscriber,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``held``: records in the journal not yet confirmed (the trace store's Lines page shows
    it). With ``confirm: store`` and no store, all 100 stay; the online status repeats (here
    each 50 ms heartbeat instead of each minute) and the stopped one says the same."""
    import sync.mqtt
    import sync.presence

    monkeypatch.setattr(sync.mqtt, "HEARTBEAT", 0.05)
    monkeypatch.setattr(sync.presence, "STATUS_EVERY", 2)
    await append(buffer, 100)
    agent = new_sync(buffer, mosquitto.port, confirm="store", confirm_timeout=60.0, status=True)
    async with running(agent):
        await mqtt_subscriber.wait_for(
            lambda ms: len([s for s in statuses(ms) if s["state"] == "online"]) >= 3
        )
    await mqtt_subscriber.wait_for(lambda ms: statuses(ms)[-1]["state"] == "offline")
    said = statuses(mqtt_subscriber.messages())
    assert [s["held"] for s in said if s["state"] == "online"][-1] == 100
    assert (said[-1]["reason"], said[-1]["held"]) == ("stopped", 100)
    assert buffer.depth == 100


async def test_last_will_says_offline_when_the_connection_dies(
    buffer: SqliteBuffer, mosquitto: Mosquitto, mqtt_subscriber: Subscriber
) -> None:
    sync = new_sync(buffer, mosquitto.port, backoff_initial=5.0, backoff_max=5.0, status=True)
    async with running(sync):
        await wait_until(lambda: sync._link is not None, what="connected")
        await mqtt_subscriber.wait_for(lambda ms: any(s["state"] == "online" for s in statuses(ms)))
        link = sync._link
        assert link is not None
        link._shutdown_socket()  # gone without DISCONNECT, as when the PC loses power
        await mqtt_subscriber.wait_for(lambda ms: statuses(ms)[-1]["state"] == "offline")
        assert statuses(mqtt_subscriber.messages())[-1]["reason"] == "connection lost"


async def test_alarm_changes_are_published_on_the_status_topic(
    buffer: SqliteBuffer, mosquitto: Mosquitto, mqtt_subscriber: Subscriber
) -> None:
    sync = new_sync(buffer, mosquitto.port, status=True)
    async with running(sync):
        await mqtt_subscriber.wait_for(lambda ms: any(s["state"] == "online" for s in statuses(ms)))
        sync.alarms.raise_("disk_low", "12% free on /var")
        await mqtt_subscriber.wait_for(lambda ms: bool(statuses(ms)[-1]["alarms"]))
        (alarm,) = statuses(mqtt_subscriber.messages())[-1]["alarms"]
        assert (alarm["code"], alarm["message"]) == ("disk_low", "12% free on /var")
        sync.alarms.clear("disk_low")
        await mqtt_subscriber.wait_for(lambda ms: statuses(ms)[-1]["alarms"] == [])


# ---- TLS -----------------------------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls_broker(tmp_path: Path, ca: trustme.CA, *, require_certificate: bool) -> Mosquitto:
    """A broker with a plain listener (for the test's subscriber) and a TLS listener."""
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    tls_port = free_port()
    broker = Mosquitto(
        tmp_path / "mosquitto",
        extra=(
            f"listener {tls_port} 127.0.0.1\n"
            f"cafile {tmp_path / 'ca.pem'}\n"
            f"certfile {tmp_path / 'server.pem'}\n"
            f"keyfile {tmp_path / 'server.key'}\n"
            f"require_certificate {'true' if require_certificate else 'false'}\n"
        ),
    )
    broker.tls_port = tls_port  # type: ignore[attr-defined]
    broker.start()
    return broker


def client_cert(ca: trustme.CA, tmp_path: Path, name: str = "client") -> tuple[str, str]:
    cert = ca.issue_cert(f"{name}@plant.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
    return str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.key")


async def test_mutual_tls_delivers(buffer: SqliteBuffer, tmp_path: Path, ca: trustme.CA) -> None:
    broker = tls_broker(tmp_path, ca, require_certificate=True)
    subscriber = Subscriber(broker.port, "#", client_id="tls-sub")
    subscriber.start()
    try:
        cert, key = client_cert(ca, tmp_path)
        tls = MqttTls(ca_file=str(tmp_path / "ca.pem"), cert_file=cert, key_file=key)
        await append(buffer, 50)
        sync = new_sync(buffer, broker.tls_port, tls=tls)  # type: ignore[attr-defined]
        async with running(sync):
            await drained(buffer)
        await subscriber.wait_for(lambda ms: len(records(record_messages(ms))) >= 50)
    finally:
        subscriber.stop()
        broker.close()


async def test_untrusted_broker_certificate_is_a_clear_error_and_records_stay(
    buffer: SqliteBuffer, tmp_path: Path, ca: trustme.CA
) -> None:
    broker = tls_broker(tmp_path, ca, require_certificate=False)
    try:
        other = trustme.CA()  # not the CA that signed the broker's certificate
        other.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
        await append(buffer, 20)
        tls = MqttTls(ca_file=str(tmp_path / "other-ca.pem"))
        sync = new_sync(buffer, broker.tls_port, tls=tls)  # type: ignore[attr-defined]
        async with running(sync):
            await wait_until(lambda: sync.status.reconnects >= 2, what="failed attempts")
        assert "certificate is not trusted" in (sync.status.last_error or "")
        assert "mqtt.tls.ca_file" in (sync.status.last_error or "")
        assert await buffer.count() == 20
    finally:
        broker.close()


async def test_broker_requiring_a_client_certificate_refuses_an_agent_without_one(
    buffer: SqliteBuffer, tmp_path: Path, ca: trustme.CA
) -> None:
    broker = tls_broker(tmp_path, ca, require_certificate=True)
    try:
        await append(buffer, 5)
        sync = new_sync(
            buffer,
            broker.tls_port,  # type: ignore[attr-defined]
            tls=MqttTls(ca_file=str(tmp_path / "ca.pem")),
        )
        async with running(sync):
            await wait_until(lambda: sync.status.reconnects >= 2, what="failed attempts")
        assert sync.status.last_error is not None
        assert not sync.status.connected
        assert await buffer.count() == 5
    finally:
        broker.close()


async def test_missing_ca_file_names_the_file(buffer: SqliteBuffer, tmp_path: Path) -> None:
    sync = new_sync(buffer, free_port(), tls=MqttTls(ca_file=str(tmp_path / "nope.pem")))
    async with running(sync):
        await wait_until(lambda: sync.status.reconnects >= 1, what="a failed attempt")
    assert "mqtt.tls.ca_file" in (sync.status.last_error or "")
    assert "nope.pem" in (sync.status.last_error or "")


def test_tls_config_needs_cert_and_key_together() -> None:
    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        MqttTls(cert_file="client.pem")
    with pytest.raises(ValidationError, match="key_password given without key_file"):
        MqttTls(key_password=SecretStr("x"))


# ---- credentials ---------------------------------------------------------------------------


@pytest.fixture
def auth_broker(tmp_path: Path) -> Any:
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), "line3-pc1", "s3cret"],
        check=True,
        capture_output=True,
    )
    broker = Mosquitto(tmp_path / "mosquitto", anonymous=False, extra=f"password_file {passwd}\n")
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_wrong_password_is_a_clear_error_and_buffering_goes_on(
    buffer: SqliteBuffer, auth_broker: Mosquitto, protocol: str
) -> None:
    await append(buffer, 10)
    sync = new_sync(
        buffer,
        auth_broker.port,
        username="line3-pc1",
        password=SecretStr("wrong"),
        protocol=protocol,
    )
    async with running(sync):
        await wait_until(lambda: sync.status.reconnects >= 2, what="failed attempts")
    error = (sync.status.last_error or "").lower()
    assert "refused" in error
    assert "not authorized" in error or "bad user name or password" in error
    assert "wrong" not in error
    assert await buffer.count() == 10


async def test_right_password_delivers(buffer: SqliteBuffer, auth_broker: Mosquitto) -> None:
    await append(buffer, 10)
    sync = new_sync(buffer, auth_broker.port, username="line3-pc1", password=SecretStr("s3cret"))
    async with running(sync):
        await drained(buffer)


# ---- order ---------------------------------------------------------------------------------


async def test_live_first_sends_new_records_while_the_backlog_drains_at_its_rate(
    buffer: SqliteBuffer, mosquitto: Mosquitto, mqtt_subscriber: Subscriber
) -> None:
    await append(buffer, 3000)  # the backlog of an outage
    sync = new_sync(
        buffer,
        mosquitto.port,
        order="live_first",
        drain_rate=1000.0,
        batch_max_records=100,
        max_inflight=16,
    )
    async with running(sync):
        await mqtt_subscriber.wait_for(lambda ms: bool(record_messages(ms)))
        await append(buffer, 1)  # live: seq 3001
        await mqtt_subscriber.wait_for(lambda ms: 3001 in {r["seq"] for r in records(ms)})
        got = {r["seq"] for r in records(mqtt_subscriber.messages())}
        assert len(got & set(range(1, 3001))) < 3000, "the live record overtook the backlog"
        await drained(buffer)
    got = {r["seq"] for r in records(mqtt_subscriber.messages())}
    assert got == set(range(1, 3002))


def test_order_and_confirm_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        config(1883, order="newest")
    with pytest.raises(ValidationError):
        config(1883, confirm="never")
    with pytest.raises(ValidationError):
        config(1883, drain_rate=0)
    assert config(1883).confirm == "puback"


# ---- end-to-end confirmation -----------------------------------------------------------------


async def test_store_mode_keeps_rows_until_the_store_confirms_them(
    buffer: SqliteBuffer, mosquitto: Mosquitto, mqtt_subscriber: Subscriber
) -> None:
    await append(buffer, 200)
    sync = new_sync(buffer, mosquitto.port, confirm="store", confirm_timeout=60.0)
    async with running(sync):
        await mqtt_subscriber.wait_for(lambda ms: len({r["seq"] for r in records(ms)}) == 200)
        await wait_until(lambda: sync.status.inflight == 0, what="every PUBACK")
        assert await buffer.count() == 200, "a PUBACK releases nothing in store mode"
        await asyncio.to_thread(confirm, mosquitto.port, 120)
        await wait_until(lambda: buffer.depth == 80, what="rows up to 120 released")
        assert sync.status.store_watermark == 120
        await asyncio.to_thread(confirm, mosquitto.port, 200)
        await drained(buffer)


async def test_store_mode_resends_what_stays_unconfirmed(
    buffer: SqliteBuffer, mosquitto: Mosquitto, mqtt_subscriber: Subscriber
) -> None:
    await append(buffer, 30)
    sync = new_sync(buffer, mosquitto.port, confirm="store", confirm_timeout=0.3)
    async with running(sync):
        await mqtt_subscriber.wait_for(
            lambda ms: sum(1 for r in records(ms) if r["seq"] == 30) >= 2
        )
        assert sync.status.resends >= 1
        assert sync.status.connected, "a resend does not need a new connection"
        await asyncio.to_thread(confirm, mosquitto.port, 10)
        await wait_until(lambda: buffer.depth == 20, what="rows up to 10 released")
        # The next resend starts above the watermark.
        before = len(record_messages(mqtt_subscriber.messages()))
        await mqtt_subscriber.wait_for(lambda ms: len(record_messages(ms)) > before + 1)
        later = record_messages(mqtt_subscriber.messages())[before:]
        assert min(m.payload["range"]["after"] for m in later) == 10
        await asyncio.to_thread(confirm, mosquitto.port, 30)
        await drained(buffer)


async def test_a_confirmation_beyond_the_journal_releases_nothing_and_raises_an_alarm(
    buffer: SqliteBuffer, mosquitto: Mosquitto
) -> None:
    await append(buffer, 10)
    await asyncio.to_thread(confirm, mosquitto.port, 5000)  # retained, from another history
    sync = new_sync(buffer, mosquitto.port, confirm="store")
    async with running(sync):
        await wait_until(lambda: sync.alarms.is_active("confirm_ahead"), what="the alarm")
        assert await buffer.count() == 10
        (alarm,) = sync.alarms.active()
        assert "5000" in alarm.message
        assert "last seq is 10" in alarm.message
        await asyncio.to_thread(confirm, mosquitto.port, 10)
        await drained(buffer)
        assert not sync.alarms.is_active("confirm_ahead")


async def test_foreign_or_garbled_confirmations_are_ignored(
    buffer: SqliteBuffer, mosquitto: Mosquitto
) -> None:
    await append(buffer, 10)
    sync = new_sync(buffer, mosquitto.port, confirm="store")
    async with running(sync):
        await wait_until(lambda: sync.status.connected, what="connected")
        await asyncio.to_thread(confirm, mosquitto.port, 10, "another-agent")
        await asyncio.to_thread(
            publish_retained, mosquitto.port, CONFIRM_TOPIC, {"schema": "x", "seq": 10}
        )
        await asyncio.to_thread(confirm, mosquitto.port, 4)
        await wait_until(lambda: buffer.depth == 6, what="the real confirmation applied")
        assert sync.status.store_watermark == 4


async def test_mqtt5_refused_messages_stay_in_the_journal(
    buffer: SqliteBuffer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read #\n")  # anonymous clients may read, not write
    broker = Mosquitto(tmp_path / "mosquitto", extra=f"acl_file {acl}\n")
    broker.start()
    try:
        await append(buffer, 10)
        sync = new_sync(buffer, broker.port, protocol="5", backoff_initial=0.05, status=True)
        async with running(sync):
            # Mosquitto 2.0 answers the first denied publish with reason code 0x87 and then
            # drops the connection; either way nothing may be released.
            await wait_until(lambda: sync.status.reconnects >= 2, what="reconnects")
            # Which comes first, the refusal or the dropped connection, depends on the
            # machine's load: the refusal shows within a few reconnects.
            await wait_until(
                lambda: "Not authorized" in caplog.text, within=20, what="the refusal logged"
            )
        assert await buffer.count() == 10
    finally:
        broker.close()


async def test_a_refusal_alarm_clears_once_the_broker_accepts_the_records(
    buffer: SqliteBuffer, tmp_path: Path
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read #\n")
    broker = Mosquitto(tmp_path / "mosquitto", extra=f"acl_file {acl}\n")
    broker.start()
    try:
        await append(buffer, 10)
        # No status message first: the records are what the broker refuses (reason 0x87).
        sync = new_sync(buffer, broker.port, protocol="5", backoff_initial=0.05, status=False)
        async with running(sync):
            await wait_until(
                lambda: sync.alarms.is_active("publish_refused"), within=20, what="the alarm"
            )
            assert await buffer.count() == 10
            # The plant fixes the ACL: the records go out and the alarm clears by itself.
            acl.write_text("topic readwrite #\n")
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)
            await wait_until(lambda: buffer.depth == 0, 20, "the records sent")
            assert not sync.alarms.is_active("publish_refused")
    finally:
        broker.close()
