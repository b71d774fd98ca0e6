"""The commissioning probe (``edge-agent config probe``) against real Modbus servers: the
station simulator for the demo config, and the test server for shaped failures."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus.constants import ExcCodes

from drivers.modbus.config import ModbusPoint, Table
from edge_agent.config import AgentConfig, agent_model
from edge_agent.probe import (
    COLUMNS,
    DeviceProbe,
    PointProbe,
    exit_code,
    format_table,
    probe,
    to_json,
)
from kernel.model import DeviceState, Quality
from simulators import station
from simulators.broker import free_port
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config
from simulators.station import REGISTER_MAP, StationModel
from tests.modbus_helpers import memory_for, no_leaks, sim_server

pytestmark = pytest.mark.timeout(30)

H, IN, C = Table.HOLDING, Table.INPUT, Table.COIL
CYCLE = 5
"""The simulated station is in this cycle for the whole test (an hour-long cycle, just
begun), so everything it shows is known ground truth."""
# Values that do not move within a cycle.
STEADY = (
    "cycle_counter",
    "status",
    "cycle_time_ms",
    "energy",
    "offset",
    "part_serial",
    "material_lot",
    "final_force",
    "final_depth",
    "result",
    "part_label",
)


@pytest.fixture(autouse=True)
async def _no_leaks() -> AsyncIterator[None]:
    async with no_leaks():
        yield


def model(unit_id: int = 1) -> StationModel:
    return StationModel(unit_id=unit_id, cycle_time=3600.0, t0=time.monotonic() - CYCLE * 3600)


def config(port: int, *, stations: int = 1, **extra_devices: dict[str, Any]) -> AgentConfig:
    """The demo config (coils and snapshot-only points included) plus ``extra_devices``."""
    raw = demo_config(modbus_port=port, mqtt_port=1883, buffer_path="/tmp/x.db", stations=stations)
    for name, dev in extra_devices.items():
        raw["devices"].append({"name": name, "type": "modbus_tcp", "host": "127.0.0.1", **dev})
    # Validated field by field only: the probe is for configs whose cross-checks an
    # integrator is still working through.
    return agent_model().model_validate(raw)


def by_name(dev: DeviceProbe) -> dict[str, PointProbe]:
    return {p.name: p for p in dev.points}


def pt(name: str, address: int, type_: str, table: Table = H, **kw: Any) -> dict[str, Any]:
    return {"name": name, "address": address, "table": table.value, "type": type_, **kw}


def model_point(p: dict[str, Any]) -> ModbusPoint:
    return ModbusPoint.model_validate(p)


# -- against the station simulator ----------------------------------------------------------


async def test_every_point_of_the_demo_config_reads_the_station_truth() -> None:
    st = model()
    async with ModbusStationServer([st]) as sim:
        cfg = config(sim.port)
        (dev,) = await probe(cfg)
    assert (dev.name, dev.connected, dev.error, dev.state) == ("press1", True, None, DeviceState.UP)
    assert dev.requests == 2  # holding 0+64 and coil 1+3, as the planner coalesces them
    assert dev.connect_latency is not None
    assert 0 <= dev.connect_latency < 1
    assert [p.name for p in dev.points] == [p.name for p in cfg.devices[0].points]
    got = by_name(dev)
    assert all(p.quality is Quality.GOOD and p.error is None for p in dev.points), dev.points
    truth = st.values(CYCLE, 0.0)
    for name in STEADY:
        address, kind, order, count, unit, _scale = REGISTER_MAP[name]
        p = got[name]
        assert p.value == truth[name], name
        assert p.raw == tuple(station.encode(kind, truth[name], order, count)), name
        assert (p.address, p.protocol_address, p.table, p.type, p.unit) == (
            address,
            address,
            "holding",
            kind,
            unit,
        )
        assert p.request == "holding 0+64"
    assert got["part_serial"].value == st.serial(CYCLE) == "SN00000006"
    assert got["cycle_counter"].raw == (0x0000, 0x0006)
    # Phase-dependent values: the phase is ~0.0003 into the hour.
    assert got["temperature"].value == pytest.approx(180.5, abs=0.05)
    assert got["pressure"].value == pytest.approx(6.0)
    for coil in ("cycle_complete", "data_ready", "data_taken"):
        assert (got[coil].value, got[coil].raw, got[coil].request) == (False, (False,), "coil 1+3")
    assert all(p.latency is not None and 0 < p.latency < 1 for p in dev.points)
    assert exit_code([dev]) == 0


async def test_a_point_at_an_address_the_plc_lacks_is_singled_out() -> None:
    async with ModbusStationServer([model()]) as sim:
        cfg = config(sim.port)
        points = [*cfg.devices[0].points, model_point(pt("ghost", 66, "uint16"))]
        dev_cfg = cfg.devices[0].model_copy(update={"points": points})
        cfg = cfg.model_copy(update={"devices": [dev_cfg]})
        (dev,) = await probe(cfg)
    got = by_name(dev)
    ghost = got.pop("ghost")
    assert (ghost.quality, ghost.value, ghost.raw) == (Quality.BAD, None, None)
    assert ghost.error == (
        "modbus exception 2 (illegal data address): the PLC has no register 66 in the holding "
        "table; check address_base (0 vs 1) and the table"
    )
    assert ghost.request == "holding 66+1 alone"
    # Its neighbours in the refused request 0+67 were read one by one, and are all good.
    assert all(p.quality is Quality.GOOD for p in got.values()), got
    assert got["part_serial"].value == "SN00000006"
    assert got["part_serial"].request == "holding 20+6 alone"
    assert got["data_ready"].request == "coil 1+3"  # the coil request was not refused
    (note,) = dev.notes
    assert note.startswith(
        "holding 0+67 (16 points) was refused as one request (modbus exception 2"
    )
    assert "reports all of them bad" in note
    assert (dev.state, dev.error, exit_code([dev])) == (DeviceState.DEGRADED, None, 1)
    assert dev.requests == 1 + 16 + 1


async def test_unit_id_the_gateway_does_not_serve_is_explained() -> None:
    async with ModbusStationServer([model()]) as sim:
        points = [pt("a", 0, "uint16"), pt("b", 1, "uint16"), pt("c", 0, "bool", C)]
        cfg = config(sim.port, ghost_unit={"port": sim.port, "unit_id": 7, "points": points})
        dev, unit7 = await probe(cfg)
    assert dev.ok
    assert (unit7.connected, unit7.state, unit7.requests) == (True, DeviceState.DOWN, 1)
    assert unit7.error == (
        f"modbus exception 11 (gateway target device failed to respond): 127.0.0.1:{sim.port} "
        "answers, but no device behind it answers as unit 7; check unit_id and that the PLC is on"
    )
    got = by_name(unit7)
    for name in "ab":
        assert got[name].error == "modbus exception 11: the gateway cannot reach unit 7"
        assert got[name].latency is not None
    assert got["c"].error == "not read: the gateway cannot reach unit 7"
    assert got["c"].latency is None
    assert exit_code([dev, unit7]) == 1


async def test_refused_and_silent_devices_stall_nothing() -> None:
    closed = free_port()
    quiet = [pt(f"q{i}", i * 20, "uint16") for i in range(4)]
    mem = memory_for({model_point(p): 1 for p in quiet})
    async with (
        ModbusStationServer([model()]) as sim,
        sim_server(mem) as silent,
        sim_server(mem) as silent2,
    ):
        silent.go_silent()
        silent2.go_silent()
        cfg = config(
            sim.port,
            closed={"port": closed, "points": [pt("a", 0, "uint16")]},
            silent={"port": silent.port, "max_gap": 0, "points": quiet},
            silent2={"port": silent2.port, "max_gap": 0, "points": quiet},
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        good, refused, dead, dead2 = await probe(cfg, attempt_timeout=0.3)
        elapsed = loop.time() - started
    assert good.ok
    assert all(p.latency is not None and p.latency < 0.3 for p in good.points)
    assert (refused.connected, refused.points, refused.state) == (False, [], DeviceState.DOWN)
    assert refused.error == f"connection to 127.0.0.1:{closed} refused"
    assert refused.timeout == 0.3
    for d in (dead, dead2):
        assert d.connected
        assert d.requests == 3
        assert d.error == (
            "the device stopped answering (3 requests in a row got no response within 0.3s)"
        )
        assert [(p.name, p.error, p.latency) for p in d.points] == [
            ("q0", "timeout: no response within 0.3s", None),
            ("q1", "timeout: no response within 0.3s", None),
            ("q2", "timeout: no response within 0.3s", None),
            ("q3", "not read: the device stopped answering", None),
        ]
    # Both dead devices spent three timeouts each, at the same time.
    assert 0.9 <= elapsed < 1.75, elapsed
    assert exit_code([good]) == 0
    assert exit_code([good, refused]) == 1


async def test_device_selection_and_unknown_names() -> None:
    async with ModbusStationServer([model(1), model(2)]) as sim:
        cfg = config(sim.port, stations=2)
        assert [d.name for d in await probe(cfg)] == ["press1", "press2"]
        (only,) = await probe(cfg, "press2")
        assert (only.name, only.details["unit_id"], only.ok) == ("press2", 2, True)
        with pytest.raises(ValueError, match=re.escape("unknown device 'pres2'; did you mean")):
            await probe(cfg, "pres2")
        with pytest.raises(
            ValueError, match=re.escape("unknown device 'zzz' (devices: press1, press2)")
        ):
            await probe(cfg, "zzz")


# -- shaped failures (test server) -----------------------------------------------------------


async def probe_points(
    points: list[dict[str, Any]], values: dict[str, Any], **device: Any
) -> DeviceProbe:
    """Probe a device of ``points`` on a test server holding ``values`` (by point name)."""
    base = device.get("address_base", 0)
    mem = memory_for(
        {model_point(p): values[p["name"]] for p in points if p["name"] in values}, base
    )
    async with sim_server(mem) as sim:
        cfg = config(sim.port, plc={"port": sim.port, "points": points, **device})
        (dev,) = await probe(cfg, "plc")
    return dev


async def test_address_base_1_names_both_addresses() -> None:
    points = [pt("ok", 100, "uint16"), pt("missing", 4000, "uint16")]
    dev = await probe_points(points, {"ok": 5}, address_base=1)
    got = by_name(dev)
    assert (got["ok"].value, got["ok"].address, got["ok"].protocol_address) == (5, 100, 99)
    assert got["missing"].error == (
        "modbus exception 2 (illegal data address): the PLC has no register 4000 (protocol "
        "address 3999) in the holding table; check address_base (0 vs 1) and the table"
    )
    table = format_table([dev])
    assert "4000 (wire 3999)" in table
    assert "100 (wire 99)" in table


async def test_wrong_type_size_when_the_second_register_is_missing() -> None:
    # The PLC has a 16-bit value at 10 and nothing at 11; the YAML says float32.
    points = [pt("before", 8, "uint16"), pt("force", 10, "float32", unit="kN")]
    plc = {model_point(pt("before", 8, "uint16")): 1, model_point(pt("w", 10, "uint16")): 0x4148}
    async with sim_server(memory_for(plc)) as sim:
        cfg = config(sim.port, plc={"port": sim.port, "points": points})
        (dev,) = await probe(cfg, "plc")
    got = by_name(dev)
    assert got["before"].value == 1
    force = got["force"]
    assert force.error == (
        "wrong type size: register 10 answers but 10..11 is refused (illegal data address): "
        "float32 needs 2 registers, and the PLC holds something shorter there (int16/uint16?) "
        "or the address is off"
    )
    assert (force.raw, force.value, force.request) == ((0x4148,), None, "holding 10+1 alone")


async def test_wrong_type_size_when_the_reply_is_short() -> None:
    points = [pt("a", 0, "uint16"), pt("f", 1, "float32")]
    mem = memory_for({model_point(points[0]): 3, model_point(points[1]): 1.5})
    async with sim_server(mem) as sim:
        sim.short_by = 1
        cfg = config(sim.port, plc={"port": sim.port, "points": points})
        (dev,) = await probe(cfg, "plc")
    got = by_name(dev)
    assert (got["a"].value, got["a"].quality) == (3, Quality.GOOD)
    assert got["f"].error == (
        "wrong type size: got 1 register, float32 needs 2 (the device answered 2 of the 3 "
        "registers asked)"
    )
    assert got["f"].raw == (0x3FC0,)


async def test_points_good_alone_but_refused_together_warn_about_max_gap() -> None:
    # Registers 2..4 are unmapped; max_gap 8 bridges them. Two bits share register 5.
    points = [
        pt("a", 0, "uint16"),
        pt("b", 1, "uint16"),
        pt("run", 5, "bit", bit=0),
        pt("fault", 5, "bit", bit=1),
    ]
    mem = memory_for({model_point(p): v for p, v in zip(points, (1, 2, True, False), strict=True)})
    async with sim_server(mem) as sim:
        cfg = config(sim.port, plc={"port": sim.port, "points": points})
        (dev,) = await probe(cfg, "plc")
    assert [(p.name, p.value, p.quality) for p in dev.points] == [
        ("a", 1, Quality.GOOD),
        ("b", 2, Quality.GOOD),
        ("run", True, Quality.GOOD),
        ("fault", False, Quality.GOOD),
    ]
    assert dev.requests == 4  # 0+6 refused, then 0+1, 1+1 and one read of the status word
    assert by_name(dev)["fault"].request == "holding 5+1 alone"
    (note,) = dev.notes
    assert "each reads fine alone" in note
    assert "max_gap (8)" in note
    assert dev.ok  # a warning, not a failure


@pytest.mark.parametrize(
    ("code", "table", "expected"),
    [
        (
            ExcCodes.ILLEGAL_FUNCTION,
            IN,
            "modbus exception 1 (illegal function): the PLC does not serve reads of the input "
            "table (function 4); check the table",
        ),
        (
            ExcCodes.ILLEGAL_VALUE,
            H,
            "modbus exception 3 (illegal data value): the PLC refused reading 2 registers at "
            "0..1; check count and type, or lower max_registers",
        ),
        (
            ExcCodes.DEVICE_BUSY,
            H,
            "modbus exception 6 (server device busy): the PLC is busy; probe again, or raise "
            "request_delay",
        ),
    ],
)
async def test_exception_responses_are_explained(
    code: ExcCodes, table: Table, expected: str
) -> None:
    points = [pt("x", 0, "int32", table), pt("y", 0, "uint16", IN if table is H else H)]
    mem = memory_for({model_point(points[0]): 7, model_point(points[1]): 8})
    async with sim_server(mem) as sim:
        sim.fail[(table, 0)] = code
        cfg = config(sim.port, plc={"port": sim.port, "points": points})
        (dev,) = await probe(cfg, "plc")
    got = by_name(dev)
    assert (got["x"].quality, got["x"].error) == (Quality.BAD, expected)
    assert (got["y"].quality, got["y"].value) == (Quality.GOOD, 8)
    assert exit_code([dev]) == 1


# -- output ----------------------------------------------------------------------------------


def sample() -> list[DeviceProbe]:
    good = DeviceProbe(
        "press1",
        "modbus_tcp",
        "10.0.0.5:502  unit 1",
        1.0,
        {"host": "10.0.0.5", "port": 502, "unit_id": 1},
        connected=True,
    )
    good.connect_latency = 0.0021
    good.requests = 2
    good.points = [
        PointProbe("cycle_counter", "holding", 0, 0, "uint32", (0, 6), 6, None, Quality.GOOD,
                   0.0012, "holding 0+64"),
        PointProbe("force", "holding", 4, 4, "float32", (0x41A0, 0), 20.0, "kN", Quality.GOOD,
                   0.0012, "holding 0+64"),
        PointProbe("temp", "input", 8, 8, "float32", (0x7FC0, 0), math.nan, "degC",
                   Quality.GOOD, 0.0012, "input 8+2"),
        PointProbe("ready", "coil", 2, 2, "bool", (True,), True, None, Quality.GOOD, 0.0009,
                   "coil 2+1"),
        PointProbe("ghost", "holding", 4001, 4000, "uint16", None, None, None, Quality.BAD,
                   0.0008, "holding 4000+1 alone", "modbus exception 2 (illegal data address)"),
    ]  # fmt: skip
    down = DeviceProbe(
        "press2",
        "modbus_tcp",
        "10.0.0.6:502  unit 3",
        1.0,
        {"host": "10.0.0.6", "port": 502, "unit_id": 3},
        error="connection to 10.0.0.6 refused",
    )
    return [good, down]


def test_format_table_has_a_header_per_device_and_aligned_columns() -> None:
    text = format_table(sample())
    assert text.isascii()
    assert "\x1b" not in text
    blocks = text.split("\n\n")
    assert len(blocks) == 3
    head, columns, *rows = blocks[0].splitlines()
    assert head == (
        "press1  10.0.0.5:502  unit 1  connected in 2.1 ms  2 request(s)  "
        "degraded: 4 of 5 points good"
    )
    assert columns.split() == list(COLUMNS)
    starts = [columns.index(c) for c in COLUMNS]
    for row, line in zip(sample()[0].points, rows, strict=True):
        assert line[starts[0] :].startswith(row.name)
        assert line[starts[6] :].startswith(row.quality.value)
    assert "0x0000 0x0006" in rows[0]
    assert "20 kN" in rows[1]
    assert "nan degC" in rows[2]
    assert re.search(r"ready\s+coil\s+2\s+bool\s+1\s+True\s+good\s+0\.9 ms$", rows[3])
    assert rows[4].endswith("bad      0.8 ms   modbus exception 2 (illegal data address)")
    assert blocks[1] == (
        "press2  10.0.0.6:502  unit 3  not connected  0 request(s)  "
        "down: connection to 10.0.0.6 refused"
    )
    assert blocks[2] == "0 of 2 device(s) fully good"


def test_to_json_is_serialisable_and_complete() -> None:
    data = to_json(sample())
    json.dumps(data, allow_nan=False)
    good, down = data
    assert good["state"] == "degraded"
    assert good["connect_latency_ms"] == 2.1
    temp = next(p for p in good["points"] if p["name"] == "temp")
    assert temp["value"] == "nan"
    ghost = good["points"][-1]
    assert ghost == {
        "name": "ghost",
        "table": "holding",
        "address": 4001,
        "protocol_address": 4000,
        "type": "uint16",
        "raw": None,
        "value": None,
        "unit": None,
        "quality": "bad",
        "latency_ms": 0.8,
        "request": "holding 4000+1 alone",
        "error": "modbus exception 2 (illegal data address)",
    }
    assert (down["connected"], down["state"], down["points"]) == (False, "down", [])
    assert down["error"] == "connection to 10.0.0.6 refused"


def test_exit_code() -> None:
    good, down = sample()
    assert exit_code([]) == 0
    assert exit_code([down]) == 1
    assert exit_code([good]) == 1  # one bad point
    good.points = [p for p in good.points if p.ok]
    assert exit_code([good]) == 0
    good.error = "the device stopped answering"
    assert exit_code([good]) == 1
