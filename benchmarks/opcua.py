"""OPC UA subscriptions: notifications/s with nothing lost, change -> broker latency, CPU per
1,000 values (issue 13, item 8).

The OPC UA simulator (``edge-agent simulate --opcua``, its own process) serves S stations
whose process values change every 10 ms (they follow the cycle phase); the agent (its own
process) subscribes to every point of every station (``report: on_change``, sampling interval
0, queue 10, publishing every 20 ms) and records each change. A subscriber in this process
notes the arrival of every record at the broker.

- **offered**: the changes the simulator made inside a window of the run (it reports its
  running count with the time, ``simulate --report-updates``);
- **delivered**: the values that reached the broker whose source timestamp (the instant of
  the change, set by the simulator) lies in that window, after the agent has drained;
  **lost** = offered - delivered;
- **latency**: arrival at the broker minus the value's source timestamp, which the simulator
  sets to the instant of the change: the whole path server -> agent -> journal -> broker;
- **CPU per 1,000 values**: the agent's CPU seconds over the window per 1,000 values
  delivered, beside the Modbus figure of ``benchmarks.latency`` in the same report.

Run: ``python -m benchmarks.opcua [--seconds 10] [--stations 1 4] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.latency import Probe, summary
from benchmarks.throughput import CLI, stop
from simulators.broker import MosquittoBroker, free_port, wait_listening
from simulators.scenario import demo_config

FLAGS = ("running", "cycle_complete", "data_ready", "data_taken")
"""The simulator's boolean variables (``simulators.opcua.points.FLAGS``)."""
DRAIN = 3.0
"""Seconds after the window before counting: far above the p99 latency."""
QUEUE = 100
"""Changes the server keeps per point between two publishes: a second of changes at 100/s,
so a busy machine delaying the agent's publish requests does not overflow it."""


