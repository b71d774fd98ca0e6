"""Storage faults of the whole chain (see test_faults.py for the rig and the final check): a
long outage that builds a backlog of 100,000 readings and drains, and a journal that runs full.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edge_agent.cli import main as cli_main
from edge_agent.control import request
from simulators.rig import LineRig, check_consistent, wait_until, wait_until_async

pytestmark = pytest.mark.timeout(900)


async def test_long_outage_builds_a_100k_backlog_that_drains_completely(
    tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    rig = LineRig(tmp_path / "rig", stations=4, poll_interval=0.005)
    try:
        await rig.start_plc()
        rig.start_agent()  # broker and store down: the plant network is out
        started = time.monotonic()
        # Readings, not records: a record holds one response (a few values here).
        await wait_until(lambda: rig.readings_committed() >= 100_000, 300, "a 100k backlog")
        backlog = rig.journal_state()[1]
        built = time.monotonic() - started
        await rig.start_broker()
        rig.start_store()
        started = time.monotonic()
        await rig.settle()
        drained = time.monotonic() - started
        view = check_consistent(rig)
        assert len(view.seqs) >= backlog
        record_property("backlog_records", backlog)
        record_property("backlog_build_s", round(built, 1))
        record_property("backlog_drain_s", round(drained, 1))
    finally:
        await rig.close()


async def test_full_journal_evicts_telemetry_keeps_every_trace_record_and_recovers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The journal is capped at 3 MiB (SQLite's page limit stands in for a full disk) and the
    trace store is down, so nothing leaves: telemetry gives way, oldest first, trace records
    and PLC handshakes go on; once the store is back everything left is delivered."""
    rig = LineRig(
        tmp_path / "rig",
        poll_interval=0.005,
        buffer={
            "max_bytes": 3 * 1024 * 1024,
            # Bounds far above what fits, so the cap itself (SQLITE_FULL) is what bites.
            "telemetry": {"max_rows": 10_000_000, "max_bytes": 10 * 1024**3},
        },
    )
    try:
        await rig.start_plc()
        await rig.start_broker()
        rig.start_agent()
        socket = rig.journal.with_suffix(".sock")
        await wait_until(socket.exists, 30, "the agent's control socket")

        async def evicting() -> bool:
            assert rig.agent is not None
            assert rig.agent.poll() is None, rig.log_tail("agent")
            status = await request(socket, {"op": "status"})
            return int(status["status"]["buffer"]["evicted_rows"]) > 0

        await wait_until_async(evicting, 180, "telemetry evicted from the full journal")
        # The operator's view: `edge-agent status` names the alarm and exits 3.
        rc = await asyncio.to_thread(cli_main, ["status", "--socket", str(socket)])
        assert rc == 3
        assert "ALARM telemetry_evicted" in capsys.readouterr().out
        released = rig.plc.plc(1).parts_released
        await wait_until(
            lambda: rig.plc.plc(1).parts_released > released + 3, 60, "PLC parts still released"
        )
        rig.start_store()
        await rig.settle()
        view = check_consistent(rig, evicted_ok=True)
        last, _ = rig.journal_state()
        assert len(view.seqs) < last, "some telemetry was evicted"
    finally:
        await rig.close()
