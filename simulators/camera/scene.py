"""The station seen through the camera (:class:`CameraScene`, pure: a frame is a function of its
index and time), every frame with its :class:`FrameTruth`.

  * Part ``k`` is in view from the start of cycle ``k`` for ``dwell`` of the cycle; after that
    the frame shows the empty background until the next part arrives.
  * The part's code is the scanner's (:func:`simulators.scanner.part_code`), in the
    configured :class:`~simulators.camera.config.Symbology`. The symbols are made by
    zxing-cpp's writer (3.x, libzint), which takes GS1 data as bracketed AIs
    (``[01]...[21]...[10]...``); the bracketed form is built from biip's parse of the element
    string, never by hand, and the symbol's encoded bytes are checked against the payload.
  * Placement, distortions and faults follow the
    :class:`~simulators.camera.config.CameraConfig` (:mod:`simulators.camera.config`). A
    faulty part's frames have ``payload`` None: a reader must report nothing, not a wrong code.

Rendering is CPU work (a 2592x1944 frame takes tens of milliseconds). The clean image of a
part (everything but the per-frame noise) is rendered once per part and cached. A
:class:`CameraScene` is immutable apart from that cache (guarded by a lock), so the live
cameras' worker thread and the loop may share it.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace

import cv2
import numpy as np
import zxingcpp
from biip import ParseConfig, ParseError
from biip.gs1_messages import GS1Message
from numpy.typing import NDArray

from simulators.camera.config import CameraConfig, Distortions, Fault, Symbology
from simulators.scanner import GS, Symbol, part_code
from simulators.station import StationModel

Image = NDArray[np.uint8]
"""A frame: ``(height, width)`` grayscale or ``(height, width, 3)`` BGR, uint8."""

_GS1_PARSE = ParseConfig(gs1_element_strings_verify_date=True, separator_chars=(GS,))
_MARGIN_MODULES = 3  # light surface around the symbol, beyond the writer's own quiet zone


# ---- ground truth -------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameTruth:
    """What one frame shows, and what a reader should make of it."""

    index: int
    """Frame number: ``t0 + index / fps`` for video and stream; the drop number of a folder."""
    t: float
    """The station time (monotonic) the frame shows."""
    cycle: int
    """The station's cycle at ``t`` (also when no part is in view)."""
    phase: float
    in_view: bool
    """A part is in front of the camera (False between parts and for a missing part)."""
    code: str | None
    """What the part's symbol encodes, as a reader reports it (AIM id + data); None without
    a part in view."""
    payload: str | None
    """What a reader should decode: ``code``, or None when there is no part or the part's
    fault makes it unreadable."""
    fault: Fault | None
    distortions: Distortions
    """The distortions applied (``rotation`` includes the part's jitter)."""
    box: tuple[int, int, int, int] | None
    """The symbol's bounding box in the frame, (x, y, width, height), clipped to the frame;
    None when it is not in the frame."""


@dataclass(frozen=True)
class Frame:
    image: Image
    truth: FrameTruth


@dataclass(frozen=True)
class _Part:
    """One part's pose and fault (pure in the cycle and the seed)."""

    fault: Fault | None
    center: tuple[float, float]  # pixels
    rotation: float


# ---- the symbol -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Symbol:
    code: str  # AIM id + data
    bitmap: Image  # 1 pixel per module, quiet zone included: 0 dark, 255 light
    modules: tuple[int, int]  # symbol size without quiet zone (width, height)


@functools.lru_cache(maxsize=64)
def _make_symbol(code: str, symbology: Symbology) -> _Symbol:
    """The symbol encoding ``code`` (AIM id + data). Pure, so cached (thread-safe)."""
    data = code[len(symbology.aim) :]
    if symbology.gs1:
        try:
            message = GS1Message.parse(data, config=_GS1_PARSE)
        except ParseError as exc:
            raise ValueError(f"camera configuration invalid: {code!r}: {exc}") from None
        text = "".join(f"[{es.ai.ai}]{es.value}" for es in message.element_strings)
        barcode = zxingcpp.create_barcode(text, symbology.barcode_format, gs1=True)
    else:
        barcode = zxingcpp.create_barcode(data, symbology.barcode_format)
    # The writer is another implementation of GS1: check it encoded what the truth says.
    encoded = barcode.symbology_identifier + barcode.bytes.decode("latin-1")
    if encoded != code:
        raise ValueError(f"camera simulator: the symbol encodes {encoded!r}, not {code!r}")
    bare = np.array(zxingcpp.write_barcode_to_image(barcode, add_quiet_zones=False))
    bitmap = np.array(zxingcpp.write_barcode_to_image(barcode), dtype=np.uint8)
    bitmap.setflags(write=False)
    return _Symbol(code, bitmap, (int(bare.shape[1]), int(bare.shape[0])))


