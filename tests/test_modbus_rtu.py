"""Modbus RTU for real: the driver on one end of a pty null modem, the simulated stations on
the other, several units sharing the line; and RTU over TCP through a simulated gateway.

Covers the driver-platform issue's RTU list: end to end against ground truth, a dead unit
costing its neighbours no more than its own timeout, the port vanishing and coming back, bad
ports (missing, in use), garbled answers, and the bus's settings checked in the config.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import serial
from pymodbus.framer import FramerType

from drivers.bus import Buses
from drivers.modbus_rtu.config import ModbusRtuDevice
from drivers.modbus_rtu.driver import ModbusRtuDriver
from drivers.registry import DriverContext, create_driver
from edge_agent.config import agent_model, parse_config
from kernel.errors import ConfigError
from kernel.model import DeviceState, Quality
from simulators.consumer import RecordCollector
from simulators.modbus_rtu_server import ModbusRtuStationServer
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config, station_name
from simulators.serial_link import NullModem
from simulators.station import StationModel
from tests.modbus_helpers import Collector, no_leaks, wait_until
from tests.mqtt_helpers import Mosquitto
from tests.parts_helpers import check_part, parts_by_station, run_agent_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def link(tmp_path: Path) -> AsyncIterator[NullModem]:
    async with NullModem(tmp_path, "ttyAGENT", "ttyPLC") as cable:
        yield cable


def rtu_devices(port: str, units: Sequence[int], **kw: Any) -> list[ModbusRtuDevice]:
    """RTU devices for the simulated stations' register map (``demo_config``'s points)."""
    raw = demo_config(
        modbus_port=1, mqtt_port=1, buffer_path="unused.db", stations=max(units), rtu_port=port
    )
    out = []
    for entry in raw["devices"]:
        if entry["unit_id"] in units:
            dev = ModbusRtuDevice.model_validate({**entry, **kw})
            assert [m for _, m in dev.issues() if "overrun" not in m] == []
            out.append(dev)
    return out


async def running(drivers: Sequence[ModbusRtuDriver], sink: Collector) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(d.run(sink), name=f"device:{d.name}") for d in drivers]


async def stop(tasks: Sequence[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def good_times(sink: Collector, device: str) -> list[float]:
    return sorted({o.ts for o in sink.all if o.device == device and o.quality is Quality.GOOD})


# ---- end to end ----------------------------------------------------------------------------


async def test_rtu_parts_match_ground_truth_end_to_end(
    tmp_path: Path, link: NullModem, mosquitto: Mosquitto
) -> None:
    """Three handshake stations on one RS-485 line (8E1): the agent, configured from YAML
    data like an integrator's, records one good part per cycle with the PLC's values."""
    sims = [
        StationModel(unit_id=i + 1, serial_prefix=f"R{i}-", cycle_time=0.01, handshake=True)
        for i in range(3)
    ]
    async with ModbusRtuStationServer(sims, link.b_path) as plc:
        raw = demo_config(
            modbus_port=1,
            mqtt_port=mosquitto.port,
            buffer_path=str(tmp_path / "buffer.db"),
            stations=3,
            handshake=True,
            poll_interval=0.05,
            agent_id="rtu-pc1",
            rtu_port=str(link.a_path),
        )
        cfg = agent_model().model_validate(raw)
        assert cfg.issues() == []
        with RecordCollector("127.0.0.1", mosquitto.port) as col:
            agent = await run_agent_until(
                cfg,
                lambda: all(plc.plc(i + 1).parts_released >= 20 for i in range(3)),
                "20 parts released by each RTU station",
            )
            committed = agent.buffer.committed_seq
            assert col.wait_for(lambda d: len(d.records) >= committed, 20)
    parts = parts_by_station(col.data.records)
    assert not [r for r in col.data.records.values() if r["kind"] == "gap"]
    for i, model in enumerate(plc.stations):
        station = parts[station_name(i)]
        counters = [p["counter"] for p in station]
        assert counters == list(range(1, len(counters) + 1)), station_name(i)
        assert len(counters) >= 20
        for p in station:
            check_part(p, model)


async def test_rtu_over_tcp_gateway_reads_units_on_one_connection() -> None:
    """``host`` instead of ``port``: RTU frames inside TCP, as serial device servers speak;
    two units share one connection (one bus object) and read their own registers."""
    sims = [
        StationModel(unit_id=1, serial_prefix="G1-"),
        StationModel(unit_id=2, serial_prefix="G2-"),
    ]
    async with (
        no_leaks(),
        ModbusStationServer(sims, framer=FramerType.RTU) as gateway,
    ):
        devices = [
            ModbusRtuDevice.model_validate(
                {**d.model_dump(), "port": None, "host": "127.0.0.1", "tcp_port": gateway.port}
            )
            for d in rtu_devices("/dev/null", [1, 2])
        ]
        context = DriverContext(buses=Buses())
        drivers = [create_driver(d, context) for d in devices]
        assert len({d.bus().key for d in devices}) == 1
        sink = Collector()
        tasks = [asyncio.create_task(d.run(sink)) for d in drivers]
        try:
            await wait_until(
                lambda: (
                    {o.device for o in sink.of("part_serial") if o.quality is Quality.GOOD}
                    == {"press1", "press2"}
                ),
                what="both units read over the gateway",
            )
        finally:
            await stop(tasks)
        serials = {o.device: str(o.value) for o in sink.of("part_serial") if o.value}
        assert serials["press1"].startswith("G1-")
        assert serials["press2"].startswith("G2-")
        assert len(context.buses) == 1


# ---- a shared bus --------------------------------------------------------------------------


async def test_dead_unit_costs_its_neighbours_at_most_its_timeout(link: NullModem) -> None:
    """Units 1 and 2 answer, unit 3 is dead. The live units keep their poll going: no gap
    between two of their reads is longer than the dead unit's timeout (times its attempts)
    plus a poll, and the dead unit is DOWN on its own and backed off."""
    sims = [
        StationModel(unit_id=1, serial_prefix="A-"),
        StationModel(unit_id=2, serial_prefix="B-"),
    ]
    dead_timeout = 0.3
    async with no_leaks(), ModbusRtuStationServer(sims, link.b_path):
        live = rtu_devices(str(link.a_path), [1, 2], timeout=0.2, poll_interval=0.2)
        (dead,) = rtu_devices(
            str(link.a_path),
            [3],
            timeout=dead_timeout,
            retries=0,
            poll_interval=0.3,
            backoff_initial=0.3,
            backoff_max=1.0,
        )
        context = DriverContext(buses=Buses())
        drivers = [ModbusRtuDriver(d, context) for d in (*live, dead)]
        sink = Collector()
        tasks = await running(drivers, sink)
        try:
            await wait_until(
                lambda: drivers[2].status.reconnects >= 4,
                within=30,
                what="the dead unit to fail four times",
            )
        finally:
            await stop(tasks)
        assert drivers[2].status.state is DeviceState.DOWN
        assert "no response within 0.3s" in (drivers[2].status.last_error or "")
        for d in drivers[:2]:
            assert d.status.state is DeviceState.UP, d.name
            times = good_times(sink, d.name)
            assert len(times) >= 5, d.name
            worst = max(b - a for a, b in itertools.pairwise(times))
            # One poll interval, plus the dead unit's single attempt, plus the other live
            # unit's turn and scheduling slack on a busy CI machine.
            assert worst < 0.2 + dead_timeout + 0.5, (d.name, worst)
        assert len(context.buses) == 1  # one bus object for the one port


async def test_port_vanishing_marks_units_down_and_they_come_back(link: NullModem) -> None:
    """A USB adapter pulled out: every unit on it goes DOWN with one outage record per
    point, and once the port is back (same path) they reopen it and read again."""
    sims = [
        StationModel(unit_id=1, serial_prefix="A-"),
        StationModel(unit_id=2, serial_prefix="B-"),
    ]
    async with no_leaks(), ModbusRtuStationServer(sims, link.b_path):
        devices = rtu_devices(
            str(link.a_path), [1, 2], timeout=0.2, poll_interval=0.1, backoff_initial=0.1,
            backoff_max=0.3,
        )  # fmt: skip
        context = DriverContext(buses=Buses())
        drivers = [ModbusRtuDriver(d, context) for d in devices]
        sink = Collector()
        tasks = await running(drivers, sink)
        try:
            await wait_until(
                lambda: all(d.status.state is DeviceState.UP for d in drivers),
                what="both units up",
            )
            link.unplug()
            await wait_until(
                lambda: all(d.status.state is DeviceState.DOWN for d in drivers),
                what="both units down after the port vanished",
            )
            down_at = time.time()
            outages = [o for o in sink.all if o.quality is Quality.BAD and o.point == "part_serial"]
            assert {o.device for o in outages} == {"press1", "press2"}
            assert all(d.status.reconnects >= 1 for d in drivers)
            link.replug()
            await wait_until(
                lambda: all(any(t > down_at for t in good_times(sink, d.name)) for d in drivers),
                within=20,
                what="both units reading again after the port came back",
            )
        finally:
            await stop(tasks)
        per_outage = [o for o in outages if o.device == "press1"]
        assert len(per_outage) == 1, "one outage record per point per outage, not per retry"


async def test_a_missing_port_is_down_with_the_reason_and_retried(tmp_path: Path) -> None:
    (dev,) = rtu_devices(str(tmp_path / "ttyUSB9"), [1], backoff_initial=0.05, backoff_max=0.1)
    driver = ModbusRtuDriver(dev)
    sink = Collector()
    async with no_leaks():
        tasks = await running([driver], sink)
        try:
            await wait_until(lambda: driver.status.reconnects >= 3, what="three attempts")
        finally:
            await stop(tasks)
    assert driver.status.state is DeviceState.DOWN
    assert f"serial port {tmp_path / 'ttyUSB9'} does not exist" in (driver.status.last_error or "")


async def test_a_port_in_use_by_another_program_says_so(link: NullModem) -> None:
    (dev,) = rtu_devices(str(link.a_path), [1])
    other = serial.Serial(str(link.a_path), exclusive=True)
    try:
        driver = ModbusRtuDriver(dev)
        async with no_leaks():
            with pytest.raises(Exception, match="in use by another program") as caught:
                await driver.open()
            await driver.close()
        assert type(caught.value).__name__ == "ConnectError"
    finally:
        other.close()


async def test_garbled_answers_are_retried_then_the_unit_is_down(link: NullModem) -> None:
    """A CRC error is silence to the master: one garbled answer is absorbed by a retry;
    garbled answers beyond the retries make the unit DOWN, then it recovers by itself."""
    sims = [StationModel(unit_id=1, serial_prefix="A-")]
    async with no_leaks(), ModbusRtuStationServer(sims, link.b_path):
        (dev,) = rtu_devices(
            str(link.a_path), [1], timeout=0.15, retries=1, poll_interval=0.15,
            backoff_initial=0.05, backoff_max=0.1,
        )  # fmt: skip
        driver = ModbusRtuDriver(dev)
        sink = Collector()
        tasks = await running([driver], sink)
        try:
            await wait_until(lambda: driver.status.state is DeviceState.UP, what="unit up")
            link.corrupt_next(1)
            await wait_until(lambda: link.corrupted == 1, what="one garbled frame")
            reads = driver.status.reads_ok
            await wait_until(lambda: driver.status.reads_ok > reads + 2, what="reads go on")
            assert driver.status.reconnects == 0, "one garbled answer must not drop the unit"
            link.corrupt_next(10)
            await wait_until(lambda: driver.status.reconnects >= 1, what="the unit given up on")
            await wait_until(
                lambda: driver.status.state is DeviceState.UP and link.corrupted >= 10,
                within=20,
                what="the unit back once answers are clean",
            )
        finally:
            await stop(tasks)
    assert "no response within 0.15s" in (driver.status.last_error or "")


# ---- config --------------------------------------------------------------------------------

RTU_FILE = """\
agent: {{site: s, line: l, id: a}}
stations: [{{name: ST10}}]
devices:
  - name: press1
    type: modbus_rtu
    port: /dev/ttyUSB0
    unit_id: 1
    station: ST10
    points: [{{name: a, address: 0, type: uint16}}]
  - name: press2
    type: modbus_rtu
    port: /dev/ttyUSB0
    unit_id: {}
    baudrate: {}
    station: ST10
    points: [{{name: a, address: 0, type: uint16}}]
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "rtu.yaml")
    return [str(i) for i in caught.value.issues]


