"""The local durable journal: SQLite in WAL mode, owned by one thread.

Every record is committed here before anything acknowledges it, and leaves only once sync
reports it delivered, or (continuous telemetry only) when storage runs short. One worker
thread owns the connection, so the event loop never waits on a commit (invariant 7) and there
is no question of who may touch the database.

``SqliteBuffer`` is the loop's side: a thin async facade that implements ``Journal``
(``buffer/journal.py``). The rest of the journal is split by job (see ``buffer/__init__``),
and what the thread owns lives in the thread's objects (``writer.JournalThread`` and its
parts); the only state that crosses is in ``buffer/handoff.py``.

Two retention classes (invariant 4): telemetry (``readings``) is bounded by rows, bytes
and age and gives way, oldest first, counted and reported; everything else is trace data and
leaves only by delivery (docs/buffer.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from buffer import blocked, identity, state
from buffer.disk import DiskState, DiskWatch
from buffer.handoff import Inbox, Outbox
from buffer.journal import JournalIdentity, StoredRecord
from buffer.policy import DiskUsage, DiskWatermarks, TelemetryBounds
from buffer.retention import EVICT_CHUNK, REPORT_EVERY, Retention
from buffer.schema import JOURNAL_SIZE_LIMIT, SCHEMA, Synchronous, utc_now
from buffer.seqs import Opened, select_salvaged, set_salvaged
from buffer.state import PRUNE_EVERY, StationBook
from buffer.writer import FULL_RETRY, TELEMETRY_LINGER, JournalThread
from kernel.errors import BufferError_
from kernel.model import RecordDraft

if TYPE_CHECKING:
    from buffer.config import BufferConfig
    from kernel.alarms import Alarms

# The journal's constants and types stay importable from here, where code, tests and docs
# found them before the journal was split by job.
__all__ = [
    "EVICT_CHUNK",
    "FULL_RETRY",
    "JOURNAL_SIZE_LIMIT",
    "PRUNE_EVERY",
    "REPORT_EVERY",
    "SCHEMA",
    "TELEMETRY_LINGER",
    "DiskState",
    "SqliteBuffer",
    "StoredRecord",
    "Synchronous",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class SqliteBuffer:
    """Durable, ordered journal of records with forever-increasing sequence numbers.

    ``seq`` is strictly increasing per agent across restarts: the highest seq ever committed
    is kept in ``meta`` in the same transaction as the rows, so deleting delivered rows never
    lets a number come back; a journal replaced after damage starts above anything the old one
    could have used (``buffer/seqs.py``).

    Owned by the event loop: ``committed_seq``, ``depth``, ``committed_total``, ``new_data``,
    ``dropped_readings`` and the waiters, changed only here or by calls the thread posts
    (``_committed``, ``_removed``, ...). The thread's counters (``telemetry_rows``,
    ``telemetry_bytes``, ``evicted_*``, ``disk_free``) are read-only views of its objects.
    The construction parameters are fixed: the thread's objects take them when they are made.
    Jobs submitted to the thread either touch only the connection (closures here) or are
    methods of ``JournalThread``.
    """

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
        path = Path(path)
        self.alarms = alarms
        self._on_commit_cb = on_commit
        self._inbox = Inbox()
        outbox = Outbox(
            committed=self._committed,
            removed=self._removed,
            failed=self._fail_waiters,
            raise_alarm=self._raise_alarm,
            drop_alarm=self._drop_alarm,
        )
        self._writer = JournalThread(
            path,
            synchronous=synchronous,
            max_batch=max_batch,
            max_bytes=max_bytes,
            config_path=config_path,
            clock=clock,
            inbox=self._inbox,
            outbox=outbox,
            retention=Retention(
                telemetry, reserve_bytes=disk.critical_free_bytes, clock=clock, outbox=outbox
            ),
            disk=DiskWatch(path, disk, disk_usage, outbox),
            stations=StationBook(max_serials),
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # ---- owned by the event loop ----
        self._identity: JournalIdentity | None = None
        self.committed_seq = 0
        self.depth = 0  # rows waiting for delivery (committed)
        self.committed_total = 0
        self.new_data = asyncio.Event()
        self._flush_waiters: list[tuple[int, asyncio.Future[int]]] = []
        self._empty_waiters: list[asyncio.Future[None]] = []
        self.dropped_readings = 0
        self._dropped_logged = 0
        self._dropped_log_at = float("-inf")

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

    # ---- what it was made with (fixed) ---------------------------------------------

    @property
    def path(self) -> Path:
        return self._writer.path

    @property
    def synchronous(self) -> Synchronous:
        return self._writer.synchronous

    @property
    def max_batch(self) -> int:
        return self._writer.max_batch

    @property
    def max_serials(self) -> int:
        return self._writer.stations.max_serials

    @property
    def max_bytes(self) -> int | None:
        return self._writer.max_bytes

    @property
    def config_path(self) -> str | Path | None:
        return self._writer.config_path

    @property
    def telemetry(self) -> TelemetryBounds:
        return self._writer.retention.bounds

    @property
    def disk(self) -> DiskWatermarks:
        return self._writer.disk.marks

    @property
    def telemetry_alarm_quiet(self) -> float:
        """Seconds without an eviction before the ``telemetry_evicted`` alarm clears."""
        return self._writer.retention.alarm_quiet

    @telemetry_alarm_quiet.setter
    def telemetry_alarm_quiet(self, seconds: float) -> None:
        # A plain float the thread reads at its next report: a test's knob, as before.
        self._writer.retention.alarm_quiet = seconds

    # ---- the thread's gauges (read-only views) -----------------------------------------

    @property
    def telemetry_rows(self) -> int:
        return self._writer.retention.rows

    @property
    def telemetry_bytes(self) -> int:
        return self._writer.retention.bytes

    @property
    def evicted_rows(self) -> int:
        return self._writer.retention.evicted_rows

    @property
    def evicted_bytes(self) -> int:
        return self._writer.retention.evicted_bytes

    @property
    def evicted_first_seq(self) -> int | None:
        return self._writer.retention.evicted_first_seq

    @property
    def evicted_last_seq(self) -> int | None:
        return self._writer.retention.evicted_last_seq

    @property
    def disk_free(self) -> int | None:
        return self._writer.disk.free

    @property
    def failure(self) -> BaseException | None:
        """Why the thread failed (or gave up records at stop), once it has."""
        return self._writer.failure

    @property
    def appended(self) -> int:
        return self._inbox.appended

    @property
    def last_assigned_seq(self) -> int:
        return self._inbox.next_seq - 1

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Take the journal's lock, open (or create, or replace a damaged) journal and start
        the owning thread. Raises ``BufferError_`` if the journal is locked or unusable."""
        self._loop = asyncio.get_running_loop()
        self._writer.outbox.loop = self._loop
        # Events belong to the running loop, so they are made here (callers read
        # ``buffer.new_data`` each time rather than keeping a reference from before start).
        self.new_data = asyncio.Event()
        self._inbox.closing = False
        opened: Future[Opened] = Future()
        self._thread = threading.Thread(
            target=self._writer.run, args=(opened,), name=f"buffer:{self.path.name}", daemon=True
        )
        self._thread.start()
        try:
            info = await asyncio.wrap_future(opened)
        except BaseException:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            raise
        self._inbox.next_seq = info.last_seq + 1
        self._identity = info.identity
        self.committed_seq = info.last_seq
        self.depth = info.depth
        if info.depth:
            self.new_data.set()
        for code, message in info.alarms:
            self._raise_alarm(code, message, logging.CRITICAL)
        log.info(
            "buffer %s open: journal %s epoch %s, last seq %d, %d records waiting "
            "(%d telemetry, %d bytes)",
            self.path,
            info.identity.journal,
            info.identity.epoch.id,
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
        self._inbox.close()
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        if self.failure is not None and self.committed_seq < self._inbox.next_seq - 1:
            raise BufferError_(f"buffer failed: {self.failure}")

    # ---- appending -------------------------------------------------------------------

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
        seq, dropped, reason = self._inbox.put(drafts, origins)
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

    async def flush(self) -> int:
        """Wait until every record appended before this call is committed (or, for a
        reading, given up for room). While the journal is full this waits: that is what
        holds a PLC handshake until its part record is safe."""
        target = self._inbox.next_seq - 1
        if self.committed_seq >= target:
            return self.committed_seq
        if self.failure is not None:
            raise BufferError_(f"buffer failed: {self.failure}")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append((target, fut))
        self._inbox.urge()
        return await fut

    # ---- reading and deleting ----------------------------------------------------------

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
        return await self._submit(
            functools.partial(
                self._writer.read,
                after_seq=after_seq,
                max_records=max_records,
                max_bytes=max_bytes,
                until_seq=until_seq,
            )
        )

    async def delete(self, seqs: Sequence[int]) -> int:
        """Drop delivered records; returns how many rows went. Only sync calls this, and
        only after confirmation. ``depth`` follows the commit, even if the caller is
        cancelled while waiting."""
        if not seqs:
            return 0
        ranges = _ranges(sorted(seqs))
        return await self._submit(functools.partial(self._writer.delete, ranges=ranges, seqs=seqs))

    async def delete_through(self, seq: int) -> int:
        """Drop every record with seq <= ``seq`` (a confirmed watermark); returns how many."""
        return await self._submit(functools.partial(self._writer.delete_through, seq=seq))

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

    # ---- health, state, salvage ------------------------------------------------------

    async def probe(self) -> None:
        """A no-op round trip through the journal's thread: it returns once the thread is back
        at its queue, so an unanswered probe means the thread is stuck (in a commit, an fsync).
        The service watchdog asks; nothing the thread exposes moves while the line is idle."""
        await self._submit(lambda db: None)

    async def maintain(self) -> dict[str, Any]:
        """Run the periodic checks now (disk space, telemetry age, WAL checkpoint, eviction
        report) instead of at the next ``check_interval``; returns ``stats()`` after them."""
        await self._submit(self._writer.maintain_now)
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """Gauges and counters of the journal, for status and metrics."""
        return {
            "path": str(self.path),
            "depth": self.depth,
            "committed_seq": self.committed_seq,
            "appended": self.appended,
            "committed_total": self.committed_total,
            "queued": len(self._inbox.pending),
            "telemetry_rows": self.telemetry_rows,
            "telemetry_bytes": self.telemetry_bytes,
            "evicted_rows": self.evicted_rows,
            "evicted_bytes": self.evicted_bytes,
            "evicted_first_seq": self.evicted_first_seq,
            "evicted_last_seq": self.evicted_last_seq,
            "dropped_readings": self.dropped_readings,
            "full": self._writer.full,
            "disk_state": self._writer.disk.state,
            "disk_free_bytes": self.disk_free,
        }

    async def load_state(
        self,
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int]]]:
        """What the stations knew at the last commit: {station: state} and, per station, the
        most recent ``max_serials`` serials with their part-record counts (oldest first)."""
        return await self._submit(functools.partial(state.load, max_serials=self.max_serials))

    async def load_route_results(self, stations: list[str]) -> dict[str, dict[str, str | None]]:
        """Per station, the latest part result of its most recent ``max_serials`` serials."""
        return await self._submit(
            functools.partial(state.load_results, stations=stations, max_serials=self.max_serials)
        )

    # ---- the station gate's blocked set (buffer/blocked.py) -----------------------------

    async def load_blocked(self) -> tuple[int, str] | None:
        """(version, payload) of the blocked set kept, or None."""
        return await self._submit(blocked.load)

    async def save_blocked(self, version: int, payload: str) -> bool:
        """Keep this blocked set unless a newer one is kept already."""
        return await self._submit(
            functools.partial(blocked.save, version=version, payload=payload, received_at=utc_now())
        )

    # ---- identity (buffer/identity.py) -------------------------------------------------

    @property
    def identity(self) -> JournalIdentity:
        """The journal's id and epochs; the last epoch is this opening's."""
        if self._identity is None:
            raise BufferError_("buffer is not running")
        return self._identity

    async def claim(self, agent: str) -> dict[str, tuple[int, int]]:
        """Record ``agent`` as the writer of this opening's epoch; returns, for every other
        agent id whose epochs still hold rows, (rows, highest seq)."""
        epoch = self.identity.epoch.id
        return await self._submit(functools.partial(identity.claim, epoch=epoch, agent=agent))

    async def rekey(self, epoch: str) -> JournalIdentity:
        """Give the rows of ``epoch`` a new random epoch id; returns the identity after."""
        journal = self.identity.journal
        self._identity = await self._submit(
            functools.partial(identity.rekey, epoch=epoch, journal=journal)
        )
        return self._identity

    async def salvaged_seqs(self, journal: str) -> set[int]:
        """Original seqs already copied in from the damaged file named ``journal``."""
        return await self._submit(functools.partial(select_salvaged, journal=journal))

    async def mark_salvaged(self, damaged: Path) -> None:
        """Record that ``damaged`` has been salvaged: its alarm is not raised again."""
        await self._submit(functools.partial(set_salvaged, damaged=damaged, now=utc_now()))

    async def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the journal's thread, between two commits."""
        if self._thread is None:
            raise BufferError_("buffer is not running")
        if self.failure is not None:
            raise BufferError_(f"buffer failed: {self.failure}")
        fut: Future[T] = Future()
        self._inbox.submit(fn, fut)
        return await asyncio.wrap_future(fut)

    # ---- posted by the thread, run on the loop ---------------------------------------

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


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Collapse sorted seqs into inclusive (lo, hi) runs, so deletes are a few range scans."""
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out
