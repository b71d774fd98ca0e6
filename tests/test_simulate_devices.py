"""``simulate --config`` beyond Modbus: scanners (serial, TCP server, TCP client), scales and
OPC UA servers simulated from the config, with their scenario events and faults, read by the
real drivers and agent."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edge_agent.daemon import Agent
from kernel.model import DeviceState, Quality
from simulators.devicemap import Simulation, apply_overrides, parse_scenario
from tests.modbus_helpers import Collector, no_leaks
from tests.simulate_helpers import BACKOFF, OPCUA_POINTS, config, drivers_for
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(90)


async def test_scans_garbage_and_an_unplugged_scanner_through_the_agent(tmp_path: Path) -> None:
    """Scans at their moments on a serial scanner, a TCP scanner (STX/ETX) and one that
    connects to the agent; garbage on the serial line is a rejected scan; the serial port
    unplugged puts the scanner down, and it reads again once the port is back. The scenario
    plays once the agent's scanners are up (a scan sent to a port nobody reads is lost)."""
    scanners = [
        {"name": "sc1", "type": "scanner", "port": "/dev/ttyACM0", **BACKOFF},
        {"name": "sc2", "type": "scanner", "host": "10.0.0.3", "tcp_port": 23,
         "framing": "stx_etx", **BACKOFF},
        {"name": "sc3", "type": "scanner", "listen_port": 5000, "suffix": "CRLF", **BACKOFF},
    ]  # fmt: skip
    station = {
        "scans": {
            "sources": [{"device": s["name"]} for s in scanners],
            "rules": [
                {"name": "serial", "regex": r"(?P<serial>SN\d+)", "set": {"serial": "serial"}}
            ],
        }
    }
    for s in scanners:
        s["station"] = "ST10"
    cfg = config(tmp_path, scanners, **station)
    scenario = parse_scenario(
        """
duration: 60
scans:
  - {device: sc1, at: 0.3, data: SN1}
  - {device: sc2, at: 0.3, data: SN2}
  - {device: sc3, at: 0.5, data: SN3}
  - {device: sc1, at: 3.5, data: SN4}
faults:
  - {device: sc1, at: 1.0, fault: garbage}
  - {device: sc1, at: 1.5, fault: unplug, duration: 1.5}
""",
        cfg,
        "s.yaml",
    )
    sim = Simulation(cfg, scenario, pty_dir=tmp_path / "pty")
    await sim.start(play=False)
    try:
        agent = Agent(apply_overrides(cfg, sim.overrides))
        scans: list[dict[str, Any]] = []

        async def follow() -> None:
            async for batch in agent.tail.subscribe(kinds=["scan"]).batches():
                scans.extend(batch)

        def state(name: str) -> DeviceState:
            return next(d for d in agent.drivers if d.name == name).status.state

        stop = asyncio.Event()
        follower = asyncio.create_task(follow())
        runner = asyncio.create_task(agent.run(stop))
        try:
            await wait_until(
                lambda: all(state(str(s["name"])) is DeviceState.UP for s in scanners),
                10,
                "scanners up",
            )
            sim.play()
            await wait_until(lambda: state("sc1") is DeviceState.DOWN, 10, "sc1 down (unplugged)")
            await wait_until(lambda: any(s.get("text") == "SN4" for s in scans), 15, "SN4 read")
            assert state("sc1") is DeviceState.UP
        finally:
            stop.set()
            await runner
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
    finally:
        await sim.stop()
    texts = {(s["device"], s.get("text"), s["status"]) for s in scans}
    for device, text in (("sc1", "SN1"), ("sc2", "SN2"), ("sc3", "SN3"), ("sc1", "SN4")):
        assert (device, text, "accepted") in texts
    garbage = [s for s in scans if s["device"] == "sc1" and "not text" in (s.get("error") or "")]
    assert len(garbage) == 1
    assert garbage[0]["status"] == "rejected"
    assert [h.error for h in sim.history] == [None] * len(sim.history)


