"""``simulate --config``: a device map simulated from the agent's own config, read back by
the real drivers and agent. Every Modbus data type and word order over TCP, RTU on a pty
line and an RTU gateway; a part cycle producing part records with patterned serials; each
fault kind as the agent observes it; the command line and its overrides."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.base import Driver
from drivers.bus import Buses
from drivers.modbus.config import DataType, ModbusDevice, ModbusPoint
from drivers.registry import DriverContext, create_driver
from edge_agent.config import AgentConfig, load_config, parse_config
from edge_agent.daemon import Agent
from kernel.model import DeviceState, Quality, Value
from simulators.broker import free_port
from simulators.devicemap import (
    LoadedScenario,
    Simulation,
    apply_overrides,
    parse_scenario,
)
from tests.modbus_helpers import Collector, no_leaks, wait_until

pytestmark = pytest.mark.timeout(90)

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
FAST = {"timeout": 0.2, "poll_interval": 0.2, "backoff_initial": 0.05, "backoff_max": 0.2}


def f32(x: float) -> float:
    value: float = struct.unpack(">f", struct.pack(">f", x))[0]
    return value


# ---- a device map with every data type -------------------------------------------------------


def every_type() -> tuple[list[dict[str, Any]], dict[str, Value]]:
    """Points of every type, word order, table and scale, and the value the scenario gives
    each (None: not scripted)."""
    points: list[dict[str, Any]] = []
    values: dict[str, Value] = {}
    next_address = {"holding": 0, "input": 0, "coil": 0, "discrete_input": 0}

    def add(name: str, type_: str, value: Value, *, table: str = "holding", **kw: Any) -> None:
        n = {"int32": 2, "uint32": 2, "float32": 2, "int64": 4, "uint64": 4, "float64": 4}
        size = kw.get("count", n.get(type_, 1))
        points.append(
            {"name": name, "address": next_address[table], "table": table, "type": type_, **kw}
        )
        next_address[table] += size
        values[name] = value

    extremes: dict[str, list[Value]] = {
        "int32": [-(2**31), 2**31 - 1, -123456789, 7],
        "uint32": [2**32 - 1, 0, 305419896, 65536],
        "int64": [-(2**63), 2**63 - 1, -1234567890123456789, -1],
        "uint64": [2**64 - 1, 0, 12345678901234567890, 2**53 + 1],
        "float32": [123.456, -0.15625, 3.0e38, -1.0e-30],
        "float64": [-1.5e300, 0.1, 2.0**-1000, 12345.678901234],
    }
    for type_, vals in extremes.items():
        for order, value in zip(ORDERS, vals, strict=True):
            add(f"{type_}_{order}", type_, value, word_order=order)
    add("int16", "int16", -32768)
    add("int16_BADC", "int16", 12345, word_order="BADC")
    add("uint16", "uint16", 65535)
    add("uint16_BADC", "uint16", 258, word_order="BADC")
    add("serial", "string", "SN-0042-Z", count=6)
    add("lot_BADC", "string", "LOT-7", count=3, word_order="BADC")
    add("empty", "string", "", count=2)
    add("temp", "int16", 21.5, scale=0.5, offset=-40.0)
    add("energy", "uint32", 1000.75, scale=0.25)
    add("level", "float32", 5.5, scale=2.0, offset=1.0)
    add("status", "uint16", None)  # not scripted: the bits below compose it
    status = next_address["holding"] - 1
    for bit, on in ((0, True), (7, False), (15, True)):
        points.append({"name": f"status_bit{bit}", "address": status, "type": "bit", "bit": bit})
        values[f"status_bit{bit}"] = on
    add("in_i32_CDAB", "int32", -5, table="input", word_order="CDAB")
    add("in_f64_DCBA", "float64", 6.25, table="input", word_order="DCBA")
    in_word = next_address["input"]
    points.append(
        {"name": "in_bit3", "address": in_word, "table": "input", "type": "bit", "bit": 3}
    )
    values["in_bit3"] = True
    for i, on in enumerate((True, False, True)):
        add(f"coil{i}", "bool", on, table="coil")
        add(f"di{i}", "bool", not on, table="discrete_input")
    return points, values


def expected(p: ModbusPoint, value: Value) -> Value:
    """What the driver must read: the value the registers hold, decoded as documented."""
    if value is None:  # the status word: bits 0 and 15 set by its bit points
        return 1 | 1 << 15
    if p.type in (DataType.BOOL, DataType.BIT, DataType.STRING):
        return value
    assert isinstance(value, int | float)
    scaled = p.scale != 1.0 or p.offset != 0.0
    if not scaled:
        return f32(value) if p.type is DataType.FLOAT32 else value
    raw = (value - p.offset) / p.scale
    if p.type is DataType.FLOAT32:
        raw = f32(raw)
    elif p.type is not DataType.FLOAT64:
        raw = round(raw)
    return raw * p.scale + p.offset


def config_text(devices: list[dict[str, Any]], tmp: Path, **station: Any) -> str:
    cfg = {
        "agent": {"site": "s1", "line": "l1", "id": "sim-pc1"},
        "stations": [{"name": "ST10", **station}],
        "devices": devices,
        "buffer": {"path": str(tmp / "buffer.db")},
        "control": {"socket": str(tmp / "ctl.sock")},
        "mqtt": {"host": "127.0.0.1", "port": free_port(), "backoff_max": 1.0},
    }
    return yaml.safe_dump(cfg, sort_keys=False)


def scenario_for(config: AgentConfig, body: dict[str, Any]) -> LoadedScenario:
    return parse_scenario(yaml.safe_dump(body, sort_keys=False), config, "scenario.yaml")


@pytest.fixture
async def quiet() -> AsyncIterator[None]:
    async with no_leaks():
        yield


async def read_all(driver: Driver, names: list[str]) -> dict[str, Any]:
    await driver.open()
    try:
        observations = await driver.read_points(names)
    finally:
        await driver.close()
    assert all(o.quality is Quality.GOOD for o in observations), [
        (o.point, o.error) for o in observations if o.quality is not Quality.GOOD
    ]
    return {o.point: o.value for o in observations}


def check_read_back(device: ModbusDevice, values: dict[str, Value], got: dict[str, Any]) -> None:
    assert set(got) == {p.name for p in device.points}
    for p in device.points:
        want = expected(p, values[p.name])
        assert got[p.name] == want, (device.name, p.name, got[p.name], want)
        assert type(got[p.name]) is type(want), (device.name, p.name)


async def test_every_modbus_type_and_word_order_reads_back_exactly(
    tmp_path: Path, quiet: None
) -> None:
    """TCP: a PLC and a second unit behind the same address (a gateway, address_base 1);
    RTU: two units on one 8E1 line (a pty null modem) and a unit behind an RTU gateway.
    Each reads back exactly the scenario's constants, as the codec documents them."""
    points, values = every_type()
    shifted = [{**p, "address": p["address"] + 1} for p in points]
    devices = [
        {"name": "plc", "type": "modbus_tcp", "host": "10.0.0.5", "port": 502, "points": points},
        {
            "name": "plc2",
            "type": "modbus_tcp",
            "host": "10.0.0.5",
            "port": 502,
            "unit_id": 2,
            "address_base": 1,
            "points": shifted,
        },
        {
            "name": "rtu1",
            "type": "modbus_rtu",
            "port": "/dev/ttyUSB0",
            "unit_id": 1,
            "points": points,
        },
        {
            "name": "rtu2",
            "type": "modbus_rtu",
            "port": "/dev/ttyUSB0",
            "unit_id": 2,
            "points": points,
        },
        {
            "name": "gw7",
            "type": "modbus_rtu",
            "host": "10.0.0.9",
            "tcp_port": 4001,
            "unit_id": 7,
            "points": points,
        },
    ]
    config = parse_config(config_text(devices, tmp_path, device="plc"), "line.yaml")
    scripted = {name: v for name, v in values.items() if v is not None}
    body = {"duration": 60, "points": {d["name"]: scripted for d in devices}}
    scenario = scenario_for(config, body)
    async with Simulation(config, scenario, pty_dir=tmp_path / "pty") as sim:
        overrides = sim.overrides
        assert overrides["plc"] == overrides["plc2"]  # one server, both units
        assert overrides["rtu1"] == overrides["rtu2"] == {"port": str(tmp_path / "pty/ttyUSB0")}
        assert set(overrides["gw7"]) == {"host", "tcp_port"}
        live = apply_overrides(config, overrides)
        context = DriverContext(buses=Buses())
        for device in live.devices:
            assert isinstance(device, ModbusDevice)
            driver = create_driver(device, context)
            got = await read_all(driver, [p.name for p in device.points])
            check_read_back(device, values, got)


