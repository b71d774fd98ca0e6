"""End-to-end throughput: simulated PLCs -> agent -> SQLite -> Mosquitto -> consumer (issue 6,
item 2).

Simulated PLCs (``edge-agent simulate``, one process per ``--per-simulator`` stations, each on
its own port, so one pymodbus process does not set the pace) serve S stations; the agent (its
own process, so its CPU and RSS are its own) polls 64 registers per station every ``--poll``
seconds, one request each, and writes ONE ``readings`` record per response (64 values). A
subscriber in this process counts what arrives: records (journal rows) and readings (values).

Offered load: S x 64 / poll readings/s, S / poll records/s. S doubles until the consumer gets
less than 95% of the offered readings (or a record is lost), then ``--refine`` steps halve
the gap between the last step kept up and the first one not. After each step the agent is
stopped with SIGTERM and the journal is checked, per record: every committed record reached
the consumer or is still buffered (zero loss).

Where a step falls behind, the agent's own counters (``status`` over the control socket, at
the start and end of the window) tell which side: values *read* per second below the offered
load is the polling side (the agent's event loop, or simulators answering late: their CPU is
sampled too), read but not delivered is the journal -> broker side.

Run: ``python -m benchmarks.throughput [--seconds 8] [--max-stations 128] [--refine 1]
[--json out.json]`` (about 90 s with the defaults on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.ceilings import sqlite_ceiling
from benchmarks.drain import Counter
from edge_agent.control import ControlError, request
from simulators.broker import MosquittoBroker, free_port, wait_listening
from simulators.scenario import station_name

REGISTERS = 64
CLI = [sys.executable, "-m", "edge_agent.cli", "--log-level", "WARNING"]
PER_SIMULATOR = 16
"""Stations per simulator process: 16 x 50 requests/s at a 20 ms poll. One process serving 32
answered late (the step at 2,048 points measured pymodbus, not the agent)."""
KEPT_UP = 0.95
BUSY = 0.85
"""A thread (or single-threaded process) using this much of one core is taken as saturated:
the agent's Python work runs on one core at most (the GIL), its event loop on one thread."""


