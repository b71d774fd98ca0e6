"""Log lines: UTC with milliseconds and Z, journald's priority prefixes under systemd, JSON
lines, the context fields, and a dead PLC logged as device trouble."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from pathlib import Path

import pytest
import yaml

from edge_agent.config import parse_config
from edge_agent.daemon import Agent
from edge_agent.logs import (
    JournalFormatter,
    JsonFormatter,
    TextFormatter,
    formatter,
    stderr_is_journal,
    utc_ms,
)
from kernel.model import DeviceState
from simulators.broker import free_port
from simulators.scenario import demo_config
from tests.modbus_helpers import wait_until


def _record(level: int, msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("drivers.state", level, __file__, 1, msg, (), None)
    record.created = 1_764_700_000.1234  # 2025-12-02T18:26:40.123Z
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_utc_with_milliseconds_and_z() -> None:
    assert utc_ms(1_764_700_000.1234) == "2025-12-02T18:26:40.123Z"
    assert utc_ms(0.9999) == "1970-01-01T00:00:00.999Z"


def test_text_lines_carry_utc_time_and_context_fields() -> None:
    line = TextFormatter().format(_record(logging.ERROR, "device press1 is down", device="press1"))
    assert line == (
        "2025-12-02T18:26:40.123Z ERROR drivers.state: device press1 is down [device=press1]"
    )


def test_journal_lines_have_priority_prefixes_and_no_time() -> None:
    fmt = JournalFormatter()
    assert fmt.format(_record(logging.ERROR, "down", device="p1")) == (
        "<3>drivers.state: down [device=p1]"
    )
    assert fmt.format(_record(logging.WARNING, "w")).startswith("<4>")
    assert fmt.format(_record(logging.INFO, "i")).startswith("<6>")
    assert fmt.format(_record(logging.DEBUG, "d")).startswith("<7>")
    assert fmt.format(_record(logging.CRITICAL, "c")).startswith("<2>")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record(logging.ERROR, "failed")
        record.exc_info = sys.exc_info()
    lines = fmt.format(record).split("\n")
    assert len(lines) > 2
    assert all(line.startswith("<3>") for line in lines)
    assert not re.search(r"\d{4}-\d\d-\d\dT", lines[0])


def test_json_lines() -> None:
    record = _record(logging.INFO, "hi", station="ST10", summary={"parts": 3})
    out = json.loads(JsonFormatter().format(record))
    assert out == {
        "ts": "2025-12-02T18:26:40.123Z",
        "level": "INFO",
        "logger": "drivers.state",
        "msg": "hi",
        "station": "ST10",
        "summary": {"parts": 3},  # any extra= field, as it was given
    }


def test_auto_is_journal_only_when_stderr_is_the_journal_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not stderr_is_journal(stream)  # stderr redirected elsewhere by the user
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert not stderr_is_journal()
    monkeypatch.delenv("JOURNAL_STREAM")
    assert isinstance(formatter("auto"), TextFormatter)
    assert isinstance(formatter("journal"), JournalFormatter)


async def test_a_dead_plc_is_logged_as_device_trouble_not_as_rejected_scans(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The demo station has a scan point (part_label) on its PLC: with the PLC gone, the
    log says the device is down, once, and no "scan rejected" line follows it."""
    raw = demo_config(
        modbus_port=free_port(), mqtt_port=free_port(), buffer_path=str(tmp_path / "b.db")
    )
    cfg = parse_config(yaml.safe_dump(raw))
    caplog.set_level(logging.INFO)
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await wait_until(
            lambda: agent.drivers[0].status.state is DeviceState.DOWN,
            within=10,
            what="the device to be down",
        )
        # The outage reaches the scan point as a rejected scan record (logged, if at all,
        # as it is queued for commit).
        await wait_until(
            lambda: agent.stats.rejected_scans >= 1, within=10, what="the outage's scan record"
        )
    finally:
        stop.set()
        await task
    down = [r for r in caplog.records if "is down" in r.getMessage()]
    assert len(down) == 1
    assert down[0].levelno == logging.ERROR
    assert getattr(down[0], "device", None) == "press1"
    assert not [r for r in caplog.records if "scan rejected" in r.getMessage()]
