"""The journal file's format: its tables, the connection settings, and the upgrade of journals
an older version wrote. Plain functions on a connection; the journal's thread calls them while
it opens the file."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from buffer import blocked

# One logger for the whole journal, whichever module writes the line: operators and tests
# filter on its name.
log = logging.getLogger("buffer.sqlite")

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
    result   TEXT,  -- of the latest part record: what a station gate's route rule reads
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
-- Every opening of this journal (buffer/identity.py): the records from first_seq on belong to
-- it until the next one. Its random id is part of each record's key on the wire.
CREATE TABLE IF NOT EXISTS epochs (
    epoch     TEXT PRIMARY KEY,  -- 32 hex digits; '' for rows an older version journaled
    first_seq INTEGER NOT NULL,
    opened_at TEXT NOT NULL,
    agent     TEXT               -- the agent id that wrote it (set when the uplink starts)
);
"""

FORMAT = 2
"""The journal's format, ``meta.format``: 2 added identities (``meta.journal_id``, ``epochs``);
a journal without the key is format 1. A version that finds a higher one refuses to open it
(``buffer/identity.py``): it cannot know what that format's rows mean."""

# No index on ``kind``. A partial index of telemetry was measured: -8% on append+commit and
# -25% on delete, for every record, to speed up queries that are cheap without it: the running
# totals are counted once at open (after quick_check has read the file anyway), a delete counts
# the telemetry in the rows it is about to delete (same pages), and "the oldest telemetry" is a
# primary-key walk from ``Retention._floor``, below which no telemetry is left, so each row is
# stepped over about once however much trace data sits at the front of the journal.

Synchronous = Literal["FULL", "NORMAL"]

JOURNAL_SIZE_LIMIT = 64 << 20
"""The WAL is truncated back to this after a checkpoint, so a burst does not keep disk."""


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=True)


def configure(
    db: sqlite3.Connection,
    path: Path,
    *,
    synchronous: Synchronous,
    max_bytes: int | None,
    clock: Callable[[], float],
) -> int:
    """Settings, tables and upgrade of a freshly opened (WAL) connection; returns the page
    size."""
    # FULL: a commit survives a power cut, which is what lets a PLC handshake or a
    # scanner beep follow it. NORMAL trades that for speed (survives process crashes).
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA busy_timeout=5000")
    db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    db.isolation_level = "DEFERRED"  # implicit transactions again, managed with `with db:`
    db.executescript(SCHEMA)
    # Tables added after format 2 are created here, so an older journal gains them on open.
    db.executescript(blocked.SCHEMA)
    migrate(db, path, clock)
    migrate_part_results(db)
    page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
    if max_bytes is not None:
        # Not persistent: set on every open. SQLite never sets it below the current size.
        db.execute(f"PRAGMA max_page_count={max(1, max_bytes // page_size)}")
    return page_size


def migrate(db: sqlite3.Connection, path: Path, clock: Callable[[], float]) -> None:
    """Journals from before retention classes lack ``at`` and ``size``."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(records)")}
    if {"at", "size"} <= columns:
        return
    with db:
        if "at" not in columns:
            # A constant default costs nothing on existing rows (no rewrite); they count
            # as committed now, so none is evicted for age on the upgrade.
            now = int(clock())
            db.execute(f"ALTER TABLE records ADD COLUMN at INTEGER NOT NULL DEFAULT {now}")
        if "size" not in columns:
            db.execute("ALTER TABLE records ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
            n = db.execute("UPDATE records SET size = length(body)").rowcount
            log.info("journal %s: migrated %d rows (commit time, size columns)", path, n)


def migrate_part_results(db: sqlite3.Connection) -> None:
    """Journals from before the station gate lack ``part_serials.result`` (NULL on old rows:
    their serials count as "no OK part record known" for a route rule)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(part_serials)")}
    if "result" not in columns:
        with db:
            db.execute("ALTER TABLE part_serials ADD COLUMN result TEXT")


def set_meta(db: sqlite3.Connection, key: str, value: int | str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
        (key, str(value)),
    )


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
