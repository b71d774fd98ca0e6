"""The local durable journal: SQLite in WAL mode, owned by one thread.

Every record is committed here before anything acknowledges it, and leaves only once sync
reports it delivered, or (continuous telemetry only) when storage runs short. One worker
thread owns the connection, so the event loop never waits on a commit (invariant 7) and there
is no question of who may touch the database.

Appends are batched by construction: while one transaction commits, new appends queue up
and go into the next one, so the batch size follows the load. Only a batch of telemetry alone
waits, at most ``TELEMETRY_LINGER``, for more to join it (one fsync for a whole poll phase).

Two retention classes (invariant 4): telemetry (``readings``) is bounded by rows, bytes
and age and gives way, oldest first, counted and reported; everything else is trace data and
leaves only by delivery. When the journal cannot grow (disk full, ``max_bytes``), telemetry is
evicted to make room; with none left, trace records wait in memory (their ``flush()`` waiters
keep waiting, so a PLC handshake holds its part) and the commit is retried until it fits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import shutil
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from buffer import files
from buffer.policy import TELEMETRY, TELEMETRY_SQL, DiskUsage, DiskWatermarks, TelemetryBounds
from kernel.errors import BufferError_
from kernel.model import RecordDraft, RecordKind

if TYPE_CHECKING:
    from buffer.config import BufferConfig
    from kernel.alarms import Alarms

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq     INTEGER PRIMARY KEY,
    station TEXT NOT NULL,
    kind    TEXT NOT NULL,
    body    TEXT NOT NULL,
    at      INTEGER NOT NULL,  -- commit time, unix seconds: what telemetry's max_age measures
    size    INTEGER NOT NULL   -- bytes of body: what telemetry's max_bytes adds up
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
-- Journals found damaged at start and set aside; the alarm stays up until they are salvaged.
CREATE TABLE IF NOT EXISTS damaged (
    name        TEXT PRIMARY KEY,  -- file name of the set-aside journal
    path        TEXT NOT NULL,
    found_at    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    last_seq    INTEGER NOT NULL,  -- highest seq still readable in it (0: none)
    seq_floor   INTEGER NOT NULL,  -- first seq of the journal that replaced it
    salvaged_at TEXT
);
-- Records copied in by `edge-agent buffer salvage`, by (damaged file, original seq), written
-- with the copy itself: a second run (or a run after a crash) copies nothing twice.
CREATE TABLE IF NOT EXISTS salvaged (
    journal TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    new_seq INTEGER NOT NULL,
    PRIMARY KEY (journal, seq)
) WITHOUT ROWID;
"""

# No index on ``kind``. A partial index of telemetry was measured: -8% on append+commit and
# -25% on delete, for every record, to speed up queries that are cheap without it: the running
# totals are counted once at open (after quick_check has read the file anyway), a delete counts
# the telemetry in the rows it is about to delete (same pages), and "the oldest telemetry" is a
# primary-key walk from ``_tele_floor``, below which no telemetry is left, so each row is
# stepped over about once however much trace data sits at the front of the journal.

Synchronous = Literal["FULL", "NORMAL"]
DiskState = Literal["ok", "low", "critical"]

EVICT_CHUNK = 5_000
"""Telemetry rows deleted per transaction: commits interleave with a long eviction."""
FULL_RETRY = 1.0
"""Seconds between commit attempts while the journal is full (and at once after any delete)."""
REPORT_EVERY = 60.0
"""Seconds between two eviction (or dropped-readings) log lines: counted, never one per row."""
TELEMETRY_LINGER = 0.005
"""Seconds a commit of telemetry alone may wait for more records to join it. Devices polled
in the same phase answer within a few ms of each other; while a batch lingers, the appends that
join it do not wake this thread, and one commit (one fsync) takes them all. At 10 stations x 64
registers / 64 ms it took the agent from 12.0-12.5% to 10.7-11.0% of a core (fdatasync 40/s ->
36/s: most of the gain is wake-ups). Trace records, a ``flush`` waiter and closing commit at
once, so no acknowledgement (PLC handshake) is ever delayed."""
JOURNAL_SIZE_LIMIT = 64 << 20
"""The WAL is truncated back to this after a checkpoint, so a burst does not keep disk."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A committed record as sync reads it. ``body`` is the wire JSON, ``seq`` included."""

    seq: int
    station: str
    kind: str
    body: str


@dataclass(slots=True)
class _Evictions:
    """Evictions since the last report (log line and alarm)."""

    rows: int = 0
    bytes: int = 0
    first: int | None = None
    last: int | None = None
    reasons: set[str] = field(default_factory=set)

    def add(self, rows: int, nbytes: int, lo: int, hi: int, reason: str) -> None:
        self.rows += rows
        self.bytes += nbytes
        self.first = lo if self.first is None else min(self.first, lo)
        self.last = hi if self.last is None else max(self.last, hi)
        self.reasons.add(reason)


@dataclass(frozen=True, slots=True)
class _Opened:
    last_seq: int
    depth: int
    alarms: list[tuple[str, str]]  # (code, message) to raise once the loop has them


