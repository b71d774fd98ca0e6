"""Scales end to end: the scale driver on a real pty and TCP against the scale simulator,
MT-SICS, SBI and Toledo continuous; stable and dynamic weights, errors as bad values, a
stable weight for a part's snapshot, zero and tare."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.scale.config import ScaleDevice
from drivers.scale.driver import DYNAMIC, ScaleDriver
from edge_agent.config import agent_model
from edge_agent.daemon import Agent
from kernel.errors import WriteError
from kernel.model import DeviceState, Observation, Quality
from simulators.consumer import RecordCollector
from simulators.modbus_server import ModbusStationServer
from simulators.scale import ScaleModel, ScaleProtocol, ScaleSimulator
from simulators.scanner import HandheldScanner, PtyTransport, ScannerConfig
from simulators.scenario import demo_config
from simulators.serial_link import NullModem
from simulators.station import StationModel
from tests.modbus_helpers import Collector, free_port, wait_until
from tests.modbus_helpers import stop_task as stop
from tests.mqtt_helpers import Mosquitto

pytestmark = pytest.mark.timeout(60)


def scale(**kw: Any) -> ScaleDevice:
    raw = {"type": "scale", "name": "scale10", "station": "ST10", **kw}
    dev = ScaleDevice.model_validate(raw)
    assert dev.issues() == []
    return dev


@pytest.fixture
async def cable(tmp_path: Path) -> AsyncIterator[NullModem]:
    async with NullModem(tmp_path, "ttyAGENT", "ttySCALE") as link:
        yield link


async def running(driver: ScaleDriver, sink: Collector) -> asyncio.Task[None]:
    task = asyncio.create_task(driver.run(sink), name=f"device:{driver.name}")
    await wait_until(lambda: driver.status.state is DeviceState.UP, what="scale up")
    return task


def stable_weights(sink: Collector) -> list[float]:
    return [o.value for o in sink.all if o.quality is Quality.GOOD and isinstance(o.value, float)]


def last(sink: Collector) -> Observation:
    return sink.all[-1]


@pytest.mark.parametrize(
    ("protocol", "kw"),
    [
        (ScaleProtocol.MTSICS, {"protocol": "mt_sics"}),
        (ScaleProtocol.SBI, {"protocol": "sbi"}),
        (ScaleProtocol.TOLEDO, {"protocol": "toledo", "checksum": True}),
    ],
)
async def test_a_load_ramps_then_settles_and_only_the_settled_weight_is_good(
    cable: NullModem, protocol: ScaleProtocol, kw: dict[str, Any]
) -> None:
    model = ScaleModel(protocol=protocol, settle_time=0.3, decimals=1, capacity=6000.0)
    async with ScaleSimulator(model, serial_path=cable.b_path) as sim:
        driver = ScaleDriver(scale(port=str(cable.a_path), poll_interval=0.05, unit="g", **kw))
        sink = Collector()
        task = await running(driver, sink)
        try:
            sim.place(1234.5)
            await wait_until(
                lambda: sim.expected_weight() in stable_weights(sink), what="the stable weight"
            )
        finally:
            await stop(task)
    moving = [o for o in sink.all if o.quality is Quality.UNCERTAIN]
    assert moving, "the ramp was never seen as dynamic"
    assert all(o.error == DYNAMIC for o in moving)
    assert all(o.detail is not None and o.detail["stable"] is False for o in moving)
    settled = [o for o in sink.all if o.value == sim.expected_weight()]
    assert settled[-1].unit == "g"
    assert settled[-1].detail is not None
    assert settled[-1].detail["stable"] is True


async def test_on_change_records_a_steady_weight_once(cable: NullModem) -> None:
    model = ScaleModel(settle_time=0.05, decimals=1)
    async with ScaleSimulator(model, serial_path=cable.b_path) as sim:
        driver = ScaleDriver(scale(port=str(cable.a_path), poll_interval=0.02))
        sink = Collector()
        task = await running(driver, sink)
        try:
            sim.place(500.0)
            await wait_until(lambda: 500.0 in stable_weights(sink), what="500 g")
            polls = driver.status.reads_ok
            await wait_until(lambda: sim.state.raw(asyncio.get_running_loop().time()) == 500.0)
            seen = len(sink.all)
            await wait_until(
                lambda: len([c for c in sim.commands if c.startswith("SI")]) > 10 + polls,
                what="ten more polls",
            )
        finally:
            await stop(task)
    assert len(sink.all) == seen, "an unchanged weight was recorded again"


async def test_overload_and_an_unknown_unit_are_bad_values_with_the_reason(
    cable: NullModem,
) -> None:
    model = ScaleModel(settle_time=0.05, capacity=1000.0)
    async with ScaleSimulator(model, serial_path=cable.b_path) as sim:
        driver = ScaleDriver(scale(port=str(cable.a_path), poll_interval=0.02))
        sink = Collector()
        task = await running(driver, sink)
        try:
            sim.place(5000.0)
            await wait_until(
                lambda: sink.all and (last(sink).error or "").startswith("overload"),
                what="overload",
            )
            sim.place(10.0)
            sim.faults.unknown_unit = "xyz"
            await wait_until(
                lambda: last(sink).error == "unknown unit 'xyz'", what="the unknown unit"
            )
        finally:
            await stop(task)
    bad = [o for o in sink.all if o.quality is Quality.BAD]
    assert {o.value for o in bad} == {None}
    assert driver.status.reads_failed >= 2


async def test_a_silent_scale_is_down_and_recovers(cable: NullModem) -> None:
    async with ScaleSimulator(ScaleModel(), serial_path=cable.b_path) as sim:
        dev = scale(
            port=str(cable.a_path), poll_interval=0.05, timeout=0.2, backoff_initial=0.05,
            backoff_max=0.2,
        )  # fmt: skip
        driver = ScaleDriver(dev)
        sink = Collector()
        task = await running(driver, sink)
        try:
            sim.faults.silent = True
            await wait_until(lambda: driver.status.state is DeviceState.DOWN, what="down")
            assert "no answer to 'SI' within 0.2 s" in (driver.status.last_error or "")
            sim.faults.silent = False
            await wait_until(lambda: driver.status.state is DeviceState.UP, what="up again")
        finally:
            await stop(task)


async def test_a_parts_snapshot_waits_for_the_stable_weight(cable: NullModem) -> None:
    model = ScaleModel(settle_time=0.4, decimals=1, stable_timeout=2.0)
    async with ScaleSimulator(model, serial_path=cable.b_path) as sim:
        driver = ScaleDriver(scale(port=str(cable.a_path), poll_interval=0.1))
        sink = Collector()
        task = await running(driver, sink)
        try:
            sim.place(250.0)
            (obs,) = await driver.read_points(["weight"])  # asked while it still moves
            assert (obs.quality, obs.value, obs.unit) == (Quality.GOOD, 250.0, "g")
            assert "S" in sim.commands, "asked for the stable weight (S), not the moment's (SI)"
        finally:
            await stop(task)


async def test_no_stable_weight_in_time_is_a_bad_snapshot_value(cable: NullModem) -> None:
    model = ScaleModel(settle_time=5.0, stable_timeout=10.0)
    async with ScaleSimulator(model, serial_path=cable.b_path) as sim:
        dev = scale(port=str(cable.a_path), poll_interval=None, snapshot_timeout=0.3)
        driver = ScaleDriver(dev)
        sink = Collector()
        task = await running(driver, sink)
        try:
            sim.place(100.0)
            (obs,) = await driver.read_points(["weight"])
            assert obs.quality is Quality.BAD
            assert obs.error == "no stable weight within 0.3 s"
            # The scale was reset (@) so its late answer is not taken for the next request.
            await wait_until(lambda: "@" in sim.commands, what="the reset")
        finally:
            await stop(task)


async def test_zero_and_tare_by_command(cable: NullModem) -> None:
    model = ScaleModel(settle_time=0.05, decimals=1)
    async with ScaleSimulator(model, serial_path=cable.b_path) as sim:
        driver = ScaleDriver(scale(port=str(cable.a_path), poll_interval=0.05))
        sink = Collector()
        task = await running(driver, sink)
        try:
            sim.place(80.0)
            await wait_until(lambda: 80.0 in stable_weights(sink), what="80 g")
            answer = await driver.command("tare")
            assert answer.startswith("tared")
            await wait_until(lambda: stable_weights(sink)[-1] == 0.0, what="0 g after tare")
            sim.place(6000.0 * 10)  # overloaded: a zero now is refused, with the reason
            await wait_until(lambda: (last(sink).error or "").startswith("overload"))
            with pytest.raises(WriteError, match="zero refused"):
                await driver.command("zero")
        finally:
            await stop(task)


async def test_a_scale_on_tcp(tmp_path: Path) -> None:
    async with ScaleSimulator(ScaleModel(settle_time=0.05, decimals=1), tcp=True) as sim:
        driver = ScaleDriver(scale(host="127.0.0.1", tcp_port=sim.port, poll_interval=0.05))
        sink = Collector()
        task = await running(driver, sink)
        try:
            sim.place(42.0)
            await wait_until(lambda: 42.0 in stable_weights(sink), what="42 g over TCP")
        finally:
            await stop(task)


async def test_a_polled_scale_that_connects_to_the_agent_is_asked_once_it_has() -> None:
    """listen_port with MT-SICS polling: until the scale dials in there is nobody to ask, so
    the agent waits for it instead of timing out (which marked it down and closed the port
    each time, so a dialing scale hardly ever got in)."""
    port = free_port()
    driver = ScaleDriver(
        scale(listen_port=port, listen_host="127.0.0.1", poll_interval=0.05, timeout=0.3)
    )
    sink = Collector()
    task = await running(driver, sink)
    try:
        dial = ("127.0.0.1", port)
        async with ScaleSimulator(ScaleModel(settle_time=0.05, decimals=1), dial=dial) as sim:
            sim.place(12.5)
            await wait_until(lambda: 12.5 in stable_weights(sink), what="12.5 g from the scale")
            assert sim.connections == 1
        assert driver.status.reconnects == 0, driver.status.last_error
        assert driver.status.reads_failed == 0, driver.status.last_error
    finally:
        await stop(task)


# ---- a PLC, a scanner and a scale on one station ------------------------------------------------


@pytest.mark.parametrize("scale_answers", [True, False], ids=["scale-ok", "scale-silent"])
async def test_a_station_with_a_plc_a_scanner_and_a_scale(
    tmp_path: Path, mosquitto: Mosquitto, scale_answers: bool
) -> None:
    """The scanner sets the serial from the part's label, the PLC's cycle-complete bit
    triggers the part record, which holds the PLC's values and the scale's stable weight:
    every part record names the part the scanner read in that cycle and the weight on the
    scale. A scale that does not answer makes only the weight bad."""
    # cycle_complete is on for the last tenth of a cycle (80 ms): polled every 40 ms.
    model = StationModel(unit_id=1, cycle_time=0.8)
    async with (
        ModbusStationServer([model]) as plc,
        NullModem(tmp_path, "ttyAGENTSCALE", "ttySCALE") as cable,
    ):
        scanner_end = PtyTransport(tmp_path)
        raw = demo_config(
            modbus_port=plc.port, mqtt_port=mosquitto.port,
            buffer_path=str(tmp_path / "buffer.db"), stations=1, agent_id="station-pc1",
            poll_interval=0.04,
        )  # fmt: skip
        station = raw["stations"][0]
        station["context"] = {}
        station["scans"] = {
            "sources": [{"device": "scanner10"}],
            "rules": [{"name": "label", "gs1": True, "require": ["01", "21"],
                       "set": {"serial": "21"}}],
        }  # fmt: skip
        plc_name = raw["devices"][0]["name"]
        station["part"] = {
            "trigger": {"device": plc_name, "point": "cycle_complete"},
            # The PLC's values in one request, the scale's stable weight beside them.
            "snapshot": {
                "device": plc_name,
                "points": ["cycle_counter", "part_serial"],
                "also": [{"device": "scale10", "points": ["weight"]}],
            },
            "counter": "cycle_counter",
            "limits": {"weight": {"min": 240.0, "max": 260.0}},
        }
        raw["devices"] += [
            {"name": "scanner10", "type": "scanner", "station": "ST10",
             "port": str(scanner_end.agent_path)},
            {"name": "scale10", "type": "scale", "station": "ST10", "port": str(cable.a_path),
             "poll_interval": None, "unit": "g", "timeout": 0.2, "snapshot_timeout": 0.3},
        ]  # fmt: skip
        cfg = agent_model().model_validate(raw)
        assert cfg.issues() == []
        scale_model = ScaleModel(settle_time=0.05, decimals=1)
        async with (
            HandheldScanner(plc.stations[0], scanner_end, ScannerConfig(scan_phase=0.1)) as sim,
            ScaleSimulator(scale_model, serial_path=cable.b_path) as weigher,
        ):
            weigher.place(250.0)
            weigher.faults.silent = not scale_answers
            with RecordCollector("127.0.0.1", mosquitto.port) as col:
                agent = Agent(cfg)
                stop_agent = asyncio.Event()
                task = asyncio.create_task(agent.run(stop_agent))
                try:
                    await wait_until(lambda: agent.stats.parts >= 5, within=30, what="5 parts")
                finally:
                    stop_agent.set()
                    await task
                committed = agent.buffer.committed_seq
                assert col.wait_for(lambda d: len(d.records) >= committed, 20)
    parts = [r for _, r in sorted(col.data.records.items()) if r["kind"] == "part"]
    scanned = {s.cycle: s.serial for s in sim.sent}
    with_serial = [p for p in parts if p["serial"] is not None]
    assert len(with_serial) >= 4
    serials = [p["serial"] for p in with_serial]
    assert serials == sorted(set(serials)), "a part recorded twice or out of order"
    cycle_of = {serial: cycle for cycle, serial in scanned.items()}
    cycles = [cycle_of[s] for s in serials]
    # One part record per cycle, each naming that cycle's scanned part: consecutive cycles.
    assert cycles == list(range(cycles[0], cycles[0] + len(cycles))), serials
    for p in with_serial:
        weight = p["values"]["weight"]
        if scale_answers:
            assert (weight["value"], weight["unit"], weight["quality"]) == (250.0, "g", "good")
            assert weight["ok"] is True
            assert p["quality"] == "good", p
        else:
            assert (weight["value"], weight["quality"]) == (None, "bad"), p
            assert weight["error"] == "no stable weight within 0.3 s"
            assert weight["ok"] is None, "an unread weight is no evidence either way"
            assert p["quality"] == "bad"
            assert p["values"]["cycle_counter"]["quality"] == "good"
        # The scanned serial is the part the PLC finished (its own serial register, read in
        # the same request as its counter).
        assert p["values"]["part_serial"]["value"] == p["serial"], p


async def test_tare_from_the_line_pc_through_the_cli(
    tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    """``edge-agent device command --device scale10 tare`` reaches the running agent's scale;
    a command the device does not take is refused with what it takes."""
    from edge_agent.cli import main

    async with NullModem(tmp_path, "ttyAGENT", "ttySCALE") as cable:
        raw = demo_config(
            modbus_port=1, mqtt_port=mosquitto.port, buffer_path=str(tmp_path / "buffer.db"),
            stations=1, parts=False, agent_id="scale-pc1",
        )  # fmt: skip
        raw["stations"][0]["context"] = {}
        raw["devices"] = [
            {"name": "scale10", "type": "scale", "station": "ST10", "port": str(cable.a_path),
             "poll_interval": 0.05},
        ]  # fmt: skip
        socket = str(tmp_path / "control.sock")
        raw["control"] = {"socket": socket}
        cfg = agent_model().model_validate(raw)
        model = ScaleModel(settle_time=0.05, decimals=1)
        async with ScaleSimulator(model, serial_path=cable.b_path) as sim:
            sim.place(80.0)
            agent = Agent(cfg)
            stop_agent = asyncio.Event()
            task = asyncio.create_task(agent.run(stop_agent))
            try:
                driver = agent._by_name["scale10"]
                await wait_until(lambda: driver.status.state is DeviceState.UP, within=10)
                await wait_until(lambda: sim.state.stable(asyncio.get_running_loop().time()))
                args = ["device", "command", "--socket", socket, "--device", "scale10"]
                assert await asyncio.to_thread(main, [*args, "tare"]) == 0
                assert capsys.readouterr().out.startswith("scale10: tared")
                assert "T" in sim.commands
                assert await asyncio.to_thread(main, [*args, "calibrate"]) == 1
                err = capsys.readouterr().err
                assert "does not take command 'calibrate' (it takes: zero, tare)" in err
                assert await asyncio.to_thread(main, ["status", "--socket", socket]) == 0
                out = capsys.readouterr().out
                assert "devices: scale10 up" in out
                assert "records: 0 part(s), 0 gap(s), 0 scan(s) of which 0 rejected" in out
            finally:
                stop_agent.set()
                await task