def level(stations: int, seconds: float, broker: MosquittoBroker, tmp: Path) -> dict[str, Any]:
    port = free_port()
    sim = subprocess.Popen(
        [*CLI, "simulate", "--opcua", "--port", str(port), "--stations", str(stations),
         "--cycle-time", "2.0", "--report-updates", "0.5"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    counts = Counts(sim)
    agent: subprocess.Popen[bytes] | None = None
    probe = Probe("127.0.0.1", broker.port, client_id=f"bench-opcua-{stations}")
    try:
        wait_listening("127.0.0.1", port, 60)
        raw = demo_config(
            modbus_port=1,
            mqtt_port=broker.port,
            buffer_path=str(tmp / f"opcua-{stations}.db"),
            stations=stations,
            parts=False,
            agent_id=f"bench-opcua-{stations}",
            opcua_endpoint=f"opc.tcp://127.0.0.1:{port}/",
        )
        for station in raw["stations"]:
            # Values that set the context become context records, not readings: this
            # benchmark counts readings, so every point stays one.
            station["context"] = {}
        for device in raw["devices"]:
            # Every variable the simulator changes, the station's flags too: what it counts.
            device["points"] += [
                {"name": flag, "browse_path": f"{device['station']}/{flag}", "type": "bool"}
                for flag in FLAGS
            ]
            for point in device["points"]:
                point["queue_size"] = QUEUE
        points = sum(len(d["points"]) for d in raw["devices"])
        path = tmp / f"opcua-{stations}.yaml"
        path.write_text(yaml.safe_dump(raw))
        assert probe.ready.wait(10), "the probe did not subscribe"
        agent = subprocess.Popen([*CLI, "run", str(path)])
        process = psutil.Process(agent.pid)
        _wait(lambda: _values(probe) >= points, 60, "the initial values")
        time.sleep(1.0)  # past the first publishes
        first = counts.next()
        cpu0 = _cpu(process)
        time.sleep(seconds)
        last = counts.next()
        cpu1 = _cpu(process)
        # Values keep coming (the simulator runs on); those changed in the window are
        # through the agent within its latency, so a few seconds drain them.
        time.sleep(DRAIN)
    finally:
        # The agent first: a server that goes away under it makes asyncua log every client's
        # failed CloseSession, which is noise here.
        for proc in (agent, sim):
            if proc is not None:
                stop(proc)
        probe.close()
        counts.close()
    (t0, n0), (t1, n1) = first, last
    stats = _measure(probe.arrivals, t0, t1)
    offered = n1 - n0
    return {
        "stations": stations,
        "points": points,
        "window_s": round(t1 - t0, 2),
        "offered": offered,
        "delivered": stats["values"],
        "lost": offered - stats["values"],
        "values_per_s": round(stats["values"] / (t1 - t0), 1),
        "records_per_s": round(stats["records"] / (t1 - t0), 1),
        "latency": stats["latency"],
        "cpu_s_per_1k_values": round((cpu1 - cpu0) / max(stats["values"], 1) * 1000, 4),
        "agent_cpu_share": round((cpu1 - cpu0) / (t1 - t0), 3),
    }


class Counts:
    """The simulator's reports of its running update count, read by a thread as they come
    (the pipe would otherwise hand out stale ones)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._reports: list[tuple[float, int]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode()
            if line.startswith("updates "):
                _, when, count = line.split()
                with self._changed:
                    self._reports.append((float(when), int(count)))
                    self._changed.notify_all()

    def next(self, timeout: float = 10.0) -> tuple[float, int]:
        """The first report made from now on: (unix time, updates so far)."""
        now = time.time()

        def fresh() -> bool:
            return bool(self._reports) and self._reports[-1][0] >= now

        with self._changed:
            if not self._changed.wait_for(fresh, timeout):
                raise RuntimeError("the simulator stopped reporting its updates")
            return next(r for r in self._reports if r[0] >= now)

    def close(self) -> None:
        self._thread.join(10)


def _measure(arrivals: list[tuple[float, bytes]], t0: float, t1: float) -> dict[str, Any]:
    """Values whose change (source timestamp) lies in [t0, t1): how many, in how many
    records, and their change -> broker latency."""
    latencies: list[float] = []
    values = 0
    records: set[int] = set()
    for arrived, payload in arrivals:
        for record in json.loads(payload).get("records", []):
            if record.get("kind") != "readings":
                continue
            for stamp in record.get("source_ts", {}).values():
                changed = _epoch(stamp)
                if t0 <= changed < t1:
                    values += 1
                    records.add(record["seq"])
                    latencies.append(arrived - changed)
    return {"values": values, "records": len(records), "latency": summary(latencies)}


def _values(probe: Probe) -> int:
    total = 0
    for _, payload in list(probe.arrivals):
        for record in json.loads(payload).get("records", []):
            if record.get("kind") == "readings":
                total += len(record["values"])
    return total


def _epoch(stamp: Any) -> float:
    if isinstance(stamp, int | float):
        return float(stamp)
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(0.05)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def run(stations: list[int] | None = None, seconds: float = 10.0) -> dict[str, Any]:
    levels = []
    with tempfile.TemporaryDirectory(prefix="bench-opcua-") as tmp:
        broker = MosquittoBroker()
        broker.start_sync()
        try:
            for n in stations or [1, 4]:
                levels.append(level(n, seconds, broker, Path(tmp)))
        finally:
            broker.stop_sync()
            broker.close()
    return {"seconds": seconds, "levels": levels}


def table(result: dict[str, Any]) -> str:
    head = "| stations | values/s | records/s | offered | lost | p50 ms | p99 ms | CPU s/1k |"
    rows = [head, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for lv in result.get("levels", []):
        lat = lv["latency"]
        rows.append(
            f"| {lv['stations']} | {lv['values_per_s']:,.0f} | {lv['records_per_s']:,.0f} | "
            f"{lv['offered']:,} | {lv['lost']:,} | {lat['p50_ms']} | {lat['p99_ms']} | "
            f"{lv['cpu_s_per_1k_values']} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--stations", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.stations, args.seconds)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
