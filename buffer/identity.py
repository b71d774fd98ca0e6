"""The journal's identity (docs/delivery.md, "The journal's identity"): what makes a record's
key ``(agent, epoch, seq)`` unique forever, whatever happens to the file.

- ``meta.journal_id``: a random id made with the file and kept for its life. It names the file
  (which PC, which copy) for people and for the duplicate-agent check; it is not in the key.
- ``epochs``: every opening of the file draws a new random epoch id; the records appended until
  the next opening belong to it (from ``first_seq`` on). A copy of the file, a restored backup,
  a second PC started on the same image: each opens it, so each numbers its new records in an
  epoch of its own, and no two different records can ever share a key. Rows that were in the
  file before keep their epoch: they are the same records wherever a copy sends them.
- A journal an older version wrote (format 1) keeps its seqs and rows; they form the legacy
  epoch ``''`` and go out as that version sent them, so a receiver that has them recognizes
  them. Opening it gives it an id and its first real epoch.

Plain functions on a connection, called on the journal's thread.
"""

from __future__ import annotations

import logging
import re
import secrets
import sqlite3
from pathlib import Path

from buffer.journal import LEGACY_EPOCH, Epoch, JournalIdentity
from buffer.schema import FORMAT, set_meta, utc_now
from kernel.errors import BufferError_, StartupError

log = logging.getLogger("buffer.sqlite")  # the journal's one logger (see buffer/schema.py)

ID = re.compile(r"^[0-9a-f]{32}$")
"""A journal or epoch id: 128 random bits, as 32 lower-case hex digits."""


class JournalTooNew(BufferError_, StartupError):
    """The journal was written by a newer version in a format this one cannot read."""


def new_id() -> str:
    return secrets.token_hex(16)


def open_identity(
    db: sqlite3.Connection, path: Path, last_seq: int, *, fresh: bool
) -> tuple[JournalIdentity, list[tuple[str, str]]]:
    """Read (or make, or repair) the identity and open a new epoch at ``last_seq + 1``.
    ``fresh``: the file was just made (a damaged one's replacement) and holds no legacy rows.
    Returns the identity and the alarms to raise. Raises ``JournalTooNew``."""
    problems: list[str] = []
    meta = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('format', 'journal_id')"))
    fmt = _format(meta.get("format"), path, problems)
    journal = meta.get("journal_id")
    if journal is None or not ID.match(journal):
        if journal is not None:
            problems.append(f"its id {journal[:40]!r} is not an id; it gets a new one")
        journal = new_id()
        if not fresh and last_seq and fmt == 1:
            log.info("journal %s: from an older version, gets the id %s", path, journal)
    lowest: int | None = db.execute("SELECT min(seq) FROM records").fetchone()[0]
    epochs = _epochs(db, problems)
    stored = epochs is not None and bool(epochs)  # else the table is written anew
    if lowest is not None and (epochs is None or (not epochs and fmt >= 2)):
        # The epoch of the rows in the file cannot be told: they go out under a new epoch of
        # their own. A receiver may then hold some of them twice, never drop one.
        orphan = Epoch(new_id(), 1)
        problems.append(
            f"the epochs of its rows (seqs up to {last_seq}) are unreadable; they are sent "
            f"under a new epoch {orphan.id}, so the trace store may keep some of them twice"
        )
        epochs = [orphan]
    elif not epochs and lowest is not None and not fresh:
        epochs = [Epoch(LEGACY_EPOCH, 1)]  # rows of a version before identities
    opening = Epoch(new_id(), last_seq + 1)
    kept = [e for e in _still_holding(epochs or [], lowest) if e.first < opening.first]
    now = utc_now()
    with db:
        if stored:  # the ones kept keep their row (when opened, by which agent)
            db.execute(
                f"DELETE FROM epochs WHERE epoch NOT IN ({', '.join('?' * len(kept))})",
                [e.id for e in kept],
            )
        else:
            db.execute("DELETE FROM epochs")
            db.executemany(
                "INSERT INTO epochs (epoch, first_seq, opened_at) VALUES (?, ?, ?)",
                [(e.id, e.first, now) for e in kept],
            )
        db.execute(
            "INSERT INTO epochs (epoch, first_seq, opened_at) VALUES (?, ?, ?)",
            (opening.id, opening.first, now),
        )
        set_meta(db, "journal_id", journal)
        set_meta(db, "format", FORMAT)
    return JournalIdentity(journal, (*kept, opening)), identity_alarms(path, problems)


