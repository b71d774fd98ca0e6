"""``simulate --config`` tests' shared parts: the agent config around a list of devices, the
fast backoff their devices use, the OPC UA points a simulated server serves, the drivers the
agent would run on a simulation, and the agent running on one (``running``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from drivers.base import Driver
from drivers.bus import Buses
from drivers.registry import DriverContext, create_driver
from edge_agent.config import AgentConfig, parse_config
from edge_agent.daemon import Agent
from kernel.model import DeviceState
from simulators.broker import free_port
from simulators.devicemap import Simulation, apply_overrides, parse_scenario
from tests.waiting import wait_until

BACKOFF = {"backoff_initial": 0.05, "backoff_max": 0.2}


def config(tmp: Path, devices: list[dict[str, Any]], **station: Any) -> AgentConfig:
    raw = {
        "agent": {"site": "s1", "line": "l1", "id": "sim-pc2"},
        "stations": [{"name": "ST10", **station}],
        "devices": devices,
        "buffer": {"path": str(tmp / "buffer.db")},
        "control": {"socket": str(tmp / "ctl.sock")},
        "mqtt": {"host": "127.0.0.1", "port": free_port(), "backoff_max": 1.0},
    }
    return parse_config(yaml.safe_dump(raw, sort_keys=False), "line.yaml")


OPCUA_POINTS = [
    {"name": "count", "node": "nsu=urn:plant:press;s=Press.Count", "type": "int"},
    {"name": "serial", "node": "nsu=urn:plant:press;i=4711", "type": "string"},
    {"name": "force", "browse_path": "Press/Force", "type": "float", "report": "snapshot"},
    {"name": "temp", "node": "ns=3;s=Temp"},
    {"name": "ready", "browse_path": "Press/Ready", "type": "bool"},
    {"name": "taken", "browse_path": "nsu=urn:plant:press;Press/Taken", "type": "bool",
     "report": "snapshot"},
]  # fmt: skip


def drivers_for(cfg: AgentConfig, sim: Simulation) -> dict[str, Driver]:
    context = DriverContext(buses=Buses())
    live = apply_overrides(cfg, sim.overrides)
    return {d.name: create_driver(d, context) for d in live.devices}


class Running:
    """The agent on the simulators, with the records of ``kinds`` it commits."""

    def __init__(self, agent: Agent, sim: Simulation) -> None:
        self.agent = agent
        self.sim = sim
        self.records: list[dict[str, Any]] = []

    def state(self, name: str) -> DeviceState:
        return next(d for d in self.agent.drivers if d.name == name).status.state

    def scans(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["kind"] == "scan"]


@asynccontextmanager
async def running(
    cfg: Any, scenario_text: str, tmp: Path, kinds: list[str]
) -> AsyncIterator[Running]:
    """The simulation started, the agent run on it until every device is up, then the
    scenario played."""
    scenario = parse_scenario(scenario_text, cfg, "s.yaml")
    sim = Simulation(cfg, scenario, pty_dir=tmp / "pty")
    await sim.start(play=False)
    try:
        run = Running(Agent(apply_overrides(cfg, sim.overrides)), sim)

        async def follow() -> None:
            async for batch in run.agent.tail.subscribe(kinds=kinds).batches():
                run.records.extend(batch)

        stop = asyncio.Event()
        follower = asyncio.create_task(follow())
        runner = asyncio.create_task(run.agent.run(stop))
        try:
            names = [d.name for d in cfg.devices]
            await wait_until(
                lambda: all(run.state(n) is DeviceState.UP for n in names), 20, "devices up"
            )
            sim.play()
            yield run
        finally:
            stop.set()
            await runner
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
    finally:
        await sim.stop()
