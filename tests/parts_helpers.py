"""Part-record tests' helpers: records grouped by station, one part checked against the
simulated PLC's ground truth, and an in-process agent run until a condition holds."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.daemon import Agent
from simulators.station import StationModel
from tests.waiting import wait_until

Records = dict[tuple[str, int], dict[str, Any]]
"""Collected records by (station, seq)."""


def parts_by_station(records: Records) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _key, r in sorted(records.items()):
        if r["kind"] == "part":
            out[r["station"]].append(r)
    return out


def check_part(part: dict[str, Any], model: StationModel) -> None:
    """One part record against what the PLC knew about that cycle."""
    k = part["counter"] - 1
    truth = model.final_values(k)
    assert part["serial"] == model.serial(k), part
    assert part["ctx"]["lot"] == model.lot(k), part
    values = {name: v["value"] for name, v in part["values"].items()}
    assert values["final_force"] == truth["final_force"], part
    assert values["final_depth"] == truth["final_depth"], part
    assert part["result"] == ("ok" if model.ok(k) else "nok"), part
    assert part["values"]["final_force"]["ok"] == model.ok(k), part
    assert part["values"]["final_force"]["unit"] == "kN"
    assert part["quality"] == "good", part
    assert part["cycle_time"] == model.cycle_time


async def run_agent_until(cfg: AgentConfig, condition: Any, what: str) -> Agent:
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await wait_until(condition, 60, what)
    finally:
        stop.set()
        await task
    return agent
