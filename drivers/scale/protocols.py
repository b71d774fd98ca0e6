"""Scale wire protocols: commands to send and every line a scale can answer, parsed. No I/O.

Three families cover the scales on our lines, and a driver picks one per device:

- **MT-SICS** (Mettler Toledo Standard Interface Command Set), levels 0 and 1: the host sends a
  command line, the scale answers one line per command (``SIR`` keeps answering until ``@`` or
  any other command).
- **Sartorius SBI**: the host sends ``ESC P`` and the balance prints its display as a fixed
  16-character line, or 22 characters with a 6-character identification code in front; in
  "auto print" mode it prints on its own, continuously.
- **Toledo continuous output**: the terminal streams a fixed frame (STX, status words A B C,
  six digits of weight, six of tare, CR, optional checksum) several times a second, unasked.

Everything a scale sends becomes a :class:`Weighing` (a weight, or the reason there is none) or,
for MT-SICS zero/tare/reset, an :class:`Ack`. Nothing here raises on what the scale sends: a
line that matches nothing is a weighing whose error quotes the line, so the driver can log it,
count it and keep reading. A unit this module does not know is an error too, never a guess:
binding ``12.5 xyz`` to a part as grams would be worse than binding nothing.

Sources (the protocol facts were checked against these, not recalled):

- MT-SICS: Mettler Toledo operating instructions, "MT-SICS interface commands and functions"
  (New Classic / AT balances: ``S``, ``S S``/``S I``/``S +``/``S -``, command set table,
  commands end with CR LF, reference manual 11780711); the per-command replies of ``Z``/``ZI``
  (``Z A``, ``ZI S``/``ZI D``, ``I``/``+``/``-``) and ``T``/``TI`` (``T S <w> <u>``,
  ``TI S``/``TI D``) and their reasons as quoted from the reference manual in open-source
  drivers (MSL, instrumentkit ``mt_sics.py``: ``ES`` syntax, ``ET`` transmission, ``EL``
  logical error, ``<id> L`` logical error for a parameter); ``@`` answers ``I4 A "<SNR>"``.
- SBI: Sartorius operating instructions, "Data output format" (Signum 1, Entris II, LE, FB,
  Combics 1, Master series, MC1): positions of sign, weight and unit, the 6-character ID codes
  (``N``, ``G#``, ``T``, ``Stat`` ...), special codes ``H``/``HH``/``L``/``LL``/``C``,
  ``High``/``Low``/``Cal.Ext.``, ``Err ###``, and "if the weighing system has not stabilized,
  no unit symbol is output"; "Data input format": ``ESC P`` print, ``ESC T`` tare/zero
  combination, ``ESC U`` tare, ``ESC V`` zero (Entris II, IW2P1), ``ESC f3_`` zero key and
  ``ESC f4_`` tare key (FB, Entris II), CR LF optional.
- Toledo continuous: Mettler Toledo WILDCAT technical manual, appendix 2 "Continuous mode
  output" (frame layout, checksum = two's complement of the 7 low bits of the sum of every
  byte before it, STX and CR included) and tables 6-9..6-11 (status bytes A, B, C).
  Status byte C unit codes beyond 0 (lb/kg from B) and 1 (grams) come from the same table
  family as published by clone terminals (2 = metric tons); other codes are reported as
  unknown rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

CRLF = b"\r\n"
ESC = b"\x1b"
STX = 0x02
CR = 0x0D

ENCODING = "latin-1"
"""Scales send 8-bit text (MT-SICS: "ANSI/WIN"); latin-1 maps every byte to one character, so
garbage is quoted in errors as received instead of being replaced."""

OVERLOAD = "overload: the load exceeds the scale's range"
UNDERLOAD = "underload: the reading is below the scale's range (is the weighing pan in place?)"


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Weighing:
    """What one line (or frame) of a scale says about the load.

    Exactly one of ``weight`` and ``error`` is set: ``error`` is the reason, in words an operator
    understands, why there is no usable weight. ``stable`` is False for a dynamic (still moving)
    reading; binding usually wants stable ones only, which is the driver's choice, not ours.
    ``unit`` is None only where the scale does not send it (an unstable SBI print) or cannot
    be understood. ``net`` and ``tare`` are set when the protocol says (SBI ID codes, Toledo).
    """

    weight: float | None
    unit: str | None
    stable: bool | None
    error: str | None
    net: bool | None = None
    tare: float | None = None

    def __post_init__(self) -> None:
        if (self.weight is None) == (self.error is None):
            raise ValueError("a Weighing has either a weight or the reason why not, not both")

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(
        cls,
        error: str,
        *,
        unit: str | None = None,
        stable: bool | None = None,
        net: bool | None = None,
        tare: float | None = None,
    ) -> Weighing:
        return cls(None, unit, stable, error, net, tare)


@dataclass(frozen=True, slots=True)
class Ack:
    """The reply to an MT-SICS command that acts on the scale: zero, tare or reset (``@``).

    ``done`` says whether the scale did it; ``error`` says why not, or, for a tare that was done
    but whose value cannot be read (an unknown unit), why ``tare`` is None.
    """

    command: str
    """The command answered: ``Z``, ``ZI``, ``T``, ``TI`` or ``@``."""
    done: bool
    error: str | None = None
    stable: bool | None = None
    """Whether the scale was stable when it zeroed or tared (``ZI``/``TI`` may act on a moving
    load; ``Z``/``T`` wait for stability)."""
    tare: float | None = None
    unit: str | None = None
    serial: str | None = None
    """``@`` answers with the scale's serial number."""


