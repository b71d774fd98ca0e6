"""Blocking and releasing lots, serials and products; the audit trail; the recall reports.

Every change is one transaction on the store's database: the change counter's next value
(``tables.py``), the ``quality_blocks`` row, an audit row and, for a block, the recall report
computed just before it. The running trace store notices the new counter value and publishes
the blocked set (``publisher.py``); the CLI and the workbench only write the database.

These functions use the storage's own transaction and statements (``Storage._transaction``,
``_execute``), like ``keys.py``: the quality tables are part of the store's schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from trace_store.quality.recall import ScopeRow, known, recall_scope
from trace_store.quality.tables import KINDS
from trace_store.storage import Storage

MAX_REASON = 500
MAX_USER = 200


class QualityError(ValueError):
    """A change that cannot be made as asked (the message says why)."""


@dataclass(frozen=True, slots=True)
class Block:
    kind: str
    key: str
    reason: str
    by: str
    since: str
    version: int
    known: bool  # the store held records of the key when it was blocked


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    version: int  # the blocked set's version after the change
    at: str
    by: str
    action: str  # block | release | sign-off
    kind: str
    key: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Report:
    id: int
    version: int
    kind: str
    key: str
    made_at: str
    made_by: str
    reason: str
    serials: int
    rows: tuple[ScopeRow, ...]
    signed_by: str | None
    signed_at: str | None
    sign_note: str | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a block or release did. ``changed`` False: nothing to do (blocked already, or
    not blocked); ``version`` is then the current one."""

    action: str
    kind: str
    key: str
    changed: bool
    version: int
    known: bool = True
    report: int | None = None
    serials: int = 0
    since: str = ""
    by: str = ""

    @property
    def message(self) -> str:
        what = f"{self.kind} {self.key}"
        if self.action == "block":
            if not self.changed:
                return f"{what} is blocked already (since {self.since}, by {self.by})"
            text = f"{what} blocked (version {self.version}); recall report {self.report}: "
            text += f"{self.serials} serial(s) affected"
            if not self.known:
                text = f"{what} is not in the store yet: blocked anyway (version {self.version})"
            return text
        if not self.changed:
            return f"{what} is not blocked: nothing released"
        return f"{what} released (version {self.version})"


