"""The trace store: envelope checks, ranges and watermarks, both database backends, and the
whole store against a real Mosquitto (and a real PostgreSQL where parametrized).

Envelopes are built like ``sync/mqtt.py``'s ``_envelope``: record bodies are JSON text,
concatenated into the message, with the ``range`` after the records.
"""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.broker import free_port
from tests.mqtt_helpers import Mosquitto
from tests.pg_helpers import PostgresServer, postgres_bindir
from trace_store.config import StoreConfig, parse_broker
from trace_store.envelope import Accepted, Range, Reason, Rejection, parse
from trace_store.held import HeldMessages
from trace_store.queries import trace_lot, trace_materials, trace_serial
from trace_store.ranges import RangeEntry, RangeTracker
from trace_store.service import TraceStore
from trace_store.storage import Batch, Storage, open_storage

AGENT = "line3-pc1"
STREAM = (AGENT, "")  # its legacy epoch: what a message without an epoch belongs to
SITE = "plant-a"
LINE = "line-3"
PREFIX = "trace"
WAIT = 10.0  # seconds any single wait may take before the test fails


# ---- building messages -----------------------------------------------------------------------


def body(seq: int, kind: str = "readings", station: str = "op10", **fields: Any) -> dict[str, Any]:
    """A record body; ``ctx`` defaults to no serial."""
    out: dict[str, Any] = {
        "seq": seq,
        "kind": kind,
        "station": station,
        "ts": f"2026-11-21T10:{seq // 60 % 60:02d}:{seq % 60:02d}.000000Z",
    }
    if kind == "readings":
        out.update(device="press10", values={"force": 20.5, "stroke": 41}, units={"force": "kN"})
    elif kind == "reading":  # one value per record, as a v1 agent journaled it
        out.update(device="press10", point="force", value=20.5, quality="good", unit="kN")
    out.update(fields)
    out.setdefault("ctx", {"serial": None, "lot": None})
    return out


def envelope(
    records: list[Any],
    *,
    agent: str = AGENT,
    site: str = SITE,
    line: str = LINE,
    station: str | None = None,
    rng: tuple[int, int, int] | None = None,
    confirm: str | None = None,
    order: str | None = None,
    **overrides: Any,
) -> bytes:
    """The message bytes, concatenated like the agent does (``overrides`` replace head fields,
    for malformed cases; a value of ``...`` drops the field). ``confirm``/``order`` go after
    the range, as the agent sends them; None leaves them out (an agent older than them)."""
    station = station if station is not None else records[0]["station"]
    seqs = [r["seq"] for r in records if isinstance(r, dict)]
    head: dict[str, Any] = {
        "schema": "edge-agent.records",
        "v": 2,
        "agent": agent,
        "site": site,
        "line": line,
        "station": station,
        "first_seq": seqs[0] if seqs else 1,
        "last_seq": seqs[-1] if seqs else 1,
        "count": len(records),
    }
    head.update(overrides)
    fields = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in head.items() if v is not ...]
    bodies = ",".join(json.dumps(r, separators=(",", ":")) for r in records)
    fields.append(f'"records":[{bodies}]')
    if rng is not None:
        after, last, count = rng
        fields.append(f'"range":{{"after":{after},"last":{last},"count":{count}}}')
    if confirm is not None:
        fields.append(f'"confirm":{json.dumps(confirm)}')
    if order is not None:
        fields.append(f'"order":{json.dumps(order)}')
    return ("{" + ",".join(fields) + "}").encode()


def topic(station: str = "op10", site: str = SITE, line: str = LINE) -> str:
    return f"{PREFIX}/{site}/{line}/{station}/records"


def salvaged_copy(seq: int, original: int, journal: str, **fields: Any) -> dict[str, Any]:
    """Record ``original`` as ``edge-agent buffer salvage`` copies it: the same body under a
    new seq, marked with where it came from."""
    return {**body(original), "seq": seq, "salvaged": {"seq": original, "journal": journal, **fields}}


def readings(seqs: Any, station: str = "op10") -> list[dict[str, Any]]:
    return [body(s, station=station) for s in seqs]


# ---- MQTT helpers ------------------------------------------------------------------------------

_client_ids = itertools.count(1)


