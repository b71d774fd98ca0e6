"""The journal's thread: the one owner of the SQLite connection, and its transactions.

Appends are batched by construction: while one transaction commits, new appends queue up in
the ``Inbox`` and go into the next one, so the batch size follows the load. Only a batch of
telemetry alone waits, at most ``TELEMETRY_LINGER``, for more to join it (one fsync for a
whole poll phase). Between commits the thread runs the loop's jobs (reads, deletes) and the
maintenance: disk check, WAL checkpoint, retention.

When the journal cannot grow (disk full, ``max_bytes``) telemetry is evicted to make room;
with none left, trace records wait in memory (their ``flush()`` waiters keep waiting, so a PLC
handshake holds its part), readings are refused, and the commit is retried every
``FULL_RETRY`` and at once after any delete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from buffer import files
from buffer.disk import DiskWatch
from buffer.handoff import Inbox, Item, Outbox
from buffer.journal import StoredRecord
from buffer.policy import TELEMETRY
from buffer.retention import EVICT_CHUNK, Retention
from buffer.schema import Synchronous, set_meta
from buffer.seqs import Opened, open_journal, record_salvaged
from buffer.state import StationBook
from kernel.errors import BufferError_
from kernel.model import RecordKind

log = logging.getLogger("buffer.sqlite")  # the journal's one logger (see buffer/schema.py)

FULL_RETRY = 1.0
"""Seconds between commit attempts while the journal is full (and at once after any delete)."""
TELEMETRY_LINGER = 0.005
"""Seconds a commit of telemetry alone may wait for more records to join it. Devices polled
in the same phase answer within a few ms of each other; while a batch lingers, the appends that
join it do not wake this thread, and one commit (one fsync) takes them all. At 10 stations x 64
registers / 64 ms it took the agent from 12.0-12.5% to 10.7-11.0% of a core (fdatasync 40/s ->
36/s: most of the gain is wake-ups). Trace records, a ``flush`` waiter and closing commit at
once, so no acknowledgement (PLC handshake) is ever delayed."""


class JournalThread:
    """The journal's worker. After construction, everything here (and in its ``retention``,
    ``disk`` and ``stations``) is touched only by the thread that runs ``run``, with two
    exceptions the loop may read as gauges: ``failure`` and ``full``. It talks to the loop
    only through ``inbox`` (under its lock) and ``outbox`` (posted calls)."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Synchronous,
        max_batch: int,
        max_bytes: int | None,
        config_path: str | Path | None,
        clock: Callable[[], float],
        inbox: Inbox,
        outbox: Outbox,
        retention: Retention,
        disk: DiskWatch,
        stations: StationBook,
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.config_path = config_path
        self._clock = clock  # wall clock, unix s: commit times and max_age (tests move it)
        self.inbox = inbox
        self.outbox = outbox
        self.retention = retention
        self.disk = disk
        self.stations = stations
        self._journal_lock = files.JournalLock(path)
        self.failure: BaseException | None = None  # set once, here; the loop checks it
        self.full = False  # a trace record found no room even after evicting: holding
        self._retry_at = 0.0
        self._batch_limit = max_batch
        self._age_pending = False
        self._next_check = 0.0
        self.more = False  # maintenance left work for the next round
        self._dropped_max = 0  # highest seq of a queued reading dropped for room

    # ---- the thread ------------------------------------------------------------------

    def run(self, opened: Future[Opened]) -> None:
        """The thread's body: take the lock, open, serve until closed or failed."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._journal_lock.acquire()
        except Exception as exc:
            if not isinstance(exc, BufferError_):
                exc = BufferError_(f"cannot open buffer {self.path}: {exc}")
            opened.set_exception(exc)
            return
        try:
            db, info = open_journal(
                self.path,
                synchronous=self.synchronous,
                max_bytes=self.max_bytes,
                clock=self._clock,
                config_path=self.config_path,
            )
            self.retention.opened(
                info.telemetry_rows, info.telemetry_bytes, info.last_seq, info.page_size
            )
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
            self.outbox.failed(exc)
            for _, fut in self.inbox.take_jobs():
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(BufferError_(f"buffer failed: {exc}"))
        finally:
            db.close()
            self._journal_lock.release()

    def _serve(self, db: sqlite3.Connection) -> None:
        inbox = self.inbox
        while True:
            with inbox.lock:
                while not self._has_work():
                    inbox.wake.wait(self._idle_timeout())
                batch = self._take()
                jobs = list(inbox.jobs)
                inbox.jobs.clear()
                closing = inbox.closing
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
            self.maintain(db)
            if closing:
                with inbox.lock:
                    if not inbox.pending and not inbox.jobs:
                        break

    def _has_work(self) -> bool:
        """Lock held. Anything to do now?"""
        inbox = self.inbox
        if inbox.closing or inbox.jobs or self.more:
            return True
        now = time.monotonic()
        if now >= self._next_check:
            return True
        if not inbox.pending:
            return False
        if self.full:
            return now >= self._retry_at
        return inbox.urgent or now >= inbox.pending_since + TELEMETRY_LINGER

    def _idle_timeout(self) -> float:
        """Lock held. How long the thread may sleep before a check, a retry or the end of a
        linger is due."""
        due = self._next_check
        if self.full and self.inbox.pending:
            due = min(due, self._retry_at)
        elif self.inbox.pending:
            due = min(due, self.inbox.pending_since + TELEMETRY_LINGER)
        return max(0.0, due - time.monotonic())

    def _take(self) -> list[Item]:
        """Lock held. The next batch to commit (none while full and the retry is not due)."""
        pending = self.inbox.pending
        if not pending:
            return []
        if self.full and not self.inbox.closing and time.monotonic() < self._retry_at:
            return []
        n = min(len(pending), self._batch_limit)
        batch = [pending.popleft() for _ in range(n)]
        if not pending:
            self.inbox.urgent = False
        # Records left over (a batch limit) are past their linger: the next round takes them.
        return batch

    # ---- committing --------------------------------------------------------------------

    def _commit_batch(self, db: sqlite3.Connection, batch: list[Item], closing: bool) -> None:
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

    def _write(self, db: sqlite3.Connection, batch: list[Item]) -> None:
        # Serialising here keeps JSON encoding off the event loop. ``default=dict`` renders the
        # binder's read-only context mappings. The bodies are ASCII (json.dumps escapes the
        # rest), so ``len`` is their size in bytes.
        at = int(self._clock())
        rows = []
        states: dict[str, dict[str, Any]] = {}
        parts: list[tuple[str, str, int, str | None]] = []
        tele_rows = tele_bytes = 0
        for seq, d in batch:
            body = json.dumps({"seq": seq, **d.body}, separators=(",", ":"), default=dict)
            size = len(body)
            rows.append((seq, d.station, d.kind.value, body, at, size))
            if d.kind in TELEMETRY:
                tele_rows += 1
                tele_bytes += size
            elif d.kind is RecordKind.PART and isinstance(d.body.get("serial"), str):
                result = d.body.get("result")
                parts.append(
                    (d.station, d.body["serial"], seq, result if isinstance(result, str) else None)
                )
            if d.state is not None:
                states[d.station] = d.state
        salvaged = self.inbox.salvaged_in(batch)
        # A reading dropped for room took a seq the file must still account for.
        last = max(batch[-1][0], self._dropped_max)
        with db:
            db.executemany(
                "INSERT INTO records (seq, station, kind, body, at, size) VALUES (?,?,?,?,?,?)",
                rows,
            )
            set_meta(db, "last_seq", last)
            self.stations.write(db, states, parts)
            if salvaged:
                record_salvaged(db, salvaged)
        # Only now that it is in the file.
        self.retention.written(batch[-1][0], tele_rows, tele_bytes)
        if salvaged:
            self.inbox.forget_salvaged([seq for _, _, seq in salvaged])
        self.stations.committed(len(parts))
        n = len(rows)
        if self._batch_limit < self.max_batch:
            # After a full journal: grow back as commits fit again, like a congestion window.
            self._batch_limit = min(self.max_batch, self._batch_limit * 2)
        if self.full:
            self._retry_at = 0.0
            with self.inbox.lock:
                room = not self.inbox.pending
            if room:
                self._leave_full()
        self.outbox.committed(self.inbox.settled_seq(), n)

    # ---- a journal that cannot grow --------------------------------------------------

    def _make_room(
        self,
        db: sqlite3.Connection,
        batch: list[Item],
        exc: sqlite3.Error,
        closing: bool,
    ) -> list[Item]:
        """The journal has no room for ``batch``: free some, or hold. Returns what to try to
        commit at once (empty: nothing now). Each step ends: evictions are finite, the batch
        only shrinks."""
        if self.retention.rows > 0 and self.retention.evict_oldest(
            db, rows=max(EVICT_CHUNK, 2 * len(batch)), reason="journal full"
        ):
            return batch
        # No telemetry could be evicted from the file (none left, or the disk is so full that
        # even a delete fails): the queued readings go instead, counted the same way.
        trace = [item for item in batch if item[1].kind not in TELEMETRY]
        if len(trace) < len(batch):
            self._drop_queued([item for item in batch if item[1].kind in TELEMETRY])
            # Settled only below the batch's first trace record: that one is not in the file
            # (the queue no longer holds it, so the queue alone would say it is), and a flush
            # waiting for it must not return before it is (invariant 1).
            if trace:
                self.outbox.committed(min(self.inbox.settled_seq(), trace[0][0] - 1), 0)
            else:
                self.outbox.committed(self.inbox.settled_seq(), 0)
            return trace
        if len(batch) > 1:
            # Part of it may fit: commit what does, in order, rather than nothing.
            half = len(batch) // 2
            self._batch_limit = half
            self.inbox.requeue(batch[half:])
            return batch[:half]
        self.inbox.requeue(batch)
        if closing:
            self._abandon(exc)
        else:
            self._hold(exc)
        return []

    def _hold(self, exc: sqlite3.Error) -> None:
        """Not one more trace record fits: keep them in memory, refuse readings, retry."""
        self._retry_at = time.monotonic() + FULL_RETRY
        if self.full:
            return
        self.full = True
        self._update_refusal()
        queued, waiting = self.inbox.take_telemetry()
        if queued:
            self._drop_queued(queued)
            self.outbox.committed(self.inbox.settled_seq(), 0)
        self.outbox.alarm(
            "buffer_full",
            f"journal {self.path} is full ({exc}) and evicting telemetry made no room: "
            f"{waiting} trace record(s) wait in memory, uncommitted and unacknowledged (a PLC "
            "handshake holds its part); new readings are refused. Free disk space (or raise "
            "buffer.max_bytes); delivery to the broker frees room too. Retrying every "
            f"{FULL_RETRY:g} s.",
            logging.CRITICAL,
        )

    def _leave_full(self) -> None:
        self.full = False
        self._batch_limit = self.max_batch
        self._update_refusal()
        self.outbox.clear_alarm(
            "buffer_full", "the journal has room again; every queued record is in"
        )

    def _abandon(self, exc: sqlite3.Error) -> None:
        """Stopping with a full journal: what is still in memory cannot be kept. It was never
        acknowledged (flush never returned for it), so this is what a kill at this instant
        would have lost, and no more; stopping must not hang on a full disk."""
        items = self.inbox.take_all()
        trace = [seq for seq, d in items if d.kind not in TELEMETRY]
        message = (
            f"journal {self.path} full at shutdown ({exc}): {len(trace)} trace record(s) "
            f"(seqs {trace[0] if trace else '-'}..{trace[-1] if trace else '-'}) and "
            f"{len(items) - len(trace)} reading(s) were never committed nor acknowledged"
        )
        log.critical(message)
        failure = BufferError_(message)
        self.failure = failure
        self.outbox.failed(failure)

    def _drop_queued(self, items: list[Item]) -> None:
        """Readings that had a seq but never reached the file: evicted, counted like any."""
        if not items:
            return
        nbytes = sum(
            len(json.dumps({"seq": s, **d.body}, separators=(",", ":"), default=dict))
            for s, d in items
        )
        self._dropped_max = max(self._dropped_max, items[-1][0])
        if self.inbox.salvage_keys:  # not copied after all: a later salvage run tries again
            self.inbox.forget_salvaged([seq for seq, _ in items])
        self.retention.count(len(items), nbytes, items[0][0], items[-1][0], "journal full")

    def _update_refusal(self) -> None:
        reason = None
        if self.full:
            reason = "journal full"
        elif self.disk.critical:
            reason = "disk space critical"
        self.inbox.set_refusal(reason)

    # ---- maintenance, and the loop's jobs ----------------------------------------------

    def maintain(self, db: sqlite3.Connection) -> None:
        """After every round: the periodic checks when due, then retention's next chunk."""
        now = time.monotonic()
        periodic = now >= self._next_check
        if periodic:
            self._next_check = now + self.disk.marks.check_interval
            if self.disk.check():
                self._update_refusal()
            self.disk.checkpoint(db)
            self._age_pending = True
        more = self.retention.enforce_bounds(db)
        if self._age_pending:
            self._age_pending = self.retention.enforce_age(db)
        if self.disk.critical:
            more = self.retention.keep_reserve(db) or more
        self.more = more or self._age_pending
        self.retention.report(now)

    def maintain_now(self, db: sqlite3.Connection) -> None:
        """A job: the periodic checks now instead of at the next ``check_interval``."""
        self._next_check = 0.0
        self.maintain(db)

    def read(
        self,
        db: sqlite3.Connection,
        *,
        after_seq: int,
        max_records: int,
        max_bytes: int,
        until_seq: int | None,
    ) -> list[StoredRecord]:
        """A job: ``SqliteBuffer.read_batch``."""
        if until_seq is None:
            sql = "SELECT seq, station, kind, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?"
            args: tuple[int, ...] = (after_seq, max_records)
        else:
            sql = (
                "SELECT seq, station, kind, body FROM records WHERE seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?"
            )
            args = (after_seq, until_seq, max_records)
        out: list[StoredRecord] = []
        size = 0
        for seq, station, kind, body in db.execute(sql, args):
            size += len(body)
            if out and size > max_bytes:
                break
            out.append(StoredRecord(seq, station, kind, body))
        return out

    def delete(
        self, db: sqlite3.Connection, ranges: list[tuple[int, int]], seqs: Sequence[int]
    ) -> int:
        """A job: drop delivered rows (``ranges`` are ``seqs`` as sorted runs)."""
        n = rows = size = 0
        with _room_to_delete(), db:
            if len(ranges) <= 8:
                for lo, hi in ranges:
                    r, b = self.retention.about_to_delete(db, "seq BETWEEN ? AND ?", (lo, hi))
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
                rows, size = self.retention.about_to_delete(db, subset, arg)
                n = db.execute(f"DELETE FROM records WHERE {subset}", arg).rowcount
        self._deleted(n, rows, size)
        return n

    def delete_through(self, db: sqlite3.Connection, seq: int) -> int:
        """A job: drop every row with seq <= ``seq``."""
        with _room_to_delete(), db:
            rows, size = self.retention.about_to_delete(db, "seq <= ?", (seq,))
            n = db.execute("DELETE FROM records WHERE seq <= ?", (seq,)).rowcount
        self._deleted(n, rows, size)
        return n

    def _deleted(self, n: int, tele_rows: int, tele_bytes: int) -> None:
        """After a delivered-rows delete committed."""
        self.retention.deleted(tele_rows, tele_bytes)
        if self.full and n:
            self._retry_at = 0.0  # freed pages: try the held records now
        self.outbox.removed(n)


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