async def test_values_follow_their_scripts_in_time(tmp_path: Path, quiet: None) -> None:
    """A ramp, a sequence and seeded noise: what the driver reads is the script's value at
    some instant between the request and its answer (the scripts are pure functions)."""
    from simulators.devicemap.signals import noise, ramp, step

    points = [
        {"name": "ramp", "address": 0, "type": "float64"},
        {"name": "seq", "address": 4, "type": "uint16"},
        {"name": "noise", "address": 5, "type": "float64"},
    ]
    devices = [{"name": "plc", "type": "modbus_tcp", "host": "h", "points": points}]
    config = parse_config(config_text(devices, tmp_path, device="plc"), "line.yaml")
    scenario = scenario_for(
        config,
        {
            "duration": 60,
            "seed": 42,
            "points": {
                "plc": {
                    "ramp": {"ramp": {"from": 0, "to": 100, "period": 1000}},
                    "seq": {"sequence": {"values": [3, 1, 4, 1, 5], "every": 1000}},
                    "noise": {"noise": {"mean": 10, "stddev": 2, "every": 1000}},
                }
            },
        },
    )
    async with Simulation(config, scenario, pty_dir=tmp_path) as sim:
        device = apply_overrides(config, sim.overrides).devices[0]
        before = sim.world.now()
        got = await read_all(
            create_driver(device, DriverContext(buses=Buses())), ["ramp", "seq", "noise"]
        )
        after = sim.world.now()
    assert ramp(before, 0, 100, 1000, True) <= got["ramp"] <= ramp(after, 0, 100, 1000, True)
    assert got["seq"] == step(0, [3, 1, 4, 1, 5], 1000, True) == 3
    assert got["noise"] == noise(0, 10, 2, 1000, "42/plc/noise")


