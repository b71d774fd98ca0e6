"""Fault tests of the whole chain, every part real and in its own process: simulated handshake
PLCs -> agent (``confirm: store``) -> Mosquitto -> trace store (SQLite).

Each test ends with the store holding exactly the records the agent committed (none lost, none
twice), its watermark at the agent's last seq, every station's trace records stored in seq
order, and every PLC part recorded exactly once (``simulators.rig.check_consistent``).

Kill moments are random (seeded per test, printed on failure): the agent is killed once the
store has received a random number of further records, so kills land at every phase of the
pipeline (mid-commit, mid-publish, between a commit and the PLC's "data taken").
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from simulators.rig import LineRig, check_consistent, wait_until

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[LineRig]:
    line = LineRig(tmp_path / "rig", stations=3, poll_interval=0.01)
    try:
        yield line
    finally:
        await line.close()


async def start_line(rig: LineRig) -> None:
    await rig.start_plc()
    await rig.start_broker()
    rig.start_store()


async def finish(rig: LineRig, rng: random.Random) -> None:
    """A last agent run under load, then the clean stop and the final check."""
    rig.start_agent()
    await run_under_load(rig, rng, 200, 400)
    await rig.settle()
    check_consistent(rig)


async def run_under_load(rig: LineRig, rng: random.Random, lo: int, hi: int) -> None:
    """Let the agent run until the store has ``lo..hi`` (random) more records."""
    target = rig.store_count() + rng.randint(lo, hi)
    await wait_until(lambda: rig.store_count() >= target, 60, "records under load")


async def kill_agent_repeatedly(rig: LineRig, rng: random.Random, kills: int) -> None:
    for _ in range(kills):
        rig.start_agent()
        await run_under_load(rig, rng, 0, 1000)
        await rig.kill_agent()


async def test_agent_killed_under_load_twelve_times(rig: LineRig) -> None:
    rng = random.Random(1201)
    await start_line(rig)
    await kill_agent_repeatedly(rig, rng, 12)
    await finish(rig, rng)
    assert rig.agent_kills == 12


async def test_broker_killed_and_restarted_under_load(rig: LineRig) -> None:
    rng = random.Random(2202)
    await start_line(rig)
    rig.start_agent()
    for _ in range(3):
        await run_under_load(rig, rng, 100, 600)
        rig.kill_broker()  # whatever it had not saved is gone, like a power cut
        await rig.start_broker()
    await rig.kill_agent()  # an agent killed during the broker's recovery
    await kill_agent_repeatedly(rig, rng, 3)
    await finish(rig, rng)
    assert (rig.broker_kills, rig.agent_kills) == (3, 4)


async def test_trace_store_killed_and_restarted_under_load(rig: LineRig) -> None:
    rng = random.Random(3303)
    await start_line(rig)
    rig.start_agent()
    for _ in range(3):
        await run_under_load(rig, rng, 100, 600)
        await rig.kill_store()
        rig.start_store()
    await rig.kill_agent()
    await kill_agent_repeatedly(rig, rng, 3)
    await finish(rig, rng)
    assert (rig.store_kills, rig.agent_kills) == (3, 4)
