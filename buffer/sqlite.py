"""The local durable journal: SQLite in WAL mode, owned by one thread.

Every record is committed here before anything acknowledges it, and leaves only once sync
reports it delivered. One worker thread owns the connection, so the event loop never waits
on a commit (invariant 7) and there is no question of who may touch the database.

Appends are batched by construction: while one transaction commits, new appends queue up
and go into the next one, so the batch size follows the load without a flush timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from edge_agent.errors import BufferError_
from edge_agent.model import RecordDraft, RecordKind

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq     INTEGER PRIMARY KEY,
    station TEXT NOT NULL,
    kind    TEXT NOT NULL,
    body    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- What each station knew as of its last committed record (context, part counter): written
-- in the same transaction as that record, so a restart resumes exactly where the journal is.
CREATE TABLE IF NOT EXISTS station_state (
    station TEXT PRIMARY KEY,
    state   TEXT NOT NULL
);
-- Serials that have a part record at a station, for repeat (rework) marking after a restart.
CREATE TABLE IF NOT EXISTS part_serials (
    station  TEXT NOT NULL,
    serial   TEXT NOT NULL,
    parts    INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    PRIMARY KEY (station, serial)
);
CREATE INDEX IF NOT EXISTS part_serials_recent ON part_serials (station, last_seq);
"""