# ---- part cycles, through the agent --------------------------------------------------------


PRESS_POINTS = [
    {"name": "counter", "address": 0, "type": "uint32"},
    {"name": "serial", "address": 2, "type": "string", "count": 6},
    {"name": "force", "address": 8, "type": "float32", "report": "snapshot"},
    {"name": "result", "address": 10, "type": "uint16", "report": "snapshot"},
    {"name": "ready", "table": "coil", "address": 0, "type": "bool", "report": "on_change"},
    {"name": "taken", "table": "coil", "address": 1, "type": "bool", "report": "snapshot"},
]


def press_station(handshake: bool) -> dict[str, Any]:
    part: dict[str, Any] = {
        "trigger": {"point": "ready"},
        "snapshot": {"points": ["counter", "serial", "force", "result"]},
        "counter": "counter",
        "result": {"point": "result", "ok": [1], "nok": [2]},
    }
    if handshake:
        part["handshake"] = {"taken": "taken"}
    return {"device": "press", "context": {"serial": {"point": "serial"}}, "part": part}


async def parts_from_agent(
    config: AgentConfig, sim: Simulation, count: int
) -> list[dict[str, Any]]:
    """Run an agent on the simulators until ``count`` part records are committed."""
    agent = Agent(apply_overrides(config, sim.overrides))
    parts: list[dict[str, Any]] = []

    async def follow() -> None:
        async for batch in agent.tail.subscribe(kinds=["part"]).batches():
            parts.extend(batch)

    stop = asyncio.Event()
    follower = asyncio.create_task(follow())
    runner = asyncio.create_task(agent.run(stop))
    try:
        await wait_until(lambda: len(parts) >= count or runner.done(), 30, f"{count} parts")
    finally:
        stop.set()
        await runner
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
    return parts


