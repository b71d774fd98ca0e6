"""Barcode scanners for the station scenario, so the agent's scanner input is tested on a
real wire against a known ground truth.

Why a simulator and not recorded bytes: what matters for traceability is *which part* a scan
belongs to, *when* it came, and what the agent answered. The scanners here read the same
:class:`~simulators.station.StationModel` as the PLC simulators, on the same clock
(``time.monotonic()``, ``t0`` = start of cycle 0), so the scan of cycle N goes out when cycle
N starts and carries part N's serial and lot: a test knows, without asking anyone, which
serial the PLC shows while a scan arrives. Everything sent and received is kept as ground
truth (:attr:`ScannerBase.scans`, :attr:`ScannerBase.wire`, :attr:`ScannerBase.feedback`).

Two kinds of scanner
  * :class:`HandheldScanner` -- a handheld or presentation scanner: it scans each part as it
    arrives (phase ``scan_phase`` of its cycle, 0 = the moment it arrives), plus material
    labels at configured moments (:class:`MaterialScan`) or on demand.
  * :class:`TriggeredReader` -- a fixed-mount reader (Keyence SR / Cognex DataMan style): the
    host sends a trigger (``LON\\r``), the reader answers with the current part's code after
    the decode time, or with the no-read text when the read window closes (``LOFF\\r`` or the
    read timeout) with nothing decodable.

What a part scan holds (:func:`part_code`): the AIM identifier (``]d2`` by default, or none),
then the GS1 element string ``01`` GTIN-14, ``21`` serial and, optionally, GS ``10`` lot (AI 21
has variable length, so GS ends it; nothing ends the last field). Then the framing: a CR, LF or
CRLF suffix, or STX ... ETX. The GTIN's check digit is computed with biip
(:func:`gtin14`), and the first part's code is parsed with biip when a scanner is built, so a
configuration that could not produce valid GS1 fails at start-up.

Serials and lots in GS1 (:func:`gs1_value`): AI 21 and AI 10 allow only the 82 characters of
GS1 "CSET 82" (``!"%&'()*+,-./0-9:;<=>?A-Z_a-z``) and at most 20 of them. The station's serials
(``SN00000001``; the line rig uses ``A-00000001``) are plain, but a prefix with a space, ``#``
or a non-ASCII letter would not be: such a character is percent-encoded as UTF-8 (``%20``,
``%23``, ``%C3%A9``), and so is ``%`` itself (``%25``), as GS1 Digital Link does. The mapping
is therefore reversible (URL unquoting gives the station serial back), ``ScanRecord.serial``
holds the value as sent, and a mapped value longer than 20 characters is a configuration error.

Faults (:class:`Fault`), by rate (``Faults.rates``, one seeded draw per part scan, so a run is
repeatable) or on demand (:meth:`ScannerBase.inject`, taking precedence over the rates):
  * ``no_read``: the no-read text (``NOREAD``) instead of the code;
  * ``bad_check_digit``: the code with the GTIN's check digit off by one;
  * ``garbage``: random bytes (at least one C0 control, never GS nor a framing byte, so it is
    still exactly one frame) in the framing;
  * ``split``: the good frame written in ``split_into`` pieces, ``split_pause`` apart;
  * ``merged``: the good frame is held back and written in one write together with the next
    frame (whatever that is), as a buffering serial server would; until then its ``sent_at``
    is None;
  * ``overlong``: the code padded with ``X`` to ``max_length + 1`` bytes before the framing.
``split`` and ``merged`` frames carry a valid code (``valid`` True); the others do not.

Host feedback: every byte the agent sends back is recorded (:class:`Feedback`) with its arrival
time and the scan it follows (the last scan whose last byte had been handed to the wire), so a
test can assert that the good-read answer came only after the agent committed the scan, and
measure scan -> answer latency. ``HostAck.good``/``bad`` default to Honeywell's host ACK
(ESC 7 / ESC 8). With ``HostAck.wait`` the scanner works in host ACK mode: after each write it
sends nothing more until every scan of that write was answered (good or bad) or
``HostAck.timeout`` passed (``ScanRecord.ack_timeout``). Scans due meanwhile are sent late, in
order, none skipped (``started_at - due`` says how late).

Transports: :class:`PtyTransport` (a :class:`~simulators.serial_link.NullModem`; the scanner
holds one end, the agent opens ``agent_path``), :class:`TcpServerTransport` (the agent connects,
as to a reader in TCP server mode; one connection at a time, the newest wins) and
:class:`TcpClientTransport` (the scanner connects to the agent's port, retrying until it
listens and after every disconnect). A frame written while no peer is connected is lost, as on
a real network (``delivered`` False); on a pty it waits in the agent side's queue, which
pyserial flushes when it opens the port, as on a real wire.

No threads: the pty is read with ``loop.add_reader`` on the simulator's own file descriptor
(non-blocking), TCP with asyncio streams. All tasks belong to the scanner and are cancelled
and awaited by :meth:`ScannerBase.close`, which then re-raises the first exception any of them
died of, so a broken simulator fails the test instead of going quiet. A scanner must be
started, used and closed on one event loop.

Not simulated: handshake stations (their cycles follow the agent, not the clock, so a scanner
cannot know when a part arrives: building a scanner for one is an error); re-opening a
:class:`PtyTransport` after its :class:`NullModem` was unplugged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import random
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Self

from biip import ParseConfig, ParseError
from biip.checksums import gs1_standard_check_digit
from biip.gs1_messages import GS1Message

from simulators.serial_link import NullModem
from simulators.station import GTIN, StationModel

__all__ = [
    "CR",
    "CRLF",
    "GS",
    "HONEYWELL_BAD",
    "HONEYWELL_GOOD",
    "LF",
    "STX_ETX",
    "Fault",
    "Faults",
    "Feedback",
    "Framing",
    "HandheldScanner",
    "HostAck",
    "MaterialScan",
    "PtyTransport",
    "ScanRecord",
    "ScannerBase",
    "ScannerConfig",
    "Symbol",
    "TcpClientTransport",
    "TcpServerTransport",
    "Transport",
    "Trigger",
    "TriggerConfig",
    "TriggeredReader",
    "Write",
    "gs1_value",
    "gtin14",
    "lot_label",
    "part_code",
]

log = logging.getLogger(__name__)

GS = "\x1d"
"""The GS1 separator (ASCII 29) ending a variable-length field."""
HONEYWELL_GOOD = b"\x1b7"
"""Honeywell host ACK: good read (ESC 7)."""
HONEYWELL_BAD = b"\x1b8"
"""Honeywell host ACK: bad read (ESC 8)."""

_CHUNK = 4096
_GS1_MAX = 20  # AI 10 and AI 21: X..20
# GS1 "CSET 82" (GS1 General Specifications, figure 7.11-1): what AI 10 and 21 may contain.
_CSET82 = frozenset(
    "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
)
_SAFE = _CSET82 - {"%"}
_BIIP = ParseConfig(gs1_element_strings_verify_date=True, separator_chars=(GS,))


# ---- configuration ------------------------------------------------------------------------


class Fault(StrEnum):
    """What can go wrong with one part scan (see the module doc)."""

    NO_READ = "no_read"
    BAD_CHECK_DIGIT = "bad_check_digit"
    GARBAGE = "garbage"
    SPLIT = "split"
    MERGED = "merged"
    OVERLONG = "overlong"


_VALID_DATA = frozenset({Fault.SPLIT, Fault.MERGED})
"""Faults of the wire only: the code they carry is still the part's valid code."""


