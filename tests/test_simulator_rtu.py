"""The simulated RS-485 line: a pty null modem and the stations served over Modbus RTU.

Everything goes through real serial ports (ptys, opened by path by pyserial), so a driver test
built on these fixtures exercises the same code a plant's USB adapter would.
"""

from __future__ import annotations

import asyncio
import os
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse

from simulators.modbus_rtu_server import ModbusRtuStationServer
from simulators.serial_link import NullModem
from simulators.station import (
    COIL_DATA_READY,
    COIL_DATA_TAKEN,
    HANDSHAKE_PHASE,
    HOLDING_REGISTERS,
    StationModel,
)
from tests.modbus_helpers import no_leaks
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 0.2
"""The client's response timeout: an answer takes a few ms on a pty."""
STATIONS = [
    StationModel(unit_id=1, cycle_time=0.05, handshake=True, serial_prefix="RTU-A"),
    StationModel(unit_id=2, cycle_time=0.05, handshake=True, serial_prefix="RTU-B"),
]
NOBODY = 9
TCSETATTR = termios.tcsetattr


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
async def _no_leaks() -> AsyncIterator[None]:
    """No task, thread or fd (pty, serial port, pipe) outlives a test."""
    before = open_fds()
    async with no_leaks():
        yield
    await wait_until(lambda: open_fds() <= before, what="fds to be closed")


@pytest.fixture
async def link(tmp_path: Path) -> AsyncIterator[NullModem]:
    async with NullModem(tmp_path, "ttyAGENT", "ttyPLC") as cable:
        yield cable
    assert termios.tcsetattr is TCSETATTR, "the parity shim outlived the null modem"


@pytest.fixture
async def plc(link: NullModem) -> AsyncIterator[ModbusRtuStationServer]:
    async with ModbusRtuStationServer(STATIONS, link.b_path) as server:
        yield server


class Agent:
    """An RTU master on the agent's end, recording its connection state changes."""

    def __init__(
        self, path: Path, reconnect_delay: float = 0.1, reconnect_max: float = 300
    ) -> None:
        self.changes: list[bool] = []
        self.client = AsyncModbusSerialClient(
            str(path),
            framer=FramerType.RTU,
            baudrate=19200,
            parity="E",
            timeout=TIMEOUT,
            retries=0,
            trace_connect=self.changes.append,
            reconnect_delay=reconnect_delay,
            reconnect_delay_max=reconnect_max,
        )

    async def __aenter__(self) -> Agent:
        assert await self.client.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.close()

    async def holding(self, unit: int, count: int = HOLDING_REGISTERS) -> list[int]:
        rr = await self.client.read_holding_registers(0, count=count, device_id=unit)
        assert not rr.isError(), rr
        return list(rr.registers)

    async def coils(self, unit: int) -> int:
        rr = await self.client.read_coils(0, count=16, device_id=unit)
        assert not rr.isError(), rr
        return sum(int(bit) << i for i, bit in enumerate(rr.bits[:16]))

    async def part_ready(self, unit: int, within: float = 5.0) -> None:
        """Read the coils until data_ready is on, as the agent does."""

        async def ready() -> bool:
            return bool(await self.coils(unit) & (1 << COIL_DATA_READY))

        await wait_until(ready, within, f"unit {unit}: a part ready")


# -- the cable alone ----------------------------------------------------------------------


