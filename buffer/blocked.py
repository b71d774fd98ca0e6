"""The newest blocked set the trace store published (the station gate's local copy), kept in
the journal so the gate decides the same way after a restart with the network down. Plain
functions on the connection, run by the journal's thread."""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocked_set (
    id          INTEGER PRIMARY KEY CHECK (id = 1),  -- one row: the newest set
    version     INTEGER NOT NULL,
    payload     TEXT NOT NULL,   -- the message as received (JSON)
    received_at TEXT NOT NULL
);
"""


def load(db: sqlite3.Connection) -> tuple[int, str] | None:
    """(version, payload) of the set held, or None."""
    row = db.execute("SELECT version, payload FROM blocked_set WHERE id = 1").fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def save(db: sqlite3.Connection, version: int, payload: str, received_at: str) -> bool:
    """Keep the set unless a newer one is already held (saves may land in any order);
    returns whether it was written."""
    with db:
        cur = db.execute(
            "INSERT INTO blocked_set (id, version, payload, received_at) VALUES (1, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET version=excluded.version, payload=excluded.payload, "
            "received_at=excluded.received_at WHERE excluded.version > blocked_set.version",
            (version, payload, received_at),
        )
    return cur.rowcount > 0
