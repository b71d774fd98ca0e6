"""The byte links against real ptys (``simulators.serial_link.NullModem``) and real sockets.

The serial tests open both ends of a virtual null-modem cable with :class:`SerialLink`: the
agent's port and the device's. The TCP tests run a client and a server link against asyncio
sockets on 127.0.0.1 with port 0. Nothing sleeps to wait for something: ``wait_until`` and
awaited reads with deadlines. The error reasons are tables over constructed errors, since the
tests run as root and cannot provoke a permission error.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, aclosing
from pathlib import Path
from typing import cast

import pytest
import serial

from drivers.links.base import LOST, RESTARTED, Link, read_frames
from drivers.links.framing import Frame, Framer
from drivers.links.reasons import serial_reason, tcp_reason
from drivers.links.serial import SerialLink
from drivers.links.tcp import CLOSED_BY_READER, TcpClientLink, TcpServerLink
from kernel.errors import ConnectError
from simulators.serial_link import NullModem
from tests.modbus_helpers import running, wait_until

DEADLINE = 5.0


def source_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("source:"))


async def receive(link: Link, size: int) -> bytes:
    """The next ``size`` bytes from ``link``, within the deadline."""
    got = b""
    stream = cast(AsyncGenerator[bytes, None], link.chunks())
    async with asyncio.timeout(DEADLINE), aclosing(stream) as chunks:
        async for chunk in chunks:
            got += chunk
            if len(got) >= size:
                return got
    raise AssertionError(f"the link ended after {got!r}")


class Collected:
    """``read_frames(link, framer)`` consumed by a task: the frames so far, and how it ended."""

    def __init__(self, link: Link, framer: Framer) -> None:
        self.link = link
        self.framer = framer
        self.frames: list[Frame] = []
        self.error: ConnectError | None = None
        self.ended = False
        self.task = asyncio.create_task(self._consume(), name=f"frames of {link.description}")

    async def _consume(self) -> None:
        try:
            async for batch in read_frames(self.link, self.framer):
                assert batch, "read_frames yields no empty batch"
                self.frames += batch
        except ConnectError as exc:
            self.error = exc
        self.ended = True

    def data(self) -> list[tuple[bytes, str | None]]:
        return [(f.data, f.error) for f in self.frames if not f.blank]


@pytest.fixture
async def modem(tmp_path: Path) -> AsyncIterator[NullModem]:
    async with NullModem(tmp_path, "ttyAGENT", "ttySCANNER") as link:
        yield link


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    """Closes whatever a test opened, also when it fails."""
    async with AsyncExitStack() as exits:
        yield exits


async def opened(stack: AsyncExitStack, link: SerialLink) -> SerialLink:
    await link.open()
    stack.push_async_callback(link.close)
    return link


# ---- serial ---------------------------------------------------------------------------------


async def test_serial_bytes_both_ways_merged_and_split_reads(
    modem: NullModem, stack: AsyncExitStack
) -> None:
    agent = await opened(stack, SerialLink("scanner1", str(modem.a_path), parity="E"))
    scanner = await opened(stack, SerialLink("sim", str(modem.b_path), parity="E"))
    assert agent.description == f"serial {modem.a_path}"
    assert agent.settings == "9600 8E1"
    framer = Framer(suffix=b"\r")
    got = Collected(agent, framer)
    async with running([got.task]):
        await scanner.write(b"A1\rB2\r")  # two scans in one read
        await wait_until(lambda: len(got.data()) == 2, DEADLINE, "two frames")
        await scanner.write(b"C3")  # one scan over two reads
        await wait_until(lambda: framer.pending() == 2, DEADLINE, "the first half")
        await scanner.write(b"33\r\n")
        await wait_until(lambda: len(got.data()) == 3, DEADLINE, "the third frame")
        assert got.data() == [(b"A1", None), (b"B2", None), (b"C333", None)]
        await agent.write(b"\x07BEEP")  # the other way: a good-read answer
        assert await receive(scanner, 5) == b"\x07BEEP"
    assert b"".join(f.raw for f in got.frames) == b"A1\rB2\rC333\r\n"


async def test_serial_reads_take_whatever_is_waiting_in_one_go(
    modem: NullModem, stack: AsyncExitStack
) -> None:
    agent = await opened(stack, SerialLink("scanner1", str(modem.a_path)))
    scanner = await opened(stack, SerialLink("sim", str(modem.b_path)))
    block = bytes(range(256)) * 8
    await scanner.write(block)
    chunks: list[bytes] = []
    chunks_of_agent = cast(AsyncGenerator[bytes, None], agent.chunks())
    async with asyncio.timeout(DEADLINE), aclosing(chunks_of_agent) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            if sum(map(len, chunks)) >= len(block):
                break
    assert b"".join(chunks) == block
    assert len(chunks) < len(block) // 16  # not byte by byte


async def test_serial_idle_costs_no_reads_and_writes_go_out_at_once(
    modem: NullModem, stack: AsyncExitStack
) -> None:
    agent = SerialLink("scanner1", str(modem.a_path))
    reads: list[int] = []
    read = agent._read

    def counting_read() -> bytes | None:
        reads.append(1)
        return read()

    agent._read = counting_read  # type: ignore[method-assign]
    await opened(stack, agent)
    scanner = await opened(stack, SerialLink("sim", str(modem.b_path)))
    loop = asyncio.get_running_loop()
    # Idle: the reader blocks in one read. Measuring an absence needs time to pass.
    await asyncio.sleep(0.3)
    assert len(reads) <= 2
    # Writes while the read blocks (it has no timeout) go out at once, each one.
    for i in range(5):
        await scanner.write(b"scan%d\r" % i)
        assert await receive(agent, 6) == b"scan%d\r" % i  # the reader is blocked again
        start = loop.time()
        async with asyncio.timeout(DEADLINE):
            await agent.write(b"ok%d" % i)
        assert loop.time() - start < 0.25
        assert await receive(scanner, 3) == b"ok%d" % i
    assert len(reads) < 40


async def test_serial_unplug_is_a_clear_error_and_the_port_reopens_after_replug(
    modem: NullModem, stack: AsyncExitStack
) -> None:
    agent = await opened(stack, SerialLink("scanner1", str(modem.a_path)))
    scanner = await opened(stack, SerialLink("sim", str(modem.b_path)))
    framer = Framer(suffix=b"\r")
    got = Collected(agent, framer)
    async with running([got.task]):
        await scanner.write(b"HALF")
        await wait_until(lambda: framer.pending() == 4, DEADLINE, "a half frame")
        modem.unplug()
        await wait_until(lambda: got.ended, DEADLINE, "the link to fail")
    assert got.data() == [(b"HALF", LOST)]  # accounted for, then the error
    assert got.error is not None
    assert str(got.error).startswith(
        f"device 'scanner1': serial port {modem.a_path} lost while reading (adapter unplugged?)"
    )
    with pytest.raises(ConnectError, match=r"not open \(lost: adapter unplugged\?\)"):
        await agent.write(b"beep")
    await agent.close()
    await scanner.close()
    assert source_threads() == []

    with pytest.raises(ConnectError, match=r"does not exist .*/dev/serial/by-id/"):
        await agent.open()
    assert source_threads() == []

    modem.replug()
    await agent.open()
    await scanner.open()
    await scanner.write(b"BACK\r")
    assert await receive(agent, 5) == b"BACK\r"


async def test_a_second_open_of_the_same_port_says_it_is_in_use(
    modem: NullModem, stack: AsyncExitStack
) -> None:
    await opened(stack, SerialLink("scanner1", str(modem.a_path)))
    other = SerialLink("scanner1b", str(modem.a_path))
    with pytest.raises(ConnectError) as raised:
        await other.open()
    assert str(raised.value) == (
        f"device 'scanner1b': serial port {modem.a_path} is in use by another process (the "
        f"agent opens it exclusively): fuser {modem.a_path} shows which"
    )
    await other.close()  # never opened: nothing to do, no error
    assert source_threads() == ["source:scanner1"]


async def test_close_ends_chunks_and_leaves_no_thread(modem: NullModem) -> None:
    agent = SerialLink("scanner1", str(modem.a_path))
    await agent.open()
    assert source_threads() == ["source:scanner1"]
    got = Collected(agent, Framer())
    await agent.close()
    await asyncio.wait_for(got.task, DEADLINE)
    assert got.ended
    assert got.error is None
    assert source_threads() == []
    await agent.close()  # again: harmless
    with pytest.raises(ConnectError, match="is not open"):
        await agent.write(b"x")
    assert [c async for c in agent.chunks()] == []  # a closed link has no bytes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"parity": "X"}, "parity must be N, E or O"),
        ({"bytesize": 9}, "bytesize must be 5, 6, 7 or 8"),
        ({"stopbits": 3}, "stopbits must be 1, 1.5 or 2"),
        ({"baudrate": 0}, "baudrate must be positive"),
    ],
)
def test_bad_serial_settings_are_refused_when_the_link_is_made(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SerialLink("scale1", "/dev/ttyS0", **kwargs)  # type: ignore[arg-type]


PORT = "/dev/ttyUSB0"

SERIAL_REASONS = [
    (
        "open",
        serial.SerialException(errno.ENOENT, "could not open port /dev/ttyUSB0: No such file"),
        "serial port /dev/ttyUSB0 does not exist (adapter unplugged? prefer the "
        "/dev/serial/by-id/ names, which stay the same across reboots and USB sockets)",
    ),
    (
        "open",
        serial.SerialException(errno.EACCES, "could not open port: Permission denied"),
        "no permission to open serial port /dev/ttyUSB0: add the agent's user to the dialout "
        "group (sudo usermod -aG dialout <user>, then log in again; for a systemd service: "
        "SupplementaryGroups=dialout)",
    ),
    (
        "open",
        OSError(errno.EPERM, "Operation not permitted"),
        "no permission to open serial port /dev/ttyUSB0: add the agent's user to the dialout "
        "group (sudo usermod -aG dialout <user>, then log in again; for a systemd service: "
        "SupplementaryGroups=dialout)",
    ),
    (
        "open",
        serial.SerialException(
            errno.EAGAIN,
            "Could not exclusively lock port /dev/ttyUSB0: [Errno 11] Resource temporarily "
            "unavailable",
        ),
        "serial port /dev/ttyUSB0 is in use by another process (the agent opens it "
        "exclusively): fuser /dev/ttyUSB0 shows which",
    ),
    (
        "open",
        serial.SerialException(errno.EBUSY, "Device or resource busy"),
        "serial port /dev/ttyUSB0 is in use by another process (the agent opens it "
        "exclusively): fuser /dev/ttyUSB0 shows which",
    ),
    (
        "open",
        serial.SerialException(errno.ENOTTY, "Inappropriate ioctl for device"),
        "/dev/ttyUSB0 is not a serial port",
    ),
    (
        "open",
        serial.SerialException("Could not configure port: (25, 'Inappropriate ioctl for device')"),
        "/dev/ttyUSB0 is not a serial port",
    ),
    (
        "open",
        serial.SerialException(errno.EIO, "Input/output error"),
        "serial port /dev/ttyUSB0 is gone (adapter unplugged?)",
    ),
    (
        "open",
        serial.SerialException(errno.EINVAL, "Invalid argument"),
        "cannot open serial port /dev/ttyUSB0: Invalid argument",
    ),
    (
        "read",
        serial.SerialException("read failed: [Errno 5] Input/output error"),
        "serial port /dev/ttyUSB0 lost while reading (adapter unplugged?): read failed: "
        "[Errno 5] Input/output error",
    ),
    (
        "read",
        serial.SerialException(
            "device reports readiness to read but returned no data (device disconnected or "
            "multiple access on port?)"
        ),
        "serial port /dev/ttyUSB0 lost while reading (adapter unplugged?): device reports "
        "readiness to read but returned no data (device disconnected or multiple access on "
        "port?)",
    ),
    (
        "write",
        serial.SerialTimeoutException("Write timeout"),
        "writing to serial port /dev/ttyUSB0 timed out after 2 s: the device does not take "
        "data (with rtscts or xonxoff on: check the handshake wiring and settings)",
    ),
    (
        "write",
        serial.SerialException("write failed: [Errno 5] Input/output error"),
        "serial port /dev/ttyUSB0 lost while writing (adapter unplugged?): write failed: "
        "[Errno 5] Input/output error",
    ),
]


@pytest.mark.parametrize(("step", "error", "reason"), SERIAL_REASONS)
def test_serial_reasons(step: str, error: OSError, reason: str) -> None:
    assert serial_reason(PORT, error, step, write_timeout=2.0) == reason  # type: ignore[arg-type]


TCP_REASONS = [
    (
        "open",
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        "connection to 10.0.0.5:23 refused: the reader is up but does not listen on that "
        "port (wrong port, or its TCP server is off)",
    ),
    (
        "open",
        OSError(errno.EHOSTUNREACH, "No route to host"),
        "10.0.0.5:23 is unreachable: check the cable, the IP address and the netmask",
    ),
    (
        "open",
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        "cannot resolve host name '10.0.0.5' (a typo, or no DNS on this network?)",
    ),
    ("read", ConnectionResetError(errno.ECONNRESET, "reset"), "the reader closed the connection"),
    ("write", BrokenPipeError(errno.EPIPE, "Broken pipe"), "the reader closed the connection"),
    (
        "read",
        TimeoutError(errno.ETIMEDOUT, "Connection timed out"),
        "no answer from 10.0.0.5:23 (TCP timed out: the reader is off or the network is down)",
    ),
    (
        "read",
        OSError(errno.EPROTO, "Protocol error"),
        "connection to 10.0.0.5:23 failed while reading: Protocol error",
    ),
    (
        "listen",
        OSError(errno.EADDRINUSE, "Address already in use"),
        "cannot listen on 10.0.0.5:23: the port is in use by another program "
        "(ss -ltnp 'sport = :23' shows which)",
    ),
    (
        "listen",
        PermissionError(errno.EACCES, "Permission denied"),
        "cannot listen on 10.0.0.5:23: ports below 1024 need root or CAP_NET_BIND_SERVICE; "
        "use a port above 1024",
    ),
    (
        "listen",
        OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"),
        "cannot listen on 10.0.0.5:23: this PC has no such address",
    ),
]


@pytest.mark.parametrize(("step", "error", "reason"), TCP_REASONS)
def test_tcp_reasons(step: str, error: OSError, reason: str) -> None:
    assert tcp_reason("10.0.0.5:23", error, step) == reason  # type: ignore[arg-type]


# ---- TCP client -----------------------------------------------------------------------------


class Reader:
    """A reader's TCP server on 127.0.0.1: keeps each accepted connection."""

    def __init__(self) -> None:
        self.connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Reader:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for _, writer in self.connections:
            writer.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append((reader, writer))


