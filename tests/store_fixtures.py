"""The trace store's fixtures, loaded by ``tests/conftest.py``: a session PostgreSQL server,
a database of each backend, storage on it, running stores and a publisher on the test's
broker, and the store the real agent chain fills once per session for the workbench tests."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mqtt_helpers import Mosquitto
from tests.pg_helpers import PostgresServer, postgres_bindir
from tests.store_helpers import WAIT, Publisher, StoreFactory
from trace_store.config import StoreConfig
from trace_store.service import TraceStore
from trace_store.storage import Storage, open_storage


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql)"
        )
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend: a SQLite path or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "trace.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> str:
    return str(tmp_path / "trace.db")


@pytest.fixture
def refusing_seq_5(sqlite_db: str) -> str:
    """A SQLite store database whose records table refuses seq 5: a real constraint failure
    (a trigger), as a database with a check the record breaks would give."""
    with open_storage(sqlite_db):
        pass  # creates the schema
    db = sqlite3.connect(sqlite_db)
    try:
        db.execute(
            "CREATE TRIGGER refuse_seq_5 BEFORE INSERT ON records WHEN NEW.seq = 5 "
            "BEGIN SELECT RAISE(ABORT, 'the database refuses seq 5'); END"
        )
        db.commit()
    finally:
        db.close()
    return sqlite_db


@pytest.fixture
def storage(db: str) -> Iterator[Storage]:
    s = open_storage(db)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def stores(mosquitto: Mosquitto) -> Iterator[StoreFactory]:
    """Start trace stores on ``mosquitto``; every one still running is stopped at teardown."""
    started: list[TraceStore] = []

    def start(db: str, **overrides: Any) -> TraceStore:
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": mosquitto.port,
            "db": db,
            "store_id": "test",
            "confirm_interval": 0.05,
            "backoff_initial": 0.02,
            "backoff_max": 0.2,
            "connect_timeout": 5.0,
        }
        values.update(overrides)
        store = TraceStore(StoreConfig(**values))
        store.start()
        started.append(store)
        assert store.wait_ready(WAIT), "trace store did not subscribe"
        return store

    try:
        yield start
    finally:
        for store in started:
            store.stop()


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Publisher]:
    pub = Publisher(mosquitto.port)
    try:
        yield pub
    finally:
        pub.close()


@pytest.fixture(scope="session")
def chain_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store the real chain filled (once per test session, shared by the workbench's HTTP
    and browser tests)."""
    from tests.workbench_chain import fill_store  # the agent chain: only for tests using it

    folder = tmp_path_factory.getbasetemp() / "workbench-chain"
    db = folder / "trace.db"
    if not db.exists():
        asyncio.run(fill_store(folder, parts=36))
    return str(db)
