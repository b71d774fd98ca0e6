"""The trace store's storage on both backends (SQLite, and PostgreSQL where installed):
idempotent writes, salvaged records, the watermark, the recall queries, read-only queries."""

from __future__ import annotations

import pytest

from tests.store_helpers import (
    AGENT,
    LINE,
    SITE,
    accepted,
    envelope,
    genealogy,
    readings,
    salvaged_copy,
    write,
)
from trace_store.queries import trace_lot, trace_materials, trace_serial
from trace_store.storage import Batch, Storage, open_storage

# ---- storage (both backends) --------------------------------------------------------------------


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
