"""The trace store's side of the journal identity: the envelope's ``journal``/``epoch``/
``epoch_first``, records keyed by (agent, epoch, seq) with a watermark per epoch, records kept
aside when a key arrives for another record, the migration of a schema-1 database, and the
confirmation's ``epochs`` and ``session`` (docs/wire-format.md)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import psycopg
import pytest

from tests.mqtt_helpers import Mosquitto
from tests.store_helpers import (
    AGENT,
    CONFIRMED,
    PREFIX,
    WAIT,
    Publisher,
    StoreFactory,
    accepted,
    body,
    envelope,
    read_retained,
    readings,
    salvaged_copy,
    topic,
    write,
)
from trace_store.envelope import LEGACY_EPOCH, Reason, Rejection, parse
from trace_store.storage import SCHEMA_VERSION, Batch, Storage, open_storage

E1 = "1" * 32
E2 = "2" * 32
JOURNAL = "a" * 32


def epoch_envelope(records: list[Any], epoch: str = E1, first: int = 1, **fields: Any) -> bytes:
    return envelope(records, journal=JOURNAL, epoch=epoch, epoch_first=first, **fields)


# ---- the envelope ------------------------------------------------------------------------------


def test_a_message_of_an_epoch_is_keyed_by_it() -> None:
    result = accepted(epoch_envelope(readings([41, 42]), first=41, rng=(40, 42, 2)))
    assert (result.epoch, result.epoch_first, result.journal) == (E1, 41, JOURNAL)
    assert result.stream == (AGENT, E1)
    assert result.floor == 40
    assert [(r.epoch, r.seq) for r in result.rows] == [(E1, 41), (E1, 42)]
    legacy = accepted(envelope(readings([41])))
    assert (legacy.stream, legacy.floor, legacy.journal) == ((AGENT, LEGACY_EPOCH), 0, None)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"epoch": "x y", "epoch_first": 1}, Reason.BAD_ENVELOPE),
        ({"epoch": 7, "epoch_first": 1}, Reason.BAD_ENVELOPE),
        ({"epoch": E1}, Reason.BAD_ENVELOPE),  # no epoch_first
        ({"epoch": E1, "epoch_first": "1"}, Reason.BAD_ENVELOPE),
        ({"journal": "a/b"}, Reason.BAD_ENVELOPE),
        ({"epoch": E1, "epoch_first": 6}, Reason.SEQ_BOUNDS),  # records below their epoch
    ],
)
def test_a_garbled_identity_is_rejected(fields: dict[str, Any], reason: Reason) -> None:
    result = parse(topic(), envelope(readings([3, 5]), **fields), prefix=PREFIX, max_bytes=4096)
    assert isinstance(result, Rejection)
    assert result.reason is reason


def test_a_salvaged_record_is_keyed_by_the_epoch_and_seq_it_was_made_under() -> None:
    records = [
        salvaged_copy(90, 3, "buffer.db.damaged-x", epoch=E2),  # says where it came from
        salvaged_copy(91, 4, "buffer.db.damaged-x", epoch=LEGACY_EPOCH),  # older than epochs
        salvaged_copy(92, 5, "buffer.db.damaged-x"),  # the salvage could not tell
    ]
    result = accepted(epoch_envelope(records, first=90))
    assert [(r.epoch, r.seq) for r in result.rows] == [(E2, 3), (LEGACY_EPOCH, 4), (E1, 92)]
    # From an agent of the previous version, "no epoch" was the legacy epoch.
    old = accepted(envelope([salvaged_copy(92, 5, "buffer.db.damaged-x")]))
    assert [(r.epoch, r.seq) for r in old.rows] == [(LEGACY_EPOCH, 5)]


# ---- the database ------------------------------------------------------------------------------


@pytest.fixture
def storage(db: str) -> Any:
    s = open_storage(db)
    try:
        yield s
    finally:
        s.close()


def stored_keys(storage: Storage) -> list[tuple[str, int]]:
    with storage._transaction():
        rows = storage._execute("SELECT epoch, seq FROM records ORDER BY epoch, seq")
    return [(str(e), int(s)) for e, s in rows]


def test_one_seq_in_two_epochs_is_two_records(storage: Storage) -> None:
    assert write(storage, accepted(envelope(readings([1, 2])))) == 2
    assert write(storage, accepted(epoch_envelope(readings([1, 2]), E1))) == 2
    assert write(storage, accepted(epoch_envelope(readings([1, 2]), E2))) == 2
    assert write(storage, accepted(epoch_envelope(readings([1, 2]), E2))) == 0  # a copy
    assert stored_keys(storage) == [("", 1), ("", 2), (E1, 1), (E1, 2), (E2, 1), (E2, 2)]
    assert storage.record(AGENT, 2, E2) is not None
    assert storage.record(AGENT, 2, E2).epoch == E2  # type: ignore[union-attr]
    assert storage.conflicts() == []


def test_a_held_key_for_another_record_is_kept_aside_never_dropped(storage: Storage) -> None:
    write(storage, accepted(envelope([body(1, mark="first")])))
    batch = Batch(rows=list(accepted(envelope([body(1, mark="other"), body(2)])).rows))
    assert storage.write(batch) == 1
    assert [r.seq for r in batch.conflicts] == [1]
    (kept,) = storage.conflicts(AGENT)
    assert (kept.epoch, kept.seq, kept.body["mark"]) == (LEGACY_EPOCH, 1, "other")
    assert storage.record(AGENT, 1).body["mark"] == "first"  # type: ignore[union-attr]
    # Another copy of the same conflicting record is kept once; a salvaged copy of the stored
    # one (new seq, salvaged mark) is the same record, not a conflict.
    again = Batch(rows=list(accepted(envelope([body(1, mark="other")])).rows))
    storage.write(again)
    salvaged = Batch(rows=list(accepted(envelope([salvaged_copy(7, 2, "x")])).rows))
    storage.write(salvaged)
    assert salvaged.conflicts == []
    assert len(storage.conflicts()) == 1


V1_DDL = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE records (agent TEXT NOT NULL, seq {integer} NOT NULL, site TEXT NOT NULL,
        line TEXT NOT NULL, station TEXT NOT NULL, kind TEXT NOT NULL, ts TEXT NOT NULL,
        serial TEXT, body TEXT NOT NULL, received_at TEXT NOT NULL, PRIMARY KEY (agent, seq))""",
    "CREATE INDEX records_serial ON records (serial) WHERE serial IS NOT NULL",
    """CREATE TABLE genealogy (agent TEXT NOT NULL, seq {integer} NOT NULL, parent TEXT NOT NULL,
        child_kind TEXT NOT NULL, child TEXT NOT NULL, how TEXT NOT NULL, site TEXT NOT NULL,
        line TEXT NOT NULL, station TEXT NOT NULL, ts TEXT NOT NULL, product TEXT,
        quantity {real}, unit TEXT, PRIMARY KEY (agent, seq, child_kind, child))""",
    """CREATE TABLE agents (agent TEXT PRIMARY KEY, site TEXT NOT NULL, line TEXT NOT NULL,
        watermark {integer} NOT NULL DEFAULT 0, updated_at TEXT NOT NULL)""",
    """CREATE TABLE rejected (id {identity}, received_at TEXT NOT NULL, reason TEXT NOT NULL,
        detail TEXT NOT NULL, topic TEXT NOT NULL, size {integer} NOT NULL, agent TEXT,
        excerpt TEXT NOT NULL, payload {blob})""",
    "INSERT INTO meta (key, value) VALUES ('schema_version', '1')",
    "INSERT INTO records VALUES ('line3-pc1', 1, 'plant-a', 'line-3', 'op10', 'part', "
    "'2026-01-01T00:00:00.000000Z', 'SN1', '{\"seq\":1}', '2026-01-01T00:00:01.000000Z')",
    "INSERT INTO genealogy VALUES ('line3-pc1', 1, 'SN1', 'lot', 'L1', 'part', 'plant-a', "
    "'line-3', 'op10', '2026-01-01T00:00:00.000000Z', NULL, NULL, NULL)",
    "INSERT INTO agents VALUES ('line3-pc1', 'plant-a', 'line-3', 1, '2026-01-01T00:00:01Z')",
]


