"""The simulated station: its ground truth (pure), its register map read through the real
driver, its write rules, and the data ready / data taken handshake end to end."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import ExceptionResponse

from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.tcp import ModbusTcpDriver
from kernel.errors import ReadError, WriteError
from kernel.model import Quality, Value
from simulators.modbus_server import ModbusStationServer
from simulators.station import (
    COIL_CYCLE_COMPLETE,
    COIL_DATA_READY,
    COIL_DATA_TAKEN,
    COIL_RUNNING,
    COMPLETE_PHASE,
    FORCE_NOK_ABOVE,
    FORCE_OK_AT_MOST,
    HANDSHAKE_PHASE,
    HOLDING_REGISTERS,
    REGISTER_MAP,
    RESULT_IN_WORK,
    RESULT_NOK,
    RESULT_OK,
    HandshakePlc,
    Stage,
    StationModel,
    point_config,
)
from tests.modbus_helpers import no_leaks
from tests.waiting import Pending, wait_until

pytestmark = pytest.mark.timeout(30)

MODEL = StationModel()
NOK_CYCLES = [k for k in range(200) if not MODEL.ok(k)]
COIL_POINTS = {
    "running": COIL_RUNNING,
    "cycle_complete": COIL_CYCLE_COMPLETE,
    "data_ready": COIL_DATA_READY,
    "data_taken": COIL_DATA_TAKEN,
}
SNAPSHOT = ["cycle_counter", "part_serial", "final_force", "final_depth", "result"]
"""Holding registers only: one request, so one instant of the PLC."""


@pytest.fixture(autouse=True)
async def _no_leaks() -> AsyncIterator[None]:
    async with no_leaks():
        yield


def f32(x: float) -> float:
    """``x`` as a float32 register pair holds it."""
    value: float = struct.unpack(">f", struct.pack(">f", x))[0]
    return value


# -- ground truth (pure) ------------------------------------------------------------------


def test_new_registers_extend_the_map_without_moving_the_old_ones() -> None:
    assert {n: REGISTER_MAP[n][:4] for n in ("final_force", "final_depth", "result")} == {
        "final_force": (30, "float32", "ABCD", 2),
        "final_depth": (32, "float32", "CDAB", 2),
        "result": (34, "uint16", "ABCD", 1),
    }
    assert REGISTER_MAP["material_lot"][:4] == (26, "string", "BADC", 4)
    used = sorted(
        a
        for addr, _k, _o, count, _u, _s in REGISTER_MAP.values()
        for a in range(addr, addr + count)
    )
    assert used == sorted(set(used)), "registers overlap"
    assert max(used) < HOLDING_REGISTERS


def test_final_values_hold_for_the_whole_cycle() -> None:
    for k in range(300):
        final = MODEL.final_values(k)
        for phase in (0.0, 0.3, COMPLETE_PHASE - 1e-9, COMPLETE_PHASE, HANDSHAKE_PHASE, 0.999):
            values = MODEL.values(k, phase)
            assert {n: values[n] for n in final} == final
            assert values["cycle_counter"] == k + 1


def test_final_values_are_exact_in_float32() -> None:
    # So tests compare decoded values with ==, no rounding allowance.
    for k in range(3000):
        for value in MODEL.final_values(k).values():
            assert f32(value) == value


def test_a_force_limit_judges_parts_as_the_plc_does() -> None:
    assert NOK_CYCLES  # both kinds occur
    for k in range(3000):
        force = MODEL.final_values(k)["final_force"]
        if MODEL.ok(k):
            assert force <= FORCE_OK_AT_MOST, k
        else:
            assert force > FORCE_NOK_ABOVE, k


@pytest.mark.parametrize("k", [0, 15, NOK_CYCLES[0], NOK_CYCLES[1]])
def test_result_is_set_in_the_cycle_complete_window_only(k: int) -> None:
    done = RESULT_OK if MODEL.ok(k) else RESULT_NOK
    for phase in (0.0, 0.5, COMPLETE_PHASE - 1e-9):
        assert MODEL.values(k, phase)["result"] == RESULT_IN_WORK
    for phase in (COMPLETE_PHASE, HANDSHAKE_PHASE, 0.999):
        assert MODEL.values(k, phase)["result"] == done


def test_free_running_coils_follow_the_clock() -> None:
    model = StationModel(t0=100.0, cycle_time=2.0)
    running = 1 << COIL_RUNNING
    done = running | 1 << COIL_CYCLE_COMPLETE | 1 << COIL_DATA_READY
    assert model.coils(100.0) == running
    assert model.coils(101.7) == running
    assert model.coils(101.85) == done
    assert model.coils(101.99) == done
    assert model.coils(102.0) == running  # the next part


def test_handshake_plc_waits_for_data_taken_indefinitely() -> None:
    model = StationModel(cycle_time=1.0, handshake=True)
    plc = HandshakePlc(model, start=0.0)
    running = 1 << COIL_RUNNING
    complete, ready, taken = (
        1 << c for c in (COIL_CYCLE_COMPLETE, COIL_DATA_READY, COIL_DATA_TAKEN)
    )
    assert plc.coils(0.5) == running
    assert plc.holding_registers(0.5) == model.register_image(0, 0.45)
    assert plc.coils(1.0) == running | complete | ready
    frozen = model.register_image(0, HANDSHAKE_PHASE)
    assert plc.holding_registers(1.0) == frozen
    # However long the agent takes, the part waits and nothing moves.
    assert plc.coils(1e6) == running | complete | ready
    assert plc.holding_registers(1e6) == frozen
    assert (plc.cycle, plc.stage, plc.parts_released) == (0, Stage.READY, 0)

    plc.write_taken(True, 1e6)
    assert (plc.stage, plc.parts_released) == (Stage.RELEASING, 1)
    assert plc.coils(2e6) == running | complete | taken  # data ready dropped, part still here
    assert plc.holding_registers(2e6) == frozen

    plc.write_taken(False, 2e6)
    assert (plc.cycle, plc.stage) == (1, Stage.WORKING)
    assert plc.coils(2e6 + 0.99) == running  # its cycle time counts from the reset
    assert plc.holding_registers(2e6 + 0.5) == model.register_image(1, 0.45)
    assert plc.coils(2e6 + 1) == running | complete | ready
    assert plc.premature_takes == 0


def test_handshake_plc_phase_stays_out_of_the_complete_window_while_working() -> None:
    plc = HandshakePlc(StationModel(cycle_time=1.0, handshake=True), start=0.0)
    phases = [plc.phase(t / 100) for t in range(100)]
    assert phases == sorted(phases)
    assert max(phases) < COMPLETE_PHASE
    plc.advance(1.0)
    assert plc.phase(1.0) == HANDSHAKE_PHASE


def test_a_premature_take_is_counted_and_releases_the_part_unseen() -> None:
    plc = HandshakePlc(StationModel(cycle_time=1.0, handshake=True), start=0.0)
    plc.write_taken(True, 0.5)
    assert plc.premature_takes == 1
    plc.advance(1.0)
    # Level logic, like a PLC's: ready and taken at once, so data ready never showed.
    assert (plc.stage, plc.data_ready, plc.parts_released) == (Stage.RELEASING, False, 1)


# -- through the wire ---------------------------------------------------------------------


def press(port: int, unit_id: int = 1, **kw: Any) -> ModbusTcpDevice:
    points = [point_config(n) for n in REGISTER_MAP]
    points += [
        {"name": n, "address": a, "table": "coil", "type": "bool"} for n, a in COIL_POINTS.items()
    ]
    dev = ModbusTcpDevice.model_validate(
        {
            "type": "modbus_tcp",
            "name": f"press{unit_id}",
            "host": "127.0.0.1",
            "port": port,
            "unit_id": unit_id,
            "timeout": 1.0,
            "points": points,
            **kw,
        }
    )
    assert dev.issues() == []
    return dev


async def read(driver: ModbusTcpDriver, names: list[str]) -> dict[str, Value]:
    got = await driver.read_points(names)
    assert [o.error for o in got if o.quality is not Quality.GOOD] == []
    return {o.point: o.value for o in got}


async def read_until(
    driver: ModbusTcpDriver,
    names: list[str],
    condition: Callable[[dict[str, Value]], bool],
    within: float = 5.0,
    what: str = "condition",
) -> dict[str, Value]:
    """Read ``names`` until ``condition`` holds; return the values read."""

    async def check() -> dict[str, Value] | Pending:
        got = await read(driver, names)
        return got if condition(got) else Pending(str(got))

    got = await wait_until(check, within, what)
    assert not isinstance(got, Pending)  # wait_until returns only a met condition's value
    return got


def expected(model: StationModel, k: int, phase: float) -> dict[str, Value]:
    """What the driver must decode: float32 registers carry float32 precision, scaled
    registers their scale."""
    out: dict[str, Value] = {}
    for name, value in model.values(k, phase).items():
        _a, kind, _o, _c, _u, scale = REGISTER_MAP[name]
        out[name] = f32(value) if kind == "float32" else value * scale if scale != 1.0 else value
    return out


async def test_every_register_decodes_to_the_ground_truth() -> None:
    model = StationModel(unit_id=3, cycle_time=0.05, handshake=True, serial_prefix="RT-")
    async with ModbusStationServer([model]) as server:
        driver = ModbusTcpDriver(press(server.port, 3))
        await driver.open()
        try:
            await read_until(driver, ["data_ready"], lambda v: v["data_ready"] is True)
            got = await read(driver, list(REGISTER_MAP))
        finally:
            await driver.close()
    want = expected(model, 0, HANDSHAKE_PHASE)
    assert got.keys() == want.keys()
    for name, value in want.items():
        if REGISTER_MAP[name][5] != 1.0:
            assert got[name] == pytest.approx(value), name
        else:
            assert got[name] == value, name


async def test_result_and_final_values_through_the_wire() -> None:
    now = time.monotonic()
    nok = NOK_CYCLES[0]
    # Cycles of 1000 s: every station stays at its phase for the whole test.
    stations = {
        1: (StationModel(unit_id=1, cycle_time=1000.0, t0=now - 3.5 * 1000), 3, False),
        2: (StationModel(unit_id=2, cycle_time=1000.0, t0=now - 4.95 * 1000), 4, True),
        3: (StationModel(unit_id=3, cycle_time=1000.0, t0=now - (nok + 0.95) * 1000), nok, True),
    }
    async with ModbusStationServer([m for m, _, _ in stations.values()]) as server:
        for unit, (model, k, complete) in stations.items():
            driver = ModbusTcpDriver(press(server.port, unit))
            await driver.open()
            try:
                got = await read(driver, [*SNAPSHOT, "data_ready", "cycle_complete"])
            finally:
                await driver.close()
            result = (RESULT_OK if model.ok(k) else RESULT_NOK) if complete else RESULT_IN_WORK
            assert got == {
                "cycle_counter": k + 1,
                "part_serial": model.serial(k),
                **model.final_values(k),
                "result": result,
                "data_ready": complete,
                "cycle_complete": complete,
            }, unit


async def test_only_data_taken_is_writable() -> None:
    async with ModbusStationServer([StationModel(cycle_time=1000.0)]) as server:
        driver = ModbusTcpDriver(press(server.port))
        await driver.open()
        try:
            await driver.write("data_taken", True)
            assert server.data_taken(1) is True
            assert (await read(driver, ["data_taken"]))["data_taken"] is True
            await driver.write("data_taken", False)
            assert server.data_taken(1) is False
            for point in ("cycle_complete", "status"):  # writable types, wrong addresses
                with pytest.raises(WriteError, match=r"exception 2 \(illegal data address\)"):
                    await driver.write(point, 1)
            assert (await read(driver, ["status", "data_taken"]))["data_taken"] is False
        finally:
            await driver.close()
        with pytest.raises(LookupError, match="unit 1 is not a handshake station"):
            server.plc(1)


async def test_data_taken_takes_multiple_coil_writes_too() -> None:
    async with ModbusStationServer([StationModel(cycle_time=1000.0)]) as server:
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port, reconnect_delay=0)
        assert await client.connect()
        try:
            ok = await client.write_coils(COIL_DATA_TAKEN, [True], device_id=1)
            assert not ok.isError()
            assert server.data_taken(1) is True
            wide = await client.write_coils(COIL_DATA_READY, [False, False], device_id=1)
            assert isinstance(wide, ExceptionResponse)
            assert wide.exception_code == 2
            assert server.data_taken(1) is True  # refused as a whole
        finally:
            client.close()


async def test_a_unit_nobody_plays_answers_like_a_gateway() -> None:
    async with ModbusStationServer([StationModel(unit_id=1)]) as server:
        driver = ModbusTcpDriver(press(server.port, unit_id=9))
        await driver.open()
        try:
            for names in (["cycle_counter"], ["data_ready"]):
                with pytest.raises(ReadError, match="gateway target device failed to respond"):
                    await driver.read_points(names)
        finally:
            await driver.close()


async def test_handshake_end_to_end() -> None:
    model = StationModel(unit_id=2, cycle_time=0.05, handshake=True, serial_prefix="HS-")
    async with ModbusStationServer([model]) as server:
        plc = server.plc(2)
        driver = ModbusTcpDriver(press(server.port, 2))
        await driver.open()
        loop = asyncio.get_running_loop()
        try:
            for k in range(3):
                # As the agent does it: the trigger first, then the snapshot.
                await read_until(
                    driver, ["data_ready"], lambda v: v["data_ready"] is True, what=f"part {k}"
                )
                snap = await read(driver, SNAPSHOT)
                assert snap == {
                    "cycle_counter": k + 1,
                    "part_serial": model.serial(k),
                    **model.final_values(k),
                    "result": RESULT_OK if model.ok(k) else RESULT_NOK,
                }
                # Several cycle times later the PLC is still waiting with the same part.
                until = loop.time() + 4 * model.cycle_time
                while loop.time() < until:
                    assert await read(driver, [*SNAPSHOT, "data_ready"]) == {
                        **snap,
                        "data_ready": True,
                    }
                assert plc.parts_released == k

                await driver.write("data_taken", True)
                released = await read_until(
                    driver,
                    ["data_ready", "cycle_complete", "cycle_counter"],
                    lambda v: v["data_ready"] is False,
                    what="data ready to drop",
                )
                # The part is released but the next one waits for taken to be reset.
                assert released["cycle_counter"] == k + 1
                assert released["cycle_complete"] is True
                assert plc.parts_released == k + 1
                until = loop.time() + 4 * model.cycle_time
                while loop.time() < until:
                    assert (await read(driver, ["cycle_counter"]))["cycle_counter"] == k + 1

                await driver.write("data_taken", False)
                # The next part starts right away (its data comes a cycle time later).
                assert (plc.cycle, plc.stage) == (k + 1, Stage.WORKING)
                assert (await read(driver, ["cycle_counter"]))["cycle_counter"] == k + 2
            assert (plc.cycle, plc.parts_released, plc.premature_takes) == (3, 3, 0)
        finally:
            await driver.close()


async def test_handshake_state_survives_a_server_restart() -> None:
    model = StationModel(cycle_time=0.02, handshake=True)
    server = ModbusStationServer([model])
    await server.start()
    try:
        driver = ModbusTcpDriver(press(server.port))
        await driver.open()
        try:
            await read_until(driver, ["data_ready"], lambda v: v["data_ready"] is True)
            await driver.write("data_taken", True)
        finally:
            await driver.close()
        await server.stop()
        await server.start()
        driver = ModbusTcpDriver(press(server.port))
        await driver.open()
        try:
            # Like a PLC after a network outage: still waiting for taken to be reset.
            got = await read(driver, ["data_ready", "data_taken", "cycle_counter"])
            assert got == {"data_ready": False, "data_taken": True, "cycle_counter": 1}
        finally:
            await driver.close()
    finally:
        await server.stop()
