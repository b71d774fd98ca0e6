"""The commands a person runs: simulate, demo, run with SIGTERM."""

from __future__ import annotations

import asyncio
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pymodbus.client import AsyncModbusTcpClient

from edge_agent.config import parse_config
from simulators.broker import free_port, wait_listening
from simulators.station import StationModel, encode

CLI = [sys.executable, "-m", "edge_agent.cli"]


def test_simulate_print_config_is_a_valid_config() -> None:
    out = subprocess.run(
        [*CLI, "simulate", "--port", "5999", "--stations", "2", "--print-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    cfg = parse_config(out, "printed.yaml")
    assert [d.port for d in cfg.devices] == [5999, 5999]
    assert [s.name for s in cfg.stations] == ["ST10", "ST20"]
    assert cfg.stations[0].context["serial"] is not None
    assert cfg.stations[0].context["serial"].point == "part_serial"
    assert yaml.safe_load(out)["templates"]["stations"]["station"]["context"]["serial"] == {
        "point": "part_serial"
    }


@pytest.mark.parametrize(
    ("flags", "kind"),
    [(["--rtu", "/tmp/edge-agent-rs485"], "modbus_rtu"), (["--opcua"], "opcua")],
)
def test_simulate_print_config_for_rtu_and_opcua_is_valid(flags: list[str], kind: str) -> None:
    out = subprocess.run(
        [*CLI, "simulate", "--port", "5999", "--stations", "2", *flags, "--print-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    cfg = parse_config(out, "printed.yaml")
    assert [d.type for d in cfg.devices] == [kind, kind]
    assert cfg.devices[1].point_station("part_serial") == "ST20"


async def test_simulate_serves_the_register_map() -> None:
    port = free_port()
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [*CLI, "simulate", "--port", str(port), "--stations", "2", "--cycle-time", "60"],
        stdout=subprocess.DEVNULL,
    )
    try:
        await asyncio.to_thread(wait_listening, "127.0.0.1", port, 20)
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await client.connect()
        try:
            reply = await client.read_holding_registers(20, count=6, device_id=2)
        finally:
            client.close()
        # Unit 2's first part, as the simulator's ground truth names it.
        expected = StationModel(unit_id=2, serial_prefix="S2-").serial(0)
        assert reply.registers == encode("string", expected, "ABCD", 6)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0


def test_demo_runs_loses_nothing_and_keeps_what_its_commands_query(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CLI, "demo", "--duration", "3", "--stations", "2", "--cycle-time", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "records/s" in proc.stdout
    assert "serial S1-" in proc.stdout
    assert "serial S2-" in proc.stdout
    assert "nothing lost." in proc.stdout
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("edge-agent-demo-")
    assert {"demo.yaml", "buffer.db", "trace.db"} <= {p.name for p in folder.iterdir()}
    # The commands it prints at the end work, as printed, from where it ran.
    commands = [
        shlex.split(line.strip())
        for line in proc.stdout.split("To query it:\n", 1)[1].splitlines()
        if line.strip().startswith("edge-agent ")
    ]
    assert [c[1] for c in commands] == ["trace", "trace", "validate"]
    for command in commands:
        ran = subprocess.run(
            [*CLI, *command[1:]], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
        if command[1:3] == ["trace", "lot"]:
            assert re.search(r"^S[12]-0000000\d ", ran.stdout, re.M), ran.stdout


def test_config_schema_prints_the_committed_schema() -> None:
    from edge_agent.schema import schema_text

    out = subprocess.run(
        [*CLI, "config", "schema"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out == schema_text()


async def test_config_probe_reads_every_point_of_a_simulated_plc(tmp_path: Path) -> None:
    from simulators.modbus_server import ModbusStationServer
    from simulators.scenario import demo_config

    async with ModbusStationServer([StationModel(unit_id=1, cycle_time=60)]) as plc:
        raw = demo_config(
            modbus_port=plc.port, mqtt_port=free_port(), buffer_path=str(tmp_path / "b.db")
        )
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump(raw))
        good = await asyncio.to_thread(
            subprocess.run,
            [*CLI, "config", "probe", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        unknown = await asyncio.to_thread(
            subprocess.run,
            [*CLI, "config", "probe", str(path), "--device", "pres1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "cycle_counter" in good.stdout
    assert "'SN00000001'" in good.stdout  # part_serial decoded from the PLC's registers
    assert unknown.returncode == 2
    assert "did you mean 'press1'" in unknown.stderr