@dataclass(frozen=True)
class Framing:
    """What surrounds each code on the wire."""

    prefix: bytes = b""
    suffix: bytes = b"\r"

    def frame(self, payload: bytes) -> bytes:
        return self.prefix + payload + self.suffix

    @property
    def reserved(self) -> frozenset[int]:
        """Bytes a payload must not contain (it would end the frame early)."""
        return frozenset(self.prefix + self.suffix)


CR = Framing(suffix=b"\r")
LF = Framing(suffix=b"\n")
CRLF = Framing(suffix=b"\r\n")
STX_ETX = Framing(prefix=b"\x02", suffix=b"\x03")


@dataclass(frozen=True)
class Symbol:
    """How the part's DataMatrix is encoded."""

    aim: str | None = "]d2"
    """AIM symbology identifier sent before the data; None: the scanner does not send one."""
    gtin: str = GTIN
    """The product's GTIN: 14 digits with a valid check digit, or 13 (it is computed)."""
    lot: bool = True
    """Append ``10`` + the part's lot (after a GS)."""


@dataclass(frozen=True)
class Faults:
    """Fault rates and shapes. Rates are probabilities per part scan; their sum is at most 1."""

    rates: Mapping[Fault, float] = field(default_factory=dict)
    seed: int = 0
    split_into: int = 3
    split_pause: float = 0.02
    garbage_length: int = 12
    max_length: int = 256
    """The longest payload the agent is expected to accept; ``overlong`` exceeds it by 1."""


@dataclass(frozen=True)
class HostAck:
    """The agent's answers to scans, and host ACK mode."""

    good: bytes = HONEYWELL_GOOD
    bad: bytes = HONEYWELL_BAD
    wait: bool = False
    """Host ACK mode: hold further scans until the last write's scans are answered."""
    timeout: float = 1.0
    """How long host ACK mode waits before going on without an answer."""


@dataclass(frozen=True)
class MaterialScan:
    """A component or material label scanned at phase ``phase`` of cycle ``cycle``."""

    cycle: int
    code: str
    """Exactly what the scanner decodes, e.g. ``lot_label("LOT4711")`` or ``"LOT4711"``."""
    phase: float = 0.5
    valid: bool = True