async def read_exactly(fd: int, n: int) -> bytes:
    """Read ``n`` bytes from a non-blocking fd as the loop reports it readable; fewer at EOF."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    done = loop.create_future()

    def ready() -> None:
        chunk = os.read(fd, n - len(got))
        got.extend(chunk)
        if (not chunk or len(got) >= n) and not done.done():
            done.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(done, 5.0)
    finally:
        loop.remove_reader(fd)
    return bytes(got)


def open_port(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)


async def test_the_cable_passes_every_byte_value_both_ways(link: NullModem) -> None:
    assert os.readlink(link.a_path).startswith("/dev/pts/")
    assert os.readlink(link.b_path).startswith("/dev/pts/")
    everything = bytes(range(256)) * 2  # CR, LF, XON, XOFF, ^C, ^D: raw, none rewritten
    a, b = open_port(link.a_path), open_port(link.b_path)
    try:
        os.write(a, everything)
        assert await read_exactly(b, len(everything)) == everything
        os.write(b, everything[::-1])
        assert await read_exactly(a, len(everything)) == everything[::-1]
        # A port closed and opened again (a server restarted) is still wired.
        os.close(b)
        b = open_port(link.b_path)
        os.write(a, b"again")
        assert await read_exactly(b, 5) == b"again"
    finally:
        os.close(a)
        os.close(b)
    assert (link.a_to_b_bytes, link.b_to_a_bytes, link.lost_bytes) == (517, 512, 0)


async def test_unplug_hangs_up_and_removes_the_links(link: NullModem) -> None:
    a = open_port(link.a_path)
    try:
        link.unplug()
        assert not link.a_path.is_symlink()
        assert not link.b_path.is_symlink()
        with pytest.raises(FileNotFoundError):
            open_port(link.b_path)
        assert await read_exactly(a, 1) == b""  # EOF: the hang-up
    finally:
        os.close(a)
    link.replug()
    assert link.plugged
    assert link.a_path.exists()
    assert link.b_path.exists()


# -- Modbus RTU through the cable ---------------------------------------------------------


async def test_two_units_read_the_ground_truth(
    link: NullModem, plc: ModbusRtuStationServer
) -> None:
    async with Agent(link.a_path) as agent:
        for model in STATIONS:
            await agent.part_ready(model.unit_id)
            # A handshake station holds its finished part: the image is exact and still.
            assert await agent.holding(model.unit_id) == model.register_image(0, HANDSHAKE_PHASE)
    assert STATIONS[0].register_image(0, 0.95) != STATIONS[1].register_image(0, 0.95)
    assert plc.requests >= 4


async def test_the_handshake_coil_works_as_on_tcp(
    link: NullModem, plc: ModbusRtuStationServer
) -> None:
    async with Agent(link.a_path) as agent:
        await agent.part_ready(1)
        ok = await agent.client.write_coil(COIL_DATA_TAKEN, True, device_id=1)
        assert not ok.isError()
        assert plc.data_taken(1) is True
        assert plc.plc(1).parts_released == 1
        assert not await agent.coils(1) & (1 << COIL_DATA_READY)
        wrong = await agent.client.write_coil(COIL_DATA_READY, False, device_id=1)
        assert isinstance(wrong, ExceptionResponse)
        assert wrong.exception_code == 2


async def test_a_unit_nobody_plays_is_silent(link: NullModem, plc: ModbusRtuStationServer) -> None:
    async with Agent(link.a_path) as agent:
        await agent.holding(1, count=2)
        answered = link.b_to_a_bytes
        for read in (agent.client.read_holding_registers, agent.client.read_coils):
            with pytest.raises(ModbusException, match="No response received"):
                await read(0, count=1, device_id=NOBODY)
        assert link.b_to_a_bytes == answered  # not a byte on the line, not even an exception
        assert len(await agent.holding(2, count=2)) == 2  # the line is fine after the silence


@pytest.mark.parametrize("fault", ["corrupt_next", "drop_next"])
async def test_a_damaged_reply_fails_one_read_only(
    link: NullModem, plc: ModbusRtuStationServer, fault: str
) -> None:
    async with Agent(link.a_path) as agent:
        counter = await agent.holding(1, count=2)  # stays 1 until the agent takes the part
        getattr(link, fault)(1)
        with pytest.raises(ModbusException, match="No response received"):
            await agent.holding(1, count=2)  # a bad CRC is dropped like no answer at all
        assert await agent.holding(1, count=2) == counter == [0, 1]
    assert (link.corrupted, link.dropped) == ((1, 0) if fault == "corrupt_next" else (0, 1))


async def test_unplug_drops_the_agent_and_replug_brings_both_ends_back(
    link: NullModem, plc: ModbusRtuStationServer
) -> None:
    async with Agent(link.a_path, reconnect_delay=0.02, reconnect_max=0.05) as agent:
        await agent.holding(1, count=2)
        link.unplug()
        await wait_until(lambda: agent.changes[-1:] == [False], what="the agent to see it fail")
        await wait_until(lambda: not plc.is_open, what="the PLC to see its port fail")
        with pytest.raises(ModbusException):
            await agent.holding(1, count=2)
        link.replug()
        # pymodbus reconnects by itself; the PLC reopens its port by itself.
        await wait_until(lambda: agent.client.connected and plc.is_open, what="both ends back")
        assert len(await agent.holding(1, count=2)) == 2
    assert agent.changes[:2] == [True, False]
    assert agent.changes[-1] is True


async def test_a_plc_power_cycle_keeps_the_cable_and_the_handshake(
    link: NullModem, plc: ModbusRtuStationServer
) -> None:
    async with Agent(link.a_path) as agent:
        await agent.part_ready(2)
        assert not (await agent.client.write_coil(COIL_DATA_TAKEN, True, device_id=2)).isError()
        await plc.stop()
        with pytest.raises(ModbusException, match="No response received"):
            await agent.holding(2, count=2)  # nobody on the line
        await plc.start()
        # Like a PLC after a power cycle with retained memory: still waiting for taken = 0.
        assert await agent.coils(2) & (1 << COIL_DATA_TAKEN)
        assert (await agent.holding(2, count=2))[1] == 1  # cycle_counter low word
    assert agent.changes == [True]  # the agent's own port never failed


async def test_a_port_that_does_not_exist_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="could not open"):
        await ModbusRtuStationServer(STATIONS, tmp_path / "ttyNone").start()
