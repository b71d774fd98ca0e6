"""Durable station state: what each station knew as of its last committed record (its context
and part counter, ``station_state``) and the serials that have part records (``part_serials``,
for repeat marking after a restart).

Both are written in the same transaction as the records that carry them, so after a crash the
restored state is exactly that of the last committed record. ``StationBook`` does the writing,
on the journal's thread; ``load`` reads both back at start.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

PRUNE_EVERY = 10_000
"""Part records between two prunings of ``part_serials`` (kept to ``max_serials`` per station)."""

States = dict[str, dict[str, Any]]
"""{station: state} as the binder gave it with a record."""
Parts = list[tuple[str, str, int, str | None]]
"""(station, serial, seq, result) of part records."""


class StationBook:
    """Writes station state and part serials inside a commit; runs on the journal's thread."""

    def __init__(self, max_serials: int) -> None:
        self.max_serials = max_serials
        self._parts_since_prune = 0

    def write(self, db: sqlite3.Connection, states: States, parts: Parts) -> None:
        """Inside the commit's transaction."""
        if states:
            db.executemany(
                "INSERT INTO station_state (station, state) VALUES (?, ?) "
                "ON CONFLICT(station) DO UPDATE SET state=excluded.state",
                [(k, json.dumps(v, default=dict)) for k, v in states.items()],
            )
        if parts:
            db.executemany(
                "INSERT INTO part_serials (station, serial, parts, last_seq, result) "
                "VALUES (?, ?, 1, ?, ?) ON CONFLICT(station, serial) "
                "DO UPDATE SET parts = parts + 1, last_seq = excluded.last_seq, "
                "result = excluded.result",
                parts,
            )
            if self._parts_since_prune + len(parts) >= PRUNE_EVERY:
                _prune(db, self.max_serials)

    def committed(self, parts: int) -> None:
        """The transaction that wrote ``parts`` part records is in the file."""
        self._parts_since_prune = (self._parts_since_prune + parts) % PRUNE_EVERY


def load(db: sqlite3.Connection, max_serials: int) -> tuple[States, dict[str, dict[str, int]]]:
    """{station: state} and, per station, the most recent ``max_serials`` serials with their
    part-record counts (oldest first)."""
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
            (station, max_serials),
        )
        parts[station] = {serial: int(n) for serial, n in rows}
    return states, parts


def load_results(
    db: sqlite3.Connection, stations: list[str], max_serials: int
) -> dict[str, dict[str, str | None]]:
    """Per station of ``stations``, the most recent ``max_serials`` serials with the result
    of their latest part record (oldest first): what a station gate's route rule reads."""
    out: dict[str, dict[str, str | None]] = {}
    for station in stations:
        rows = db.execute(
            "SELECT serial, result FROM (SELECT serial, result, last_seq FROM part_serials "
            "WHERE station = ? ORDER BY last_seq DESC LIMIT ?) ORDER BY last_seq",
            (station, max_serials),
        )
        out[station] = {serial: result for serial, result in rows}
    return out


def _prune(db: sqlite3.Connection, keep: int) -> None:
    for (station,) in db.execute("SELECT DISTINCT station FROM part_serials").fetchall():
        db.execute(
            "DELETE FROM part_serials WHERE station = ? AND last_seq < (SELECT min(last_seq) FROM "
            "(SELECT last_seq FROM part_serials WHERE station = ? ORDER BY last_seq DESC LIMIT ?))",
            (station, station, keep),
        )