@dataclass(frozen=True)
class ScannerConfig:
    symbol: Symbol = field(default_factory=Symbol)
    framing: Framing = CR
    no_read_text: str = "NOREAD"
    faults: Faults = field(default_factory=Faults)
    ack: HostAck = field(default_factory=HostAck)
    materials: Sequence[MaterialScan] = ()
    """(Handheld only) material labels scanned at fixed moments of the scenario."""
    scan_phase: float = 0.0
    """(Handheld only) phase of its cycle at which a part is scanned; 0: as it arrives."""
    auto: bool = True
    """(Handheld only) scan every part by itself; False: only on demand."""
    first_cycle: int | None = None
    """(Handheld only) the first part scanned; None: the first whose scan moment is not
    before ``start()``."""
    max_scans: int | None = None
    """(Handheld only) stop scanning parts by schedule after this many."""


@dataclass(frozen=True)
class TriggerConfig:
    """A fixed-mount reader's trigger protocol (Keyence SR defaults)."""

    on: bytes = b"LON\r"
    off: bytes = b"LOFF\r"
    decode_time: float = 0.05
    """From the trigger to the answer of a readable code."""
    read_timeout: float = 1.0
    """From the trigger to the no-read answer when nothing is decodable."""


# ---- ground truth -------------------------------------------------------------------------

ScanKind = Literal["part", "material"]
Verdict = Literal["good", "bad", "unknown"]


@dataclass
class ScanRecord:
    """One scan, as the scanner meant it and as it went out. Times are ``time.monotonic()``."""

    seq: int
    kind: ScanKind
    cycle: int
    """The part scanned (for a material, the part at the station when it was scanned)."""
    payload: bytes
    """What the scanner decoded (or the no-read text, or garbage), without framing."""
    frame: bytes
    """``payload`` in its framing: exactly this scan's bytes on the wire."""
    valid: bool
    """Whether it was meant to be a valid code."""
    fault: Fault | None
    due: float
    """When it was meant to go out (cycle start + scan phase, trigger + decode time, ...)."""
    serial: str | None = None
    """The AI 21 value sent (see :func:`gs1_value`); None when the payload carries none."""
    lot: str | None = None
    """The AI 10 value sent, if any."""
    detail: str = ""
    """Why, for no-reads of a triggered reader: ``"timeout"`` or ``"off"``."""
    started_at: float | None = None
    """When its first byte was handed to the transport; None while held back."""
    sent_at: float | None = None
    """When its last byte was handed to the transport; None while held back."""
    delivered: bool | None = None
    """False when no peer was connected (TCP): lost. None while not sent."""
    ack_timeout: bool = False
    """Host ACK mode gave up waiting for an answer to this scan."""

    @property
    def text(self) -> str:
        return self.payload.decode("latin-1")


@dataclass(frozen=True)
class Write:
    """One write to the transport."""

    at: float
    data: bytes
    seqs: tuple[int, ...]
    """The scans whose bytes it (partly) carries."""


@dataclass(frozen=True)
class Feedback:
    """Bytes the agent sent back."""

    at: float
    data: bytes
    verdict: Verdict
    after: int | None
    """Seq of the last scan completely written before these bytes arrived."""
    latency: float | None
    """``at`` minus that scan's ``sent_at``."""


@dataclass
class Trigger:
    """A trigger command a :class:`TriggeredReader` received."""

    at: float
    command: Literal["on", "off"]
    ignored: bool = False
    """``on`` while a read window was open, ``off`` while none was."""
    answer: int | None = None
    """Seq of the scan answering it (for ``on``)."""


# ---- pure helpers -------------------------------------------------------------------------


def gtin14(digits: str) -> str:
    """A GTIN-14: 13 digits get their check digit appended; 14 must have the right one."""
    if not digits.isascii() or not digits.isdigit() or len(digits) not in (13, 14):
        raise ValueError(f"a GTIN-14 is 13 or 14 digits, not {digits!r}")
    check = str(gs1_standard_check_digit(digits[:13]))
    if len(digits) == 13:
        return digits + check
    if digits[13] != check:
        raise ValueError(f"GTIN {digits} has check digit {digits[13]}, expected {check}")
    return digits


def gs1_value(text: str) -> str:
    """``text`` in GS1 CSET 82: other characters and ``%`` itself percent-encoded (UTF-8)."""
    # Not urllib.parse.quote: it never encodes "~", which CSET 82 lacks.
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def _spoil_check_digit(gtin: str) -> str:
    return gtin[:13] + str((int(gtin[13]) + 1) % 10)


def part_code(
    model: StationModel, cycle: int, symbol: Symbol = Symbol(), *, bad_check_digit: bool = False
) -> str:
    """The part's DataMatrix as a scanner sends it, without framing:
    ``[aim] 01 <GTIN> 21 <serial> [GS 10 <lot>]``."""
    gtin = gtin14(symbol.gtin)
    if bad_check_digit:
        gtin = _spoil_check_digit(gtin)
    code = f"{symbol.aim or ''}01{gtin}21{gs1_value(model.serial(cycle))}"
    if symbol.lot:
        code += f"{GS}10{gs1_value(model.lot(cycle))}"
    return code


