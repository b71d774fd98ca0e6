"""``simulate --config``: triggered readers answering the agent's trigger commands as the
scenario's ``reads:`` say, and the ``silent`` fault of scanners and OPC UA servers, through
the real agent."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.scanner.simulator import ScannerEndpoint
from kernel.errors import ConfigError
from kernel.model import DeviceState
from simulators.devicemap import parse_scenario
from tests.simulate_helpers import BACKOFF, OPCUA_POINTS, Running, config, running
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

PRESS = {
    "name": "press", "type": "modbus_tcp", "host": "10.0.0.2", "station": "ST10",
    "poll_interval": 0.1, "timeout": 0.1,
    "points": [{"name": "present", "table": "coil", "address": 0, "type": "bool"}],
}  # fmt: skip


def reader(**trigger: Any) -> dict[str, Any]:
    return {
        "name": "sc1", "type": "scanner", "port": "/dev/ttyACM0", "station": "ST10", **BACKOFF,
        "trigger": {"device": "press", "point": "present", "start": "LON<CR>",
                    "stop": "LOFF<CR>", "read_timeout": 0.5, **trigger},
    }  # fmt: skip


STATION = {"scans": {"sources": [{"device": "sc1"}]}}


def until(run: Running, what: str, cond: Callable[[], bool], timeout: float = 20) -> Any:
    return wait_until(cond, timeout, what)


async def test_a_triggered_reader_answers_each_trigger_as_the_scenario_says(
    tmp_path: Path,
) -> None:
    """Each rising edge of the press's part-present coil makes the agent send LON; the
    simulated reader answers the first with A1, the second with a no-read (its NOREAD text
    in answer to the agent's LOFF), the third with A3; after the codes every trigger is a
    no-read."""
    cfg = config(tmp_path, [PRESS, reader()], **STATION)
    text = """
duration: 60
points:
  press: {present: {sequence: {values: [false, true], every: 0.6}}}
reads:
  sc1: {codes: [A1, null, A3]}
"""
    async with running(cfg, text, tmp_path, ["scan"]) as run:
        await until(run, "four reads", lambda: len(run.scans()) >= 4)
        endpoint = next(e for e in run.sim.endpoints if isinstance(e, ScannerEndpoint))
        heard = list(endpoint.triggers)
    scans = run.scans()[:4]
    assert [s.get("text") for s in scans] == ["A1", None, "A3", None]
    assert scans[1]["error"] == "no read (the reader sent 'NOREAD')"
    assert scans[3]["status"] == "rejected"
    assert [t.answer for t in heard[:4]] == ["A1", None, "A3", None]


async def test_a_silent_scanner_neither_scans_nor_answers(tmp_path: Path) -> None:
    """While silent, a scan is not sent (the timeline says so) and triggers get no answer,
    not even to the stop command: the agent records its own no-read. The link stays up, so
    the agent cannot tell a silent reader from an idle one; once the fault is over the
    reader answers again."""
    cfg = config(tmp_path, [PRESS, reader(read_timeout=0.3)], **STATION)
    text = """
duration: 60
points:
  press: {present: {sequence: {values: [false, true], every: 0.5}}}
reads:
  sc1: {pattern: "SN{n:03d}", delay: 0.02}
scans:
  - {device: sc1, at: 0.2, data: HANDHELD}
faults:
  - {device: sc1, at: 0.1, fault: silent, duration: 2.2}
"""
    async with running(cfg, text, tmp_path, ["scan"]) as run:
        await until(run, "a read after the fault", lambda: any(
            (s.get("text") or "").startswith("SN") for s in run.scans()))  # fmt: skip
        assert run.state("sc1") is DeviceState.UP
    silent = [s for s in run.scans() if s.get("text") is None]
    assert silent, "triggers during the fault are no-reads"
    assert all("no answer to the stop" in s["error"] for s in silent)
    assert "HANDHELD" not in [s.get("text") for s in run.scans()]
    [scan] = [h for h in run.sim.history if h.what.startswith("scan")]
    assert scan.error == "sc1 is silent (fault): the scan is not sent"


async def test_a_silent_opcua_server_goes_down_and_comes_back(tmp_path: Path) -> None:
    """The server stops reading its connections (they stay open): the subscription's
    keep-alives stop, the agent puts the device DOWN, and once the server reads again the
    device is UP and parts come again, none lost (the handshake)."""
    ua = {
        "name": "ua", "type": "opcua", "endpoint": "opc.tcp://10.0.0.7:4840/",
        "namespace": "urn:plant:press", "station": "ST10", "publishing_interval": 0.05,
        "keepalive_count": 5, "lifetime_count": 30, "timeout": 1.0, "session_timeout": 5.0,
        **BACKOFF, "points": OPCUA_POINTS,
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
    text = """
duration: 60
stations:
  ST10: {part_cycle: {period: 0.2}}
faults:
  - {device: ua, fault: silent, at: 1.5, duration: 3}
"""
    async with running(cfg, text, tmp_path, ["part"]) as run:
        await until(run, "device down", lambda: run.state("ua") is DeviceState.DOWN)
        seen = len(run.records)
        await until(run, "device up", lambda: run.state("ua") is DeviceState.UP, 30)
        await until(run, "parts again", lambda: len(run.records) > seen + 2, 30)
    counters = [p["counter"] for p in run.records]
    assert counters == list(range(1, len(counters) + 1)), "the handshake loses no part"


@pytest.mark.parametrize(
    ("reads", "message"),
    [
        ("{codes: [A1], pattern: 'X{n}'}", "give one of codes or pattern; found both"),
        ("{codes: [A1], delay: 0.5}", "is not within the trigger's read_timeout"),
        ("{codes: ['A<XX>']}", "unknown byte name <XX>"),
        ("{pattern: 'X{m}'}", "not a code pattern"),
    ],
)
def test_reads_are_checked_against_the_config(tmp_path: Path, reads: str, message: str) -> None:
    cfg = config(tmp_path, [PRESS, reader()], **STATION)
    with pytest.raises(ConfigError) as err:
        parse_scenario(f"duration: 5\nreads:\n  sc1: {reads}\n", cfg, "s.yaml")
    assert message in str(err.value)


def test_reads_need_a_triggered_reader(tmp_path: Path) -> None:
    plain = {k: v for k, v in reader().items() if k != "trigger"}
    cfg = config(tmp_path, [PRESS, plain], **STATION)
    with pytest.raises(ConfigError) as err:
        parse_scenario("duration: 5\nreads:\n  sc1: {codes: [A1]}\n  press: {codes: [B]}\n",
                       cfg, "s.yaml")  # fmt: skip
    text = str(err.value)
    assert "s.yaml:3:3: reads.sc1: scanner 'sc1' has no trigger in the config" in text
    assert "reads.press: a modbus_tcp device answers no trigger commands" in text
