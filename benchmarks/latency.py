"""Latency: PLC value change -> broker, and -> trace-store commit (issue 6, item 3).

The simulator (``edge-agent simulate``, its own process) serves S stations whose registers
change continuously (temperature, force, pressure and position follow the cycle phase on every
read); the agent (its own process) polls 64 registers per station every ``--poll`` seconds and
records every value (``report: every_poll``), so the offered load is S x 64 / poll readings
(values)/s in S / poll ``readings`` records/s: one record per response, its 64 values sharing
its ``ts``.

Every record carries ``ts``, the agent's wall clock when the Modbus response came in. A
value that changed is read by the next poll, so change -> ``ts`` is at most one poll period
(plus the response leg of a loopback Modbus round trip). Measured per record (all its values
arrive with it, so a percentile over records is one over the values too, each response
weighted alike), with this machine's wall clock on both sides:

- **broker**: arrival at a subscriber in this process (QoS 1) minus ``ts``;
- **worst case**: arrival minus the ``ts`` of the same device's previous read, i.e. the
  actual poll period (jitter included) plus the above: what a change just after the previous
  read waits. The target "p99 change-to-broker <= poll period + 20 ms" is checked on it;
- **store commit**: the reference trace store (``edge-agent trace-store``, its own process,
  SQLite) publishes, after each commit that moves the agent's watermark, a retained
  confirmation on ``<prefix>/<site>/<line>/<agent>/confirmed``; the agent runs with
  ``mqtt.confirm: store``. A record is committed when a confirmation with ``seq >=`` its seq
  arrives here. The store runs with ``--confirm-interval 0`` by default: its own default
  (0.15 s) coalesces confirmations and would add up to 150 ms of reporting, not of commit.
  Cross-check: the store's ``received_at`` column (microseconds), taken when its writer starts
  the transaction, so a lower bound of the commit time.

Run: ``python -m benchmarks.latency [--json out.json]``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.ceilings import readings_in
from benchmarks.throughput import CLI, REGISTERS, config, stop
from simulators.broker import MosquittoBroker, free_port, wait_listening

STORE_READY = b"connected to MQTT broker"  # the store logs it once subscribed (after SUBACK)


class Probe:
    """A subscriber that notes the wall-clock arrival of every record message and every
    confirmation of ``confirm_topic``; payloads are parsed afterwards, not on arrival."""

    def __init__(
        self, host: str, port: int, confirm_topic: str | None = None, client_id: str = "bench-probe"
    ) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self.confirms: list[tuple[float, int]] = []
        self.ready = threading.Event()
        topics = [("trace/+/+/+/records", 1)]
        if confirm_topic:
            topics.append((confirm_topic, 1))
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_connect = lambda c, *_: c.subscribe(topics)
        self._client.on_subscribe = lambda *_: self.ready.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        if msg.topic.endswith("/records"):
            self.arrivals.append((now, bytes(msg.payload)))
        else:
            self.confirms.append((now, int(json.loads(msg.payload)["seq"])))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


class Clock:
    """Wire timestamps (``2026-11-21T10:15:02.123456Z``) as epoch seconds, each parsed once."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def __call__(self, ts: str) -> float:
        value = self._seen.get(ts)
        if value is None:
            value = self._seen[ts] = datetime.fromisoformat(ts).timestamp()
        return value


def summary(seconds: list[float]) -> dict[str, float | None]:
    """p50 / p99 (nearest rank) / max, in ms."""
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    s = sorted(seconds)

    def rank(p: float) -> float:
        return round(s[max(0, math.ceil(p * len(s)) - 1)] * 1000, 1)

    return {"p50_ms": rank(0.50), "p99_ms": rank(0.99), "max_ms": round(s[-1] * 1000, 1)}