Synchronous = Literal["FULL", "NORMAL"]


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A committed record as sync reads it. ``body`` is the wire JSON, ``seq`` included."""

    seq: int
    station: str
    kind: str
    body: str


class SqliteBuffer:
    """Durable, ordered journal of records with forever-increasing sequence numbers.

    ``seq`` is strictly increasing per agent across restarts: the highest seq ever committed
    is kept in ``meta`` in the same transaction as the rows, so deleting delivered rows never
    lets a number come back.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        max_batch: int = 20_000,
        max_serials: int = 100_000,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.max_batch = max_batch
        self.max_serials = max_serials
        self._parts_since_prune = 0
        self._on_commit_cb = on_commit
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[tuple[int, RecordDraft]] = deque()
        self._jobs: deque[tuple[Callable[[sqlite3.Connection], Any], Future[Any]]] = deque()
        self._flush_waiters: list[tuple[int, asyncio.Future[int]]] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_seq = 1
        self.committed_seq = 0
        self.depth = 0  # rows waiting for delivery (committed)
        self.appended = 0
        self.committed_total = 0
        self.new_data = asyncio.Event()
        self._empty_waiters: list[asyncio.Future[None]] = []
        self.failure: BaseException | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open (or create) the journal and start the owning thread."""
        self._loop = asyncio.get_running_loop()
        # Events belong to the running loop, so they are made here (callers read
        # ``buffer.new_data`` each time rather than keeping a reference from before start).
        self.new_data = asyncio.Event()
        opened: Future[tuple[int, int]] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(opened,), name=f"buffer:{self.path.name}", daemon=True
        )
        self._thread.start()
        last_seq, depth = await asyncio.wrap_future(opened)
        self._next_seq = last_seq + 1
        self.committed_seq = last_seq
        self.depth = depth
        if depth:
            self.new_data.set()
        log.info("buffer %s open: last seq %d, %d records waiting", self.path, last_seq, depth)

    async def stop(self) -> None:
        """Commit everything appended so far, then close. Idempotent."""
        if self._thread is None:
            return
        try:
            await self.flush()
        finally:
            with self._lock:
                self._closing = True
                self._wake.notify()
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    # ---- event-loop side API ---------------------------------------------------------

    def append(self, drafts: Sequence[RecordDraft]) -> int:
        """Queue records for the next commit; never blocks. Returns the last seq given out.

        Sequence numbers are assigned here, in call order, so the journal order is exactly
        the order the binder produced.
        """
        if self._thread is None:
            raise BufferError_("buffer is not running")
        if self.failure is not None:
            raise BufferError_(f"buffer failed: {self.failure}")
        with self._lock:
            seq = self._next_seq
            for d in drafts:
                self._pending.append((seq, d))
                seq += 1
            self._next_seq = seq
            self.appended += len(drafts)
            self._wake.notify()
        return seq - 1

    @property
    def last_assigned_seq(self) -> int:
        return self._next_seq - 1

    async def flush(self) -> int:
        """Wait until every record appended before this call is committed."""
        target = self._next_seq - 1
        if self.committed_seq >= target:
            return self.committed_seq
        if self.failure is not None:
            raise BufferError_(f"buffer failed: {self.failure}")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append((target, fut))
        return await fut

    async def read_batch(
        self, after_seq: int, max_records: int, max_bytes: int = 1 << 62
    ) -> list[StoredRecord]:
        """Committed records with seq > after_seq, in seq order, bounded by count and bytes.

        Always returns at least one record if any is waiting, even if it alone passes
        ``max_bytes``, so an oversized record cannot wedge the queue.
        """

        def job(db: sqlite3.Connection) -> list[StoredRecord]:
            out: list[StoredRecord] = []
            size = 0
            cur = db.execute(
                "SELECT seq, station, kind, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, max_records),
            )
            for seq, station, kind, body in cur:
                size += len(body)
                if out and size > max_bytes:
                    break
                out.append(StoredRecord(seq, station, kind, body))
            return out

        return await self._submit(job)

    async def delete(self, seqs: Sequence[int]) -> int:
        """Drop delivered records; returns how many rows went. Only sync calls this, and
        only after confirmation. ``depth`` follows the commit, even if the caller is
        cancelled while waiting."""
        if not seqs:
            return 0
        ranges = _ranges(sorted(seqs))

        def job(db: sqlite3.Connection) -> int:
            with db:
                n = 0
                for lo, hi in ranges:
                    n += db.execute(
                        "DELETE FROM records WHERE seq BETWEEN ? AND ?", (lo, hi)
                    ).rowcount
            self._notify(functools.partial(self._deleted, n))
            return n

        return await self._submit(job)

    async def wait_empty(self) -> None:
        """Return once every committed record has been delivered and deleted."""
        if self.depth <= 0:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._empty_waiters.append(fut)
        await fut

    async def count(self) -> int:
        """Rows in the journal (a query, for tests and the CLI; ``depth`` is the cheap gauge)."""
        return int(
            await self._submit(lambda db: db.execute("SELECT count(*) FROM records").fetchone()[0])
        )

    # ---- the owning thread -----------------------------------------------------------

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise BufferError_("buffer is not running")
        fut: Future[T] = Future()
        with self._lock:
            self._jobs.append((fn, fut))
            self._wake.notify()
        return await asyncio.wrap_future(fut)

    def _open(self) -> tuple[sqlite3.Connection, int, int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit survives a power cut, which is what lets a PLC handshake or a
        # scanner beep follow it. NORMAL trades that for speed (survives process crashes).
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        db.isolation_level = "DEFERRED"  # implicit transactions again, managed with `with db:`
        db.executescript(SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        max_row = db.execute("SELECT max(seq), count(*) FROM records").fetchone()
        last_seq = max(int(row[0]) if row else 0, int(max_row[0] or 0))
        return db, last_seq, int(max_row[1])

    def _run(self, opened: Future[tuple[int, int]]) -> None:
        try:
            db, last_seq, depth = self._open()
        except Exception as exc:  # reported to start(), which raises it in the loop
            opened.set_exception(BufferError_(f"cannot open buffer {self.path}: {exc}"))
            return
        opened.set_result((last_seq, depth))
        try:
            while True:
                with self._lock:
                    while not self._pending and not self._jobs and not self._closing:
                        self._wake.wait()
                    batch = [
                        self._pending.popleft()
                        for _ in range(min(len(self._pending), self.max_batch))
                    ]
                    jobs = list(self._jobs)
                    self._jobs.clear()
                    closing = self._closing and not self._pending and not batch
                if batch:
                    self._commit(db, batch)
                for fn, fut in jobs:
                    # The awaiting task may have been cancelled; then its job is dropped
                    # (never half-run, and the thread must not die on a cancelled future).
                    if not fut.set_running_or_notify_cancel():
                        continue
                    try:
                        fut.set_result(fn(db))
                    except Exception as exc:
                        fut.set_exception(exc)
                if closing:
                    break
        except Exception as exc:
            log.exception("buffer thread failed")
            self.failure = exc
            self._notify(functools.partial(self._fail_waiters, exc))
        finally:
            db.close()

    def _commit(self, db: sqlite3.Connection, batch: list[tuple[int, RecordDraft]]) -> None:
        # Serialising here keeps JSON encoding off the event loop. ``default=dict`` renders the
        # binder's read-only context mappings.
        rows = []
        states: dict[str, dict[str, Any]] = {}
        parts: list[tuple[str, str, int]] = []
        for seq, d in batch:
            rows.append(
                (
                    seq,
                    d.station,
                    d.kind.value,
                    json.dumps({"seq": seq, **d.body}, separators=(",", ":"), default=dict),
                )
            )
            if d.state is not None:
                states[d.station] = d.state
            if d.kind is RecordKind.PART and isinstance(d.body.get("serial"), str):
                parts.append((d.station, d.body["serial"], seq))
        last = batch[-1][0]
        with db:
            db.executemany("INSERT INTO records (seq, station, kind, body) VALUES (?,?,?,?)", rows)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('last_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(last),),
            )
            if states:
                db.executemany(
                    "INSERT INTO station_state (station, state) VALUES (?, ?) "
                    "ON CONFLICT(station) DO UPDATE SET state=excluded.state",
                    [(k, json.dumps(v, default=dict)) for k, v in states.items()],
                )
            if parts:
                db.executemany(
                    "INSERT INTO part_serials (station, serial, parts, last_seq) "
                    "VALUES (?, ?, 1, ?) ON CONFLICT(station, serial) "
                    "DO UPDATE SET parts = parts + 1, last_seq = excluded.last_seq",
                    parts,
                )
                self._parts_since_prune += len(parts)
                if self._parts_since_prune >= PRUNE_EVERY:
                    self._parts_since_prune = 0
                    _prune_part_serials(db, self.max_serials)
        n = len(rows)
        self._notify(lambda: self._committed(last, n))

    async def load_state(
        self,
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int]]]:
        """What the stations knew at the last commit: {station: state} and, per station, the
        most recent ``max_serials`` serials with their part-record counts (oldest first)."""

        def job(db: sqlite3.Connection) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
            states = {
                station: json.loads(state)
                for station, state in db.execute("SELECT station, state FROM station_state")
            }
            parts: dict[str, dict[str, int]] = {}
            stations = [r[0] for r in db.execute("SELECT DISTINCT station FROM part_serials")]
            for station in stations:
                rows = db.execute(
                    "SELECT serial, parts FROM (SELECT serial, parts, last_seq FROM part_serials "
                    "WHERE station = ? ORDER BY last_seq DESC LIMIT ?) ORDER BY last_seq",
                    (station, self.max_serials),
                )
                parts[station] = {serial: int(n) for serial, n in rows}
            return states, parts

        return await self._submit(job)

    def _notify(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # The loop may close between the check and the call.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn)

    # ---- back on the event loop ------------------------------------------------------

    def _committed(self, last_seq: int, n: int) -> None:
        self.committed_seq = last_seq
        self.depth += n
        self.committed_total += n
        self.new_data.set()
        if self._on_commit_cb is not None:
            self._on_commit_cb(last_seq)
        still = []
        for target, fut in self._flush_waiters:
            if target <= last_seq:
                if not fut.done():
                    fut.set_result(last_seq)
            else:
                still.append((target, fut))
        self._flush_waiters = still

    def _deleted(self, n: int) -> None:
        self.depth -= n
        if self.depth <= 0:
            waiters, self._empty_waiters = self._empty_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _fail_waiters(self, exc: BaseException) -> None:
        for _, fut in self._flush_waiters:
            if not fut.done():
                fut.set_exception(BufferError_(f"buffer failed: {exc}"))
        self._flush_waiters = []


PRUNE_EVERY = 10_000
"""Part records between two prunings of ``part_serials`` (kept to ``max_serials`` per station)."""


def _prune_part_serials(db: sqlite3.Connection, keep: int) -> None:
    for (station,) in db.execute("SELECT DISTINCT station FROM part_serials").fetchall():
        db.execute(
            "DELETE FROM part_serials WHERE station = ? AND last_seq < (SELECT min(last_seq) FROM "
            "(SELECT last_seq FROM part_serials WHERE station = ? ORDER BY last_seq DESC LIMIT ?))",
            (station, station, keep),
        )


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Collapse sorted seqs into inclusive (lo, hi) runs, so deletes are a few range scans."""
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out