def unrecognised(received: str | bytes) -> Weighing:
    """The reading for a line (or frame) that matches nothing the protocol can send."""
    text = received.decode(ENCODING) if isinstance(received, bytes) else received
    return Weighing.failed(f"unrecognised response {text!r}")


# ---- units -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unit:
    symbol: str
    name: str
    grams: float
    """Exact where the unit is defined exactly (the avoirdupois pound is 453.59237 g)."""


_GRAIN = 0.06479891
UNITS: Mapping[str, Unit] = MappingProxyType(
    {
        u.symbol: u
        for u in (
            Unit("g", "gram", 1.0),
            Unit("kg", "kilogram", 1000.0),
            Unit("mg", "milligram", 0.001),
            Unit("ug", "microgram", 1e-6),
            Unit("µg", "microgram", 1e-6),
            Unit("t", "metric ton", 1e6),
            Unit("lb", "pound", 453.59237),
            Unit("oz", "ounce", 453.59237 / 16),
            Unit("ozt", "troy ounce", 480 * _GRAIN),
            Unit("ct", "carat", 0.2),
            Unit("dwt", "pennyweight", 24 * _GRAIN),
            Unit("GN", "grain", _GRAIN),
            # Sartorius' unit table spells grains "gr" on some balances (MC1, LA).
            Unit("gr", "grain", _GRAIN),
            Unit("mom", "momme", 3.75),
            Unit("tlt", "Taiwanese tael", 37.5),
            Unit("tol", "tola", 180 * _GRAIN),
        )
    }
)
"""Weight units by the symbol scales send. Case matters (MT-SICS: "units have to be capitalized
properly"): ``GN`` is a grain, ``g`` a gram. Counts (``pcs``) and percentages are not weights."""


def known_unit(symbol: str) -> Unit | None:
    return UNITS.get(symbol)


def unknown_unit(symbol: str) -> str:
    return f"unknown unit {symbol!r}"


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def _number(text: str) -> float | None:
    """A decimal number as scales print it; None for anything else (``float`` would take
    ``nan``, ``1e5`` and ``1_0``, none of which a scale sends)."""
    return float(text) if _NUMBER.fullmatch(text) else None


