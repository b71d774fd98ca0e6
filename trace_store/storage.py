"""The store's database: one small interface, SQLite and PostgreSQL behind it.

Both backends run the same SQL (written with ``?`` placeholders; PostgreSQL's get ``%s``)
except for a few dialect words. Tables:

- ``records``: one row per record, ``PRIMARY KEY (agent, epoch, seq)``; the body as JSON text.
  ``epoch`` is the journal epoch the record was made in (``''``: agents of the previous
  version, whose key was (agent, seq)); see docs/delivery.md, "The journal's identity".
- ``parts``: per part record the fields lists and dashboards need, as columns, written with
  the record (``trace_store/parts.py``).
- ``genealogy``: the edges recall queries walk: serial <- lot or component, from consumption
  records and from part records' ``ctx.lot``; keyed by the record that states them.
- ``epochs``: per (agent, epoch) its journal, first seq and watermark (what the store has
  confirmed); ``agents``: per agent its site, line and the watermark of its current epoch.
- ``conflicts``: records that arrived with a key the store holds for another record (a
  journal clone the identity could not tell apart, a legacy agent with a replaced journal):
  kept here, never dropped as duplicates (``trace_store/keys.py``).
- ``rejected``: messages kept aside, with the reason and the payload.

Every write is one transaction, and inserts are ``ON CONFLICT DO NOTHING``: a duplicate costs
nothing and changes nothing. The DDL and the migrations of older databases:
``trace_store/schema.py``.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, Self

from trace_store import keys, parts, schema
from trace_store.model import (
    RECORD_COLUMNS,
    AgentFreshness,
    AgentState,
    Batch,
    PageKey,
    RejectedMessage,
    StoredEdge,
    StoredRecord,
    StreamState,
    page_key,
    utc_now,
)
from trace_store.schema import SCHEMA_VERSION, ddl

__all__ = [  # what callers import from here (the values live in ``model``)
    "CHUNK", "RECORD_COLUMNS", "SCHEMA_VERSION", "AgentFreshness", "AgentState", "Batch",
    "PageKey", "RejectedMessage", "Storage", "StorageError", "StorageUnavailable", "StoredEdge",
    "StoredRecord", "StreamState", "ddl", "open_storage", "page_key", "utc_now",
]  # fmt: skip

CHUNK = 500  # ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits

log = logging.getLogger(__name__)


class StorageError(Exception):
    """The database cannot be opened or used as a trace store (bad path, wrong schema)."""


class StorageUnavailable(StorageError):
    """The database cannot be written right now (connection lost, disk full, locked).
    What was being written is not committed; try again later."""


class Storage(ABC):
    """A trace store database. Not thread-safe: one thread uses it at a time."""

    # ---- dialect -------------------------------------------------------------------------

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the data is, for logs (never with a password)."""

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (placeholders ``?``) and return its rows."""

    @abstractmethod
    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run one statement per row; returns the rows it changed."""

    @abstractmethod
    def _transaction(self) -> Any:
        """A context manager: one transaction, rolled back if the block raises. Raises
        StorageUnavailable when the database cannot be reached or written."""

    @abstractmethod
    def close(self) -> None: ...

    def _has_index(self, name: str) -> bool:
        return self._has("index", name)

    def _has_table(self, name: str) -> bool:
        return self._has("table", name)

    def _has(self, kind: str, name: str) -> bool:
        return bool(
            self._execute("SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?", (kind, name))
        )

    def _rekey(self, table: str, create: str, columns: str, key: str) -> None:
        """Schema 1 -> 2: give ``table`` an ``epoch`` column and the primary key ``key``."""
        schema.rebuild(self, table, create, columns)

    def _create_schema(self, ddl: Sequence[str]) -> None:
        schema.create(self, ddl)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    greatest = "MAX"  # the two-argument maximum: MAX in SQLite, GREATEST in PostgreSQL

    # JSON inside the database (``trace_store/facts.py``): ``_documents`` is a FROM source of
    # the records ``where`` with ``columns`` and their body as the document ``j``; ``_json_at``
    # the SQL (and its parameters) for the value at a path of keys in ``j``; ``_undecoded`` a
    # column holding the body where ``j`` could not be made (else NULL).
    # SQLite's json_extract ends a text at a \u0000 (a garbled scan in a context): such
    # bodies are decoded in Python.
    _undecoded = "CASE WHEN instr(body, '\\u0000') > 0 THEN body END"
    # Whether the database has the part facts table (``trace_store/parts.py``): False only
    # for a reader of a database whose store has not been upgraded yet, whose lists and
    # dashboards then read the bodies (``facts``).
    _parts = True

    def _stream(self, sql: str, size: int) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of the query ``sql``, ``size`` at a time, without holding them all."""
        yield self._execute(sql)  # overridden by both backends; one piece will do elsewhere

    def _documents(self, columns: str, where: str) -> str:
        return f"(SELECT {columns}, body AS j FROM records WHERE {where}) AS d"

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values`` (at most ``CHUNK``): the SQL and its parameters.
        SQLite: ``IN (?, ...)``; PostgreSQL: ``= ANY(?)`` with one array, whose statement text
        does not change with the count (psycopg parses and prepares it once, not per call)."""
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def _json_at(self, keys: Sequence[str], document: str = "j") -> tuple[str, list[Any]]:
        if any('"' in key for key in keys):
            return "NULL", []  # SQLite's JSON paths cannot name such a key
        return f"json_extract({document}, ?)", ["$" + "".join(f'."{key}"' for key in keys)]

    # One field of ``records.body`` read in a plain query of ``records`` (no ``_documents``),
    # NULL where the database cannot read the body; ``_raw_body`` is then the body.
    _raw_body = _undecoded

    def _body_at(self, keys: Sequence[str]) -> tuple[str, list[Any]]:
        return self._json_at(keys, "body")

    # ---- writing ---------------------------------------------------------------------------

    def write(self, batch: Batch) -> int:
        """Commit ``batch`` in one transaction; returns how many records were new."""
        now = utc_now()
        with self._transaction():
            inserted = 0
            if batch.rows:
                inserted = self._executemany(
                    "INSERT INTO records (agent, seq, site, line, station, kind, ts, serial, "
                    "body, received_at, epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (agent, epoch, seq) DO NOTHING",
                    [
                        (
                            r.agent,
                            r.seq,
                            r.site,
                            r.line,
                            r.station,
                            r.kind,
                            r.ts,
                            r.serial,
                            r.body,
                            now,
                            r.epoch,
                        )
                        for r in batch.rows
                    ],
                )
                if inserted < len(batch.rows):
                    # Some keys were held already: copies of the same records (resends), or,
                    # where the identity could not tell two records apart, another record.
                    batch.conflicts = keys.conflicts(self, batch.rows, now)
                parts.insert(self, batch.rows, skip=batch.conflicts)
            if batch.edges:
                self._executemany(
                    "INSERT INTO genealogy (agent, seq, parent, child_kind, child, how, site, "
                    "line, station, ts, product, quantity, unit, epoch) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (agent, epoch, seq, child_kind, child) DO NOTHING",
                    [
                        (
                            e.agent,
                            e.seq,
                            e.parent,
                            e.child_kind,
                            e.child,
                            e.how,
                            e.site,
                            e.line,
                            e.station,
                            e.ts,
                            e.product,
                            e.quantity,
                            e.unit,
                            e.epoch,
                        )
                        for e in batch.edges
                    ],
                )
            if batch.agents:
                # The watermark only grows within an epoch, whatever a caller passes; a new
                # current epoch (a replaced journal) brings its own.
                self._executemany(
                    "INSERT INTO agents (agent, site, line, watermark, updated_at, epoch, "
                    "journal) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent) DO UPDATE SET "
                    "site = excluded.site, line = excluded.line, "
                    "watermark = CASE WHEN agents.epoch = excluded.epoch THEN "
                    f"{self.greatest}(agents.watermark, excluded.watermark) "
                    "ELSE excluded.watermark END, "
                    "epoch = excluded.epoch, journal = excluded.journal, "
                    "updated_at = excluded.updated_at",
                    [
                        (a.agent, a.site, a.line, a.watermark, now, a.epoch, a.journal)
                        for a in batch.agents.values()
                    ],
                )
            if batch.streams:
                keys.write_streams(self, list(batch.streams.values()), now)
            if batch.rejected:
                self._executemany(
                    "INSERT INTO rejected (received_at, reason, detail, topic, size, agent, "
                    "excerpt, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            m.received_at,
                            m.reason,
                            m.detail,
                            m.topic,
                            m.size,
                            m.agent,
                            m.excerpt,
                            m.payload,
                        )
                        for m in batch.rejected
                    ],
                )
        return inserted

    # ---- reading ---------------------------------------------------------------------------

    def agents(self) -> dict[str, AgentState]:
        with self._transaction():
            rows = self._execute("SELECT agent, site, line, watermark, epoch, journal FROM agents")
        return {r[0]: AgentState(r[0], r[1], r[2], int(r[3]), r[4], r[5]) for r in rows}

    def streams(self) -> list[StreamState]:
        """Every (agent, epoch) the store knows, with its watermark, oldest first."""
        with self._transaction():
            rows = self._execute(
                "SELECT agent, epoch, site, line, watermark, first_seq, journal, updated_at "
                "FROM epochs ORDER BY first_seen, agent, epoch"
            )
        return [StreamState(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), r[6], r[7]) for r in rows]

    def conflicts(self, agent: str | None = None) -> list[StoredRecord]:
        """Records kept aside because their key was held for another record."""
        return keys.kept_conflicts(self, agent)

    def meta(self, key: str) -> str | None:
        with self._transaction():
            rows = self._execute("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction():
            self._execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def records_of_serial(self, serial: str) -> list[StoredRecord]:
        with self._transaction():
            rows = self._execute(
                f"SELECT {RECORD_COLUMNS} FROM records WHERE serial = ? ORDER BY agent, seq",
                (serial,),
            )
        return [_record(r) for r in rows]

    def serial_exists(self, serial: str) -> bool:
        with self._transaction():
            rows = self._execute("SELECT 1 FROM records WHERE serial = ? LIMIT 1", (serial,))
        return bool(rows)

    def parts_of(self, serials: Sequence[str]) -> list[StoredRecord]:
        """The part records of ``serials`` (index ``records_serial_kind``: only part rows are
        read, never a serial's thousands of readings), by agent and seq."""
        out: list[StoredRecord] = []
        with self._transaction():
            for chunk in _chunks(sorted(set(serials))):
                among, params = self._in("serial", chunk)
                rows = self._execute(
                    f"SELECT {RECORD_COLUMNS} FROM records "
                    f"WHERE {among} AND kind = 'part' ORDER BY agent, seq",
                    params,
                )
                out.extend(_record(r) for r in rows)
        return out

    def records_at(
        self,
        station: str,
        kind: str,
        since: str,
        until: str,
        *,
        after: PageKey | None = None,
        limit: int = 1000,
        line: str | None = None,
    ) -> list[StoredRecord]:
        """One page of ``kind`` records of ``station`` with ``since <= ts < until``, ordered by
        (ts, agent, epoch, seq), the records' order-and-identity key (two journal epochs of one
        agent may share a ts and a seq); ``after`` is the previous page's last such key. Index
        ``records_station_kind_key`` gives both the range and the order: a page costs its own
        rows, however long the window."""
        sql = (
            f"SELECT {RECORD_COLUMNS} FROM records "
            "WHERE station = ? AND kind = ? AND ts >= ? AND ts < ?"
        )
        params: list[Any] = [station, kind, since, until]
        if after is not None:
            sql += " AND (ts, agent, epoch, seq) > (?, ?, ?, ?)"
            params += list(after)
        if line is not None:
            sql += " AND line = ?"
            params.append(line)
        sql += " ORDER BY ts, agent, epoch, seq LIMIT ?"
        params.append(limit)
        with self._transaction():
            rows = self._execute(sql, params)
        return [_record(r) for r in rows]

    def last_ts(self, station: str, kind: str = "part") -> str | None:
        """The time of the station's newest record of ``kind`` (one index probe)."""
        with self._transaction():
            rows = self._execute(
                "SELECT ts FROM records WHERE station = ? AND kind = ? ORDER BY ts DESC LIMIT 1",
                (station, kind),
            )
        return rows[0][0] if rows else None

    def stations(self) -> list[tuple[str, str, str]]:
        """Every (station, site, line) that has part records, the line being the one of the
        station's latest part. A loose index scan: one index probe per station, not a scan
        of the table."""
        out: list[tuple[str, str, str]] = []
        with self._transaction():
            # Every station first (each step one probe on the index's first column), then
            # its newest part: a filter on kind inside the skip would walk a station's other
            # kinds (a year of consumption records sorts before 'part').
            names = self._execute(
                "WITH RECURSIVE s(name) AS ("
                "SELECT MIN(station) FROM records "
                "UNION ALL SELECT (SELECT MIN(station) FROM records "
                "WHERE station > s.name) FROM s WHERE s.name IS NOT NULL) "
                "SELECT name FROM s WHERE name IS NOT NULL"
            )
            for (name,) in names:
                rows = self._execute(
                    "SELECT site, line FROM records WHERE station = ? AND kind = 'part' "
                    "ORDER BY ts DESC LIMIT 1",
                    (name,),
                )
                if rows:
                    out.append((name, rows[0][0], rows[0][1]))
        return out

    def freshness(self) -> list[AgentFreshness]:
        """Per agent: its watermark, when the store last moved it, and its newest stored
        record (the primary key's last entry: one probe per agent)."""
        out: list[AgentFreshness] = []
        with self._transaction():
            agents = self._execute(
                "SELECT agent, site, line, watermark, updated_at, epoch FROM agents ORDER BY "
                "site, line, agent"
            )
            for agent, site, line, watermark, updated_at, epoch in agents:
                # The watermark is the current epoch's: its seqs are the ones to compare.
                last = self._execute(
                    "SELECT seq, ts, station, received_at FROM records WHERE agent = ? "
                    "AND epoch = ? ORDER BY seq DESC LIMIT 1",
                    (agent, epoch),
                )
                seq, ts, station, received = last[0] if last else (None, None, None, None)
                out.append(
                    AgentFreshness(
                        agent,
                        site,
                        line,
                        int(watermark),
                        updated_at,
                        None if seq is None else int(seq),
                        ts,
                        station,
                        received,
                    )
                )
        return out

    def record(self, agent: str, seq: int, epoch: str | None = None) -> StoredRecord | None:
        """The record (agent, epoch, seq); without ``epoch``, of any epoch (the first)."""
        sql = f"SELECT {RECORD_COLUMNS} FROM records WHERE agent = ? AND seq = ?"
        params: list[Any] = [agent, seq]
        if epoch is not None:
            sql += " AND epoch = ?"
            params.append(epoch)
        with self._transaction():
            rows = self._execute(sql + " ORDER BY epoch LIMIT 1", params)
        return _record(rows[0]) if rows else None

    def count_records(self, agent: str | None = None) -> int:
        with self._transaction():
            if agent is None:
                rows = self._execute("SELECT COUNT(*) FROM records")
            else:
                rows = self._execute("SELECT COUNT(*) FROM records WHERE agent = ?", (agent,))
        return int(rows[0][0])

    def seqs(self, agent: str) -> list[int]:
        with self._transaction():
            rows = self._execute("SELECT seq FROM records WHERE agent = ? ORDER BY seq", (agent,))
        return [int(r[0]) for r in rows]

    def edges_to(self, child_kind: str, children: Sequence[str]) -> list[StoredEdge]:
        """Edges whose child (a lot, or a component serial) is one of ``children``."""
        return self._edges("child", children, "child_kind = ? AND ", [child_kind])

    def edges_from(self, parents: Sequence[str]) -> list[StoredEdge]:
        """Edges whose parent serial is one of ``parents``."""
        return self._edges("parent", parents)

    def rejected(self, limit: int = 100) -> list[RejectedMessage]:
        with self._transaction():
            rows = self._execute(
                "SELECT received_at, reason, detail, topic, size, agent, excerpt, payload "
                "FROM rejected ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        return [
            RejectedMessage(
                r[0], r[1], r[2], r[3], int(r[4]), r[5], r[6], bytes(r[7]) if r[7] else None
            )
            for r in rows
        ]

    def _edges(
        self, column: str, ids: Sequence[str], also: str = "", fixed: Sequence[Any] = ()
    ) -> list[StoredEdge]:
        """Edges whose ``column`` is one of ``ids`` (and that match ``also``, a condition
        ending in AND, with its parameters ``fixed``), by time within each chunk."""
        out: list[StoredEdge] = []
        with self._transaction():
            for chunk in _chunks(sorted(set(ids))):
                among, params = self._in(column, chunk)
                rows = self._execute(
                    "SELECT agent, seq, parent, child_kind, child, how, site, line, station, ts, "
                    f"product, quantity, unit, epoch FROM genealogy WHERE {also}{among} "
                    "ORDER BY ts, agent, seq",
                    [*fixed, *params],
                )
                out.extend(
                    StoredEdge(
                        r[0],
                        int(r[1]),
                        r[2],
                        r[3],
                        r[4],
                        r[5],
                        r[6],
                        r[7],
                        r[8],
                        r[9],
                        r[10],
                        None if r[11] is None else float(r[11]),
                        r[12],
                        r[13],
                    )
                    for r in rows
                )
        out.sort(key=lambda e: (e.ts, e.agent, e.seq))
        return out


def open_storage(db: str, *, read_only: bool = False) -> Storage:
    """A SQLite file path, or a ``postgresql://`` (``postgres://``) URL.

    ``read_only`` (the query commands) never creates a database or a table: a wrong path is
    an error, not a new empty store.
    """
    if db.startswith(("postgresql://", "postgres://")):
        from trace_store.postgres import PostgresStorage

        return PostgresStorage(db, read_only=read_only)
    from trace_store.sqlite import SqliteStorage

    return SqliteStorage(db, read_only=read_only)


def _record(r: tuple[Any, ...]) -> StoredRecord:
    return StoredRecord(
        r[0], int(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), r[9], r[10]
    )


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