@pytest.mark.parametrize("handshake", [True, False], ids=["handshake", "free-running"])
async def test_part_cycle_gives_part_records_with_patterned_serials(
    tmp_path: Path, handshake: bool
) -> None:
    """The station's part cycle, its points taken from the station's config: each part
    record carries the serial the pattern gives for its number, its counter and result."""
    devices = [
        {
            "name": "press",
            "type": "modbus_tcp",
            "host": "plc",
            "station": "ST10",
            "points": PRESS_POINTS,
            **FAST,
            "poll_interval": 0.05,
            "timeout": 0.05,
        }
    ]
    config = parse_config(config_text(devices, tmp_path, **press_station(handshake)), "line.yaml")
    scenario = scenario_for(
        config,
        {
            "duration": 120,
            "seed": 3,
            "points": {"press": {"force": 20.5}},
            "stations": {
                "ST10": {
                    "part_cycle": {
                        "period": 0.5,
                        "pulse": 0.25,
                        "serial": "SN{n:06d}",
                        "first": 41,
                        "nok_ratio": 0.3,
                    }
                }
            },
        },
    )
    async with Simulation(config, scenario, pty_dir=tmp_path) as sim:
        parts = await parts_from_agent(config, sim, 5)
        cycle = sim.world.cycles["ST10"]
    assert len(parts) >= 5
    for part in parts:
        k = part["counter"] - 1
        truth = cycle.truth(k)
        assert part["serial"] == truth.serial == f"SN{41 + k:06d}", part
        assert part["values"]["force"]["value"] == 20.5
        assert part["result"] == ("ok" if truth.ok else "nok"), part
    counters = [p["counter"] for p in parts]
    if handshake:  # the PLC waits for the agent: every part, in order, once
        assert counters == list(range(counters[0], counters[0] + len(counters)))
    assert {cycle.ok(k) for k in range(40)} == {True, False}  # the seed gives both


# ---- faults, as the driver and the agent observe them --------------------------------------


async def run_driver(
    config: AgentConfig, sim: Simulation, name: str
) -> tuple[Driver, Collector, asyncio.Task[None]]:
    device = next(d for d in apply_overrides(config, sim.overrides).devices if d.name == name)
    driver = create_driver(device, DriverContext(buses=Buses()))
    sink = Collector()
    return driver, sink, asyncio.create_task(driver.run(sink), name=f"device:{name}")


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def good_after(sink: Collector, t: float) -> bool:
    return any(o.quality is Quality.GOOD and o.ts > t for o in sink.all)


SIMPLE = [
    {"name": "value", "address": 0, "type": "uint16"},
    {"name": "other", "address": 10, "type": "uint16"},
]