class Publisher:
    """A QoS 1 publisher: ``publish`` returns once the broker acknowledged (PUBACK)."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-pub-{next(_client_ids)}",
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(100)
        # paho's hints say int; fractions keep a broker-restart test fast.
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"no PUBACK for {topic}"

    def publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        """Many at once (in order, on one connection), then wait for every PUBACK."""
        infos = [self.client.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(WAIT)
            assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def read_retained(port: int, topic_filter: str, expect: int = 1) -> dict[str, dict[str, Any]]:
    """The retained messages matching ``topic_filter`` (topic -> JSON), with a clean session:
    what an agent connecting now would get."""
    got: dict[str, dict[str, Any]] = {}
    done = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"test-retained-{next(_client_ids)}",
        protocol=mqtt.MQTTv311,
    )

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe(topic_filter, qos=1)

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got[msg.topic] = json.loads(msg.payload)
            if len(got) >= expect:
                done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(WAIT), f"only {len(got)} retained message(s) on {topic_filter}"
    finally:
        client.disconnect()
        client.loop_stop()
    return got


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql)"
        )
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend: a SQLite path or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "trace.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    return str(tmp_path / "trace.db")


@pytest.fixture
def refusing_seq_5(sqlite_db: str) -> str:
    """A SQLite store database whose records table refuses seq 5: a real constraint failure
    (a trigger), as a database with a check the record breaks would give."""
    with open_storage(sqlite_db):
        pass  # creates the schema
    db = sqlite3.connect(sqlite_db)
    try:
        db.execute(
            "CREATE TRIGGER refuse_seq_5 BEFORE INSERT ON records WHEN NEW.seq = 5 "
            "BEGIN SELECT RAISE(ABORT, 'the database refuses seq 5'); END"
        )
        db.commit()
    finally:
        db.close()
    return sqlite_db


@pytest.fixture
def storage(db: str) -> Iterator[Storage]:
    s = open_storage(db)
    try:
        yield s
    finally:
        s.close()


StoreFactory = Callable[..., TraceStore]


@pytest.fixture
def stores(mosquitto: Mosquitto) -> Iterator[StoreFactory]:
    """Start trace stores on ``mosquitto``; every one still running is stopped at teardown."""
    started: list[TraceStore] = []

    def start(db: str, **overrides: Any) -> TraceStore:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": mosquitto.port,
            "db": db,
            "store_id": "test",
            "confirm_interval": 0.05,
            "backoff_initial": 0.02,
            "backoff_max": 0.2,
            "connect_timeout": 5.0,
        }
        values.update(overrides)
        store = TraceStore(StoreConfig(**values))
        store.start()
        started.append(store)
        assert store.wait_ready(WAIT), "trace store did not subscribe"
        return store

    try:
        yield start
    finally:
        for store in started:
            store.stop()


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(mosquitto.port)
    try:
        yield pub
    finally:
        pub.close()


def wait_messages(store: TraceStore, n: int) -> None:
    """Until the store has committed or held, and acknowledged, ``n`` messages in all."""
    assert store.wait_stats(lambda s: s["messages"] >= n, WAIT), (
        f"store handled {store.stats()['messages']} of {n} messages"
    )


def wait_w(store: TraceStore, seq: int, agent: str = AGENT) -> None:
    assert store.wait_watermark(agent, seq, WAIT), (
        f"watermark {store.watermark(agent)}, expected {seq}"
    )


# ---- envelope checks (pure) ------------------------------------------------------------------

GOOD = readings([3, 5, 8])


def _bad_cases() -> list[tuple[str, str, bytes, Reason]]:
    return [
        ("oversized", topic(), envelope(readings(range(1, 40))), Reason.OVERSIZED),
        ("not utf-8", topic(), b'{"schema":"\xff\xfe"}', Reason.NOT_UTF8),
        ("not json", topic(), b'{"schema": ', Reason.NOT_JSON),
        ("not an object", topic(), b"[1, 2]", Reason.NOT_JSON),
        ("NaN", topic(), envelope(GOOD).replace(b"20.5", b"NaN"), Reason.NOT_JSON),
        ("unknown schema", topic(), envelope(GOOD, schema="other.records"), Reason.UNKNOWN_SCHEMA),
        ("unknown version", topic(), envelope(GOOD, v=3), Reason.UNKNOWN_VERSION),
        ("v is a string", topic(), envelope(GOOD, v="1"), Reason.UNKNOWN_VERSION),
        ("topic site", topic(site="plant-b"), envelope(GOOD), Reason.TOPIC_MISMATCH),
        ("topic station", topic("op20"), envelope(GOOD), Reason.TOPIC_MISMATCH),
        ("no agent", topic(), envelope(GOOD, agent=...), Reason.BAD_ENVELOPE),
        ("agent has /", topic(), envelope(GOOD, agent="a/b"), Reason.BAD_ENVELOPE),
        ("first_seq text", topic(), envelope(GOOD, first_seq="3"), Reason.BAD_ENVELOPE),
        ("count bool", topic(), envelope(GOOD, count=True), Reason.BAD_ENVELOPE),
        ("count too big", topic(), envelope(GOOD, count=4), Reason.COUNT_MISMATCH),
        ("no records", topic(), envelope([], station="op10", count=0), Reason.COUNT_MISMATCH),
        (
            "not in seq order",
            topic(),
            envelope([body(5), body(3), body(8)], first_seq=5, last_seq=8),
            Reason.SEQ_ORDER,
        ),
        ("first_seq lies", topic(), envelope(GOOD, first_seq=2), Reason.SEQ_BOUNDS),
        ("last_seq lies", topic(), envelope(GOOD, last_seq=7), Reason.SEQ_BOUNDS),
        (
            "record of another station",
            topic(),
            envelope([body(3), body(5, station="op20")], station="op10"),
            Reason.STATION_MISMATCH,
        ),
        ("record without ts", topic(), envelope([{**body(3), "ts": None}]), Reason.BAD_RECORD),
        (
            "record seq text",
            topic(),
            envelope([{**body(3), "seq": "3"}], first_seq=3, last_seq=3),
            Reason.BAD_RECORD,
        ),
        ("record not object", topic(), envelope([body(3), 7], last_seq=3), Reason.BAD_RECORD),
        (
            "seq above bigint",
            topic(),
            envelope([body(2**63)], first_seq=1, last_seq=1),
            Reason.BAD_RECORD,
        ),
        ("salvaged bad", topic(), envelope([body(3, salvaged={"seq": "x"})]), Reason.BAD_RECORD),
        ("range not object", topic(), envelope(GOOD, range=[0, 8, 3]), Reason.BAD_RANGE),
        ("range before message", topic(), envelope(GOOD, rng=(3, 8, 3)), Reason.BAD_RANGE),
        ("range ends early", topic(), envelope(GOOD, rng=(0, 5, 3)), Reason.BAD_RANGE),
        ("range count too small", topic(), envelope(GOOD, rng=(0, 8, 2)), Reason.BAD_RANGE),
        ("range count impossible", topic(), envelope(GOOD, rng=(0, 8, 9)), Reason.BAD_RANGE),
    ]


@pytest.mark.parametrize(
    ("case", "where", "payload", "reason"), [pytest.param(*c, id=c[0]) for c in _bad_cases()]
)
def test_bad_messages_are_rejected_with_their_reason(
    case: str, where: str, payload: bytes, reason: Reason
) -> None:
    result = parse(where, payload, prefix=PREFIX, max_bytes=2048)
    assert isinstance(result, Rejection), case
    assert result.reason is reason, f"{case}: {result.detail}"
    assert result.detail


def test_absurd_nesting_is_not_json_rather_than_a_crash() -> None:
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    result = parse(topic(), deep, prefix=PREFIX, max_bytes=1 << 20)
    assert isinstance(result, Rejection)
    assert result.reason is Reason.NOT_JSON


def test_agent_outside_the_allowlist_is_foreign() -> None:
    result = parse(
        topic(), envelope(GOOD), prefix=PREFIX, max_bytes=2048, allowed_agents=frozenset({"other"})
    )
    assert isinstance(result, Rejection)
    assert (result.reason, result.agent) == (Reason.AGENT_NOT_ALLOWED, AGENT)


def test_a_good_message_gives_rows_edges_and_its_range() -> None:
    records = [
        body(
            10, "context", key="lot", value="L1", previous=None, ctx={"serial": "SN1", "lot": "L1"}
        ),
        body(
            11,
            "consumption",
            serial="SN1",
            lot="L2",
            component="C9",
            quantity=2,
            unit="pcs",
            rule="r",
            quality="good",
        ),
        body(
            12,
            "part",
            serial="SN1",
            result="ok",
            quality="good",
            values={},
            ctx={"serial": "SN1", "lot": "L1"},
        ),
        body(
            13,
            "scan",
            text="\u0000garbled\ud800",
            status="rejected",
            ctx={"serial": "SN\u0000X", "lot": None},
        ),
        body(14, "reading", salvaged={"seq": 4, "journal": "old.db"}),
    ]
    result = parse(topic(), envelope(records, rng=(9, 20, 7)), prefix=PREFIX, max_bytes=1 << 20)
    assert isinstance(result, Accepted), result
    assert result.range == Range(9, 20, 7)
    assert result.message_id == ("op10", 10)
    assert [r.seq for r in result.rows] == [10, 11, 12, 13, 4]  # salvaged: its original key
    assert [r.serial for r in result.rows] == ["SN1", "SN1", "SN1", "SN\ufffdX", None]
    assert json.loads(result.rows[3].body)["text"] == "\u0000garbled\ud800"  # body keeps it
    assert [(e.parent, e.child_kind, e.child, e.how, e.quantity) for e in result.edges] == [
        ("SN1", "lot", "L2", "consumption", 2.0),
        ("SN1", "component", "C9", "consumption", 2.0),
        ("SN1", "lot", "L1", "part", None),
    ]


def test_a_v1_message_from_an_agent_not_yet_upgraded_is_accepted() -> None:
    """v1 agents send one value per ``reading`` record; v2 only added ``readings``."""
    records = [body(3, "reading"), body(4, "context", key="serial", value="SN1", previous=None)]
    result = parse(topic(), envelope(records, v=1), prefix=PREFIX, max_bytes=1 << 20)
    assert isinstance(result, Accepted), result
    assert [(r.seq, r.kind) for r in result.rows] == [(3, "reading"), (4, "context")]


def test_confirm_and_order_say_whether_a_message_may_be_held() -> None:
    def holdable(**fields: Any) -> bool:
        result = parse(
            topic(), envelope(GOOD, rng=(0, 8, 3), **fields), prefix=PREFIX, max_bytes=4096
        )
        assert isinstance(result, Accepted), result
        return result.holdable

    assert holdable(confirm="store", order="in_order")
    assert holdable(confirm="store")  # no order: in_order, as before the field existed
    assert not holdable()  # an agent older than both fields: puback, in_order
    assert not holdable(confirm="puback", order="in_order")
    assert not holdable(confirm="store", order="live_first")
    # Advisory fields: an odd value never rejects the records, it only keeps them from waiting.
    assert not holdable(confirm="store", order=7)
    assert not holdable(confirm=["store"], order="in_order")
    no_range = parse(topic(), envelope(GOOD, confirm="store"), prefix=PREFIX, max_bytes=4096)
    assert isinstance(no_range, Accepted)
    assert not no_range.holdable  # nothing says where it lies relative to the watermark


def test_broker_option_parsing() -> None:
    assert parse_broker("mq.local") == ("mq.local", 1883)
    assert parse_broker("mq.local:8883") == ("mq.local", 8883)
    assert parse_broker("[::1]:1884") == ("::1", 1884)
    for bad in ("mq:port", ":1883", "mq:0", "[::1"):
        with pytest.raises(ValueError, match="broker"):
            parse_broker(bad)


def test_config_lists_every_problem() -> None:
    with pytest.raises(ValueError, match="port") as info:
        StoreConfig(port=0, topic_prefix="a/+", store_id="x/y", password="p")
    text = str(info.value)
    assert "topic prefix" in text
    assert "store id" in text
    assert "username" in text


# ---- ranges and watermarks (pure) ----------------------------------------------------------------


def entry(after: int, last: int, count: int, station: str, first: int, n: int) -> RangeEntry:
    return RangeEntry(STREAM, Range(after, last, count), (station, first), n)


def commit(tracker: RangeTracker, *entries: RangeEntry) -> int:
    tracker.apply(tracker.plan(entries))
    return tracker.watermark(STREAM)


def test_a_range_completes_when_its_messages_add_up() -> None:
    t = RangeTracker({})
    assert commit(t, entry(0, 10, 10, "op10", 1, 6)) == 0
    assert commit(t, entry(0, 10, 10, "op10", 1, 6)) == 0  # the same message again
    assert commit(t, entry(0, 10, 10, "op20", 2, 4)) == 10
    assert t.pending(STREAM) == 0  # forgotten once at or below W


def test_out_of_order_ranges_wait_for_the_gap() -> None:
    t = RangeTracker({})
    assert commit(t, entry(20, 30, 10, "op10", 21, 10)) == 0  # live-first: the newest first
    assert commit(t, entry(10, 20, 10, "op10", 11, 10)) == 0  # still the gap (0, 10]
    assert commit(t, entry(0, 10, 10, "op10", 1, 10)) == 30  # the gap closes: all at once


def test_overlapping_ranges_each_count_on_their_own() -> None:
    t = RangeTracker({})
    assert commit(t, entry(0, 10, 10, "op10", 1, 5)) == 0  # half of (0, 10]
    # A resend reads from 0 again, further: (0, 15] with 15 records in two messages.
    assert commit(t, entry(0, 15, 15, "op10", 1, 8)) == 0
    assert commit(t, entry(0, 15, 15, "op20", 2, 7)) == 15
    assert commit(t, entry(0, 10, 10, "op20", 2, 5)) == 15  # the old read completes: stays
    assert commit(t, entry(12, 20, 8, "op10", 13, 8)) == 20  # overlaps W from below


def test_void_seqs_count_as_covered() -> None:
    t = RangeTracker({})
    # (0, 10] holds 7 records: 3 seqs were evicted and will never come.
    assert commit(t, entry(0, 10, 7, "op10", 1, 7)) == 10


def test_same_interval_with_another_count_is_another_read() -> None:
    t = RangeTracker({})
    assert commit(t, entry(0, 10, 10, "op10", 1, 6)) == 0
    # Telemetry evicted between two reads: (0, 10] now holds 8. Mixing the two reads would
    # reach 6 + 4 = 10 without the 4 records of op20 the first read had.
    assert commit(t, entry(0, 10, 8, "op20", 2, 2)) == 0
    assert commit(t, entry(0, 10, 8, "op10", 1, 6)) == 10


def test_plan_changes_nothing_until_applied() -> None:
    t = RangeTracker({STREAM: 5})
    plan = t.plan([entry(5, 9, 4, "op10", 6, 4)])
    assert plan.watermarks == {STREAM: 9}
    assert t.watermark(STREAM) == 5
    assert t.pending(STREAM) == 0
    t.apply(plan)
    assert t.watermark(STREAM) == 9


def test_within_one_batch_a_message_counts_once() -> None:
    t = RangeTracker({})
    e = entry(0, 4, 4, "op10", 1, 2)
    assert commit(t, e, e) == 0


def test_a_draft_knows_the_watermark_after_every_entry() -> None:
    """The incremental watermark the store releases held messages by is the one ``plan``
    computes for the same entries, for any order, overlap, duplicate and void."""
    rnd = random.Random(7)
    for _ in range(300):
        start = rnd.randrange(0, 5)
        tracker = RangeTracker({STREAM: start})
        if rnd.random() < 0.5:  # some progress committed already
            tracker.apply(tracker.plan([entry(12, 20, 8, "op10", 13, 8)]))
        entries: list[RangeEntry] = []
        for _ in range(rnd.randrange(1, 12)):
            after = rnd.randrange(0, 20)
            last = after + rnd.randrange(1, 6)
            count = rnd.randrange(1, last - after + 1)
            first = rnd.randrange(1, count + 1)  # one or two messages per read
            parts = [first, count - first] if first < count else [count]
            for n, station in zip(parts, ("op10", "op20"), strict=False):
                entries.append(entry(after, last, count, station, after + 1, n))
        rnd.shuffle(entries)
        draft = tracker.draft()
        for k, e in enumerate(entries, 1):
            draft.add(e)
            assert draft.watermark(STREAM) == tracker.plan(entries[:k]).watermark(
                STREAM, tracker.watermark(STREAM)
            ), entries[:k]
        assert draft.plan().watermarks == tracker.plan(entries).watermarks


def test_held_messages_sort_by_range_dedupe_and_respect_the_bound() -> None:
    def message(after: int, seqs: list[int], station: str = "op10") -> Accepted:
        payload = envelope(readings(seqs, station), rng=(after, seqs[-1], len(seqs)))
        return accepted(payload, topic(station))

    held = HeldMessages(max_records=5)
    assert held.add(held.wrap(message(6, [7, 8])))
    assert held.add(held.wrap(message(3, [4, 5, 6])))
    assert held.add(held.wrap(message(3, [4, 5, 6])))  # the same read again: held once
    assert (held.records_of(STREAM), held.records) == (5, 5)
    assert not held.add(held.wrap(message(8, [9])))  # a 6th record: over the bound
    assert [h.range.after for h in held.pending(STREAM)] == [3, 6]
    assert [h.range.after for h in held.remove_first(STREAM, 1)] == [3]
    assert held.records == 2
    held.remove_first(STREAM, 1)
    assert STREAM not in held
    assert held.records == 0


# ---- storage (both backends) --------------------------------------------------------------------


def accepted(payload: bytes, where: str | None = None) -> Accepted:
    result = parse(where or topic(), payload, prefix=PREFIX, max_bytes=1 << 24)
    assert isinstance(result, Accepted), result
    return result


def write(storage: Storage, *messages: Accepted) -> int:
    batch = Batch()
    for m in messages:
        batch.rows.extend(m.rows)
        batch.edges.extend(m.edges)
    return storage.write(batch)


def test_storage_is_idempotent_by_agent_and_seq(storage: Storage) -> None:
    m = accepted(envelope(readings([1, 2, 3])))
    assert write(storage, m) == 3
    assert write(storage, m, m) == 0
    assert storage.seqs(AGENT) == [1, 2, 3]
    # Another agent's seq 1 is another record.
    assert write(storage, accepted(envelope(readings([1]), agent="other-pc"))) == 1
    assert storage.count_records() == 4


def test_salvaged_records_are_stored_under_their_original_seq(storage: Storage) -> None:
    write(storage, accepted(envelope(readings([5]))))
    salvaged = accepted(
        envelope(
            [
                salvaged_copy(40, 5, "buffer.db.damaged"),  # have it
                salvaged_copy(41, 6, "buffer.db.damaged"),  # new
            ]
        )
    )
    assert write(storage, salvaged) == 1
    assert storage.seqs(AGENT) == [5, 6]
    kept = storage.record(AGENT, 6)
    assert kept is not None
    assert kept.body["salvaged"] == {"seq": 6, "journal": "buffer.db.damaged"}
    original = storage.record(AGENT, 5)
    assert original is not None
    assert "salvaged" not in original.body


def test_watermark_only_grows_in_the_database(storage: Storage) -> None:
    from trace_store.storage import AgentState

    for w in (10, 4, 12):
        storage.write(Batch(agents={AGENT: AgentState(AGENT, SITE, LINE, w)}))
    assert storage.agents()[AGENT].watermark == 12


def genealogy() -> list[tuple[str, bytes]]:
    """lot L-STEEL -> sub-assemblies SA-1, SA-2 (part records while the lot was loaded at op10)
    and SA-3 (consumed at op20) -> finished goods FG-1, FG-2 (consumed SA-1/SA-2 at op30)."""
    steel = {"serial": None, "lot": "L-STEEL"}
    op10 = [
        body(1, "context", key="lot", value="L-STEEL", previous=None, ctx=steel),
        body(
            2, "context", key="serial", value="SA-1", previous=None, ctx={**steel, "serial": "SA-1"}
        ),
        body(
            3,
            "readings",
            ctx={**steel, "serial": "SA-1"},
            values={"force": 20.5, "stroke": None},
            quality={"stroke": "bad"},
            errors={"stroke": "no response within 1.0s"},
        ),
        body(
            4,
            "part",
            serial="SA-1",
            result="ok",
            quality="good",
            counter=1,
            cycle_time=2.0,
            values={
                "force": {
                    "value": 20.6,
                    "unit": "kN",
                    "quality": "good",
                    "min": 18,
                    "max": 22.5,
                    "ok": True,
                }
            },
            ctx={**steel, "serial": "SA-1"},
        ),
        body(
            5,
            "context",
            key="serial",
            value="SA-2",
            previous="SA-1",
            ctx={**steel, "serial": "SA-2"},
        ),
        body(
            6,
            "part",
            serial="SA-2",
            result="nok",
            quality="good",
            counter=2,
            values={
                "force": {
                    "value": 23.1,
                    "unit": "kN",
                    "quality": "good",
                    "min": 18,
                    "max": 22.5,
                    "ok": False,
                }
            },
            ctx={**steel, "serial": "SA-2"},
        ),
    ]
    op20 = [
        body(
            7,
            "consumption",
            station="op20",
            serial="SA-3",
            lot="L-STEEL",
            quantity=1.5,
            unit="kg",
            rule="lot",
            quality="good",
            ctx={"serial": "SA-3"},
        ),
        body(
            8,
            "consumption",
            station="op20",
            serial="SA-9",
            lot="L-OTHER",
            rule="lot",
            quality="good",
            ctx={"serial": "SA-9"},
        ),
    ]
    op30 = [
        body(
            9,
            "consumption",
            station="op30",
            serial="FG-1",
            component="SA-1",
            product="SUB-A",
            quantity=1,
            unit="pcs",
            rule="sub",
            quality="good",
            ctx={"serial": "FG-1"},
        ),
        body(
            10,
            "consumption",
            station="op30",
            serial="FG-1",
            lot="L-GLUE",
            quantity=3,
            unit="g",
            rule="glue",
            quality="good",
            ctx={"serial": "FG-1"},
        ),
        body(
            11,
            "part",
            station="op30",
            serial="FG-1",
            result="ok",
            quality="good",
            values={},
            ctx={"serial": "FG-1"},
        ),
        body(
            12,
            "consumption",
            station="op30",
            serial="FG-2",
            component="SA-2",
            product="SUB-A",
            quantity=1,
            unit="pcs",
            rule="sub",
            quality="good",
            ctx={"serial": "FG-2"},
        ),
    ]
    rng = (0, 12, 12)
    return [
        (topic("op10"), envelope(op10, rng=rng)),
        (topic("op20"), envelope(op20, rng=rng)),
        (topic("op30"), envelope(op30, rng=rng)),
    ]


def test_recall_queries(storage: Storage) -> None:
    write(storage, *(accepted(p, t) for t, p in genealogy()))

    lot = trace_lot(storage, "L-STEEL")
    assert [(a.serial, a.depth, a.edge.child) for a in lot.serials] == [
        ("SA-1", 1, "L-STEEL"),
        ("SA-2", 1, "L-STEEL"),
        ("SA-3", 1, "L-STEEL"),
        ("FG-1", 2, "SA-1"),
        ("FG-2", 2, "SA-2"),
    ]
    assert [a.edge.how for a in lot.serials[:3]] == ["part", "part", "consumption"]

    materials = trace_materials(storage, "FG-1")
    assert [(m.depth, m.kind, m.id, m.edge.parent) for m in materials.materials] == [
        (1, "component", "SA-1", "FG-1"),
        (1, "lot", "L-GLUE", "FG-1"),
        (2, "lot", "L-STEEL", "SA-1"),
    ]

    sa1 = trace_serial(storage, "SA-1")
    assert [(v.station, [r.seq for r in v.records]) for v in sa1.visits] == [("op10", [2, 3, 4])]
    assert [e.parent for e in sa1.used_in] == ["FG-1"]

    assert not trace_lot(storage, "L-NOPE").found
    assert not trace_serial(storage, "NOPE").found
    assert trace_materials(storage, "SA-9").found  # it consumed L-OTHER
    assert not trace_materials(storage, "SA-NOPE").found


def test_queries_open_the_database_read_only(storage: Storage, db: str) -> None:
    write(storage, *(accepted(p, t) for t, p in genealogy()))
    with open_storage(db, read_only=True) as reader:
        assert [a.serial for a in trace_lot(reader, "L-GLUE").serials] == ["FG-1"]
        with pytest.raises(Exception, match=r"read-only|readonly"):
            reader.write(Batch(rows=list(accepted(envelope(readings([99]))).rows)))


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

STORE_IN_ORDER = {"confirm": "store", "order": "in_order"}


def stored_seqs(db: str) -> list[int]:
    with open_storage(db) as s:
        return s.seqs(AGENT)


def wait_held(store: TraceStore, records: int, messages: int) -> None:
    """Until the store has handled (and acknowledged) ``messages`` in all and holds
    ``records`` records."""
    assert store.wait_stats(
        lambda s: s["messages"] >= messages and s["held_records"] == records, WAIT
    ), store.stats()


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


CONFIRMED = f"{PREFIX}/{SITE}/{LINE}/{AGENT}/confirmed"


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
    assert store.stats()["connections"] >= 2


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