def test_units_on_one_port_share_its_settings_and_have_their_own_ids() -> None:
    cfg = parse_config(RTU_FILE.format(2, 19200), "rtu.yaml")
    assert [d.type for d in cfg.devices] == ["modbus_rtu", "modbus_rtu"]
    assert errors(RTU_FILE.format(2, 9600)) == [
        "rtu.yaml:14:5: devices[1].baudrate: serial port /dev/ttyUSB0 is also used by "
        "'press1' (devices[0]) with baudrate 19200, not 9600: devices on one wire share its "
        "settings"
    ]
    assert errors(RTU_FILE.format(1, 19200)) == [
        "rtu.yaml:13:5: devices[1].unit_id: same unit as devices[0] (/dev/ttyUSB0 unit 1): "
        "give each unit one entry (its points may each set poll_interval and station)"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("    baudrate: 12345\n", "devices[0].baudrate: 12345 is not a serial baud rate"),
        ("    unit_id: 0\n", "devices[0].unit_id: expected at least 1, found 0"),
        ("    host: 10.0.0.9\n", "devices[0].port: give port (a serial port) or host"),
        ("    parity: X\n", "devices[0].parity: unknown value 'X'; expected one of E, O, N"),
        ("    baudrate: true\n", "devices[0].baudrate: expected a whole number, found true"),
    ],
)
def test_rtu_config_mistakes_name_the_key(change: str, expected: str) -> None:
    text = (
        "agent: {site: s, line: l, id: a}\n"
        "stations: [{name: ST10}]\n"
        "devices:\n"
        "  - name: press1\n"
        "    type: modbus_rtu\n"
        "    port: /dev/ttyUSB0\n"
        f"{change}"
        "    points: [{name: a, address: 0, type: uint16}]\n"
    )
    found = errors(text)
    assert any(expected in e for e in found), found