class SqliteBuffer:
    """Durable, ordered journal of records with forever-increasing sequence numbers.

    ``seq`` is strictly increasing per agent across restarts: the highest seq ever committed
    is kept in ``meta`` in the same transaction as the rows, so deleting delivered rows never
    lets a number come back; a journal replaced after damage starts above anything the old one
    could have used (see ``_replace_damaged``).

    Counters written by the journal's thread and read anywhere (plain ints): ``telemetry_rows``,
    ``telemetry_bytes``, ``evicted_rows``, ``evicted_bytes``, ``disk_free``. ``depth``,
    ``committed_seq`` and ``dropped_readings`` belong to the event loop.
    """

    telemetry_alarm_quiet = 900.0
    """Seconds without an eviction before the ``telemetry_evicted`` alarm clears."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        max_batch: int = 20_000,
        max_serials: int = 100_000,
        on_commit: Callable[[int], None] | None = None,
        alarms: Alarms | None = None,
        telemetry: TelemetryBounds = TelemetryBounds(),  # noqa: B008 (frozen, shared safely)
        disk: DiskWatermarks = DiskWatermarks(),  # noqa: B008
        max_bytes: int | None = None,
        disk_usage: Callable[[str], DiskUsage] = shutil.disk_usage,
        config_path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._clock = clock  # wall clock, unix s: commit times and max_age (tests move it)
        self.synchronous = synchronous
        self.max_batch = max_batch
        self.max_serials = max_serials
        self.alarms = alarms
        self.telemetry = telemetry
        self.disk = disk
        self.max_bytes = max_bytes
        self.config_path = config_path
        self._disk_usage = disk_usage
        self._parts_since_prune = 0
        self._on_commit_cb = on_commit
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[tuple[int, RecordDraft]] = deque()
        self._pending_since = 0.0  # when the oldest pending record was appended
        self._urgent = False  # pending holds a trace record, or someone waits in flush()
        self._jobs: deque[tuple[Callable[[sqlite3.Connection], Any], Future[Any]]] = deque()
        self._flush_waiters: list[tuple[int, asyncio.Future[int]]] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._journal_lock = files.JournalLock(self.path)
        self._next_seq = 1
        self.committed_seq = 0
        self.depth = 0  # rows waiting for delivery (committed)
        self.appended = 0
        self.committed_total = 0
        self.new_data = asyncio.Event()
        self._empty_waiters: list[asyncio.Future[None]] = []
        self.failure: BaseException | None = None
        # Readings are refused at append (under ``_lock``) while this names why.
        self._refuse: str | None = None
        self.dropped_readings = 0
        self._dropped_logged = 0
        self._dropped_log_at = float("-inf")
        # ---- owned by the journal's thread ----
        self.telemetry_rows = 0
        self.telemetry_bytes = 0
        self.evicted_rows = 0
        self.evicted_bytes = 0
        self.evicted_first_seq: int | None = None
        self.evicted_last_seq: int | None = None
        self.disk_free: int | None = None
        self._disk_state: DiskState = "ok"
        self._full = False  # a trace record found no room even after evicting: holding
        self._retry_at = 0.0
        self._batch_limit = max_batch
        self._draining_bounds = False
        self._age_pending = False
        self._next_check = 0.0
        self._more = False  # maintenance left work for the next round
        self._dropped_max = 0  # highest seq of a queued reading dropped for room
        self._tele_floor = 0  # no telemetry row has a seq <= this
        self._max_written = 0  # highest seq in the table (as far as this thread wrote)
        self._page_size = 4096
        self._report = _Evictions()
        self._report_at = float("-inf")
        self._last_evict_at = float("-inf")
        self._evict_failed_at = float("-inf")
        self._raised: set[str] = set()
        # new seq -> (damaged journal, old seq) of salvaged records not committed yet.
        self._salvage_keys: dict[int, tuple[str, int]] = {}

    @classmethod
    def from_config(
        cls,
        cfg: BufferConfig,
        *,
        alarms: Alarms | None = None,
        config_path: str | Path | None = None,
        **kwargs: Any,
    ) -> SqliteBuffer:
        """The journal as the ``buffer`` section of the config describes it."""
        return cls(
            cfg.path,
            synchronous=cfg.synchronous,
            alarms=alarms,
            config_path=config_path,
            max_bytes=cfg.max_bytes,
            telemetry=TelemetryBounds(
                max_rows=cfg.telemetry.max_rows,
                max_bytes=cfg.telemetry.max_bytes,
                max_age=cfg.telemetry.max_age,
            ),
            disk=DiskWatermarks(
                warn_free_bytes=cfg.disk.warn_free_bytes,
                critical_free_bytes=cfg.disk.critical_free_bytes,
                check_interval=cfg.disk.check_interval,
            ),
            **kwargs,
        )

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Take the journal's lock, open (or create, or replace a damaged) journal and start
        the owning thread. Raises ``BufferError_`` if the journal is locked or unusable."""
        self._loop = asyncio.get_running_loop()
        # Events belong to the running loop, so they are made here (callers read
        # ``buffer.new_data`` each time rather than keeping a reference from before start).
        self.new_data = asyncio.Event()
        self._closing = False
        opened: Future[_Opened] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(opened,), name=f"buffer:{self.path.name}", daemon=True
        )
        self._thread.start()
        try:
            info = await asyncio.wrap_future(opened)
        except BaseException:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            raise
        self._next_seq = info.last_seq + 1
        self.committed_seq = info.last_seq
        self.depth = info.depth
        if info.depth:
            self.new_data.set()
        for code, message in info.alarms:
            self._raise_alarm(code, message, logging.CRITICAL)
        log.info(
            "buffer %s open: last seq %d, %d records waiting (%d telemetry, %d bytes)",
            self.path,
            info.last_seq,
            info.depth,
            self.telemetry_rows,
            self.telemetry_bytes,
        )

    async def stop(self) -> None:
        """Commit everything appended so far, then close and release the lock. Idempotent.

        If the journal is full and a last attempt still finds no room, the trace records still
        in memory are given up (logged CRITICAL: they were never acknowledged, exactly as if
        the process had been killed) and ``BufferError_`` is raised, rather than hanging."""
        if self._thread is None:
            return
        with self._lock:
            self._closing = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self.failure is not None and self.committed_seq < self._next_seq - 1:
            raise BufferError_(f"buffer failed: {self.failure}")

    # ---- event-loop side API ---------------------------------------------------------

    def append(self, drafts: Sequence[RecordDraft]) -> int:
        """Queue records for the next commit; never blocks. Returns the last seq given out.

        Sequence numbers are assigned here, in call order, so the journal order is exactly
        the order the binder produced. While storage is critical or full, readings are
        refused here (counted in ``dropped_readings``) and get no seq, so what is refused
        leaves no hole among the seqs that are kept.
        """
        return self._enqueue(drafts, None)

    def append_salvaged(
        self, drafts: Sequence[RecordDraft], origins: Sequence[tuple[str, int]]
    ) -> int:
        """``append`` for ``edge-agent buffer salvage``: ``origins[i]`` is (damaged journal
        file name, old seq) of ``drafts[i]``, recorded in the same transaction as the record so
        that salvaging again skips it. Returns the last seq given out."""
        if len(origins) != len(drafts):
            raise ValueError(f"{len(drafts)} drafts but {len(origins)} origins")
        return self._enqueue(drafts, origins)

    def _enqueue(
        self, drafts: Sequence[RecordDraft], origins: Sequence[tuple[str, int]] | None
    ) -> int:
        if self._thread is None:
            raise BufferError_("buffer is not running")
        if self.failure is not None:
            raise BufferError_(f"buffer failed: {self.failure}")
        dropped = 0
        urgent = any(d.kind not in TELEMETRY for d in drafts)
        with self._lock:
            seq = self._next_seq
            reason = self._refuse
            # The writer needs waking only for the first record or a trace record: telemetry
            # joining a waiting batch is picked up when the linger ends.
            wake = urgent or not self._pending
            if not self._pending:
                self._pending_since = time.monotonic()
            self._urgent = self._urgent or urgent
            if reason is None and origins is None:  # the hot path: every record, a seq each
                self._pending.extend(zip(range(seq, seq + len(drafts)), drafts, strict=True))
                seq += len(drafts)
            else:
                for i, d in enumerate(drafts):
                    if reason is not None and d.kind in TELEMETRY:
                        dropped += 1
                        continue
                    self._pending.append((seq, d))
                    if origins is not None:
                        # Registered under the lock, before the writer can take this seq.
                        self._salvage_keys[seq] = origins[i]
                    seq += 1
            self._next_seq = seq
            self.appended += len(drafts) - dropped
            if wake:
                self._wake.notify()
        if dropped and reason is not None:
            self._count_dropped(dropped, reason)
        return seq - 1

    def _count_dropped(self, n: int, reason: str) -> None:
        self.dropped_readings += n
        now = time.monotonic()
        if now - self._dropped_log_at >= REPORT_EVERY:
            log.warning(
                "refusing new readings (%s): %d dropped so far, %d since the last report; "
                "trace records are still taken",
                reason,
                self.dropped_readings,
                self.dropped_readings - self._dropped_logged,
            )
            self._dropped_log_at = now
            self._dropped_logged = self.dropped_readings

    @property
    def last_assigned_seq(self) -> int:
        return self._next_seq - 1

    async def flush(self) -> int:
        """Wait until every record appended before this call is committed (or, for a
        reading, given up for room). While the journal is full this waits: that is what
        holds a PLC handshake until its part record is safe."""
        target = self._next_seq - 1
        if self.committed_seq >= target:
            return self.committed_seq
        if self.failure is not None:
            raise BufferError_(f"buffer failed: {self.failure}")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append((target, fut))
        with self._lock:  # somebody waits: no lingering
            self._urgent = True
            self._wake.notify()
        return await fut

    async def read_batch(
        self,
        after_seq: int,
        max_records: int,
        max_bytes: int = 1 << 62,
        until_seq: int | None = None,
    ) -> list[StoredRecord]:
        """Committed records with ``after_seq < seq <= until_seq`` (no upper bound if
        ``None``), in seq order, bounded by count and bytes.

        Always returns at least one record if any is waiting, even if it alone passes
        ``max_bytes``, so an oversized record cannot wedge the queue.
        """
        if until_seq is None:
            sql = "SELECT seq, station, kind, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?"
            args: tuple[int, ...] = (after_seq, max_records)
        else:
            sql = (
                "SELECT seq, station, kind, body FROM records WHERE seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?"
            )
            args = (after_seq, until_seq, max_records)

        def job(db: sqlite3.Connection) -> list[StoredRecord]:
            out: list[StoredRecord] = []
            size = 0
            for seq, station, kind, body in db.execute(sql, args):
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
            n = rows = size = 0
            with _room_to_delete(), db:
                if len(ranges) <= 8:
                    for lo, hi in ranges:
                        r, b = self._telemetry_in(db, "seq BETWEEN ? AND ?", (lo, hi))
                        rows += r
                        size += b
                        n += db.execute(
                            "DELETE FROM records WHERE seq BETWEEN ? AND ?", (lo, hi)
                        ).rowcount
                else:
                    # Interleaved stations make one range per seq: two statements for the
                    # whole set instead of two per seq.
                    arg = (json.dumps(list(seqs)),)
                    subset = "seq IN (SELECT value FROM json_each(?))"
                    rows, size = self._telemetry_in(db, subset, arg)
                    n = db.execute(f"DELETE FROM records WHERE {subset}", arg).rowcount
            self._deleted_rows(n, rows, size)
            return n

        return await self._submit(job)

    async def delete_through(self, seq: int) -> int:
        """Drop every record with seq <= ``seq`` (a confirmed watermark); returns how many."""

        def job(db: sqlite3.Connection) -> int:
            with _room_to_delete(), db:
                rows, size = self._telemetry_in(db, "seq <= ?", (seq,))
                n = db.execute("DELETE FROM records WHERE seq <= ?", (seq,)).rowcount
            self._deleted_rows(n, rows, size)
            return n

        return await self._submit(job)

    def _telemetry_in(
        self, db: sqlite3.Connection, where: str, args: tuple[Any, ...]
    ) -> tuple[int, int]:
        """Telemetry rows and bytes about to be deleted, to keep the running totals exact:
        one more walk of the same pages (measured ~10% of a delete), skipped when there is
        no telemetry at all."""
        if self.telemetry_rows == 0:
            return 0, 0
        rows, size = db.execute(
            f"SELECT count(*), total(size) FROM records WHERE {TELEMETRY_SQL} AND {where}", args
        ).fetchone()
        return int(rows), int(size)

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

    async def probe(self) -> None:
        """A no-op round trip through the journal's thread: it returns once the thread is back
        at its queue, so an unanswered probe means the thread is stuck (in a commit, an fsync).
        The service watchdog asks; nothing the thread exposes moves while the line is idle."""
        await self._submit(lambda db: None)

    async def maintain(self) -> dict[str, Any]:
        """Run the periodic checks now (disk space, telemetry age, WAL checkpoint, eviction
        report) instead of at the next ``check_interval``; returns ``stats()`` after them."""

        def job(db: sqlite3.Connection) -> None:
            self._next_check = 0.0
            self._maintain(db)

        await self._submit(job)
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """Gauges and counters of the journal, for status and metrics."""
        return {
            "path": str(self.path),
            "depth": self.depth,
            "committed_seq": self.committed_seq,
            "appended": self.appended,
            "committed_total": self.committed_total,
            "queued": len(self._pending),
            "telemetry_rows": self.telemetry_rows,
            "telemetry_bytes": self.telemetry_bytes,
            "evicted_rows": self.evicted_rows,
            "evicted_bytes": self.evicted_bytes,
            "evicted_first_seq": self.evicted_first_seq,
            "evicted_last_seq": self.evicted_last_seq,
            "dropped_readings": self.dropped_readings,
            "full": self._full,
            "disk_state": self._disk_state,
            "disk_free_bytes": self.disk_free,
        }

    async def salvaged_seqs(self, journal: str) -> set[int]:
        """Original seqs already copied in from the damaged file named ``journal``."""

        def job(db: sqlite3.Connection) -> set[int]:
            rows = db.execute("SELECT seq FROM salvaged WHERE journal = ?", (journal,))
            return {int(r[0]) for r in rows}

        return await self._submit(job)

    async def mark_salvaged(self, damaged: Path) -> None:
        """Record that ``damaged`` has been salvaged: its alarm is not raised again."""
        now = _utc_now()

        def job(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "INSERT INTO damaged (name, path, found_at, reason, last_seq, seq_floor, "
                    "salvaged_at) VALUES (?, ?, ?, 'salvaged', 0, 0, ?) "
                    "ON CONFLICT(name) DO UPDATE SET salvaged_at = excluded.salvaged_at",
                    (damaged.name, str(damaged), now, now),
                )

        await self._submit(job)

    # ---- the owning thread -----------------------------------------------------------

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise BufferError_("buffer is not running")
        if self.failure is not None:
            raise BufferError_(f"buffer failed: {self.failure}")
        fut: Future[T] = Future()
        with self._lock:
            self._jobs.append((fn, fut))
            self._wake.notify()
        return await asyncio.wrap_future(fut)

    def _run(self, opened: Future[_Opened]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._journal_lock.acquire()
        except Exception as exc:
            if not isinstance(exc, BufferError_):
                exc = BufferError_(f"cannot open buffer {self.path}: {exc}")
            opened.set_exception(exc)
            return
        try:
            db, info = self._open()
        except Exception as exc:  # reported to start(), which raises it in the loop
            self._journal_lock.release()
            if not isinstance(exc, BufferError_):
                exc = BufferError_(f"cannot open buffer {self.path}: {exc}")
            opened.set_exception(exc)
            return
        opened.set_result(info)
        try:
            self._serve(db)
        except Exception as exc:
            log.exception("buffer thread failed")
            self.failure = exc
            self._notify(functools.partial(self._fail_waiters, exc))
            with self._lock:
                jobs = list(self._jobs)
                self._jobs.clear()
            for _, fut in jobs:
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(BufferError_(f"buffer failed: {exc}"))
        finally:
            db.close()
            self._journal_lock.release()

    def _serve(self, db: sqlite3.Connection) -> None:
        while True:
            with self._lock:
                while not self._has_work():
                    self._wake.wait(self._idle_timeout())
                batch = self._take()
                jobs = list(self._jobs)
                self._jobs.clear()
                closing = self._closing
            if batch:
                self._commit_batch(db, batch, closing)
            for fn, fut in jobs:
                # The awaiting task may have been cancelled; then its job is dropped
                # (never half-run, and the thread must not die on a cancelled future).
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(fn(db))
                except Exception as exc:
                    fut.set_exception(exc)
            self._maintain(db)
            if closing:
                with self._lock:
                    if not self._pending and not self._jobs:
                        break

    def _has_work(self) -> bool:
        """Lock held. Anything to do now?"""
        if self._closing or self._jobs or self._more:
            return True
        now = time.monotonic()
        if now >= self._next_check:
            return True
        if not self._pending:
            return False
        if self._full:
            return now >= self._retry_at
        return self._urgent or now >= self._pending_since + TELEMETRY_LINGER

    def _idle_timeout(self) -> float:
        """Lock held. How long the thread may sleep before a check, a retry or the end of a
        linger is due."""
        due = self._next_check
        if self._full and self._pending:
            due = min(due, self._retry_at)
        elif self._pending:
            due = min(due, self._pending_since + TELEMETRY_LINGER)
        return max(0.0, due - time.monotonic())

    def _take(self) -> list[tuple[int, RecordDraft]]:
        """Lock held. The next batch to commit (none while full and the retry is not due)."""
        if not self._pending:
            return []
        if self._full and not self._closing and time.monotonic() < self._retry_at:
            return []
        n = min(len(self._pending), self._batch_limit)
        batch = [self._pending.popleft() for _ in range(n)]
        if not self._pending:
            self._urgent = False
        # Records left over (a batch limit) are past their linger: the next round takes them.
        return batch

    def _requeue(self, items: list[tuple[int, RecordDraft]]) -> None:
        with self._lock:
            self._pending.extendleft(reversed(items))

    def _settled_seq(self) -> int:
        """Every seq up to this is committed or (a reading) given up: what flush waits for."""
        with self._lock:
            return self._pending[0][0] - 1 if self._pending else self._next_seq - 1

    # ---- opening ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)

    def _open(self) -> tuple[sqlite3.Connection, _Opened]:
        replaced: tuple[str, files.MovedJournal, int, int] | None = None
        db = self._connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")
            damage = files.check(db)
        except sqlite3.DatabaseError as exc:
            if not files.is_damage(exc):
                db.close()
                raise
            damage = str(exc)
        if damage is not None:
            db.close()
            replaced = (damage, *self._replace_damaged(damage))
            db = self._connect()
            db.execute("PRAGMA journal_mode=WAL")
        try:
            return db, self._prepare(db, replaced)
        except BaseException:
            db.close()
            raise

    def _replace_damaged(self, damage: str) -> tuple[files.MovedJournal, int, int]:
        """Set the damaged journal aside; returns where it went, its last readable seq and
        the first seq of the new journal."""
        last = files.last_readable_seq(self.path)
        moved = files.move_aside(self.path)
        # A receiver keeps records by (agent, seq) and drops a second record with a key it
        # already holds as a duplicate. The new journal must therefore never hand out a seq
        # the old one might have published, including seqs on pages we can no longer read.
        # The last readable seq is a lower bound of those; the clock in microseconds is an
        # upper bound as long as seqs were handed out slower than a million per second since
        # the journal began (at 1, or at an earlier such floor). The max survives a clock
        # that jumped back.
        floor = max(last + 1, time.time_ns() // 1000)
        log.critical(
            "journal %s is damaged (%s): moved to %s; a new journal starts at seq %d",
            self.path,
            damage,
            moved.path,
            floor,
        )
        return moved, last, floor

    def _prepare(
        self, db: sqlite3.Connection, replaced: tuple[str, files.MovedJournal, int, int] | None
    ) -> _Opened:
        # FULL: a commit survives a power cut, which is what lets a PLC handshake or a
        # scanner beep follow it. NORMAL trades that for speed (survives process crashes).
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        db.isolation_level = "DEFERRED"  # implicit transactions again, managed with `with db:`
        db.executescript(SCHEMA)
        self._migrate(db)
        self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        if self.max_bytes is not None:
            # Not persistent: set on every open. SQLite never sets it below the current size.
            db.execute(f"PRAGMA max_page_count={max(1, self.max_bytes // self._page_size)}")
        if replaced is not None:
            damage, moved, last, floor = replaced
            with db:
                _set_meta(db, "last_seq", floor - 1)
                _set_meta(db, "seq_floor", floor)
                db.execute(
                    "INSERT OR REPLACE INTO damaged (name, path, found_at, reason, last_seq, "
                    "seq_floor) VALUES (?, ?, ?, ?, ?, ?)",
                    (moved.path.name, str(moved.path), _utc_now(), damage, last, floor),
                )
        row = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        max_row = db.execute("SELECT max(seq), count(*) FROM records").fetchone()
        last_seq = max(int(row[0]) if row else 0, int(max_row[0] or 0))
        rows, size = db.execute(
            f"SELECT count(*), total(size) FROM records WHERE {TELEMETRY_SQL}"
        ).fetchone()
        self.telemetry_rows, self.telemetry_bytes = int(rows), int(size)
        self._tele_floor = 0
        self._max_written = last_seq
        return _Opened(last_seq, int(max_row[1]), self._damaged_alarms(db))

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Journals from before retention classes lack ``at`` and ``size``."""
        columns = {r[1] for r in db.execute("PRAGMA table_info(records)")}
        if {"at", "size"} <= columns:
            return
        with db:
            if "at" not in columns:
                # A constant default costs nothing on existing rows (no rewrite); they count
                # as committed now, so none is evicted for age on the upgrade.
                now = int(self._clock())
                db.execute(f"ALTER TABLE records ADD COLUMN at INTEGER NOT NULL DEFAULT {now}")
            if "size" not in columns:
                db.execute("ALTER TABLE records ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
                n = db.execute("UPDATE records SET size = length(body)").rowcount
                log.info("journal %s: migrated %d rows (commit time, size columns)", self.path, n)

    def _damaged_alarms(self, db: sqlite3.Connection) -> list[tuple[str, str]]:
        """One ``buffer_damaged`` alarm for every set-aside journal not salvaged yet (and still
        there): it is raised at every start until someone has dealt with the file."""
        found = []
        for path, found_at, reason, floor in db.execute(
            "SELECT path, found_at, reason, seq_floor FROM damaged "
            "WHERE salvaged_at IS NULL ORDER BY found_at"
        ):
            if not Path(path).exists():
                continue
            config = self.config_path if self.config_path is not None else "<config>"
            found.append(
                f"journal damaged ({reason}), found {found_at}; moved aside to {path}, never "
                f"deleted. A new journal started at seq {floor}. Stop the agent and recover "
                f"its records with: edge-agent buffer salvage -c {config} {path}"
            )
        return [("buffer_damaged", " | ".join(found))] if found else []

    # ---- committing --------------------------------------------------------------------

    def _commit_batch(
        self, db: sqlite3.Connection, batch: list[tuple[int, RecordDraft]], closing: bool
    ) -> None:
        while batch:
            try:
                self._write(db, batch)
            except sqlite3.OperationalError as exc:
                if not files.is_full(exc):
                    raise
                # ``with db`` rolled the transaction back: nothing of it is in the file.
                batch = self._make_room(db, batch, exc, closing)
                continue
            return

    def _write(self, db: sqlite3.Connection, batch: list[tuple[int, RecordDraft]]) -> None:
        # Serialising here keeps JSON encoding off the event loop. ``default=dict`` renders the
        # binder's read-only context mappings. The bodies are ASCII (json.dumps escapes the
        # rest), so ``len`` is their size in bytes.
        at = int(self._clock())
        rows = []
        states: dict[str, dict[str, Any]] = {}
        parts: list[tuple[str, str, int]] = []
        salvaged: list[tuple[str, int, int]] = []
        tele_rows = tele_bytes = 0
        for seq, d in batch:
            body = json.dumps({"seq": seq, **d.body}, separators=(",", ":"), default=dict)
            size = len(body)
            rows.append((seq, d.station, d.kind.value, body, at, size))
            if d.kind in TELEMETRY:
                tele_rows += 1
                tele_bytes += size
            elif d.kind is RecordKind.PART and isinstance(d.body.get("serial"), str):
                parts.append((d.station, d.body["serial"], seq))
            if d.state is not None:
                states[d.station] = d.state
        if self._salvage_keys:
            # Appended under the lock before this batch was taken: no race on these seqs.
            with self._lock:
                keys = self._salvage_keys
                salvaged = [(*keys[s], s) for s, _ in batch if s in keys]
        last = max(batch[-1][0], self._dropped_max)
        with db:
            db.executemany(
                "INSERT INTO records (seq, station, kind, body, at, size) VALUES (?,?,?,?,?,?)",
                rows,
            )
            _set_meta(db, "last_seq", last)
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
                if self._parts_since_prune + len(parts) >= PRUNE_EVERY:
                    _prune_part_serials(db, self.max_serials)
            if salvaged:
                db.executemany(
                    "INSERT OR IGNORE INTO salvaged (journal, seq, new_seq) VALUES (?, ?, ?)",
                    salvaged,
                )
        # Only now that it is in the file.
        self._max_written = max(self._max_written, batch[-1][0])
        if salvaged:
            with self._lock:
                for _, _, seq in salvaged:
                    self._salvage_keys.pop(seq, None)
        self._parts_since_prune = (self._parts_since_prune + len(parts)) % PRUNE_EVERY
        self.telemetry_rows += tele_rows
        self.telemetry_bytes += tele_bytes
        n = len(rows)
        if self._batch_limit < self.max_batch:
            # After a full journal: grow back as commits fit again, like a congestion window.
            self._batch_limit = min(self.max_batch, self._batch_limit * 2)
        if self._full:
            self._retry_at = 0.0
            with self._lock:
                room = not self._pending
            if room:
                self._leave_full()
        self._notify(functools.partial(self._committed, self._settled_seq(), n))

    def _make_room(
        self,
        db: sqlite3.Connection,
        batch: list[tuple[int, RecordDraft]],
        exc: sqlite3.Error,
        closing: bool,
    ) -> list[tuple[int, RecordDraft]]:
        """The journal has no room for ``batch``: free some, or hold. Returns what to try to
        commit at once (empty: nothing now). Each step ends: evictions are finite, the batch
        only shrinks."""
        if self.telemetry_rows > 0 and self._evict_oldest(
            db, rows=max(EVICT_CHUNK, 2 * len(batch)), reason="journal full"
        ):
            return batch
        # No telemetry could be evicted from the file (none left, or the disk is so full that
        # even a delete fails): the queued readings go instead, counted the same way.
        trace = [item for item in batch if item[1].kind not in TELEMETRY]
        if len(trace) < len(batch):
            self._drop_queued([item for item in batch if item[1].kind in TELEMETRY])
            self._notify(functools.partial(self._committed, self._settled_seq(), 0))
            return trace
        if len(batch) > 1:
            # Part of it may fit: commit what does, in order, rather than nothing.
            half = len(batch) // 2
            self._batch_limit = half
            self._requeue(batch[half:])
            return batch[:half]
        self._requeue(batch)
        if closing:
            self._abandon(exc)
        else:
            self._hold(exc)
        return []

    def _hold(self, exc: sqlite3.Error) -> None:
        """Not one more trace record fits: keep them in memory, refuse readings, retry."""
        self._retry_at = time.monotonic() + FULL_RETRY
        if self._full:
            return
        self._full = True
        self._update_refusal()
        with self._lock:
            queued = [item for item in self._pending if item[1].kind in TELEMETRY]
            if queued:
                self._pending = deque(i for i in self._pending if i[1].kind not in TELEMETRY)
            waiting = len(self._pending)
        if queued:
            self._drop_queued(queued)
            self._notify(functools.partial(self._committed, self._settled_seq(), 0))
        self._alarm(
            "buffer_full",
            f"journal {self.path} is full ({exc}) and evicting telemetry made no room: "
            f"{waiting} trace record(s) wait in memory, uncommitted and unacknowledged (a PLC "
            "handshake holds its part); new readings are refused. Free disk space (or raise "
            "buffer.max_bytes); delivery to the broker frees room too. Retrying every "
            f"{FULL_RETRY:g} s.",
            logging.CRITICAL,
        )

    def _leave_full(self) -> None:
        self._full = False
        self._batch_limit = self.max_batch
        self._update_refusal()
        self._clear_alarm("buffer_full", "the journal has room again; every queued record is in")

    def _abandon(self, exc: sqlite3.Error) -> None:
        """Stopping with a full journal: what is still in memory cannot be kept. It was never
        acknowledged (flush never returned for it), so this is what a kill at this instant
        would have lost, and no more; stopping must not hang on a full disk."""
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
        trace = [seq for seq, d in items if d.kind not in TELEMETRY]
        message = (
            f"journal {self.path} full at shutdown ({exc}): {len(trace)} trace record(s) "
            f"(seqs {trace[0] if trace else '-'}..{trace[-1] if trace else '-'}) and "
            f"{len(items) - len(trace)} reading(s) were never committed nor acknowledged"
        )
        log.critical(message)
        failure = BufferError_(message)
        self.failure = failure
        self._notify(functools.partial(self._fail_waiters, failure))

    def _drop_queued(self, items: list[tuple[int, RecordDraft]]) -> None:
        """Readings that had a seq but never reached the file: evicted, counted like any."""
        if not items:
            return
        nbytes = sum(
            len(json.dumps({"seq": s, **d.body}, separators=(",", ":"), default=dict))
            for s, d in items
        )
        self._dropped_max = max(self._dropped_max, items[-1][0])
        if self._salvage_keys:
            with self._lock:  # not copied after all: a later salvage run tries again
                for seq, _ in items:
                    self._salvage_keys.pop(seq, None)
        self._count_eviction(len(items), nbytes, items[0][0], items[-1][0], "journal full")

    # ---- eviction and maintenance ------------------------------------------------------

    def _maintain(self, db: sqlite3.Connection) -> None:
        now = time.monotonic()
        periodic = now >= self._next_check
        if periodic:
            self._next_check = now + self.disk.check_interval
            self._check_disk()
            self._check_wal(db)
            self._age_pending = True
        more = self._enforce_bounds(db)
        if self._age_pending:
            self._age_pending = self._enforce_age(db)
        if self._disk_state == "critical":
            more = self._keep_reserve(db) or more
        self._more = more or self._age_pending
        self._report_evictions(now)

    def _evict_oldest(
        self,
        db: sqlite3.Connection,
        *,
        rows: int = 0,
        nbytes: int = 0,
        before: int | None = None,
        reason: str,
    ) -> int:
        """Delete the oldest telemetry rows: at least ``rows`` of them and ``nbytes`` of body,
        and every one committed before ``before`` (unix s); at most ``max(rows, EVICT_CHUNK)``
        per call. Returns how many went (0 if none could, e.g. the delete itself hit a full
        disk)."""
        limit = max(rows, EVICT_CHUNK)
        oldest = db.execute(
            f"SELECT seq, size, at FROM records WHERE seq > ? AND {TELEMETRY_SQL} "
            "ORDER BY seq LIMIT ?",
            (self._tele_floor, limit),
        ).fetchall()
        if not oldest:
            self._tele_floor = self._max_written
            return 0
        size = n = 0
        for _, sz, at in oldest:
            if n >= rows and size >= nbytes and (before is None or at >= before):
                break
            n += 1
            size += sz
        if not n:
            self._tele_floor = oldest[0][0] - 1
            return 0
        lo, hi = oldest[0][0], oldest[n - 1][0]
        try:
            with db:
                # Every reading in (floor, hi] is in the selection: they are the oldest.
                deleted = db.execute(
                    f"DELETE FROM records WHERE seq BETWEEN ? AND ? AND {TELEMETRY_SQL}",
                    (lo, hi),
                ).rowcount
        except sqlite3.OperationalError as exc:
            if not files.is_full(exc):
                raise
            # A delete needs room in the WAL too; on a disk that is full to the last byte it
            # fails like any write. Retried with the held commit; logged once a period.
            now = time.monotonic()
            if now - self._evict_failed_at >= REPORT_EVERY:
                self._evict_failed_at = now
                log.error("cannot evict telemetry to make room: %s", exc)
            return 0
        self._tele_floor = hi
        self.telemetry_rows -= deleted
        self.telemetry_bytes -= size
        self._count_eviction(deleted, size, lo, hi, reason)
        self._notify(functools.partial(self._removed, deleted))
        return deleted

    def _count_eviction(self, rows: int, nbytes: int, lo: int, hi: int, reason: str) -> None:
        self.evicted_rows += rows
        self.evicted_bytes += nbytes
        first, last = self.evicted_first_seq, self.evicted_last_seq
        self.evicted_first_seq = lo if first is None else min(first, lo)
        self.evicted_last_seq = hi if last is None else max(last, hi)
        self._report.add(rows, nbytes, lo, hi, reason)
        self._last_evict_at = time.monotonic()

    def _enforce_bounds(self, db: sqlite3.Connection) -> bool:
        """Rows and bytes: checked after every commit against the running totals (no query
        unless over). Once over, evict down to 1% under the bound. Returns: more to do."""
        b = self.telemetry
        rows_over = bytes_over = 0
        if b.max_rows is not None:
            low = b.max_rows - b.max_rows // 100
            if self.telemetry_rows > b.max_rows or (
                self._draining_bounds and self.telemetry_rows > low
            ):
                rows_over = self.telemetry_rows - low
        if b.max_bytes is not None:
            low = b.max_bytes - b.max_bytes // 100
            if self.telemetry_bytes > b.max_bytes or (
                self._draining_bounds and self.telemetry_bytes > low
            ):
                bytes_over = self.telemetry_bytes - low
        if not rows_over and not bytes_over:
            self._draining_bounds = False
            return False
        reason = "telemetry max_rows" if rows_over else "telemetry max_bytes"
        n = self._evict_oldest(
            db, rows=min(rows_over, EVICT_CHUNK), nbytes=bytes_over, reason=reason
        )
        self._draining_bounds = n > 0
        return n > 0 and (rows_over > n or n >= EVICT_CHUNK)

    def _enforce_age(self, db: sqlite3.Connection) -> bool:
        """Telemetry older than ``max_age``: one chunk per call. Returns: more to do."""
        if self.telemetry.max_age is None or self.telemetry_rows == 0:
            return False
        before = int(self._clock() - self.telemetry.max_age)
        row = db.execute(
            f"SELECT seq, at FROM records WHERE seq > ? AND {TELEMETRY_SQL} ORDER BY seq LIMIT 1",
            (self._tele_floor,),
        ).fetchone()
        if row is None:
            self._tele_floor = self._max_written
            return False
        self._tele_floor = row[0] - 1
        if row[1] >= before:
            return False
        return self._evict_oldest(db, before=before, reason="telemetry max_age") >= EVICT_CHUNK

    def _keep_reserve(self, db: sqlite3.Connection) -> bool:
        """Disk critical: evict telemetry until the file holds ``critical_free_bytes`` of free
        pages. SQLite reuses them before it grows the file, so that much trace data still fits
        whatever else fills the disk. Returns: more to do."""
        if self.telemetry_rows == 0:
            return False
        free_pages = int(db.execute("PRAGMA freelist_count").fetchone()[0])
        want = self.disk.critical_free_bytes - free_pages * self._page_size
        if want <= 0:
            return False
        # Freed body bytes free fewer whole pages (trace rows stay on shared pages): one
        # chunk per round, then measure again.
        return self._evict_oldest(db, nbytes=want, reason="disk critical") > 0

    def _check_disk(self) -> None:
        try:
            free = int(self._disk_usage(str(self.path.parent)).free)
        except OSError as exc:
            log.warning("cannot read free space of %s: %s", self.path.parent, exc)
            return
        self.disk_free = free
        warn, crit = self.disk.warn_free_bytes, self.disk.critical_free_bytes
        old = self._disk_state
        # Leaving a state needs 5% more than entering it, so a disk hovering at a watermark
        # does not flap the alarm.
        new: DiskState
        if free < crit or (old == "critical" and free < crit + crit // 20):
            new = "critical"
        elif free < warn or (old != "ok" and free < warn + warn // 20):
            new = "low"
        else:
            new = "ok"
        if new == old:
            return
        self._disk_state = new
        where = f"{self.path.parent}: {_size(free)} free"
        if new == "critical":
            self._alarm(
                "disk_critical",
                f"{where}, below the critical watermark ({_size(crit)}): new readings are "
                f"refused and telemetry is evicted to keep {_size(crit)} for trace records. "
                "Free disk space now.",
                logging.CRITICAL,
            )
        elif old == "critical":
            self._clear_alarm("disk_critical", f"{where}; readings are taken again")
        if new == "ok":
            self._clear_alarm("disk_low", where)
        elif old == "ok":
            self._alarm(
                "disk_low",
                f"{where}, below the warning watermark ({_size(warn)}). Trace records are safe; "
                f"below {_size(crit)} telemetry gives way. Free disk space.",
                logging.ERROR,
            )
        self._update_refusal()

    def _check_wal(self, db: sqlite3.Connection) -> None:
        """Checkpoint now and see that it works. SQLite's automatic checkpoints fail silently
        (on a full disk, say): the records are safe in the WAL, but it keeps growing."""
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.OperationalError as exc:
            self._alarm(
                "checkpoint_failed",
                f"journal {self.path}: the write-ahead log cannot be copied into the journal "
                f"({exc}). Every commit is safe in {self.path.name}-wal, which grows until this "
                "clears; free disk space.",
                logging.ERROR,
            )
            return
        self._clear_alarm("checkpoint_failed", "the write-ahead log is checkpointed again")

    def _report_evictions(self, now: float) -> None:
        r = self._report
        if r.rows and now - self._report_at >= REPORT_EVERY:
            reasons = ", ".join(sorted(r.reasons))
            log.warning(
                "evicted %d telemetry record(s) (%d bytes, seqs %s..%s) for %s; trace records "
                "are kept",
                r.rows,
                r.bytes,
                r.first,
                r.last,
                reasons,
            )
            self._alarm(
                "telemetry_evicted",
                f"oldest telemetry is being evicted ({reasons}): {self.evicted_rows} record(s), "
                f"{_size(self.evicted_bytes)}, seqs {self.evicted_first_seq}.."
                f"{self.evicted_last_seq} since the agent started. Trace records are kept; "
                "the broker or the trace store may be unreachable for a long time.",
                logging.WARNING,
            )
            self._report = _Evictions()
            self._report_at = now
        elif (
            "telemetry_evicted" in self._raised
            and now - self._last_evict_at >= self.telemetry_alarm_quiet
        ):
            self._clear_alarm("telemetry_evicted", "no eviction for a while")

    def _update_refusal(self) -> None:
        reason = None
        if self._full:
            reason = "journal full"
        elif self._disk_state == "critical":
            reason = "disk space critical"
        with self._lock:
            self._refuse = reason

    def _deleted_rows(self, n: int, tele_rows: int, tele_bytes: int) -> None:
        """In the thread, after a delivered-rows delete committed."""
        self.telemetry_rows -= tele_rows
        self.telemetry_bytes -= tele_bytes
        if self._full and n:
            self._retry_at = 0.0  # freed pages: try the held records now
        self._notify(functools.partial(self._removed, n))

    def _alarm(self, code: str, message: str, level: int) -> None:
        self._raised.add(code)
        self._notify(functools.partial(self._raise_alarm, code, message, level))

    def _clear_alarm(self, code: str, message: str) -> None:
        if code in self._raised:
            self._raised.discard(code)
            self._notify(functools.partial(self._drop_alarm, code, message))

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

    def _committed(self, settled: int, n: int) -> None:
        self.committed_seq = max(self.committed_seq, settled)
        self.depth += n
        self.committed_total += n
        if n:
            self.new_data.set()
        if self._on_commit_cb is not None:
            self._on_commit_cb(self.committed_seq)
        still = []
        for target, fut in self._flush_waiters:
            if target <= self.committed_seq:
                if not fut.done():
                    fut.set_result(self.committed_seq)
            else:
                still.append((target, fut))
        self._flush_waiters = still

    def _removed(self, n: int) -> None:
        self.depth -= n
        if self.depth <= 0:
            waiters, self._empty_waiters = self._empty_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _raise_alarm(self, code: str, message: str, level: int) -> None:
        if self.alarms is not None:
            self.alarms.raise_(code, message, level=level)
        else:
            log.log(level, "ALARM %s: %s", code, message)

    def _drop_alarm(self, code: str, message: str) -> None:
        if self.alarms is not None:
            self.alarms.clear(code, message)
        else:
            log.warning("alarm %s cleared: %s", code, message)

    def _fail_waiters(self, exc: BaseException) -> None:
        for _, fut in self._flush_waiters:
            if not fut.done():
                fut.set_exception(BufferError_(f"buffer failed: {exc}"))
        self._flush_waiters = []


PRUNE_EVERY = 10_000
"""Part records between two prunings of ``part_serials`` (kept to ``max_serials`` per station)."""


@contextlib.contextmanager
def _room_to_delete() -> Iterator[None]:
    """A delete on a disk full to the last byte fails too (it needs room in the WAL): the rows
    stay, nothing is lost, and the caller (sync) gets our error type and tries again later."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if files.is_full(exc):
            raise BufferError_(f"cannot delete now, the disk is full: {exc}") from exc
        raise


def _set_meta(db: sqlite3.Connection, key: str, value: int | str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        (key, str(value)),
    )


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


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
