"""Broker crash: a Mosquitto killed under load and restarted without its sessions, and how long
the backlog then takes to reach the trace store (issue 17, item 4; docs/delivery.md, "A broker
crash").

The agent's journal and uplink (``MqttSync``, ``confirm: store``, every other setting at its
default: backoff up to 30 s, ``confirm_timeout`` 30 s) and the trace store (``TraceStore`` on
SQLite, defaults: backoff up to 10 s) run in this process, a line appends records at
``--rate`` per second, and Mosquitto (``persistence true``, autosave at its default 30 min, so
nothing of the run is saved) gets SIGKILL and comes back after ``--outage`` seconds. Whoever
reconnects first decides what is lost on the way: records the agent publishes before the
store has subscribed again reach nobody (the broker forgot the store's session), and only a
resend brings them.

Each round runs twice: once as it comes (with the defaults the store, backing off up to 10 s,
is usually back before the agent, up to 30 s), and once with the store back ``--store-late``
seconds after the broker (stopped during the outage and started again then: a store that
backs off longer, or restarts), so that the agent has reconnected and published into the
void first, the case that cost a ``confirm_timeout``.

Reported per round: when the agent and the store were connected again after the broker's
return, how long until the store held every record committed before the return ("drain"),
and the copies of records on the wire beyond one per record (counted at paho's ``publish``,
so the figure is the same for any version of the agent) and at the store (``duplicates``).

Run: ``python -m benchmarks.broker_crash [--outage 60] [--rounds 3] [--rate 20] [--json f]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from buffer.sqlite import SqliteBuffer
from kernel.model import RecordDraft, RecordKind
from simulators.broker import MosquittoBroker
from sync.config import MqttConfig
from sync.mqtt import MqttSync
from trace_store.config import StoreConfig
from trace_store.service import TraceStore

AGENT = "bench-pc1"


class WireCount:
    """Record copies handed to paho for the records topics, whatever version publishes."""

    def __init__(self) -> None:
        self.records = 0
        self._lock = threading.Lock()
        self._original = mqtt.Client.publish

    def __enter__(self) -> WireCount:
        count = self

        def publish(client: mqtt.Client, topic: str, payload: Any = None, *a: Any, **k: Any) -> Any:
            if topic.endswith("/records") and payload:
                n = int(json.loads(payload)["count"])
                with count._lock:
                    count.records += n
            return count._original(client, topic, payload, *a, **k)

        mqtt.Client.publish = publish  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        mqtt.Client.publish = self._original  # type: ignore[method-assign]


async def _wait(predicate: Any, timeout: float, what: str) -> float:  # noqa: ASYNC109
    """Poll ``predicate`` (cheap) until it holds; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def crash_round(
    outage: float, rate: float, warmup: float, store_late: float | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as tmp, WireCount() as wire:
        broker = MosquittoBroker(workdir=Path(tmp) / "broker")
        (Path(tmp) / "broker").mkdir()
        await asyncio.to_thread(broker.start_sync)
        config = StoreConfig(
            host=broker.host, port=broker.port, db=str(Path(tmp) / "trace.db"), store_id="b"
        )
        store = TraceStore(config)
        store.start()
        journal = SqliteBuffer(Path(tmp) / "buffer.db")
        await journal.start()
        sync = MqttSync(
            MqttConfig(host=broker.host, port=broker.port, confirm="store"),
            agent_id=AGENT,
            site="bench",
            line="l1",
            buffer=journal,
        )
        uplink = asyncio.create_task(sync.run())
        line = asyncio.create_task(_line(journal, rate))
        try:
            await asyncio.to_thread(store.wait_ready, 10)
            await asyncio.sleep(warmup)  # steady delivery before the crash
            await asyncio.to_thread(broker.kill_sync)
            dups_before = 0
            if store_late is not None:
                dups_before = store.stats()["duplicates"]
                await asyncio.to_thread(store.stop)
            await asyncio.sleep(outage)  # the outage, under load
            backlog_at = journal.committed_seq
            if store_late is None:
                dups_before = store.stats()["duplicates"]
            await asyncio.to_thread(broker.start_sync)
            back = time.monotonic()
            agent_back = asyncio.create_task(
                _wait(lambda: sync.status.connected, outage + 60, "agent reconnected")
            )
            if store_late is not None:
                await asyncio.sleep(store_late)  # the store comes back late, by design
                store = TraceStore(config)
                store.start()
            late_store = store
            store_at = await _wait(lambda: late_store.ready, outage + 60, "store reconnected")
            store_at += store_late or 0.0
            agent_at = await agent_back
            await _wait(lambda: store.watermark(AGENT) >= backlog_at, 600, "backlog stored")
            drain = time.monotonic() - back
            line.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await line
            await journal.flush()
            last = journal.committed_seq
            await _wait(lambda: store.watermark(AGENT) >= last, 600, "everything stored")
            stats = store.stats()
        finally:
            line.cancel()
            uplink.cancel()
            await asyncio.gather(line, uplink, return_exceptions=True)
            await journal.stop()
            store.stop()
            await asyncio.to_thread(broker.stop_sync)
            broker.close()
    backlog = backlog_at - int(warmup * rate)
    return {
        "store": "as it comes" if store_late is None else f"{store_late:g} s late",
        "outage_s": outage,
        "rate": rate,
        "backlog_records": backlog,
        "agent_back_s": round(agent_at, 2),
        "store_back_s": round(store_at, 2),
        "first_back": "agent" if agent_at < store_at else "store",
        "drain_s": round(drain, 2),
        "records": last,
        "wire_copies": wire.records - last,
        "store_duplicates": stats["duplicates"] - dups_before,
        "stored": stats["inserted"],
    }


async def _line(journal: SqliteBuffer, rate: float) -> None:
    """One record every 1/rate s, as a station makes them (readings with a context)."""
    n = 0
    while True:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"kind": "readings", "station": "op10", "ts": now, "ctx": {}, "n": n}
        journal.append([RecordDraft("op10", RecordKind.READINGS, body)])
        n += 1
        await asyncio.sleep(1 / rate)


def run(
    outage: float = 60.0, rounds: int = 2, rate: float = 20.0, store_late: float = 3.0
) -> dict[str, Any]:
    out = [
        asyncio.run(crash_round(outage, rate, 5.0, late))
        for _ in range(rounds)
        for late in (None, store_late)
    ]
    return {
        "rounds": out,
        "drain_s_median": statistics.median(r["drain_s"] for r in out),
        "drain_s_max": max(r["drain_s"] for r in out),
        "wire_copies_max": max(r["wire_copies"] for r in out),
    }


def table(out: dict[str, Any]) -> str:
    lines = [
        "| outage | store | backlog | agent back | store back | drain (return -> all stored) "
        "| extra copies on the wire | duplicates at the store |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in out["rounds"]:
        lines.append(
            f"| {r['outage_s']:g} s | {r['store']} | {r['backlog_records']:,} records "
            f"| {r['agent_back_s']} s "
            f"| {r['store_back_s']} s | {r['drain_s']} s | {r['wire_copies']:,} "
            f"| {r['store_duplicates']:,} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the broker is dead")
    parser.add_argument("--rounds", type=int, default=2, help="each runs both cases")
    parser.add_argument("--rate", type=float, default=20.0, help="records per second")
    parser.add_argument(
        "--store-late", type=float, default=3.0, help="seconds after the broker's return"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = run(args.outage, args.rounds, args.rate, args.store_late)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(table(out))


if __name__ == "__main__":
    main()