def utc_ms(now: datetime | None = None) -> str:
    """``2026-12-03T21:00:00.000Z``: the blocked set's timestamp form (contract section 1)."""
    moment = now or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def check(kind: str, key: str, reason: str, user: str) -> None:
    problems = []
    if kind not in KINDS:
        problems.append(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if not key or key != key.strip() or len(key) > 512:
        problems.append(f"{kind} {key!r}: empty, longer than 512, or with spaces around it")
    if not reason.strip() or len(reason) > MAX_REASON:
        problems.append(f"a reason is required (at most {MAX_REASON} characters)")
    if not user.strip() or len(user) > MAX_USER:
        problems.append(f"a user is required (at most {MAX_USER} characters)")
    if problems:
        raise QualityError("; ".join(problems))


def version(storage: Storage) -> int:
    """The blocks' change counter (0: nothing was ever blocked)."""
    with storage._transaction():
        rows = storage._execute("SELECT version FROM quality_counter WHERE id = 1")
    return int(rows[0][0]) if rows else 0


def has_tables(storage: Storage) -> bool:
    """False for a database no store of this version has opened for writing yet."""
    try:
        version(storage)
    except Exception:  # the backend's "no such table" (SQLite's arrives as StorageUnavailable)
        return False
    return True


def blocks(storage: Storage) -> list[Block]:
    with storage._transaction():
        rows = storage._execute(
            "SELECT kind, key, reason, by_user, since, version, known FROM quality_blocks "
            "ORDER BY version"
        )
    return [Block(r[0], r[1], r[2], r[3], r[4], int(r[5]), bool(r[6])) for r in rows]


def blocked_set(storage: Storage) -> dict[str, Any]:
    """The blocked set's payload (contract section 1), read in one transaction so the
    version and the lists agree."""
    with storage._transaction():
        counter = storage._execute("SELECT version FROM quality_counter WHERE id = 1")
        rows = storage._execute(
            "SELECT kind, key, reason, by_user, since FROM quality_blocks ORDER BY kind, key"
        )
    out: dict[str, Any] = {"v": 1, "version": int(counter[0][0]) if counter else 0}
    out["at"] = utc_ms()
    for kind in KINDS:
        out[kind + "s"] = [
            {"key": r[1], "reason": r[2], "since": r[4], "by": r[3]} for r in rows if r[0] == kind
        ]
    return out


def audit(storage: Storage, limit: int | None = None) -> list[AuditEntry]:
    """The audit trail, newest first."""
    sql = (
        "SELECT id, version, at, by_user, action, kind, key, reason, detail FROM quality_audit "
        "ORDER BY id DESC"
    )
    params: list[Any] = []
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    with storage._transaction():
        rows = storage._execute(sql, params)
    return [AuditEntry(int(r[0]), int(r[1]), *r[2:]) for r in rows]


def block(storage: Storage, kind: str, key: str, reason: str, user: str) -> Outcome:
    """Block ``key``: allowed for a key the store does not know yet (``Outcome.known``)."""
    check(kind, key, reason, user)
    try:
        return _block(storage, kind, key, reason, user)
    except _Unchanged as exc:
        return exc.outcome


def release(storage: Storage, kind: str, key: str, reason: str, user: str) -> Outcome:
    check(kind, key, reason, user)
    try:
        return _release(storage, kind, key, reason, user)
    except _Unchanged as exc:
        return exc.outcome


def _block(storage: Storage, kind: str, key: str, reason: str, user: str) -> Outcome:
    scope = recall_scope(storage, kind, key)  # before the transaction: it runs its own
    is_known = bool(scope) or known(storage, kind, key)
    now = utc_ms()
    with storage._transaction():
        next_version = _bump(storage)
        held = storage._execute(
            "SELECT since, by_user, version FROM quality_blocks WHERE kind = ? AND key = ?",
            (kind, key),
        )
        if held:
            raise _Unchanged(
                Outcome(
                    "block", kind, key, False, next_version - 1, since=held[0][0], by=held[0][1]
                )
            )
        storage._execute(
            "INSERT INTO quality_blocks (kind, key, reason, by_user, since, version, known) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (kind, key, reason, user, now, next_version, int(is_known)),
        )
        detail = f"{len(scope)} serial(s) in the recall scope"
        if not is_known:
            detail = f"{kind} not in the store yet: blocked anyway"
        _audit(storage, next_version, now, user, "block", kind, key, reason, detail)
        storage._execute(
            "INSERT INTO quality_reports (version, kind, key, made_at, made_by, reason, "
            "serials, scope) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                next_version,
                kind,
                key,
                now,
                user,
                reason,
                len(scope),
                json.dumps([r.as_json() for r in scope]),
            ),
        )
        report = storage._execute(
            "SELECT id FROM quality_reports WHERE version = ? AND kind = ? AND key = ?",
            (next_version, kind, key),
        )
    return Outcome(
        "block", kind, key, True, next_version, is_known, int(report[0][0]), len(scope), now, user
    )


def _release(storage: Storage, kind: str, key: str, reason: str, user: str) -> Outcome:
    now = utc_ms()
    with storage._transaction():
        next_version = _bump(storage)
        held = storage._execute(
            "SELECT since, by_user FROM quality_blocks WHERE kind = ? AND key = ?", (kind, key)
        )
        if not held:
            raise _Unchanged(Outcome("release", kind, key, False, next_version - 1))
        storage._execute("DELETE FROM quality_blocks WHERE kind = ? AND key = ?", (kind, key))
        detail = f"blocked since {held[0][0]} by {held[0][1]}"
        _audit(storage, next_version, now, user, "release", kind, key, reason, detail)
    return Outcome("release", kind, key, True, next_version, since=held[0][0], by=held[0][1])


