"""The shared runners and the thread-owned blocking source, against real blocking reads.

A test-only scanner driver reads lines from a real ``os.pipe()`` in a ``BlockingSource``
thread (``select`` with a short timeout, as a serial read with a timeout would), so the
thread helper, the streaming runner's state machine, outage records and backoff are exercised
for real. The far end of the wire (:class:`Scanner`) hands each connection a fresh pipe, as a
re-plugged USB scanner gets a fresh port. A tiny polled driver (no network) covers
``run_polled`` through ``driver.run(sink)``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import threading
from collections.abc import AsyncIterator, Hashable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import pytest

from drivers import runners
from drivers.base import Driver, PolledDriver, StreamingDriver
from drivers.state import DeviceStatus
from drivers.threads import BlockingSource, ThreadLeak
from kernel import backoff
from kernel.errors import ConnectError, ReadError
from kernel.model import DeviceState, Observation, Quality
from tests.modbus_helpers import Collector, no_leaks, running, wait_until

pytestmark = pytest.mark.timeout(30)

POINTS = ("code", "length")
BACKOFF = (0.01, 0.05)
READ_TIMEOUT = 0.02
"""How long one read of the reader thread waits for bytes: a serial read's timeout."""


@pytest.fixture(autouse=True)
async def _no_leaks() -> AsyncIterator[None]:
    async with no_leaks():
        yield


def state(driver: Driver) -> DeviceState:
    return driver.status.state


def source_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("source:"))


@dataclass
class RecordingStatus(DeviceStatus):
    """The real DeviceStatus, also keeping every state it changed to."""

    history: list[DeviceState] = field(default_factory=list)

    def set_state(self, state: DeviceState, error: str | None = None) -> None:
        if state is not self.state:
            self.history.append(state)
        super().set_state(state, error)


def record_backoff(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float, float]]:
    """Spy on the runner's backoff: (attempt, base, cap) of every wait, real delays kept."""
    calls: list[tuple[int, float, float]] = []
    real = backoff.backoff_delay

    def spy(attempt: int, base: float, cap: float) -> float:
        calls.append((attempt, base, cap))
        return real(attempt, base, cap)

    monkeypatch.setattr(runners, "backoff_delay", spy)  # the name the runners call
    return calls


# ---- a scanner on a pipe ---------------------------------------------------------------------


