"""A fixed UHF RFID reader at a station, printing tag reads as text lines, for tests and demos.

Why a simulator: what the agent must get right is *which* tag was in the field *when*, from a
stream where each tag is read many times a second on several antennas, with the odd broken
line. The reader here plays a known schedule (:class:`TagScene`), so a test knows, without
asking anyone, which tags were in the field at any moment and which lines went out.

The scene (pure, like :class:`~simulators.station.StationModel`): part ``k`` (0, 1, 2 ...)
carries a tag whose EPC is an SGTIN-96 built by epcpy from the scene's GTIN and serial number
``first_serial + k`` (the numeric part of the station's ``SN00000001``: SGTIN-96 holds
numeric serials only). The tag is in the field from ``t0 + k * cycle_time`` for ``dwell``
seconds; with ``dwell > cycle_time`` visits overlap and several tags are in the field at
once. Reads follow a fixed grid of ``reads_per_second`` ticks: at tick ``i`` (time
``t0 + i / reads_per_second``) every tag in the field is read once, on antenna
``antennas[(i + k) % len(antennas)]``, with an RSSI that peaks mid-visit (-45 dBm by default)
and is 20 dB lower at the edges, 3 dB lower per antenna index, plus a deterministic ripple
of up to 0.9 dB. :meth:`TagScene.for_station` lines a scene up with a station's cycles (same
``t0``, cycle time and serial numbers). Times are ``time.monotonic()``, as the station's.

Lines (:func:`format_line`) use the preset names of ``drivers.rfid.reads`` (``epc``, ``csv``,
``alien-text``, ``impinj-json``) but are written here independently of the parser, so a test
cannot pass on a bug both sides share. Each line ends with ``line_end`` (CRLF by default).

The reader (:class:`RfidReaderSim`) writes its lines either on a serial port, the end of a
:class:`~simulators.serial_link.NullModem` given as ``serial_port`` (the agent opens the other
end), or as a TCP server on 127.0.0.1 (port 0 picks a free one, known after ``start``; every
connected client gets every line). A line written with nobody listening is lost
(``delivered`` False), as on a wire. On a pty, bytes the agent's side cannot take yet wait
(up to 64 KiB; past that lines are dropped, ``delivered`` False); a TCP client that stops
reading loses lines once 256 KiB wait for it. If the cable is unplugged the port is closed,
and reopened by path on the following ticks once it is back.

The reader runs on the tick grid; ticks it missed (the event loop was busy) are skipped and
counted in ``skipped_ticks``, like reads a busy reader never made. Nothing is ever sent late.

Faults, on demand (:meth:`RfidReaderSim.inject`), each sent once at the next tick, before the
tick's reads: ``garbage`` (bytes that are no read in any format, with a C0 control and bytes
that are not UTF-8), ``truncated`` (a line holding only the first 13 hex digits of the current
part's EPC: an odd count, so no format can take it for a read) and ``non_hex`` (a complete
line in the reader's format whose EPC has two digits replaced by ``G`` and ``Z``).

Ground truth: :meth:`TagScene.visit`, :meth:`TagScene.in_field` and
:meth:`TagScene.visits_between` say which tags were in the field when; :attr:`RfidReaderSim.sent`
holds every line that went out (or was lost), with its tick time, visit, EPC, antenna, RSSI.

No threads; one task (the tick loop) plus one per TCP client, all ended by
:meth:`RfidReaderSim.stop`, which re-raises what the tick loop died of, so a broken simulator
fails its test instead of going quiet. Start, use and stop it on one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from epcpy.epc_schemes.sgtin import SGTIN, SGTINFilterValue
from epcpy.utils.common import ConvertException

from simulators.station import GTIN, StationModel

__all__ = [
    "FORMATS",
    "Fault",
    "LineKind",
    "RfidReaderSim",
    "SentLine",
    "SimRead",
    "TagScene",
    "TagVisit",
    "format_line",
    "sgtin96",
]

log = logging.getLogger(__name__)

FORMATS = ("epc", "csv", "alien-text", "impinj-json")
"""Line formats the simulator writes (named as the parser's presets)."""
CRLF = b"\r\n"
_PENDING_MAX = 64 * 1024
_CLIENT_BUFFER_MAX = 256 * 1024
_GARBAGE = b"\x15\xfe\xff?##~~noise~~##"


@functools.lru_cache(maxsize=4096)
def sgtin96(gtin: str, serial: int, company_prefix_length: int = 7, filter_value: int = 1) -> str:
    """The SGTIN-96 EPC (upper-case hex) of GTIN ``gtin`` and serial number ``serial``,
    encoded by epcpy. ValueError if they do not fit SGTIN-96."""
    try:
        sgtin = SGTIN.from_gtin_plus_serial(gtin, str(serial), company_prefix_length)
        if sgtin.gtin() != gtin.zfill(14):  # epcpy recomputes the check digit
            raise ValueError(f"wrong check digit, the GTIN would be {sgtin.gtin()}")
        coding, fv = SGTIN.BinaryCodingScheme.SGTIN_96, SGTINFilterValue(str(filter_value))
        sgtin.tag_uri(coding, fv)  # checks the serial's SGTIN-96 range; hex() does not
        return sgtin.hex(binary_coding_scheme=coding, filter_value=fv).upper()
    except (ConvertException, ValueError) as exc:
        raise ValueError(
            f"GTIN {gtin} with serial {serial} (company prefix length "
            f"{company_prefix_length}, filter {filter_value}) is not an SGTIN-96: {exc}"
        ) from None


@dataclass(frozen=True)
class TagVisit:
    """Ground truth: one tag's time in the field (``enters`` <= t < ``leaves``)."""

    k: int
    epc: str
    gtin: str
    serial: int
    enters: float
    leaves: float


@dataclass(frozen=True)
class SimRead:
    """One read the scene makes at one tick (before formatting)."""

    tick: int
    at: float
    """The tick's time (monotonic)."""
    k: int
    epc: str
    antenna: int
    rssi: float


@dataclass(frozen=True)
class TagScene:
    """Which tag is in the reader's field when, and how it is read (see the module doc)."""

    gtin: str = GTIN
    company_prefix_length: int = 7
    first_serial: int = 1
    cycle_time: float = 1.0
    dwell: float = 0.6
    t0: float | None = None
    """Monotonic time part 0 enters; None: when the reader starts."""
    reads_per_second: float = 20.0
    """Reads of each tag in the field per second (the tick rate)."""
    antennas: tuple[int, ...] = (1, 2)
    filter_value: int = 1
    """SGTIN filter: 1 is "point of sale trade item"."""
    peak_rssi: float = -45.0

    def __post_init__(self) -> None:
        if not (self.cycle_time > 0 and self.dwell > 0 and self.reads_per_second > 0):
            raise ValueError("cycle_time, dwell and reads_per_second must be positive")
        if not self.antennas:
            raise ValueError("a reader needs at least one antenna")
        if self.first_serial < 0:
            raise ValueError("first_serial must not be negative")
        sgtin96(self.gtin, self.first_serial, self.company_prefix_length, self.filter_value)

    @classmethod
    def for_station(cls, model: StationModel, dwell_fraction: float = 0.6, **kw: Any) -> Self:
        """A scene with one tag per part of ``model``: same clock, cycles and serial numbers.
        Handshake stations run on the agent's pace, not the clock, and are refused."""
        if model.handshake:
            raise ValueError("a handshake station's cycles follow the agent, not the clock")
        return cls(
            first_serial=model.first_serial,
            cycle_time=model.cycle_time,
            dwell=model.cycle_time * dwell_fraction,
            t0=model.t0,
            **kw,
        )

    @property
    def interval(self) -> float:
        """Seconds between ticks."""
        return 1.0 / self.reads_per_second

    @property
    def origin(self) -> float:
        """``t0``; ValueError while it is not known yet."""
        if self.t0 is None:
            raise ValueError("the scene has no t0 yet: start the reader, or give one")
        return self.t0

    def serial(self, k: int) -> int:
        return self.first_serial + k

    def epc(self, k: int) -> str:
        """The EPC on part ``k``'s tag."""
        return sgtin96(self.gtin, self.serial(k), self.company_prefix_length, self.filter_value)

    def visit(self, k: int) -> TagVisit:
        enters = self.origin + k * self.cycle_time
        return TagVisit(k, self.epc(k), self.gtin, self.serial(k), enters, enters + self.dwell)

    def visits_between(self, start: float, end: float) -> list[TagVisit]:
        """Visits overlapping [start, end), in order."""
        t0 = self.origin
        first = max(0, math.floor((start - t0 - self.dwell) / self.cycle_time))
        last = math.floor((end - t0) / self.cycle_time)
        visits = (self.visit(k) for k in range(first, last + 1))
        return [v for v in visits if v.enters < end and v.leaves > start]

    def in_field(self, t: float) -> list[TagVisit]:
        """The tags in the field at ``t``."""
        return [v for v in self.visits_between(t, t + 1e-9) if v.enters <= t < v.leaves]

    def tick_time(self, tick: int) -> float:
        return self.origin + tick * self.interval

    def reads_at(self, tick: int) -> list[SimRead]:
        """What the reader reads at ``tick``: each tag in the field, once."""
        t = self.tick_time(tick)
        out = []
        for v in self.in_field(t):
            index = (tick + v.k) % len(self.antennas)
            phase = (t - v.enters) / self.dwell
            ripple = ((tick * 7919 + v.k * 104729) % 10) / 10
            rssi = self.peak_rssi - 20 * abs(2 * phase - 1) - 3 * index - ripple
            out.append(SimRead(tick, t, v.k, v.epc, self.antennas[index], round(rssi, 1)))
        return out


def format_line(fmt: str, epc: str, antenna: int, rssi: float, wall: float) -> str:
    """One read as reader ``fmt`` prints it (no line end); ``wall`` is the reader's clock
    (seconds since the epoch) for formats with a time stamp."""
    if fmt == "epc":
        return epc
    if fmt == "csv":
        return f"{epc},{antenna},{rssi:.1f}"
    stamp = datetime.fromtimestamp(wall, UTC)
    if fmt == "alien-text":
        grouped = " ".join(epc[i : i + 4] for i in range(0, len(epc), 4))
        when = stamp.strftime("%Y/%m/%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"
        return f"Tag:{grouped}, Disc:{when}, Last:{when}, Count:1, Ant:{antenna}, Proto:2"
    if fmt == "impinj-json":
        record = {
            "antennaPort": antenna,
            "epc": epc,
            "firstSeenTimestamp": stamp.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "peakRssi": round(rssi),
            "isHeartBeat": False,
        }
        return json.dumps(record, separators=(",", ":"))
    raise ValueError(f"unknown line format {fmt!r}; use one of {', '.join(FORMATS)}")


class Fault(StrEnum):
    GARBAGE = "garbage"
    TRUNCATED = "truncated"
    NON_HEX = "non_hex"


class LineKind(StrEnum):
    READ = "read"
    GARBAGE = Fault.GARBAGE.value
    TRUNCATED = Fault.TRUNCATED.value
    NON_HEX = Fault.NON_HEX.value


@dataclass(frozen=True)
class SentLine:
    """One line as it went out (or was lost)."""

    kind: LineKind
    data: bytes
    """The bytes written, line end included."""
    tick: int
    at: float
    """The tick's time (monotonic)."""
    delivered: bool
    """Whether a peer could receive it (a serial port open, or a TCP client connected)."""
    k: int | None = None
    """The visit (part) the line is about; None for garbage."""
    epc: str | None = None
    antenna: int | None = None
    rssi: float | None = None

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace").rstrip("\r\n")


# ---- wires ----------------------------------------------------------------------------------


class _Wire(ABC):
    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    def send(self, data: bytes) -> bool:
        """Hand ``data`` over; False when nobody could receive it (it is lost)."""

    @abstractmethod
    async def close(self) -> None: ...


class _SerialWire(_Wire):
    """Writes to a serial port by path (a NullModem end); reopens it after a hang-up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._pending = bytearray()
        self.dropped_bytes = 0

    async def open(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)

    def send(self, data: bytes) -> bool:
        if self._fd is None and not self._reopen():
            return False
        if len(self._pending) + len(data) > _PENDING_MAX:
            self.dropped_bytes += len(data)
            return False
        self._pending += data
        self._flush()
        return self._fd is not None

    def _flush(self) -> None:
        if self._fd is None or not self._pending:
            return
        try:
            written = os.write(self._fd, self._pending)
        except BlockingIOError:
            return
        except OSError:  # EIO: the cable was unplugged; try the path again next time
            self._drop_fd()
            return
        del self._pending[:written]

    def _reopen(self) -> bool:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return False
        log.info("simulated RFID reader: %s open again", self.path)
        return True

    def _drop_fd(self) -> None:
        fd, self._fd = self._fd, None
        self._pending.clear()
        if fd is not None:
            os.close(fd)

    async def close(self) -> None:
        self._drop_fd()


class _TcpWire(_Wire):
    """A TCP server; each connected client gets every line. Clients are ended by closing
    their socket, never by cancelling their handler (asyncio logs that as an error)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.connections = 0
        self.changed = asyncio.Event()
        self.dropped_lines = 0

    @property
    def clients(self) -> int:
        return len(self._writers)

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        self.changed.set()
        try:
            while await reader.read(4096):  # a reader ignores what the host sends
                pass
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            self.changed.set()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)

    def send(self, data: bytes) -> bool:
        delivered = False
        for writer in list(self._writers):
            if writer.is_closing():
                continue
            if writer.transport.get_write_buffer_size() > _CLIENT_BUFFER_MAX:
                self.dropped_lines += 1  # a client that does not read loses lines
                continue
            writer.write(data)
            delivered = True
        return delivered

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.close()
        handlers = list(self._handlers)
        if handlers:
            await asyncio.wait(handlers, timeout=5.0)
        if server is not None:
            await server.wait_closed()


# ---- the reader -----------------------------------------------------------------------------


class RfidReaderSim:
    """A reader playing ``scene`` as ``fmt`` lines on a serial port or a TCP server.

    Give exactly one of ``serial_port`` (a path, e.g. ``NullModem.b_path``) and ``tcp=True``
    (``host``/``port``; port 0 picks one, see :attr:`port` after :meth:`start`).
    """

    def __init__(
        self,
        scene: TagScene,
        *,
        fmt: str = "csv",
        serial_port: str | os.PathLike[str] | None = None,
        tcp: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        line_end: bytes = CRLF,
        history: int = 100_000,
    ) -> None:
        if (serial_port is None) == (not tcp):
            raise ValueError("give exactly one of serial_port and tcp=True")
        format_line(fmt, scene.epc(0), scene.antennas[0], scene.peak_rssi, 0.0)  # fmt known?
        self.scene = scene
        """The scene; its ``t0`` is resolved by :meth:`start` when it was None."""
        self.fmt = fmt
        self.line_end = line_end
        self.sent: deque[SentLine] = deque(maxlen=history)
        """Every line sent (or lost), oldest first; the last ``history`` of them."""
        self.skipped_ticks = 0
        self._wire: _Wire = (
            _SerialWire(Path(serial_port)) if serial_port is not None else _TcpWire(host, port)
        )
        self._faults: deque[Fault] = deque()
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The TCP port (after :meth:`start`)."""
        if not isinstance(self._wire, _TcpWire):
            raise AttributeError("a serial reader has no TCP port")
        return self._wire.port

    @property
    def clients(self) -> int:
        """TCP clients connected now (0 for a serial reader)."""
        return self._wire.clients if isinstance(self._wire, _TcpWire) else 0

    async def wait_clients(self, n: int = 1, within: float = 5.0) -> None:
        """Wait until at least ``n`` TCP clients are connected; TimeoutError otherwise."""
        if not isinstance(self._wire, _TcpWire):
            raise TypeError("a serial reader has no clients")
        wire = self._wire
        async with asyncio.timeout(within):
            while wire.clients < n:
                wire.changed.clear()
                await wire.changed.wait()

    def reads(self) -> list[SentLine]:
        """The read lines sent so far (no faults)."""
        return [s for s in self.sent if s.kind is LineKind.READ]

    def inject(self, fault: Fault, count: int = 1) -> None:
        """Send ``count`` lines of ``fault`` at the next tick, before its reads."""
        self._faults.extend([fault] * count)

    async def start(self) -> None:
        if self._task is not None:
            return
        if self.scene.t0 is None:
            self.scene = replace(self.scene, t0=time.monotonic())
        await self._wire.open()
        self._task = asyncio.create_task(self._run(), name="rfid-reader-sim")

    async def stop(self) -> None:
        """Stop reading, close the port or server; re-raise what the tick loop died of."""
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            await self._wire.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        scene = self.scene
        interval = scene.interval
        tick = math.floor((time.monotonic() - scene.origin) / interval)
        while True:
            due = scene.tick_time(tick)
            while (delay := due - time.monotonic()) > 0:  # noqa: ASYNC110 (a clock, not a flag)
                await asyncio.sleep(delay)
            late = math.floor((time.monotonic() - due) / interval)
            if late > 0:  # the loop was busy: those reads were never made
                self.skipped_ticks += late
                tick += late
                due = scene.tick_time(tick)
            self._emit(tick, due)
            tick += 1

    def _emit(self, tick: int, at: float) -> None:
        wall = time.time()
        while self._faults:
            self._emit_fault(self._faults.popleft(), tick, at, wall)
        for r in self.scene.reads_at(tick):
            line = format_line(self.fmt, r.epc, r.antenna, r.rssi, wall)
            self._send(LineKind.READ, line.encode(), tick, at, r.k, r.epc, r.antenna, r.rssi)

    def _emit_fault(self, fault: Fault, tick: int, at: float, wall: float) -> None:
        t = self.scene.tick_time(tick)
        k = max(0, math.floor((t - self.scene.origin) / self.scene.cycle_time))
        epc = self.scene.epc(k)
        antenna, rssi = self.scene.antennas[0], self.scene.peak_rssi
        if fault is Fault.GARBAGE:
            self._send(LineKind.GARBAGE, _GARBAGE, tick, at)
        elif fault is Fault.TRUNCATED:
            self._send(LineKind.TRUNCATED, epc[:13].encode(), tick, at, k, epc)
        else:
            spoiled = epc[:10] + "GZ" + epc[12:]
            line = format_line(self.fmt, spoiled, antenna, rssi, wall)
            self._send(LineKind.NON_HEX, line.encode(), tick, at, k, spoiled, antenna, rssi)

    def _send(
        self,
        kind: LineKind,
        payload: bytes,
        tick: int,
        at: float,
        k: int | None = None,
        epc: str | None = None,
        antenna: int | None = None,
        rssi: float | None = None,
    ) -> None:
        data = payload + self.line_end
        delivered = self._wire.send(data)
        self.sent.append(SentLine(kind, data, tick, at, delivered, k, epc, antenna, rssi))