def config(
    stations: int,
    plc_port: int | Sequence[int],
    mqtt_port: int,
    tmp: Path,
    poll: float,
    per_simulator: int | None = None,
) -> dict[str, Any]:
    """The benchmark's agent config: S stations, one device each (64 uint16 registers, one
    request per ``poll``). With one port every station is a unit id (1..S) of one simulator;
    with several, station i is unit ``i % per_simulator + 1`` of simulator ``i //
    per_simulator``."""
    ports = [plc_port] if isinstance(plc_port, int) else list(plc_port)
    per = per_simulator or math.ceil(stations / len(ports))
    devices, station_cfgs = [], []
    for i in range(stations):
        name = station_name(i)
        station_cfgs.append({"name": name})
        devices.append(
            {
                "name": f"plc{i + 1}",
                "type": "modbus_tcp",
                "host": "127.0.0.1",
                "port": ports[i // per],
                "unit_id": i % per + 1,
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


def start_simulators(
    stations: int, per_simulator: int = PER_SIMULATOR
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """``ceil(stations / per_simulator)`` simulator processes, each on a port of its own and
    listening when this returns."""
    counts = [min(per_simulator, stations - i) for i in range(0, stations, per_simulator)]
    ports: list[int] = []
    while len(ports) < len(counts):
        port = free_port()
        if port not in ports:
            ports.append(port)
    procs = [
        subprocess.Popen(
            [*CLI, "simulate", "--port", str(port), "--stations", str(n)],
            stdout=subprocess.DEVNULL,
        )
        for port, n in zip(ports, counts, strict=True)
    ]
    try:
        for port in ports:
            wait_listening("127.0.0.1", port, 30)
    except BaseException:
        stop(*procs)
        raise
    return procs, ports


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """SIGTERM them all (a clean stop), then wait for each; SIGKILL one that does not end."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def journal(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        last = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        left = db.execute("SELECT count(*) FROM records").fetchone()[0]
    finally:
        db.close()
    return int(last[0]) if last else 0, int(left)


def status(sock: Path) -> dict[str, Any]:
    """The agent's ``status`` (its counters: observations read, records committed...)."""
    reply = asyncio.run(request(sock, {"op": "status"}))
    if not reply.get("ok"):
        raise ControlError(f"status refused: {reply}")
    return dict(reply["status"])


def _threads(proc: psutil.Process) -> dict[int, float]:
    """CPU seconds per thread id."""
    return {t.id: t.user_time + t.system_time for t in proc.threads()}


def _busy() -> float:
    """CPU seconds the whole machine spent not idle (every process, this one's and others')."""
    times: dict[str, float] = psutil.cpu_times()._asdict()
    # Linux counts guest time inside user time as well; idle and iowait are not busy.
    idle = ("idle", "iowait", "guest", "guest_nice")
    return sum(v for k, v in times.items() if k not in idle)


def _cpu(procs: Sequence[psutil.Process]) -> list[float]:
    out = []
    for p in procs:
        try:
            t = p.cpu_times()
            out.append(t.user + t.system)
        except psutil.NoSuchProcess:
            out.append(math.nan)
    return out


def step(
    stations: int,
    poll: float,
    seconds: float,
    broker: MosquittoBroker,
    per_simulator: int = PER_SIMULATOR,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp_name:
        tmp = Path(tmp_name)
        sims, ports = start_simulators(stations, per_simulator)
        counter = Counter(broker.host, broker.port, expected=1 << 62)
        agent: subprocess.Popen[bytes] | None = None
        try:
            counter.ready.wait(10)
            cfg = config(stations, ports, broker.port, tmp, poll, per_simulator)
            sock = Path(cfg["control"]["socket"])
            cfg_path = tmp / "agent.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg))
            agent = subprocess.Popen([*CLI, "run", str(cfg_path)])
            proc = psutil.Process(agent.pid)
            others = [psutil.Process(s.pid) for s in sims]
            if broker.proc is not None:
                others.append(psutil.Process(broker.proc.pid))
            others.append(psutil.Process())  # this process: the counting subscriber
            time.sleep(2.0)  # warm-up: connections, first commits (not a wait for a condition)
            s0 = status(sock)
            c0, o0, th0, m0 = proc.cpu_times(), _cpu(others), _threads(proc), _busy()
            r0, v0, t0 = counter.records, counter.readings, time.perf_counter()
            rss_peak = 0
            while time.perf_counter() - t0 < seconds:
                time.sleep(0.2)
                rss_peak = max(rss_peak, proc.memory_info().rss)
            c1, o1, th1, m1 = proc.cpu_times(), _cpu(others), _threads(proc), _busy()
            r1, v1, t1 = counter.records, counter.readings, time.perf_counter()
            s1 = status(sock)
            agent.send_signal(signal.SIGTERM)
            agent.wait(60)
            last_seq, left = journal(tmp / "buffer.db")
            deadline = time.monotonic() + 30
            while counter.records + left < last_seq and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            if agent is not None and agent.poll() is None:
                agent.kill()
                agent.wait()
            counter.close()
            stop(*sims)
    span = t1 - t0
    readings = (v1 - v0) / span
    records = (r1 - r0) / span
    cpu = (c1.user + c1.system - c0.user - c0.system) / span
    other = [(b - a) / span for a, b in zip(o0, o1, strict=True)]
    sim_cpu = other[: len(sims)]
    threads = {tid: (t - th0.get(tid, 0.0)) / span for tid, t in th1.items()}
    loop = threads.get(proc.pid, 0.0)
    ours = cpu + sum(other)
    devices = s1["devices"]
    result = {
        "stations": stations,
        "points": stations * REGISTERS,
        "simulators": len(sims),
        "offered_readings_per_s": round(stations * REGISTERS / poll),
        "offered_records_per_s": round(stations / poll),
        "readings_per_s": round(readings),
        "records_per_s": round(records),
        "read_readings_per_s": round((s1["observations"] - s0["observations"]) / span),
        "committed_records_per_s": round((s1["committed_seq"] - s0["committed_seq"]) / span),
        "buffer_depth_end": s1["buffer_depth"],
        "devices_not_up": sorted(d for d, state in devices.items() if state != "up"),
        "agent_cpu_cores": round(cpu, 3),
        "agent_loop_cpu_cores": round(loop, 3),
        "agent_busiest_other_thread_cpu_cores": round(
            max((c for tid, c in threads.items() if tid != proc.pid), default=0.0), 3
        ),
        "cpu_s_per_1000_readings": round(cpu / readings * 1000, 5) if readings else None,
        "simulator_cpu_cores_max": round(max(sim_cpu), 3),
        "simulators_cpu_cores": round(sum(sim_cpu), 3),
        "broker_cpu_cores": round(other[len(sims)], 3) if broker.proc is not None else None,
        "consumer_cpu_cores": round(other[-1], 3),
        "machine_busy_cores": round((m1 - m0) / span, 2),
        "outside_benchmark_cores": round(max(0.0, (m1 - m0) / span - ours), 2),
        "agent_rss_peak_mb": round(rss_peak / 2**20, 1),
        "committed": last_seq,
        "lost": max(0, last_seq - counter.records - left),
    }
    result["kept_up"] = (
        result["readings_per_s"] >= KEPT_UP * result["offered_readings_per_s"]
        and result["lost"] == 0
    )
    result["behind"] = None if result["kept_up"] else diagnose(result)
    return result


def diagnose(s: dict[str, Any]) -> str:
    """Which side and which process fell behind, from the step's counters and CPU."""
    read = s["read_readings_per_s"] / s["offered_readings_per_s"]
    side = (
        f"reading: {read:.0%} of offered read"
        if read < KEPT_UP
        else f"journal -> broker: {read:.0%} read, {s['buffer_depth_end']:,} records buffered"
    )
    cpus = os.cpu_count() or 1
    if s["agent_loop_cpu_cores"] >= BUSY:
        who = (
            f"agent event loop at {s['agent_loop_cpu_cores']:.2f} core "
            f"(agent {s['agent_cpu_cores']:.2f})"
        )
    elif s["agent_cpu_cores"] >= BUSY:
        who = f"agent at {s['agent_cpu_cores']:.2f} core (event loop {s['agent_loop_cpu_cores']})"
    elif s["simulator_cpu_cores_max"] >= BUSY:
        who = f"a simulator at {s['simulator_cpu_cores_max']:.2f} core"
    elif s["machine_busy_cores"] >= BUSY * cpus:
        who = (
            f"machine: {s['machine_busy_cores']:.2f} of {cpus} cores busy "
            f"({s['outside_benchmark_cores']:.2f} outside the benchmark)"
        )
    else:
        who = (
            f"no process saturated (agent {s['agent_cpu_cores']:.2f}, event loop "
            f"{s['agent_loop_cpu_cores']:.2f}, machine {s['machine_busy_cores']:.2f} of {cpus})"
        )
    down = s["devices_not_up"]
    if down:
        who += f"; {len(down)} device(s) not up"
    lost = f"LOST {s['lost']:,} records; " if s["lost"] else ""
    return f"{lost}{side}; {who}"


def run(
    poll: float = 0.02,
    seconds: float = 8.0,
    max_stations: int = 128,
    per_simulator: int = PER_SIMULATOR,
    refine: int = 1,
) -> dict[str, Any]:
    """Double the stations until the agent falls behind, then ``refine`` times halve the gap
    between the last step kept up and the first one not; every step against the SQLite
    ceiling measured in the same run, in readings (values)/s."""
    ceiling = sqlite_ceiling()
    broker = MosquittoBroker()
    broker.start_sync()
    steps: list[dict[str, Any]] = []

    def measure(stations: int) -> bool:
        result = step(stations, poll, seconds, broker, per_simulator)
        result["ratio_to_sqlite_ceiling"] = round(
            result["readings_per_s"] / ceiling["readings_per_s"], 4
        )
        steps.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
        return bool(result["kept_up"])

    try:
        ok, stations = 0, 1
        while stations <= max_stations and measure(stations):
            ok, stations = stations, stations * 2
        if stations <= max_stations:  # fell behind at ``stations``
            for _ in range(refine):
                mid = (ok + stations) // 2
                if mid <= ok:
                    break
                if measure(mid):
                    ok = mid
                else:
                    stations = mid
    finally:
        broker.stop_sync()
        broker.close()
    steps.sort(key=lambda s: s["stations"])
    kept_up = [s for s in steps if s["kept_up"]]
    best = max(kept_up, key=lambda s: s["readings_per_s"], default=None)
    behind = next((s for s in steps if not s["kept_up"]), None)
    return {
        "cpus": os.cpu_count(),
        "poll": poll,
        "per_simulator": per_simulator,
        "sqlite_ceiling": ceiling,
        "steps": steps,
        "sustained_readings_per_s": best["readings_per_s"] if best else 0,
        "sustained_records_per_s": best["records_per_s"] if best else 0,
        "falls_behind_at_points": behind["points"] if behind else None,
        "falls_behind": behind["behind"] if behind else None,
    }


def table(out: dict[str, Any]) -> str:
    lines = [
        "| points (stations / simulators) | offered readings/s | readings/s | records/s "
        "| of SQLite ceiling | agent CPU (cores) | of which event loop | CPU s / 1k readings "
        "| busiest simulator CPU | machine busy (cores) | peak RSS MB | lost | fell behind |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- |",
    ]
    for s in out["steps"]:
        lines.append(
            f"| {s['points']:,} ({s['stations']} / {s['simulators']}) "
            f"| {s['offered_readings_per_s']:,} | {s['readings_per_s']:,} "
            f"| {s['records_per_s']:,} | {s['ratio_to_sqlite_ceiling']:.2%} "
            f"| {s['agent_cpu_cores']} | {s['agent_loop_cpu_cores']} "
            f"| {s['cpu_s_per_1000_readings']} | {s['simulator_cpu_cores_max']} "
            f"| {s['machine_busy_cores']} | {s['agent_rss_peak_mb']} | {s['lost']} "
            f"| {s['behind'] or '-'} |"
        )
    c = out["sqlite_ceiling"]
    lines += [
        "",
        f"SQLite ceiling: {c['readings_per_s']:,} readings/s ({c['records_per_s']:,} "
        f"{c['values_per_record']}-value records/s); poll {out['poll'] * 1000:g} ms, "
        f"{out['per_simulator']} stations per simulator process.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poll", type=float, default=0.02)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--max-stations", type=int, default=128)
    parser.add_argument("--per-simulator", type=int, default=PER_SIMULATOR)
    parser.add_argument(
        "--refine", type=int, default=1, help="steps halving the gap once the agent fell behind"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = run(args.poll, args.seconds, args.max_stations, args.per_simulator, args.refine)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(table(out))


if __name__ == "__main__":
    main()