def level(
    rate: int, poll: float, seconds: float, warmup: float, confirm_interval: float
) -> dict[str, Any]:
    stations = max(1, round(rate * poll / REGISTERS))
    procs: list[subprocess.Popen[bytes]] = []
    probe: Probe | None = None
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp_name:
        tmp = Path(tmp_name)
        broker = MosquittoBroker()
        broker.start_sync()
        try:
            plc_port = free_port()
            cfg = config(stations, plc_port, broker.port, tmp, poll)
            cfg["mqtt"]["confirm"] = "store"
            agent_id, site, line = (cfg["agent"][k] for k in ("id", "site", "line"))
            probe = Probe(broker.host, broker.port, f"trace/{site}/{line}/{agent_id}/confirmed")
            procs.append(
                subprocess.Popen(
                    [*CLI, "simulate", "--port", str(plc_port), "--stations", str(stations)],
                    stdout=subprocess.DEVNULL,
                )
            )
            store_log = tmp / "store.log"
            with store_log.open("wb") as err:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "edge_agent.cli",
                            "--log-level",
                            "INFO",
                            "trace-store",
                            "--broker",
                            f"{broker.host}:{broker.port}",
                            "--db",
                            str(tmp / "trace.db"),
                            "--store-id",
                            "bench",
                            "--confirm-interval",
                            str(confirm_interval),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                )
            store = procs[-1]
            wait_listening("127.0.0.1", plc_port, 30)
            wait_for(probe.ready.is_set, 10, "the probe did not subscribe")
            # The agent must not publish before the store subscribed: its first records
            # would pass the store by and wait for a resend (confirm_timeout, 30 s).
            wait_for(
                lambda: STORE_READY in store_log.read_bytes() or store.poll() is not None,
                30,
                "the trace store did not connect",
            )
            if store.poll() is not None:
                raise RuntimeError(f"trace store exited: {store_log.read_text()[-2000:]}")
            cfg_path = tmp / "agent.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg))
            procs.append(subprocess.Popen([*CLI, "run", str(cfg_path)]))
            watched = [psutil.Process(procs[-1].pid), psutil.Process(store.pid)]
            wait_for(lambda: bool(probe and probe.arrivals), 30, "no record reached the broker")
            time.sleep(warmup)  # connections settled, first commits done
            cpu0 = [sum(p.cpu_times()[:2]) for p in watched]
            start = time.time()
            time.sleep(seconds)
            end = time.time()
            cpu1 = [sum(p.cpu_times()[:2]) for p in watched]
            # Let what was read in the window arrive, then its confirmations.
            time.sleep(1.0)
            top = max(json.loads(p)["last_seq"] for _, p in probe.arrivals)
            wait_for(
                lambda: bool(probe and probe.confirms) and probe.confirms[-1][1] >= top,
                30,
                f"the store did not confirm seq {top}",
            )
            for proc in reversed(procs):  # agent, store, simulator
                stop(proc)
            db = sqlite3.connect(f"file:{tmp / 'trace.db'}?mode=ro", uri=True)
            try:
                stored = db.execute(
                    "SELECT seq, received_at FROM records WHERE agent = ?", (agent_id,)
                ).fetchall()
            finally:
                db.close()
        finally:
            for proc in procs:
                stop(proc)
            if probe is not None:
                probe.close()
            broker.stop_sync()
            broker.close()

    epoch = Clock()
    # seq -> (arrival, ts, device, readings): readings records (and legacy reading ones)
    first: dict[int, tuple[float, float, str, int]] = {}
    for arrival, payload in probe.arrivals:
        for r in json.loads(payload)["records"]:
            n = readings_in(r)
            if n and r["seq"] not in first:
                first[r["seq"]] = (arrival, epoch(r["ts"]), r["device"], n)
    reads: dict[str, list[float]] = {}  # device -> its distinct read times, in order
    for _, ts, device, _n in sorted(first.values(), key=lambda v: v[1]):
        times = reads.setdefault(device, [])
        if not times or times[-1] != ts:
            times.append(ts)
    window = {seq: v for seq, v in first.items() if start <= v[1] < end}
    conf_times = [t for t, _ in probe.confirms]
    conf_seqs = list(_running_max(s for _, s in probe.confirms))
    received = {seq: epoch(at) for seq, at in stored}
    to_broker, worst, to_commit, write_start = [], [], [], []
    unconfirmed = 0
    for seq, (arrival, ts, device, _n) in window.items():
        to_broker.append(arrival - ts)
        times = reads[device]
        i = bisect.bisect_left(times, ts)
        if i > 0:
            worst.append(arrival - times[i - 1])
        j = bisect.bisect_left(conf_seqs, seq)
        if j < len(conf_seqs):
            to_commit.append(conf_times[j] - ts)
        else:
            unconfirmed += 1
        if seq in received:
            write_start.append(received[seq] - ts)
    bound = summary(worst)
    readings = sum(v[3] for v in window.values())
    return {
        "offered_readings_per_s": round(stations * REGISTERS / poll),
        "offered_records_per_s": round(stations / poll),
        "stations": stations,
        "poll_s": poll,
        "records": len(window),
        "readings": readings,
        "records_per_s": round(len(window) / (end - start)),
        "readings_per_s": round(readings / (end - start)),
        "broker": summary(to_broker),
        "worst_case_broker": bound,
        "target_ms": round(poll * 1000 + 20, 1),
        "target_met": bound["p99_ms"] is not None and bound["p99_ms"] <= poll * 1000 + 20,
        "store_commit": summary(to_commit),
        "unconfirmed": unconfirmed,
        "store_write_start": summary(write_start),
        "not_in_store": len(window) - len(write_start),
        "agent_cpu_cores": round((cpu1[0] - cpu0[0]) / (end - start), 3),
        "store_cpu_cores": round((cpu1[1] - cpu0[1]) / (end - start), 3),
    }