async def test_tcp_client_both_ways_then_the_reader_closes() -> None:
    async with Reader() as device:
        link = TcpClientLink("rfid1", "127.0.0.1", device.port)
        assert link.description == f"tcp 127.0.0.1:{device.port}"
        await link.open()
        try:
            await wait_until(lambda: bool(device.connections), DEADLINE, "the connection")
            reader, writer = device.connections[0]
            sock = link._writer.get_extra_info("socket")  # type: ignore[union-attr]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            framer = Framer(suffix=b"\n")
            got = Collected(link, framer)
            async with running([got.task]):
                writer.write(b"E2001\r\nE20")
                await writer.drain()
                await wait_until(lambda: framer.pending() == 3, DEADLINE, "a half frame")
                writer.write(b"02\r\n")
                await writer.drain()
                await wait_until(lambda: len(got.data()) == 2, DEADLINE, "two frames")
                await link.write(b"READ\r\n")
                async with asyncio.timeout(DEADLINE):
                    assert await reader.readexactly(6) == b"READ\r\n"
                writer.close()
                await wait_until(lambda: got.ended, DEADLINE, "the link to fail")
            assert got.data() == [(b"E2001", None), (b"E2002", None)]
            assert str(got.error) == f"device 'rfid1': {CLOSED_BY_READER}"
        finally:
            await link.close()
        await link.close()  # again: harmless


