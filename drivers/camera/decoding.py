"""Barcode decoders for camera frames: zxing-cpp (the default) and zbar through pyzbar.

Both take an 8-bit grayscale image (the frame's region of interest) and return every code
found as a :class:`Code`. Runs in the camera's decode thread, never in the event loop; both
libraries release the GIL while they decode (measured: the loop's timers stay within a few
milliseconds while zxing decodes 5 MP frames in a thread).

**The text.** What a scanner would send: the AIM symbology identifier, then the data exactly
as encoded, GS separators kept (zxing's ``TextMode.Plain``; ``HRI`` would turn GS1 data into
``(01)...`` and the scan rules would no longer see GS1). So ``]d2`` + the element string of a
GS1 DataMatrix reaches the scan rules as from a handheld scanner. zbar does not say whether a
Code 128 or QR symbol carried FNC1 (GS1) through pyzbar, so its texts have no identifier: a
wrong ``]C0`` on a GS1-128 label would be worse than none (GS1 rules still match data without
identifier when they ``require`` their AIs).

**Bad text is data.** A code whose text holds a control character other than GS, a
replacement character (bytes the decoder could not map to text), or (zbar) bytes that are not
UTF-8 is a :class:`Code` with ``error`` set and the text escaped in ``shown``: the driver
records it as a rejected scan with the reason, never drops it.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import zxingcpp

from drivers.camera.config import CameraDevice

Gray = npt.NDArray[np.uint8]
"""An 8-bit, single-channel, C-contiguous image."""

SHOWN_CHARS = 256
"""Characters of a rejected code's text kept in its record (escaped); the length is given."""

# C0 controls except GS, DEL, C1 controls, and U+FFFD: never in a code's text.
_BAD_CHAR = re.compile(r"[\x00-\x1c\x1e\x1f\x7f-\x9f\ufffd]")


@dataclass(frozen=True, slots=True)
class Code:
    """One code found in one image."""

    text: str | None
    """The text as a scanner would send it (AIM identifier first); None when ``error``."""
    format: str
    """Its symbology, in the config's names (``DataMatrix``)."""
    position: str
    """Corners in frame pixels: ``x,y`` top-left, top-right, bottom-right, bottom-left."""
    error: str | None = None
    """Why the text cannot be a scan."""
    shown: str | None = None
    """With ``error``: the text or bytes, escaped, at most ``SHOWN_CHARS``."""
    length: int | None = None
    """With ``error``: the length of the text or bytes."""

    @property
    def key(self) -> str:
        """What identifies the code within a read or a dedupe window."""
        return self.text if self.text is not None else f"\x00{self.shown}"


class Decoder(Protocol):
    """Finds codes in an 8-bit grayscale image. ``offset`` is the image's top-left corner in
    the full frame, added to positions."""

    name: str

    def decode(self, image: Gray, offset: tuple[int, int]) -> list[Code]: ...


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be a scan, or None."""
    if not text:
        return "empty code"
    bad = _BAD_CHAR.search(text)
    if bad is None:
        return None
    char = bad.group()
    if char == "\ufffd":
        return f"the decoder could not map the code's bytes to text (position {bad.start()})"
    return f"control character 0x{ord(char):02x} at position {bad.start()}"


def escaped(text: str) -> str:
    """The start of ``text`` with every control and non-ASCII character escaped."""
    return text[:SHOWN_CHARS].encode("unicode_escape").decode("ascii")


def _corners(points: Sequence[tuple[int, int]], offset: tuple[int, int]) -> str:
    dx, dy = offset
    return " ".join(f"{x + dx},{y + dy}" for x, y in points)


class ZxingDecoder:
    """zxing-cpp: DataMatrix (GS1 included), QR, Aztec, PDF417, MaxiCode and 1D codes."""

    name = "zxing"

    def __init__(self, config: CameraDevice) -> None:
        wanted = [getattr(zxingcpp.BarcodeFormat, f) for f in config.formats]
        self._formats = zxingcpp.BarcodeFormats(wanted)
        self._names = {fmt: name for name, fmt in zip(config.formats, wanted, strict=True)}
        self._options: dict[str, Any] = {
            "try_rotate": config.try_rotate,
            "try_downscale": config.try_downscale,
            "try_invert": config.try_invert,
            "text_mode": zxingcpp.TextMode.Plain,  # GS stays GS (HRI would write "(01)")
        }

    def decode(self, image: Gray, offset: tuple[int, int]) -> list[Code]:
        found = zxingcpp.read_barcodes(image, formats=self._formats, **self._options)
        out: list[Code] = []
        for barcode in found:
            p = barcode.position
            corners = [
                (p.top_left.x, p.top_left.y),
                (p.top_right.x, p.top_right.y),
                (p.bottom_right.x, p.bottom_right.y),
                (p.bottom_left.x, p.bottom_left.y),
            ]
            # A family asked for (DataBar) comes back as its member (DataBarExp).
            name = (
                self._names.get(barcode.format)
                or self._names.get(barcode.symbology)
                or str(barcode.format)
            )
            text = barcode.symbology_identifier + barcode.text
            why = text_problem(barcode.text)
            if why is None:
                out.append(Code(text, name, _corners(corners, offset)))
            else:
                out.append(
                    Code(None, name, _corners(corners, offset), why, escaped(text), len(text))
                )
        return out


_ZBAR_NAMES: dict[str, str] = {
    "QRCode": "QRCODE",
    "Code128": "CODE128",
    "Code39": "CODE39",
    "Code93": "CODE93",
    "Codabar": "CODABAR",
    "EAN13": "EAN13",
    "EAN8": "EAN8",
    "UPCA": "UPCA",
    "UPCE": "UPCE",
    "ITF": "I25",
    "DataBar": "DATABAR",
    "DataBarExpanded": "DATABAR_EXP",
}
"""Config name -> zbar's symbol type name."""


