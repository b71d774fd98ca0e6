"""The scale simulator, over TCP and over a real pty opened with pyserial, as a driver will.

Replies are read back with ``drivers.scale.protocols``; the simulator writes its wire formats
independently of that module, so these tests also cross-check the two. Nothing here sleeps to
wait for something: reads have deadlines, and state is awaited with ``wait_until``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial

from drivers.scale.protocols import (
    OVERLOAD,
    UNDERLOAD,
    Ack,
    MtSicsCommand,
    SbiCommand,
    ToledoFramer,
    Weighing,
    mtsics_command,
    parse_mtsics,
    parse_sbi,
    parse_toledo,
    sbi_command,
)
from simulators.scale import Faults, ScaleModel, ScaleProtocol, ScaleSimulator
from simulators.serial_link import NullModem
from tests.modbus_helpers import no_leaks
from tests.waiting import deadline, wait_until

pytestmark = pytest.mark.timeout(30)

WITHIN = 2.0
"""Deadline for one reply: a few ms on a pty or loopback, seconds only if something is wrong."""
STREAM_WITHIN = 10.0
"""Seconds a stream of readings gets to show the one a test waits for (each read has WITHIN)."""
FAST = ScaleModel(settle_time=0.2, repeat_interval=0.02)
RAMP = 0.6
"""Settle time for tests that must see the load move: ample for a round trip on a busy CI."""
RAMPING = ScaleModel(settle_time=RAMP, repeat_interval=0.02)

S, SI, SIR, Z, ZI, T, TI, RESET = (mtsics_command(c) for c in MtSicsCommand)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
async def _no_leaks() -> AsyncIterator[None]:
    """No task, thread or fd (pty, socket, serial port) outlives a test."""
    before = open_fds()
    async with no_leaks():
        yield
    await wait_until(lambda: open_fds() <= before, what="fds to be closed")


@pytest.fixture
async def link(tmp_path: Path) -> AsyncIterator[NullModem]:
    async with NullModem(tmp_path, "ttyAGENT", "ttySCALE") as cable:
        yield cable


class Host:
    """The agent's side of the conversation: bytes in a StreamReader, read with deadlines."""

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def line(self, within: float = WITHIN) -> bytes:
        """The next line, CR LF included."""
        async with asyncio.timeout(within):
            return await self.reader.readuntil(b"\n")

    async def ask(self, command: bytes, within: float = WITHIN) -> bytes:
        await self.send(command)
        return await self.line(within)

    async def mtsics(self, command: bytes) -> Weighing | Ack:
        return parse_mtsics(await self.ask(command))

    async def chunk(self, within: float = WITHIN) -> bytes:
        async with asyncio.timeout(within):
            data = await self.reader.read(4096)
        assert data, "the scale closed the connection"
        return data

    async def __aenter__(self) -> Host:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class TcpHost(Host):
    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> TcpHost:
        self.reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def send(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()


class SerialHost(Host):
    """The agent's end of the cable opened with pyserial (as the driver will), served by the
    loop: no thread."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.port = serial.Serial(str(path), baudrate=9600, timeout=0)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.port.fileno(), self._readable)

    def _readable(self) -> None:
        data = self.port.read(4096)
        if data:
            self.reader.feed_data(data)

    async def send(self, data: bytes) -> None:
        self.port.write(data)

    async def close(self) -> None:
        self._loop.remove_reader(self.port.fileno())
        self.port.close()


def now() -> float:
    return asyncio.get_running_loop().time()


def stable(weight: float, unit: str = "g") -> Weighing:
    return Weighing(weight, unit, True, None)


# ---- MT-SICS over TCP ------------------------------------------------------------------------


async def test_a_load_ramps_dynamic_then_s_answers_once_it_is_stable() -> None:
    async with ScaleSimulator(RAMPING, tcp=True) as scale, TcpHost(scale.port) as host:
        assert await host.mtsics(SI) == stable(0.0)
        placed = scale.place(100.0)
        assert placed.stable_at == pytest.approx(placed.placed_at + RAMP)
        moving = await host.mtsics(SI)
        assert isinstance(moving, Weighing)
        assert moving.stable is False
        assert moving.weight is not None
        assert moving.weight < 100.0
        raw = await host.ask(S)  # S waits for stability, as a real balance does
        assert now() >= placed.stable_at
        assert raw == b"S S     100.00 g\r\n"
        assert parse_mtsics(raw) == stable(scale.expected_weight()) == stable(100.0)
        assert scale.placements[-1] == placed
        assert scale.commands == ["SI", "SI", "S"]


async def test_s_gives_up_when_the_load_does_not_settle() -> None:
    slow = ScaleModel(settle_time=60.0, stable_timeout=0.05)
    async with ScaleSimulator(slow, tcp=True) as scale, TcpHost(scale.port) as host:
        scale.place(10.0)
        assert await host.ask(S) == b"S I\r\n"
        assert await host.ask(Z) == b"Z I\r\n"
        assert await host.ask(T) == b"T I\r\n"
        dynamic = await host.mtsics(TI)  # TI tares what it sees, moving or not
        assert isinstance(dynamic, Ack)
        assert (dynamic.command, dynamic.done, dynamic.stable) == ("TI", True, False)


async def test_zero_and_tare_move_the_reading() -> None:
    async with ScaleSimulator(FAST, tcp=True) as scale, TcpHost(scale.port) as host:
        scale.place(2.0)  # a little dirt on the pan
        assert await host.mtsics(S) == stable(2.0)
        assert await host.mtsics(Z) == Ack("Z", True, stable=True)
        assert await host.mtsics(S) == stable(0.0)

        scale.place(52.0)  # a 50 g container
        assert await host.mtsics(T) == Ack("T", True, stable=True, tare=50.0, unit="g")
        assert await host.mtsics(S) == stable(0.0)
        scale.place(252.0)  # 200 g of product in it
        assert await host.mtsics(S) == stable(200.0) == stable(scale.expected_weight())

        zero = await host.mtsics(Z)  # 252 g: outside +-2 % of 6200 g around power-up zero
        assert isinstance(zero, Ack)
        assert (zero.done, zero.error) == (
            False,
            "zero not set: the load is above the zero-setting range (clear the pan)",
        )
        assert await host.mtsics(TI) == Ack("TI", True, stable=True, tare=250.0, unit="g")
        assert await host.mtsics(SI) == stable(0.0)

        reset = await host.mtsics(RESET)  # @ clears the tare, keeps the zero point
        assert reset == Ack("@", True, serial=scale.model.serial_number)
        assert await host.mtsics(S) == stable(250.0)

        scale.clear()
        assert await host.mtsics(S) == stable(-2.0)
        tare = await host.mtsics(T)
        assert isinstance(tare, Ack)
        assert tare.error == "tare not set: the load is below the taring range"


async def test_front_panel_keys_act_on_the_same_scale() -> None:
    async with ScaleSimulator(FAST, tcp=True) as scale, TcpHost(scale.port) as host:
        scale.place(300.0)
        assert await host.mtsics(S) == stable(300.0)
        assert scale.tare_key()
        assert await host.mtsics(SI) == stable(0.0)
        assert not scale.zero_key()  # 300 g is outside +-2 % of 6200 g
        scale.place(30.0)
        assert await host.mtsics(S) == stable(-270.0)
        assert scale.zero_key()  # 30 g is inside: zeroes, and clears the tare
        assert await host.mtsics(SI) == stable(0.0)
        scale.clear()
        assert await host.mtsics(S) == stable(-30.0)


async def test_overload_and_underload() -> None:
    async with ScaleSimulator(FAST, tcp=True) as scale, TcpHost(scale.port) as host:
        scale.place(7000.0)  # capacity 6200 g
        assert await host.mtsics(S) == Weighing.failed(OVERLOAD)
        assert await host.mtsics(SI) == Weighing.failed(OVERLOAD)
        assert await host.ask(T) == b"T +\r\n"
        assert await host.ask(Z) == b"Z +\r\n"
        lifted = scale.place(-500.0)  # the pan lifted off
        # Overloaded still while the reading falls: S reports that at once, not waiting.
        assert await host.mtsics(S) == Weighing.failed(OVERLOAD)
        await wait_until(lambda: now() >= lifted.stable_at, what="the reading to settle")
        assert await host.mtsics(S) == Weighing.failed(UNDERLOAD)
        assert await host.ask(Z) == b"Z -\r\n"
        back = scale.place(10.0)
        await wait_until(lambda: now() >= back.stable_at, what="the reading to settle")
        assert await host.mtsics(S) == stable(10.0)


async def test_sir_repeats_until_another_command() -> None:
    async with ScaleSimulator(RAMPING, tcp=True) as scale, TcpHost(scale.port) as host:
        placed = scale.place(25.0)
        await host.send(SIR)
        readings = [parse_mtsics(await host.line())]
        async with deadline(STREAM_WITHIN, "a stable 25.0 kg reading"):
            while readings[-1] != stable(25.0):
                readings.append(parse_mtsics(await host.line()))
        assert readings[0].stable is False  # the ramp is seen as it happens
        assert len(readings) >= 3
        assert now() >= placed.stable_at
        assert scale.repeating

        await host.send(SI)  # any command ends the stream, and is answered
        await wait_until(lambda: not scale.repeating, what="SIR to stop")
        await assert_stream_stopped(scale, host, stable(25.0))

        await host.send(SIR)
        await wait_until(lambda: scale.repeating, what="SIR to start")
        await host.send(RESET)
        async with deadline(STREAM_WITHIN, "the reset answer I4 A"):
            while not (line := await host.line()).startswith(b"I4 A"):
                assert parse_mtsics(line) == stable(25.0)
        assert not scale.repeating
        await assert_stream_stopped(scale, host, stable(25.0))


async def assert_stream_stopped(scale: ScaleSimulator, host: Host, streamed: Weighing) -> None:
    """Read what is on its way up to the answer of a marker command, then show that one more
    command gets exactly one write back: nothing else is being sent."""
    await host.send(b"MARK\r\n")
    async with deadline(STREAM_WITHIN, "the marker command's ES"):
        while (line := await host.line()) != b"ES\r\n":
            assert parse_mtsics(line) == streamed
    writes = scale.writes
    assert await host.ask(b"MARK\r\n") == b"ES\r\n"
    assert scale.writes == writes + 1


async def test_every_tcp_client_is_its_own_conversation() -> None:
    async with (
        ScaleSimulator(FAST, tcp=True) as scale,
        TcpHost(scale.port) as first,
        TcpHost(scale.port) as second,
    ):
        await first.send(SIR)
        await first.line()
        assert await second.mtsics(SI) == stable(0.0)  # not interleaved with the stream
        scale.place(5.0)
        assert await second.mtsics(S) == stable(5.0)
        assert scale.connections == 2


# ---- faults ----------------------------------------------------------------------------------


async def test_garbage_before_a_reply_spoils_one_reading() -> None:
    async with ScaleSimulator(FAST, tcp=True) as scale, TcpHost(scale.port) as host:
        scale.inject_garbage(b"\x00\xff\x13#")
        spoiled = await host.ask(SI)
        assert spoiled == b"\x00\xff\x13#S S       0.00 g\r\n"
        assert parse_mtsics(spoiled) == Weighing.failed(
            "unrecognised response '\\x00ÿ\\x13#S S       0.00 g'"
        )
        assert await host.mtsics(SI) == stable(0.0)


async def test_a_unit_nobody_knows() -> None:
    async with ScaleSimulator(FAST, tcp=True) as scale, TcpHost(scale.port) as host:
        scale.faults.unknown_unit = "xyz"
        assert await host.mtsics(S) == Weighing.failed("unknown unit 'xyz'", stable=True)
        scale.faults.unknown_unit = None
        assert await host.mtsics(S) == stable(0.0)


async def test_a_silent_scale_answers_nothing() -> None:
    async with ScaleSimulator(FAST, tcp=True) as scale, TcpHost(scale.port) as host:
        scale.faults.silent = True
        await host.send(SI)
        await wait_until(lambda: scale.silenced == 1, what="the reply to be swallowed")
        scale.faults.silent = False
        scale.place(7.0)
        # The first line to arrive answers the second command: the first got nothing.
        assert await host.mtsics(S) == stable(7.0)
        assert scale.commands == ["SI", "S"]


async def test_split_replies_arrive_in_parts_and_read_as_one_line() -> None:
    async with ScaleSimulator(FAST, tcp=True) as scale, TcpHost(scale.port) as host:
        scale.faults.split = 4
        before = scale.writes
        assert await host.ask(SI) == b"S S       0.00 g\r\n"
        assert scale.writes - before == 4


async def test_merged_replies_arrive_in_one_write() -> None:
    async with ScaleSimulator(FAST, tcp=True) as scale, TcpHost(scale.port) as host:
        scale.faults.merge = 3
        before = scale.writes
        await host.send(SI + SI + b"NOPE\r\n")
        assert [await host.line() for _ in range(3)] == [
            b"S S       0.00 g\r\n",
            b"S S       0.00 g\r\n",
            b"ES\r\n",
        ]
        assert scale.writes - before == 1


async def test_faults_start_off() -> None:
    assert Faults() == Faults(silent=False, unknown_unit=None, split=1, merge=1, garbage=b"")


# ---- over a serial port ----------------------------------------------------------------------


async def test_mtsics_over_a_pty(link: NullModem) -> None:
    async with (
        ScaleSimulator(FAST, serial_path=link.b_path) as scale,
        SerialHost(link.a_path) as host,
    ):
        assert await host.mtsics(SI) == stable(0.0)
        scale.place(1234.5)
        assert await host.mtsics(S) == stable(1234.5)
        assert await host.mtsics(T) == Ack("T", True, stable=True, tare=1234.5, unit="g")
        assert await host.mtsics(S) == stable(0.0)
        scale.faults.split = 3
        assert await host.mtsics(SI) == stable(0.0)
    assert link.lost_bytes == 0


async def test_one_scale_on_a_pty_and_on_tcp_at_once(link: NullModem) -> None:
    async with (
        ScaleSimulator(FAST, serial_path=link.b_path, tcp=True) as scale,
        SerialHost(link.a_path) as wired,
        TcpHost(scale.port) as networked,
    ):
        scale.place(60.0)
        assert await wired.mtsics(S) == stable(60.0)
        assert await networked.mtsics(T) == Ack("T", True, stable=True, tare=60.0, unit="g")
        assert await wired.mtsics(SI) == stable(0.0)


TOLEDO = ScaleModel(
    protocol=ScaleProtocol.TOLEDO,
    unit="kg",
    capacity=60.0,
    decimals=3,
    settle_time=RAMP,
    repeat_interval=0.02,
)


async def next_weighing(host: Host, framer: ToledoFramer, *, checksum: bool) -> Weighing:
    frames: list[bytes] = []
    async with deadline(STREAM_WITHIN, "a whole Toledo frame"):
        while not frames:
            frames = framer.feed(await host.chunk())
    return parse_toledo(frames[-1], checksum=checksum)


async def test_toledo_continuous_output_over_a_pty(link: NullModem) -> None:
    async with (
        ScaleSimulator(TOLEDO, serial_path=link.b_path) as scale,
        SerialHost(link.a_path) as host,
    ):
        framer = ToledoFramer(checksum=True)
        first = await next_weighing(host, framer, checksum=True)
        assert first == Weighing(0.0, "kg", True, None, net=False, tare=0.0)

        placed = scale.place(12.345)
        seen = [await next_weighing(host, framer, checksum=True)]
        async with deadline(STREAM_WITHIN, "a stable 12.345 weighing"):
            while not (seen[-1].stable and seen[-1].weight == 12.345):
                seen.append(await next_weighing(host, framer, checksum=True))
        assert any(w.stable is False for w in seen)  # motion while it ramped
        assert now() >= placed.stable_at
        assert all(w.ok for w in seen)

        assert scale.tare_key()
        net = await next_weighing(host, framer, checksum=True)
        assert net == Weighing(0.0, "kg", True, None, net=True, tare=12.345)

        scale.place(70.0)  # over capacity
        over = await next_weighing(host, framer, checksum=True)
        async with deadline(STREAM_WITHIN, "the overload frame"):
            while over.ok:
                over = await next_weighing(host, framer, checksum=True)
        assert over.error == OVERLOAD

        scale.inject_garbage(b"\x02\x02noise\r")  # resynchronised, then valid frames again
        scale.faults.unknown_unit = "xyz"
        odd = await next_weighing(host, framer, checksum=True)
        async with deadline(STREAM_WITHIN, "the unknown-unit frame"):
            while odd.error != "unknown unit: status word C has unit code 7":
                odd = await next_weighing(host, framer, checksum=True)
        assert framer.discarded > 0


async def test_toledo_without_checksum_over_tcp() -> None:
    model = ScaleModel(
        protocol=ScaleProtocol.TOLEDO,
        unit="lb",
        decimals=1,
        settle_time=0.1,
        repeat_interval=0.02,
        toledo_checksum=False,
    )
    async with ScaleSimulator(model, tcp=True) as scale, TcpHost(scale.port) as host:
        scale.place(-20.5)
        framer = ToledoFramer()
        reading = await next_weighing(host, framer, checksum=False)
        async with deadline(STREAM_WITHIN, "a stable weighing"):
            while reading.stable is not True:
                reading = await next_weighing(host, framer, checksum=False)
        assert reading == Weighing(-20.5, "lb", True, None, net=False, tare=0.0)


SBI = ScaleModel(protocol=ScaleProtocol.SBI, settle_time=RAMP, repeat_interval=0.02)


async def test_sbi_prints_on_request_over_a_pty(link: NullModem) -> None:
    async with (
        ScaleSimulator(SBI, serial_path=link.b_path) as scale,
        SerialHost(link.a_path) as host,
    ):
        print_ = sbi_command(SbiCommand.PRINT)
        assert await host.ask(print_) == b"+     0.00 g  \r\n"
        placed = scale.place(1255.7)
        moving = parse_sbi(await host.ask(print_))
        assert (moving.stable, moving.unit) == (False, None)  # no unit while unstable
        await wait_until(lambda: now() >= placed.stable_at, what="settling")
        assert parse_sbi(await host.ask(print_)) == stable(1255.7)

        await host.send(sbi_command(SbiCommand.TARE_ZERO))  # loaded: tares
        await wait_until(lambda: scale.state.tare == 1255.7, what="the tare")
        assert parse_sbi(await host.ask(print_)) == stable(0.0)
        scale.clear()
        await host.send(b"\x1bf3_")  # the zero key, without CR LF
        await wait_until(lambda: scale.state.zero_point == 0.0 and scale.state.tare == 0.0)
        assert await host.ask(print_) == b"+     0.00 g  \r\n"
        assert scale.commands == ["ESC P"] * 3 + ["ESC T", "ESC P", "ESC f3_", "ESC P"]

        scale.place(9000.0)
        await wait_until(lambda: scale.state.reading(now()).overload, what="overload")
        assert parse_sbi(await host.ask(print_)) == Weighing.failed(OVERLOAD)


async def test_sbi_auto_print_with_id_codes_over_tcp() -> None:
    model = ScaleModel(
        protocol=ScaleProtocol.SBI,
        settle_time=0.1,
        repeat_interval=0.02,
        sbi_id_codes=True,
        sbi_auto_print=True,
    )
    async with ScaleSimulator(model, tcp=True) as scale, TcpHost(scale.port) as host:
        line = await host.line()
        assert len(line) == 22
        assert parse_sbi(line) == Weighing(0.0, "g", True, None, net=False)
        scale.place(42.0)
        await host.send(sbi_command(SbiCommand.TARE))
        await wait_until(lambda: scale.state.tare == 42.0, what="the tare")
        reading = parse_sbi(await host.line())
        async with deadline(STREAM_WITHIN, "a net reading after the tare"):
            while reading.net is not True:
                reading = parse_sbi(await host.line())
        assert reading == Weighing(0.0, "g", True, None, net=True)
        scale.faults.unknown_unit = "xyz"
        odd = parse_sbi(await host.line())
        async with deadline(STREAM_WITHIN, "the unknown-unit reading"):
            while odd.ok:
                odd = parse_sbi(await host.line())
        assert odd.error == "unknown unit 'xyz'"


# ---- lifecycle -------------------------------------------------------------------------------


async def test_closing_with_clients_and_a_running_stream_leaves_nothing(link: NullModem) -> None:
    scale = ScaleSimulator(FAST, serial_path=link.b_path, tcp=True)
    await scale.start()
    async with TcpHost(scale.port) as networked, SerialHost(link.a_path) as wired:
        try:
            for host in (networked, wired):
                await host.send(SIR)
                await host.line()
            assert scale.connections == 2
            assert scale.repeating
        finally:
            await scale.close()
        assert scale.connections == 0
        assert not scale.repeating
        async with asyncio.timeout(WITHIN):  # the scale hung up on the TCP client
            await networked.reader.read()
        assert networked.reader.at_eof()


async def test_a_port_that_does_not_exist_fails_start_and_leaks_nothing(tmp_path: Path) -> None:
    scale = ScaleSimulator(FAST, serial_path=tmp_path / "nothing-here", tcp=True)
    with pytest.raises(FileNotFoundError):
        await scale.start()
    assert scale.connections == 0


def test_a_model_a_protocol_cannot_express_is_refused() -> None:
    with pytest.raises(ValueError, match="no code for unit 'oz'"):
        ScaleModel(protocol=ScaleProtocol.TOLEDO, unit="oz")
    with pytest.raises(ValueError, match="six digits"):
        ScaleModel(protocol=ScaleProtocol.TOLEDO, capacity=60000.0, decimals=2)
    with pytest.raises(ValueError, match="eight weight characters"):
        ScaleModel(protocol=ScaleProtocol.SBI, capacity=1_000_000.0, decimals=2)
    with pytest.raises(ValueError, match="serial_path"):
        ScaleSimulator(FAST)
