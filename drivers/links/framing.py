"""Cutting a device's byte stream into frames: one scan, one reader line, one weight.

A serial port or a TCP socket delivers bytes in whatever pieces the OS hands over: two scans
can come in one read, one scan can come in three. Every scanner, RFID reader and scale kind
needs the same cutting, so it is written once, here, as a pure object: no I/O, no clock (the
caller passes ``now`` to every call), so it is tested with tables and property tests alone.

**Accounting.** Every byte fed ends up in exactly one frame's ``raw``, in order:
``b"".join(f.raw for f in frames) == every byte fed`` once :meth:`Framer.flush` has run. A
byte is never dropped silently and never counted twice: garbage, half frames, over-long frames
and stray delimiters all come out as frames, rejected ones carrying their reason in
``error`` (invariant 6: errors are data). A driver records a rejected frame as a BAD
observation with its ``raw`` bytes, so a commissioning engineer can see what came over the wire.

**Blank frames.** A terminator with nothing before it (a blank line, ``STX ETX``) is not a
scan, but its bytes must be accounted for: it comes out as a *good* frame with ``data == b""``
(``Frame.blank``), which drivers skip. The second half of a CR LF split over two reads, in
suffix-CR mode, comes out the same way (see below).

**Modes.**

- ``suffix``: a frame ends with the terminator bytes (``b"\\r"``, ``b"\\n"``, ``b"\\r\\n"``,
  anything). Readers are often set to CR LF while the integrator wrote CR (or the reverse), so
  with suffix CR an LF right after the CR belongs to the terminator, and with suffix LF a CR
  right before the LF does. A frame is handed out as soon as its CR arrives (a scan must not
  wait for the next one); should the LF then come in the next read, it is accounted for as a
  blank frame. That rule follows the byte stream: it survives :meth:`Framer.flush`, since a
  reopened port that starts with an LF is only finishing a CR LF.
- ``stx_etx``: a frame is ``STX payload ETX``. Bytes outside STX...ETX are garbage and come
  out as a rejected frame, at the next STX or ETX (or at the inter-character timeout, or at
  flush). An STX inside a frame means its ETX was lost: the half frame is rejected and a new
  one starts. A reader that appends CR LF or a checksum after ETX wants ``pattern`` mode,
  e.g. ``rb"\\x02(?P<data>[^\\x02\\x03]*)\\x03\\r\\n"``.
- ``pattern``: a bytes regex that matches one whole frame, for readers that send fixed-length
  records without delimiters. It is searched as soon as bytes arrive, so it must not match a
  mere prefix of a longer frame (``rb"\\d{12}"`` is right, ``rb"\\d+"`` would cut at the first
  digit). Bytes before a match are garbage. ``data`` is the named group ``data`` if the
  pattern has one, else the whole match. No frame is longer than ``max_length`` (that bounds
  the search); bytes that can no longer be part of any frame are rejected once more than
  ``hold_bytes`` are pending, at the timeout, or at flush.

**Limits.** A frame whose payload is longer than ``max_length`` is rejected ("frame longer
than N bytes") when it ends, and the next frame starts after its terminator (or at the next
STX): nothing is lost or counted twice. So that a stream that never sends a terminator (a
wrong setting, a scale streaming in another format) cannot grow memory without bound, more
than ``hold_bytes`` pending bytes are handed out at once as a rejected piece, and the rest of
that frame is rejected with the same reason when it ends. With ``inter_char_timeout`` set, a
partial frame that received no byte for that long is rejected ("incomplete frame: no CR
within 0.5 s") by :meth:`Framer.expire`, or by the next :meth:`Framer.feed` if that comes
first; :meth:`Framer.deadline` says when, so the caller can sleep exactly until then.

``Frame.ts`` is the ``now`` given with the frame's last byte, on whatever clock the caller
uses (``drivers.links.base.read_frames`` uses the loop's monotonic clock).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Mode = Literal["suffix", "stx_etx", "pattern"]

STX = 0x02
ETX = 0x03
LF = 0x0A
CR = 0x0D

HOLD_BYTES = 65536
"""Pending bytes held before they are rejected in pieces, by default (or twice
``max_length``, if that is more)."""

DEFAULT_MAX_LENGTH = 8192
"""Longest payload accepted by default: above the largest 2D codes (a QR code tops out at
7089 digits), far above RFID lines and scale records."""

GARBAGE_STX = "bytes outside STX...ETX"
GARBAGE_PATTERN = "bytes that match no frame"

_STX_OR_ETX = re.compile(rb"[\x02\x03]")

_CONTROL_NAMES = (
    "NUL", "SOH", "STX", "ETX", "EOT", "ENQ", "ACK", "BEL", "BS", "HT", "LF", "VT", "FF", "CR",
    "SO", "SI", "DLE", "DC1", "DC2", "DC3", "DC4", "NAK", "SYN", "ETB", "CAN", "EM", "SUB",
    "ESC", "FS", "GS", "RS", "US",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame cut from the stream; ``error is None`` for a good one."""

    data: bytes
    """The payload, without terminator, STX or ETX."""
    raw: bytes
    """Every byte of the stream this frame accounts for, delimiters included."""
    error: str | None
    """Why the frame is rejected, or None."""
    ts: float
    """The ``now`` at which the frame's last byte was fed."""

    @property
    def blank(self) -> bool:
        """A good frame with no payload (a blank line, the LF of a split CR LF): no scan."""
        return self.error is None and not self.data


