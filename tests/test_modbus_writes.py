"""ModbusTcpDriver's snapshots and writes (what the binder's triggers, handshake and gate
interlock use) and the commissioning probe's single requests, against a real pymodbus server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from pymodbus.constants import ExcCodes

from drivers.modbus.codec import Raw
from drivers.modbus.config import (
    ModbusPoint,
    Report,
    Table,
)
from drivers.modbus.tcp import ModbusTcpDriver
from drivers.runners import run_polled
from kernel.errors import ConnectError, ReadError, WriteError
from kernel.model import DeviceState, Quality, Value
from tests.modbus_driver_helpers import FAST, IN, C, H, by_point, device, pt, state
from tests.modbus_helpers import (
    Collector,
    memory_for,
    no_leaks,
    running,
    sim_server,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
async def _no_leaks() -> AsyncIterator[None]:
    async with no_leaks():
        yield


# -- snapshots and writes (the binder's triggers and handshake) ----------------------------


def snapshot_points() -> list[ModbusPoint]:
    return [
        pt("counter", 0, "uint32", poll_interval=0.05),
        pt("force", 2, "float32", report=Report.SNAPSHOT),
        pt("result", 4, "uint16", report=Report.ON_CHANGE),
        pt("far", 50, "uint16"),
        pt("in_depth", 10, "int16", IN, scale=0.01, report=Report.SNAPSHOT),
        pt("ready", 2, "bool", C),
        pt("taken", 3, "bool", C, report=Report.SNAPSHOT),
        pt("ack", 60, "uint16", report=Report.SNAPSHOT),
        pt("ack_i16", 61, "int16", report=Report.SNAPSHOT),
    ]


SNAPSHOT_VALUES: dict[str, Raw] = {
    "counter": 70000,
    "force": 20.5,
    "result": 1,
    "far": 9,
    "in_depth": 512,
    "ready": True,
    "taken": False,
    "ack": 0,
    "ack_i16": 0,
}


def snapshot_memory(points: list[ModbusPoint]) -> dict[Table, dict[int, int]]:
    return memory_for({p: SNAPSHOT_VALUES[p.name] for p in points})


async def test_read_points_reads_a_subset_in_one_request_per_table() -> None:
    points = snapshot_points()
    async with sim_server(snapshot_memory(points)) as sim:
        driver = ModbusTcpDriver(device(sim.port, points))
        await driver.open()
        try:
            got = await driver.read_points(["result", "in_depth", "counter", "force"])
        finally:
            await driver.close()
    assert sim.requests == [(H, 0, 5), (IN, 10, 1)]
    assert [o.point for o in got] == ["counter", "force", "result", "in_depth"]
    values = {o.point: (o.value, o.quality, o.error) for o in got}
    assert values == {
        "counter": (70000, Quality.GOOD, None),
        "force": (20.5, Quality.GOOD, None),
        "result": (1, Quality.GOOD, None),
        "in_depth": (pytest.approx(5.12), Quality.GOOD, None),
    }
    # One request, one timestamp.
    assert len({o.ts for o in got if o.point != "in_depth"}) == 1


async def test_read_points_always_reports_on_change_points_and_leaves_polling_alone() -> None:
    points = snapshot_points()
    async with sim_server(snapshot_memory(points)) as sim:
        driver = ModbusTcpDriver(device(sim.port, points, max_gap=0))
        group = next(i for i, g in enumerate(driver.plan) if "result" in {p.name for p in g.points})
        await driver.open()
        try:
            polled = by_point(await driver.read(group))
            assert polled["result"].value == 1  # on_change: first value is reported
            for _ in range(2):
                (o,) = await driver.read_points(["result"])
                assert (o.point, o.value, o.quality) == ("result", 1, Quality.GOOD)
            # The snapshots did not count as reports: the poll still knows 1 was reported...
            assert "result" not in by_point(await driver.read(group))
            # ...and a snapshot seeing a new value does not hide the change from the poll.
            sim.set_value(pt("result", 4, "uint16"), 2)
            (o,) = await driver.read_points(["result"])
            assert o.value == 2
            assert by_point(await driver.read(group))["result"].value == 2
        finally:
            await driver.close()


async def test_snapshot_problems_are_bad_observations_and_leave_the_state_alone() -> None:
    points = snapshot_points()
    async with sim_server(snapshot_memory(points)) as sim:
        driver = ModbusTcpDriver(device(sim.port, points))
        await driver.open()
        try:
            await driver.read(0)
            assert state(driver) is DeviceState.UP or state(driver) is DeviceState.STARTING
            before = state(driver)
            sim.fail[(IN, 10)] = ExcCodes.ILLEGAL_ADDRESS
            got = by_point(await driver.read_points(["counter", "in_depth"]))
            assert (got["in_depth"].value, got["in_depth"].quality) == (None, Quality.BAD)
            assert got["in_depth"].error == "modbus exception 2 (illegal data address)"
            assert got["counter"].quality is Quality.GOOD
            assert state(driver) is before
        finally:
            await driver.close()


async def test_snapshot_only_points_are_not_polled() -> None:
    points = snapshot_points()
    async with sim_server(snapshot_memory(points)) as sim:
        driver = ModbusTcpDriver(device(sim.port, points, poll_interval=0.05, max_gap=0))
        sink = Collector()
        async with running([asyncio.create_task(run_polled(driver, sink), name="plc")]):
            await wait_until(lambda: len(sink.of("far")) >= 3, what="a few polls")
            polled = {o.point for o in sink.all}
            assert polled == {"counter", "result", "far", "ready"}
            assert (IN, 10, 1) not in sim.requests  # in_depth is snapshot-only
            assert all(a not in (2, 3, 60) for t, a, _ in sim.requests if t is H)
            got = by_point(await driver.read_points(["force", "in_depth", "taken"]))
            assert (got["force"].value, got["taken"].value) == (20.5, False)
        assert "force" not in {o.point for o in sink.all}


async def test_device_of_snapshot_points_only_holds_its_connection_and_reconnects() -> None:
    p = pt("force", 2, "float32", report=Report.SNAPSHOT)
    mem = memory_for({p: 1.5})
    async with sim_server(mem) as sim:
        port = sim.port
        driver = ModbusTcpDriver(device(port, [p], **FAST))
        assert driver.groups() == []
        sink = Collector()
        async with running([asyncio.create_task(run_polled(driver, sink), name="plc")]):
            await wait_until(lambda: state(driver) is DeviceState.UP, what="up")
            ((o,),) = [await driver.read_points(["force"])]
            assert o.value == 1.5
            assert sim.count() == 1  # nothing is polled
            await sim.stop()
            # Nothing polls, yet the loss is noticed and recorded.
            await wait_until(lambda: state(driver) is DeviceState.DOWN, what="down")
            assert [(o.point, o.quality) for o in sink.all] == [("force", Quality.BAD)]
            with pytest.raises(ConnectError):
                await driver.read_points(["force"])
            async with sim_server(memory_for({p: 2.5}), port=port):
                await wait_until(lambda: state(driver) is DeviceState.UP, what="up again")
                (o,) = await driver.read_points(["force"])
                assert o.value == 2.5


async def test_read_points_of_unknown_names_is_a_value_error() -> None:
    points = snapshot_points()
    async with sim_server(snapshot_memory(points)) as sim:
        driver = ModbusTcpDriver(device(sim.port, points))
        await driver.open()
        try:
            with pytest.raises(ValueError, match="has no point\\(s\\) 'nope'"):
                await driver.read_points(["counter", "nope"])
            assert sim.requests == []
        finally:
            await driver.close()


async def test_read_points_of_a_device_that_stopped_answering_raises() -> None:
    points = snapshot_points()
    async with sim_server(snapshot_memory(points)) as sim:
        driver = ModbusTcpDriver(device(sim.port, points, **FAST))
        with pytest.raises(ConnectError, match="not connected"):
            await driver.read_points(["counter"])  # never opened
        await driver.open()
        try:
            sim.go_silent()
            with pytest.raises(ReadError, match=re.escape("holding 0+2: no response within 0.3s")):
                await driver.read_points(["counter"])
            await sim.resume()
            await sim.stop()
            with pytest.raises(ConnectError):
                await driver.read_points(["counter"])
        finally:
            await driver.close()


async def test_write_coil_and_register_round_trip() -> None:
    points = snapshot_points()
    async with sim_server(snapshot_memory(points)) as sim:
        driver = ModbusTcpDriver(device(sim.port, points))
        await driver.open()
        try:

            async def read_back() -> dict[str, Value]:
                got = await driver.read_points(["taken", "ack", "ack_i16"])
                return {o.point: o.value for o in got}

            assert await read_back() == {"taken": False, "ack": 0, "ack_i16": 0}
            await driver.write("taken", True)
            await driver.write("ack", 65535)
            await driver.write("ack_i16", -2)
            assert await read_back() == {"taken": True, "ack": 65535, "ack_i16": -2}
            await driver.write("taken", False)
            await driver.write("ack", True)  # a flag kept in a register
            assert await read_back() == {"taken": False, "ack": 1, "ack_i16": -2}
        finally:
            await driver.close()


async def test_write_honours_address_base() -> None:
    taken = pt("taken", 4, "bool", C)  # coil 3 on the wire
    async with sim_server(memory_for({pt("wire", 3, "bool", C): False})) as sim:
        driver = ModbusTcpDriver(device(sim.port, [taken], address_base=1))
        await driver.open()
        try:
            await driver.write("taken", True)
            (o,) = await driver.read_points(["taken"])
            assert o.value is True
        finally:
            await driver.close()


@pytest.mark.parametrize(
    ("point", "value", "message"),
    [
        ("force", 1.0, "'force' cannot be written: only single-register int16/uint16"),
        ("in_depth", 1, "'in_depth' cannot be written: input is read-only"),
        ("taken", 2, "'taken': a coil takes true/false (or 1/0), not 2"),
        ("ack", -1, "'ack': uint16 cannot hold -1"),
    ],
)
async def test_write_to_a_point_that_cannot_take_it_is_a_write_error(
    point: str, value: Raw, message: str
) -> None:
    points = [*snapshot_points(), pt("bits", 70, "bit", bit=1), pt("scaled", 71, "int16", scale=2)]
    async with sim_server(snapshot_memory(snapshot_points())) as sim:
        driver = ModbusTcpDriver(device(sim.port, points))
        await driver.open()
        try:
            with pytest.raises(WriteError, match=re.escape(message)):
                await driver.write(point, value)
            for name, why in (("bits", "read-modify-write"), ("scaled", "scaled points")):
                with pytest.raises(WriteError, match=why):
                    await driver.write(name, 1)
            with pytest.raises(ValueError, match="has no point 'nope'"):
                await driver.write("nope", True)
            assert sim.requests == []  # refused before anything went on the wire
        finally:
            await driver.close()


async def test_write_refused_by_the_device_is_a_write_error_with_the_reason() -> None:
    points = snapshot_points()
    async with sim_server(snapshot_memory(points)) as sim:
        driver = ModbusTcpDriver(device(sim.port, points, **FAST))
        await driver.open()
        try:
            sim.fail[(C, 3)] = ExcCodes.ILLEGAL_VALUE
            with pytest.raises(
                WriteError,
                match=re.escape("write coil 3 refused: modbus exception 3 (illegal data value)"),
            ):
                await driver.write("taken", True)
            sim.fail[(H, 60)] = ExcCodes.DEVICE_FAILURE
            with pytest.raises(WriteError, match="server device failure"):
                await driver.write("ack", 1)
            sim.fail.clear()
            sim.go_silent()
            with pytest.raises(
                WriteError, match=re.escape("write coil 3: no response within 0.3s")
            ):
                await driver.write("taken", True)
            await sim.resume()
            await sim.stop()
            with pytest.raises(ConnectError):
                await driver.write("taken", True)
        finally:
            await driver.close()


async def test_a_write_is_not_held_back_by_a_whole_poll_group() -> None:
    points = [pt(f"r{i}", i * 20, "uint16") for i in range(3)]
    points.append(pt("taken", 3, "bool", C, report=Report.SNAPSHOT))
    async with sim_server(memory_for(dict.fromkeys(points, 0))) as sim:
        driver = ModbusTcpDriver(device(sim.port, points, max_gap=0))
        await driver.open()
        try:
            poll = asyncio.create_task(driver.read(0))
            write = asyncio.create_task(driver.write("taken", True))
            await asyncio.gather(poll, write)
        finally:
            await driver.close()
    # pymodbus logs the read-back of the written coil as a coil access: it went in after the
    # poll's first request, not after its last.
    assert [(t, a) for t, a, _ in sim.requests] == [(H, 0), (C, 3), (H, 20), (H, 40)]


async def test_request_delay_separates_requests_of_every_task() -> None:
    points = snapshot_points()
    async with sim_server(snapshot_memory(points)) as sim:
        driver = ModbusTcpDriver(device(sim.port, points, request_delay=0.05))
        await driver.open()
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.gather(
                driver.read_points(["counter", "in_depth"]),  # two requests
                driver.write("taken", True),
                driver.write("ack", 1),
            )
            elapsed = loop.time() - started
        finally:
            await driver.close()
    assert elapsed >= 3 * 0.05


async def test_snapshots_and_writes_interleave_with_polling() -> None:
    points = snapshot_points()
    async with sim_server(snapshot_memory(points)) as sim:
        driver = ModbusTcpDriver(device(sim.port, points, poll_interval=0.01, max_gap=0))
        sink = Collector()

        async def handshake(rounds: int) -> None:
            for i in range(rounds):
                await driver.write("taken", i % 2 == 0)
                await driver.write("ack", i)
                got = by_point(await driver.read_points(["taken", "ack", "ack_i16", "in_depth"]))
                assert {n: o.quality for n, o in got.items()} == dict.fromkeys(got, Quality.GOOD)
                assert (got["taken"].value, got["ack"].value) == (i % 2 == 0, i)

        async with running([asyncio.create_task(run_polled(driver, sink), name="plc")]):
            await wait_until(lambda: state(driver) is DeviceState.UP, what="up")
            await asyncio.gather(handshake(30), handshake(30))
            polls = len(sink.of("counter"))
            await wait_until(lambda: len(sink.of("counter")) > polls, what="polling goes on")
        assert state(driver) is DeviceState.UP
        assert driver.status.reads_failed == 0
        assert all(o.quality is Quality.GOOD for o in sink.all)


# -- the commissioning probe's single requests ---------------------------------------------


async def test_probe_request_returns_failures_as_data_and_leaves_the_poll_state_alone() -> None:
    a, b, coil = pt("a", 0, "uint16"), pt("b", 1, "int32"), pt("c", 2, "bool", C)
    async with sim_server(memory_for({a: 7, b: -2, coil: True})) as sim:
        driver = ModbusTcpDriver(device(sim.port, [a, b, coil], **FAST))
        (req, coil_req) = driver.plan[0].requests
        with pytest.raises(ConnectError, match="not connected"):
            await driver.probe_request(req)
        await driver.open()
        try:
            good = await driver.probe_request(req)
            assert (good.words, good.bits, good.error, good.exception_code) == (
                (7, 0xFFFF, 0xFFFE),
                None,
                None,
                None,
            )
            assert good.latency is not None
            assert 0 < good.latency < 0.3
            assert [(o.point, o.value, o.quality) for o in good.observations] == [
                ("a", 7, Quality.GOOD),
                ("b", -2, Quality.GOOD),
            ]
            bits = await driver.probe_request(coil_req)
            assert (bits.bits, bits.words) == ((True,), None)
            for code in (ExcCodes.ILLEGAL_ADDRESS, ExcCodes.GATEWAY_NO_RESPONSE):
                sim.fail[(H, 0)] = code
                refused = await driver.probe_request(req)
                assert (refused.exception_code, refused.words) == (int(code), None)
                assert refused.error is not None
                assert refused.error.startswith(f"modbus exception {int(code)} (")
                assert refused.latency is not None
                assert all(o.quality is Quality.BAD for o in refused.observations)
            sim.fail.clear()
            sim.short_by = 1
            short = await driver.probe_request(req)
            assert short.words == (7, 0xFFFF)
            assert short.observations[1].error == "short response: 2 of 3 registers"
            sim.short_by = 0
            sim.go_silent()
            silent = await driver.probe_request(req)
            assert (silent.timed_out, silent.latency, silent.words) == (True, None, None)
            assert silent.error == "no response within 0.3s"
            assert [o.error for o in silent.observations] == ["no response within 0.3s"] * 2
            await sim.resume()
            assert state(driver) is DeviceState.STARTING
            assert driver.status.reads_ok == driver.status.reads_failed == 0
        finally:
            await driver.close()
