"""The part facts table (``trace_store/parts.py``): written with each part record at ingest,
one row per record key however often it arrives, filled at the first start of a database of
the previous schema, and read by the lists and dashboards exactly as the bodies were."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from benchmarks import workbench_history
from tests.store_helpers import accepted, body, envelope, write
from trace_store import facts, parts
from trace_store.envelope import Row
from trace_store.facts import part_summaries
from trace_store.storage import SCHEMA_VERSION, Batch, Storage, open_storage

TS = "2026-11-21T10:00:{:02d}.000000Z"


def part(seq: int, serial: str, result: str, repeat: Any = 0, **ctx: Any) -> dict[str, Any]:
    return body(
        seq,
        "part",
        serial=serial,
        result=result,
        repeat=repeat,
        values={"force": {"value": 20.0 + seq, "max": 22.5, "ok": result == "ok"}},
        ctx={"serial": serial, "lot": None, **ctx},
    )


def history() -> list[dict[str, Any]]:
    """Parts of two serials at op10 (one reworked), a reading, a context change."""
    return [
        body(1, "context", key="serial", value="S-1", previous=None),
        part(2, "S-1", "nok", product="P-1", work_order="WO-1"),
        body(3, ctx={"serial": "S-1", "lot": None}),
        part(4, "S-1", "ok", repeat=1, product="P-1"),
        part(5, "S-2", "ok", work_order="WO-2"),
        part(6, "S-3", "", repeat="0"),  # no result; "0" is a first pass
    ]


def rows_of(storage: Storage) -> list[tuple[Any, ...]]:
    with storage._transaction():
        return storage._execute(
            "SELECT seq, serial, station, ts, result, repeat, product, work_order, raw, causes "
            "FROM parts ORDER BY seq"
        )


def answers(storage: Storage) -> tuple[Any, ...]:
    """What the lists and the dashboard read."""
    return (
        part_summaries(storage, ["S-1", "S-2", "S-3", "S-9"]),
        facts.minute_tallies(storage, "op10", "2000", "2100"),
        list(facts.nok_causes_in(storage, "op10", "2000", "2100")),
    )


def test_ingest_writes_each_part_record_once(db: str) -> None:
    message = accepted(envelope(history()))
    assert [r.part is not None for r in message.rows] == [False, True, False, True, True, True]
    with open_storage(db) as storage:
        assert write(storage, message) == 6
        assert write(storage, message) == 0  # delivered twice: nothing new, here as well
        stored = rows_of(storage)
    ts = "2026-11-21T10:00:0{}.000000Z"
    assert stored == [
        (2, "S-1", "op10", ts.format(2), "nok", 0, "P-1", "WO-1", 0, '["force"]'),
        (4, "S-1", "op10", ts.format(4), "ok", 1, "P-1", None, 0, None),
        (5, "S-2", "op10", ts.format(5), "ok", 0, None, "WO-2", 0, None),
        (6, "S-3", "op10", ts.format(6), None, 0, None, None, 0, None),
    ]


def test_rows_without_the_envelope_fields_are_read_from_their_bodies(db: str) -> None:
    """A ``Row`` made by another writer (a tool, a test) carries no fields: the store reads
    them from the body, with the same result."""
    parsed = accepted(envelope(history())).rows
    bare = [Row(*(getattr(r, f) for f in Row.__dataclass_fields__ if f != "part")) for r in parsed]
    assert all(r.part is None for r in bare)
    with open_storage(db) as first:
        first.write(Batch(rows=list(parsed)))
        expected = rows_of(first)
    with open_storage(db) as storage, storage._transaction():
        storage._execute("DELETE FROM parts")
        storage._execute("DELETE FROM records")
    with open_storage(db) as storage:
        storage.write(Batch(rows=bare))
        assert rows_of(storage) == expected


def test_a_conflicting_record_keeps_the_facts_of_the_one_stored(db: str) -> None:
    """A key the store holds for another record (a journal clone): that record is kept aside
    in ``conflicts``, and the facts stay those of the record stored under the key."""
    with open_storage(db) as storage:
        write(storage, accepted(envelope([part(2, "S-1", "ok")])))
        write(storage, accepted(envelope([part(2, "S-X", "nok")])))
        assert [r.serial for r in storage.conflicts()] == ["S-X"]
        assert [(r[1], r[4]) for r in rows_of(storage)] == [("S-1", "ok")]


def test_a_garbled_field_is_read_from_the_body() -> None:
    assert parts.part_fields({"result": "ok", "ctx": {"product": "P\x00X"}}).raw
    assert parts.part_fields({"result": "ok\ud800"}).raw
    fields = parts.part_fields({"result": "nok", "repeat": 2, "ctx": {"work_order": 7}})
    assert fields == parts.PartFields("nok", 2, None, "7", causes='["result from the PLC"]')
    assert [parts.repeat_of(v) for v in (None, 0, "0", "", False, "false", 1, 3, "x", True)] == [
        0, 0, 0, 0, 0, 0, 1, 3, 1, 1,
    ]  # fmt: skip


def downgrade(db: str) -> None:
    """Make ``db`` a database of schema 2: no parts table, version 2."""
    with open_storage(db) as storage, storage._transaction():
        storage._execute("DROP TABLE parts")
        storage._execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def test_the_first_start_after_the_upgrade_fills_the_table(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    with open_storage(db) as storage:
        write(storage, accepted(envelope(history())))
        expected = rows_of(storage)
    downgrade(db)
    with open_storage(db, read_only=True) as reader:
        # A reader of a database its store has not upgraded yet reads the bodies instead.
        assert not reader._parts
        old = answers(reader)
    with caplog.at_level(logging.WARNING), open_storage(db) as storage:
        assert rows_of(storage) == expected
        assert storage.meta("schema_version") == str(SCHEMA_VERSION)
    logged = [r.getMessage() for r in caplog.records]
    assert any("part facts of 4 part records written in" in m for m in logged), logged
    assert any("index parts_station_ts built" in m for m in logged), logged
    with open_storage(db, read_only=True) as reader:
        assert reader._parts
        assert answers(reader) == old
    assert (old[0]["S-1"].result, old[0]["S-1"].work_order) == ("ok", "WO-1")
    assert [(t.ok, t.nok, t.other, t.first, t.first_ok) for t in old[1]] == [(2, 1, 1, 3, 1)]
    assert old[2] == [["force"]]


def test_the_benchmark_history_writes_the_facts_the_store_would(tmp_path: Any) -> None:
    for records, _, written in workbench_history.generate(30):
        bodies = {(r[0], r[1]): r[8] for r in records if r[5] == "part"}
        assert len(written) == len(bodies)
        for row in written:
            fields = parts.part_fields(json.loads(bodies[(row[0], row[2])]))
            assert row[7:] == (
                fields.result, fields.repeat, fields.product, fields.work_order, 0, fields.causes,
            )  # fmt: skip
        assert any(row[-1] for row in written), "NOK parts, with their causes"


def test_a_nok_part_keeps_why_it_failed() -> None:
    """The Pareto of NOK causes is read from ``parts.causes``: the values that failed their
    limits, else those that could not be read, else the PLC's own verdict."""

    def causes(values: dict[str, Any], result: str = "nok") -> Any:
        got = parts.part_fields({"result": result, "values": values}).causes
        return None if got is None else json.loads(got)

    failed = {"force": {"ok": False}, "depth": {"ok": True}, "temp": {"quality": "bad"}}
    assert causes(failed) == ["force"]
    assert causes({"force": {"ok": True}, "temp": {"quality": "bad"}}) == ["unreadable: temp"]
    assert causes({"force": {"ok": True}}) == ["result from the PLC"]
    assert causes(failed, "ok") is None
    odd = parts.part_fields({"result": "nok", "values": {"f\x00\ud800": {"ok": False}}})
    assert not odd.raw
    assert odd.causes is not None
    assert odd.causes.isascii()
    assert json.loads(odd.causes) == ["f\x00\ud800"]
