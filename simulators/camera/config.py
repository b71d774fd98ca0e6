"""What the camera is and what it looks at: :class:`CameraConfig` and its parts, all checked
at construction (every error reported at once).

  * The part's code (:class:`Symbology`): a GS1 DataMatrix by default, encoded in GS1 mode
    (FNC1 first), so a reader reports ``]d2`` and GS separators -- exactly the scanner's
    ``]d2 01 <GTIN> 21 <serial> GS 10 <lot>``; also GS1 QR (``]Q3``), GS1-128 (``]C1``) and
    plain DataMatrix, QR and Code 128 of the serial (``]d1``, ``]Q1``, ``]C0``). How the
    symbols are made: :mod:`simulators.camera.scene`.
  * Placement (:class:`Placement`): where the code's centre is and how big it is, as fractions
    of the frame, so a region of interest can be tested; per part a seeded jitter of position
    and rotation, as parts never sit exactly alike.
  * Distortions (:class:`Distortions`): rotation, blur, sensor noise (per frame, seeded by the
    frame index), low contrast, inversion (light marks on a dark surface, as dot-peened DPM).
  * Faults per part (:class:`Fault`), by seeded rate or for given cycles: the code covered
    (a finger, a chip, a label edge over more than half of it), cut off (the part stopped
    short, the code half out of the frame), or a missing part (an empty carrier). Their
    frames' ``payload`` is None: a reader must report nothing, not a wrong code.
  * The sensor sizes the driver is tested with: :data:`VGA`, :data:`SXGA`, :data:`FIVE_MP`
    (:data:`RESOLUTIONS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import zxingcpp

from simulators.station import GTIN

Resolution = tuple[int, int]
"""(width, height) in pixels."""

VGA: Resolution = (640, 480)
SXGA: Resolution = (1280, 960)
FIVE_MP: Resolution = (2592, 1944)
RESOLUTIONS = (VGA, SXGA, FIVE_MP)
"""The sensor sizes of the industrial cameras the driver is tested with."""


class Symbology(StrEnum):
    """What is marked on the part, and what a reader reports for it (AIM id + data)."""

    GS1_DATAMATRIX = "gs1_datamatrix"
    """``]d2`` + the scanner's GS1 element string (the default: part marking)."""
    GS1_QR = "gs1_qr"
    """``]Q3`` + the GS1 element string."""
    GS1_128 = "gs1_128"
    """``]C1`` + the GS1 element string (a label, linear)."""
    DATAMATRIX = "datamatrix"
    """``]d1`` + the serial."""
    QR = "qr"
    """``]Q1`` + the serial."""
    CODE128 = "code128"
    """``]C0`` + the serial."""

    @property
    def gs1(self) -> bool:
        return self in (Symbology.GS1_DATAMATRIX, Symbology.GS1_QR, Symbology.GS1_128)

    @property
    def aim(self) -> str:
        """The AIM symbology identifier a reader reports (ISO/IEC 15424)."""
        return _AIM[self]

    @property
    def barcode_format(self) -> zxingcpp.BarcodeFormat:
        """zxing-cpp's format for it."""
        return _FORMAT[self]


_AIM = {
    Symbology.GS1_DATAMATRIX: "]d2",
    Symbology.GS1_QR: "]Q3",
    Symbology.GS1_128: "]C1",
    Symbology.DATAMATRIX: "]d1",
    Symbology.QR: "]Q1",
    Symbology.CODE128: "]C0",
}
_FORMAT = {
    Symbology.GS1_DATAMATRIX: zxingcpp.BarcodeFormat.DataMatrix,
    Symbology.GS1_QR: zxingcpp.BarcodeFormat.QRCode,
    Symbology.GS1_128: zxingcpp.BarcodeFormat.Code128,
    Symbology.DATAMATRIX: zxingcpp.BarcodeFormat.DataMatrix,
    Symbology.QR: zxingcpp.BarcodeFormat.QRCode,
    Symbology.CODE128: zxingcpp.BarcodeFormat.Code128,
}


