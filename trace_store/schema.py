"""The store's tables and their migrations: the DDL both backends run (in the dialect's words)
and what the first start of a new version does to an existing database.

- Schema 1 -> 2 (``keys.migrate_v1``): records and genealogy keyed by (agent, epoch, seq).
- Schema 2 -> 3 (``parts.backfill``): the part facts table, filled from the part records;
  ``agent_status`` (each agent's last status message), empty until agents speak.
- An index this version adds is built on an existing database with a log line before and
  after (on years of records it takes minutes: docs/workbench.md, "Performance at plant
  scale").

Everything runs in one transaction when the store opens the database: a failed or
interrupted upgrade leaves the database as it was.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from trace_store import agent_status, keys, parts
from trace_store.quality import tables as quality_tables

if TYPE_CHECKING:
    from trace_store.storage import Storage

SCHEMA_VERSION = 3
"""2 keyed records by (agent, epoch, seq) and added ``epochs`` and ``conflicts``; 3 added
``parts``. An older database is migrated when the store opens it."""
META_DDL = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_NEW_INDEX = re.compile(r"CREATE INDEX IF NOT EXISTS (\w+) ON (\w+)")

log = logging.getLogger(__name__)


def create(storage: Storage, ddl: Sequence[str]) -> None:
    """Create the schema ``ddl`` (``ddl()`` plus the backend's own), migrating an older one."""
    from trace_store.storage import StorageError

    with storage._transaction():
        storage._execute(META_DDL)
        rows = storage._execute("SELECT value FROM meta WHERE key = 'schema_version'")
        version = int(rows[0][0]) if rows else None
        if version is not None and version > SCHEMA_VERSION:
            raise StorageError(
                f"{storage.location}: schema version {rows[0][0]} is newer than this "
                f"trace store ({SCHEMA_VERSION}); upgrade edge-agent"
            )
        if version == 1:
            keys.migrate_v1(storage, ddl)
        for statement in ddl:
            index = _NEW_INDEX.match(statement) if version is not None else None
            if index is not None and not storage._has_index(index.group(1)):
                build_index(storage, statement, index.group(1), index.group(2))
            else:
                storage._execute(statement)
            if statement.startswith(parts.TABLE) and version is not None and version < 3:
                # Before its indexes: filling a bare table, then building them, is faster.
                parts.backfill(storage)
        if version == 1:
            keys.adopt_v1_watermarks(storage)
        if version != SCHEMA_VERSION:
            storage._execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )


def build_index(storage: Storage, statement: str, name: str, table: str) -> None:
    """An index this version adds, built on an existing database: on years of records that
    takes minutes, so say so."""
    log.warning(
        "%s: building index %s on %s (first start after an upgrade: on a large database "
        "this may take minutes; the store starts when it is done)",
        storage.location, name, table,
    )  # fmt: skip
    started = time.monotonic()
    storage._execute(statement)
    log.warning("%s: index %s built in %.1f s", storage.location, name, time.monotonic() - started)


def rebuild(storage: Storage, table: str, create: str, columns: str) -> None:
    """Schema 1 -> 2 where a primary key cannot change (SQLite): ``table`` is copied into its
    new form, every row of the legacy epoch ``''``."""
    storage._execute(f"ALTER TABLE {table} RENAME TO {table}_v1")
    storage._execute(create)
    storage._execute(f"INSERT INTO {table} ({columns}, epoch) SELECT {columns}, '' FROM {table}_v1")
    storage._execute(f"DROP TABLE {table}_v1")


def ddl(*, integer: str, blob: str, identity: str, real: str) -> list[str]:
    """The schema, with the dialect's words for 64-bit integers, bytes, an auto-numbered
    key and floating point."""
    return [
        META_DDL,
        f"""CREATE TABLE IF NOT EXISTS records (
            agent TEXT NOT NULL,
            seq {integer} NOT NULL,
            site TEXT NOT NULL,
            line TEXT NOT NULL,
            station TEXT NOT NULL,
            kind TEXT NOT NULL,
            ts TEXT NOT NULL,
            serial TEXT,
            body TEXT NOT NULL,
            received_at TEXT NOT NULL,
            epoch TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (agent, epoch, seq))""",
        # records_serial (serial) was the first serial index: records_serial_kind serves
        # every lookup by serial as well (its first column), so it only cost writes and space.
        "DROP INDEX IF EXISTS records_serial",
        # The workbench's lookups (docs/workbench.md, "Performance at plant scale"): a serial's
        # records, or its part records without its readings; a station's parts in a time
        # window, in page order.
        "CREATE INDEX IF NOT EXISTS records_serial_kind ON records (serial, kind) "
        "WHERE serial IS NOT NULL",
        # records_station_kind_ts lacked the epoch: replaced by records_station_kind_key.
        "DROP INDEX IF EXISTS records_station_kind_ts",
        "CREATE INDEX IF NOT EXISTS records_station_kind_key ON records "
        "(station, kind, ts, agent, epoch, seq)",
        # SQLite's expression index on the parts' result and repeat (schema 2): the parts
        # table answers the dashboards now. Dropped before the backfill, which must not
        # walk it.
        "DROP INDEX IF EXISTS records_part_result",
        *parts.ddl(integer),
        *agent_status.ddl(integer),
        f"""CREATE TABLE IF NOT EXISTS genealogy (
            agent TEXT NOT NULL,
            seq {integer} NOT NULL,
            parent TEXT NOT NULL,
            child_kind TEXT NOT NULL,
            child TEXT NOT NULL,
            how TEXT NOT NULL,
            site TEXT NOT NULL,
            line TEXT NOT NULL,
            station TEXT NOT NULL,
            ts TEXT NOT NULL,
            product TEXT,
            quantity {real},
            unit TEXT,
            epoch TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (agent, epoch, seq, child_kind, child))""",
        "CREATE INDEX IF NOT EXISTS genealogy_child ON genealogy (child_kind, child)",
        "CREATE INDEX IF NOT EXISTS genealogy_parent ON genealogy (parent)",
        f"""CREATE TABLE IF NOT EXISTS agents (
            agent TEXT PRIMARY KEY,
            site TEXT NOT NULL,
            line TEXT NOT NULL,
            watermark {integer} NOT NULL DEFAULT 0,
            updated_at TEXT NOT NULL,
            epoch TEXT NOT NULL DEFAULT '',
            journal TEXT)""",
        *keys.ddl(integer),
        *quality_tables.ddl(integer, identity),
        f"""CREATE TABLE IF NOT EXISTS rejected (
            id {identity},
            received_at TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            topic TEXT NOT NULL,
            size {integer} NOT NULL,
            agent TEXT,
            excerpt TEXT NOT NULL,
            payload {blob})""",
        "CREATE INDEX IF NOT EXISTS rejected_reason ON rejected (reason, received_at)",
    ]