def _text(line: str | bytes) -> str:
    text = line.decode(ENCODING) if isinstance(line, bytes) else line
    return text.rstrip("\r\n")


# ---- line framing ----------------------------------------------------------------------------


class LineFramer:
    """Cuts a byte stream into lines (MT-SICS and SBI end every line with CR LF).

    A line is what precedes an LF, with the CR before it removed. A run of ``max_line`` bytes
    without an LF (noise on the wire) is dropped and counted, so garbage cannot grow the buffer
    without bound; the rest of it then arrives as one unrecognised line.
    """

    def __init__(self, max_line: int = 256) -> None:
        self.max_line = max_line
        self.discarded = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        lines: list[bytes] = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            lines.append(line[:-1] if line.endswith(b"\r") else line)
        if len(self._buffer) > self.max_line:
            self.discarded += len(self._buffer)
            self._buffer.clear()
        return lines


# ---- MT-SICS ---------------------------------------------------------------------------------


class MtSicsCommand(StrEnum):
    STABLE = "S"
    """Send the stable weight: the scale waits for stability (``S I`` on timeout)."""
    IMMEDIATE = "SI"
    """Send the weight now, stable (``S S``) or dynamic (``S D``)."""
    REPEAT = "SIR"
    """Like ``SI``, repeated until ``@`` or any other command."""
    ZERO = "Z"
    ZERO_IMMEDIATE = "ZI"
    TARE = "T"
    TARE_IMMEDIATE = "TI"
    RESET = "@"
    """Cancel whatever runs (``SIR`` included) and reset; answers with the serial number."""


def mtsics_command(command: MtSicsCommand) -> bytes:
    """The bytes to send: MT-SICS commands are upper case and end with CR LF."""
    return MtSicsCommand(command).value.encode("ascii") + CRLF


_MTSICS_GENERAL = {
    "ES": "syntax error: the scale did not recognise the command",
    "ET": "transmission error: the scale received a garbled command "
    "(check baud rate, parity and cable)",
    "EL": "logical error: the scale cannot execute this command",
}
_NOT_ALLOWED = "not allowed: the scale refused the command or its parameter"
_WEIGHT_ERRORS = {
    "I": "not executable now: the scale is busy with another command (e.g. taring) "
    "or did not settle in time",
    "+": OVERLOAD,
    "-": UNDERLOAD,
    "L": _NOT_ALLOWED,
}
_ZERO_ERRORS = {
    "I": "zero not set: the scale is busy with another command or did not settle in time",
    "+": "zero not set: the load is above the zero-setting range (clear the pan)",
    "-": "zero not set: the load is below the zero-setting range",
    "L": _NOT_ALLOWED,
}
_TARE_ERRORS = {
    "I": "tare not set: the scale is busy with another command or did not settle in time",
    "+": "tare not set: the load is above the taring range",
    "-": "tare not set: the load is below the taring range",
    "L": _NOT_ALLOWED,
}
_SERIAL = re.compile(r'I4\s+A\s+"(?P<serial>[^"]*)"')


def parse_mtsics(line: str | bytes) -> Weighing | Ack:
    """Parse one MT-SICS response line (with or without its CR LF).

    Weight replies (to ``S``, ``SI`` and ``SIR``, which all answer with the ID ``S``) and the
    general errors ``ES``/``ET``/``EL`` (which answer whatever was sent last) are
    :class:`Weighing`; replies to ``Z``/``ZI``/``T``/``TI``/``@`` are :class:`Ack`.
    """
    text = _text(line)
    words = text.split()
    if len(words) == 1 and words[0] in _MTSICS_GENERAL:
        return Weighing.failed(_MTSICS_GENERAL[words[0]])
    if len(words) < 2:
        return unrecognised(text)
    ident, status, rest = words[0], words[1], words[2:]
    if ident == "S":
        return _weight_reply(text, status, rest)
    if ident in ("Z", "ZI"):
        return _zero_reply(text, ident, status, rest)
    if ident in ("T", "TI"):
        return _tare_reply(text, ident, status, rest)
    if match := _SERIAL.fullmatch(text):
        return Ack("@", True, serial=match["serial"])
    return unrecognised(text)