async def test_a_scale_shows_the_scenarios_loads(tmp_path: Path) -> None:
    """A serial MT-SICS scale and a TCP one: each weighs the scenario's loads (stable once
    they settle); silent puts the polled scale down until it answers again."""
    scales = [
        {"name": "sc1", "type": "scale", "port": "/dev/ttyUSB1", "unit": "g", "timeout": 0.2,
         "poll_interval": 0.2, **BACKOFF},
        {"name": "sc2", "type": "scale", "host": "10.0.0.4", "tcp_port": 4001, "timeout": 0.2,
         "poll_interval": 0.2, **BACKOFF},
    ]  # fmt: skip
    cfg = config(tmp_path, scales, device="sc1")
    scenario = parse_scenario(
        """
duration: 60
weights:
  - {device: sc1, at: 0.1, weight: 12.5}
  - {device: sc2, at: 0.1, weight: 250}
faults:
  - {device: sc1, at: 1.5, fault: silent, duration: 1.5}
""",
        cfg,
        "s.yaml",
    )

    def stable(sink: Collector, device: str, weight: float) -> bool:
        return any(
            o.device == device and o.value == weight and o.quality is Quality.GOOD for o in sink.all
        )

    async with no_leaks(), Simulation(cfg, scenario, pty_dir=tmp_path / "pty") as sim:
        drivers = drivers_for(cfg, sim)
        sink = Collector()
        tasks = [asyncio.create_task(d.run(sink)) for d in drivers.values()]
        try:
            await wait_until(
                lambda: stable(sink, "sc1", 12.5) and stable(sink, "sc2", 250.0), 10, "weights"
            )
            sc1 = drivers["sc1"]
            await wait_until(lambda: sc1.status.state is DeviceState.DOWN, 10, "sc1 silent")
            await wait_until(lambda: sc1.status.state is DeviceState.UP, 10, "sc1 back")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_an_opcua_server_from_the_config_gives_part_records(tmp_path: Path) -> None:
    """Nodes at the config's node ids (namespace URIs, an explicit ns=3) and browse paths,
    typed from the config: a handshake part cycle through the agent gives part records with
    the patterned serials; a restart of the server takes the device down and back up."""
    ua = {
        "name": "ua", "type": "opcua", "endpoint": "opc.tcp://10.0.0.7:4840/",
        "namespace": "urn:plant:press", "station": "ST10", "publishing_interval": 0.02,
        "keepalive_count": 10, "lifetime_count": 30, "timeout": 2.0, **BACKOFF,
        "points": OPCUA_POINTS,
    }  # fmt: skip
    station = {
        "device": "ua",
        "context": {"serial": {"point": "serial"}},
        "part": {
            "trigger": {"point": "ready"},
            "snapshot": {"points": ["count", "serial", "force"]},
            "counter": "count",
            "handshake": {"taken": "taken"},
        },
    }
    cfg = config(tmp_path, [ua], **station)
    scenario = parse_scenario(
        """
duration: 60
points:
  ua:
    force: 21.25
    temp: {sequence: {values: [1.5, 2.5], every: 0.2}}
stations:
  ST10: {part_cycle: {period: 0.2, serial: "P-{n:04d}"}}
faults:
  - {device: ua, fault: restart, at: 2.5, duration: 0.5}
""",
        cfg,
        "s.yaml",
    )
    async with Simulation(cfg, scenario, pty_dir=tmp_path) as sim:
        agent = Agent(apply_overrides(cfg, sim.overrides))
        parts: list[dict[str, Any]] = []

        async def follow() -> None:
            async for batch in agent.tail.subscribe(kinds=["part"]).batches():
                parts.extend(batch)

        stop = asyncio.Event()
        follower = asyncio.create_task(follow())
        runner = asyncio.create_task(agent.run(stop))
        driver = agent.drivers[0]
        try:
            await wait_until(lambda: len(parts) >= 3, 20, "three parts")
            await wait_until(lambda: driver.status.state is DeviceState.DOWN, 10, "restart seen")
            seen = len(parts)
            await wait_until(lambda: len(parts) > seen + 2, 30, "parts again after the restart")
        finally:
            stop.set()
            await runner
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        cycle = sim.world.cycles["ST10"]
    for part in parts:
        k = part["counter"] - 1
        assert part["serial"] == cycle.truth(k).serial == f"P-{k + 1:04d}"
        assert part["values"]["force"]["value"] == 21.25
    counters = [p["counter"] for p in parts]
    assert counters == list(range(1, len(counters) + 1)), "the handshake loses no part"
