"""The disk under the journal: free-space watermarks (alarms ``disk_low``/``disk_critical``)
and the WAL checkpoint that must keep working (alarm ``checkpoint_failed``).

``DiskWatch`` is owned by the journal's thread: only it checks, and only it changes ``state``;
the loop reads ``free`` and ``state`` as gauges. What the critical state means for the records
(readings refused, telemetry evicted for a reserve) is decided by the writer and by
``Retention``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from buffer.handoff import Outbox
from buffer.policy import DiskUsage, DiskWatermarks

log = logging.getLogger("buffer.sqlite")  # the journal's one logger (see buffer/schema.py)

DiskState = Literal["ok", "low", "critical"]


class DiskWatch:
    """Free space of the journal's filesystem against ``marks``; runs on the journal's thread."""

    def __init__(
        self,
        path: Path,
        marks: DiskWatermarks,
        disk_usage: Callable[[str], DiskUsage],
        outbox: Outbox,
    ) -> None:
        self.path = path
        self.marks = marks
        self._disk_usage = disk_usage
        self._outbox = outbox
        self.free: int | None = None
        self.state: DiskState = "ok"

    @property
    def critical(self) -> bool:
        return self.state == "critical"

    def check(self) -> bool:
        """Measure free space and move between states, raising and clearing alarms. Returns
        whether the state changed."""
        try:
            free = int(self._disk_usage(str(self.path.parent)).free)
        except OSError as exc:
            log.warning("cannot read free space of %s: %s", self.path.parent, exc)
            return False
        self.free = free
        warn, crit = self.marks.warn_free_bytes, self.marks.critical_free_bytes
        old = self.state
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
            return False
        self.state = new
        where = f"{self.path.parent}: {human_size(free)} free"
        if new == "critical":
            self._outbox.alarm(
                "disk_critical",
                f"{where}, below the critical watermark ({human_size(crit)}): new readings are "
                f"refused and telemetry is evicted to keep {human_size(crit)} for trace records. "
                "Free disk space now.",
                logging.CRITICAL,
            )
        elif old == "critical":
            self._outbox.clear_alarm("disk_critical", f"{where}; readings are taken again")
        if new == "ok":
            self._outbox.clear_alarm("disk_low", where)
        elif old == "ok":
            self._outbox.alarm(
                "disk_low",
                f"{where}, below the warning watermark ({human_size(warn)}). Trace records are "
                f"safe; below {human_size(crit)} telemetry gives way. Free disk space.",
                logging.ERROR,
            )
        return True

    def checkpoint(self, db: sqlite3.Connection) -> None:
        """Checkpoint now and see that it works. SQLite's automatic checkpoints fail silently
        (on a full disk, say): the records are safe in the WAL, but it keeps growing."""
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.OperationalError as exc:
            self._outbox.alarm(
                "checkpoint_failed",
                f"journal {self.path}: the write-ahead log cannot be copied into the journal "
                f"({exc}). Every commit is safe in {self.path.name}-wal, which grows until this "
                "clears; free disk space.",
                logging.ERROR,
            )
            return
        self._outbox.clear_alarm("checkpoint_failed", "the write-ahead log is checkpointed again")


def human_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