# ---- the scene ----------------------------------------------------------------------------


class CameraScene:
    """The station seen through the camera: frames and their truth as pure functions of
    (index, time). Thread-safe: immutable apart from a locked render cache."""

    def __init__(self, model: StationModel, config: CameraConfig | None = None) -> None:
        if model.handshake:
            raise ValueError(
                "camera configuration invalid: a handshake station's cycles follow the agent, "
                "not the clock, so the camera cannot know which part is in view"
            )
        self.model = model
        self.config = config or CameraConfig()
        self._lock = threading.Lock()
        self._cache: dict[int | None, Image] = {}
        self._background = self._make_background()
        self._symbol(0)  # a configuration that cannot give a valid code fails here

    @property
    def t0(self) -> float:
        """The station's start of cycle 0 (0.0 while the model has none)."""
        return self.model.t0 or 0.0

    def with_t0(self, t0: float) -> CameraScene:
        """The same scene on a station whose cycle 0 started at ``t0``."""
        return CameraScene(replace(self.model, t0=t0), self.config)

    # -- time

    def frame_time(self, index: int) -> float:
        return self.t0 + index / self.config.fps

    def index_at(self, t: float) -> int:
        """The last frame tick at or before ``t``."""
        return math.floor((t - self.t0) * self.config.fps + 1e-9)

    # -- truth

    def code(self, cycle: int) -> str:
        """What part ``cycle``'s symbol encodes, as a reader reports it (AIM id + data)."""
        cfg = self.config
        if cfg.symbology.gs1:
            symbol = Symbol(aim=None, gtin=cfg.gtin, lot=cfg.lot)
            return cfg.symbology.aim + part_code(self.model, cycle, symbol)
        return cfg.symbology.aim + self.model.serial(cycle)

    def part_fault(self, cycle: int) -> Fault | None:
        return self._part(cycle).fault

    def truth(self, index: int, t: float) -> FrameTruth:
        cycle, phase = self.model.cycle_at(t)
        part = self._part(cycle)
        in_view = phase < self.config.dwell and part.fault is not Fault.MISSING
        code = self.code(cycle) if in_view else None
        payload = code if in_view and part.fault is None else None
        applied = replace(
            self.config.distortions, rotation=self.config.distortions.rotation + part.rotation
        )
        box = self._box(cycle, part) if in_view else None
        return FrameTruth(index, t, cycle, phase, in_view, code, payload, part.fault, applied, box)

    # -- images

    def render(self, index: int, t: float) -> Frame:
        """Frame ``index`` showing station time ``t``."""
        truth = self.truth(index, t)
        image = self._clean(truth.cycle if truth.in_view else None)
        noise = self.config.distortions.noise
        if noise > 0:
            rng = np.random.default_rng([self.config.seed, 2, index])
            grain = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise)
            image = np.clip(image.astype(np.float32) + grain, 0, 255).astype(np.uint8)
        if self.config.color:
            image = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
        return Frame(image, truth)

    def frames(self, count: int, first: int = 0) -> Iterator[Frame]:
        """Frames ``first`` .. ``first + count - 1`` at ``t0 + index / fps``."""
        for i in range(first, first + count):
            yield self.render(i, self.frame_time(i))

    # -- internals

    def _symbol(self, cycle: int) -> _Symbol:
        """The symbol of part ``cycle``, made by zxing-cpp's writer (see the module doc)."""
        return _make_symbol(self.code(cycle), self.config.symbology)

    def _part(self, cycle: int) -> _Part:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 1, cycle])
        draw, dx, dy, dr = (float(x) for x in rng.random(4))
        fault = cfg.faults.get(cycle)
        if fault is None:
            for f in Fault:
                rate = cfg.fault_rates.get(f, 0.0)
                if draw < rate:
                    fault = f
                    break
                draw -= rate
        w, h = cfg.resolution
        p = cfg.placement
        cx = p.center[0] * w + (2 * dx - 1) * p.jitter * h
        cy = p.center[1] * h + (2 * dy - 1) * p.jitter * h
        if fault is Fault.CUT_OFF:
            cx = -0.1 * self._scale(cycle) * self._symbol(cycle).modules[0]
        return _Part(fault, (cx, cy), (2 * dr - 1) * p.rotation_jitter)

    def _scale(self, cycle: int) -> float:
        """Pixels per module."""
        modules = self._symbol(cycle).modules[0]
        return self.config.placement.size * self.config.resolution[0] / modules

    def _box(self, cycle: int, part: _Part) -> tuple[int, int, int, int] | None:
        mw, mh = self._symbol(cycle).modules
        s = self._scale(cycle)
        angle = math.radians(self.config.distortions.rotation + part.rotation)
        c, n = abs(math.cos(angle)), abs(math.sin(angle))
        bw, bh = s * (mw * c + mh * n), s * (mw * n + mh * c)
        w, h = self.config.resolution
        x0 = max(0, math.floor(part.center[0] - bw / 2))
        y0 = max(0, math.floor(part.center[1] - bh / 2))
        x1 = min(w, math.ceil(part.center[0] + bw / 2))
        y1 = min(h, math.ceil(part.center[1] + bh / 2))
        return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None

    def _levels(self) -> tuple[int, int]:
        """Grey levels of (the marks, the part's surface)."""
        d = self.config.distortions
        light = round(128 + 127 * d.contrast)
        dark = round(128 - 127 * d.contrast)
        return (light, dark) if d.invert else (dark, light)

    def _make_background(self) -> Image:
        """A static, seeded, softly uneven background (a conveyor or fixture)."""
        w, h = self.config.resolution
        rng = np.random.default_rng([self.config.seed, 0])
        coarse = rng.uniform(70, 110, (h // 48 + 2, w // 48 + 2)).astype(np.float32)
        smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        return np.clip(smooth, 0, 255).astype(np.uint8)

    def _clean(self, cycle: int | None) -> Image:
        """The frame without noise: background, and part ``cycle`` if one is in view."""
        with self._lock:
            cached = self._cache.get(cycle)
        if cached is not None:
            return cached
        image = self._background.copy()
        if cycle is not None:
            self._draw_part(image, cycle)
        blur = self.config.distortions.blur
        if blur > 0:
            image = np.asarray(cv2.GaussianBlur(image, (0, 0), blur), dtype=np.uint8)
        image.setflags(write=False)
        with self._lock:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[cycle] = image
        return image

    def _draw_part(self, image: Image, cycle: int) -> None:
        part = self._part(cycle)
        sym = self._symbol(cycle)
        scale = self._scale(cycle)
        mark, surface = self._levels()
        # The part's surface: the writer's quiet zone plus a margin.
        margin = _MARGIN_MODULES
        bitmap = cv2.copyMakeBorder(
            sym.bitmap, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=(255,)
        )
        bh, bw = bitmap.shape[:2]
        size = (max(1, round(bw * scale)), max(1, round(bh * scale)))
        patch = cv2.resize(bitmap, size, interpolation=cv2.INTER_NEAREST)
        patch = np.where(patch < 128, mark, surface).astype(np.uint8)
        if part.fault is Fault.COVERED:
            # Over the left 60% of the symbol, finder pattern included: beyond any EC level.
            qz_x = (bw - sym.modules[0]) / 2 * scale
            x1 = round(qz_x + 0.6 * sym.modules[0] * scale)
            patch[:, : max(1, x1)] = 100
        angle = self.config.distortions.rotation + part.rotation
        ph, pw = patch.shape
        side = math.ceil(math.hypot(pw, ph)) + 2
        matrix = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, 1.0)
        matrix[0, 2] += (side - pw) / 2
        matrix[1, 2] += (side - ph) / 2
        rotated = cv2.warpAffine(
            patch,
            matrix,
            (side, side),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0,),
        )
        mask = cv2.warpAffine(
            np.full_like(patch, 255),
            matrix,
            (side, side),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0,),
        )
        _paste(image, np.asarray(rotated, np.uint8), np.asarray(mask, np.uint8), part.center)


def _paste(image: Image, patch: Image, mask: Image, center: tuple[float, float]) -> None:
    """Blend ``patch`` into ``image`` (in place) centred at ``center``, clipped to the frame."""
    h, w = image.shape[:2]
    ph, pw = patch.shape[:2]
    x0, y0 = round(center[0] - pw / 2), round(center[1] - ph / 2)
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(w, x0 + pw), min(h, y0 + ph)
    if fx1 <= fx0 or fy1 <= fy0:
        return
    src = patch[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0].astype(np.float32)
    alpha = mask[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0].astype(np.float32) / 255
    dst = image[fy0:fy1, fx0:fx1].astype(np.float32)
    image[fy0:fy1, fx0:fx1] = np.round(src * alpha + dst * (1 - alpha)).astype(np.uint8)
