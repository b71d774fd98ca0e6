"""The quality tables, created beside the trace tables whenever the store's database is opened
for writing (``storage.ddl``): ``CREATE TABLE IF NOT EXISTS``, so a database made by an
earlier version gets them at its next start and nothing else changes.

- ``quality_counter``: one row, ``version``: the change counter of blocks (contract section 1:
  it grows with every block or release, is never reused, survives restarts). Taking the next
  value is an upsert of that row, which locks it: two writers (the CLI and the workbench
  at once) serialize on it in both backends and can never draw the same number. The row is
  made by the first block, not here: every statement here must be a no-op on a database that
  has the tables, or each open would take SQLite's write lock.
- ``quality_blocks``: what is blocked now, one row per (kind, key).
- ``quality_audit``: every change (blocks, releases, sign-offs), never updated or deleted:
  who, when, why, what, and the blocked set's version after it.
- ``quality_reports``: the recall scope computed at each block, with its sign-off.
- ``quality_alerts``: every transition of a rule (firing, ok) with its evidence.
"""

from __future__ import annotations

KINDS = ("lot", "serial", "product")
"""What can be blocked; the blocked set's lists are the plurals (``lots``, ...)."""


def ddl(integer: str, identity: str) -> list[str]:
    """The quality tables in the dialect's words (see ``storage.ddl``)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS quality_counter (
            id {integer} PRIMARY KEY,
            version {integer} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS quality_blocks (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            reason TEXT NOT NULL,
            by_user TEXT NOT NULL,
            since TEXT NOT NULL,
            version {integer} NOT NULL,
            known INTEGER NOT NULL,
            PRIMARY KEY (kind, key))""",
        f"""CREATE TABLE IF NOT EXISTS quality_audit (
            id {identity},
            version {integer} NOT NULL,
            at TEXT NOT NULL,
            by_user TEXT NOT NULL,
            action TEXT NOT NULL,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS quality_reports (
            id {identity},
            version {integer} NOT NULL,
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            made_at TEXT NOT NULL,
            made_by TEXT NOT NULL,
            reason TEXT NOT NULL,
            serials {integer} NOT NULL,
            scope TEXT NOT NULL,
            signed_by TEXT,
            signed_at TEXT,
            sign_note TEXT)""",
        "CREATE INDEX IF NOT EXISTS quality_reports_key ON quality_reports (kind, key)",
        f"""CREATE TABLE IF NOT EXISTS quality_alerts (
            id {identity},
            rule TEXT NOT NULL,
            key TEXT NOT NULL,
            state TEXT NOT NULL,
            since TEXT NOT NULL,
            at TEXT NOT NULL,
            message TEXT NOT NULL,
            evidence TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS quality_alerts_rule ON quality_alerts (rule, id)",
    ]
