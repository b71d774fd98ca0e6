"""``edge-agent status`` in text: per station its serial, lot, last part and counts, and its
devices, asked of a real agent reading the station simulator; exit 3 while an alarm is on."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from edge_agent.config import agent_model
from edge_agent.daemon import Agent
from edge_agent.remote import station_lines
from simulators.broker import free_port
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config
from simulators.station import StationModel
from tests.waiting import wait_until

CLI = [sys.executable, "-m", "edge_agent.cli"]
STATION = re.compile(
    r"(ST\d0)  serial (S\d-\d+)  lot (L\d+)(?:  \w+ \S+)*  "  # other context keys set
    # A part whose snapshot read timed out on a loaded machine shows as "UNKNOWN bad (...): why".
    r"last part (OK|NOK|UNKNOWN(?: \w+)?) \((S\d-\d+), (\d+) s ago\)(?:: .*?)?  "
    r"parts (\d+), NOK (\d+), rejected scans (\d+)(?:, gaps \d+ \(\d+ parts missed\))?"
)


def status(config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "status", "-c", str(config), *options], capture_output=True, text=True, timeout=60
    )


async def test_status_shows_each_station_with_its_part_and_devices(tmp_path: Path) -> None:
    models = [
        StationModel(unit_id=i + 1, serial_prefix=f"S{i + 1}-", cycle_time=0.4) for i in range(2)
    ]
    async with ModbusStationServer(models) as plc:
        raw = demo_config(
            modbus_port=plc.port,
            mqtt_port=free_port(),
            buffer_path=str(tmp_path / "buffer.db"),
            stations=2,
            poll_interval=0.02,
        )
        config = tmp_path / "agent.yaml"
        config.write_text(yaml.safe_dump(raw))
        agent = Agent(agent_model().model_validate(raw))
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await wait_until(
                lambda: all(
                    (s := agent.stats.stations.get(st)) is not None and s.parts >= 2
                    for st in ("ST10", "ST20")
                ),
                30,
                "two part records per station",
            )
            plain = await asyncio.to_thread(status, config)
            as_json = await asyncio.to_thread(status, config, "--json")
            identity = agent.buffer.identity
            agent.alarms.raise_("disk_low", "only 1 GB left on the journal's disk")
            alarmed = await asyncio.to_thread(status, config)
            parts = {st: s.parts for st, s in agent.stats.stations.items()}
        finally:
            stop.set()
            await task
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0].startswith(f"agent {raw['agent']['id']}: last seq ")
    # The journal's identity: with the seq, the key the store keeps each record under.
    assert lines[1] == (
        f"identity: journal {identity.journal}, epoch {identity.epoch.id} "
        f"(from seq {identity.epoch.first})"
    )
    assert json.loads(as_json.stdout)["identity"] == {
        "journal": identity.journal,
        "epoch": identity.epoch.id,
        "epoch_first": identity.epoch.first,
    }
    found = {m[1]: m for m in map(STATION.fullmatch, lines) if m}
    assert set(found) == {"ST10", "ST20"}, plain.stdout
    for i, st in enumerate(("ST10", "ST20")):
        m = found[st]
        assert m[2].startswith(f"S{i + 1}-")
        assert m[5].startswith(f"S{i + 1}-")
        assert int(m[6]) < 30
        assert 2 <= int(m[7]) <= parts[st]
        # The station's devices follow its line, with their state.
        assert lines[lines.index(m[0]) + 1] == f"      devices: press{i + 1} up"
    for kept in ("journal: ", "uplink: down", "records: "):
        assert any(line.startswith(kept) for line in lines), kept
    assert alarmed.returncode == 3
    assert "ALARM disk_low: only 1 GB left on the journal's disk" in alarmed.stdout


def test_station_lines_without_parts_with_extra_context_and_a_bad_part() -> None:
    now = 1_800_000_000.0
    status = {
        "stations": {
            "ST10": {"serial": "A-1", "lot": None, "work_order": "WO-7", "operator": None},
            "PACK": {"serial": None, "lot": "L9"},
        },
        "station_stats": {
            "ST10": {
                "parts": 5,
                "nok": 1,
                "rejected_scans": 2,
                "gaps": 1,
                "missed_parts": 3,
                "last_part": {
                    "serial": None,
                    "result": None,
                    "quality": "bad",
                    "ts": "2027-01-15T07:50:00.000000Z",  # now - 600 s
                    "error": "snapshot read failed: timeout",
                },
            }
        },
        "devices": {"press1": "up", "scanner": "down"},
        "device_stations": {"press1": ["ST10"], "scanner": ["ST10", "PACK"]},
    }
    assert station_lines(status, now) == [
        "ST10  serial A-1  lot -  work_order WO-7  last part UNKNOWN bad (no serial, 10 min "
        "ago): snapshot read failed: timeout  parts 5, NOK 1, rejected scans 2, gaps 1 "
        "(3 parts missed)",
        "      devices: press1 up, scanner down",
        "PACK  serial -  lot L9  last part -  parts 0, NOK 0, rejected scans 0",
        "      devices: scanner down",
    ]
