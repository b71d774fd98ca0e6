"""Serial scanners: scan -> committed -> good-read answer latency, scans/s one scanner device
sustains, and the CPU of an idle serial device (issue 14, item 9).

The agent runs as its own process (``edge-agent run``) with one station and one scanner on a
pty pair (``simulators.serial_link.NullModem``), the journal at ``synchronous: FULL`` (every
commit fsynced), publishing to a real Mosquitto. The scanner simulator (``simulators.scanner``)
runs here and records, for every scan, when its last byte went to the wire and when the
agent's answer (Honeywell host ACK, ESC 7) came back: the answer is only sent once the scan's
record is committed, so that interval is the whole path scan -> frame -> bind -> commit ->
answer, the time the operator waits for the beep.

- **latency**: one scan at a time (the next after the answer), ``scans`` of them;
  p50/p99 against the target p99 <= 50 ms;
- **throughput**: ``burst`` scans written back to back without waiting; scans/s from the
  first scan's write to the last answer (every one answered once committed);
- **idle CPU**: the agent's CPU share over ``idle`` seconds with the scanner connected and
  silent (and its station idle): no busy polling of the port.

Run: ``python -m benchmarks.scanner [--scans 200] [--burst 1000] [--idle 5] [--json out]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from benchmarks.latency import summary
from benchmarks.throughput import CLI
from edge_agent.control import ControlError, request
from simulators.broker import MosquittoBroker
from simulators.scanner import HandheldScanner, HostAck, PtyTransport, ScannerConfig
from simulators.station import StationModel

TARGET_P99_MS = 50.0
IN_FLIGHT = 32
RULES = [{"name": "label", "gs1": True, "require": ["01", "21"], "set": {"serial": "21"}}]


def config(tmp: Path, port: str, mqtt_port: int) -> dict[str, Any]:
    return {
        "agent": {"site": "bench", "line": "l1", "id": "bench-scanner"},
        "stations": [
            {"name": "ST10", "scans": {"sources": [{"device": "scanner10"}], "rules": RULES}}
        ],
        "devices": [
            {
                "name": "scanner10",
                "type": "scanner",
                "station": "ST10",
                "port": port,
                "feedback": {"good": "<ESC>7", "bad": "<ESC>8"},
            }
        ],
        "buffer": {"path": str(tmp / "buffer.db"), "synchronous": "FULL"},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "control": {"socket": str(tmp / "control.sock")},
    }


async def _until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {within:g} s")
        await asyncio.sleep(0.005)


async def measure(scans: int, burst: int, idle: float, mqtt_port: int, tmp: Path) -> dict[str, Any]:
    transport = PtyTransport(tmp)
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(config(tmp, str(transport.agent_path), mqtt_port)))
    # A model whose scanner only scans on demand; its serials are the scans' payloads.
    model = StationModel(cycle_time=1.0)
    cfg = ScannerConfig(auto=False, ack=HostAck())
    async with HandheldScanner(model, transport, cfg) as sim:
        agent = await asyncio.create_subprocess_exec(*CLI, "run", str(path))
        try:
            process = psutil.Process(agent.pid)
            # Scans written before the agent opens the port are flushed by the open (as on a
            # real wire): wait until its scanner is up, then until a scan is answered.
            socket = str(tmp / "control.sock")
            deadline = time.monotonic() + 60
            while True:
                try:
                    reply = await request(socket, {"op": "status"}, answer_within=2)
                except ControlError:
                    reply = {}
                if reply.get("status", {}).get("devices", {}).get("scanner10") == "up":
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("the agent's scanner is not up within 60 s")
                await asyncio.sleep(0.05)
            await sim.scan_part()
            await _until(lambda: len(sim.feedback) >= 1, 60, "the first answer")
            # Idle: nothing to read, nothing to send.
            cpu0, t0 = _cpu(process), time.monotonic()
            await asyncio.sleep(idle)
            idle_share = (_cpu(process) - cpu0) / (time.monotonic() - t0)
            # Latency: one scan at a time.
            latencies: list[float] = []
            for _ in range(scans):
                before = len(sim.feedback)
                await sim.scan_part()
                await _until(lambda b=before: len(sim.feedback) > b, 10, "an answer")
                fb = sim.feedback[-1]
                latencies.append(fb.latency if fb.latency is not None else float("nan"))
            good = sum(1 for f in sim.feedback if f.verdict == "good")
            # Throughput: scans written without waiting for each answer, at most IN_FLIGHT
            # unanswered (a pty's queue holds 4 KiB; beyond it the null modem drops bytes, as
            # a serial line without flow control overruns).
            before = len(sim.feedback)
            start = time.monotonic()
            cpu0 = _cpu(process)
            for i in range(burst):
                await _until(
                    lambda i=i: len(sim.feedback) - before > i - IN_FLIGHT, 10, "an answer"
                )
                await sim.scan_part()
            await _until(lambda: len(sim.feedback) >= before + burst, 60, "every burst answer")
            took = time.monotonic() - start
            burst_cpu = _cpu(process) - cpu0
        finally:
            agent.terminate()
            await agent.wait()
    lat = summary(latencies)
    return {
        "scans": scans,
        "answered_good": good,
        "latency": lat,
        "target_met": lat["p99_ms"] is not None and lat["p99_ms"] <= TARGET_P99_MS,
        "burst": burst,
        "burst_scans_per_s": round(burst / took, 1),
        "burst_cpu_s_per_1k_scans": round(burst_cpu / burst * 1000, 3),
        "bytes_lost_on_the_line": transport.link.lost_bytes,
        "idle_seconds": idle,
        "idle_cpu_share": round(idle_share, 4),
    }


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def run(scans: int = 200, burst: int = 1000, idle: float = 5.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-scanner-") as tmp:
        broker = MosquittoBroker()
        broker.start_sync()
        try:
            return asyncio.run(measure(scans, burst, idle, broker.port, Path(tmp)))
        finally:
            broker.stop_sync()
            broker.close()


def table(r: dict[str, Any]) -> str:
    lat = r["latency"]
    return "\n".join(
        [
            "| scans | p50 ms | p99 ms | max ms | burst scans/s | CPU s / 1k scans | idle CPU |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {r['scans']} | {lat['p50_ms']} | {lat['p99_ms']} | {lat.get('max_ms')} | "
            f"{r['burst_scans_per_s']:,.0f} | {r['burst_cpu_s_per_1k_scans']} | "
            f"{r['idle_cpu_share']:.2%} |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.scans, args.burst, args.idle)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