def _weight_reply(text: str, status: str, rest: list[str]) -> Weighing:
    if status in ("S", "D") and len(rest) == 2:
        weight, unit = _number(rest[0]), rest[1]
        stable = status == "S"
        if weight is None:
            return unrecognised(text)
        if known_unit(unit) is None:
            return Weighing.failed(unknown_unit(unit), stable=stable)
        return Weighing(weight, unit, stable, None)
    if status in _WEIGHT_ERRORS and not rest:
        return Weighing.failed(_WEIGHT_ERRORS[status])
    return unrecognised(text)


def _zero_reply(text: str, ident: str, status: str, rest: list[str]) -> Weighing | Ack:
    if rest:
        return unrecognised(text)
    if ident == "Z" and status == "A":
        return Ack("Z", True, stable=True)
    if ident == "ZI" and status in ("S", "D"):
        return Ack("ZI", True, stable=status == "S")
    if status in _ZERO_ERRORS:
        return Ack(ident, False, _ZERO_ERRORS[status])
    return unrecognised(text)


def _tare_reply(text: str, ident: str, status: str, rest: list[str]) -> Weighing | Ack:
    stabilities = ("S",) if ident == "T" else ("S", "D")
    if status in stabilities and len(rest) == 2:
        tare, unit = _number(rest[0]), rest[1]
        stable = status == "S"
        if tare is None:
            return unrecognised(text)
        if known_unit(unit) is None:
            return Ack(ident, True, unknown_unit(unit), stable)
        return Ack(ident, True, stable=stable, tare=tare, unit=unit)
    if status in _TARE_ERRORS and not rest:
        return Ack(ident, False, _TARE_ERRORS[status])
    return unrecognised(text)


# ---- Sartorius SBI ---------------------------------------------------------------------------


class SbiCommand(StrEnum):
    PRINT = "P"
    """Print the display once (or, configured so, switch auto print on/off)."""
    TARE_ZERO = "T"
    """The TARE key: zeroes an empty balance, tares a loaded one. Every SBI balance has it."""
    TARE = "U"
    ZERO = "V"
    """Separate tare and zero (newer balances: Entris II, Cubis, IW indicators)."""
    TARE_KEY = "f4_"
    ZERO_KEY = "f3_"
    """Separate tare and zero as key presses (older balances with two keys: FB, LA, BP)."""


def sbi_command(command: SbiCommand) -> bytes:
    """``ESC`` + command + CR LF (CR LF are optional for the balance; we always send them)."""
    return ESC + SbiCommand(command).value.encode("ascii") + CRLF


SBI_SHORT = 14
SBI_LONG = 20
"""Line lengths without CR LF: 16 and 22 characters on the wire."""

_SBI_NET = frozenset({"N", "N1"})
_SBI_GROSS = frozenset({"G#", "G"})
_SBI_TARE = frozenset({"T", "T1", "T2", "PT2"})
_SBI_SPECIAL = {
    "H": OVERLOAD,
    "High": OVERLOAD,
    "HH": f"{OVERLOAD} (checkweighing)",
    "L": UNDERLOAD,
    "Low": UNDERLOAD,
    "LL": f"{UNDERLOAD} (checkweighing)",
    "C": "calibrating: the scale is being adjusted and shows no weight",
    "Cal.Ext.": "calibrating: the scale is being adjusted and shows no weight",
}
_SBI_ERROR = re.compile(r"(?:Err|ERR|E)\s*\d+|(?:APP|DIS|PRT)\.ER+")


