"""Simulator -> agent -> real Mosquitto -> a subscriber, checked against the simulator's
ground truth: every committed record arrives (or is still buffered), once after dedupe, in
order, with the serial and lot the PLC showed when the value was read."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from edge_agent.config import agent_model
from edge_agent.daemon import Agent
from simulators.consumer import RecordCollector
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config
from simulators.station import StationModel
from tests.mqtt_helpers import Mosquitto, spawn
from tests.waiting import wait_until

AGENT = "e2e-pc1"


def models(cycle_a: float = 0.25, cycle_b: float = 0.4) -> list[StationModel]:
    return [
        StationModel(unit_id=1, serial_prefix="A-", cycle_time=cycle_a, parts_per_lot=3),
        StationModel(unit_id=2, serial_prefix="B-", cycle_time=cycle_b, parts_per_lot=5),
    ]


def config(plc_port: int, mqtt_port: int, tmp: Path, poll: float = 0.05) -> dict[str, Any]:
    return demo_config(
        modbus_port=plc_port,
        mqtt_port=mqtt_port,
        buffer_path=str(tmp / "buffer.db"),
        stations=2,
        poll_interval=poll,
        agent_id=AGENT,
    )


def good_values(r: dict[str, Any]) -> dict[str, Any]:
    """The values of a readings record whose quality is good."""
    if r["kind"] != "readings":
        return {}
    bad = r.get("quality", {})
    return {p: v for p, v in r["values"].items() if p not in bad}


def max_counter(col: RecordCollector, station: str) -> int:
    with col.lock:
        return max(
            (
                good_values(r).get("cycle_counter", 0)
                for r in col.data.records.values()
                if r["station"] == station
            ),
            default=0,
        )


def check_against_truth(
    records: dict[tuple[str, int], dict[str, Any]], truth: dict[str, StationModel]
) -> int:
    """Every good value's context equals what the PLC showed in the same response.

    Returns the number of values checked. A readings record is one response, and the cycle
    counter in it names the part.
    """
    checked = 0
    for (_agent, _seq), r in sorted(records.items()):
        values = good_values(r)
        if "cycle_counter" not in values:
            continue
        model = truth[r["station"]]
        cycle = values["cycle_counter"] - 1
        assert r["ctx"]["serial"] == model.serial(cycle), (r["station"], cycle, r)
        assert r["ctx"]["lot"] == model.lot(cycle), (r["station"], cycle, r)
        checked += len(values)
        assert (values["status"] & 0b100 == 0) == model.ok(cycle)
    return checked


def check_contexts_follow_parts(
    records: dict[tuple[str, int], dict[str, Any]], truth: dict[str, StationModel]
) -> None:
    """Serial context records per station walk through consecutive parts, none skipped."""
    serials: dict[str, list[str]] = defaultdict(list)
    for _key, r in sorted(records.items()):
        if r["kind"] == "context" and r["key"] == "serial" and r["value"] is not None:
            serials[r["station"]].append(r["value"])
    for station, seen in serials.items():
        model = truth[station]
        first = int(seen[0].split("-")[1]) - model.first_serial
        assert seen == [model.serial(first + i) for i in range(len(seen))], station


async def test_end_to_end_binding_and_delivery(tmp_path: Path, mosquitto: Mosquitto) -> None:
    broker = mosquitto
    sims = models()
    async with ModbusStationServer(sims) as plc:
        cfg = agent_model().model_validate(config(plc.port, broker.port, tmp_path))
        truth = {"ST10": plc.stations[0], "ST20": plc.stations[1]}
        with RecordCollector("127.0.0.1", broker.port) as col:
            agent = Agent(cfg)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                await wait_until(lambda: max_counter(col, "ST20") >= 6, 30, "six parts at ST20")
            finally:
                stop.set()
                await task
            committed = agent.buffer.committed_seq
            assert agent.buffer.depth == 0, "a live broker drains the buffer before stop"
            assert col.wait_for(lambda d: len(d.records) >= committed, 10)
    assert col.seqs(AGENT) == list(range(1, committed + 1)), "every committed record, once"
    assert col.data.out_of_order == 0
    assert col.data.bad_messages == 0
    checked = check_against_truth(col.data.records, truth)
    assert checked > 200
    check_contexts_follow_parts(col.data.records, truth)
    # Per-station order on the wire: seqs of each station increase.
    last: dict[str, int] = {}
    for agent_id, seq in col.data.order:
        st = col.data.records[(agent_id, seq)]["station"]
        assert seq > last.get(st, 0)
        last[st] = seq


async def test_broker_restart_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    broker = mosquitto
    async with ModbusStationServer(models()) as plc:
        cfg = agent_model().model_validate(config(plc.port, broker.port, tmp_path))
        with RecordCollector("127.0.0.1", broker.port, client_id="e2e-collector") as col:
            agent = Agent(cfg)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))
            try:
                await wait_until(lambda: len(col.data.records) > 50, 30, "records flowing")
                for _ in range(2):
                    await asyncio.to_thread(broker.stop)
                    depth = agent.buffer.depth
                    # Acquisition goes on while the broker is away: the backlog grows.
                    await wait_until(lambda d=depth: agent.buffer.depth > d + 80, 30, "backlog")
                    assert not agent.sync.status.connected
                    await asyncio.to_thread(broker.start)
                    await wait_until(lambda: agent.buffer.depth < 30, 30, "backlog drained")
            finally:
                stop.set()
                await task
            committed, left = _db_state(tmp_path / "buffer.db")
            assert committed == agent.buffer.committed_seq
            assert col.wait_for(lambda d: len(d.records) + len(left) >= committed, 15)
    delivered = set(col.seqs(AGENT))
    assert delivered | left == set(range(1, committed + 1)), "no committed record lost"
    assert len(left) < 100
    assert col.data.out_of_order == 0


def _db_state(path: Path) -> tuple[int, set[int]]:
    """(last committed seq, seqs still buffered) read straight from the journal file."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        left = {r[0] for r in db.execute("SELECT seq FROM records")}
    finally:
        db.close()
    return (int(row[0]) if row else 0), left