def test_a_port_without_permission_names_the_group(tmp_path: Path) -> None:
    """Root opens anything, so the agent runs without CAP_DAC_OVERRIDE (setpriv) against a
    port owned by another user, as a service user outside the dialout group would."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        os.chown(name, 65534, 65534)
        os.chmod(name, 0o600)
        code = (
            "import asyncio\n"
            "from drivers.modbus_rtu.config import ModbusRtuDevice\n"
            "from drivers.modbus_rtu.driver import ModbusRtuDriver\n"
            f"dev = ModbusRtuDevice(type='modbus_rtu', name='u1', port={name!r},\n"
            "    points=[{'name': 'a', 'address': 0, 'type': 'uint16'}])\n"
            "async def main():\n"
            "    driver = ModbusRtuDriver(dev)\n"
            "    try:\n"
            "        await driver.open()\n"
            "    except Exception as exc:\n"
            "        print(type(exc).__name__, exc)\n"
            "    await driver.close()\n"
            "asyncio.run(main())\n"
        )
        proc = subprocess.run(
            [
                setpriv,
                "--bounding-set",
                "-dac_override,-dac_read_search",
                sys.executable,
                "-c",
                code,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[1],
        )
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == (
        f"ConnectError device 'u1': no permission to open {name}: add the agent's user to the "
        "group that owns it (usually dialout)"
    )