def lot_label(lot: str, gtin: str = GTIN, aim: str | None = "]d2") -> str:
    """A GS1 material label: ``[aim] 01 <GTIN> 10 <lot>`` (lot mapped like a serial)."""
    return f"{aim or ''}01{gtin14(gtin)}10{gs1_value(lot)}"


def _gs1_check(label: str, data: str) -> None:
    """Raise ValueError unless ``data`` is a valid GS1 element string (biip, check digits)."""
    try:
        message = GS1Message.parse(data, config=_BIIP)
    except ParseError as exc:
        raise ValueError(f"{label} is not valid GS1: {exc}") from None
    for es in message.element_strings:
        bad = es.gtin_error or es.sscc_error or es.gln_error
        if bad:
            raise ValueError(f"{label} is not valid GS1: {bad}")


def _strip_aim(code: str, aim: str | None) -> str:
    return code[len(aim) :] if aim and code.startswith(aim) else code


def _check_config(model: StationModel, config: ScannerConfig, extra: Sequence[bytes]) -> None:
    """Every configuration error, found before anything runs."""
    problems: list[str] = []
    if model.handshake:
        problems.append(
            "a handshake station's cycles follow the agent, not the clock: a scanner cannot "
            "know when its parts arrive"
        )
    if not config.framing.suffix:
        problems.append("framing.suffix must not be empty (it ends each frame)")
    reserved = config.framing.reserved
    symbol = config.symbol
    try:
        gtin14(symbol.gtin)
    except ValueError as exc:
        problems.append(f"symbol.gtin: {exc}")
    else:
        cycle = config.first_cycle or 0
        too_long = [
            f"the station's {name} {value!r} is {gs1_value(value)!r} in GS1, longer than "
            f"{_GS1_MAX} characters"
            for name, value in (("serial", model.serial(cycle)), ("lot", model.lot(cycle)))
            if len(gs1_value(value)) > _GS1_MAX
        ]
        problems += too_long
        if not too_long:
            code = part_code(model, cycle, symbol)
            try:
                _gs1_check(f"part code {code!r}", _strip_aim(code, symbol.aim))
            except ValueError as exc:
                problems.append(str(exc))
            if reserved & set(code.encode("latin-1")):
                problems.append(f"part code {code!r} contains a framing byte")
    try:
        no_read = config.no_read_text.encode("ascii")
    except UnicodeEncodeError:
        problems.append(f"no_read_text {config.no_read_text!r} is not ASCII")
    else:
        if not no_read or reserved & set(no_read):
            problems.append(f"no_read_text {config.no_read_text!r} is empty or holds framing")
    faults = config.faults
    for fault, rate in faults.rates.items():
        if not 0.0 <= rate <= 1.0:
            problems.append(f"faults.rates[{fault}] = {rate} is not a probability")
    if sum(faults.rates.values()) > 1.0:
        problems.append(f"faults.rates add up to {sum(faults.rates.values())}, more than 1")
    if faults.split_into < 2:
        problems.append("faults.split_into must be at least 2")
    if faults.split_pause < 0 or faults.garbage_length < 1 or faults.max_length < 1:
        problems.append("faults.split_pause, garbage_length and max_length must be positive")
    if not 0.0 <= config.scan_phase < 1.0:
        problems.append(f"scan_phase {config.scan_phase} is not in [0, 1)")
    for m in config.materials:
        if not 0.0 <= m.phase < 1.0 or m.cycle < 0:
            problems.append(f"material scan {m}: cycle must be >= 0 and phase in [0, 1)")
        try:
            if reserved & set(m.code.encode("latin-1")):
                problems.append(f"material scan {m.code!r} contains a framing byte")
        except UnicodeEncodeError:
            problems.append(f"material scan {m.code!r} is not Latin-1 (one byte a character)")
    if config.ack.timeout <= 0:
        problems.append("ack.timeout must be positive")
    tokens = [config.ack.good, config.ack.bad, *extra]
    for i, a in enumerate(tokens):
        if not a:
            problems.append("answer and trigger byte strings must not be empty")
        for b in tokens[i + 1 :]:
            if a and b and (a.startswith(b) or b.startswith(a)):
                problems.append(f"{a!r} and {b!r} cannot be told apart")
    if problems:
        raise ValueError("scanner configuration invalid: " + "; ".join(problems))


# ---- transports ---------------------------------------------------------------------------


