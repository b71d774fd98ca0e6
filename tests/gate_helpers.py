"""Station-gate test helpers: an agent config with a gated station (a scanner on a pty, the
simulated PLC's writable coil as the interlock bit), blocked-set messages, an agent run as a
context manager, and a publisher on the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.publish as mqtt_publish

from edge_agent.config import AgentConfig, agent_model
from edge_agent.daemon import Agent
from simulators.scenario import demo_config
from tests.waiting import wait_until

SCAN_RULES = [
    {"name": "serial", "regex": "^SN:(?P<s>.+)$", "set": {"serial": "s"}},
    {"name": "lot", "regex": "^LOT:(?P<lot>.+)$", "set": {"lot": "lot"}, "consume": {"lot": "lot"}},
]


def gated_config(
    tmp: Path,
    *,
    mqtt_port: int,
    modbus_port: int,
    scanners: dict[str, str],
    gate: dict[str, dict[str, Any]],
    agent_id: str = "gate-pc1",
    line: str = "line1",
    only: list[str] | None = None,
    stations: int = 2,
    metrics_port: int | None = None,
    **demo: Any,
) -> AgentConfig:
    """The demo stations (one PLC unit each, recording parts), each station of ``scanners``
    fed by a scanner on its pty instead (and recording no parts), with the ``gate`` sections
    given; ``only``: just these stations (and their PLCs). On a scanner station's PLC, coil 3
    (the only address the simulator lets a client write) is named ``gate_refused``: the
    interlock bit."""
    raw = demo_config(
        modbus_port=modbus_port,
        mqtt_port=mqtt_port,
        buffer_path=str(tmp / f"{agent_id}.db"),
        stations=stations,
        agent_id=agent_id,
        **demo,
    )
    raw["agent"]["line"] = line
    if only is not None:
        raw["stations"] = [st for st in raw["stations"] if st["name"] in only]
        raw["devices"] = [d for d in raw["devices"] if d.get("station") in only]
    for device in raw["devices"]:
        if device.get("station") in scanners:
            for point in device.get("points", []):
                if point["name"] == "data_taken":
                    point["name"] = "gate_refused"
    for station in raw["stations"]:
        name = station["name"]
        if name in scanners:
            station.pop("part", None)  # a gate station here: its coil 3 is the interlock
            station["context"] = {}  # serial and lot come from the scanner
            station["scans"] = {"sources": [{"device": f"scan-{name}"}], "rules": SCAN_RULES}
            device = next(d["name"] for d in raw["devices"] if d.get("station") == name)
            raw["devices"].append(
                {
                    "name": f"scan-{name}", "type": "scanner", "station": name,
                    "port": scanners[name], "feedback": {"good": "<ESC>7", "bad": "<ESC>8"},
                }
            )  # fmt: skip
            if name in gate:
                station["gate"] = {
                    "interlock": {"device": device, "point": "gate_refused"},
                    **gate[name],
                }
    raw["control"] = {"socket": str(tmp / f"{agent_id}.sock")}
    if metrics_port is not None:
        raw["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
    cfg = agent_model().model_validate(raw)
    assert cfg.issues() == []
    return cfg


def blocked_set(version: int, **lists: list[str]) -> bytes:
    doc: dict[str, Any] = {"v": 1, "version": version, "at": "2026-12-03T21:00:00.000Z"}
    for name, keys in lists.items():
        doc[name] = [
            {"key": k, "reason": "failed incoming inspection", "since": doc["at"], "by": "qe"}
            for k in keys
        ]
    return json.dumps(doc).encode()


def publish(port: int, topic: str, payload: bytes, *, retain: bool) -> None:
    """One QoS 1 message on the real broker (returns once the broker has it)."""
    mqtt_publish.single(topic, payload, qos=1, retain=retain, hostname="127.0.0.1", port=port)


@contextlib.asynccontextmanager
async def running(cfg: AgentConfig) -> AsyncIterator[Agent]:
    """An agent running in this loop until the block ends (stopped cleanly then)."""
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name=f"agent:{cfg.agent.id}")
    try:
        await wait_until(lambda: agent.started.is_set() or task.done(), 20, "agent started")
        if task.done():
            task.result()
        yield agent
    finally:
        stop.set()
        await task


def journal_records(path: str | Path, kind: str) -> list[dict[str, Any]]:
    """Records of ``kind`` still in a stopped agent's journal (not yet delivered)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT body FROM records WHERE kind = ? ORDER BY seq", (kind,))
        return [json.loads(body) for (body,) in rows]
