"""A broker that crashes under load and comes back without its sessions (``persistence true``,
killed before an autosave): the agent and the trace store reconnect within about a second of
its return, the store tells the agent it lost its session, and the agent sends again from the
watermark at once, so the backlog is in the store within seconds, not after the agent's
``confirm_timeout`` (docs/delivery.md, "A broker crash")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from buffer.sqlite import SqliteBuffer
from kernel.alarms import Alarms
from kernel.model import RecordDraft, RecordKind
from sync.config import MqttConfig
from sync.mqtt import MqttSync
from tests.mqtt_helpers import Mosquitto
from tests.waiting import wait_until
from trace_store.config import StoreConfig
from trace_store.service import TraceStore
from trace_store.storage import open_storage

log = logging.getLogger(__name__)

AGENT = "line3-pc1"
OUTAGE = 4.0  # seconds the broker stays dead (the benchmark runs 60)
RATE = 100  # records per second offered meanwhile
DRAIN_LIMIT = 8.0  # seconds after the broker's return; the agent's confirm_timeout is 30


@asynccontextmanager
async def load(journal: SqliteBuffer, rate: float) -> AsyncIterator[None]:
    """Records appended at ``rate`` per second (in bursts of 5), as a line makes them."""

    async def produce() -> None:
        i = 0
        while True:
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            journal.append(
                [
                    RecordDraft(
                        "op10",
                        RecordKind.READINGS,
                        {"kind": "readings", "station": "op10", "ts": now, "ctx": {}, "n": i + k},
                    )
                    for k in range(5)
                ]
            )
            i += 5
            await asyncio.sleep(5 / rate)  # the pace of the line, not a wait for a state

    task = asyncio.create_task(produce(), name="load")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("store_back", ["with_the_broker", "after_the_agent"])
async def test_a_crashed_broker_is_drained_within_seconds_of_its_return(
    tmp_path: Path, store_back: str
) -> None:
    """``after_the_agent``: the store's link comes back only once the agent has reconnected
    and published into the void (the store's subscription was lost with the broker); the
    agent learns it from the store's confirmation, live, and sends again at once."""
    broker = Mosquitto(tmp_path / "mosquitto")  # persistence true, autosave every 30 min
    broker.start()
    # Default backoffs (the store's up to 10 s, the agent's up to 30 s), confirm_timeout 30 s.
    config = StoreConfig(host="127.0.0.1", port=broker.port, db=str(tmp_path / "trace.db"))
    store = TraceStore(config)
    store.start()
    journal = SqliteBuffer(tmp_path / "buffer.db", synchronous="NORMAL")
    await journal.start()
    sync = MqttSync(
        MqttConfig(host="127.0.0.1", port=broker.port, confirm="store"),
        agent_id=AGENT,
        site="plant-a",
        line="line-3",
        buffer=journal,
        alarms=Alarms(),
    )
    task = asyncio.create_task(sync.run(), name="sync")
    try:
        assert await asyncio.to_thread(store.wait_ready, 10)
        async with load(journal, RATE):
            await wait_until(lambda: store.watermark(AGENT) >= 200, 10, "steady delivery")
            await asyncio.to_thread(broker.kill)
            if store_back == "after_the_agent":
                await asyncio.to_thread(store.stop)
            await asyncio.sleep(OUTAGE)  # the outage itself, under load
            backlog_at = journal.committed_seq
            await asyncio.to_thread(broker.start)
            if store_back == "after_the_agent":
                await wait_until(lambda: sync.status.connected, 5, "the agent reconnected")
                sent = sync.status.published_records
                await wait_until(
                    lambda: sync.status.published_records > sent, 5, "records into the void"
                )
                store = TraceStore(config)
                store.start()
            back = time.monotonic()
            await wait_until(
                lambda: store.watermark(AGENT) >= backlog_at, DRAIN_LIMIT, "the backlog stored"
            )
            drained = time.monotonic() - back
        await journal.flush()
        last = journal.committed_seq
        await wait_until(lambda: journal.depth == 0, 10, "the journal emptied")
        assert store.watermark(AGENT) >= last
        copies = sync.status.published_records - last
        backlog = int(OUTAGE * RATE)
        log.info(
            "drained %.2f s after the return, %d copies for a backlog of %d",
            drained,
            copies,
            backlog,
        )
        assert drained < DRAIN_LIMIT, drained
        # The backlog may go out twice (once into the void before the store is back, once
        # after), plus what was in flight when the broker died: never the repeated blind
        # resends of a confirm_timeout.
        assert copies <= 2 * backlog + 500, (copies, backlog)
        with open_storage(config.db) as storage:
            assert storage.count_records(AGENT) == last, "every record stored once"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await journal.stop()
        store.stop()
        broker.close()
