"""What the metrics endpoint costs (issue 16, item 3): agent CPU at 10,000 tags/s with
``metrics.enabled`` and a scrape every second, against the same agent without it.

Two agents run side by side in each round, on the same machine at the same time, each with
its own simulator process (``edge-agent simulate``), journal and control socket, both
publishing to one Mosquitto: 10 stations x 64 registers every 64 ms each (10,000 readings/s,
156 records/s). One has the endpoint enabled and is scraped every second by a thread of this
process (an HTTP GET of /metrics, as Prometheus does); the other has it disabled. Running them
together cancels what a busy or idle machine does to both; the next round swaps the roles, so
a difference between the two slots (ports, simulator placement) cancels too. The figure is
the mean over rounds of (CPU with) - (CPU without), in % of one core; the ceiling is 1%.

A difference of a fraction of a percent is near the noise of two processes measured side by
side, so one more round scrapes 20 times a second: the difference there, divided by the
scrapes, is the CPU one scrape costs the agent, with a signal well above the noise.

Both agents pay the poll path's instrumentation (one bucket increment per read, metrics
enabled or not); its cost is measured separately here as nanoseconds per read.

Run: ``python -m benchmarks.metrics [--seconds 15] [--rounds 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.throughput import CLI, REGISTERS, config, start_simulators, status, stop
from drivers.state import DeviceStatus
from simulators.broker import MosquittoBroker, free_port, wait_listening

CEILING = 0.01
"""At most 1% of one core more than without metrics."""
WARM_UP = 3.0
"""Seconds between both agents polling and the window: connections, first commits."""


class Scraper:
    """GET /metrics every ``every`` seconds on a fixed schedule, in a thread of its own."""

    def __init__(self, port: int, every: float) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.every = every
        self.latencies: list[float] = []
        self.sizes: list[int] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due += self.every
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    body = answer.read()
            except OSError:
                self.failures += 1
                continue
            self.latencies.append(time.perf_counter() - started)
            self.sizes.append(len(body))


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def one_round(
    broker: MosquittoBroker, stations: int, poll: float, seconds: float, on_slot: int, every: float
) -> dict[str, Any]:
    """Two agents at once, slot ``on_slot`` with metrics enabled and scraped."""
    metrics_port = free_port()
    sims: list[subprocess.Popen[bytes]] = []
    agent_procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            slots = []
            for slot in range(2):
                started, ports = start_simulators(stations)
                sims += started
                folder = tmp / f"slot{slot}"
                folder.mkdir()
                cfg = config(stations, ports, broker.port, folder, poll)
                cfg["agent"]["id"] = f"bench-metrics-{slot}"
                if slot == on_slot:
                    cfg["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
                path = folder / "agent.yaml"
                path.write_text(yaml.safe_dump(cfg))
                agent = subprocess.Popen([*CLI, "run", str(path)])
                agent_procs.append(agent)
                slots.append((agent, Path(cfg["control"]["socket"])))
            wait_listening("127.0.0.1", metrics_port, 30)
            time.sleep(WARM_UP)  # not a wait for a condition: both agents settle
            with Scraper(metrics_port, every) as scraper:
                s0 = [status(sock) for _, sock in slots]
                c0 = [_cpu(psutil.Process(a.pid)) for a, _ in slots]
                t0 = time.perf_counter()
                time.sleep(seconds)
                c1 = [_cpu(psutil.Process(a.pid)) for a, _ in slots]
                t1 = time.perf_counter()
                s1 = [status(sock) for _, sock in slots]
        finally:
            stop(*agent_procs)  # first, so that no agent logs its PLCs going away
            stop(*sims)
    span = t1 - t0
    agents = []
    for slot in range(2):
        agents.append(
            {
                "metrics": slot == on_slot,
                "cpu_cores": round((c1[slot] - c0[slot]) / span, 4),
                "read_readings_per_s": round(
                    (s1[slot]["observations"] - s0[slot]["observations"]) / span
                ),
                "committed_records_per_s": round(
                    (s1[slot]["committed_seq"] - s0[slot]["committed_seq"]) / span
                ),
                "buffer_depth_end": s1[slot]["buffer_depth"],
            }
        )
    on, off = agents[on_slot], agents[1 - on_slot]
    lat = sorted(scraper.latencies)
    return {
        "on_slot": on_slot,
        "seconds": round(span, 1),
        "agents": agents,
        "difference_cores": round(on["cpu_cores"] - off["cpu_cores"], 4),
        "scrapes": len(lat),
        "scrape_failures": scraper.failures,
        "scrape_p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
        "scrape_max_ms": round(lat[-1] * 1000, 2) if lat else None,
        "scrape_bytes": round(statistics.mean(scraper.sizes)) if scraper.sizes else None,
    }


def poll_path_cost() -> dict[str, Any]:
    """Nanoseconds per answered read: the histogram's bucket increment against the plain
    counter it replaced."""
    status_ = DeviceStatus("bench")
    n = 200_000

    def plain() -> None:
        status_.reads_ok += 1

    timed = min(timeit.repeat(lambda: status_.read_answered(0.0042), number=n, repeat=5))
    base = min(timeit.repeat(plain, number=n, repeat=5))
    return {
        "read_answered_ns": round(timed / n * 1e9, 1),
        "plain_counter_ns": round(base / n * 1e9, 1),
    }


def run(
    poll: float = 0.064,
    seconds: float = 15.0,
    rounds: int = 2,
    rate: int = 10_000,
    every: float = 1.0,
    amplified_every: float = 0.05,
) -> dict[str, Any]:
    stations = max(1, round(rate * poll / REGISTERS))
    broker = MosquittoBroker()
    broker.start_sync()
    results = []
    try:
        for r in range(rounds):
            results.append(one_round(broker, stations, poll, seconds, r % 2, every))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        amplified = one_round(broker, stations, poll, seconds, 0, amplified_every)
        print(json.dumps(amplified), file=sys.stderr, flush=True)
    finally:
        broker.stop_sync()
        broker.close()
    diffs = [r["difference_cores"] for r in results]
    offered = round(stations * REGISTERS / poll)
    reads = [a["read_readings_per_s"] for r in results for a in r["agents"]]
    path = poll_path_cost()
    reads_per_s = stations / poll
    scrape_rate = amplified["scrapes"] / amplified["seconds"]
    per_scrape = amplified["difference_cores"] / scrape_rate if scrape_rate else None
    return {
        "cpus": os.cpu_count(),
        "poll_s": poll,
        "stations": stations,
        "offered_readings_per_s": offered,
        "scrape_every_s": every,
        "rounds": results,
        "difference_cores": round(statistics.mean(diffs), 4),
        "difference_spread_cores": round(max(diffs) - min(diffs), 4),
        "ceiling_cores": CEILING,
        "kept_up": min(reads) >= 0.95 * offered,
        "amplified": amplified,
        "cpu_ms_per_scrape": round(per_scrape * 1000, 2) if per_scrape is not None else None,
        "cores_at_every_from_amplified": (
            round(per_scrape / every, 4) if per_scrape is not None else None
        ),
        "poll_path": path
        | {
            "reads_per_s": round(reads_per_s),
            "extra_cores": round(
                (path["read_answered_ns"] - path["plain_counter_ns"]) * 1e-9 * reads_per_s, 6
            ),
        },
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        "| round | metrics on slot | agent CPU with metrics (cores) | without (cores) "
        "| difference (of one core) | scrapes (failed) | scrape p50 / max ms | bytes |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for i, r in enumerate(result["rounds"], 1):
        on = next(a for a in r["agents"] if a["metrics"])
        off = next(a for a in r["agents"] if not a["metrics"])
        lines.append(
            f"| {i} | {r['on_slot']} | {on['cpu_cores']} | {off['cpu_cores']} "
            f"| {r['difference_cores']:+.2%} | {r['scrapes']} ({r['scrape_failures']}) "
            f"| {r['scrape_p50_ms']} / {r['scrape_max_ms']} | {r['scrape_bytes']:,} |"
        )
    p = result["poll_path"]
    a = result["amplified"]
    on = next(x for x in a["agents"] if x["metrics"])
    off = next(x for x in a["agents"] if not x["metrics"])
    lines += [
        "",
        f"- {result['offered_readings_per_s']:,} readings/s per agent ({result['stations']} x 64 "
        f"every {result['poll_s'] * 1000:g} ms), scraped every {result['scrape_every_s']:g} s; "
        f"every agent kept up: {'yes' if result['kept_up'] else 'NO'}.",
        f"- **Mean difference {result['difference_cores']:+.2%} of one core** (ceiling "
        f"{result['ceiling_cores']:.0%}; spread between rounds "
        f"{result['difference_spread_cores']:.2%}).",
        f"- Amplified: scraped {a['scrapes'] / a['seconds']:.0f} times/s, {on['cpu_cores']} vs "
        f"{off['cpu_cores']} cores: **{result['cpu_ms_per_scrape']} ms of CPU per scrape**, "
        f"{result['cores_at_every_from_amplified']:.2%} of one core at one scrape every "
        f"{result['scrape_every_s']:g} s.",
        f"- Poll path, paid with metrics on or off: {p['read_answered_ns']} ns per read "
        f"(the plain counter it replaced: {p['plain_counter_ns']} ns), x {p['reads_per_s']} "
        f"reads/s = {p['extra_cores']:.4%} of one core.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poll", type=float, default=0.064)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.poll, args.seconds, args.rounds, args.rate, args.every)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