async def test_kill_9_under_load_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """SIGKILL the agent process under load three times: every record it committed ends up
    at the subscriber or still in the journal; seq never repeats with different content."""
    broker = mosquitto
    async with ModbusStationServer(models(0.2, 0.3)) as plc:
        cfg_path = tmp_path / "agent.yaml"
        cfg_path.write_text(yaml.safe_dump(config(plc.port, broker.port, tmp_path, poll=0.01)))
        db_path = tmp_path / "buffer.db"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "--log-level",
            "WARNING",
            "run",
            str(cfg_path),
        ]
        with RecordCollector("127.0.0.1", broker.port, client_id="kill-collector") as col:
            proc: subprocess.Popen[bytes] | None = None
            try:
                for _round in range(3):
                    before = len(col.data.records)
                    proc = spawn(cmd, env)
                    await wait_until(
                        lambda b=before: len(col.data.records) > b + 300, 60, "records under load"
                    )
                    proc.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(proc.wait, 10)
                    assert proc.returncode == -signal.SIGKILL
                    proc = None
                proc = spawn(cmd, env)
                before = len(col.data.records)
                await wait_until(lambda: len(col.data.records) > before + 150, 60, "after restart")
                proc.send_signal(signal.SIGTERM)
                rc = await asyncio.to_thread(proc.wait, 30)
                proc = None
                assert rc == 0, "SIGTERM stops the agent cleanly"
            finally:
                if proc is not None:
                    proc.kill()
                    proc.wait(30)
            last_seq, left = _db_state(db_path)
            assert col.wait_for(lambda d: len(d.records) + len(left) >= last_seq, 15)
    delivered = set(col.seqs(AGENT))
    assert delivered | left == set(range(1, last_seq + 1)), "no committed record lost"
    assert col.data.out_of_order == 0
    # The serials are still right after every restart.
    truth = {
        "ST10": StationModel(unit_id=1, serial_prefix="A-", parts_per_lot=3),
        "ST20": StationModel(unit_id=2, serial_prefix="B-", parts_per_lot=5),
    }
    assert check_against_truth(col.data.records, truth) > 1000
