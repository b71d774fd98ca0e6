"""Retention of telemetry: the running totals, the bounds (rows, bytes, age), the reserve kept
for trace records when the disk is critical, and the eviction itself, counted and reported
(alarm ``telemetry_evicted``, a log line at most once a minute). Trace records are never
touched here (invariant 4): every statement is restricted to ``TELEMETRY_SQL``.

``Retention`` is owned by the journal's thread: only it evicts and only it changes the totals
(after its own commits and deletes). The loop reads the counters as gauges.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from buffer import files
from buffer.disk import human_size
from buffer.handoff import Outbox
from buffer.policy import TELEMETRY_SQL, TelemetryBounds

log = logging.getLogger("buffer.sqlite")  # the journal's one logger (see buffer/schema.py)

EVICT_CHUNK = 5_000
"""Telemetry rows deleted per transaction: commits interleave with a long eviction."""
REPORT_EVERY = 60.0
"""Seconds between two eviction (or dropped-readings) log lines: counted, never one per row."""


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


class Retention:
    """Telemetry's totals and evictions; every method runs on the journal's thread."""

    alarm_quiet = 900.0
    """Seconds without an eviction before the ``telemetry_evicted`` alarm clears."""

    def __init__(
        self,
        bounds: TelemetryBounds,
        *,
        reserve_bytes: int,
        clock: Callable[[], float],
        outbox: Outbox,
    ) -> None:
        self.bounds = bounds
        self.reserve_bytes = reserve_bytes  # free pages kept for trace while disk is critical
        self._clock = clock
        self._outbox = outbox
        # Gauges, read by the loop too.
        self.rows = 0  # telemetry rows in the journal
        self.bytes = 0  # and their body bytes
        self.evicted_rows = 0
        self.evicted_bytes = 0
        self.evicted_first_seq: int | None = None
        self.evicted_last_seq: int | None = None
        # The thread's own.
        self.page_size = 4096
        self.max_written = 0  # highest seq in the table (as far as this thread wrote)
        self._floor = 0  # no telemetry row has a seq <= this
        self._draining_bounds = False
        self._report = _Evictions()
        self._report_at = float("-inf")
        self._last_evict_at = float("-inf")
        self._evict_failed_at = float("-inf")

    def opened(self, rows: int, nbytes: int, last_seq: int, page_size: int) -> None:
        """The totals as counted at open (one query, after quick_check read the file)."""
        self.rows, self.bytes = rows, nbytes
        self._floor = 0
        self.max_written = last_seq
        self.page_size = page_size

    def written(self, last_seq: int, rows: int, nbytes: int) -> None:
        """A commit put ``rows`` telemetry rows of ``nbytes`` in the file, up to ``last_seq``."""
        self.max_written = max(self.max_written, last_seq)
        self.rows += rows
        self.bytes += nbytes

    def about_to_delete(
        self, db: sqlite3.Connection, where: str, args: tuple[Any, ...]
    ) -> tuple[int, int]:
        """Telemetry rows and bytes about to be deleted, to keep the running totals exact:
        one more walk of the same pages (measured ~10% of a delete), skipped when there is
        no telemetry at all."""
        if self.rows == 0:
            return 0, 0
        rows, size = db.execute(
            f"SELECT count(*), total(size) FROM records WHERE {TELEMETRY_SQL} AND {where}", args
        ).fetchone()
        return int(rows), int(size)

    def deleted(self, rows: int, nbytes: int) -> None:
        """Delivered rows were deleted, ``rows`` of them telemetry of ``nbytes``."""
        self.rows -= rows
        self.bytes -= nbytes

    def evict_oldest(
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
            (self._floor, limit),
        ).fetchall()
        if not oldest:
            self._floor = self.max_written
            return 0
        size = n = 0
        for _, sz, at in oldest:
            if n >= rows and size >= nbytes and (before is None or at >= before):
                break
            n += 1
            size += sz
        if not n:
            self._floor = oldest[0][0] - 1
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
        self._floor = hi
        self.rows -= deleted
        self.bytes -= size
        self.count(deleted, size, lo, hi, reason)
        self._outbox.removed(deleted)
        return deleted

    def count(self, rows: int, nbytes: int, lo: int, hi: int, reason: str) -> None:
        """Telemetry seqs ``lo..hi`` are gone for ``reason`` (evicted, or dropped unwritten)."""
        self.evicted_rows += rows
        self.evicted_bytes += nbytes
        first, last = self.evicted_first_seq, self.evicted_last_seq
        self.evicted_first_seq = lo if first is None else min(first, lo)
        self.evicted_last_seq = hi if last is None else max(last, hi)
        self._report.add(rows, nbytes, lo, hi, reason)
        self._last_evict_at = time.monotonic()

    def enforce_bounds(self, db: sqlite3.Connection) -> bool:
        """Rows and bytes: checked after every commit against the running totals (no query
        unless over). Once over, evict down to 1% under the bound. Returns: more to do."""
        b = self.bounds
        rows_over = bytes_over = 0
        if b.max_rows is not None:
            low = b.max_rows - b.max_rows // 100
            if self.rows > b.max_rows or (self._draining_bounds and self.rows > low):
                rows_over = self.rows - low
        if b.max_bytes is not None:
            low = b.max_bytes - b.max_bytes // 100
            if self.bytes > b.max_bytes or (self._draining_bounds and self.bytes > low):
                bytes_over = self.bytes - low
        if not rows_over and not bytes_over:
            self._draining_bounds = False
            return False
        reason = "telemetry max_rows" if rows_over else "telemetry max_bytes"
        n = self.evict_oldest(
            db, rows=min(rows_over, EVICT_CHUNK), nbytes=bytes_over, reason=reason
        )
        self._draining_bounds = n > 0
        return n > 0 and (rows_over > n or n >= EVICT_CHUNK)

    def enforce_age(self, db: sqlite3.Connection) -> bool:
        """Telemetry older than ``max_age``: one chunk per call. Returns: more to do."""
        if self.bounds.max_age is None or self.rows == 0:
            return False
        before = int(self._clock() - self.bounds.max_age)
        row = db.execute(
            f"SELECT seq, at FROM records WHERE seq > ? AND {TELEMETRY_SQL} ORDER BY seq LIMIT 1",
            (self._floor,),
        ).fetchone()
        if row is None:
            self._floor = self.max_written
            return False
        self._floor = row[0] - 1
        if row[1] >= before:
            return False
        return self.evict_oldest(db, before=before, reason="telemetry max_age") >= EVICT_CHUNK

    def keep_reserve(self, db: sqlite3.Connection) -> bool:
        """Disk critical: evict telemetry until the file holds ``reserve_bytes`` of free
        pages. SQLite reuses them before it grows the file, so that much trace data still fits
        whatever else fills the disk. Returns: more to do."""
        if self.rows == 0:
            return False
        free_pages = int(db.execute("PRAGMA freelist_count").fetchone()[0])
        want = self.reserve_bytes - free_pages * self.page_size
        if want <= 0:
            return False
        # Freed body bytes free fewer whole pages (trace rows stay on shared pages): one
        # chunk per round, then measure again.
        return self.evict_oldest(db, nbytes=want, reason="disk critical") > 0

    def report(self, now: float) -> None:
        """The log line and alarm, at most once per ``REPORT_EVERY``; the alarm clears after
        ``alarm_quiet`` seconds without an eviction."""
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
            self._outbox.alarm(
                "telemetry_evicted",
                f"oldest telemetry is being evicted ({reasons}): {self.evicted_rows} record(s), "
                f"{human_size(self.evicted_bytes)}, seqs {self.evicted_first_seq}.."
                f"{self.evicted_last_seq} since the agent started. Trace records are kept; "
                "the broker or the trace store may be unreachable for a long time.",
                logging.WARNING,
            )
            self._report = _Evictions()
            self._report_at = now
        elif (
            "telemetry_evicted" in self._outbox.raised
            and now - self._last_evict_at >= self.alarm_quiet
        ):
            self._outbox.clear_alarm("telemetry_evicted", "no eviction for a while")
