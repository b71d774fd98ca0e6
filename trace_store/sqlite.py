"""SQLite backend: one file, WAL, ``synchronous=FULL`` (a commit survives a power cut, which
is what lets the store confirm it to the agent)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trace_store.schema import ddl
from trace_store.storage import Storage, StorageError, StorageUnavailable

BUSY_TIMEOUT_MS = 5000  # a query command reading the file never blocks us longer than this


class SqliteStorage(Storage):
    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self.path = path
        try:
            if read_only:
                if not Path(path).is_file():
                    raise StorageError(f"{path}: no such database")
                uri = f"file:{Path(path).resolve()}?mode=ro"
                # check_same_thread off: the workbench's pool hands a reader to one worker
                # thread at a time, not always the one that opened it.
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                # check_same_thread off: the store opens the file in the caller's thread (so a
                # bad path fails at start-up) and then hands it to its writer thread; only one
                # thread uses it at a time.
                conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn = conn
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not read_only:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StorageError(f"{path}: cannot switch to WAL (journal_mode {mode})")
                conn.execute("PRAGMA synchronous = FULL")
                self._create_schema(
                    ddl(
                        integer="INTEGER",
                        blob="BLOB",
                        identity="INTEGER PRIMARY KEY AUTOINCREMENT",
                        real="REAL",
                    )
                )
            else:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
                if not {"records", "genealogy", "agents"} <= tables:
                    raise StorageError(f"{path}: not a trace store database")
                self._parts = "parts" in tables
        except sqlite3.Error as exc:
            with contextlib.suppress(AttributeError, sqlite3.Error):
                self._conn.close()
            raise StorageError(f"{path}: {exc}") from exc
        except StorageError:
            with contextlib.suppress(AttributeError, sqlite3.Error):
                self._conn.close()
            raise

    @property
    def location(self) -> str:
        return self.path

    def close(self) -> None:
        self._conn.close()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return self._conn.executemany(sql, rows).rowcount

    def _stream(self, sql: str, size: int) -> Iterator[list[tuple[Any, ...]]]:
        cursor = self._conn.execute(sql)
        while rows := cursor.fetchmany(size):
            yield rows

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        conn = self._conn
        try:
            conn.execute("BEGIN")
        except sqlite3.OperationalError as exc:  # locked, I/O error, disk full
            raise StorageUnavailable(f"{self.path}: {exc}") from exc
        try:
            yield
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            # OperationalError is the environment (locked, full, I/O), not the data: the same
            # write may well succeed later.
            _rollback(conn)
            raise StorageUnavailable(f"{self.path}: {exc}") from exc
        except BaseException:
            _rollback(conn)
            raise


def _rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")
