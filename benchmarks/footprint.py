"""Footprint: start-up time, idle RSS, and RSS + CPU at 1,000 and 10,000 tags/s (issue 6,
item 5).

The agent and the simulator (``edge-agent simulate``) each run as their own process, with
Mosquitto; RSS and CPU are the agent process's own (psutil).

- **Start-up**: from spawning ``python -m edge_agent.cli run`` (interpreter start and imports
  included) to (a) its first record arriving at a subscriber in this process and (b) its
  control socket answering ``status``. One station, 64 registers every ``--poll`` seconds;
  ``--starts`` runs, each with a fresh journal.
- **Idle**: the agent connected to its PLC and polling it at the same rate, with nothing to
  record: every point ``report: on_change``, the simulator's cycle time 1e6 s (the part in
  work never changes), and the registers of the values that follow the cycle phase
  (temperature, force, pressure, position: they move in their low bits on most reads) left
  out: 55 points. The first poll records one record with all 55 values, then nothing (a poll
  where no value changed writes no record).
- **Load**: ``benchmarks.throughput.step`` at 1 and 10 stations x 64 registers / ``--poll``
  (1,000 and 10,000 readings/s at 64 ms: 16 and 156 records/s, one per response), every value
  recorded and published.

"Tags/s" and "readings/s" are values per second; the idle and load rows count the values that
reach the broker (``readings`` records count their values), with records/s beside them.

Targets: RSS <= 120 MB at 10k tags/s; <= 5% of one core at 1k readings/s.

Run: ``python -m benchmarks.footprint [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.drain import Counter
from benchmarks.latency import Probe, wait_for
from benchmarks.throughput import CLI, REGISTERS, config, step, stop
from edge_agent.control import ControlError, request
from simulators.broker import MosquittoBroker, free_port, wait_listening
from simulators.station import REGISTER_MAP

PHASE_VALUES = ("temperature", "force", "pressure", "position")
"""Values that follow the cycle phase, so they move (in their low bits) on most reads."""
MOVING = {
    address + i
    for address, _kind, _order, count, *_ in (REGISTER_MAP[name] for name in PHASE_VALUES)
    for i in range(count)
}
FROZEN_CYCLE = 1e6
"""Simulator cycle time, seconds: no part finishes during the run (and cycle_time_ms still fits
its uint32 register; 1e9 s would make the simulator answer with exception 4)."""


def simulator(port: int, stations: int, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [*CLI, "simulate", "--port", str(port), "--stations", str(stations), *extra],
        stdout=subprocess.DEVNULL,
    )
    wait_listening("127.0.0.1", port, 30)
    return proc


async def _status_answered(sock: Path) -> float:
    """Wall-clock time at which the control socket first answers ``status`` (bound it with
    ``asyncio.timeout``). A missing socket or a refused connection is a ControlError."""
    while True:
        try:
            reply = await request(sock, {"op": "status"})
        except ControlError:
            pass
        else:
            if reply.get("ok"):
                return time.time()
        await asyncio.sleep(0.005)


async def _status_within(sock: Path, limit: float) -> float:
    async with asyncio.timeout(limit):
        return await _status_answered(sock)


def start_up(broker: MosquittoBroker, poll: float, starts: int) -> dict[str, Any]:
    plc_port = free_port()
    sim = simulator(plc_port, 1)
    runs = []
    try:
        for i in range(starts):
            with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp_name:
                tmp = Path(tmp_name)
                cfg = config(1, plc_port, broker.port, tmp, poll)
                cfg_path = tmp / "agent.yaml"
                cfg_path.write_text(yaml.safe_dump(cfg))
                probe = Probe(broker.host, broker.port, client_id=f"bench-start-{i}")
                try:
                    wait_for(probe.ready.is_set, 10, "the probe did not subscribe")
                    spawned = time.time()
                    agent = subprocess.Popen([*CLI, "run", str(cfg_path)])
                    try:
                        answered = asyncio.run(_status_within(Path(cfg["control"]["socket"]), 30))
                        wait_for(lambda p=probe: bool(p.arrivals), 30, "no record at the broker")
                        rss = psutil.Process(agent.pid).memory_info().rss
                    finally:
                        stop(agent)
                    runs.append(
                        {
                            "first_record_s": round(probe.arrivals[0][0] - spawned, 3),
                            "status_answered_s": round(answered - spawned, 3),
                            "rss_mb": round(rss / 2**20, 1),
                        }
                    )
                finally:
                    probe.close()
    finally:
        stop(sim)
    return {
        "runs": runs,
        "first_record_s": statistics.median(r["first_record_s"] for r in runs),
        "status_answered_s": statistics.median(r["status_answered_s"] for r in runs),
    }


def idle(broker: MosquittoBroker, poll: float, seconds: float) -> dict[str, Any]:
    plc_port = free_port()
    sim = simulator(plc_port, 1, "--cycle-time", str(FROZEN_CYCLE))
    counter = Counter(broker.host, broker.port, expected=1 << 62)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp_name:
            tmp = Path(tmp_name)
            cfg = config(1, plc_port, broker.port, tmp, poll)
            for device in cfg["devices"]:
                device["points"] = [
                    {**p, "report": "on_change"}
                    for p in device["points"]
                    if p["address"] not in MOVING
                ]
            points = sum(len(d["points"]) for d in cfg["devices"])
            cfg_path = tmp / "agent.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg))
            wait_for(counter.ready.is_set, 10, "the counter did not subscribe")
            agent = subprocess.Popen([*CLI, "run", str(cfg_path)])
            try:
                proc = psutil.Process(agent.pid)
                wait_for(lambda: counter.readings >= points, 30, "first values not recorded")
                time.sleep(2.0)  # warm-up, as in throughput.step
                c0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
                r0, v0 = counter.records, counter.readings
                rss_peak = 0
                while time.perf_counter() - t0 < seconds:
                    time.sleep(0.2)
                    rss_peak = max(rss_peak, proc.memory_info().rss)
                c1, t1 = sum(proc.cpu_times()[:2]), time.perf_counter()
                r1, v1 = counter.records, counter.readings
                # Idle, not failing: a PLC answering with exceptions records nothing either.
                status = asyncio.run(request(cfg["control"]["socket"], {"op": "status"}))
            finally:
                stop(agent)
    finally:
        counter.close()
        stop(sim)
    return {
        "points": points,
        "poll_s": poll,
        "readings_per_s": round((v1 - v0) / (t1 - t0), 2),
        "records_per_s": round((r1 - r0) / (t1 - t0), 2),
        "agent_cpu_cores": round((c1 - c0) / (t1 - t0), 4),
        "agent_rss_peak_mb": round(rss_peak / 2**20, 1),
        "devices": status["status"]["devices"],
    }


def run(
    poll: float = 0.064,
    seconds: float = 15.0,
    rates: tuple[int, ...] = (1_000, 10_000),
    starts: int = 3,
) -> dict[str, Any]:
    broker = MosquittoBroker()
    broker.start_sync()
    try:
        started = start_up(broker, poll, starts)
        print(json.dumps({"start_up": started}), file=sys.stderr, flush=True)
        quiet = idle(broker, poll, seconds)
        print(json.dumps({"idle": quiet}), file=sys.stderr, flush=True)
        loads = []
        for rate in rates:
            stations = max(1, round(rate * poll / REGISTERS))
            loads.append(step(stations, poll, seconds, broker))
            print(json.dumps(loads[-1]), file=sys.stderr, flush=True)
    finally:
        broker.stop_sync()
        broker.close()
    return {
        "cpus": os.cpu_count(),
        "poll_s": poll,
        "start_up": started,
        "idle": quiet,
        "loads": loads,
    }


def table(result: dict[str, Any]) -> str:
    s, q = result["start_up"], result["idle"]
    runs = len(s["runs"])
    lines = [
        "| measure | value |",
        "| --- | ---: |",
        f"| start-up: spawn -> control socket answers `status` (median of {runs}) "
        f"| {s['status_answered_s']} s |",
        f"| start-up: spawn -> first record at the broker (median of {runs}) "
        f"| {s['first_record_s']} s |",
        "",
        "| state | readings/s at broker | records/s | agent CPU (cores) | of one core "
        "| peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| idle ({q['points']} on_change points polled every {q['poll_s'] * 1000:g} ms, "
        f"part frozen, device {'/'.join(sorted(set(q['devices'].values())))}) "
        f"| {q['readings_per_s']} | {q['records_per_s']} | {q['agent_cpu_cores']} "
        f"| {q['agent_cpu_cores']:.1%} | {q['agent_rss_peak_mb']} |",
    ]
    for r in result["loads"]:
        lines.append(
            f"| {r['offered_readings_per_s']:,} tags/s ({r['stations']} x 64 every "
            f"{result['poll_s'] * 1000:g} ms) | {r['readings_per_s']:,} | {r['records_per_s']:,} "
            f"| {r['agent_cpu_cores']} "
            f"| {r['agent_cpu_cores']:.1%} | {r['agent_rss_peak_mb']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poll", type=float, default=0.064)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rates", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.poll, args.seconds, tuple(args.rates), args.starts)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