def reports(storage: Storage, kind: str | None = None, key: str | None = None) -> list[Report]:
    """Recall reports, newest first; of one blocked key when given."""
    sql = (
        "SELECT id, version, kind, key, made_at, made_by, reason, serials, scope, signed_by, "
        "signed_at, sign_note FROM quality_reports"
    )
    params: list[Any] = []
    if kind is not None and key is not None:
        sql += " WHERE kind = ? AND key = ?"
        params += [kind, key]
    with storage._transaction():
        rows = storage._execute(sql + " ORDER BY id DESC", params)
    return [_report(r) for r in rows]


def report(storage: Storage, report_id: int) -> Report | None:
    with storage._transaction():
        rows = storage._execute(
            "SELECT id, version, kind, key, made_at, made_by, reason, serials, scope, "
            "signed_by, signed_at, sign_note FROM quality_reports WHERE id = ?",
            (report_id,),
        )
    return _report(rows[0]) if rows else None


def sign_off(storage: Storage, report_id: int, user: str, note: str = "") -> Report:
    """Record that ``user`` checked the report. Once only: raises QualityError if it was
    signed off already, or does not exist."""
    if not user.strip() or len(user) > MAX_USER:
        raise QualityError(f"a user is required (at most {MAX_USER} characters)")
    now = utc_ms()
    with storage._transaction():
        _lock(storage)
        rows = storage._execute(
            "SELECT kind, key, signed_by, signed_at FROM quality_reports WHERE id = ?",
            (report_id,),
        )
        if not rows:
            raise QualityError(f"no recall report {report_id}")
        kind, key, signed_by, signed_at = rows[0]
        if signed_by is not None:
            raise QualityError(
                f"recall report {report_id} was signed off already by {signed_by} at {signed_at}"
            )
        storage._execute(
            "UPDATE quality_reports SET signed_by = ?, signed_at = ?, sign_note = ? "
            "WHERE id = ? AND signed_by IS NULL",
            (user, now, note, report_id),
        )
        current = storage._execute("SELECT version FROM quality_counter WHERE id = 1")
        _audit(
            storage,
            int(current[0][0]) if current else 0,
            now,
            user,
            "sign-off",
            kind,
            key,
            note,
            f"recall report {report_id}",
        )
    found = report(storage, report_id)
    assert found is not None
    return found


class _Unchanged(Exception):
    """Rolls the transaction (and the counter's bump) back: nothing to change."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def _bump(storage: Storage) -> int:
    # First statement of the transaction: it takes the write lock (SQLite) or the row lock
    # (PostgreSQL) before anything is read, so what follows reads the latest blocks.
    storage._execute(
        "INSERT INTO quality_counter (id, version) VALUES (1, 1) "
        "ON CONFLICT (id) DO UPDATE SET version = quality_counter.version + 1"
    )
    return int(storage._execute("SELECT version FROM quality_counter WHERE id = 1")[0][0])


def _lock(storage: Storage) -> None:
    """Take the write lock first thing in a transaction that reads before it writes: SQLite
    cannot upgrade a read whose snapshot another writer has moved past (it fails at once,
    "database is locked", instead of waiting its busy timeout). A no-op when nothing was
    ever blocked: a sign-off then has no report to sign anyway."""
    storage._execute("UPDATE quality_counter SET version = version WHERE id = 1")


def _audit(
    storage: Storage,
    version_: int,
    at: str,
    user: str,
    action: str,
    kind: str,
    key: str,
    reason: str,
    detail: str,
) -> None:
    storage._execute(
        "INSERT INTO quality_audit (version, at, by_user, action, kind, key, reason, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (version_, at, user, action, kind, key, reason, detail),
    )


def _report(r: tuple[Any, ...]) -> Report:
    rows = tuple(ScopeRow.from_json(d) for d in json.loads(r[8]))
    return Report(
        int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], r[6], int(r[7]), rows, r[9], r[10], r[11]
    )
