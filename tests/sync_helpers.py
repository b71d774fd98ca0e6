"""MqttSync's tests' shared helpers: a fast-retrying config, a sync on a journal, running it
in a task, appending readings, the records of captured messages, and a bounded wait for the
journal to empty. The ``buffer`` fixture (a started SqliteBuffer) is loaded by conftest."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from buffer.sqlite import SqliteBuffer
from kernel.model import RecordDraft, RecordKind
from sync.config import MqttConfig
from sync.mqtt import MqttSync
from tests.mqtt_helpers import Received
from tests.waiting import bounded

AGENT = "agent-7"
SITE = "plant-a"
LINE = "line-3"
STATIONS = ("op10", "op20", "op30")


def config(port: int, **overrides: Any) -> MqttConfig:
    """Fast retries for tests; small batches so a few hundred records make many messages."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "backoff_initial": 0.02,
        "backoff_max": 0.1,
        "connect_timeout": 2.0,
        "max_inflight": 4,
        "batch_max_records": 25,
        "status": False,  # these tests look at record messages only
    }
    values.update(overrides)
    return MqttConfig(**values)


def new_sync(buffer: SqliteBuffer, port: int, **overrides: Any) -> MqttSync:
    return MqttSync(config(port, **overrides), agent_id=AGENT, site=SITE, line=LINE, buffer=buffer)


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[SqliteBuffer]:
    buf = SqliteBuffer(tmp_path / "journal.db", synchronous="NORMAL")
    await buf.start()
    try:
        yield buf
    finally:
        await buf.stop()


@asynccontextmanager
async def running(sync: MqttSync) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``sync`` in a task; cancel it and wait for it on the way out."""
    task = asyncio.create_task(sync.run(), name="mqtt-sync")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def append(buffer: SqliteBuffer, count: int, stations: Sequence[str] = STATIONS) -> None:
    """Append ``count`` readings, stations round-robin, and wait for the commit."""
    first = buffer.last_assigned_seq + 1
    buffer.append(
        [
            RecordDraft(
                stations[(first + i) % len(stations)],
                RecordKind.READINGS,
                {
                    "kind": "readings",
                    "station": stations[(first + i) % len(stations)],
                    "n": first + i,
                },
            )
            for i in range(count)
        ]
    )
    await buffer.flush()


def records(messages: Iterable[Received]) -> list[dict[str, Any]]:
    """The records of every record message (the agent's status messages are skipped)."""
    return [r for m in messages if m.topic.endswith("/records") for r in m.payload["records"]]


async def drained(buffer: SqliteBuffer, within: float = 20.0) -> None:
    """Until the journal is empty (every record confirmed and deleted): ``wait_empty`` has no
    deadline of its own, so a sync that never delivers fails here saying so."""
    depth = buffer.depth
    await bounded(buffer.wait_empty(), within, f"the journal to empty (depth was {depth})")