def dialect(statement: str, words: dict[str, str]) -> str:
    for word, value in words.items():
        statement = statement.replace("{" + word + "}", value)
    return statement


def make_v1(db: str) -> None:
    """A database as the store of the previous version made it."""
    if db.startswith("postgresql"):
        words = {
            "integer": "BIGINT",
            "real": "DOUBLE PRECISION",
            "identity": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            "blob": "BYTEA",
        }
        with psycopg.connect(db, autocommit=True) as conn:
            for statement in V1_DDL:
                conn.execute(dialect(statement, words))  # type: ignore[arg-type]
        return
    words = {
        "integer": "INTEGER",
        "real": "REAL",
        "identity": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "blob": "BLOB",
    }
    conn = sqlite3.connect(db)
    try:
        for statement in V1_DDL:
            conn.execute(dialect(statement, words))
        conn.commit()
    finally:
        conn.close()


def test_a_schema_1_database_is_migrated_in_place(db: str) -> None:
    make_v1(db)
    with open_storage(db) as storage:
        assert storage.meta("schema_version") == str(SCHEMA_VERSION)
        assert stored_keys(storage) == [("", 1)]
        (state,) = storage.streams()
        assert (state.agent, state.epoch, state.watermark) == (AGENT, LEGACY_EPOCH, 1)
        assert storage.agents()[AGENT].watermark == 1
        assert [e.epoch for e in storage.edges_to("lot", ["L1"])] == [LEGACY_EPOCH]
        # The new key at work: seq 1 of an epoch beside seq 1 of the legacy epoch.
        assert write(storage, accepted(epoch_envelope(readings([1]), E1))) == 1
        assert [r.serial for r in storage.records_of_serial("SN1")] == ["SN1"]
    with open_storage(db) as storage:  # opened again: nothing to migrate
        assert stored_keys(storage) == [("", 1), (E1, 1)]