class ZbarDecoder:
    """zbar through pyzbar: 1D codes and QR. zbar always scans rows and columns, so codes
    turned by 90 degrees are found whatever ``try_rotate`` says; ``try_invert`` and
    ``try_downscale`` are extra passes over the inverted and the half-size image when the
    first pass finds nothing."""

    name = "pyzbar"

    def __init__(self, config: CameraDevice) -> None:
        # Imported by name: pyzbar has no type information, and is optional (a config with
        # decoder: pyzbar needs it; the ImportError names a missing libzbar0).
        pyzbar = importlib.import_module("pyzbar.pyzbar")

        self._decode = pyzbar.decode
        self._symbols = [pyzbar.ZBarSymbol[_ZBAR_NAMES[f]] for f in config.formats]
        self._names = {_ZBAR_NAMES[f]: f for f in config.formats}
        self._invert = config.try_invert
        self._downscale = config.try_downscale

    def decode(self, image: Gray, offset: tuple[int, int]) -> list[Code]:
        passes: list[tuple[Gray, float]] = [(image, 1.0)]
        if self._invert:
            passes.append((np.ascontiguousarray(255 - image), 1.0))
        if self._downscale and min(image.shape) >= 64:
            passes.append((np.ascontiguousarray(image[::2, ::2]), 2.0))
        for candidate, scale in passes:
            found = self._decode(candidate, symbols=self._symbols)
            if found:
                return [self._code(d, offset, scale) for d in found]
        return []

    def _code(self, decoded: Any, offset: tuple[int, int], scale: float) -> Code:
        name = self._names.get(str(decoded.type), str(decoded.type))
        corners = [(round(pt.x * scale), round(pt.y * scale)) for pt in decoded.polygon]
        position = _corners(corners, offset)
        raw: bytes = decoded.data
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            shown = raw[:SHOWN_CHARS].decode("latin-1").encode("unicode_escape").decode("ascii")
            why = f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at position {exc.start})"
            return Code(None, name, position, why, shown, len(raw))
        problem = text_problem(text)
        if problem is not None:
            return Code(None, name, position, problem, escaped(text), len(text))
        return Code(text, name, position)


def make_decoder(config: CameraDevice) -> Decoder:
    """The decoder the config names. Raises ImportError when its library is missing."""
    if config.decoder == "pyzbar":
        return ZbarDecoder(config)
    return ZxingDecoder(config)


def timed_decode(
    decoder: Decoder, image: Gray, offset: tuple[int, int]
) -> tuple[list[Code], float]:
    """Codes found and the decode time in milliseconds."""
    start = time.perf_counter()
    codes = decoder.decode(image, offset)
    return codes, (time.perf_counter() - start) * 1000
