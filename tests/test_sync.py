"""MqttSync against a real Mosquitto and a real SqliteBuffer: delivery, order, outages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

import psutil
import pytest
from pydantic import ValidationError

from buffer.sqlite import SqliteBuffer
from sync.config import MqttConfig
from sync.mqtt import MqttSync
from tests.mqtt_helpers import Mosquitto, Received, Subscriber
from tests.sync_helpers import AGENT, LINE, SITE, STATIONS, append, new_sync, records, running
from tests.waiting import deadline, wait_until

ENVELOPE_FIELDS = [
    "schema",
    "v",
    "agent",
    "journal",
    "epoch",
    "epoch_first",
    "site",
    "line",
    "station",
    "first_seq",
    "last_seq",
    "count",
    "records",
    "range",
    "confirm",
    "order",
]


def has_all(n: int) -> Any:
    return lambda messages: {r["seq"] for r in records(messages)} >= set(range(1, n + 1))


def check_envelopes(messages: Sequence[Received]) -> None:
    """Every message: topic, field order, header values, and bounds that match its records."""
    for m in messages:
        if m.topic.endswith("/status"):
            continue
        p = m.payload
        assert list(p) == ENVELOPE_FIELDS
        assert (p["schema"], p["v"], p["agent"], p["site"], p["line"]) == (
            "edge-agent.records",
            2,
            AGENT,
            SITE,
            LINE,
        )
        assert m.topic == f"trace/{SITE}/{LINE}/{p['station']}/records"
        seqs = [r["seq"] for r in p["records"]]
        assert seqs == sorted(set(seqs)), "records inside a message are in seq order"
        assert (p["first_seq"], p["last_seq"], p["count"]) == (seqs[0], seqs[-1], len(seqs))
        assert {r["station"] for r in p["records"]} == {p["station"]}


def check_first_occurrences_ordered(messages: Sequence[Received]) -> None:
    """Per station, the first time each seq shows up, seqs increase (duplicates may follow)."""
    seen: set[int] = set()
    last: dict[str, int] = {}
    for m in messages:
        if m.topic.endswith("/status"):
            continue
        station = m.payload["station"]
        for r in m.payload["records"]:
            if r["seq"] in seen:
                continue
            seen.add(r["seq"])
            assert r["seq"] > last.get(station, 0), f"seq {r['seq']} of {station} out of order"
            last[station] = r["seq"]


async def test_delivers_every_record_in_order_and_empties_the_journal(
    buffer: SqliteBuffer, mosquitto: Mosquitto, mqtt_subscriber: Subscriber
) -> None:
    await append(buffer, 300)
    sync = new_sync(buffer, mosquitto.port)
    async with running(sync):
        messages = await mqtt_subscriber.wait_for(has_all(300))
        await wait_until(lambda: buffer.depth == 0, what="journal drained")
        # Live path: records committed while connected and idle go out too.
        await append(buffer, 7)
        messages = await mqtt_subscriber.wait_for(has_all(307))
        await wait_until(lambda: buffer.depth == 0, what="journal drained")
        assert await buffer.count() == 0

    check_envelopes(messages)
    check_first_occurrences_ordered(messages)
    got = records(messages)
    assert sorted(r["seq"] for r in got) == list(range(1, 308)), "no duplicates without outage"
    for r in got:  # bodies arrive exactly as the buffer stored them
        station = STATIONS[r["seq"] % len(STATIONS)]
        assert r == {"seq": r["seq"], "kind": "readings", "station": station, "n": r["seq"]}
    assert {m.payload["station"] for m in messages} == set(STATIONS)
    status = sync.status
    assert (status.confirmed_records, status.last_confirmed_seq) == (307, 307)
    assert status.published_messages == len(messages)
    assert (status.reconnects, status.last_error) == (0, None)


async def test_socket_has_tcp_nodelay(buffer: SqliteBuffer, mosquitto: Mosquitto) -> None:
    sync = new_sync(buffer, mosquitto.port)
    async with running(sync):
        await wait_until(lambda: sync.status.connected, what="connected")
        ours = tcp_to(mosquitto.port)
        assert len(ours) == 1, ours
        with socket.socket(fileno=os.dup(ours[0].fd)) as dup:
            assert dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_broker_down_at_start_keeps_journal_then_drains_backlog(
    buffer: SqliteBuffer,
    mosquitto: Mosquitto,
    mqtt_subscriber: Subscriber,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sync.mqtt")
    await asyncio.to_thread(mosquitto.stop)
    sync = new_sync(buffer, mosquitto.port)
    async with running(sync):
        for round_ in range(1, 5):
            await append(buffer, 40)
            assert buffer.depth == 40 * round_  # acquisition goes on; nothing leaves unconfirmed
        await wait_until(lambda: sync.status.reconnects >= 3, what="three failed attempts")
        assert not sync.status.connected
        assert sync.status.published_messages == 0
        assert "cannot connect" in (sync.status.last_error or "")
        assert buffer.depth == 160
        assert await buffer.count() == 160

        await asyncio.to_thread(mosquitto.start)
        messages = await mqtt_subscriber.wait_for(has_all(160))
        await wait_until(lambda: buffer.depth == 0, what="backlog drained")

    check_envelopes(messages)
    check_first_occurrences_ordered(messages)
    assert sorted(r["seq"] for r in records(messages)) == list(range(1, 161))
    # One ERROR when it went down, one INFO when it came back, however many retries between.
    ours = [r for r in caplog.records if r.name == "sync.mqtt"]
    assert [r.levelno for r in ours if r.levelno >= logging.WARNING] == [logging.ERROR]
    assert sum("reachable again" in r.getMessage() for r in ours) == 1


async def test_broker_restart_mid_stream_loses_nothing(
    buffer: SqliteBuffer, mosquitto: Mosquitto, mqtt_subscriber: Subscriber
) -> None:
    sync = new_sync(buffer, mosquitto.port, batch_max_records=10, max_inflight=8)
    stations = STATIONS[:2]
    async with running(sync):
        await append(buffer, 400, stations)
        # Stop the broker while the stream is flowing: some messages are acknowledged,
        # some on the wire, most still in the journal.
        await mqtt_subscriber.wait_for(lambda messages: len(messages) >= 3)
        await asyncio.to_thread(mosquitto.stop)
        await append(buffer, 200, stations)  # committed while the broker is down
        await wait_until(lambda: sync.status.reconnects >= 2, what="retrying")
        assert buffer.depth > 200
        await asyncio.to_thread(mosquitto.start)
        await append(buffer, 200, stations)
        messages = await mqtt_subscriber.wait_for(has_all(800), timeout=20)
        await wait_until(lambda: buffer.depth == 0, what="journal drained")
        assert sync.status.connected

    check_envelopes(messages)
    check_first_occurrences_ordered(messages)
    unique = sorted({r["seq"] for r in records(messages)})
    assert unique == list(range(1, 801)), "every seq exactly once after dedupe"


async def test_rows_stay_until_puback_and_window_is_bounded(
    buffer: SqliteBuffer, mosquitto: Mosquitto, mqtt_subscriber: Subscriber
) -> None:
    sync = new_sync(buffer, mosquitto.port, max_inflight=3, batch_max_records=10)
    async with running(sync):
        await wait_until(lambda: sync.status.connected, what="connected")
        mosquitto.pause()  # connection stays up; no PUBACK can come back
        await append(buffer, 100, ["op10"])
        await wait_until(lambda: sync.status.published_messages == 3, what="window full")
        assert await buffer.count() == 100  # a round trip through the journal's thread
        assert sync.status.published_messages == 3
        assert (sync.status.inflight, sync.status.confirmed_records) == (3, 0)
        assert buffer.depth == 100

        mosquitto.resume()
        messages = await mqtt_subscriber.wait_for(has_all(100))
        await wait_until(lambda: buffer.depth == 0, what="journal drained")
    assert sync.status.published_messages == 10
    assert [m.payload["count"] for m in messages] == [10] * 10


async def test_broker_that_never_answers_is_timed_out_and_retried(
    buffer: SqliteBuffer, mosquitto: Mosquitto
) -> None:
    mosquitto.pause()  # the kernel still accepts TCP; no CONNACK ever comes
    sync = new_sync(buffer, mosquitto.port, connect_timeout=0.2)
    async with running(sync):
        await wait_until(lambda: sync.status.reconnects >= 2, what="CONNACK timeouts")
        assert "no CONNACK" in (sync.status.last_error or "")
        mosquitto.resume()
        await wait_until(lambda: sync.status.connected, what="connected")


def tcp_to(port: int) -> list[Any]:
    """Established TCP connections of this process to 127.0.0.1:port."""
    return [
        c
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    ]


@pytest.mark.parametrize("state", ["idle", "inflight", "awaiting-connack", "broker-down"])
async def test_cancel_closes_connection_and_joins_threads(
    buffer: SqliteBuffer, mosquitto: Mosquitto, state: str
) -> None:
    before = set(threading.enumerate())
    if state == "awaiting-connack":
        mosquitto.pause()
    sync = new_sync(buffer, mosquitto.port, connect_timeout=5.0)
    task = asyncio.create_task(sync.run())
    if state == "broker-down":
        await asyncio.to_thread(mosquitto.stop)
        await wait_until(lambda: sync.status.reconnects >= 2, what="retrying")
    elif state == "awaiting-connack":
        await wait_until(lambda: len(tcp_to(mosquitto.port)) == 1, what="TCP connected")
    else:
        await wait_until(lambda: sync.status.connected, what="connected")
    if state == "inflight":
        mosquitto.pause()
        await append(buffer, 50)
        await wait_until(lambda: sync.status.inflight == 4, what="messages in flight")

    task.cancel()
    async with deadline(1.5, "the cancelled sync to end"):  # under connect_timeout, keepalive
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # The executor's worker (asyncio_N) belongs to the loop and ends with it.
    left = [
        t.name
        for t in threading.enumerate()
        if t not in before and not t.name.startswith("asyncio_")
    ]
    assert left == []
    assert not sync.status.connected
    assert tcp_to(mosquitto.port) == []
    assert buffer.depth == (50 if state == "inflight" else 0)


def test_config_defaults_and_validation() -> None:
    cfg = MqttConfig()
    assert (cfg.host, cfg.port, cfg.topic_prefix, cfg.keepalive, cfg.qos) == (
        "localhost",
        1883,
        "trace",
        30,
        1,
    )
    assert (cfg.max_inflight, cfg.batch_max_records, cfg.batch_max_bytes) == (16, 1000, 262144)
    assert (cfg.backoff_initial, cfg.backoff_max, cfg.client_id) == (0.5, 30.0, None)
    bad: list[dict[str, Any]] = [
        {"qos": 0},
        {"unknown": 1},
        {"backoff_initial": 5, "backoff_max": 1},
        {"password": "secret"},
        {"topic_prefix": "a/#"},
        {"topic_prefix": "a//b"},
        {"port": 0},
    ]
    for values in bad:
        with pytest.raises(ValidationError):
            MqttConfig(**values)
    with pytest.raises(ValidationError):
        cfg.port = 1  # frozen
    assert "secret" not in repr(MqttConfig.model_validate({"username": "u", "password": "secret"}))


async def test_rejects_site_and_line_that_break_topics(buffer: SqliteBuffer) -> None:
    for site, line in [("a/b", "l"), ("s", "+"), ("", "l")]:
        with pytest.raises(ValueError, match=r"site|line"):
            MqttSync(MqttConfig(), agent_id=AGENT, site=site, line=line, buffer=buffer)
    sync = MqttSync(MqttConfig(), agent_id="a1", site="s", line="l", buffer=buffer)
    assert sync.client_id == "edge-agent-a1"