@pytest.mark.parametrize("kind", ["modbus_tcp", "modbus_rtu", "rtu_gateway"])
@pytest.mark.parametrize("fault", ["silent", "unplug"])
async def test_a_device_that_stops_answering_is_down_then_recovers(
    tmp_path: Path, quiet: None, kind: str, fault: str
) -> None:
    """silent (no answer) and unplug (the port vanishes): the device goes DOWN with one
    outage record per point, and reads again once the fault is over."""
    links: dict[str, dict[str, Any]] = {
        "modbus_tcp": {"type": "modbus_tcp", "host": "plc"},
        "modbus_rtu": {"type": "modbus_rtu", "port": "/dev/ttyUSB0", "retries": 0},
        "rtu_gateway": {"type": "modbus_rtu", "host": "gw", "retries": 0},
    }
    link = links[kind]
    devices = [{"name": "plc", **link, "points": SIMPLE, **FAST}]
    config = parse_config(config_text(devices, tmp_path, device="plc"), "line.yaml")
    scenario = scenario_for(
        config,
        {
            "duration": 60,
            "points": {"plc": {"value": 7}},
            "faults": [{"device": "plc", "fault": fault, "at": 1.0, "duration": 1.5}],
        },
    )
    async with Simulation(config, scenario, pty_dir=tmp_path / "pty") as sim:
        driver, sink, task = await run_driver(config, sim, "plc")
        try:
            await wait_until(lambda: driver.status.state is DeviceState.DOWN, 10, "device down")
            assert sim.world.now() >= 1.0
            down_at = sim.world.now()
            await wait_until(
                lambda: sim.world.now() > 2.5 and driver.status.state is DeviceState.UP,
                15,
                "device up again after the fault",
            )
        finally:
            await stop(task)
    assert down_at < 2.5
    outages = [o for o in sink.of("value") if o.quality is Quality.BAD]
    assert len(outages) == 1, "one outage record per point per outage"
    assert [o.value for o in sink.of("value") if o.quality is Quality.GOOD][-1] == 7
    assert [h.what for h in sim.history] == [f"fault {fault} started", f"fault {fault} ended"]


async def test_an_exception_fault_is_bad_quality_with_its_code(tmp_path: Path, quiet: None) -> None:
    """exception: requests touching the fault's points answer with its code; those points
    are BAD with the code in their error, the device DEGRADED, the others GOOD; then clean."""
    devices = [
        {"name": "plc", "type": "modbus_tcp", "host": "plc", "points": SIMPLE, **FAST, "max_gap": 0}
    ]
    config = parse_config(config_text(devices, tmp_path, device="plc"), "line.yaml")
    scenario = scenario_for(
        config,
        {
            "duration": 60,
            "points": {"plc": {"value": 7, "other": 8}},
            "faults": [
                {
                    "device": "plc",
                    "fault": "exception",
                    "code": 2,
                    "points": ["value"],
                    "at": 0.5,
                    "duration": 1.0,
                }
            ],
        },
    )
    async with Simulation(config, scenario, pty_dir=tmp_path) as sim:
        driver, sink, task = await run_driver(config, sim, "plc")
        try:
            await wait_until(lambda: driver.status.state is DeviceState.DEGRADED, 10, "degraded")
            await wait_until(
                lambda: sim.world.now() > 1.5 and driver.status.state is DeviceState.UP,
                10,
                "clean again",
            )
        finally:
            await stop(task)
    bad = [o for o in sink.of("value") if o.quality is Quality.BAD]
    assert bad
    assert all(o.error == "modbus exception 2 (illegal data address)" for o in bad)
    assert all(o.quality is Quality.GOOD for o in sink.of("other"))


