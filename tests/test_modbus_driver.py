"""ModbusTcpDriver against a real in-process pymodbus server, alone and under run_polled."""

from __future__ import annotations

import asyncio
import itertools
import math
import struct
from collections.abc import AsyncIterator

import pytest
from pymodbus.constants import ExcCodes

from drivers.bus import Buses
from drivers.modbus.codec import Raw
from drivers.modbus.config import (
    ModbusPoint,
    Report,
    WordOrder,
)
from drivers.modbus.tcp import ModbusTcpDriver
from drivers.registry import DriverContext, create_driver
from drivers.runners import run_polled
from kernel.errors import ConnectError, ReadError
from kernel.model import DeviceState, Observation, Quality
from tests.modbus_driver_helpers import FAST, IN, C, D, H, by_point, device, pt, state
from tests.modbus_helpers import (
    Collector,
    free_port,
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


F32 = struct.unpack(">f", struct.pack(">f", 123.456))[0]

# (point, raw value the PLC holds, value the driver must report)
WIRE: list[tuple[ModbusPoint, Raw, Raw]] = [
    (pt("i16", 0, "int16", unit="mm"), -2, -2),
    (pt("u16", 1, "uint16"), 65535, 65535),
    (pt("i32_cdab", 2, "int32", word_order=WordOrder.CDAB), -123456789, -123456789),
    (pt("u32_badc", 4, "uint32", word_order=WordOrder.BADC), 4_000_000_000, 4_000_000_000),
    (pt("i64_dcba", 6, "int64", word_order=WordOrder.DCBA), -(2**63), -(2**63)),
    (pt("u64", 10, "uint64"), 2**64 - 1, 2**64 - 1),
    (pt("f32", 14, "float32"), 123.456, F32),
    (pt("f64_dcba", 16, "float64", word_order=WordOrder.DCBA), math.pi, math.pi),
    (pt("serial", 20, "string", count=5), "SN-0042", "SN-0042"),
    (pt("lot_badc", 25, "string", count=3, word_order=WordOrder.BADC), "L7x", "L7x"),
    (pt("run", 28, "bit", bit=0), True, True),
    (pt("fault", 28, "bit", bit=15), True, True),
    (pt("idle", 28, "bit", bit=3), False, False),
    (pt("temp", 29, "int16", scale=0.1, offset=-1.0, unit="degC"), -250, -26.0),
    (pt("in_u16", 0, "uint16", IN), 1234, 1234),
    (pt("in_f32_cdab", 1, "float32", IN, word_order=WordOrder.CDAB), -1.5, -1.5),
    (pt("coil_on", 0, "bool", C), True, True),
    (pt("coil_off", 1, "bool", C), False, False),
    (pt("coil_far", 21, "bool", C), True, True),
    (pt("di_on", 3, "bool", D), True, True),
]


async def test_every_type_decodes_through_the_wire() -> None:
    points = [p for p, _, _ in WIRE]
    async with sim_server(memory_for({p: raw for p, raw, _ in WIRE})) as sim:
        driver = ModbusTcpDriver(device(sim.port, points))
        await driver.open()
        try:
            got = by_point(await driver.read(0))
        finally:
            await driver.close()
    assert set(got) == {p.name for p in points}
    for p, _, expected in WIRE:
        o = got[p.name]
        assert (o.device, o.quality, o.error, o.unit) == ("plc", Quality.GOOD, None, p.unit)
        if isinstance(expected, float):
            assert o.value == pytest.approx(expected), p.name
        else:
            assert o.value == expected, p.name
        assert type(o.value) is type(expected), p.name
    # One response, one timestamp: points read together carry the same ts.
    for req in driver.plan[0].requests:
        assert len({got[pp.point.name].ts for pp in req.points}) == 1


async def test_neighbouring_points_are_read_in_few_requests() -> None:
    points = (
        [pt(f"r{i}", i, "uint16") for i in range(30)]
        + [pt(f"b{i}", 40, "bit", bit=i) for i in range(8)]  # one status word
        + [pt(f"c{i}", i, "bool", C) for i in range(5)]
        + [pt("in", 100, "uint16", IN)]
    )
    async with sim_server(memory_for(dict.fromkeys(points, 1))) as sim:
        driver = ModbusTcpDriver(device(sim.port, points, max_gap=8))
        await driver.open()
        try:
            first = await driver.read(0)
            assert len(first) == len(points)
            assert [(t, a) for t, a, _ in sim.requests] == [(H, 0), (H, 40), (IN, 100), (C, 0)]
            await driver.read(0)
            assert sim.count() == 8
        finally:
            await driver.close()


async def test_illegal_address_is_bad_data_not_an_outage() -> None:
    ok, ok_in = pt("ok", 0, "uint16"), pt("ok_in", 0, "uint16", IN)
    missing = pt("missing", 200, "int32")  # not mapped on the PLC
    async with sim_server(memory_for({ok: 7, ok_in: 8})) as sim:
        driver = ModbusTcpDriver(device(sim.port, [ok, missing, ok_in]))
        await driver.open()
        try:
            got = by_point(await driver.read(0))
        finally:
            await driver.close()
    assert got["missing"].quality is Quality.BAD
    assert got["missing"].value is None
    assert got["missing"].error == "modbus exception 2 (illegal data address)"
    assert (got["ok"].value, got["ok"].quality) == (7, Quality.GOOD)
    assert (got["ok_in"].value, got["ok_in"].quality) == (8, Quality.GOOD)
    assert state(driver) is DeviceState.DEGRADED
    assert "illegal data address" in (driver.status.last_error or "")


async def test_degraded_until_every_group_reads_clean() -> None:
    fast, slow = pt("fast", 0, "uint16", poll_interval=0.1), pt("slow", 5, "uint16")
    async with sim_server(memory_for({fast: 1, slow: 2})) as sim:
        driver = ModbusTcpDriver(device(sim.port, [fast, slow], max_gap=0))
        assert [interval for interval, _ in driver.groups()] == [0.1, 1.0]
        await driver.open()
        try:
            driver.status.set_state(DeviceState.UP)
            sim.fail[(H, 0)] = ExcCodes.DEVICE_BUSY
            (o,) = await driver.read(0)
            assert (o.quality, o.error) == (Quality.BAD, "modbus exception 6 (server device busy)")
            assert state(driver) is DeviceState.DEGRADED
            sim.fail.clear()
            (o,) = await driver.read(1)
            assert o.quality is Quality.GOOD
            assert state(driver) is DeviceState.DEGRADED  # group 0 has not read clean yet
            (o,) = await driver.read(0)
            assert o.quality is Quality.GOOD
            assert state(driver) is DeviceState.UP
        finally:
            await driver.close()


async def test_gateway_exception_means_the_device_is_unreachable() -> None:
    p = pt("a", 0, "uint16")
    async with sim_server(memory_for({p: 1})) as sim:
        driver = ModbusTcpDriver(device(sim.port, [p]))
        await driver.open()
        try:
            sim.fail[(H, 0)] = ExcCodes.GATEWAY_NO_RESPONSE
            with pytest.raises(ReadError, match="gateway target device failed to respond"):
                await driver.read(0)
        finally:
            await driver.close()


async def test_short_response_is_bad_for_the_points_it_misses() -> None:
    a, b = pt("a", 0, "uint16"), pt("b", 1, "int32")
    async with sim_server(memory_for({a: 3, b: -1})) as sim:
        driver = ModbusTcpDriver(device(sim.port, [a, b]))
        await driver.open()
        try:
            sim.short_by = 1
            got = by_point(await driver.read(0))
        finally:
            await driver.close()
    assert (got["a"].value, got["a"].quality) == (3, Quality.GOOD)
    assert (got["b"].value, got["b"].quality) == (None, Quality.BAD)
    assert got["b"].error == "short response: 2 of 3 registers"
    assert state(driver) is DeviceState.DEGRADED


async def test_on_change_points_report_changes_only() -> None:
    watched = pt("watched", 0, "uint16", report=Report.ON_CHANGE)
    always = pt("always", 1, "uint16")
    async with sim_server(memory_for({watched: 5, always: 9})) as sim:
        driver = ModbusTcpDriver(device(sim.port, [watched, always]))

        async def read() -> dict[str, Observation]:
            return by_point(await driver.read(0))

        await driver.open()
        try:
            assert (await read())["watched"].value == 5
            assert set(await read()) == {"always"}
            sim.set_value(watched, 6)
            assert (await read())["watched"].value == 6
            assert set(await read()) == {"always"}
            sim.fail[(H, 0)] = ExcCodes.ILLEGAL_ADDRESS  # quality change is a change
            assert (await read())["watched"].quality is Quality.BAD
            assert set(await read()) == {"always"}
            sim.fail.clear()
            assert (await read())["watched"].value == 6
            # After a reconnect the runner has recorded an outage: report the value again.
            await driver.close()
            await driver.open()
            assert (await read())["watched"].value == 6
        finally:
            await driver.close()


async def test_open_refused_names_the_reason_and_close_is_idempotent() -> None:
    driver = ModbusTcpDriver(device(free_port(), [pt("a", 0, "uint16")], **FAST))
    await driver.close()  # before open
    with pytest.raises(ConnectError, match="refused"):
        await driver.open()
    await driver.close()
    await driver.close()


async def test_registry_builds_the_modbus_driver() -> None:
    dev = device(502, [pt("a", 0, "uint16")])
    context = DriverContext(buses=Buses())
    assert isinstance(create_driver(dev, context), ModbusTcpDriver)
    with pytest.raises(ValueError, match="no driver for type 'nope'"):
        create_driver(dev.model_copy(update={"type": "nope"}), context)


# -- under the runner ---------------------------------------------------------------------


def outages(sink: Collector, point: str) -> int:
    return sum(1 for o in sink.of(point) if o.quality is Quality.BAD and o.value is None)


async def test_down_device_retries_and_comes_up_when_the_server_starts() -> None:
    port = free_port()
    p = pt("a", 0, "uint16")
    driver = ModbusTcpDriver(device(port, [p], poll_interval=0.05, **FAST))
    sink = Collector()
    async with running([asyncio.create_task(run_polled(driver, sink), name="plc")]):
        await wait_until(lambda: driver.status.reconnects >= 3, what="retries")
        assert state(driver) is DeviceState.DOWN
        assert "refused" in (driver.status.last_error or "")
        assert outages(sink, "a") == 1  # recorded once, not once per retry
        async with sim_server(memory_for({p: 42}), port=port):
            await wait_until(lambda: any(o.value == 42 for o in sink.of("a")), what="values")
            assert state(driver) is DeviceState.UP


async def test_silent_server_marks_down_then_recovers() -> None:
    p = pt("a", 0, "uint16")
    async with sim_server(memory_for({p: 1})) as sim:
        driver = ModbusTcpDriver(device(sim.port, [p], poll_interval=0.05, **FAST))
        sink = Collector()
        async with running([asyncio.create_task(run_polled(driver, sink), name="plc")]):
            await wait_until(lambda: len(sink.of("a")) >= 2, what="first values")
            sim.go_silent()
            await wait_until(lambda: state(driver) is DeviceState.DOWN, what="down")
            assert "no response within 0.3s" in (driver.status.last_error or "")
            assert outages(sink, "a") >= 1
            await sim.resume()
            seen = len(sink.all)
            await wait_until(
                lambda: any(o.quality is Quality.GOOD for o in sink.all[seen:]), what="recovery"
            )
            await wait_until(lambda: state(driver) is DeviceState.UP, what="up")


async def test_server_restart_marks_down_then_recovers() -> None:
    p = pt("a", 0, "uint16")
    mem = memory_for({p: 1})
    sink = Collector()
    async with sim_server(mem) as sim:
        port = sim.port
        driver = ModbusTcpDriver(device(port, [p], poll_interval=0.05, **FAST))
        task = asyncio.create_task(run_polled(driver, sink), name="plc")
        async with running([task]):
            await wait_until(lambda: len(sink.of("a")) >= 2, what="first values")
            await sim.stop()
            await wait_until(lambda: state(driver) is DeviceState.DOWN, what="down")
            async with sim_server(memory_for({p: 2}), port=port):
                await wait_until(lambda: any(o.value == 2 for o in sink.of("a")), what="values")
                assert state(driver) is DeviceState.UP


async def test_one_dead_device_does_not_stall_another() -> None:
    good_p, dead_p = pt("g", 0, "uint16"), pt("d", 0, "uint16")
    async with (
        sim_server(memory_for({good_p: 1})) as good_sim,
        sim_server(memory_for({dead_p: 1})) as dead_sim,
    ):
        dead_sim.go_silent()  # accepts connections, never answers: the worst kind of dead
        good = ModbusTcpDriver(device(good_sim.port, [good_p], name="good", poll_interval=0.05))
        dead = ModbusTcpDriver(
            device(
                dead_sim.port,
                [dead_p],
                name="dead",
                poll_interval=0.05,
                timeout=1.0,
                backoff_initial=0.01,
                backoff_max=0.05,
            )
        )
        good_sink, dead_sink = Collector(), Collector()
        tasks = [
            asyncio.create_task(run_polled(good, good_sink), name="good"),
            asyncio.create_task(run_polled(dead, dead_sink), name="dead"),
        ]
        async with running(tasks):
            await wait_until(lambda: state(dead) is DeviceState.DOWN, what="dead down")
            # The dead device spent a whole 1 s timeout; the good one kept its 50 ms grid.
            n = len(good_sink.of("g"))
            assert n >= 8, n
            await wait_until(lambda: len(good_sink.of("g")) >= n + 5, 2.0, "more good values")
            ts = [o.ts for o in good_sink.of("g")]
            assert max(b - a for a, b in itertools.pairwise(ts)) < 0.5
            assert state(good) is DeviceState.UP
            assert not any(o.quality is Quality.GOOD for o in dead_sink.all)