class Scanner:
    """The far end of the wire. The test writes lines; each connection is a fresh pipe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # connect() runs in reader threads, the rest in the test
        self._online = True
        self._writer: int | None = None
        self.connections = 0

    def connect(self) -> int:
        """The read end of a new connection (called in the reader thread)."""
        with self._lock:
            if not self._online:
                raise OSError(errno.ENODEV, "scanner unplugged")
            read_fd, write_fd = os.pipe()
            if self._writer is not None:
                os.close(self._writer)
            self._writer = write_fd
            self.connections += 1
            return read_fd

    def send(self, *lines: str) -> None:
        with self._lock:
            assert self._writer is not None, "the scanner is not connected"
            os.write(self._writer, "".join(f"{line}\n" for line in lines).encode())

    def hang_up(self) -> None:
        """Close our end: the reader sees end of file."""
        with self._lock:
            if self._writer is not None:
                os.close(self._writer)
                self._writer = None

    def unplug(self) -> None:
        with self._lock:
            self._online = False
        self.hang_up()

    def plug(self) -> None:
        with self._lock:
            self._online = True


@pytest.fixture
def scanner() -> Iterator[Scanner]:
    s = Scanner()
    try:
        yield s
    finally:
        s.hang_up()


class Connection:
    """One connection to the scanner, owned by its reader thread from open to close."""

    def __init__(self, scanner: Scanner, device: str) -> None:
        self.scanner = scanner
        self.device = device
        self.fd: int | None = None
        self.buffer = b""
        self.closed = False
        self.thread: str | None = None

    def open(self) -> None:
        self.thread = threading.current_thread().name
        self.fd = self.scanner.connect()

    def read(self) -> bytes | None:
        assert self.fd is not None
        nl = self.buffer.find(b"\n")
        if nl < 0:
            ready, _, _ = select.select([self.fd], [], [], READ_TIMEOUT)
            if not ready:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise ConnectError(self.device, "the scanner hung up")
            self.buffer += chunk
            nl = self.buffer.find(b"\n")
            if nl < 0:
                return None
        line, self.buffer = self.buffer[:nl], self.buffer[nl + 1 :]
        if line == b"fail":
            raise ReadError(self.device, "the scanner reported a fault")
        return line

    def close(self) -> None:
        assert threading.current_thread().name == self.thread, "closed outside its thread"
        if self.fd is not None:
            os.close(self.fd)
        self.closed = True


class ScannerDriver(StreamingDriver):
    """Lines from the scanner; each line is one batch: the code and its length."""

    def __init__(self, scanner: Scanner, backoff: tuple[float, float] = BACKOFF) -> None:
        super().__init__("scanner1", backoff_initial=backoff[0], backoff_max=backoff[1])
        self.status: RecordingStatus = RecordingStatus(self.name)
        self.scanner = scanner
        self.source: BlockingSource[bytes] | None = None
        self._stack = AsyncExitStack()
        self.connections: list[Connection] = []
        self.opens = 0
        self.closes = 0
        self.states_at_open: list[DeviceState] = []

    def point_names(self) -> Sequence[str]:
        return POINTS

    async def open(self) -> None:
        self.opens += 1
        self.states_at_open.append(self.status.state)
        conn = Connection(self.scanner, self.name)
        self.connections.append(conn)
        source = BlockingSource(
            self.name, conn.read, open=conn.open, close=conn.close, stop_within=2.0
        )
        try:
            self.source = await self._stack.enter_async_context(source)
        except OSError as exc:
            raise ConnectError(self.name, f"cannot open the scanner: {exc}") from exc

    async def close(self) -> None:
        self.closes += 1
        self.source = None
        await self._stack.aclose()

    async def stream(self) -> AsyncIterator[Sequence[Observation]]:
        if self.source is None:
            raise ConnectError(self.name, "not open")
        async for line in self.source:
            code = line.decode()
            yield [
                Observation(self.name, "code", code),
                Observation(self.name, "length", len(code)),
            ]


def good(sink: Collector, point: str = "code") -> list[object]:
    return [o.value for o in sink.of(point) if o.quality is Quality.GOOD]


def outage_batches(sink: Collector) -> list[list[Observation]]:
    return [b for b in sink.batches if all(o.quality is Quality.BAD for o in b)]


# ---- the streaming runner --------------------------------------------------------------------


async def test_lines_arrive_in_order_and_the_device_is_up_once_open(scanner: Scanner) -> None:
    driver = ScannerDriver(scanner)
    sink = Collector()
    assert state(driver) is DeviceState.STARTING
    async with running([asyncio.create_task(driver.run(sink), name="scanner1")]):
        await wait_until(lambda: state(driver) is DeviceState.UP, what="scanner UP")
        assert sink.batches == []  # UP before anything was scanned: a silent scanner is fine
        assert source_threads() == ["source:scanner1"]
        scanner.send("A1", "B22", "C333")
        await wait_until(lambda: len(sink.batches) == 3, what="three scans")
        assert [[(o.device, o.point, o.value, o.quality) for o in b] for b in sink.batches] == [
            [("scanner1", "code", "A1", Quality.GOOD), ("scanner1", "length", 2, Quality.GOOD)],
            [("scanner1", "code", "B22", Quality.GOOD), ("scanner1", "length", 3, Quality.GOOD)],
            [("scanner1", "code", "C333", Quality.GOOD), ("scanner1", "length", 4, Quality.GOOD)],
        ]
        assert driver.status.reads_ok == 3
    assert driver.status.history == [DeviceState.UP]
    assert driver.connections[0].thread == "source:scanner1"


async def test_a_lost_scanner_goes_down_once_per_outage_and_comes_back(
    scanner: Scanner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    waits = record_backoff(monkeypatch)
    caplog.set_level(logging.INFO, logger="drivers.base")
    driver = ScannerDriver(scanner)
    sink = Collector()

    def up_on(connection: int) -> bool:
        return scanner.connections == connection and state(driver) is DeviceState.UP

    async with running([asyncio.create_task(driver.run(sink), name="scanner1")]):
        await wait_until(lambda: up_on(1), what="first connection")
        scanner.send("A1", "fail")  # the device reports a fault: ReadError from the thread
        await wait_until(lambda: up_on(2), what="reconnect after the fault")
        scanner.send("B2")
        await wait_until(lambda: good(sink) == ["A1", "B2"], what="scans after the fault")
        scanner.unplug()  # end of file, and reconnects are refused
        await wait_until(lambda: driver.opens >= 6, what="four failed reconnects")
        assert state(driver) is DeviceState.DOWN
        assert len(outage_batches(sink)) == 2  # one for the fault, one for the hang-up
        scanner.plug()
        await wait_until(lambda: up_on(3), what="reconnect once plugged in")
        scanner.send("C3")
        await wait_until(lambda: good(sink) == ["A1", "B2", "C3"], what="scans flow again")

    outages = outage_batches(sink)
    assert [[(o.point, o.value) for o in b] for b in outages] == [
        [("code", None), ("length", None)],
        [("code", None), ("length", None)],
    ]
    assert all("reported a fault" in (o.error or "") for o in outages[0])
    assert all("hung up" in (o.error or "") for o in outages[1])
    assert driver.status.history == [
        DeviceState.UP,
        DeviceState.DOWN,
        DeviceState.UP,
        DeviceState.DOWN,
        DeviceState.UP,
    ]
    # Every failure waited with the driver's backoff; a session that delivered a scan resets
    # it (the two zeros), failed reconnects back off further each time.
    attempts = [a for a, _, _ in waits]
    assert len(attempts) >= 6
    assert attempts == [0, 0, *range(1, len(attempts) - 1)]
    assert {(base, cap) for _, base, cap in waits} == {BACKOFF}
    assert driver.status.reconnects == len(waits)
    # Every connection was closed, in its own thread.
    opened = [c for c in driver.connections if c.fd is not None]
    assert len(opened) == 3
    assert all(c.closed for c in opened)
    # One ERROR per outage, however many retries; one INFO per recovery.
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "drivers.base"]
    assert [m for lvl, m in logged if lvl == logging.ERROR] == [
        "device scanner1 is down: device 'scanner1': the scanner reported a fault",
        "device scanner1 is down: device 'scanner1': the scanner hung up",
    ]
    assert sum("recovered" in m for _, m in logged) == 2


async def test_an_open_that_keeps_failing_keeps_the_device_down_and_retries(
    scanner: Scanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits = record_backoff(monkeypatch)
    scanner.unplug()
    driver = ScannerDriver(scanner)
    sink = Collector()
    async with running([asyncio.create_task(driver.run(sink), name="scanner1")]):
        await wait_until(lambda: driver.opens >= 5, what="retries")
        assert state(driver) is DeviceState.DOWN
        assert driver.states_at_open[0] is DeviceState.STARTING
        assert set(driver.states_at_open[1:]) == {DeviceState.DOWN}  # never UP in between
        assert "scanner unplugged" in (driver.status.last_error or "")
        assert len(outage_batches(sink)) == 1  # once per outage, not once per retry
        assert len(source_threads()) <= 1  # only the attempt in progress: each one ends
        scanner.plug()
        await wait_until(lambda: state(driver) is DeviceState.UP, what="UP once plugged")
        scanner.send("A1")
        await wait_until(lambda: good(sink) == ["A1"], what="the first scan")
    assert driver.status.history == [DeviceState.DOWN, DeviceState.UP]
    attempts = [a for a, _, _ in waits]
    assert attempts == list(range(len(attempts)))  # growing: no session answered
    assert driver.status.reads_failed == len(attempts) >= 4


async def test_cancelling_the_runner_ends_the_thread_and_closes_the_driver(
    scanner: Scanner,
) -> None:
    tasks_before = asyncio.all_tasks()
    driver = ScannerDriver(scanner)
    sink = Collector()
    task = asyncio.create_task(driver.run(sink), name="scanner1")
    await wait_until(lambda: state(driver) is DeviceState.UP, what="scanner UP")
    scanner.send("A1")
    await wait_until(lambda: good(sink) == ["A1"], what="a scan")
    assert source_threads() == ["source:scanner1"]

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert source_threads() == []
    assert driver.closes == 1
    assert driver.source is None
    assert driver.connections[0].closed
    me = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() - tasks_before if t is not me and not t.done()] == []


async def test_cancelling_during_the_backoff_ends_at_once_and_closes(scanner: Scanner) -> None:
    scanner.unplug()
    driver = ScannerDriver(scanner, backoff=(3600.0, 3600.0))  # a wait the test would notice
    task = asyncio.create_task(driver.run(Collector()), name="scanner1")
    await wait_until(lambda: state(driver) is DeviceState.DOWN, what="DOWN")
    task.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert driver.opens == 1
    assert driver.closes >= 1
    assert source_threads() == []


# ---- BlockingSource on its own ---------------------------------------------------------------


async def test_call_runs_in_the_reader_thread_between_reads() -> None:
    read_fd, write_fd = os.pipe()
    events: list[str] = []  # appended to by the reader thread only
    reading = threading.Event()

    def read() -> bytes | None:
        events.append("read")
        reading.set()
        try:
            ready, _, _ = select.select([read_fd], [], [], READ_TIMEOUT)
            return os.read(read_fd, 100) if ready else None
        finally:
            reading.clear()

    def beep() -> tuple[str, bool]:
        events.append("call")
        return threading.current_thread().name, reading.is_set()

    def broken() -> None:
        raise ValueError("the scanner refused the command")

    try:
        async with BlockingSource("scanner9", read) as src:
            await wait_until(lambda: "read" in events, what="the first read")
            async with asyncio.timeout(5):
                assert await src.call(beep) == ("source:scanner9", False)
            with pytest.raises(ValueError, match="refused the command"):
                await asyncio.wait_for(src.call(broken), 5)
            os.write(write_fd, b"x")  # reads still work after calls
            assert await anext(aiter(src)) == b"x"
            calls = events.index("call")
            await wait_until(lambda: "read" in events[calls + 1 :], what="a read after the call")
            assert events[calls - 1] == "read"
        with pytest.raises(RuntimeError, match="not running"):
            await src.call(beep)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert events.count("call") == 1
    assert source_threads() == []


async def test_a_call_made_while_the_source_stops_fails_instead_of_hanging() -> None:
    closing, finish_close = threading.Event(), threading.Event()
    ran: list[bool] = []

    def read() -> bytes | None:
        raise ConnectError("port", "unplugged")

    def slow_close() -> None:
        closing.set()
        finish_close.wait(5)

    async with AsyncExitStack() as stack:
        stack.callback(finish_close.set)  # whatever happens, the thread is let go
        src = await stack.enter_async_context(BlockingSource("port", read, close=slow_close))
        await wait_until(closing.is_set, what="the thread to be closing the port")
        pending = asyncio.ensure_future(src.call(lambda: ran.append(True)))
        await wait_until(lambda: not src._calls.empty(), what="the call to be queued")
        finish_close.set()
        with pytest.raises(RuntimeError, match="source port stopped"):
            await asyncio.wait_for(pending, 5)
        with pytest.raises(ConnectError, match="unplugged"):
            await anext(aiter(src))
    assert ran == []


async def test_a_read_that_ignores_stop_makes_exit_raise_thread_leak() -> None:
    entered, release = threading.Event(), threading.Event()

    def deaf_read() -> bytes | None:
        entered.set()
        release.wait()  # no timeout: deaf to stop, like a serial read without one
        return None

    try:
        with pytest.raises(ThreadLeak, match="source deaf: reader thread still running"):
            async with BlockingSource("deaf", deaf_read, stop_within=0.05):
                await wait_until(entered.is_set, what="the read to start")
        assert source_threads() == ["source:deaf"]  # really still there
    finally:
        release.set()
    await wait_until(lambda: source_threads() == [], what="the released thread to end")


async def test_interrupt_wakes_a_read_in_progress() -> None:
    read_fd, write_fd = os.pipe()
    interrupted: list[str] = []

    def blocking_read() -> bytes | None:
        return os.read(read_fd, 100) or None  # blocks until bytes come: only interrupt helps

    def interrupt() -> None:
        interrupted.append(threading.current_thread().name)
        os.write(write_fd, b"\0")

    try:
        async with BlockingSource(
            "woken", blocking_read, interrupt=interrupt, stop_within=2.0
        ) as src:
            os.write(write_fd, b"first")
            assert await anext(aiter(src)) == b"first"
        assert interrupted == [threading.current_thread().name]  # called from the loop's side
        assert source_threads() == []
    finally:
        os.close(read_fd)
        os.close(write_fd)


async def test_an_error_in_open_is_raised_from_async_with() -> None:
    closed: list[bool] = []

    def open_port() -> None:
        raise OSError(errno.ENOENT, "no such port /dev/ttyFAKE0")

    with pytest.raises(OSError, match="no such port /dev/ttyFAKE0"):
        async with BlockingSource(
            "badport", lambda: None, open=open_port, close=lambda: closed.append(True)
        ):
            pytest.fail("the block must not run when open fails")
    assert closed == []  # nothing was opened, so nothing is closed
    assert source_threads() == []


async def test_what_read_raises_reaches_the_consumer_and_the_source_closes() -> None:
    items = iter([b"a", b"b"])
    closed_in: list[str] = []

    def read() -> bytes | None:
        item = next(items, None)
        if item is None:
            raise ConnectError("port", "unplugged")
        return item

    got: list[bytes] = []

    async def consume() -> None:
        async with BlockingSource(
            "port", read, close=lambda: closed_in.append(threading.current_thread().name)
        ) as src:
            async for item in src:
                got.append(item)

    with pytest.raises(ConnectError, match="unplugged"):
        await consume()
    assert got == [b"a", b"b"]
    assert closed_in == ["source:port"]


# ---- the polled runner -----------------------------------------------------------------------


class CounterDriver(PolledDriver):
    """Two poll groups over in-memory counters: no network, the schedule is the subject."""

    GROUPS = ((0.01, "fast"), (0.2, "slow"))

    def __init__(self) -> None:
        super().__init__("counter1", backoff_initial=BACKOFF[0], backoff_max=BACKOFF[1])
        self.status: RecordingStatus = RecordingStatus(self.name)
        self.reads: dict[Hashable, list[float]] = {key: [] for _, key in self.GROUPS}
        self.failing = False
        self.opens = 0
        self.closes = 0

    def groups(self) -> Sequence[tuple[float, Hashable]]:
        return self.GROUPS

    def point_names(self) -> Sequence[str]:
        return [f"{key}_count" for _, key in self.GROUPS]

    async def open(self) -> None:
        self.opens += 1

    async def close(self) -> None:
        self.closes += 1

    async def read(self, group: Hashable) -> list[Observation]:
        if self.failing:
            raise ReadError(self.name, "no answer")
        times = self.reads[group]
        times.append(asyncio.get_running_loop().time())
        return [Observation(self.name, f"{group}_count", len(times) - 1)]


async def test_run_polled_reads_each_group_on_its_schedule_and_recovers() -> None:
    driver = CounterDriver()
    sink = Collector()
    async with running([asyncio.create_task(driver.run(sink), name="counter1")]):
        await wait_until(lambda: len(driver.reads["slow"]) >= 2, what="two slow reads")
        assert state(driver) is DeviceState.UP
        fast, slow = list(driver.reads["fast"]), list(driver.reads["slow"])
        assert len(fast) > 2 * len(slow)
        # Fixed rate: the k-th read of a group is never before the k-th slot of its grid.
        slack = 0.002  # the loop may run a timer up to its clock resolution early
        for (interval, key), times in zip(driver.GROUPS, (fast, slow), strict=True):
            assert all(t - times[0] >= k * interval - slack for k, t in enumerate(times)), key
        # Each group's values are its own, in order.
        for point in ("fast_count", "slow_count"):
            values = [o.value for o in sink.of(point)]
            assert values == list(range(len(values)))

        opens = driver.opens
        driver.failing = True
        await wait_until(lambda: driver.opens >= opens + 3, what="retries while failing")
        assert state(driver) is DeviceState.DOWN
        outages = outage_batches(sink)
        assert [[(o.point, o.value, o.error) for o in b] for b in outages] == [
            [
                ("fast_count", None, "device 'counter1': no answer"),
                ("slow_count", None, "device 'counter1': no answer"),
            ]
        ]
        assert driver.closes >= 3  # closed after every failed attempt

        seen = len(driver.reads["fast"])
        driver.failing = False
        await wait_until(lambda: len(driver.reads["fast"]) >= seen + 3, what="reads again")
        assert state(driver) is DeviceState.UP
    assert driver.status.history == [DeviceState.UP, DeviceState.DOWN, DeviceState.UP]
    assert len(outage_batches(sink)) == 1