def parse_sbi(line: str | bytes) -> Weighing:
    """Parse one SBI data output line, 16 or 22 characters (with or without its CR LF).

    Layout (1-based, of the 16): 1 sign or space, 2 space, 3-10 weight with its decimal point
    (leading zeros as spaces), 11 space, 12-14 unit. The 22-character line puts a 6-character ID
    code first (``N`` net, ``G#`` gross, ``T`` tare, ``Stat`` status). An unstable reading has
    no unit: it comes back with ``stable=False`` and ``unit=None``, its value kept.
    """
    text = _text(line)
    if len(text) == SBI_LONG:
        ident: str | None = text[:6].strip()
        body = text[6:]
    elif len(text) == SBI_SHORT:
        ident, body = None, text
    else:
        return unrecognised(text)
    words = body.split()
    if ident == "Stat" or not words or _sbi_special(words):
        return _sbi_status(text, words)
    sign, digits, unit = body[0], body[1:10].strip(), body[10:].strip()
    magnitude = _number(digits)
    if sign not in "+- " or magnitude is None or digits[0] in "+-":
        return unrecognised(text)
    if ident and ident not in _SBI_NET | _SBI_GROSS | _SBI_TARE:
        return Weighing.failed(f"not the current weight: the line is marked {ident!r}")
    weight = -magnitude if sign == "-" else magnitude
    stable = bool(unit)
    if unit and known_unit(unit) is None:
        return Weighing.failed(unknown_unit(unit), stable=stable)
    reported_unit = unit or None
    if ident in _SBI_TARE:
        return Weighing.failed(
            f"a tare value (ID code {ident!r}), not the weight",
            unit=reported_unit,
            stable=stable,
            tare=weight,
        )
    net = None if not ident else ident in _SBI_NET
    return Weighing(weight, reported_unit, stable, None, net=net)


def _sbi_special(words: list[str]) -> bool:
    joined = " ".join(words)
    return joined in _SBI_SPECIAL or bool(_SBI_ERROR.fullmatch(joined))


def _sbi_status(text: str, words: list[str]) -> Weighing:
    joined = " ".join(words)
    if not words:
        return Weighing.failed("no value: the scale's display is blank")
    if joined in _SBI_SPECIAL:
        return Weighing.failed(_SBI_SPECIAL[joined])
    if _SBI_ERROR.fullmatch(joined):
        return Weighing.failed(f"scale error {joined}: see the error list in the scale's manual")
    return unrecognised(text)


# ---- Toledo continuous output ----------------------------------------------------------------


TOLEDO_FRAME = 17
"""STX, A, B, C, 6 weight digits, 6 tare digits, CR; 18 bytes with the checksum."""

_INCREMENTS = {0b01: 1, 0b10: 2, 0b11: 5}  # status A bits 3 (low) and 4 (high)
_TOLEDO_UNITS = {1: "g", 2: "t"}  # status C bits 0-2; 0 means lb or kg, from status B bit 4


@dataclass(frozen=True, slots=True)
class ToledoStatus:
    """Status words A, B and C of one frame, decoded (WILDCAT tables 6-9, 6-10, 6-11)."""

    decimals: int
    """Digits after the decimal point, 0 to 5; -1 and -2 when the display ends in 1 or 2 dummy
    zeros (the six digits are then tens or hundreds)."""
    increment: int | None
    """Display increment in the last digit: 1, 2 or 5 (None if the bits say none of these)."""
    net: bool
    negative: bool
    out_of_range: bool
    motion: bool
    unit_code: int
    unit: str | None
    """None when status C names a unit this module does not know."""
    power_up_not_zeroed: bool
    print_request: bool
    expanded: bool
    """The display is expanded (x10): not a legal-for-trade weight."""

    def scale(self, digits: int) -> float:
        """The value of six transmitted digits."""
        power: int = 10 ** abs(self.decimals)
        if self.decimals <= 0:
            return float(digits * power)
        return digits / power  # two exact ints divided: the double nearest the decimal


