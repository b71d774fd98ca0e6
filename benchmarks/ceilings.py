"""The machine's own ceilings, measured in the same run as the agent's figures (issue 6).

- SQLite: batched inserts of record-sized rows into a WAL database with the agent's
  ``synchronous`` setting, the same schema shape as the journal, one transaction per batch.
- paho: QoS 1 publishes of envelope-sized messages to a local Mosquitto, with the agent's
  in-flight window, counted when the broker has acknowledged them (PUBACK).

Run: ``python -m benchmarks.ceilings [--json out.json]``. Prints a markdown table. These are the
denominators the end-to-end figures are divided by, so they are comparable from run to run on
a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.broker import MosquittoBroker

# A typical reading record body as the binder makes it; as JSON about 250 bytes.
READING: dict[str, Any] = {
    "kind": "reading",
    "station": "ST10",
    "ts": "2026-11-21T10:15:02.123456Z",
    "device": "press10",
    "point": "temperature",
    "value": 181.27,
    "quality": "good",
    "ctx": {"serial": "SN00000042", "lot": "L00001", "work_order": None},
    "unit": "degC",
}
RECORD = json.dumps({"seq": 0, **READING}, separators=(",", ":"))


def sqlite_ceiling(
    records: int = 200_000, batch: int = 2_000, synchronous: str = "FULL"
) -> dict[str, Any]:
    """Rows per second for batched inserts, WAL, ``synchronous`` as the agent sets it."""
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
        db = sqlite3.connect(Path(tmp) / "ceiling.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(
            "CREATE TABLE records (seq INTEGER PRIMARY KEY, station TEXT NOT NULL, "
            "kind TEXT NOT NULL, body TEXT NOT NULL)"
        )
        rows = [(i, "ST10", "reading", RECORD) for i in range(1, records + 1)]
        start = time.perf_counter()
        for i in range(0, records, batch):
            db.execute("BEGIN")
            db.executemany("INSERT INTO records VALUES (?,?,?,?)", rows[i : i + batch])
            db.execute("COMMIT")
        elapsed = time.perf_counter() - start
        db.close()
    return {
        "records": records,
        "batch": batch,
        "synchronous": synchronous,
        "seconds": round(elapsed, 3),
        "records_per_s": round(records / elapsed),
    }


def paho_ceiling(
    messages: int = 20_000, records_per_message: int = 100, max_inflight: int = 16
) -> dict[str, Any]:
    """PUBACKed QoS 1 messages per second to a local Mosquitto, envelope-sized payloads."""
    payload = ("[" + ",".join([RECORD] * records_per_message) + "]").encode()
    broker = MosquittoBroker()
    broker.start_sync()
    try:
        done = threading.Event()
        acked = 0
        connected = threading.Event()

        def on_connect(*_: Any) -> None:
            connected.set()

        def on_publish(*_: Any) -> None:
            nonlocal acked
            acked += 1
            if acked >= messages:
                done.set()

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ceiling")
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = on_connect
        client.on_publish = on_publish
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            if not connected.wait(10):
                raise TimeoutError("could not connect to the benchmark broker")
            start = time.perf_counter()
            for _ in range(messages):
                client.publish("bench/ceiling", payload, qos=1)
            if not done.wait(300):
                raise TimeoutError(f"only {acked} of {messages} PUBACKs within 300 s")
            elapsed = time.perf_counter() - start
        finally:
            client.disconnect()
            client.loop_stop()
    finally:
        broker.stop_sync()
        broker.close()
    return {
        "messages": messages,
        "records_per_message": records_per_message,
        "payload_bytes": len(payload),
        "max_inflight": max_inflight,
        "seconds": round(elapsed, 3),
        "messages_per_s": round(messages / elapsed),
        "records_per_s": round(messages * records_per_message / elapsed),
    }


def table(results: dict[str, Any]) -> str:
    s, p = results["sqlite"], results["paho"]
    return "\n".join(
        [
            "| ceiling | setting | records/s |",
            "| --- | --- | ---: |",
            f"| SQLite batched insert | WAL, synchronous={s['synchronous']}, "
            f"{s['batch']} rows/commit | {s['records_per_s']:,} |",
            f"| paho QoS 1 to Mosquitto | {p['records_per_message']} records/message "
            f"({p['payload_bytes']:,} B), {p['max_inflight']} in flight "
            f"({p['messages_per_s']:,} msg/s) | {p['records_per_s']:,} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    args = parser.parse_args()
    results = {
        "machine": {"cpus": os.cpu_count()},
        "sqlite": sqlite_ceiling(synchronous=args.synchronous),
        "paho": paho_ceiling(),
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
