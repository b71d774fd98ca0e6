"""The machine's own ceilings, measured in the same run as the agent's figures (issue 6).

- SQLite: batched inserts into a WAL database with the agent's ``synchronous`` setting and
  the journal's own schema, one transaction per batch, of rows shaped like the agent's: a
  ``readings`` record (one device response) as the binder makes it for the benchmark config
  (``benchmarks.throughput.config``: 64 uint16 registers, the values the simulator serves).
- paho: QoS 1 publishes of envelopes of such records to a local Mosquitto, with the agent's
  in-flight window and its batch limits (``mqtt.batch_max_records`` and
  ``mqtt.batch_max_bytes`` defaults decide how many records one envelope holds), counted when
  the broker has acknowledged them (PUBACK). Measured for 64-value records (a full poll) and
  for 1-value records (an ``on_change`` response where one value changed: the drain's worst
  case).

Units: a *record* is one journal row (one device response); a *reading* is one value in it.
Every ceiling is given in records/s and in readings (values)/s.

Run: ``python -m benchmarks.ceilings [--json out.json]``. Prints a markdown table. These are the
denominators the end-to-end figures are divided by, so they are comparable from run to run on
a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from buffer.sqlite import SCHEMA, StoredRecord
from drivers.modbus.config import ModbusTcpDevice
from edge_agent.binder import Binder, BindingRules
from edge_agent.config import parse_config
from kernel.model import Observation, RecordDraft, RecordKind
from simulators.broker import MosquittoBroker
from simulators.station import REGISTER_MAP, StationModel
from sync.config import MqttConfig
from sync.mqtt import SCHEMA as ENVELOPE_SCHEMA
from sync.mqtt import SCHEMA_VERSION, _envelope

FULL_POLL = 64
"""Values in one response of the benchmark config: 64 uint16 registers, one request."""
ONE_CHANGE_ADDRESS = REGISTER_MAP["temperature"][0]
"""The register whose value changes alone in the 1-value record (it follows the cycle)."""
SAMPLE_TS = 1_795_000_000.123456
"""A fixed read time (2026-11-18): every sample record has the same ``ts`` text length."""
SAMPLE_SEQ = 1_000_000
"""Seq of the sample rows whose size is quoted (7 digits, as in a 1M-record journal)."""


def readings_in(record: Mapping[str, Any]) -> int:
    """Readings (values) a wire record carries: a ``readings`` record (one device response)
    its ``values``, a legacy one-value ``reading`` record 1, every other kind 0."""
    kind = record.get("kind")
    if kind == RecordKind.READINGS:
        return len(record["values"])
    if kind == RecordKind.READING:
        return 1
    return 0


@cache
def readings_draft(values: int = FULL_POLL) -> RecordDraft:
    """The record the binder makes from one response of the benchmark config's first device
    (``plc1`` at ``ST10``): all 64 registers (``values=64``, a poll of ``report: every_poll``
    points), or only the temperature register (``values=1``: an ``on_change`` poll where one
    value changed). Register values are those ``edge-agent simulate`` serves mid-cycle."""
    # throughput imports this module (for the ceilings), so its config is imported here.
    from benchmarks.throughput import config

    with tempfile.TemporaryDirectory(prefix="bench-record-") as tmp:
        cfg = parse_config(yaml.safe_dump(config(1, 5020, 1883, Path(tmp), 0.02)))
    device = cfg.devices[0]
    assert isinstance(device, ModbusTcpDevice)  # the benchmark's own config
    if values == FULL_POLL:
        addresses = [p.address for p in device.points]
    elif values == 1:
        addresses = [ONE_CHANGE_ADDRESS]
    else:
        raise ValueError(f"values: {FULL_POLL} (a full poll) or 1 (one change), not {values}")
    image = StationModel(unit_id=1, serial_prefix="S1-").register_image(123, 0.5)
    names = {p.address: p.name for p in device.points}
    response = [Observation(device.name, names[a], image[a], ts=SAMPLE_TS) for a in addresses]
    drafts = Binder(BindingRules.from_config(cfg)).feed(response).drafts
    if len(drafts) != 1 or drafts[0].kind is not RecordKind.READINGS:
        raise RuntimeError(f"the binder made {[d.kind.value for d in drafts]}, not one readings")
    return drafts[0]


def journal_body(draft: RecordDraft, seq: int) -> str:
    """The row body the journal writes for ``draft`` at ``seq``
    (``buffer.writer.JournalThread._write``)."""
    return json.dumps({"seq": seq, **draft.body}, separators=(",", ":"), default=dict)


def sqlite_ceiling(
    records: int = 100_000, batch: int = 2_000, synchronous: str = "FULL"
) -> dict[str, Any]:
    """Rows (64-value ``readings`` records) per second for batched inserts into the journal's
    schema, WAL, ``synchronous`` as the agent sets it. The bodies are encoded beforehand: this
    is SQLite's rate, not JSON's."""
    draft = readings_draft(FULL_POLL)
    values = readings_in(draft.body)
    at = int(time.time())
    rows = []
    for seq in range(1, records + 1):
        body = journal_body(draft, seq)
        rows.append((seq, draft.station, draft.kind.value, body, at, len(body)))
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
        db = sqlite3.connect(Path(tmp) / "ceiling.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.executescript(SCHEMA)
        start = time.perf_counter()
        for i in range(0, records, batch):
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO records (seq, station, kind, body, at, size) VALUES (?,?,?,?,?,?)",
                rows[i : i + batch],
            )
            db.execute("COMMIT")
        elapsed = time.perf_counter() - start
        db.close()
    return {
        "records": records,
        "values_per_record": values,
        "row_bytes": len(journal_body(draft, SAMPLE_SEQ)),
        "batch": batch,
        "synchronous": synchronous,
        "seconds": round(elapsed, 3),
        "records_per_s": round(records / elapsed),
        "readings_per_s": round(records * values / elapsed),
    }


def envelope(
    draft: RecordDraft, first_seq: int, records: int, cfg: MqttConfig | None = None
) -> bytes:
    """One message as the agent's sync publishes it (``sync.mqtt``): ``records`` journal rows
    of ``draft`` from ``first_seq`` on, for an agent ``bench`` at ``bench/l1``."""
    cfg = cfg or MqttConfig()
    head = (
        f'{{"schema":"{ENVELOPE_SCHEMA}","v":{SCHEMA_VERSION},"agent":"bench",'
        f'"site":"bench","line":"l1","station":{json.dumps(draft.station)},'
    )
    rows = [
        StoredRecord(seq, draft.station, draft.kind.value, journal_body(draft, seq))
        for seq in range(first_seq, first_seq + records)
    ]
    last = first_seq + records - 1
    span = (
        f'"range":{{"after":{first_seq - 1},"last":{last},"count":{records}}},'
        f'"confirm":"{cfg.confirm}","order":"{cfg.order}"'
    )
    return _envelope(head, rows, span)


def records_per_message(draft: RecordDraft, cfg: MqttConfig | None = None) -> int:
    """How many such records one envelope holds with the agent's batch limits: the journal
    read stops at ``batch_max_records`` rows or ``batch_max_bytes`` of bodies."""
    cfg = cfg or MqttConfig()
    size = len(journal_body(draft, SAMPLE_SEQ))
    return max(1, min(cfg.batch_max_records, cfg.batch_max_bytes // size))


def paho_ceiling(
    values_per_record: int = FULL_POLL,
    total_bytes: int = 1 << 30,
    max_inflight: int | None = None,
) -> dict[str, Any]:
    """PUBACKed QoS 1 messages per second to a local Mosquitto, each an envelope of the
    agent's default size holding records of ``values_per_record`` values; about
    ``total_bytes`` of payload in all."""
    draft = readings_draft(values_per_record)
    cfg = MqttConfig()
    inflight = max_inflight or cfg.max_inflight
    per_message = records_per_message(draft, cfg)
    payload = envelope(draft, SAMPLE_SEQ, per_message, cfg)
    messages = max(200, math.ceil(total_bytes / len(payload)))
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
        client.max_inflight_messages_set(inflight)
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
        "values_per_record": values_per_record,
        "records_per_message": per_message,
        "payload_bytes": len(payload),
        "max_inflight": inflight,
        "batch_max_records": cfg.batch_max_records,
        "batch_max_bytes": cfg.batch_max_bytes,
        "seconds": round(elapsed, 3),
        "messages_per_s": round(messages / elapsed),
        "records_per_s": round(messages * per_message / elapsed),
        "readings_per_s": round(messages * per_message * values_per_record / elapsed),
    }


def run(synchronous: str = "FULL") -> dict[str, Any]:
    """Every ceiling: SQLite with 64-value rows, paho with 64-value and 1-value records."""
    return {
        "machine": {"cpus": os.cpu_count()},
        "sqlite": sqlite_ceiling(synchronous=synchronous),
        "paho": paho_ceiling(FULL_POLL),
        "paho_one_value": paho_ceiling(1),
    }


def _paho_row(p: dict[str, Any]) -> str:
    return (
        f"| paho QoS 1 to Mosquitto | {p['values_per_record']}-value records, "
        f"{p['records_per_message']:,} records/message ({p['payload_bytes']:,} B; agent limits "
        f"{p['batch_max_records']:,} records / {p['batch_max_bytes']:,} B), "
        f"{p['max_inflight']} in flight ({p['messages_per_s']:,} msg/s) "
        f"| {p['records_per_s']:,} | {p['readings_per_s']:,} |"
    )


def table(results: dict[str, Any]) -> str:
    s = results["sqlite"]
    lines = [
        "| ceiling | setting | records/s | readings/s |",
        "| --- | --- | ---: | ---: |",
        f"| SQLite batched insert | WAL, synchronous={s['synchronous']}, {s['batch']:,} "
        f"rows/commit, {s['values_per_record']}-value readings rows ({s['row_bytes']:,} B) "
        f"| {s['records_per_s']:,} | {s['readings_per_s']:,} |",
    ]
    lines += [_paho_row(results[k]) for k in ("paho", "paho_one_value") if k in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    args = parser.parse_args()
    results = run(args.synchronous)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