async def test_tcp_client_sees_a_reset_as_the_reader_closing() -> None:
    async with Reader() as device:
        link = TcpClientLink("rfid1", "127.0.0.1", device.port)
        await link.open()
        try:
            await wait_until(lambda: bool(device.connections), DEADLINE, "the connection")
            _, writer = device.connections[0]
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # an RST, not a FIN
            with pytest.raises(ConnectError, match=CLOSED_BY_READER):
                await receive(link, 1)
        finally:
            await link.close()


async def test_tcp_client_refused() -> None:
    with socket.socket() as probe:  # a port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    link = TcpClientLink("rfid1", "127.0.0.1", port)
    with pytest.raises(ConnectError, match=f"connection to 127.0.0.1:{port} refused"):
        await link.open()
    await link.close()


async def test_tcp_client_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def silent(*args: object, **kwargs: object) -> None:
        await asyncio.get_running_loop().create_future()  # SYNs dropped by a firewall

    monkeypatch.setattr(asyncio, "open_connection", silent)
    link = TcpClientLink("rfid1", "10.0.0.5", 2112, connect_timeout=0.05)
    with pytest.raises(ConnectError) as raised:
        await link.open()
    assert str(raised.value) == (
        "device 'rfid1': no answer from 10.0.0.5:2112 within 0.05 s (wrong address, reader "
        "off, or a firewall dropping the connection)"
    )


