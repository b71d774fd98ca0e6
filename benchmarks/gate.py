"""The station gate (issue 20, item 5): how fast a scan of a blocked lot is refused at the
station, and how fast a block on the trace store reaches every connected agent.

- **decision latency**: one agent (``edge-agent run``, its own process, journal at
  ``synchronous: FULL``) with a gated station: a scanner on a pty pair
  (``simulators.scanner``) answering good/bad read in host ACK mode, and the interlock bit on
  the simulated PLC (``simulators.modbus_server``, in this process). A blocked set holding
  lot L-BLOCKED is published on a real Mosquitto first. Then, ``scans`` times: the scanner
  sends ``LOT:L-BLOCKED`` and the time runs from its last byte on the wire until both the
  bad-read answer is back (sent only once the refusal's scan and gate records are committed)
  and the PLC has received the interlock write; a good lot scanned after each releases the
  interlock (not timed). Decided locally: no MQTT round trip. Target p99 <= 50 ms.
- **block -> enforced**: the real trace store (in this process, SQLite) and ``agents`` gated
  agents on the same broker. ``rounds`` times a new lot is blocked with the store's CLI
  (``edge-agent quality block``, its own process, as a quality engineer runs it); the time
  runs from the command's return (the block committed in the store's database) until every
  agent holds the new blocked-set version (asked over each agent's control socket every
  10 ms; the gate decides from that copy). Also reported from the command's start (its
  Python start-up included). Target <= 2 s.

Run: ``python -m benchmarks.gate [--scans 200] [--agents 3] [--rounds 5] [--json out]``.
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

import paho.mqtt.publish as mqtt_publish
import yaml

from benchmarks.latency import summary
from benchmarks.throughput import CLI
from edge_agent.control import ControlError, request
from simulators.broker import MosquittoBroker
from simulators.modbus_server import ModbusStationServer
from simulators.scanner import HandheldScanner, HostAck, PtyTransport, ScannerConfig
from simulators.station import COIL_DATA_TAKEN, StationModel

TARGET_DECISION_P99_MS = 50.0
TARGET_ENFORCED_S = 2.0
BLOCKED = "L-BLOCKED"
RULES = [
    {"name": "lot", "regex": "^LOT:(?P<lot>.+)$", "set": {"lot": "lot"}, "consume": {"lot": "lot"}}
]


class TimedPlc(ModbusStationServer):
    """The simulated PLC, noting when the interlock coil (its writable coil 3) is set."""

    def __init__(self, stations: list[StationModel]) -> None:
        super().__init__(stations)
        self.raised_at: float | None = None

    def _write_taken(self, station: StationModel, value: bool, now: float) -> None:
        if value and self.raised_at is None:
            self.raised_at = time.monotonic()
        super()._write_taken(station, value, now)


def config(
    tmp: Path, agent: str, scanner: str, mqtt_port: int, plc_port: int | None
) -> dict[str, Any]:
    devices: list[dict[str, Any]] = [
        {
            "name": "scanner10", "type": "scanner", "station": "ST10", "port": scanner,
            "feedback": {"good": "<ESC>7", "bad": "<ESC>8"},
        }
    ]  # fmt: skip
    gate: dict[str, Any] = {"blocked": "refuse"}
    if plc_port is not None:
        devices.append(
            {
                "name": "plc10", "type": "modbus_tcp", "host": "127.0.0.1", "port": plc_port,
                "station": "ST10", "unit_id": 1, "poll_interval": 1.0,
                "points": [{"name": "gate_refused", "table": "coil",
                            "address": COIL_DATA_TAKEN, "type": "bool", "report": "snapshot"}],
            }
        )  # fmt: skip
        gate["interlock"] = {"device": "plc10", "point": "gate_refused"}
    return {
        "agent": {"site": "bench", "line": "l1", "id": agent},
        "stations": [
            {
                "name": "ST10",
                "scans": {"sources": [{"device": "scanner10"}], "rules": RULES},
                "gate": gate,
            }
        ],
        "devices": devices,
        "buffer": {"path": str(tmp / f"{agent}.db"), "synchronous": "FULL"},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "control": {"socket": str(tmp / f"{agent}.sock")},
    }


async def _until(check: Any, within: float, what: str, step: float = 0.002) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {within:g} s")
        await asyncio.sleep(step)


async def _status(socket: str) -> dict[str, Any]:
    try:
        reply = await request(socket, {"op": "status"}, answer_within=2)
    except ControlError:
        return {}
    status: dict[str, Any] = reply.get("status", {})
    return status


async def _wait_status(socket: str, check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check(await _status(socket)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {within:g} s")
        await asyncio.sleep(0.01)


def _blocked_version(status: dict[str, Any]) -> int:
    gate = status.get("gate") or {}
    return int(gate.get("blocked_version", -1))


async def _start(tmp: Path, cfg: dict[str, Any]) -> asyncio.subprocess.Process:
    path = tmp / f"{cfg['agent']['id']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return await asyncio.create_subprocess_exec(*CLI, "run", str(path))


async def decision(scans: int, mqtt_port: int, tmp: Path) -> dict[str, Any]:
    model = StationModel(cycle_time=1.0)
    transport = PtyTransport(tmp)
    plc = TimedPlc([model])
    async with plc, HandheldScanner(
        model, transport, ScannerConfig(auto=False, ack=HostAck())
    ) as sim:  # fmt: skip
        cfg = config(tmp, "bench-gate", str(transport.agent_path), mqtt_port, plc.port)
        agent = await _start(tmp, cfg)
        socket = cfg["control"]["socket"]
        try:
            await _wait_status(
                socket,
                lambda s: (
                    s.get("devices", {}).get("scanner10") == "up"
                    and s.get("sync", {}).get("connected")
                ),
                60,
                "the agent's scanner up and uplink connected",
            )
            blocked = {"v": 1, "version": 1, "at": None, "lots": [{"key": BLOCKED}]}
            await asyncio.to_thread(
                mqtt_publish.single, "trace/blocked", json.dumps(blocked), qos=1, retain=True,
                hostname="127.0.0.1", port=mqtt_port,
            )  # fmt: skip
            await _wait_status(socket, lambda s: _blocked_version(s) == 1, 10, "set held")
            latencies: list[float] = []
            answers: list[float] = []
            refused = 0
            for i in range(scans):
                plc.raised_at = None
                before = len(sim.feedback)
                record = await sim.scan_material(f"LOT:{BLOCKED}")
                await _until(lambda b=before: len(sim.feedback) > b, 10, "the bad-read answer")
                await _until(lambda: plc.raised_at is not None, 10, "the interlock write")
                fb = sim.feedback[before]
                refused += fb.verdict == "bad"
                assert record.sent_at is not None
                assert plc.raised_at is not None
                answered = fb.at - record.sent_at
                answers.append(answered)
                latencies.append(max(answered, plc.raised_at - record.sent_at))
                # A good lot releases the interlock for the next round (not timed).
                before = len(sim.feedback)
                await sim.scan_material(f"LOT:L-GOOD-{i}")
                await _until(lambda b=before: len(sim.feedback) > b, 10, "the good-read answer")
                await _until(lambda: not plc.data_taken(1), 10, "the interlock released")
        finally:
            agent.terminate()
            await agent.wait()
    lat = summary(latencies)
    return {
        "scans": scans,
        "refused": refused,
        "latency": lat,
        "answer_latency": summary(answers),
        "target_met": refused == scans
        and lat["p99_ms"] is not None
        and lat["p99_ms"] <= TARGET_DECISION_P99_MS,
    }


async def enforced(agents: int, rounds: int, mqtt_port: int, tmp: Path) -> dict[str, Any]:
    from trace_store.config import StoreConfig
    from trace_store.service import TraceStore

    db = str(tmp / "trace.db")
    store = TraceStore(StoreConfig(host="127.0.0.1", port=mqtt_port, db=db, store_id="bench"))
    store.start()
    procs: list[asyncio.subprocess.Process] = []
    sockets: list[str] = []
    sims: list[HandheldScanner] = []
    try:
        if not await asyncio.to_thread(store.wait_ready, 30):
            raise TimeoutError("trace store not ready within 30 s")
        for n in range(agents):
            transport = PtyTransport(tmp / f"a{n}")
            (tmp / f"a{n}").mkdir(exist_ok=True)
            sim = HandheldScanner(StationModel(), transport, ScannerConfig(auto=False))
            await sim.__aenter__()
            sims.append(sim)
            cfg = config(tmp, f"bench-gate-{n}", str(transport.agent_path), mqtt_port, None)
            procs.append(await _start(tmp, cfg))
            sockets.append(cfg["control"]["socket"])
        for socket in sockets:
            # Connected, and holding the store's set (version 0 on a fresh store, or later).
            await _wait_status(socket, lambda s: _blocked_version(s) >= 0, 60, "agent up")
        from_return: list[float] = []
        from_start: list[float] = []
        for r in range(rounds):
            versions = [_blocked_version(await _status(s)) for s in sockets]
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *CLI, "quality", "block", "--db", db, "--lot", f"L-BENCH-{r}", "--reason",
                "benchmark", "--user", "bench", stdout=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            if await proc.wait() != 0:
                raise RuntimeError("edge-agent quality block failed")
            returned = time.monotonic()
            target = max(versions) + 1
            for socket in sockets:
                await _wait_status(
                    socket, lambda s, t=target: _blocked_version(s) >= t, 30, "block enforced"
                )
            done = time.monotonic()
            from_return.append(done - returned)
            from_start.append(done - started)
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()
        for sim in sims:
            await sim.__aexit__(None, None, None)
        await asyncio.to_thread(store.stop)
    worst = max(from_return)
    return {
        "agents": agents,
        "rounds": rounds,
        "from_block_committed_s": [round(x, 3) for x in from_return],
        "from_command_start_s": [round(x, 3) for x in from_start],
        "max_s": round(worst, 3),
        "target_met": worst <= TARGET_ENFORCED_S,
    }


def run(scans: int = 200, agents: int = 3, rounds: int = 5) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        broker = MosquittoBroker()
        broker.start_sync()
        try:
            out: dict[str, Any] = {
                "decision": asyncio.run(decision(scans, broker.port, Path(tmp))),
            }
            out["enforced"] = asyncio.run(enforced(agents, rounds, broker.port, Path(tmp)))
            return out
        finally:
            broker.stop_sync()
            broker.close()


def table(r: dict[str, Any]) -> str:
    d, e = r["decision"], r["enforced"]
    lat, ans = d["latency"], d["answer_latency"]
    return "\n".join(
        [
            "| measure | p50 | p99 | max | target |",
            "| --- | ---: | ---: | ---: | --- |",
            f"| blocked scan -> refusal committed + interlock written ({d['scans']} scans) | "
            f"{lat['p50_ms']} ms | {lat['p99_ms']} ms | {lat['max_ms']} ms | p99 <= 50 ms |",
            f"| of which: bad-read answer back | {ans['p50_ms']} ms | {ans['p99_ms']} ms | "
            f"{ans['max_ms']} ms | |",
            f"| block on the store -> {e['agents']} agents enforcing ({e['rounds']} blocks) | "
            f"{sorted(e['from_block_committed_s'])[len(e['from_block_committed_s']) // 2]} s | | "
            f"{e['max_s']} s | <= 2 s |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--scans", type=int, default=200)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.scans, args.agents, args.rounds)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
