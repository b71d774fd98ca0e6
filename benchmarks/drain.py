"""Drain: how long a backlog of buffered records takes to reach a consumer (issue 6, item 4).

A journal is filled (as after a long network outage), then the agent's sync
(``sync.mqtt.MqttSync``, default settings, the journal at the agent's ``synchronous=FULL``)
publishes it to a local Mosquitto while a subscriber counts what arrives. Two backlogs:

- **worst case**: ``--records`` ``readings`` records holding ONE value each (an ``on_change``
  poll where one value changed). A drain pays per record (read, wrap, publish, PUBACK,
  delete), so this is the slowest backlog per value, and the target (1,000,000 records in
  <= 20 s) is checked on it;
- **full polls**: the same number of values as 64-value records (a poll of the benchmark
  config), ``--records`` / 64 records.

Two times each: until the journal is empty (every record PUBACKed and deleted) and until the
consumer holds every record; rates in records/s and readings (values)/s, and the ratio to the
paho ceiling measured in the same run for records of the same shape (same unit).

Run: ``python -m benchmarks.drain [--records 1000000] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.ceilings import FULL_POLL, paho_ceiling, readings_draft, readings_in
from buffer.sqlite import SqliteBuffer
from simulators.broker import MosquittoBroker
from sync.config import MqttConfig
from sync.mqtt import MqttSync

FILL_CHUNK = 20_000


class Counter:
    """A subscriber that counts what arrives, nothing more, so the consumer is not what is
    measured: ``records`` (the envelopes' ``count``: journal rows, what loss is checked on)
    and ``readings`` (values: ``benchmarks.ceilings.readings_in`` of each record). ``done``
    is set once ``expected`` records arrived."""

    def __init__(self, host: str, port: int, expected: int) -> None:
        self.records = 0
        self.readings = 0
        self.expected = expected
        self.done = threading.Event()
        self.ready = threading.Event()
        self.last_arrival = 0.0
        # A clean session of its own: nothing queued for an earlier counter on the same
        # broker (a previous throughput step) is delivered to, and counted by, this one.
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-counter-{uuid.uuid4().hex[:8]}"
        )
        self._client.on_connect = lambda c, *_: c.subscribe("trace/+/+/+/records", qos=1)
        self._client.on_subscribe = lambda *_: self.ready.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        self.readings += sum(readings_in(r) for r in body["records"])
        self.records += int(body["count"])
        if self.records >= self.expected:
            self.last_arrival = time.perf_counter()
            self.done.set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


async def drain(records: int, values_per_record: int = 1) -> dict[str, Any]:
    """Fill a journal with ``records`` readings records of ``values_per_record`` values each,
    then time the agent's sync publishing all of it."""
    draft = readings_draft(values_per_record)
    readings = records * values_per_record
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        path = Path(tmp) / "buffer.db"
        # Filled at NORMAL (the fill is not what is measured), drained at the agent's FULL.
        filler = SqliteBuffer(path, synchronous="NORMAL")
        await filler.start()
        try:
            for i in range(0, records, FILL_CHUNK):
                filler.append([draft] * min(FILL_CHUNK, records - i))
                await filler.flush()
        finally:
            await filler.stop()
        buffer = SqliteBuffer(path)
        await buffer.start()
        try:
            if buffer.depth != records:
                raise RuntimeError(f"journal holds {buffer.depth} records, not {records}")
            broker = MosquittoBroker()
            await asyncio.to_thread(broker.start_sync)
            counter = Counter(broker.host, broker.port, records)
            try:
                if not await asyncio.to_thread(counter.ready.wait, 10):
                    raise TimeoutError("the counting subscriber did not subscribe")
                sync = MqttSync(
                    MqttConfig(host=broker.host, port=broker.port),
                    agent_id="bench",
                    site="bench",
                    line="l1",
                    buffer=buffer,
                )
                start = time.perf_counter()
                task = asyncio.create_task(sync.run())
                try:
                    await buffer.wait_empty()
                    empty = time.perf_counter() - start
                    if not await asyncio.to_thread(counter.done.wait, 600):
                        raise TimeoutError(f"consumer has {counter.records} of {records}")
                    arrived = counter.last_arrival - start
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            finally:
                counter.close()
                await asyncio.to_thread(broker.stop_sync)
                broker.close()
            evicted = buffer.stats()["evicted_rows"]
        finally:
            await buffer.stop()
    if counter.readings < readings:
        raise RuntimeError(f"consumer counted {counter.readings} readings of {readings}")
    return {
        "records": records,
        "values_per_record": values_per_record,
        "readings": readings,
        "journal_empty_s": round(empty, 2),
        "at_consumer_s": round(arrived, 2),
        "records_per_s": round(records / arrived),
        "readings_per_s": round(readings / arrived),
        "evicted": evicted,
    }


def run(records: int = 1_000_000) -> dict[str, Any]:
    """Drain a ``records`` backlog of 1-value records (the worst case), then the same number
    of values as 64-value records, each against the paho ceiling for records of its shape
    measured in the same run."""
    ceilings = {1: paho_ceiling(1), FULL_POLL: paho_ceiling(FULL_POLL)}
    rows = []
    for per_record, n in ((1, records), (FULL_POLL, math.ceil(records / FULL_POLL))):
        row = asyncio.run(drain(n, per_record))
        row["ratio_to_paho_ceiling"] = round(
            row["readings_per_s"] / ceilings[per_record]["readings_per_s"], 3
        )
        rows.append(row)
    return {
        "drain": rows[0],
        "full_polls": rows[1],
        "paho_ceiling": ceilings[1],
        "paho_ceiling_full_polls": ceilings[FULL_POLL],
    }


def table(out: dict[str, Any]) -> str:
    lines = [
        "| backlog | values / record | journal empty | all at consumer | records/s "
        "| readings/s | of paho ceiling (same records) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in (("drain", "worst case"), ("full_polls", "full polls")):
        r = out.get(key)
        if r is None:
            continue
        lines.append(
            f"| {label}: {r['records']:,} records ({r['readings']:,} readings) "
            f"| {r['values_per_record']} | {r['journal_empty_s']} s | {r['at_consumer_s']} s "
            f"| {r['records_per_s']:,} | {r['readings_per_s']:,} "
            f"| {r['ratio_to_paho_ceiling']:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--records",
        type=int,
        default=1_000_000,
        help="1-value records in the worst-case backlog (the second holds as many values)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = run(args.records)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(table(out))


if __name__ == "__main__":
    main()
