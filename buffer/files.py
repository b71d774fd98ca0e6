"""The journal's files on disk: the lock that keeps it to one owner, the start-up check, and
setting a damaged journal aside.

Plain functions on paths and connections, no threads: the journal's owning thread calls them
while it opens the file, and ``edge-agent buffer salvage`` calls them from its own process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kernel.errors import JournalInUse

SIDE_FILES = ("-wal", "-shm")
"""SQLite's companions of a WAL database; they belong to it and move with it."""


def lock_path(journal: Path) -> Path:
    return journal.with_name(journal.name + ".lock")


class JournalLock:
    """An exclusive ``flock`` on ``<journal>.lock``, held while the journal is open.

    SQLite's own locking lets two writers take turns, which is exactly what must not happen
    here: two agents on one journal would hand out the same seqs. ``flock`` is released by the
    kernel when the process dies, so a ``kill -9`` never leaves a stale lock behind. The lock
    file is never deleted (deleting it would let a second opener lock a different inode).
    """

    def __init__(self, journal: Path) -> None:
        self.path = lock_path(journal)
        self.journal = journal
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise JournalInUse(
                f"journal {self.journal} is in use{holder}: {self.path} is locked. Only one "
                "process may open a journal (the agent, or `edge-agent buffer salvage`, which "
                "needs the agent stopped)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder's pid, for the message a second opener gets; advisory only.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f" by process {pid}"
    return ""


SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_NOTADB = 26


def error_code(exc: sqlite3.Error) -> int | None:
    """The primary SQLite result code of ``exc`` (extended codes folded), if it carries one."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_damage(exc: sqlite3.Error) -> bool:
    """The file's content is bad (as opposed to: cannot be opened, locked, permissions)."""
    if error_code(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text


def is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: the disk, or the journal's ``max_page_count``, has no room left."""
    return error_code(exc) == SQLITE_FULL or "database or disk is full" in str(exc)


def check(db: sqlite3.Connection, *, limit: int = 5) -> str | None:
    """``None`` if ``PRAGMA quick_check`` passes, else what it (or SQLite) said was wrong.

    quick_check reads every page (O(file size), a second or two per GB) but skips the
    index-content cross-check of integrity_check, which is what makes it affordable at start.
    """
    try:
        rows = db.execute(f"PRAGMA quick_check({limit})").fetchall()
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            return str(exc)
        raise
    if rows == [("ok",)]:
        return None
    return "; ".join(str(r[0]) for r in rows)


def last_readable_seq(path: Path) -> int:
    """The highest seq a damaged journal still shows, 0 if none: every source that may hold
    one (the records, the ``last_seq`` mark, part bookkeeping), each tried on its own so one
    bad page does not hide the others."""
    found = 0
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        for query in (
            "SELECT max(seq) FROM records",
            "SELECT value FROM meta WHERE key IN ('last_seq', 'seq_floor')",
            "SELECT max(last_seq) FROM part_serials",
        ):
            try:
                for (value,) in db.execute(query).fetchall():
                    if value is not None:
                        found = max(found, int(value))
            except (sqlite3.Error, ValueError):
                continue
    finally:
        db.close()
    return found


@dataclass(frozen=True, slots=True)
class MovedJournal:
    path: Path  # the damaged main file's new name
    files: list[Path]  # every file moved (main, -wal, -shm)


def move_aside(journal: Path, now: datetime | None = None) -> MovedJournal:
    """Rename ``journal`` (and its -wal/-shm) to ``<name>.damaged-<UTC time>``; never delete.

    The side files keep their suffix on the new name, so SQLite (and salvage) still pairs the
    write-ahead log with its database: records committed only to the WAL stay readable.
    """
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    base = journal.with_name(f"{journal.name}.damaged-{stamp}")
    target = base
    n = 1
    while any(Path(str(target) + s).exists() for s in ("", *SIDE_FILES)):
        target = base.with_name(f"{base.name}-{n}")
        n += 1
    moved = []
    for suffix in ("", *SIDE_FILES):
        src = Path(str(journal) + suffix)
        if src.exists():
            dst = Path(str(target) + suffix)
            os.rename(src, dst)
            moved.append(dst)
    _fsync_dir(journal.parent)
    return MovedJournal(target, moved)


def _fsync_dir(directory: Path) -> None:
    # A rename is durable only once the directory is; without it a power cut could bring the
    # damaged file back under the journal's name next to the new one's -wal.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