def decode_toledo_status(a: int, b: int, c: int) -> ToledoStatus:
    """Decode the three status bytes (a parity bit in bit 7, if any, is ignored)."""
    a, b, c = a & 0x7F, b & 0x7F, c & 0x7F
    unit_code = c & 0b111
    unit = ("kg" if b & 0x10 else "lb") if unit_code == 0 else _TOLEDO_UNITS.get(unit_code)
    return ToledoStatus(
        decimals=(a & 0b111) - 2,
        increment=_INCREMENTS.get((a >> 3) & 0b11),
        net=bool(b & 0x01),
        negative=bool(b & 0x02),
        out_of_range=bool(b & 0x04),
        motion=bool(b & 0x08),
        unit_code=unit_code,
        unit=unit,
        power_up_not_zeroed=bool(b & 0x40),
        print_request=bool(c & 0x08),
        expanded=bool(c & 0x10),
    )


def toledo_checksum(data: bytes) -> int:
    """Two's complement of the 7 low bits of the sum of ``data`` (STX through CR)."""
    return -sum(data) & 0x7F


_DIGITS = re.compile(rb" *\d+")  # some terminals suppress leading zeros as spaces


def parse_toledo(frame: bytes, *, checksum: bool = False) -> Weighing:
    """Parse one continuous-output frame; with ``checksum`` the 18th byte must match."""
    if (
        len(frame) not in (TOLEDO_FRAME, TOLEDO_FRAME + 1)
        or frame[0] != STX
        or frame[TOLEDO_FRAME - 1] != CR
    ):
        return unrecognised(frame)
    if checksum:
        if len(frame) == TOLEDO_FRAME:
            return Weighing.failed(
                "no checksum: the frame ends at CR, a checksum byte was expected"
            )
        want, got = toledo_checksum(frame[:TOLEDO_FRAME]), frame[TOLEDO_FRAME] & 0x7F
        if want != got:
            return Weighing.failed(f"checksum mismatch: got 0x{got:02X}, expected 0x{want:02X}")
    weight_digits, tare_digits = frame[4:10], frame[10:16]
    if not (_DIGITS.fullmatch(weight_digits) and _DIGITS.fullmatch(tare_digits)):
        return unrecognised(frame)
    status = decode_toledo_status(frame[1], frame[2], frame[3])
    stable = not status.motion
    tare = status.scale(int(tare_digits))
    if status.unit is None:
        return Weighing.failed(
            f"unknown unit: status word C has unit code {status.unit_code}",
            stable=stable,
            net=status.net,
        )
    if status.out_of_range:
        return Weighing.failed(
            UNDERLOAD if status.negative else OVERLOAD,
            unit=status.unit,
            stable=stable,
            net=status.net,
            tare=tare,
        )
    magnitude = status.scale(int(weight_digits))
    weight = -magnitude if status.negative else magnitude
    return Weighing(weight, status.unit, stable, None, net=status.net, tare=tare)


class ToledoFramer:
    """Cuts a continuous-output byte stream into frames.

    A frame starts at STX and has a fixed length; it is not searched for by its end, because
    the checksum byte can be any value, CR and STX included. A candidate whose CR is not where
    it belongs (the STX was noise) costs one byte and the search starts again; dropped bytes
    are counted in ``discarded``.
    """

    def __init__(self, *, checksum: bool = False) -> None:
        self.length = TOLEDO_FRAME + (1 if checksum else 0)
        self.discarded = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while True:
            start = self._buffer.find(STX)
            if start < 0:
                self.discarded += len(self._buffer)
                self._buffer.clear()
                return frames
            self.discarded += start
            del self._buffer[:start]
            if len(self._buffer) < self.length:
                return frames
            if self._buffer[TOLEDO_FRAME - 1] != CR:
                self.discarded += 1
                del self._buffer[:1]
                continue
            frames.append(bytes(self._buffer[: self.length]))
            del self._buffer[: self.length]