class Transport(ABC):
    """A scanner's wire. ``send`` hands bytes over synchronously (so a scan's ``sent_at`` is
    taken before any answer can be read); ``drain`` waits until the OS took them."""

    def __init__(self) -> None:
        self._connected = asyncio.Event()

    @property
    def connected(self) -> bool:
        """A peer can receive what is sent now."""
        return self._connected.is_set()

    async def wait_connected(self, within: float = 5.0) -> None:
        """Wait until a peer is connected; TimeoutError after ``within`` seconds."""
        async with asyncio.timeout(within):
            await self._connected.wait()

    @abstractmethod
    async def open(self, on_data: Callable[[bytes], None]) -> None:
        """Start; every received chunk goes to ``on_data`` (called in the event loop)."""

    @abstractmethod
    def send(self, data: bytes) -> bool:
        """Hand ``data`` over; False when nobody could receive it (it is lost)."""

    @abstractmethod
    async def drain(self) -> None:
        """Wait until what was handed over has been taken by the OS."""

    @abstractmethod
    async def close(self) -> None: ...


class PtyTransport(Transport):
    """A virtual serial cable: the agent opens ``agent_path``; the scanner holds the other
    end, read with ``loop.add_reader`` (no thread)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        agent_name: str = "ttyAGENT",
        scanner_name: str = "ttySCANNER",
    ) -> None:
        super().__init__()
        self.link = NullModem(directory, agent_name, scanner_name)
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_data: Callable[[bytes], None] = lambda _data: None
        self._pending = b""
        self._flushed = asyncio.Event()
        self._flushed.set()

    @property
    def agent_path(self) -> Path:
        """The serial port the agent opens."""
        return self.link.a_path

    async def open(self, on_data: Callable[[bytes], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_data = on_data
        await self.link.start()
        try:
            fd = os.open(self.link.b_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            await self.link.close()
            raise
        self._fd = fd
        self._loop.add_reader(fd, self._readable)
        self._connected.set()

    def send(self, data: bytes) -> bool:
        if self._fd is None:
            return False
        if self._pending:
            self._pending += data
            return True
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError:  # EIO: the cable was unplugged
            self._hang_up()
            return False
        if written < len(data):
            self._pending = data[written:]
            self._flushed.clear()
            assert self._loop is not None
            self._loop.add_writer(self._fd, self._flush)
        return True

    async def drain(self) -> None:
        await self._flushed.wait()

    def _flush(self) -> None:
        if self._fd is None:
            return
        try:
            written = os.write(self._fd, self._pending)
        except BlockingIOError:
            return
        except OSError:
            self._hang_up()
            return
        self._pending = self._pending[written:]
        if not self._pending:
            assert self._loop is not None
            self._loop.remove_writer(self._fd)
            self._flushed.set()

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: hung up (NullModem.unplug)
            self._hang_up()
            return
        if not data:
            self._hang_up()
            return
        self._on_data(data)

    def _hang_up(self) -> None:
        """Stop using the fd (it would poll readable forever); it is closed by close()."""
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._pending = b""
        self._flushed.set()
        self._connected.clear()

    async def close(self) -> None:
        if self._fd is not None:
            self._hang_up()
            fd, self._fd = self._fd, None
            os.close(fd)
        await self.link.close()


class _StreamTransport(Transport):
    """One TCP connection at a time; reading runs in a task per connection."""

    def __init__(self) -> None:
        super().__init__()
        self._writer: asyncio.StreamWriter | None = None
        self._on_data: Callable[[bytes], None] = lambda _data: None
        self.connections = 0
        """Connections made so far."""

    def send(self, data: bytes) -> bool:
        writer = self._writer
        if writer is None or writer.is_closing():
            return False
        writer.write(data)
        return True

    async def drain(self) -> None:
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one connection until it ends; it is the current one until then."""
        self._writer = writer
        self.connections += 1
        self._connected.set()
        try:
            while data := await reader.read(_CHUNK):
                self._on_data(data)
        except ConnectionError:
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                self._connected.clear()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class TcpServerTransport(_StreamTransport):
    """The scanner listens (``port`` 0 picks a free one, known after ``open``); the agent
    connects. A new connection replaces the previous one, which is closed.

    Connections are ended by closing their socket, never by cancelling their handler: asyncio
    (3.11) logs a cancelled ``client_connected_cb`` task as an error."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def open(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            old = self._writer
            if old is not None:
                old.close()  # its handler sees EOF and ends
            await self._serve(reader, writer)
        finally:
            del self._handlers[task]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # stop listening
        for writer in self._handlers.values():
            writer.close()  # each handler reads EOF and ends
        if self._handlers:
            await asyncio.wait(list(self._handlers))
        if server is not None:
            await server.wait_closed()
        self._connected.clear()


class TcpClientTransport(_StreamTransport):
    """The scanner connects to the agent at ``host:port``, retrying every ``retry_interval``
    until it listens, and again after the connection ends."""

    def __init__(self, host: str, port: int, retry_interval: float = 0.05) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.retry_interval = retry_interval
        self.failed_attempts = 0
        self._task: asyncio.Task[None] | None = None

    async def open(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self._task = asyncio.create_task(
            self._connect_forever(), name=f"scanner-connect-{self.host}:{self.port}"
        )

    async def _connect_forever(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.failed_attempts += 1
            else:
                await self._serve(reader, writer)
            await asyncio.sleep(self.retry_interval)

    async def close(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._connected.clear()


# ---- scanners -----------------------------------------------------------------------------


class ScannerBase:
    """What both scanner kinds share: faults, framing, the wire, feedback, ground truth."""

    def __init__(
        self,
        model: StationModel,
        transport: Transport,
        config: ScannerConfig | None = None,
        *,
        extra_tokens: Sequence[bytes] = (),
    ) -> None:
        self.config = config or ScannerConfig()
        _check_config(model, self.config, extra_tokens)
        self.model = model
        """The station; its ``t0`` is resolved by ``start()`` when it was None."""
        self.transport = transport
        self.scans: list[ScanRecord] = []
        """Every scan made, in order (held ``merged`` ones included, with sent_at None)."""
        self.wire: list[Write] = []
        self.feedback: list[Feedback] = []
        self._rng = random.Random(self.config.faults.seed)
        self._injected: deque[Fault] = deque()
        self._held: list[ScanRecord] = []
        self._lock = asyncio.Lock()
        self._last_sent: ScanRecord | None = None
        self._answers = 0
        self._answered = asyncio.Event()
        self._rx = b""
        self._unknown = b""
        self._tokens: dict[bytes, str] = {self.config.ack.good: "good", self.config.ack.bad: "bad"}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._errors: list[BaseException] = []
        self._started = False
        self.started_at: float | None = None
        """When ``start()`` was called (monotonic)."""

    # -- life cycle

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("scanner already started")
        self._started = True
        self.started_at = time.monotonic()
        if self.model.t0 is None:
            self.model = replace(self.model, t0=self.started_at)
        await self.transport.open(self._on_data)

    async def close(self) -> None:
        """Stop every task, close the transport, then re-raise what a task died of."""
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.transport.close()
        if self._errors:
            raise self._errors[0]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("scanner task %s died", task.get_name(), exc_info=exc)
            self._errors.append(exc)

    # -- faults and scans

    def inject(self, fault: Fault, count: int = 1) -> None:
        """The next ``count`` part scans get ``fault`` (before any drawn by rate)."""
        self._injected.extend([fault] * count)

    def _next_fault(self) -> Fault | None:
        if self._injected:
            return self._injected.popleft()
        draw = self._rng.random()
        for fault in Fault:
            rate = self.config.faults.rates.get(fault, 0.0)
            if draw < rate:
                return fault
            draw -= rate
        return None

    def _record(
        self,
        kind: ScanKind,
        cycle: int,
        payload: bytes,
        *,
        valid: bool,
        fault: Fault | None,
        due: float,
        serial: str | None = None,
        lot: str | None = None,
        detail: str = "",
    ) -> ScanRecord:
        frame = self.config.framing.frame(payload)
        record = ScanRecord(
            len(self.scans), kind, cycle, payload, frame, valid, fault, due, serial, lot, detail
        )
        self.scans.append(record)
        return record

    def _part_record(self, cycle: int, fault: Fault | None, due: float) -> ScanRecord:
        cfg = self.config
        code = part_code(self.model, cycle, cfg.symbol)
        serial: str | None = gs1_value(self.model.serial(cycle))
        lot = gs1_value(self.model.lot(cycle)) if cfg.symbol.lot else None
        if fault is Fault.NO_READ:
            payload, serial, lot = cfg.no_read_text.encode("ascii"), None, None
        elif fault is Fault.BAD_CHECK_DIGIT:
            payload = part_code(self.model, cycle, cfg.symbol, bad_check_digit=True).encode()
        elif fault is Fault.GARBAGE:
            payload, serial, lot = self._garbage(), None, None
        elif fault is Fault.OVERLONG:
            payload = code.encode().ljust(cfg.faults.max_length + 1, b"X")
        else:
            payload = code.encode()
        return self._record(
            "part",
            cycle,
            payload,
            valid=fault is None or fault in _VALID_DATA,
            fault=fault,
            due=due,
            serial=serial,
            lot=lot,
        )

    def _no_read_record(self, cycle: int, due: float, why: str) -> ScanRecord:
        return self._record(
            "part",
            cycle,
            self.config.no_read_text.encode("ascii"),
            valid=False,
            fault=Fault.NO_READ,
            due=due,
            detail=why,
        )

    def _material_record(self, code: str, valid: bool, due: float) -> ScanRecord:
        return self._record(
            "material",
            self.model.cycle_at(due)[0],
            code.encode("latin-1"),
            valid=valid,
            fault=None,
            due=due,
        )

    def _garbage(self) -> bytes:
        """Line noise in one frame: random bytes that never end it early, one C0 control."""
        banned = self.config.framing.reserved | {0x1D}
        allowed = [b for b in range(256) if b not in banned]
        controls = [b for b in range(0x20) if b not in banned]
        n = self.config.faults.garbage_length
        out = [self._rng.choice(allowed) for _ in range(n)]
        out[self._rng.randrange(n)] = self._rng.choice(controls)
        return bytes(out)

    # -- the wire

    async def _emit(self, record: ScanRecord) -> None:
        """Write ``record`` (with any held frames), applying its wire fault; in host ACK mode
        also wait for the answers before releasing the wire."""
        async with self._lock:
            if record.fault is Fault.MERGED:
                self._held.append(record)
                return
            scans, self._held = [*self._held, record], []
            data = b"".join(s.frame for s in scans)
            seqs = tuple(s.seq for s in scans)
            if record.fault is Fault.SPLIT:
                n = min(self.config.faults.split_into, len(data))
                cuts = [len(data) * i // n for i in range(n + 1)]
                pieces = [data[a:b] for a, b in itertools.pairwise(cuts)]
            else:
                pieces = [data]
            answers_before = self._answers
            delivered = True
            for i, piece in enumerate(pieces):
                if i:
                    await asyncio.sleep(self.config.faults.split_pause)
                delivered = self.transport.send(piece) and delivered
                now = time.monotonic()
                self.wire.append(Write(now, piece, seqs))
                for s in scans:
                    if s.started_at is None:
                        s.started_at = now
                if i == len(pieces) - 1:
                    for s in scans:
                        s.sent_at = now
                        s.delivered = delivered
                    self._last_sent = scans[-1]
                await self.transport.drain()
            if self.config.ack.wait and delivered:
                await self._await_answers(scans, answers_before)

    async def _await_answers(self, scans: Sequence[ScanRecord], before: int) -> None:
        deadline = time.monotonic() + self.config.ack.timeout
        while self._answers - before < len(scans):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for s in scans:
                    s.ack_timeout = True
                log.info("host ACK mode: no answer to scans %s", [s.seq for s in scans])
                return
            self._answered.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._answered.wait()

    async def _sleep_until(self, t: float) -> None:
        """Sleep until monotonic ``t`` (never wakes early, so cycle_at(now) is the due cycle)."""
        # A deadline, not a condition: there is no event to wait for. (asyncio may wake a
        # timer up to one clock resolution early, hence the loop.)
        while (delay := t - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)

    # -- what comes back

    def _on_data(self, data: bytes) -> None:
        """Split what the agent sent into known tokens (answers, triggers) and the rest."""
        now = time.monotonic()
        self._rx += data
        while self._rx:
            for token, kind in self._tokens.items():
                if self._rx.startswith(token):
                    self._flush_unknown(now)
                    self._rx = self._rx[len(token) :]
                    self._on_token(kind, token, now)
                    break
            else:
                if any(t.startswith(self._rx) for t in self._tokens):
                    break  # the start of a token: wait for the rest
                self._unknown += self._rx[:1]
                self._rx = self._rx[1:]
        self._flush_unknown(now)

    def _flush_unknown(self, now: float) -> None:
        if self._unknown:
            data, self._unknown = self._unknown, b""
            self._add_feedback(now, data, "unknown")

    def _add_feedback(self, now: float, data: bytes, verdict: Verdict) -> None:
        last = self._last_sent
        latency = now - last.sent_at if last is not None and last.sent_at is not None else None
        self.feedback.append(
            Feedback(now, data, verdict, last.seq if last is not None else None, latency)
        )

    def _on_token(self, kind: str, token: bytes, now: float) -> None:
        if kind in ("good", "bad"):
            self._add_feedback(now, token, "good" if kind == "good" else "bad")
            self._answers += 1
            self._answered.set()

    # -- for tests

    @property
    def sent(self) -> list[ScanRecord]:
        """Scans whose bytes are all on the wire, in order of their last byte."""
        return sorted(
            (s for s in self.scans if s.sent_at is not None), key=lambda s: s.sent_at or 0
        )

    def feedback_after(self, seq: int) -> list[Feedback]:
        """What the agent sent back after scan ``seq`` and before the next scan was sent."""
        return [f for f in self.feedback if f.after == seq]


class HandheldScanner(ScannerBase):
    """Scans each part of the station as it arrives (see the module doc).

    ``async with HandheldScanner(model, PtyTransport(tmp_path)) as scanner:`` -- the agent
    opens ``scanner.transport.agent_path``.
    """

    def __init__(
        self, model: StationModel, transport: Transport, config: ScannerConfig | None = None
    ) -> None:
        super().__init__(model, transport, config)

    async def start(self) -> None:
        await super().start()
        if self.config.auto:
            self._spawn(self._run(), name="scanner-schedule")

    def due(self, cycle: int, phase: float | None = None) -> float:
        """When the scan at ``phase`` (default: ``scan_phase``) of ``cycle`` is due."""
        t0 = self.model.t0
        if t0 is None:
            raise RuntimeError("start() the scanner first")
        p = self.config.scan_phase if phase is None else phase
        return t0 + (cycle + p) * self.model.cycle_time

    def _first_cycle(self, now: float) -> int:
        if self.config.first_cycle is not None:
            return self.config.first_cycle
        t0 = self.model.t0 or 0.0
        k = max(0, math.ceil((now - t0) / self.model.cycle_time - self.config.scan_phase))
        while k > 0 and self.due(k - 1) >= now:  # float rounding: never skip a due part
            k -= 1
        return k

    async def _run(self) -> None:
        cfg = self.config
        k = self._first_cycle(self.started_at or time.monotonic())
        scanned = 0
        while cfg.max_scans is None or scanned < cfg.max_scans:
            events: list[tuple[float, int, MaterialScan | None]] = [(self.due(k), 0, None)]
            events += [
                (self.due(k, m.phase), 1 + i, m)
                for i, m in enumerate(cfg.materials)
                if m.cycle == k
            ]
            for due, _order, material in sorted(events, key=lambda e: (e[0], e[1])):
                await self._sleep_until(due)
                if material is None:
                    record = self._part_record(k, self._next_fault(), due)
                    scanned += 1
                else:
                    record = self._material_record(material.code, material.valid, due)
                await self._emit(record)
                if cfg.max_scans is not None and scanned >= cfg.max_scans:
                    return
            k += 1

    async def scan_part(self, cycle: int | None = None, fault: Fault | None = None) -> ScanRecord:
        """Scan a part now: ``cycle`` (default: the one at the station), with ``fault``
        (default: as injected or drawn by rate). Returns once written (or held, if merged)."""
        now = time.monotonic()
        k = self.model.cycle_at(now)[0] if cycle is None else cycle
        record = self._part_record(k, self._next_fault() if fault is None else fault, now)
        await self._emit(record)
        return record

    async def scan_material(self, code: str, *, valid: bool = True) -> ScanRecord:
        """Scan a material label now."""
        record = self._material_record(code, valid, time.monotonic())
        await self._emit(record)
        return record


@dataclass
class _Window:
    trigger: Trigger
    off: asyncio.Event = field(default_factory=asyncio.Event)


class TriggeredReader(ScannerBase):
    """A fixed-mount reader: decodes the part at the station when triggered (module doc).

    A trigger while a read window is open is ignored (``Trigger.ignored``), as is an ``off``
    with no window open. Faults apply to the answer as to a handheld scan; ``no_read`` means
    nothing decodable is in view, so the answer is the no-read text when the window closes.
    """

    def __init__(
        self,
        model: StationModel,
        transport: Transport,
        config: ScannerConfig | None = None,
        trigger: TriggerConfig | None = None,
    ) -> None:
        self.trigger = trigger or TriggerConfig()
        super().__init__(model, transport, config, extra_tokens=(self.trigger.on, self.trigger.off))
        if self.trigger.decode_time < 0 or self.trigger.read_timeout <= 0:
            raise ValueError(
                "scanner configuration invalid: trigger.decode_time must be >= 0 and "
                "trigger.read_timeout > 0"
            )
        self._tokens |= {self.trigger.on: "on", self.trigger.off: "off"}
        self.triggers: list[Trigger] = []
        self._window: _Window | None = None

    def _on_token(self, kind: str, token: bytes, now: float) -> None:
        if kind == "on":
            trig = Trigger(now, "on")
            self.triggers.append(trig)
            if self._window is not None:
                trig.ignored = True
                return
            window = _Window(trig)
            self._window = window
            self._spawn(self._read(window), name=f"reader-window-{len(self.triggers)}")
        elif kind == "off":
            trig = Trigger(now, "off")
            self.triggers.append(trig)
            if self._window is None:
                trig.ignored = True
            else:
                self._window.off.set()
        else:
            super()._on_token(kind, token, now)

    async def _read(self, window: _Window) -> None:
        """One read window: the answer after the decode time, or the no-read text when the
        window closes (off, or the read timeout) with nothing decodable."""
        trig = window.trigger
        cycle = self.model.cycle_at(trig.at)[0]
        fault = self._next_fault()
        cfg = self.trigger
        readable = fault is not Fault.NO_READ and cfg.decode_time < cfg.read_timeout
        ends = trig.at + (cfg.decode_time if readable else cfg.read_timeout)
        try:
            closed_by_off = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, ends - time.monotonic())):
                    await window.off.wait()
                    closed_by_off = True
            if not closed_by_off:
                await self._sleep_until(ends)
            if readable and not closed_by_off:
                record = self._part_record(cycle, fault, ends)
            else:
                why = "off" if closed_by_off else "timeout"
                record = self._no_read_record(cycle, time.monotonic(), why)
            trig.answer = record.seq
        finally:
            self._window = None
        await self._emit(record)