def identity_alarms(path: Path, problems: list[str]) -> list[tuple[str, str]]:
    """The ``journal_identity`` alarm for what was found wrong with the identity."""
    if not problems:
        return []
    message = f"journal {path} identity: " + "; ".join(problems) + ". Nothing was deleted"
    log.error("%s", message)
    return [("journal_identity", message)]


def claim(db: sqlite3.Connection, epoch: str, agent: str) -> dict[str, tuple[int, int]]:
    """Record ``agent`` as the writer of ``epoch``; for every other agent id whose epochs still
    hold rows here: (rows, highest seq)."""
    with db:
        db.execute("UPDATE epochs SET agent = ? WHERE epoch = ?", (agent, epoch))
    rows = db.execute("SELECT first_seq, agent FROM epochs ORDER BY first_seq").fetchall()
    others: dict[str, tuple[int, int]] = {}
    for i, (first, writer) in enumerate(rows):
        if writer is None or writer == agent:
            continue
        end = rows[i + 1][0] - 1 if i + 1 < len(rows) else (1 << 63) - 1
        count, top = db.execute(
            "SELECT count(*), max(seq) FROM records WHERE seq BETWEEN ? AND ?", (first, end)
        ).fetchone()
        if count:
            had, high = others.get(writer, (0, 0))
            others[writer] = (had + int(count), max(high, int(top)))
    return others


def rekey(db: sqlite3.Connection, epoch: str, journal: str) -> JournalIdentity:
    """Give the rows of ``epoch`` a new random epoch id; returns the identity after."""
    fresh = new_id()
    with db:
        changed = db.execute("UPDATE epochs SET epoch = ? WHERE epoch = ?", (fresh, epoch))
    if changed.rowcount:
        log.warning("journal epoch %r renamed %s: its rows go out as new records", epoch, fresh)
    found = _epochs(db, [])
    return JournalIdentity(journal, tuple(found or ()))


def _format(value: str | None, path: Path, problems: list[str]) -> int:
    if value is None:
        return 1
    try:
        fmt = int(value)
    except ValueError:
        problems.append(f"its format {value[:40]!r} is not a number")
        return FORMAT
    if fmt > FORMAT:
        raise JournalTooNew(
            f"journal {path} was written by a newer edge-agent (journal format {fmt}; this "
            f"version reads up to {FORMAT}) and was left as it is. Install the newer version "
            f"again; or, to run this one with an empty journal, move the file aside (mv {path} "
            f"{path}.newer, with its -wal and -shm files) and keep it: the newer version sends "
            "its records with `edge-agent buffer salvage`"
        )
    return fmt


def _epochs(db: sqlite3.Connection, problems: list[str]) -> list[Epoch] | None:
    """The epochs as stored, in seq order; None if they do not make sense."""
    try:
        rows = db.execute("SELECT epoch, first_seq FROM epochs ORDER BY first_seq").fetchall()
    except sqlite3.DatabaseError as exc:
        problems.append(f"its epochs cannot be read ({exc})")
        return None
    epochs: list[Epoch] = []
    for i, (epoch, first) in enumerate(rows):
        legacy_first = epoch == LEGACY_EPOCH and i == 0
        if not isinstance(epoch, str) or not (legacy_first or ID.match(epoch)):
            return None
        if not isinstance(first, int) or first < 1 or (epochs and first <= epochs[-1].first):
            return None
        epochs.append(Epoch(epoch, first))
    return epochs


def _still_holding(epochs: list[Epoch], lowest: int | None) -> list[Epoch]:
    """The epochs from the one holding the lowest row on: older ones hold nothing now."""
    if lowest is None:
        return []
    keep = 0
    for i, e in enumerate(epochs):
        if e.first <= lowest:
            keep = i
    return epochs[keep:]