# ---- through the broker --------------------------------------------------------------------------


def test_each_epoch_has_its_watermark_and_the_confirmation_lists_them(
    stores: StoreFactory, publisher: Publisher, mosquitto: Mosquitto, db: str
) -> None:
    store = stores(db)
    # An old journal's rows, then the same agent id's new journal from seq 1, then an epoch
    # that begins at seq 101: its watermark starts at 100, so (100, 103] completes at once.
    publisher.publish(topic(), envelope(readings([1, 2, 3]), rng=(0, 3, 3), confirm="store"))
    for records, epoch, first, rng in (
        (readings([1, 2]), E1, 1, (0, 2, 2)),
        (readings([101, 102, 103]), E2, 101, (100, 103, 3)),
    ):
        publisher.publish(topic(), epoch_envelope(records, epoch, first, rng=rng, confirm="store"))
    assert store.wait_watermark(AGENT, 103, WAIT, epoch=E2, published=True)
    assert store.epochs(AGENT) == {LEGACY_EPOCH: 3, E1: 2, E2: 103}
    assert store.watermark(AGENT) == 103, "the current epoch: the one begun last"
    got = read_retained(mosquitto.port, CONFIRMED)[CONFIRMED]
    assert (got["seq"], got["epochs"]) == (3, {E2: 103, E1: 2})
    assert store.stats()["inserted"] == 8
    assert store.stats()["held_records"] == 0


def test_a_resend_of_what_is_confirmed_is_answered_with_the_confirmation(
    stores: StoreFactory, publisher: Publisher, db: str
) -> None:
    """An agent that sends what the watermark covers has not heard of it (a retained message
    the broker lost, an old epoch's rows from a restored backup): it is told again."""
    store = stores(db)
    message = epoch_envelope(readings([1, 2]), rng=(0, 2, 2), confirm="store")
    publisher.publish(topic(), message)
    assert store.wait_watermark(AGENT, 2, WAIT, epoch=E1, published=True)
    sent = store.stats()["confirmations"]
    publisher.publish(topic(), message)
    assert store.wait_stats(lambda s: s["confirmations"] > sent, WAIT)


def test_the_session_value_changes_only_when_the_broker_lost_the_store(
    stores: StoreFactory, publisher: Publisher, mosquitto: Mosquitto, tmp_path: Any
) -> None:
    db = str(tmp_path / "trace.db")
    store = stores(db)
    publisher.publish(topic(), epoch_envelope(readings([1]), rng=(0, 1, 1)))
    assert store.wait_watermark(AGENT, 1, WAIT, epoch=E1, published=True)
    first = read_retained(mosquitto.port, CONFIRMED)[CONFIRMED]["session"]
    store.stop()  # the broker keeps its session (persistent), so nothing was missed
    again = stores(db)
    assert again.wait_stats(lambda s: s["confirmations"] >= 1, WAIT)
    assert read_retained(mosquitto.port, CONFIRMED)[CONFIRMED]["session"] == first
    again.stop()
    mosquitto.kill()  # never saved: the store's session is gone with it
    mosquitto.start()
    third = stores(db)
    assert third.wait_stats(lambda s: s["confirmations"] >= 1, WAIT)
    confirmation = read_retained(mosquitto.port, CONFIRMED)[CONFIRMED]
    assert confirmation["session"] != first
    assert confirmation["epochs"] == {E1: 1}, "republished although the broker forgot it"
    with open_storage(db) as storage:
        assert storage.meta("broker_session") == confirmation["session"]


def test_a_message_without_identity_from_the_same_agent_id_is_another_stream(
    stores: StoreFactory, publisher: Publisher, db: str
) -> None:
    store = stores(db)
    publisher.publish(topic(), epoch_envelope(readings([1, 2]), rng=(0, 2, 2)))
    publisher.publish(topic(), envelope(readings([1, 2]), rng=(0, 2, 2)))
    assert store.wait_watermark(AGENT, 2, WAIT, epoch=LEGACY_EPOCH)
    assert store.wait_watermark(AGENT, 2, WAIT, epoch=E1)
    assert store.stats()["inserted"] == 4
    assert json.loads(json.dumps(store.epochs(AGENT))) == {"": 2, E1: 2}