async def test_tcp_client_write_to_a_reader_that_stopped_reading_times_out() -> None:
    async with Reader() as device:
        link = TcpClientLink("rfid1", "127.0.0.1", device.port, write_timeout=0.2)
        await link.open()
        try:
            with pytest.raises(ConnectError, match=r"timed out after 0\.2 s"):
                await link.write(b"x" * (16 << 20))
        finally:
            await link.close()


# ---- TCP server -----------------------------------------------------------------------------


async def test_tcp_server_one_reader_a_new_connection_replaces_the_old() -> None:
    link = TcpServerLink("scanner3", "127.0.0.1", 0)
    await link.open()
    try:
        port = link.port
        assert port != 0
        assert link.description == f"listening on 127.0.0.1:{port}"
        framer = Framer(suffix=b"\r")
        got = Collected(link, framer)
        async with running([got.task]):
            r1, w1 = await asyncio.open_connection("127.0.0.1", port)
            w1.write(b"A1\rHAL")
            await wait_until(lambda: framer.pending() == 3, DEADLINE, "a half frame")
            await link.write(b"OK")
            async with asyncio.timeout(DEADLINE):
                assert await r1.readexactly(2) == b"OK"
            # The reader rebooted: it connects again, the old connection still half-open.
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w2.write(b"B2\r")
            await wait_until(lambda: len(got.data()) == 3, DEADLINE, "the new reader's frame")
            assert got.data() == [(b"A1", None), (b"HAL", RESTARTED), (b"B2", None)]
            async with asyncio.timeout(DEADLINE):
                assert await r1.read() == b""  # the link closed the old connection
            assert link.connections == 2
            await link.write(b"OK2")
            async with asyncio.timeout(DEADLINE):
                assert await r2.readexactly(3) == b"OK2"
            w2.close()
            await wait_until(lambda: got.ended, DEADLINE, "the link to fail")
        assert str(got.error) == f"device 'scanner3': {CLOSED_BY_READER}"
        w1.close()
        with pytest.raises(ConnectError, match="no reader is connected"):
            await link.write(b"x")
    finally:
        await link.close()


