"""The record key in the database: (agent, epoch, seq), per-epoch watermarks, records kept aside
when a key is held for another record, and the migration of a schema-1 database.

Why an epoch in the key (docs/delivery.md, "The journal's identity"): an agent's journal
draws a new random epoch id every time it is opened, so a journal that is deleted, restored
from a backup, or copied to a second PC never numbers a new record under a key the store
already holds. Records of agents of the previous version have no epoch: theirs is ``''``, and
their key is (agent, seq) as before.

The store drops a record whose key it holds as a duplicate. That is right for every copy an
agent sends again (same key, same record), and the identity makes sure it is right for every
record of an agent of this version. Two cases remain where one key can name two records: an
agent of the previous version whose journal was replaced, and a journal copied together with
the running process' memory (a live virtual-machine clone). So whenever a batch meets keys it
holds, the bodies are compared (``conflicts``): another record is kept in ``conflicts``,
logged and counted, never dropped. It costs a read of the held bodies, and only in batches
that carry copies.

Functions on a ``Storage``, inside its transaction (``Storage.write``, ``_create_schema``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trace_store.envelope import Row

if TYPE_CHECKING:
    from trace_store.storage import Storage, StoredRecord, StreamState

log = logging.getLogger(__name__)

CHUNK = 500  # seqs per IN (...) list

V1_COLUMNS = {
    "records": ("agent, seq, site, line, station, kind, ts, serial, body, received_at", "seq"),
    "genealogy": (
        "agent, seq, parent, child_kind, child, how, site, line, station, ts, product, "
        "quantity, unit",
        "seq, child_kind, child",
    ),
}
"""Schema 1's columns of the tables whose key gains the epoch, and the key's tail."""

CONFLICT_COLUMNS = (
    "agent, epoch, seq, digest, site, line, station, kind, ts, serial, body, received_at"
)


def ddl(integer: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS epochs (
            agent TEXT NOT NULL,
            epoch TEXT NOT NULL,
            journal TEXT,
            site TEXT NOT NULL,
            line TEXT NOT NULL,
            first_seq {integer} NOT NULL DEFAULT 1,
            watermark {integer} NOT NULL DEFAULT 0,
            first_seen TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (agent, epoch))""",
        f"""CREATE TABLE IF NOT EXISTS conflicts (
            agent TEXT NOT NULL,
            epoch TEXT NOT NULL,
            seq {integer} NOT NULL,
            digest TEXT NOT NULL,
            site TEXT NOT NULL,
            line TEXT NOT NULL,
            station TEXT NOT NULL,
            kind TEXT NOT NULL,
            ts TEXT NOT NULL,
            serial TEXT,
            body TEXT NOT NULL,
            received_at TEXT NOT NULL,
            PRIMARY KEY (agent, epoch, seq, digest))""",
    ]


def write_streams(storage: Storage, streams: Sequence[StreamState], now: str) -> None:
    """Upsert per-epoch watermarks; a watermark only grows."""
    storage._executemany(
        "INSERT INTO epochs (agent, epoch, journal, site, line, first_seq, watermark, "
        "first_seen, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (agent, epoch) DO UPDATE SET site = excluded.site, line = excluded.line, "
        "journal = COALESCE(excluded.journal, epochs.journal), "
        f"watermark = {storage.greatest}(epochs.watermark, excluded.watermark), "
        "updated_at = excluded.updated_at",
        [
            (s.agent, s.epoch, s.journal, s.site, s.line, s.first_seq, s.watermark, now, now)
            for s in streams
        ],
    )


def conflicts(storage: Storage, rows: Sequence[Row], now: str) -> list[Row]:
    """Of ``rows`` (just inserted with ON CONFLICT DO NOTHING), those whose key the database
    holds for another record; they are written to ``conflicts``."""
    by_stream: dict[tuple[str, str], dict[int, list[Row]]] = {}
    for row in rows:
        by_stream.setdefault((row.agent, row.epoch), {}).setdefault(row.seq, []).append(row)
    found: list[Row] = []
    for (agent, epoch), by_seq in by_stream.items():
        seqs = sorted(by_seq)
        for start in range(0, len(seqs), CHUNK):
            chunk = seqs[start : start + CHUNK]
            among, params = storage._in("seq", chunk)
            held = storage._execute(
                f"SELECT seq, body FROM records WHERE agent = ? AND epoch = ? AND {among}",
                [agent, epoch, *params],
            )
            for seq, body in held:
                for row in by_seq.get(int(seq), ()):
                    if row.body != body and not same_record(row.body, body):
                        found.append(row)
    if found:
        storage._executemany(
            f"INSERT INTO conflicts ({CONFLICT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "?, ?) ON CONFLICT (agent, epoch, seq, digest) DO NOTHING",
            [
                (
                    r.agent,
                    r.epoch,
                    r.seq,
                    hashlib.sha256(r.body.encode()).hexdigest()[:32],
                    r.site,
                    r.line,
                    r.station,
                    r.kind,
                    r.ts,
                    r.serial,
                    r.body,
                    now,
                )
                for r in found
            ],
        )
    return found


def same_record(a: str, b: str) -> bool:
    """Two bodies of one record? A salvaged copy differs in ``seq`` and ``salvaged`` only."""
    try:
        one, two = json.loads(a), json.loads(b)
    except ValueError:
        return False
    if not (isinstance(one, dict) and isinstance(two, dict)):
        return False
    for body in (one, two):
        body.pop("seq", None)
        body.pop("salvaged", None)
    return bool(one == two)


def kept_conflicts(storage: Storage, agent: str | None) -> list[StoredRecord]:
    from trace_store.storage import StoredRecord

    sql = (
        "SELECT agent, seq, site, line, station, kind, ts, serial, body, received_at, epoch "
        "FROM conflicts"
    )
    params: list[Any] = []
    if agent is not None:
        sql += " WHERE agent = ?"
        params.append(agent)
    with storage._transaction():
        rows = storage._execute(sql + " ORDER BY agent, epoch, seq, received_at", params)
    return [
        StoredRecord(
            r[0], int(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), r[9], r[10]
        )
        for r in rows
    ]


def migrate_v1(storage: Storage, ddl: Sequence[str]) -> None:
    """Schema 1 -> 2, in the opening transaction: records and genealogy gain the epoch in
    their key (every existing row is of the legacy epoch ''), agents its current epoch."""
    log.warning(
        "%s: migrating to schema 2 (records keyed by agent, epoch, seq); a large database "
        "takes a while",
        storage.location,
    )
    for table, (columns, tail) in V1_COLUMNS.items():
        head = f"CREATE TABLE IF NOT EXISTS {table} ("
        create = next(s for s in ddl if s.startswith(head))
        storage._rekey(table, create, columns, f"agent, epoch, {tail}")
    storage._execute("ALTER TABLE agents ADD COLUMN epoch TEXT NOT NULL DEFAULT ''")
    storage._execute("ALTER TABLE agents ADD COLUMN journal TEXT")


def adopt_v1_watermarks(storage: Storage) -> None:
    """The watermarks of schema 1 were those of the legacy epoch."""
    storage._execute(
        "INSERT INTO epochs (agent, epoch, journal, site, line, first_seq, watermark, "
        "first_seen, updated_at) SELECT agent, '', NULL, site, line, 1, watermark, updated_at, "
        "updated_at FROM agents"
    )
