"""Drain: how long a backlog of buffered records takes to reach a consumer (issue 6, item 4).

A journal is filled with ``--records`` reading records (as after a long network outage), then
the agent's sync (``sync.mqtt.MqttSync``, default settings) publishes it to a local Mosquitto
while a subscriber counts what arrives. Two times are reported: until the journal is empty
(every record PUBACKed and deleted) and until the consumer holds every record, plus their
ratio to the paho ceiling measured in the same run.

Run: ``python -m benchmarks.drain [--records 1000000] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.ceilings import READING, paho_ceiling
from buffer.sqlite import SqliteBuffer
from edge_agent.model import RecordDraft, RecordKind
from simulators.broker import MosquittoBroker
from sync.config import MqttConfig
from sync.mqtt import MqttSync

FILL_CHUNK = 20_000


class Counter:
    """A subscriber that counts records (the envelope's ``count``), nothing more, so the
    consumer is not what is measured."""

    def __init__(self, host: str, port: int, expected: int) -> None:
        self.records = 0
        self.expected = expected
        self.done = threading.Event()
        self.ready = threading.Event()
        self.last_arrival = 0.0
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-drain-counter", clean_session=False
        )
        self._client.on_connect = lambda c, *_: c.subscribe("trace/+/+/+/records", qos=1)
        self._client.on_subscribe = lambda *_: self.ready.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.records += int(json.loads(msg.payload)["count"])
        if self.records >= self.expected:
            self.last_arrival = time.perf_counter()
            self.done.set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


async def drain(records: int) -> dict[str, Any]:
    draft = RecordDraft("ST10", RecordKind.READING, dict(READING))
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp:
        buffer = SqliteBuffer(Path(tmp) / "buffer.db", synchronous="NORMAL")
        await buffer.start()
        try:
            for i in range(0, records, FILL_CHUNK):
                buffer.append([draft] * min(FILL_CHUNK, records - i))
                await buffer.flush()
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
        finally:
            await buffer.stop()
    return {
        "records": records,
        "journal_empty_s": round(empty, 2),
        "at_consumer_s": round(arrived, 2),
        "records_per_s": round(records / arrived),
    }


def run(records: int = 1_000_000) -> dict[str, Any]:
    """Drain a ``records`` backlog, against the paho ceiling measured in the same run."""
    ceiling = paho_ceiling()
    result = asyncio.run(drain(records))
    result["ratio_to_paho_ceiling"] = round(result["records_per_s"] / ceiling["records_per_s"], 3)
    return {"drain": result, "paho_ceiling": ceiling}


def table(out: dict[str, Any]) -> str:
    r = out["drain"]
    return "\n".join(
        [
            "| backlog | journal empty | all at consumer | records/s | of paho ceiling |",
            "| ---: | ---: | ---: | ---: | ---: |",
            f"| {r['records']:,} | {r['journal_empty_s']} s | {r['at_consumer_s']} s "
            f"| {r['records_per_s']:,} | {r['ratio_to_paho_ceiling']:.1%} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = run(args.records)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(table(out))


if __name__ == "__main__":
    main()