async def test_tcp_server_waits_for_a_reader_and_close_ends_the_wait() -> None:
    link = TcpServerLink("scanner3", "127.0.0.1", 0)
    await link.open()
    got = Collected(link, Framer())
    try:
        with pytest.raises(ConnectError, match="no reader is connected"):
            await link.write(b"x")
    finally:
        await link.close()
    await asyncio.wait_for(got.task, DEADLINE)
    assert got.ended
    assert got.error is None


async def test_tcp_server_binds_again_right_after_close_and_refuses_a_taken_port() -> None:
    link = TcpServerLink("scanner3", "127.0.0.1", 0)
    await link.open()
    port = link.port
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        await wait_until(lambda: link.peer is not None, DEADLINE, "the reader")
        other = TcpServerLink("scanner4", "127.0.0.1", port)
        with pytest.raises(ConnectError) as raised:
            await other.open()
        assert str(raised.value).startswith(
            f"device 'scanner4': cannot listen on 127.0.0.1:{port}: the port is in use by "
            "another program"
        )
    finally:
        await link.close()  # we close first: our side of the connection is in TIME_WAIT
    writer.close()
    again = TcpServerLink("scanner3", "127.0.0.1", port)
    await again.open()  # SO_REUSEADDR: no "address in use" for the TIME_WAIT
    await again.close()
