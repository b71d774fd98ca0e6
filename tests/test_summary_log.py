"""The periodic summary line (``agent.summary_interval``), from a real agent reading the
station simulator: its counts are those of the agent's stats over the interval, its totals
those since start, and it says how much waits in the journal and for how long."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import agent_model
from edge_agent.daemon import Agent
from edge_agent.stats import AgentStats
from edge_agent.summary import COUNTS, SummaryLog, age, span
from simulators.broker import free_port
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config
from simulators.station import StationModel
from tests.modbus_helpers import wait_until
from tests.mqtt_helpers import Mosquitto

LINE = re.compile(
    r"summary: 0\.4s: ([\d,]+) parts \(([\d,]+) NOK\), ([\d,]+) readings, ([\d,]+) scans "
    r"\(([\d,]+) rejected\)(?:, [\d,]+ gaps)?, journal ([\d,]+) waiting, "
    r"oldest unconfirmed (-|[\d.]+ (?:s|min)), uplink (connected|down \(.+\))"
)


async def run_until_summaries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, n: int, mqtt_port: int
) -> tuple[Agent, list[logging.LogRecord], list[dict[str, int]], float]:
    """Run an agent until it has logged ``n`` summary lines; return them with the agent's
    totals at the instant each was logged."""
    model = StationModel(unit_id=1, serial_prefix="S1-", cycle_time=0.2)
    at_log: list[dict[str, int]] = []
    async with ModbusStationServer([model]) as plc:
        raw = demo_config(
            modbus_port=plc.port,
            mqtt_port=mqtt_port,
            buffer_path=str(tmp_path / "buffer.db"),
            poll_interval=0.02,
        )
        raw["agent"]["summary_interval"] = 0.4
        agent = Agent(agent_model().model_validate(raw))

        def snapshot(record: logging.LogRecord) -> bool:
            # Runs in the loop, inside log.info: the stats as they were at that instant.
            at_log.append({k: int(getattr(agent.stats, k)) for k in COUNTS})
            return True

        summary_log = logging.getLogger("edge_agent.summary")
        summary_log.addFilter(snapshot)
        stop = asyncio.Event()
        started = time.time()
        task = asyncio.create_task(agent.run(stop))
        try:
            with caplog.at_level(logging.INFO, logger="edge_agent.summary"):
                await wait_until(
                    lambda: len(at_log) >= n and agent.stats.parts >= 1, 30, f"{n} summaries"
                )
                records = [r for r in caplog.records if r.name == "edge_agent.summary"]
        finally:
            summary_log.removeFilter(snapshot)
            stop.set()
            await task
    return agent, records, at_log, time.time() - started


async def test_summary_counts_are_the_stats_over_each_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent, records, at_log, elapsed = await run_until_summaries(tmp_path, caplog, 3, free_port())
    assert len(records) >= 3
    previous = dict.fromkeys(COUNTS, 0)
    for record, totals in zip(records, at_log, strict=False):
        assert record.levelno == logging.INFO
        m = LINE.fullmatch(record.getMessage())
        assert m, record.getMessage()
        summary: dict[str, Any] = record.summary  # type: ignore[attr-defined]
        assert summary["totals"] == totals
        for key in COUNTS:
            assert summary[key] == totals[key] - previous[key], key
        previous = totals
        parts, nok, readings, scans, rejected = (int(g.replace(",", "")) for g in m.groups()[:5])
        assert (parts, nok, readings, scans, rejected) == (
            summary["parts"],
            summary["nok"],
            summary["readings"],
            summary["scans"],
            summary["rejected_scans"],
        )
        # No broker: everything waits in the journal, the oldest since the agent started.
        assert summary["journal_depth"] == int(m[6].replace(",", "")) > 0
        assert 0 < summary["oldest_unconfirmed"] <= elapsed
        assert summary["uplink"] == "down"
        assert m[8].startswith("down (")
    assert sum(r.summary["readings"] for r in records) > 0  # type: ignore[attr-defined]
    assert agent.stats.readings >= at_log[-1]["readings"]


async def test_summary_with_the_broker_up_has_nothing_old_waiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mosquitto: Mosquitto
) -> None:
    _, records, _, _ = await run_until_summaries(tmp_path, caplog, 3, mosquitto.port)
    last = records[-1]
    m = LINE.fullmatch(last.getMessage())
    assert m, last.getMessage()
    assert m[8] == "connected"
    # Delivered on PUBACK within milliseconds: whatever waits is younger than an interval.
    oldest = last.summary["oldest_unconfirmed"]  # type: ignore[attr-defined]
    assert oldest is None or oldest < 2.0


async def test_interval_zero_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    class Journal:
        depth = 0

        async def read_batch(self, after_seq: int, max_records: int) -> list[Any]:
            return []

    class Up:
        connected = True
        last_error = None

    with caplog.at_level(logging.INFO, logger="edge_agent.summary"):
        await asyncio.wait_for(SummaryLog(0, AgentStats(), Journal(), Up).run(), 1)
    assert not caplog.records


def test_span_and_age_read_as_people_write_them() -> None:
    assert [span(s) for s in (0.4, 30, 300, 5400, 9000, 86400)] == [
        "0.4s",
        "30s",
        "5m",
        "90m",
        "2.5h",
        "24h",
    ]
    assert [age(s) for s in (0.84, 12.2, 300, 9000)] == ["0.8 s", "12 s", "5.0 min", "2.5 h"]