def describe_bytes(delimiter: bytes) -> str:
    """A delimiter as people name it: ``b"\\r\\n"`` is ``CR LF``, ``b"#"`` is ``'#'``."""
    names = []
    for byte in delimiter:
        if byte < 0x20:
            names.append(_CONTROL_NAMES[byte])
        elif byte == 0x7F:
            names.append("DEL")
        elif byte < 0x7F:
            names.append(repr(chr(byte)))
        else:
            names.append(f"0x{byte:02x}")
    return " ".join(names)


class Framer:
    """Cuts a byte stream into :class:`Frame` objects; see the module docstring.

    ``feed`` the bytes of every read with the time they arrived, ``expire`` when
    ``deadline()`` has passed, ``flush`` when the connection closes.
    """

    def __init__(
        self,
        mode: Mode = "suffix",
        *,
        suffix: bytes = b"\r",
        pattern: bytes | re.Pattern[bytes] | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        inter_char_timeout: float | None = None,
        hold_bytes: int | None = None,
    ) -> None:
        if mode not in ("suffix", "stx_etx", "pattern"):
            raise ValueError(f"unknown framing mode {mode!r}: suffix, stx_etx or pattern")
        if mode == "suffix" and not suffix:
            raise ValueError("suffix framing needs a terminator of at least one byte")
        if (mode == "pattern") != (pattern is not None):
            raise ValueError("a frame pattern is needed for, and only for, pattern framing")
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, not {max_length}")
        if inter_char_timeout is not None and not inter_char_timeout > 0:
            raise ValueError(f"inter_char_timeout must be positive, not {inter_char_timeout}")
        if hold_bytes is None:
            hold_bytes = max(HOLD_BYTES, 2 * max_length + len(suffix) + 2)
        elif hold_bytes < max_length + len(suffix) + 2:
            raise ValueError(f"hold_bytes ({hold_bytes}) must exceed the longest whole frame")
        self.mode: Mode = mode
        self.suffix = suffix if mode == "suffix" else b""
        self.max_length = max_length
        self.inter_char_timeout = inter_char_timeout
        self.hold_bytes = hold_bytes
        self._regex: re.Pattern[bytes] | None = None
        self._group: int | str = 0
        if pattern is not None:
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid frame pattern {pattern!r}: {exc}") from None
            self._regex = regex
            self._group = "data" if "data" in regex.groupindex else 0
        if mode == "suffix":
            what = describe_bytes(self.suffix)
        elif mode == "stx_etx":
            what = "ETX"
        else:
            what = "complete match of the frame pattern"
        self._timeout_reason = (
            f"incomplete frame: no {what} within {inter_char_timeout:g} s"
            if inter_char_timeout is not None
            else ""
        )
        self._too_long = f"frame longer than {max_length} bytes"
        # ---- the pending, not yet framed bytes -----------------------------------------
        self._buf = bytearray()
        self._last = 0.0  # when the newest pending byte was fed
        self._prev_last = 0.0  # ... and the newest byte before the current feed
        self._old_len = 0  # how many pending bytes came before the current feed
        self._scan = 0  # where the next delimiter search starts
        self._inside = False  # stx_etx: the pending bytes are a frame (else garbage)
        self._overlong = False  # the pending bytes continue a frame already rejected as long
        self._lf_completes_cr = False  # suffix CR: the last byte seen was a frame's CR

    # ---- the interface -----------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> list[Frame]:
        """The frames completed by ``data``, which arrived at ``now`` (after expiring the
        pending partial frame, if its deadline is past)."""
        frames = self.expire(now)
        if not data:
            return frames
        if self._lf_completes_cr:
            self._lf_completes_cr = False
            if data[0] == LF:
                frames.append(Frame(b"", data[:1], None, now))
                data = data[1:]
                if not data:
                    return frames
        self._old_len = len(self._buf)
        self._prev_last = self._last
        self._buf += data
        self._last = now
        if self.mode == "suffix":
            self._cut_suffix(frames, now)
        elif self.mode == "stx_etx":
            self._cut_stx_etx(frames, now)
        else:
            self._cut_pattern(frames, now)
        if len(self._buf) > self.hold_bytes:
            self._spill(frames, now)
        self._old_len = len(self._buf)
        self._prev_last = now
        return frames

    def deadline(self) -> float | None:
        """When the pending partial frame expires; None when nothing is pending or there is
        no inter-character timeout."""
        if not self._buf or self.inter_char_timeout is None:
            return None
        return self._last + self.inter_char_timeout

    def expire(self, now: float) -> list[Frame]:
        """The pending partial frame as a rejected frame if its deadline has passed, else
        nothing."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        return self._take_all(self._timeout_reason)

    def flush(self, reason: str) -> list[Frame]:
        """The connection ended: whatever is pending comes out, a half frame rejected with
        ``reason`` (garbage and over-long frames keep their own reasons)."""
        return self._take_all(reason)

    def pending(self) -> int:
        """How many bytes wait for the rest of their frame."""
        return len(self._buf)

    # ---- the modes ---------------------------------------------------------------------

    def _cut_suffix(self, frames: list[Frame], now: float) -> None:
        buf, term = self._buf, self.suffix
        while True:
            i = buf.find(term, self._scan)
            if i < 0:
                self._scan = max(0, len(buf) - len(term) + 1)
                return
            end, stop = i + len(term), i
            if term == b"\r":
                if end < len(buf):
                    if buf[end] == LF:
                        end += 1
                else:
                    self._lf_completes_cr = True
            elif term == b"\n" and i > 0 and buf[i - 1] == CR:
                stop = i - 1
            payload = bytes(buf[:stop])
            raw, ts = self._take(end, now)
            frames.append(self._frame(payload, raw, None, ts))

    def _cut_stx_etx(self, frames: list[Frame], now: float) -> None:
        buf = self._buf
        while buf:
            found = _STX_OR_ETX.search(buf, self._scan)
            if found is None:
                self._scan = len(buf)
                return
            pos = found.start()
            if not self._inside:
                if buf[pos] == ETX:  # a frame that lost its STX: garbage up to its ETX
                    raw, ts = self._take(pos + 1, now)
                    frames.append(Frame(raw, raw, GARBAGE_STX, ts))
                    continue
                if pos > 0:
                    raw, ts = self._take(pos, now)
                    frames.append(Frame(raw, raw, GARBAGE_STX, ts))
                self._inside = True
                self._scan = 1
                continue
            start = 0 if self._overlong else 1  # a continuation has no STX of its own
            if buf[pos] == ETX:
                raw, ts = self._take(pos + 1, now)
                frames.append(self._frame(raw[start:-1], raw, None, ts))
            elif pos > 0:  # STX before ETX: the ETX was lost
                raw, ts = self._take(pos, now)
                frames.append(self._frame(raw[start:], raw, "incomplete frame: STX before ETX", ts))
            else:  # the STX right after a spilled piece: that over-long frame is done
                self._overlong = False
            self._inside = False

    def _cut_pattern(self, frames: list[Frame], now: float) -> None:
        assert self._regex is not None
        while self._buf:
            match = next(
                (m for m in self._regex.finditer(self._buf, self._scan) if m.end() > m.start()),
                None,
            )
            if match is None:
                # A frame is at most max_length long, so one starting earlier than this would
                # have ended within the buffer: the next search need not look before it.
                self._scan = max(0, len(self._buf) - self.max_length + 1)
                return
            start, end = match.span()
            payload = bytes(match.group(self._group) or b"")
            if start > 0:
                raw, ts = self._take(start, now)
                frames.append(Frame(raw, raw, GARBAGE_PATTERN, ts))
            raw, ts = self._take(end - start, now)
            error = self._too_long if len(raw) > self.max_length else None
            frames.append(Frame(payload, raw, error, ts))

    def _spill(self, frames: list[Frame], now: float) -> None:
        """Too many bytes pending: hand out what can no longer be part of a good frame."""
        if self.mode == "pattern":
            cut = max(0, len(self._buf) - self.max_length + 1)
            raw, ts = self._take(cut, now)
            frames.append(Frame(raw, raw, GARBAGE_PATTERN, ts))
            return
        keep = len(self.suffix) - 1  # a terminator's first bytes may be the last ones here
        if self.mode == "stx_etx" and not self._inside:
            raw, ts = self._take(len(self._buf) - keep, now)
            frames.append(Frame(raw, raw, GARBAGE_STX, ts))
            return
        start = 1 if self.mode == "stx_etx" and not self._overlong else 0
        raw, ts = self._take(len(self._buf) - keep, now)
        frames.append(Frame(raw[start:], raw, self._too_long, ts))
        self._overlong = True

    # ---- helpers -----------------------------------------------------------------------

    def _frame(self, payload: bytes, raw: bytes, error: str | None, ts: float) -> Frame:
        if self._overlong or len(payload) > self.max_length:
            error = self._too_long
        self._overlong = False
        return Frame(payload, raw, error, ts)

    def _take(self, n: int, now: float) -> tuple[bytes, float]:
        """Remove the first ``n`` pending bytes; with the time the last of them arrived."""
        raw = bytes(self._buf[:n])
        ts = self._prev_last if n <= self._old_len else now
        del self._buf[:n]
        self._old_len = max(0, self._old_len - n)
        self._scan = max(0, self._scan - n)
        return raw, ts

    def _take_all(self, reason: str) -> list[Frame]:
        if not self._buf:
            self._inside = self._overlong = False
            return []
        raw, ts = self._take(len(self._buf), self._last)  # every pending byte is old here
        if self.mode == "stx_etx" and not self._inside:
            frame = Frame(raw, raw, GARBAGE_STX, ts)
        elif self.mode == "pattern":
            frame = Frame(raw, raw, reason, ts)
        else:
            start = 1 if self.mode == "stx_etx" and not self._overlong else 0
            frame = self._frame(raw[start:], raw, reason, ts)
        self._inside = self._overlong = False
        self._scan = 0
        return [frame]


def decode(frame: Frame) -> tuple[str | None, str | None]:
    """``(text, None)`` for a good frame whose payload is UTF-8, else ``(None, reason)``.

    No latin-1 fallback: bytes that are not UTF-8 are binary noise (a wrong baud rate, a
    wrong parity), and noise turned into text would look like a scan. Control bytes, GS
    (0x1D, the GS1 separator) among them, stay in the text; a later stage decides which are
    acceptable.
    """
    if frame.error is not None:
        return None, frame.error
    try:
        return frame.data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not text: byte 0x{frame.data[exc.start]:02x} at position {exc.start}"
