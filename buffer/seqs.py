"""Seq and identity: where a journal's numbering starts, and what keeps a record's key
(agent, epoch, seq) unique forever, also when the journal is replaced (invariants 2 and 8;
the epochs themselves are ``buffer/identity.py``).

- At open the next seq follows the highest ever committed: ``meta.last_seq`` (written by the
  writer in the same transaction as the rows, so deleting delivered rows never lets a number
  come back) or the highest row, whichever is larger.
- A damaged journal is set aside, never deleted, and its replacement starts above anything
  the old one could have handed out (``replace_damaged``); the ``damaged`` register keeps the
  ``buffer_damaged`` alarm up at every start until the file has been salvaged.
- Salvaged records get new seqs; (damaged file, old seq) is recorded in the same transaction
  as the copy (``record_salvaged``), so salvaging again copies nothing twice.

Seqs themselves are handed out on the event loop, in call order (``handoff.Inbox.put``).
Plain functions on a connection, called on the journal's thread.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from buffer import files
from buffer.identity import open_identity
from buffer.journal import JournalIdentity
from buffer.policy import TELEMETRY_SQL
from buffer.schema import Synchronous, configure, connect, set_meta, utc_now

log = logging.getLogger("buffer.sqlite")  # the journal's one logger (see buffer/schema.py)


@dataclass(frozen=True, slots=True)
class Opened:
    """What opening found: for the loop (the first three) and for the thread."""

    last_seq: int
    depth: int
    alarms: list[tuple[str, str]]  # (code, message) to raise once the loop has them
    telemetry_rows: int
    telemetry_bytes: int
    page_size: int
    identity: JournalIdentity


Replaced = tuple[str, files.MovedJournal, int, int]
"""A damaged journal set aside: (what was wrong, where it went, its last readable seq, the
first seq of its replacement)."""


def open_journal(
    path: Path,
    *,
    synchronous: Synchronous,
    max_bytes: int | None,
    clock: Callable[[], float],
    config_path: str | Path | None,
) -> tuple[sqlite3.Connection, Opened]:
    """Open the journal at ``path`` (creating it, or replacing it if it is damaged)."""
    replaced: Replaced | None = None
    db = connect(path)
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
        replaced = (damage, *replace_damaged(path, damage))
        db = connect(path)
        db.execute("PRAGMA journal_mode=WAL")
    try:
        page_size = configure(db, path, synchronous=synchronous, max_bytes=max_bytes, clock=clock)
        return db, _opened(db, path, replaced, page_size, config_path)
    except BaseException:
        db.close()
        raise


def replace_damaged(path: Path, damage: str) -> tuple[files.MovedJournal, int, int]:
    """Set the damaged journal aside; returns where it went, its last readable seq and
    the first seq of the new journal."""
    last = files.last_readable_seq(path)
    moved = files.move_aside(path)
    # The new file gets its own identity, so its records' keys (agent, epoch, seq) cannot
    # meet the old one's whatever the seqs. Its seqs still start above anything the old file
    # might have published (including seqs on pages we can no longer read): a trace store of
    # the previous version keys records by (agent, seq) only and would drop a reused seq as a
    # duplicate, and salvaged records (appended here with new seqs) stay in seq order after
    # everything the old file held. The last readable seq is a lower bound of those seqs; the
    # clock in microseconds an upper bound as long as seqs were handed out slower than a
    # million per second since the journal began. The max survives a clock that jumped back.
    floor = max(last + 1, time.time_ns() // 1000)
    log.critical(
        "journal %s is damaged (%s): moved to %s; a new journal starts at seq %d",
        path,
        damage,
        moved.path,
        floor,
    )
    return moved, last, floor


def _opened(
    db: sqlite3.Connection,
    path: Path,
    replaced: Replaced | None,
    page_size: int,
    config_path: str | Path | None,
) -> Opened:
    if replaced is not None:
        damage, moved, last, floor = replaced
        with db:
            set_meta(db, "last_seq", floor - 1)
            set_meta(db, "seq_floor", floor)
            db.execute(
                "INSERT OR REPLACE INTO damaged (name, path, found_at, reason, last_seq, "
                "seq_floor) VALUES (?, ?, ?, ?, ?, ?)",
                (moved.path.name, str(moved.path), utc_now(), damage, last, floor),
            )
    row = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
    max_row = db.execute("SELECT max(seq), count(*) FROM records").fetchone()
    last_seq = max(int(row[0]) if row else 0, int(max_row[0] or 0))
    rows, size = db.execute(
        f"SELECT count(*), total(size) FROM records WHERE {TELEMETRY_SQL}"
    ).fetchone()
    identity, identity_alarms = open_identity(db, path, last_seq, fresh=replaced is not None)
    return Opened(
        last_seq,
        int(max_row[1]),
        damaged_alarms(db, config_path) + identity_alarms,
        int(rows),
        int(size),
        page_size,
        identity,
    )


def damaged_alarms(db: sqlite3.Connection, config_path: str | Path | None) -> list[tuple[str, str]]:
    """One ``buffer_damaged`` alarm for every set-aside journal not salvaged yet (and still
    there): it is raised at every start until someone has dealt with the file."""
    found = []
    for path, found_at, reason, floor in db.execute(
        "SELECT path, found_at, reason, seq_floor FROM damaged "
        "WHERE salvaged_at IS NULL ORDER BY found_at"
    ):
        if not Path(path).exists():
            continue
        config = config_path if config_path is not None else "<config>"
        found.append(
            f"journal damaged ({reason}), found {found_at}; moved aside to {path}, never "
            f"deleted. A new journal started at seq {floor}. Stop the agent and recover "
            f"its records with: edge-agent buffer salvage -c {config} {path}"
        )
    return [("buffer_damaged", " | ".join(found))] if found else []


def record_salvaged(db: sqlite3.Connection, salvaged: list[tuple[str, int, int]]) -> None:
    """In the commit's transaction: (damaged file, old seq, new seq) of salvaged records."""
    db.executemany(
        "INSERT OR IGNORE INTO salvaged (journal, seq, new_seq) VALUES (?, ?, ?)",
        salvaged,
    )


def select_salvaged(db: sqlite3.Connection, journal: str) -> set[int]:
    """Original seqs already copied in from the damaged file named ``journal``."""
    rows = db.execute("SELECT seq FROM salvaged WHERE journal = ?", (journal,))
    return {int(r[0]) for r in rows}


def set_salvaged(db: sqlite3.Connection, damaged: Path, now: str) -> None:
    """Record that ``damaged`` has been salvaged: its alarm is not raised again."""
    with db:
        db.execute(
            "INSERT INTO damaged (name, path, found_at, reason, last_seq, seq_floor, "
            "salvaged_at) VALUES (?, ?, ?, 'salvaged', 0, 0, ?) "
            "ON CONFLICT(name) DO UPDATE SET salvaged_at = excluded.salvaged_at",
            (damaged.name, str(damaged), now, now),
        )