def _running_max(values: Any) -> Any:
    top = -1
    for v in values:
        top = max(top, v)
        yield top


def run(
    rates: tuple[int, ...] = (1_000, 10_000),
    poll: float = 0.064,
    seconds: float = 15.0,
    warmup: float = 3.0,
    confirm_interval: float = 0.0,
) -> dict[str, Any]:
    levels = []
    for rate in rates:
        result = level(rate, poll, seconds, warmup, confirm_interval)
        print(json.dumps(result), file=sys.stderr, flush=True)
        levels.append(result)
    return {
        "cpus": os.cpu_count(),
        "poll_s": poll,
        "seconds": seconds,
        "store_confirm_interval_s": confirm_interval,
        "levels": levels,
    }


def table(result: dict[str, Any]) -> str:
    def ms(s: dict[str, Any]) -> str:
        return f"{s['p50_ms']} / {s['p99_ms']} / {s['max_ms']}"

    lines = [
        "| offered readings/s | stations x 64 / poll | records (readings) "
        "| read -> broker p50/p99/max ms "
        "| worst case change -> broker p50/p99/max ms | target p99 | "
        "read -> store commit p50/p99/max ms | agent CPU | store CPU |",
        "| ---: | --- | ---: | --- | --- | --- | --- | ---: | ---: |",
    ]
    for r in result["levels"]:
        met = "met" if r["target_met"] else "missed"
        lines.append(
            f"| {r['offered_readings_per_s']:,} "
            f"| {r['stations']} x 64 / {r['poll_s'] * 1000:g} ms "
            f"| {r['records']:,} ({r['readings']:,}) | {ms(r['broker'])} "
            f"| {ms(r['worst_case_broker'])} "
            f"| <= {r['target_ms']:g} ms: {met} | {ms(r['store_commit'])} "
            f"| {r['agent_cpu_cores']} | {r['store_cpu_cores']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates",
        type=int,
        nargs="+",
        default=[1_000, 10_000],
        help="offered readings (values)/s; stations = rate x poll / 64",
    )
    parser.add_argument("--poll", type=float, default=0.064)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--confirm-interval",
        type=float,
        default=0.0,
        help="the store's --confirm-interval (0: a confirmation after every commit)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(tuple(args.rates), args.poll, args.seconds, args.warmup, args.confirm_interval)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
