"""End-to-end throughput: simulated PLCs -> agent -> SQLite -> Mosquitto -> consumer (issue 6,
item 2, first cut).

The simulator (``edge-agent simulate``, its own process) serves S stations; the agent (its own
process, so its CPU and RSS are its own) polls 64 registers per station every ``--poll``
seconds, one request each; a subscriber in this process counts what arrives. The offered load
is S x 64 / poll records/s; S grows until the agent falls behind (consumer rate below 95% of
the offered load). After each step the agent is stopped with SIGTERM and the journal is checked:
every committed record reached the consumer or is still buffered (zero loss).

Run: ``python -m benchmarks.throughput [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.ceilings import sqlite_ceiling
from benchmarks.drain import Counter
from simulators.broker import MosquittoBroker, free_port, wait_listening
from simulators.scenario import station_name

REGISTERS = 64
CLI = [sys.executable, "-m", "edge_agent.cli", "--log-level", "WARNING"]


def config(stations: int, plc_port: int, mqtt_port: int, tmp: Path, poll: float) -> dict[str, Any]:
    devices, station_cfgs = [], []
    for i in range(stations):
        name = station_name(i)
        station_cfgs.append({"name": name})
        devices.append(
            {
                "name": f"plc{i + 1}",
                "type": "modbus_tcp",
                "host": "127.0.0.1",
                "port": plc_port,
                "unit_id": i + 1,
                "station": name,
                "timeout": poll,
                "poll_interval": poll,
                "points": [
                    {"name": f"r{a}", "address": a, "type": "uint16"} for a in range(REGISTERS)
                ],
            }
        )
    return {
        "agent": {"site": "bench", "line": "l1", "id": "bench-pc1"},
        "stations": station_cfgs,
        "devices": devices,
        "buffer": {"path": str(tmp / "buffer.db")},
        "control": {"socket": str(tmp / "control.sock")},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
    }


def journal(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        last = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        left = db.execute("SELECT count(*) FROM records").fetchone()[0]
    finally:
        db.close()
    return int(last[0]) if last else 0, int(left)


def step(stations: int, poll: float, seconds: float, broker: MosquittoBroker) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        plc_port = free_port()
        sim = subprocess.Popen(
            [*CLI, "simulate", "--port", str(plc_port), "--stations", str(stations)],
            stdout=subprocess.DEVNULL,
        )
        counter = Counter(broker.host, broker.port, expected=1 << 62)
        try:
            wait_listening("127.0.0.1", plc_port, 30)
            counter.ready.wait(10)
            cfg_path = tmp / "agent.yaml"
            cfg_path.write_text(yaml.safe_dump(config(stations, plc_port, broker.port, tmp, poll)))
            agent = subprocess.Popen([*CLI, "run", str(cfg_path)])
            proc = psutil.Process(agent.pid)
            time.sleep(2.0)  # warm-up: connections, first commits (not a wait for a condition)
            c0, r0, t0 = proc.cpu_times(), counter.records, time.perf_counter()
            rss_peak = 0
            while time.perf_counter() - t0 < seconds:
                time.sleep(0.2)
                rss_peak = max(rss_peak, proc.memory_info().rss)
            c1, r1, t1 = proc.cpu_times(), counter.records, time.perf_counter()
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
            last_seq, left = journal(tmp / "buffer.db")
            deadline = time.monotonic() + 30
            while counter.records + left < last_seq and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            counter.close()
            sim.terminate()
            sim.wait(30)
    rate = (r1 - r0) / (t1 - t0)
    cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0)
    return {
        "stations": stations,
        "points": stations * REGISTERS,
        "offered_per_s": round(stations * REGISTERS / poll),
        "records_per_s": round(rate),
        "agent_cpu_cores": round(cpu, 3),
        "cpu_s_per_1000_records": round(cpu / rate * 1000, 5) if rate else None,
        "agent_rss_peak_mb": round(rss_peak / 2**20, 1),
        "committed": last_seq,
        "lost": max(0, last_seq - counter.records - left),
    }


def run(poll: float = 0.02, seconds: float = 8.0, max_stations: int = 32) -> dict[str, Any]:
    """Double the stations until the agent falls behind; every step against the SQLite
    ceiling measured in the same run."""
    ceiling = sqlite_ceiling()
    broker = MosquittoBroker()
    broker.start_sync()
    steps = []
    try:
        stations = 1
        while stations <= max_stations:
            result = step(stations, poll, seconds, broker)
            result["ratio_to_sqlite_ceiling"] = round(
                result["records_per_s"] / ceiling["records_per_s"], 4
            )
            steps.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
            if result["records_per_s"] < 0.95 * result["offered_per_s"]:
                break  # the agent (or the simulated PLCs) fell behind
            stations *= 2
    finally:
        broker.stop_sync()
        broker.close()
    kept_up = [s for s in steps if s["records_per_s"] >= 0.95 * s["offered_per_s"]]
    return {
        "cpus": os.cpu_count(),
        "poll": poll,
        "sqlite_ceiling": ceiling,
        "steps": steps,
        "sustained_records_per_s": max((s["records_per_s"] for s in kept_up), default=0),
        "falls_behind_at_points": steps[-1]["points"]
        if steps and steps[-1] not in kept_up
        else None,
    }


def table(out: dict[str, Any]) -> str:
    lines = [
        "| points | offered/s | records/s | of SQLite ceiling | agent CPU (cores) "
        "| CPU s / 1k records | peak RSS MB | lost |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in out["steps"]:
        lines.append(
            f"| {s['points']:,} | {s['offered_per_s']:,} | {s['records_per_s']:,} "
            f"| {s['ratio_to_sqlite_ceiling']:.1%} | {s['agent_cpu_cores']} "
            f"| {s['cpu_s_per_1000_records']} | {s['agent_rss_peak_mb']} | {s['lost']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poll", type=float, default=0.02)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--max-stations", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = run(args.poll, args.seconds, args.max_stations)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(table(out))


if __name__ == "__main__":
    main()