class Fault(StrEnum):
    """What can make one part's frames unreadable (see the module doc)."""

    COVERED = "covered"
    """More than half of the symbol, finder pattern included, is hidden."""
    CUT_OFF = "cut_off"
    """The part stopped short: most of the symbol lies outside the frame."""
    MISSING = "missing"
    """No part on the carrier: the cycle's frames show the empty background."""


@dataclass(frozen=True)
class Placement:
    """Where the code is in the frame."""

    center: tuple[float, float] = (0.5, 0.5)
    """The symbol's centre, as fractions of the frame's width and height."""
    size: float = 0.3
    """The symbol's width (without quiet zone) as a fraction of the frame's width. A linear
    code needs more than a 2D one: GS1-128 of the part code has ~320 modules."""
    jitter: float = 0.0
    """Per part, the centre moves by up to this fraction of the frame's height (seeded)."""
    rotation_jitter: float = 0.0
    """Per part, the rotation varies by up to this many degrees either way (seeded)."""


@dataclass(frozen=True)
class Distortions:
    """How the optics, the sensor and the marking spoil the image."""

    rotation: float = 0.0
    """Degrees, counter-clockwise."""
    blur: float = 0.0
    """Gaussian blur sigma in pixels (0: sharp)."""
    noise: float = 0.0
    """Standard deviation of Gaussian sensor noise, in grey levels; new for every frame."""
    contrast: float = 1.0
    """Difference between the code's light and dark, as a fraction of 255 (1: black on white)."""
    invert: bool = False
    """Light marks on a dark surface (dot-peened or laser-marked metal)."""


@dataclass(frozen=True)
class CameraConfig:
    """The camera and what it looks at. Errors are all reported at once, at construction."""

    resolution: Resolution = VGA
    symbology: Symbology = Symbology.GS1_DATAMATRIX
    placement: Placement = field(default_factory=Placement)
    distortions: Distortions = field(default_factory=Distortions)
    fps: float = 10.0
    """Frame rate of the video file and the MJPEG stream."""
    dwell: float = 0.8
    """Fraction of each cycle (from its start) during which the part is in view."""
    color: bool = False
    """BGR frames (a colour sensor); False: grayscale (the usual code-reading camera)."""
    gtin: str = GTIN
    lot: bool = True
    """GS1 symbols carry ``10`` + the lot, as the scanner's part code does."""
    fault_rates: Mapping[Fault, float] = field(default_factory=dict)
    """Probability per part of each fault, drawn with ``seed`` (one draw per part)."""
    faults: Mapping[int, Fault] = field(default_factory=dict)
    """Cycle -> fault, taking precedence over the rates."""
    seed: int = 0
    jpeg_quality: int = 90
    """For the MJPEG stream and JPEG files."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        w, h = self.resolution
        if w < 64 or h < 64:
            problems.append(f"resolution {self.resolution} is smaller than 64x64")
        p, d = self.placement, self.distortions
        if not 0.0 < p.size <= 1.0:
            problems.append(f"placement.size {p.size} is not in (0, 1]")
        if not all(0.0 <= c <= 1.0 for c in p.center):
            problems.append(f"placement.center {p.center} is not inside the frame")
        if p.jitter < 0 or p.rotation_jitter < 0:
            problems.append("placement.jitter and rotation_jitter must be >= 0")
        if d.blur < 0 or d.noise < 0:
            problems.append("distortions.blur and noise must be >= 0")
        if not 0.0 < d.contrast <= 1.0:
            problems.append(f"distortions.contrast {d.contrast} is not in (0, 1]")
        if self.fps <= 0:
            problems.append(f"fps {self.fps} must be positive")
        if not 0.0 < self.dwell <= 1.0:
            problems.append(f"dwell {self.dwell} is not in (0, 1]")
        for fault, rate in self.fault_rates.items():
            if not 0.0 <= rate <= 1.0:
                problems.append(f"fault_rates[{fault}] = {rate} is not a probability")
        if sum(self.fault_rates.values()) > 1.0:
            problems.append(f"fault_rates add up to {sum(self.fault_rates.values())}, over 1")
        if any(k < 0 for k in self.faults):
            problems.append("faults: cycles must be >= 0")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append(f"jpeg_quality {self.jpeg_quality} is not in 1..100")
        if problems:
            raise ValueError("camera configuration invalid: " + "; ".join(problems))
