"""Power cuts of the whole chain, for real (issue 17, item 2): handshake PLCs -> agent
(journal on a power-cut filesystem, the line PC's disk) -> Mosquitto -> trace store (SQLite on
another, the central server's disk). Each cut hits the line PC, the central server or both,
at a random instant or at a random fsync; unsynced pages are dropped, torn or reordered, and
the processes of the machines that lost power are killed and restarted.

After every restart (``simulators.powercut.line``): the journal opens (or was moved aside with
the ``buffer_damaged`` alarm), seqs never went backwards, what the store confirmed is still
there, every record the broker accepted and every part the PLC released is stored or still
on its way; at the end the store holds every record exactly once. The soak
(``python -m benchmarks.powercut_soak``) runs the same for 500 cuts.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from simulators.powercut.control import unavailable
from simulators.powercut.disk import CUT_MODES
from simulators.powercut.line import MOMENTS, PowerCutLine

pytestmark = pytest.mark.timeout(600)

CUTS = 15


async def test_power_cuts_under_load_lose_nothing_that_was_acknowledged(tmp_path: Path) -> None:
    reason = unavailable(tmp_path)
    if reason:
        pytest.skip(reason)
    rng = random.Random(1702)
    line = PowerCutLine(tmp_path / "line", stations=2, poll_interval=0.01)
    try:
        await line.start()
        for _ in range(CUTS):
            await line.run_for(rng, 300)
            await line.cut(rng)
        await line.finish()
    finally:
        await line.close()
    tally = line.tally
    assert tally.violations == []
    assert tally.cuts == CUTS
    # The seed gives every kind of cut at least once.
    assert set(tally.by_mode) == set(CUT_MODES)
    assert set(tally.by_moment) == set(MOMENTS)
    assert set(tally.by_target) == {"both", "line_pc", "central"}
    assert tally.torn > 0


async def test_a_disk_that_ignores_fsync_is_caught(tmp_path: Path) -> None:
    """The checks are not vacuous: with both disks ignoring fsync (a write cache that lies),
    acknowledged records are lost at the first cut and the checks say so."""
    reason = unavailable(tmp_path)
    if reason:
        pytest.skip(reason)
    rng = random.Random(4)
    line = PowerCutLine(tmp_path / "line", stations=2, poll_interval=0.01)
    try:
        await line.start()
        await line.run_for(rng, 300)
        line.line_pc.lie()
        line.central.lie()
        await line.run_for(rng, 300)
        await line.cut(rng, target="both")
    finally:
        await line.close()
    found = "\n".join(line.tally.violations)
    assert "seqs went backwards" in found or "released by the PLC" in found, found
    assert "watermark" in found, found
