"""A simulated scale on a serial port (a pty) and on TCP, for driver tests and the demo.

It speaks one protocol per instance, the way a scale is configured for one:

- **MT-SICS**: answers ``S`` (waits for stability, ``S I`` after ``stable_timeout``), ``SI``,
  ``SIR`` (repeats every ``repeat_interval`` until ``@`` or any other command), ``Z``/``ZI``,
  ``T``/``TI`` and ``@`` (cancels what runs, clears the tare, answers ``I4 A "<serial>"``);
  anything else gets ``ES``.
- **SBI**: prints its display as a 16-character line (22 with ID codes ``N``/``G#``) on
  ``ESC P``, or unasked every ``repeat_interval`` in auto print; takes ``ESC T`` (zero when
  empty, tare when loaded), ``ESC U``/``ESC f4_`` (tare) and ``ESC V``/``ESC f3_`` (zero).
  An unstable print has no unit, as on a real balance.
- **Toledo continuous**: streams STX, status A B C, weight, tare, CR (and a checksum) every
  ``repeat_interval``, unasked.

The load follows a scenario a test writes: :meth:`ScaleSimulator.place` puts a load on the pan;
the reading ramps towards it (dynamic) and settles (stable) ``settle_time`` later. The ground
truth is kept for the test: every :class:`Placement` (what, when, stable from when), and
:meth:`ScaleSimulator.expected_weight`, the stable reading once it settles. Zero and tare move
the reading as on a scale: the displayed weight is the load minus the zero point minus the
tare. Above ``capacity`` the scale is in overload; below minus the zero range, in underload.

Faults (:class:`Faults`) a test can switch on: garbage bytes before the next reply, replies in a
unit nobody knows, silence, each reply split over several writes, several replies merged into
one write.

The wire formats are written here from the manuals, independently of
``drivers/scale/protocols.py``, so an end-to-end test cannot pass on a format mistake both sides
share. Sources: Mettler Toledo MT-SICS reference (via the balances' operating instructions),
Sartorius SBI "data output format" pages, Mettler Toledo WILDCAT manual appendix 2 (continuous
output); see that module's docstring for the details checked.

No thread: the pty is a non-blocking fd on the event loop, TCP an asyncio server. Everything is
started by :meth:`ScaleSimulator.start` and undone by :meth:`ScaleSimulator.close` (or the
``async with`` block), so nothing outlives a test. A pulled cable (``NullModem.unplug``) ends the
serial conversation for good, as the EOF it is; TCP keeps serving.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import tty
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol as TypingProtocol

log = logging.getLogger(__name__)

CRLF = b"\r\n"
ESC = 0x1B
STX = 0x02
CR = 0x0D
_CHUNK = 4096
_SBI_LONGEST = 24
"""An SBI command is at most 20 characters; an ESC with no ``_`` within this many is noise."""
SPLIT_GAP = 0.002
"""Seconds between the parts of a split reply, so the reader sees them as separate reads."""


class ScaleProtocol(StrEnum):
    MTSICS = "mtsics"
    SBI = "sbi"
    TOLEDO = "toledo"


_TOLEDO_UNIT_CODES = {"lb": 0, "kg": 0, "g": 1, "t": 2}
_TOLEDO_UNKNOWN_UNIT_CODE = 7


@dataclass(frozen=True)
class ScaleModel:
    """What kind of scale it is and how it is configured."""

    protocol: ScaleProtocol = ScaleProtocol.MTSICS
    capacity: float = 6200.0
    unit: str = "g"
    decimals: int = 2
    settle_time: float = 0.3
    """Seconds from placing a load until the reading is stable."""
    zero_range: float = 0.02
    """Zeroing is possible within +- this fraction of capacity around the power-up zero; a load
    below minus that is an underload (the pan lifted off)."""
    stable_timeout: float = 2.0
    """How long ``S``/``Z``/``T`` wait for stability before answering ``I``."""
    repeat_interval: float = 0.05
    """SIR, SBI auto print and Toledo continuous output: one reading every this many seconds."""
    serial_number: str = "0123456789"
    sbi_id_codes: bool = False
    """SBI: 22-character lines with an ID code (``N``/``G#``) instead of 16-character lines."""
    sbi_auto_print: bool = False
    """SBI: print every ``repeat_interval`` without being asked."""
    toledo_checksum: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.decimals <= 5:
            raise ValueError("decimals must be 0..5 (what Toledo status A can express)")
        if self.protocol is ScaleProtocol.TOLEDO:
            if self.unit not in _TOLEDO_UNIT_CODES:
                raise ValueError(f"Toledo continuous output has no code for unit {self.unit!r}")
            if round(self.capacity * 10**self.decimals) > 999_999:
                raise ValueError("capacity does not fit the six digits of a Toledo frame")
        if self.protocol is ScaleProtocol.SBI and len(f"{self.capacity:.{self.decimals}f}") > 8:
            raise ValueError("capacity does not fit the eight weight characters of an SBI line")

    @property
    def zero_limit(self) -> float:
        return self.zero_range * self.capacity


@dataclass(frozen=True)
class Placement:
    """Ground truth: the load on the pan from ``placed_at``; stable from ``stable_at``."""

    load: float
    placed_at: float
    stable_at: float


@dataclass(frozen=True)
class Reading:
    """What the display shows at one moment."""

    value: float
    stable: bool
    overload: bool
    underload: bool
    net: bool


class ScaleState:
    """The scale's physics and memory, as pure functions of loop time ``now``."""

    def __init__(self, model: ScaleModel, now: float) -> None:
        self.model = model
        self.zero_point = 0.0
        self.tare = 0.0
        self.placements: list[Placement] = [Placement(0.0, now, now)]
        self._ramp_from = 0.0

    @property
    def current(self) -> Placement:
        return self.placements[-1]

    def place(self, load: float, now: float) -> Placement:
        self._ramp_from = self.raw(now)
        placement = Placement(load, now, now + self.model.settle_time)
        self.placements.append(placement)
        return placement

    def stable(self, now: float) -> bool:
        return now >= self.current.stable_at

    def raw(self, now: float) -> float:
        """What the load cell measures: towards the load with a decaying wobble."""
        p = self.current
        if self.stable(now):
            return p.load
        done = (now - p.placed_at) / (p.stable_at - p.placed_at)
        step = p.load - self._ramp_from
        wobble = 0.03 * step * math.sin(done * 6 * math.pi) * (1 - done)
        return self._ramp_from + step * (1 - (1 - done) ** 2) + wobble

    def reading(self, now: float) -> Reading:
        raw = self.raw(now)
        value = self._round(raw - self.zero_point - self.tare)
        return Reading(
            value=value,
            stable=self.stable(now),
            overload=raw > self.model.capacity,
            underload=raw < -self.model.zero_limit,
            net=self.tare != 0.0,
        )

    def zero(self, now: float) -> str | None:
        """Set the zero point to the load now; ``"+"``/``"-"`` when outside the zero range."""
        raw = self.raw(now)
        if raw > self.model.zero_limit:
            return "+"
        if raw < -self.model.zero_limit:
            return "-"
        self.zero_point = raw
        self.tare = 0.0
        return None

    def take_tare(self, now: float) -> str | None:
        """Tare the gross load now; ``"+"``/``"-"`` when outside the taring range."""
        raw = self.raw(now)
        gross = raw - self.zero_point
        if raw > self.model.capacity:
            return "+"
        if gross < 0:
            return "-"
        self.tare = self._round(gross)
        return None

    def reset(self) -> None:
        self.tare = 0.0

    def expected_weight(self) -> float:
        """The stable reading once the current load has settled (zero and tare as now)."""
        return self._round(self.current.load - self.zero_point - self.tare)

    def _round(self, value: float) -> float:
        return round(value, self.model.decimals) + 0.0  # + 0.0: no "-0.00"


@dataclass
class Faults:
    """Misbehaviour to inject; tests set the fields while the simulator runs."""

    silent: bool = False
    """Answer nothing and stream nothing (a scale switched to another mode, a dead line)."""
    unknown_unit: str | None = None
    """Report weights in this unit (for Toledo: a unit code no table has)."""
    split: int = 1
    """Send every reply in this many writes."""
    merge: int = 1
    """Hold replies until this many are ready, then send them in one write."""
    garbage: bytes = b""
    """Sent once, in front of the next reply."""


class _Wire(TypingProtocol):
    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...


class _TcpWire:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        try:
            return await self._reader.read(_CHUNK)
        except ConnectionError:
            return b""

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()
        with suppress(ConnectionError):
            await self._writer.wait_closed()


class _PtyWire:
    """The scale's end of a serial cable: a tty opened non-blocking and served by the loop."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(self._fd)
        except BaseException:
            os.close(self._fd)
            raise
        self._incoming = asyncio.StreamReader()
        self._loop.add_reader(self._fd, self._readable)
        self._closed = False

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the other side hung up (the cable was pulled)
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._loop.remove_reader(self._fd)
            self._incoming.feed_eof()
            return
        self._incoming.feed_data(data)

    async def read(self) -> bytes:
        return await self._incoming.read(_CHUNK)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await self._writable()

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def writable() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(self._fd, writable)
        try:
            await ready
        finally:
            self._loop.remove_writer(self._fd)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        os.close(self._fd)


class _Session:
    """One conversation: the serial port, or one TCP client. Owns its tasks."""

    def __init__(self, sim: ScaleSimulator, wire: _Wire, name: str) -> None:
        self.sim = sim
        self.wire = wire
        self.name = name
        self.repeating = False
        self._queue: deque[Callable[[], Awaitable[None]]] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._stream: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._held: list[bytes] = []
        self._sbi_input = bytearray()

    @property
    def model(self) -> ScaleModel:
        return self.sim.model

    @property
    def state(self) -> ScaleState:
        return self.sim.state

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def run(self) -> None:
        protocol = self.model.protocol
        if protocol is ScaleProtocol.TOLEDO or (
            protocol is ScaleProtocol.SBI and self.model.sbi_auto_print
        ):
            self._stream = asyncio.create_task(self._stream_forever(), name=f"{self.name} stream")
        framer_lines = bytearray()
        try:
            while data := await self.wire.read():
                self.sim.bytes_received += len(data)
                if protocol is ScaleProtocol.MTSICS:
                    framer_lines += data
                    while (end := framer_lines.find(b"\n")) >= 0:
                        line = bytes(framer_lines[:end]).rstrip(b"\r")
                        del framer_lines[: end + 1]
                        await self._mtsics_line(line.decode("latin-1").strip())
                elif protocol is ScaleProtocol.SBI:
                    await self._sbi_bytes(data)
                else:  # Toledo continuous output takes no commands here; keep the input
                    self.sim.commands.append(data.decode("latin-1"))
        finally:
            await self._stop_tasks()
            await self.wire.aclose()

    async def _stop_tasks(self) -> None:
        for task in (self._worker, self._stream):
            if task is not None:
                task.cancel()
        for task in (self._worker, self._stream):
            if task is not None:
                with suppress(asyncio.CancelledError):
                    await task
        self._worker = self._stream = None

    # ---- sending, through the faults ----------------------------------------------------

    async def send(self, payload: bytes) -> None:
        faults = self.sim.faults
        if faults.silent:
            self.sim.silenced += 1
            return
        async with self._write_lock:
            if faults.merge > 1:
                self._held.append(payload)
                if len(self._held) < faults.merge:
                    return
                payload = b"".join(self._held)
                self._held.clear()
            if faults.garbage:
                payload, faults.garbage = faults.garbage + payload, b""
            parts = max(1, min(faults.split, len(payload)))
            size = math.ceil(len(payload) / parts)
            try:
                for i in range(0, len(payload), size):
                    if i:
                        await asyncio.sleep(SPLIT_GAP)
                    await self.wire.write(payload[i : i + size])
                    self.sim.writes += 1
            except OSError as exc:  # the client went away, the cable was pulled
                log.debug("%s: reply not sent: %s", self.name, exc)

    def unit(self) -> str:
        return self.sim.faults.unknown_unit or self.model.unit

    def value(self, value: float) -> str:
        return f"{value:.{self.model.decimals}f}"

    # ---- commands, one at a time ----------------------------------------------------------

    def _enqueue(self, run: Callable[[], Awaitable[None]]) -> None:
        """Queue a command; the worker runs them in order (``SIR`` ends when one arrives)."""
        self._queue.append(run)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"{self.name} commands")

    async def _work(self) -> None:
        while self._queue:
            await self._queue.popleft()()

    async def _cancel_all(self) -> None:
        self._queue.clear()
        if self._worker is not None:
            self._worker.cancel()
            with suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self.repeating = False

    async def _until_stable(self) -> bool:
        """Wait for a stable (or out of range) reading; False after ``stable_timeout``."""
        deadline = self.now() + self.model.stable_timeout
        while True:
            now = self.now()
            reading = self.state.reading(now)
            if reading.stable or reading.overload or reading.underload:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(max(0.0, min(self.state.current.stable_at, deadline) - now))

    # ---- MT-SICS --------------------------------------------------------------------------

    async def _mtsics_line(self, command: str) -> None:
        if not command:
            return
        self.sim.commands.append(command)
        if command == "@":
            await self._cancel_all()
            self.state.reset()
            await self.send(f'I4 A "{self.model.serial_number}"'.encode() + CRLF)
            return
        run = {
            "S": self._stable_weight,
            "SI": self._immediate_weight,
            "SIR": self._repeat_weight,
            "Z": self._zero,
            "ZI": self._zero_immediately,
            "T": self._tare,
            "TI": self._tare_immediately,
        }.get(command, self._syntax_error)
        self._enqueue(run)

    def _weight_line(self) -> bytes:
        reading = self.state.reading(self.now())
        if reading.overload:
            return b"S +" + CRLF
        if reading.underload:
            return b"S -" + CRLF
        status = "S" if reading.stable else "D"
        return f"S {status} {self.value(reading.value):>10} {self.unit()}".encode() + CRLF

    async def _syntax_error(self) -> None:
        await self.send(b"ES" + CRLF)

    async def _stable_weight(self) -> None:
        if await self._until_stable():
            await self.send(self._weight_line())
        else:
            await self.send(b"S I" + CRLF)

    async def _immediate_weight(self) -> None:
        await self.send(self._weight_line())

    async def _repeat_weight(self) -> None:
        self.repeating = True
        try:
            while not self._queue:
                await self.send(self._weight_line())
                self._arrived.clear()
                with suppress(TimeoutError):
                    async with asyncio.timeout(self.model.repeat_interval):
                        await self._arrived.wait()
        finally:
            self.repeating = False

    async def _zero(self) -> None:
        if not await self._until_stable():
            await self.send(b"Z I" + CRLF)
            return
        refused = self.state.zero(self.now())
        await self.send(f"Z {refused or 'A'}".encode() + CRLF)

    async def _zero_immediately(self) -> None:
        stable = self.state.stable(self.now())
        refused = self.state.zero(self.now())
        await self.send(f"ZI {refused or ('S' if stable else 'D')}".encode() + CRLF)

    async def _tare(self) -> None:
        if not await self._until_stable():
            await self.send(b"T I" + CRLF)
            return
        await self._send_tare("T", stable=True)

    async def _tare_immediately(self) -> None:
        await self._send_tare("TI", stable=self.state.stable(self.now()))

    async def _send_tare(self, ident: str, *, stable: bool) -> None:
        refused = self.state.take_tare(self.now())
        if refused:
            await self.send(f"{ident} {refused}".encode() + CRLF)
            return
        tare = self.value(self.state.tare)
        status = "S" if stable else "D"
        await self.send(f"{ident} {status} {tare:>10} {self.unit()}".encode() + CRLF)

    # ---- SBI ------------------------------------------------------------------------------

    async def _sbi_bytes(self, data: bytes) -> None:
        """Commands are ``ESC`` + a letter, or ``ESC`` + letter, digit(s) and ``_``; CR LF after
        them are optional, so they are cut by their own syntax, not by line ends."""
        self._sbi_input += data
        while True:
            start = self._sbi_input.find(ESC)
            if start < 0:
                self._sbi_input.clear()
                return
            del self._sbi_input[:start]
            if len(self._sbi_input) < 2:
                return
            letter = chr(self._sbi_input[1])
            if letter.islower():
                end = self._sbi_input.find(b"_", 0, _SBI_LONGEST)
                if end < 0 and len(self._sbi_input) < _SBI_LONGEST:
                    return  # the rest is still on its way
                if end < 0:  # no command of ours: skip this ESC
                    del self._sbi_input[:1]
                    continue
                command = self._sbi_input[1 : end + 1].decode("latin-1")
                del self._sbi_input[: end + 1]
            else:
                command = letter
                del self._sbi_input[:2]
            self.sim.commands.append(f"ESC {command}")
            run = {
                "P": self._sbi_print,
                "T": self._sbi_tare_or_zero,
                "U": self._sbi_tare,
                "f4_": self._sbi_tare,
                "V": self._sbi_zero,
                "f3_": self._sbi_zero,
            }.get(command)
            if run is not None:  # a balance ignores commands it does not have
                self._enqueue(run)

    def _sbi_line(self) -> bytes:
        reading = self.state.reading(self.now())
        ident = ("N" if reading.net else "G#") if self.model.sbi_id_codes else None
        if reading.overload or reading.underload:
            body = f"{'':6}{'H' if reading.overload else 'L'}{'':7}"
            ident = "Stat" if ident is not None else None
        else:
            sign = "-" if reading.value < 0 else "+"
            unit = self.unit() if reading.stable else ""
            body = f"{sign} {self.value(abs(reading.value)):>8} {unit:<3}"
        prefix = f"{ident:<6}" if ident is not None else ""
        return (prefix + body).encode("latin-1") + CRLF

    async def _sbi_print(self) -> None:
        await self.send(self._sbi_line())

    async def _sbi_zero(self) -> None:
        if await self._until_stable():
            self.state.zero(self.now())

    async def _sbi_tare(self) -> None:
        if await self._until_stable():
            self.state.take_tare(self.now())

    async def _sbi_tare_or_zero(self) -> None:
        if await self._until_stable():
            now = self.now()
            if abs(self.state.raw(now)) <= self.model.zero_limit and self.state.tare == 0.0:
                self.state.zero(now)
            else:
                self.state.take_tare(now)

    # ---- continuous output ----------------------------------------------------------------

    async def _stream_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.model.repeat_interval
        next_at = loop.time()
        while True:
            if self.model.protocol is ScaleProtocol.TOLEDO:
                await self.send(self._toledo_frame())
            else:
                await self.send(self._sbi_line())
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def _toledo_frame(self) -> bytes:
        reading = self.state.reading(self.now())
        d = self.model.decimals
        unit = self.unit()
        unit_code = _TOLEDO_UNIT_CODES.get(unit, _TOLEDO_UNKNOWN_UNIT_CODE)
        weight = round(abs(reading.value) * 10**d)
        tare = round(self.state.tare * 10**d)
        out_of_range = reading.overload or reading.underload or weight > 999_999
        if out_of_range:
            weight = 0
        # Bit 5 of every status byte is always 1 (WILDCAT tables 6-9..6-11).
        a = 0x20 | (d + 2) | 0x08  # decimal point code, increment x1
        b = (
            0x20
            | (0x01 if reading.net else 0)
            | (0x02 if reading.value < 0 or reading.underload else 0)
            | (0x04 if out_of_range else 0)
            | (0x00 if reading.stable else 0x08)
            | (0x10 if unit == "kg" else 0)
        )
        c = 0x20 | unit_code
        frame = bytes([STX, a, b, c]) + f"{weight:06d}{tare:06d}".encode("ascii") + bytes([CR])
        if self.model.toledo_checksum:
            frame += bytes([-sum(frame) & 0x7F])
        return frame


class ScaleSimulator:
    """A scale on a serial port path (``serial_path``, e.g. a NullModem end) and/or on TCP.

    ``async with ScaleSimulator(model, serial_path=link.b_path, tcp=True) as scale:`` then talk
    to ``link.a_path`` or ``127.0.0.1:scale.port``. Both share one load, zero and tare (one
    scale, two cables), and each TCP client is its own conversation.
    """

    def __init__(
        self,
        model: ScaleModel | None = None,
        *,
        serial_path: str | os.PathLike[str] | None = None,
        tcp: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if serial_path is None and not tcp:
            raise ValueError("give the simulator a serial_path, tcp=True, or both")
        self.model = model or ScaleModel()
        self.serial_path = serial_path
        self.tcp = tcp
        self.host = host
        self.port = port
        self.faults = Faults()
        self.commands: list[str] = []
        """Every command received, in order, over every connection."""
        self.writes = 0
        """Writes to any wire (a split reply counts each part, a merged batch once)."""
        self.bytes_received = 0
        self.silenced = 0
        """Replies and streamed readings swallowed by :attr:`Faults.silent`."""
        self._state: ScaleState | None = None
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], _Session] = {}

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._state is None:
            self._state = ScaleState(self.model, loop.time())
        try:
            if self.serial_path is not None:
                self._serve(_PtyWire(self.serial_path), f"scale {self.serial_path}")
            if self.tcp:
                self._server = await asyncio.start_server(self._on_client, self.host, self.port)
                self.port = self._server.sockets[0].getsockname()[1]
        except BaseException:
            await self.close()
            raise
        log.info("simulated %s scale on %s", self.model.protocol, self._where())

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # no new clients; 3.11 leaves the connected ones to us
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        for task in sessions:
            with suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> ScaleSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _where(self) -> str:
        places = [str(self.serial_path)] if self.serial_path is not None else []
        if self.tcp:
            places.append(f"{self.host}:{self.port}")
        return " and ".join(places)

    def _serve(self, wire: _Wire, name: str) -> None:
        session = _Session(self, wire, name)
        self._track(asyncio.create_task(session.run(), name=name), session)

    def _track(self, task: asyncio.Task[None], session: _Session) -> None:
        self._sessions[task] = session
        task.add_done_callback(self._sessions.pop)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Runs in the server's task for this client: that task is the conversation."""
        session = _Session(
            self, _TcpWire(reader, writer), f"scale tcp {writer.get_extra_info('peername')}"
        )
        task = asyncio.current_task()
        assert task is not None
        self._track(task, session)
        # Ends normally when close() cancels it: 3.11's start_server callback calls
        # task.exception(), which raises (and logs an ERROR) on a cancelled task.
        with suppress(asyncio.CancelledError):
            await session.run()

    # ---- the scenario and its ground truth ---------------------------------------------------

    @property
    def state(self) -> ScaleState:
        if self._state is None:
            raise RuntimeError("start() the simulator first")
        return self._state

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def place(self, load: float) -> Placement:
        """Put a load on the pan (replacing what was there): it ramps, then settles."""
        return self.state.place(load, self._now())

    def clear(self) -> Placement:
        """Take everything off the pan."""
        return self.place(0.0)

    @property
    def placements(self) -> list[Placement]:
        return list(self.state.placements)

    def expected_weight(self) -> float:
        """What a stable reading will show for the current load (after zero and tare)."""
        return self.state.expected_weight()

    def zero_key(self) -> bool:
        """Press ZERO on the scale itself; False when outside the zero range."""
        return self.state.zero(self._now()) is None

    def tare_key(self) -> bool:
        """Press TARE on the scale itself; False when outside the taring range."""
        return self.state.take_tare(self._now()) is None

    def inject_garbage(self, data: bytes) -> None:
        """Send ``data`` in front of the next reply (or the next streamed reading)."""
        self.faults.garbage += data

    # ---- introspection for tests -------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._sessions)

    @property
    def repeating(self) -> bool:
        """Whether some conversation is running ``SIR``."""
        return any(s.repeating for s in self._sessions.values())
