"""Hot reload: an invalid file changes nothing; a valid one restarts only the devices that
changed and keeps context, journal and seq; SIGHUP and `edge-agent reload` both trigger it."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import yaml

from edge_agent.cli import main as cli_main
from edge_agent.config import agent_model, load_config
from edge_agent.daemon import Agent
from simulators.broker import free_port
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config
from simulators.station import StationModel
from tests.mqtt_helpers import spawn
from tests.waiting import wait_until


def journal(path: Path) -> list[tuple[int, str, str]]:
    """(seq, kind, point-or-key) of every record still in the journal (no broker: all), a
    readings record once per point; nothing while the agent is still creating it."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'records'").fetchone():
            return []
        rows = db.execute(
            "SELECT seq, kind, coalesce(json_extract(body, '$.key'), '') FROM records "
            "WHERE kind != 'readings' UNION ALL "
            "SELECT r.seq, r.kind, v.key FROM records AS r, json_each(r.body, '$.values') AS v "
            "WHERE r.kind = 'readings' ORDER BY 1"
        ).fetchall()
    finally:
        db.close()
    return [(int(s), str(k), str(p)) for s, k, p in rows]


def base_config(plc_port: int, tmp: Path) -> dict[str, Any]:
    return demo_config(
        modbus_port=plc_port,
        mqtt_port=free_port(),  # no broker: every record stays in the journal to be checked
        buffer_path=str(tmp / "buffer.db"),
        stations=2,
        parts=False,
        poll_interval=0.05,
    )


async def test_reload_restarts_only_changed_devices_and_keeps_state(tmp_path: Path) -> None:
    sims = [StationModel(unit_id=1, cycle_time=0.3), StationModel(unit_id=2, cycle_time=0.3)]
    async with ModbusStationServer(sims) as plc:
        raw = base_config(plc.port, tmp_path)
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump(raw))
        agent = Agent(load_config(path), config_path=path)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await wait_until(
                lambda: all(c["serial"] for c in agent.binder.contexts.values()), 20, "serials"
            )
            await agent.set_context("ST10", {"work_order": "WO-1"})
            before = dict(agent.device_tasks)
            socket = agent.cfg.control.socket

            # An invalid file: every problem reported, nothing touched.
            path.write_text("agent: {site: s1, line: l1, id: a1}\nstations: [oops\n")
            rc = await asyncio.to_thread(cli_main, ["reload", "--socket", socket])
            assert rc == 2
            reply = await agent.reload()
            assert not reply["ok"]
            assert "agent.yaml:" in reply["errors"][0]
            assert dict(agent.device_tasks) == before

            # One device changed: only it restarts; context and seq carry on.
            changed = copy.deepcopy(raw)
            changed["devices"][1]["points"].append(
                {"name": "extra", "address": 18, "type": "int16", "unit": "um"}
            )
            path.write_text(yaml.safe_dump(changed))
            rc = await asyncio.to_thread(cli_main, ["reload", "--socket", socket])
            assert rc == 0
            assert agent.device_tasks["press1"] is before["press1"]
            assert agent.device_tasks["press2"] is not before["press2"]
            assert before["press2"].done()
            assert agent.binder.contexts["ST10"]["work_order"] == "WO-1"
            await wait_until(
                lambda: any(p == "extra" for _s, _k, p in journal(tmp_path / "buffer.db")),
                20,
                "readings of the new point",
            )

            # Identity and journal cannot move under a running agent.
            moved = copy.deepcopy(changed)
            moved["buffer"]["path"] = str(tmp_path / "other.db")
            path.write_text(yaml.safe_dump(moved))
            reply = await agent.reload()
            assert reply == {
                "ok": False,
                "errors": ["buffer: changed; restart the agent to apply it"],
            }
        finally:
            stop.set()
            await task
    rows = journal(tmp_path / "buffer.db")
    seqs = sorted({s for s, _k, _p in rows})
    assert seqs == list(range(1, len(seqs) + 1)), "seq never jumps or resets"
    extra = [s for s, _k, p in rows if p == "extra"]
    manual = [s for s, k, p in rows if k == "context" and p == "work_order"]
    assert manual
    assert extra
    assert manual[0] < extra[0]


async def test_sighup_reloads_a_running_agent(tmp_path: Path) -> None:
    async with ModbusStationServer([StationModel(unit_id=1), StationModel(unit_id=2)]) as plc:
        raw = base_config(plc.port, tmp_path)
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump(raw))
        cmd = [sys.executable, "-m", "edge_agent.cli", "--log-level", "WARNING", "run", str(path)]
        proc = spawn(cmd, {**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            db = tmp_path / "buffer.db"
            await wait_until(lambda: len(journal(db)) > 20, 30, "agent running")
            raw["devices"][0]["points"].append({"name": "extra", "address": 18, "type": "int16"})
            path.write_text(yaml.safe_dump(raw))
            proc.send_signal(signal.SIGHUP)
            await wait_until(
                lambda: any(p == "extra" for _s, _k, p in journal(db)), 30, "the new point"
            )
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


def test_devices_poll_in_spread_phases(tmp_path: Path) -> None:
    """Devices are spread over their poll interval (at most PHASE_SLOTS phases), so that a
    line of PLCs is not read, committed and published in one burst."""
    raw = demo_config(
        modbus_port=free_port(), mqtt_port=free_port(), buffer_path=str(tmp_path / "b.db"),
        stations=6,
    )  # fmt: skip
    agent = Agent(agent_model().model_validate(raw))
    assert [d.phase for d in agent.drivers] == [0.0, 0.5, 0.0, 0.5, 0.0, 0.5]
    one = Agent(agent_model().model_validate({**raw, "devices": raw["devices"][:1],
                                            "stations": raw["stations"][:1]}))  # fmt: skip
    assert [d.phase for d in one.drivers] == [0.0]
