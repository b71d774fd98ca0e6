"""The running trace store's quality side (issue 20, contract sections 1 and 2): the
blocked set it publishes, retained, when another process blocks or releases, and its answers
to the agents' route questions. Real store, real Mosquitto, the real ``quality`` command in a
process of its own."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.mqtt_helpers import Mosquitto, Received, Subscriber
from tests.store_helpers import (
    AGENT,
    LINE,
    SITE,
    WAIT,
    Publisher,
    StoreFactory,
    genealogy,
    read_retained,
    wait_messages,
)
from trace_store.service import TraceStore

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = "trace/blocked"
ASK = f"trace/{SITE}/{LINE}/{AGENT}/route/ask"
ANSWER = f"trace/{SITE}/{LINE}/{AGENT}/route/answer"


async def quality(*argv: str) -> tuple[int, str]:
    """``edge-agent quality ...`` as a separate process, as an operator or a script runs it."""
    # The repository on the path: the command is this checkout's, however it is installed.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edge_agent.cli",
        "quality",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


def sets(messages: list[Received]) -> list[dict[str, Any]]:
    return [m.payload for m in messages if m.topic == BLOCKED]


async def test_a_block_by_another_process_is_published_at_once(
    stores: StoreFactory, db: str, mosquitto: Mosquitto, mqtt_subscriber: Subscriber
) -> None:
    store = stores(db)
    first = await mqtt_subscriber.wait_for(lambda m: bool(sets(m)))
    assert sets(first)[-1]["version"] == 0
    assert sets(first)[-1]["lots"] == []
    code, out = await quality(
        "block",
        "--db",
        db,
        "--lot",
        "L0042",
        "--reason",
        "failed incoming inspection",
        "--user",
        "qe.meier",
    )
    done = time.monotonic()
    assert code == 0, out
    assert out == "lot L0042 is not in the store yet: blocked anyway (version 1)\n"
    got = await mqtt_subscriber.wait_for(lambda m: sets(m)[-1]["version"] == 1)
    latency = time.monotonic() - done
    blocked = sets(got)[-1]
    assert [(b["key"], b["reason"], b["by"]) for b in blocked["lots"]] == [
        ("L0042", "failed incoming inspection", "qe.meier")
    ]
    # 0.2 s polls: well under a second even here; generous for a loaded machine.
    assert latency < 3.0, f"published {latency:.2f} s after the command returned"
    code, out = await quality(
        "release", "--db", db, "--lot", "L0042", "--reason", "ok", "--user", "qe"
    )
    assert code == 0, out
    got = await mqtt_subscriber.wait_for(lambda m: sets(m)[-1]["version"] == 2)
    assert sets(got)[-1]["lots"] == []
    # Retained: an agent connecting now gets the latest set.
    retained = await asyncio.to_thread(read_retained, mosquitto.port, BLOCKED)
    assert retained[BLOCKED]["version"] == 2
    assert store.quality.counters["blocked_published"] >= 3


async def test_the_set_is_published_again_after_a_broker_restart(
    stores: StoreFactory, sqlite_db: str, mosquitto: Mosquitto
) -> None:
    store = stores(sqlite_db)
    code, out = await quality(
        "block", "--db", sqlite_db, "--serial", "SN1", "--reason", "r", "--user", "u"
    )
    assert code == 0, out
    assert await asyncio.to_thread(store.quality.wait_published, 1, WAIT)
    before = store.quality.counters["blocked_published"]
    await asyncio.to_thread(mosquitto.stop)
    await asyncio.to_thread(mosquitto.start)
    assert await asyncio.to_thread(lambda: store.wait_stats(lambda s: s["connections"] >= 2, WAIT))
    retained = await asyncio.to_thread(read_retained, mosquitto.port, BLOCKED)
    assert retained[BLOCKED]["version"] == 1
    assert [s["key"] for s in retained[BLOCKED]["serials"]] == ["SN1"]
    assert store.quality.counters["blocked_published"] > before


def answers(messages: list[Received]) -> dict[str, dict[str, Any]]:
    return {str(m.payload.get("id")): m.payload for m in messages if m.topic == ANSWER}


async def test_route_questions_are_answered_from_the_store(
    stores: StoreFactory, db: str, publisher: Publisher, mosquitto: Mosquitto
) -> None:
    store = stores(db)
    # Only the answers: a "#" subscriber would choke on the garbled question below.
    listener = Subscriber(mosquitto.port, ANSWER, client_id="route-answers")
    listener.start()
    try:
        await ask_and_check(store, publisher, listener)
    finally:
        listener.stop()


async def ask_and_check(store: TraceStore, publisher: Publisher, listener: Subscriber) -> None:
    publisher.publish_all(genealogy())
    await asyncio.to_thread(wait_messages, store, len(genealogy()))
    questions = [
        {"v": 1, "id": "ok", "serial": "SA-1", "station": "op10"},
        {"v": 1, "id": "nok", "serial": "SA-2", "station": "op10", "line": LINE},
        {"v": 1, "id": "none", "serial": "SA-3", "station": "op10"},
        {"v": 1, "id": "other-line", "serial": "SA-1", "station": "op10", "line": "line-9"},
        {"v": 1, "id": "bad", "serial": "", "station": "op10"},
    ]
    for question in questions:
        publisher.publish(ASK, json.dumps(question).encode())
    publisher.publish(ASK, b"not json")
    got = answers(await listener.wait_for(lambda m: len(answers(m)) == 6))
    assert got["ok"] == {
        "v": 1,
        "id": "ok",
        "serial": "SA-1",
        "line": LINE,
        "station": "op10",
        "result": "ok",
        "at": "2026-11-21T10:00:04.000000Z",
        "agent": AGENT,
    }
    assert got["nok"]["result"] == "nok"
    assert (got["none"]["result"], got["none"]["at"], got["none"]["agent"]) == (None, None, None)
    assert got["other-line"]["result"] is None
    assert got["bad"] == {"v": 1, "id": "bad", "error": "serial: expected a non-empty text"}
    assert got["None"]["error"].startswith("not JSON")
    counters = store.quality.counters
    assert (counters["route_answers"], counters["route_errors"]) == (4, 2)
    # The questions are not records: nothing was rejected.
    assert store.stats()["rejected"] == 0
