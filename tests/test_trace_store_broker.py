"""The whole trace store against a real Mosquitto (and a real PostgreSQL where
parametrized): idempotent through the broker, gaps and overlapping ranges, the commit order of
held messages, confirmations retained and republished, bad messages kept aside, database
outages and refusals, a broker that comes late, and TLS."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from simulators.broker import free_port
from tests.mqtt_helpers import Mosquitto
from tests.pg_helpers import PostgresServer
from tests.store_helpers import (
    AGENT,
    CONFIRMED,
    PREFIX,
    SITE,
    STORE_IN_ORDER,
    WAIT,
    Publisher,
    StoreFactory,
    body,
    envelope,
    read_retained,
    readings,
    salvaged_copy,
    stored_seqs,
    topic,
    wait_held,
    wait_messages,
    wait_w,
)
from trace_store.config import StoreConfig
from trace_store.queries import trace_serial
from trace_store.service import TraceStore
from trace_store.storage import open_storage

# ---- the store through a real broker ------------------------------------------------------------


def test_store_is_idempotent_through_the_broker(
    stores: StoreFactory, publisher: Publisher, db: str
) -> None:
    store = stores(db)
    message = envelope(readings([1, 2, 3]), rng=(0, 3, 3))
    publisher.publish(topic(), message)
    publisher.publish(topic(), message)  # the agent resent it (a lost PUBACK)
    salvaged = envelope(
        [
            salvaged_copy(4, 2, "old.db"),
            salvaged_copy(5, 90, "old.db"),
        ]
    )
    publisher.publish(topic(), salvaged)
    wait_messages(store, 3)
    stats = store.stats()
    assert (stats["records"], stats["inserted"], stats["duplicates"]) == (8, 4, 4)
    assert store.watermark(AGENT) == 3
    store.stop()
    with open_storage(db) as s:
        assert s.seqs(AGENT) == [1, 2, 3, 90]
        assert s.agents()[AGENT].watermark == 3


def test_a_gap_stays_open_until_the_missing_message_arrives(
    stores: StoreFactory, publisher: Publisher, db: str
) -> None:
    store = stores(db)
    # Read 1 of the agent: (0, 6] = op10 {1, 3, 5} + op20 {2, 4, 6}. Read 2: (6, 9] at op10.
    publisher.publish(topic("op10"), envelope(readings([1, 3, 5]), rng=(0, 6, 6)))
    publisher.publish(topic("op10"), envelope(readings([7, 8, 9]), rng=(6, 9, 3)))
    wait_messages(store, 2)
    assert store.watermark(AGENT) == 0  # op20's half of (0, 6] is missing
    publisher.publish(topic("op20"), envelope(readings([2, 4, 6], "op20"), rng=(0, 6, 6)))
    wait_w(store, 9)
    # Void seqs: (9, 20] holds only 11, 12, 15 and 20 (telemetry evicted on the agent).
    publisher.publish(topic(), envelope(readings([11, 12, 15, 20]), rng=(9, 20, 4)))
    wait_w(store, 20)
    # Without a range a message is stored but says nothing about what is between.
    publisher.publish(topic(), envelope(readings([21, 22])))
    wait_messages(store, 5)
    assert store.watermark(AGENT) == 20
    store.stop()
    with open_storage(db) as s:
        assert s.seqs(AGENT) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 15, 20, 21, 22]
        assert s.agents()[AGENT].watermark == 20


def test_out_of_order_and_overlapping_ranges_through_the_broker(
    stores: StoreFactory, publisher: Publisher, sqlite_db: str
) -> None:
    store = stores(sqlite_db)
    publisher.publish(topic(), envelope(readings(range(11, 21)), rng=(10, 20, 10)))  # newest first
    publisher.publish(topic(), envelope(readings(range(1, 6)), rng=(0, 10, 10)))  # half of (0, 10]
    wait_messages(store, 2)
    assert store.watermark(AGENT) == 0
    # The agent resends from 0 after its confirm timeout: (0, 20] in one message, mostly
    # duplicates, complete on its own.
    publisher.publish(topic(), envelope(readings(range(1, 21)), rng=(0, 20, 20)))
    wait_w(store, 20)
    assert store.stats()["duplicates"] == 15


# ---- commit order: held messages -------------------------------------------------------------


def test_an_in_order_store_agent_is_committed_in_seq_order(
    stores: StoreFactory, publisher: Publisher, db: str
) -> None:
    store = stores(db)
    sn = {"serial": "SN-1", "lot": None}
    range1 = envelope(
        [
            body(1, "context", key="serial", value="SN-1", previous=None, ctx=sn),
            body(2, ctx=sn),
            body(3, ctx=sn),
        ],
        rng=(0, 3, 3),
        **STORE_IN_ORDER,
    )
    range2 = envelope(
        [body(4, ctx=sn), body(5, "part", serial="SN-1", result="ok", values={}, ctx=sn)],
        rng=(3, 5, 2),
        **STORE_IN_ORDER,
    )
    range3 = envelope(readings([6, 7]), rng=(5, 7, 2), **STORE_IN_ORDER)
    # More after them than the broker's in-flight window to the store (20): held messages
    # must be acknowledged at once, or range 1 could never get through behind them.
    later = [envelope(readings([s]), rng=(s - 1, s, 1), **STORE_IN_ORDER) for s in range(8, 33)]
    publisher.publish_all([(topic(), m) for m in (range2, range3, *later)])
    wait_held(store, 2 + 2 + 25, messages=27)
    # Nothing of them is in the database: a recall would have seen SN-1's part without the
    # context record that set the serial.
    assert stored_seqs(db) == []
    with open_storage(db) as s:
        assert not trace_serial(s, "SN-1").found
    assert store.watermark(AGENT) == 0

    publisher.publish(topic(), range1)
    wait_w(store, 32)
    stats = store.stats()
    assert (stats["held_records"], stats["inserted"], stats["duplicates"]) == (0, 32, 0)
    store.stop()
    assert stored_seqs(db) == list(range(1, 33))
    with open_storage(db) as s:
        assert s.agents()[AGENT].watermark == 32
    if "://" not in db:  # SQLite: the rowid is the insertion order
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT seq FROM records WHERE agent = ? ORDER BY rowid", (AGENT,))
            assert [seq for (seq,) in rows] == list(range(1, 33))


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param({"confirm": "puback", "order": "in_order"}, id="puback"),
        pytest.param({}, id="agent-without-the-fields"),
    ],
)
def test_a_puback_agent_is_committed_at_once(
    stores: StoreFactory, publisher: Publisher, sqlite_db: str, mode: dict[str, str]
) -> None:
    """The broker's PUBACK released these records on the agent: nobody resends them, so the
    store must not set them aside."""
    store = stores(sqlite_db)
    publisher.publish(topic(), envelope(readings([4, 5]), rng=(3, 5, 2), **mode))
    publisher.publish(topic(), envelope(readings([6]), rng=(5, 6, 1), **mode))
    wait_messages(store, 2)
    assert store.stats()["held_records"] == 0
    assert stored_seqs(sqlite_db) == [4, 5, 6]
    assert store.watermark(AGENT) == 0  # (0, 3] is still missing
    publisher.publish(topic(), envelope(readings([1, 2, 3]), rng=(0, 3, 3), **mode))
    wait_w(store, 6)


def test_a_live_first_agent_is_committed_at_once(
    stores: StoreFactory, publisher: Publisher, sqlite_db: str
) -> None:
    """live_first sends the newest records first on purpose: holding them for the backlog
    would undo that."""
    store = stores(sqlite_db)
    live = {"confirm": "store", "order": "live_first"}
    publisher.publish(topic(), envelope(readings([11, 12]), rng=(10, 12, 2), **live))
    wait_messages(store, 1)
    assert store.stats()["held_records"] == 0
    assert stored_seqs(sqlite_db) == [11, 12]
    publisher.publish(topic(), envelope(readings(range(1, 11)), rng=(0, 10, 10), **live))
    wait_w(store, 12)


def test_held_records_are_bounded_and_the_resend_brings_the_rest(
    stores: StoreFactory, publisher: Publisher, sqlite_db: str
) -> None:
    store = stores(sqlite_db, max_held_records=4)
    publisher.publish_all(
        [
            (topic(), envelope(readings([4, 5, 6]), rng=(3, 6, 3), **STORE_IN_ORDER)),
            (topic(), envelope(readings([7, 8]), rng=(6, 8, 2), **STORE_IN_ORDER)),  # 5 > 4
        ]
    )
    wait_held(store, 3, messages=2)
    assert store.stats()["held_dropped"] == 1
    # The gap closes: what was held goes in, what was dropped is missing, so W stops there.
    publisher.publish(topic(), envelope(readings([1, 2, 3]), rng=(0, 3, 3), **STORE_IN_ORDER))
    wait_w(store, 6)
    assert store.stats()["held_records"] == 0
    assert stored_seqs(sqlite_db) == [1, 2, 3, 4, 5, 6]
    # The agent's confirm timeout: it reads again from W, and everything is there.
    publisher.publish(topic(), envelope(readings([7, 8, 9]), rng=(6, 9, 3), **STORE_IN_ORDER))
    wait_w(store, 9)
    assert stored_seqs(sqlite_db) == list(range(1, 10))
    assert store.stats()["held_dropped"] == 1


def test_a_held_message_dropped_when_a_resend_passes_it(
    stores: StoreFactory, publisher: Publisher, sqlite_db: str
) -> None:
    store = stores(sqlite_db)
    publisher.publish(topic(), envelope(readings([4, 5]), rng=(3, 5, 2), **STORE_IN_ORDER))
    wait_held(store, 2, messages=1)
    # The resend reads (0, 5] as one range: it holds seqs 4 and 5 too, so the held copy is
    # simply forgotten.
    publisher.publish(topic(), envelope(readings([1, 2, 3, 4, 5]), rng=(0, 5, 5), **STORE_IN_ORDER))
    wait_w(store, 5)
    stats = store.stats()
    assert (stats["held_records"], stats["inserted"], stats["duplicates"]) == (0, 5, 2)
    assert stored_seqs(sqlite_db) == [1, 2, 3, 4, 5]


def test_a_duplicate_of_a_held_message_is_harmless(
    stores: StoreFactory, publisher: Publisher, sqlite_db: str
) -> None:
    store = stores(sqlite_db)
    held = envelope(readings([4, 5, 6]), rng=(3, 6, 3), **STORE_IN_ORDER)
    publisher.publish(topic(), held)
    publisher.publish(topic(), held)  # redelivered, or sent again by the agent
    wait_held(store, 3, messages=2)  # held once
    # The gap and yet another copy in one go (one batch or two: either way once).
    publisher.publish_all(
        [
            (topic(), envelope(readings([1, 2, 3]), rng=(0, 3, 3), **STORE_IN_ORDER)),
            (topic(), held),
        ]
    )
    wait_w(store, 6)
    wait_messages(store, 4)
    stats = store.stats()
    assert (stats["records"], stats["inserted"], stats["duplicates"]) == (12, 6, 6)
    assert (stats["held_records"], stats["held_dropped"]) == (0, 0)
    assert stored_seqs(sqlite_db) == [1, 2, 3, 4, 5, 6]


def test_confirmation_is_retained_and_survives_restarts(
    stores: StoreFactory, publisher: Publisher, mosquitto: Mosquitto, sqlite_db: str
) -> None:
    store = stores(sqlite_db)
    publisher.publish(topic(), envelope(readings(range(1, 11)), rng=(0, 10, 10)))
    other = envelope(readings([1, 2]), agent="line4-pc1", line="line-4", rng=(0, 2, 2))
    publisher.publish(topic(line="line-4"), other)
    assert store.wait_watermark(AGENT, 10, WAIT, published=True)
    assert store.wait_watermark("line4-pc1", 2, WAIT, published=True)
    got = read_retained(mosquitto.port, f"{PREFIX}/+/+/+/confirmed", expect=2)
    mine = got[CONFIRMED]
    assert mine == {
        "schema": "edge-agent.confirm",
        "v": 1,
        "agent": AGENT,
        "seq": 10,  # the legacy epoch's: these messages carry no epoch
        "epochs": {},
        "session": mine["session"],
        "store": "test",
        "ts": mine["ts"],
    }
    assert len(mine["session"]) == 16
    assert len(mine["ts"]) == 27
    assert mine["ts"].endswith("Z")
    assert got[f"{PREFIX}/{SITE}/line-4/line4-pc1/confirmed"]["seq"] == 2

    store.stop()
    # While the store is down the broker queues for it (persistent session), and keeps
    # retained messages and the queue across its own restart.
    publisher.publish(topic(), envelope(readings(range(11, 16)), rng=(10, 15, 5)))
    mosquitto.stop()
    mosquitto.start()
    assert read_retained(mosquitto.port, CONFIRMED)[CONFIRMED]["seq"] == 10

    restarted = stores(sqlite_db)
    assert restarted.watermark(AGENT) >= 10  # loaded from the database at start
    wait_w(restarted, 15)
    assert restarted.wait_watermark(AGENT, 15, WAIT, published=True)
    assert read_retained(mosquitto.port, CONFIRMED)[CONFIRMED]["seq"] == 15


def test_a_starting_store_republishes_every_watermark(
    stores: StoreFactory, publisher: Publisher, mosquitto: Mosquitto, sqlite_db: str
) -> None:
    store = stores(sqlite_db)
    publisher.publish(topic(), envelope(readings([1, 2, 3]), rng=(0, 3, 3)))
    assert store.wait_watermark(AGENT, 3, WAIT, published=True)
    store.stop()
    # A broker that lost its retained messages: an empty retained message clears it.
    publisher.client.publish(CONFIRMED, b"", qos=1, retain=True).wait_for_publish(WAIT)
    restarted = stores(sqlite_db)
    assert restarted.wait_watermark(AGENT, 3, WAIT, published=True)
    assert read_retained(mosquitto.port, CONFIRMED)[CONFIRMED]["seq"] == 3


def test_bad_messages_are_kept_aside_counted_and_acknowledged(
    stores: StoreFactory, publisher: Publisher, db: str
) -> None:
    store = stores(db, max_message_bytes=2048, agents=frozenset({AGENT}))
    bad = [
        (topic(), b"\xff\xfe not utf-8", "not_utf8"),
        (topic(), b"{not json", "not_json"),
        (topic(), envelope(readings(range(1, 40))), "oversized"),
        (topic("op20"), envelope(readings([1])), "topic_mismatch"),
        (topic(), envelope(readings([1]), schema="acme.records"), "unknown_schema"),
        (topic(), envelope(readings([1]), v=3), "unknown_version"),
        (topic(), envelope(readings([1]), agent="intruder"), "agent_not_allowed"),
        (topic(), envelope(readings([1, 2]), count=3), "count_mismatch"),
        (topic(), envelope([body(2), body(1)], first_seq=2, last_seq=1), "seq_order"),
        (topic(), envelope([body(1), body(2, station="op20")]), "station_mismatch"),
        (topic(), envelope(readings([5]), first_seq=4, last_seq=5), "seq_bounds"),
    ]
    publisher.publish_all([(t, p) for t, p, _ in bad])
    publisher.publish(topic(), envelope(readings([7]), rng=(0, 7, 1)))  # the store still works
    wait_messages(store, len(bad) + 1)
    stats = store.stats()
    assert stats["by_reason"] == {reason: 1 for _, _, reason in bad}
    assert (stats["rejected"], stats["accepted"], stats["inserted"]) == (len(bad), 1, 1)
    assert store.watermark(AGENT) == 7
    store.stop()
    with open_storage(db) as s:
        assert s.seqs(AGENT) == [7]  # nothing of the rejected messages
        kept = {r.reason: r for r in s.rejected()}
    assert set(kept) == {reason for _, _, reason in bad}
    for where, payload, reason in bad:
        row = kept[reason]
        assert (row.topic, row.size) == (where, len(payload))
        assert row.payload == (None if reason == "oversized" else payload)
        assert len(row.excerpt) <= 512
        assert row.detail
    assert kept["agent_not_allowed"].agent == "intruder"

    # All were acknowledged: a new run gets none of them again, only what comes next.
    restarted = stores(db, max_message_bytes=2048, agents=frozenset({AGENT}))
    publisher.publish(topic(), envelope(readings([8]), rng=(7, 8, 1)))
    wait_w(restarted, 8)
    assert restarted.stats()["messages"] == 1


def test_store_rides_out_a_database_outage(
    stores: StoreFactory, publisher: Publisher, postgres: PostgresServer
) -> None:
    store = stores(postgres.create_database())
    publisher.publish(topic(), envelope(readings([1, 2]), rng=(0, 2, 2)))
    wait_w(store, 2)
    postgres.stop()
    try:
        publisher.publish(topic(), envelope(readings([3, 4]), rng=(2, 4, 2)))
        assert store.wait_stats(lambda s: s["storage_failures"] >= 1, WAIT)
        assert store.watermark(AGENT) == 2  # nothing claimed that is not committed
    finally:
        postgres.start()
    # Reopened, then reconnected: the broker redelivers what was never acknowledged.
    wait_w(store, 4)
    # The keeper counts the connection once its open() returns, by when the redelivered
    # messages may already be stored: wait for the count, do not race it.
    assert store.wait_stats(lambda s: s["connections"] >= 2, WAIT)


def test_a_message_the_database_refuses_is_kept_aside_alone(
    stores: StoreFactory,
    publisher: Publisher,
    refusing_seq_5: str,
) -> None:
    store = stores(refusing_seq_5)
    publisher.publish_all(
        [
            (topic(), envelope(readings([1, 2]), rng=(0, 2, 2))),
            (topic(), envelope(readings([5]), rng=(2, 5, 1))),  # refused
            (topic(), envelope(readings([6, 7]), rng=(5, 7, 2))),
        ]
    )
    wait_messages(store, 3)
    assert store.stats()["by_reason"] == {"store_error": 1}
    # (2, 5] was never committed: the watermark stops below it, whatever follows.
    assert store.watermark(AGENT) == 2
    store.stop()
    with open_storage(refusing_seq_5) as s:
        assert s.seqs(AGENT) == [1, 2, 6, 7]
        [kept] = s.rejected()
    assert kept.reason == "store_error"
    assert "seq 5" in kept.detail


def test_a_held_message_the_database_refuses_does_not_blame_the_gap(
    stores: StoreFactory,
    publisher: Publisher,
    refusing_seq_5: str,
) -> None:
    store = stores(refusing_seq_5)
    bad = envelope(readings([3, 4, 5]), rng=(2, 5, 3), **STORE_IN_ORDER)
    publisher.publish(topic(), bad)
    wait_held(store, 3, messages=1)
    # The gap closes and releases the held message, which the database refuses. Isolating
    # needs messages of the batch: the held one is forgotten (its agent still has it), and
    # the gap goes in on its own.
    publisher.publish(topic(), envelope(readings([1, 2]), rng=(0, 2, 2), **STORE_IN_ORDER))
    wait_w(store, 2)
    stats = store.stats()
    assert (stats["held_records"], stats["held_dropped"], stats["by_reason"]) == (0, 1, {})
    # The resend from W brings it as an ordinary message: now it is the one kept aside.
    publisher.publish(topic(), bad)
    assert store.wait_stats(lambda s: s["by_reason"] == {"store_error": 1}, WAIT)
    assert store.watermark(AGENT) == 2
    store.stop()
    assert stored_seqs(refusing_seq_5) == [1, 2]


def test_a_store_started_before_the_broker_connects_when_it_comes(
    tmp_path: Path, sqlite_db: str
) -> None:
    broker = Mosquitto(tmp_path / "late-broker")
    config = StoreConfig(
        host="127.0.0.1",
        port=broker.port,
        db=sqlite_db,
        store_id="late",
        backoff_initial=0.02,
        backoff_max=0.1,
    )
    with TraceStore(config) as store:
        assert not store.ready
        broker.start()
        try:
            assert store.wait_ready(WAIT)
            pub = Publisher(broker.port)
            try:
                pub.publish(topic(), envelope(readings([1]), rng=(0, 1, 1)))
            finally:
                pub.close()
            wait_w(store, 1)
        finally:
            broker.close()
    assert store.failed is None


def test_store_connects_over_tls_with_a_client_certificate(tmp_path: Path, sqlite_db: str) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("trace-store-tls")
    files = {
        name: tmp_path / f"{name}.pem"
        for name in ("ca", "server-cert", "server-key", "client-cert", "client-key")
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_pem.write_to_path(str(files["server-key"]))
    client.private_key_pem.write_to_path(str(files["client-key"]))
    files["server-cert"].write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
    files["client-cert"].write_bytes(b"".join(p.bytes() for p in client.cert_chain_pems))

    broker = Mosquitto(tmp_path / "tls-broker")
    tls_port = free_port()
    # The plain listener (first) serves readiness and the test's publisher.
    broker.conf.write_text(
        broker.conf.read_text() + f"listener {tls_port} 127.0.0.1\n"
        f"cafile {files['ca']}\ncertfile {files['server-cert']}\nkeyfile {files['server-key']}\n"
        "require_certificate true\n"
    )
    broker.start()
    try:
        config = StoreConfig(
            host="127.0.0.1",
            port=tls_port,
            db=sqlite_db,
            store_id="tls",
            tls_ca=str(files["ca"]),
            tls_cert=str(files["client-cert"]),
            tls_key=str(files["client-key"]),
        )
        with TraceStore(config) as store:
            assert store.wait_ready(WAIT)
            pub = Publisher(broker.port)
            try:
                pub.publish(topic(), envelope(readings([1, 2]), rng=(0, 2, 2)))
            finally:
                pub.close()
            assert store.wait_watermark(AGENT, 2, WAIT, published=True)
        # Without the client certificate the broker refuses the handshake: retried, no crash.
        no_cert = StoreConfig(
            host="127.0.0.1", port=tls_port, db=sqlite_db, store_id="tls", tls_ca=str(files["ca"])
        )
        with TraceStore(no_cert) as refused:
            assert refused.wait_stats(lambda s: s["disconnects"] >= 2, WAIT)
            assert not refused.ready
        assert refused.failed is None
    finally:
        broker.close()


def test_bad_tls_files_fail_at_start(tmp_path: Path, sqlite_db: str) -> None:
    config = StoreConfig(db=sqlite_db, tls_ca=str(tmp_path / "missing-ca.pem"))
    with pytest.raises(ValueError, match="TLS settings"):
        TraceStore(config).start()
