"""PostgreSQL backend (psycopg 3). Same tables as SQLite; ``body`` stays JSON *text* rather
than ``jsonb`` because ``jsonb`` refuses ``\\u0000``, which garbled scans legitimately contain
(``body::jsonb`` works in ad-hoc queries of normal rows)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

from trace_store.schema import ddl
from trace_store.storage import Storage, StorageError, StorageUnavailable

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - depends on the install
    raise StorageError("PostgreSQL needs psycopg: pip install 'edge-agent[store]'") from exc

CONNECT_TIMEOUT = 10  # seconds; libpq's own default is to wait forever

_PASSWORD = re.compile(r"(://[^:/@]*):[^@]*@")


def redact(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    return _PASSWORD.sub(r"\1:***@", url)


class PostgresStorage(Storage):
    greatest = "GREATEST"
    _undecoded = "CASE WHEN j IS NULL THEN body END"

    def _documents(self, columns: str, where: str) -> str:
        # jsonb refuses \u0000 (a garbled scan in a context): such bodies come undecoded.
        # OFFSET 0 keeps the subquery whole, so each body is converted once, not per field.
        return (
            f"(SELECT {columns}, CASE WHEN strpos(body, '\\u0000') = 0 THEN body::jsonb END "
            f"AS j FROM records WHERE {where} OFFSET 0) AS d"
        )

    def _json_at(self, keys: Sequence[str], document: str = "j") -> tuple[str, list[Any]]:
        return f"({document} #>> ?)", [list(keys)]

    _raw_body = "CASE WHEN strpos(body, '\\u0000') > 0 THEN body END"

    def _body_at(self, keys: Sequence[str]) -> tuple[str, list[Any]]:
        # json, not jsonb: for one field, checking the text once costs half of building
        # jsonb's tree (measured: 2,000 bodies in 11 ms against 18-29 ms).
        return "CASE WHEN strpos(body, '\\u0000') = 0 THEN (body::json #>> ?) END", [list(keys)]

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self._url = url
        try:
            # autocommit: transactions are only the explicit ``transaction()`` blocks, so an
            # idle store never holds one open.
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise StorageError(f"{redact(url)}: {exc}".strip()) from exc
        info = self._conn.info
        self._location = f"postgresql {info.user}@{info.host}:{info.port}/{info.dbname}"
        try:
            if read_only:
                self._conn.read_only = True
                row = self._conn.execute(
                    "SELECT to_regclass('records'), to_regclass('genealogy'), to_regclass('agents')"
                ).fetchone()
                if row is None or None in row:
                    raise StorageError(f"{self.location}: not a trace store database")
                [(parts,)] = self._execute("SELECT to_regclass('parts')")
                self._parts = parts is not None
            else:
                self._create_schema(
                    ddl(
                        integer="BIGINT",
                        blob="BYTEA",
                        identity="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                        real="DOUBLE PRECISION",
                    )
                )
        except psycopg.Error as exc:
            self._conn.close()
            raise StorageError(f"{self.location}: {exc}") from exc
        except StorageError:
            self._conn.close()
            raise

    @property
    def location(self) -> str:
        return self._location

    def _rekey(self, table: str, create: str, columns: str, key: str) -> None:
        # PostgreSQL changes a primary key in place (a new column with a constant default
        # costs no rewrite; the key's index is built again).
        self._execute(f"ALTER TABLE {table} ADD COLUMN epoch TEXT NOT NULL DEFAULT ''")
        self._execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
        self._execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({key})")

    def _has(self, kind: str, name: str) -> bool:
        rows = self._execute("SELECT to_regclass(?)", (name,))
        return bool(rows and rows[0][0] is not None)

    def close(self) -> None:
        self._conn.close()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self._conn.execute(_pg(sql), params)
        return cur.fetchall() if cur.description is not None else []

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        with self._conn.cursor() as cur:
            cur.executemany(_pg(sql), rows)  # pipelined: one round trip for the lot
            return max(cur.rowcount, 0)

    def _stream(self, sql: str, size: int) -> Iterator[list[tuple[Any, ...]]]:
        # A server-side cursor (inside the caller's transaction): the rows come ``size`` at a
        # time instead of all at once into memory.
        with self._conn.cursor(name="trace_store_stream") as cur:
            cur.execute(_pg(sql))
            while rows := cur.fetchmany(size):
                yield rows

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            with self._conn.transaction():
                yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # The server went away, or refuses for a reason of its own (shutdown, disk full):
            # the same write may succeed once it is back. Data errors propagate unchanged.
            raise StorageUnavailable(f"{redact(self._url)}: {exc}".strip()) from exc


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")