async def test_garbage_on_an_rtu_line_is_retried_then_the_unit_is_down(
    tmp_path: Path, quiet: None
) -> None:
    """garbage: every answer arrives with a broken CRC; the driver retries, gives the unit
    up (DOWN), and reads again once the line is clean. A one-off (duration 0) garbles one
    answer, which a retry absorbs."""
    devices = [
        {
            "name": "plc",
            "type": "modbus_rtu",
            "port": "/dev/ttyUSB0",
            "retries": 1,
            "points": SIMPLE,
            **FAST,
        }
    ]
    config = parse_config(config_text(devices, tmp_path, device="plc"), "line.yaml")
    scenario = scenario_for(
        config,
        {
            "duration": 60,
            "points": {"plc": {"value": 7}},
            "faults": [
                {"device": "plc", "fault": "garbage", "at": 0.5},
                {"device": "plc", "fault": "garbage", "at": 1.5, "duration": 1.5},
            ],
        },
    )
    async with Simulation(config, scenario, pty_dir=tmp_path / "pty") as sim:
        driver, _sink, task = await run_driver(config, sim, "plc")
        try:
            await wait_until(lambda: sim.world.now() > 1.4, 5, "the one-off garbage")
            assert driver.status.reconnects == 0, "one garbled answer is retried"
            await wait_until(lambda: driver.status.state is DeviceState.DOWN, 10, "unit down")
            await wait_until(
                lambda: sim.world.now() > 3 and driver.status.state is DeviceState.UP,
                15,
                "unit up on a clean line",
            )
        finally:
            await stop(task)


# ---- the command line ----------------------------------------------------------------------


def test_simulate_prints_overrides_and_writes_a_config_the_agent_accepts(tmp_path: Path) -> None:
    """The command's stdout is YAML (overrides as data, the rest comments); --write-config
    writes the config pointed at the simulators; a kind without a simulator is one line."""
    devices: list[dict[str, Any]] = [
        {"name": "plc", "type": "modbus_tcp", "host": "10.1.1.1", "points": SIMPLE},
        {"name": "rtu", "type": "modbus_rtu", "port": "/dev/ttyS3", "points": SIMPLE},
        {"name": "cam", "type": "camera", "device": 0},
    ]
    text = config_text(devices, tmp_path, device="plc", scans={"sources": [{"device": "cam"}]})
    (tmp_path / "line.yaml").write_text(text)
    (tmp_path / "s.yaml").write_text("duration: 0.5\npoints: {plc: {value: 3}}\n")
    out = tmp_path / "sim" / "line.sim.yaml"
    out.parent.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "simulate",
            "-c",
            str(tmp_path / "line.yaml"),
            "--scenario",
            str(tmp_path / "s.yaml"),
            "--write-config",
            str(out),
            "--pty-dir",
            str(tmp_path / "pty"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["overrides"]["plc"]["host"] == "127.0.0.1"
    assert printed["overrides"]["rtu"] == {"port": str(tmp_path / "pty" / "ttyS3")}
    assert "cam" not in printed["overrides"]
    assert (
        "#   not simulated: cam (camera: a V4L2 camera (device) is not simulated: that needs "
        "the v4l2loopback kernel module; a camera with url or folder is)" in result.stdout
    )
    assert "# scenario finished after" in result.stdout
    written = load_config(out)
    by_name = {d.name: d for d in written.devices}
    assert by_name["plc"].model_dump()["port"] == printed["overrides"]["plc"]["port"]
    assert by_name["rtu"].model_dump()["port"] == str(tmp_path / "pty" / "ttyS3")
    # Paths written relative to the original's folder still name the same files.
    assert written.buffer.path == str(tmp_path / "buffer.db")


def test_bad_scenario_is_file_line_errors_and_exit_2(tmp_path: Path) -> None:
    devices = [{"name": "plc", "type": "modbus_tcp", "host": "h", "points": SIMPLE}]
    (tmp_path / "line.yaml").write_text(config_text(devices, tmp_path, device="plc"))
    (tmp_path / "s.yaml").write_text(
        "duration: 5\npoints:\n  plc:\n    valeu: 3\n    other: 70000\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "simulate",
            "-c",
            str(tmp_path / "line.yaml"),
            "--scenario",
            str(tmp_path / "s.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    s = tmp_path / "s.yaml"
    assert result.stderr.splitlines() == [
        f"{s}:4:5: points.plc.valeu: unknown point of 'plc' 'valeu'; did you mean 'value'?",
        f"{s}:5:5: points.plc.other: 70000 does not fit a uint16 point (0 .. 65535)",
    ]
    assert "Traceback" not in result.stderr
