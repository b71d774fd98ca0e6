"""Config model of a camera that reads barcodes from images: a V4L2 camera, an RTSP or HTTP
stream, or a folder a smart camera drops its images into (FTP, SMB).

Imports only pydantic and the kernel, like every config model: a config is validated on
machines without OpenCV or zxing-cpp (the ``camera`` extra). The driver
(``drivers.camera.driver``) reads what this model says; every cross-field rule is in
:meth:`CameraDevice.issues`, so a config mistake is an error at start-up with its YAML line,
never a camera that quietly does something else.
"""

from __future__ import annotations

import posixpath
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from drivers.device import DeviceConfig, NamedPoint, backoff_issues
from kernel.names import Issue, Name

Symbology = Literal[
    "DataMatrix",
    "QRCode",
    "MicroQRCode",
    "Aztec",
    "PDF417",
    "MaxiCode",
    "Code128",
    "Code39",
    "Code93",
    "Codabar",
    "EAN13",
    "EAN8",
    "UPCA",
    "UPCE",
    "ITF",
    "DataBar",
    "DataBarExpanded",
    "DataBarLimited",
]
"""Symbologies a camera can be told to look for (zxing-cpp's names)."""

ZBAR_SYMBOLOGIES: tuple[str, ...] = (
    "QRCode",
    "Code128",
    "Code39",
    "Code93",
    "Codabar",
    "EAN13",
    "EAN8",
    "UPCA",
    "UPCE",
    "ITF",
    "DataBar",
    "DataBarExpanded",
)
"""The ones zbar (the pyzbar decoder) reads: 1D codes and QR, never DataMatrix."""

URL_SCHEMES = ("rtsp", "rtsps", "http", "https", "file")
"""Stream URLs OpenCV's FFmpeg backend opens here; file: plays a recorded video."""


@dataclass(frozen=True, slots=True)
class _Point:
    name: str
    station: str | None


class CameraTrigger(BaseModel):
    """Triggered mode: the point whose rising edge starts a read, and the read's timeout.

    On the rising edge of the point (a PLC's part-present bit) the camera decodes the frames
    it takes from then on until it has read ``expected_count`` codes, or ``timeout`` passed
    (a no-read, with its frame saved as evidence)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name = Field(
        description="Device of the point whose rising edge triggers a read.", examples=["press10"]
    )
    point: Name = Field(
        description="That point (a bool: part present, read request).",
        examples=["part_present"],
    )
    timeout: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds after the trigger within which the codes must be read; past it "
        "a no-read is recorded.",
    )


class Roi(BaseModel):
    """The part of each frame the decoder looks at, in pixels of the full frame.

    x counts right and y down from the frame's top-left corner. A small region decodes faster
    and keeps labels of neighbouring parts out of the read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: int = Field(ge=0, examples=[384], description="Left edge, pixels from the frame's left.")
    y: int = Field(ge=0, examples=[256], description="Top edge, pixels from the frame's top.")
    width: int = Field(gt=0, examples=[512], description="Width in pixels.")
    height: int = Field(gt=0, examples=[512], description="Height in pixels.")


class Evidence(BaseModel):
    """Frames kept as evidence, in a folder bounded in files and bytes.

    The frame of each no-read (and each rejected image), and with ``save: all`` of each read
    too; the oldest are deleted first. The scan record names the file
    (``detail.frame_file``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str = Field(
        min_length=1,
        description="Folder the frames are written to (created if missing). File names start "
        "with the device's name; each device bounds its own files.",
        examples=["/var/lib/edge-agent/evidence/cam10"],
    )
    max_files: int = Field(
        default=1000, ge=1, le=1_000_000, description="Most frames this device keeps."
    )
    max_bytes: int = Field(
        default=500_000_000,
        ge=1_000_000,
        description="Most bytes this device's frames may take together.",
    )
    save: Literal["no_reads", "all"] = Field(
        default="no_reads",
        description="no_reads: frames of no-reads and rejected images only; all: the frame of "
        "every read too.",
    )
    format: Literal["png", "jpg"] = Field(
        default="png",
        description="Image format of camera frames: png (lossless: the decoder can be re-run "
        "on exactly what the camera saw) or jpg (smaller). Images from a watched folder are "
        "kept as they came.",
    )


class DoneFolder(BaseModel):
    """Where a watched folder's images go once read, bounded like the evidence folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str = Field(
        min_length=1,
        description="Folder processed images are moved to (created if missing); not the "
        "watched folder itself.",
        examples=["/srv/ftp/cam10/done"],
    )
    max_files: int = Field(default=1000, ge=1, le=1_000_000, description="Most images kept.")
    max_bytes: int = Field(
        default=500_000_000, ge=1_000_000, description="Most bytes the kept images may take."
    )


class CameraDevice(DeviceConfig):
    """A camera whose frames the agent decodes: each code read is a scan.

    Decoded by zxing-cpp (or pyzbar for 1D and QR codes); each scan is classified by the
    station's scan rules like a scanner's."""

    type: Literal["camera"] = Field(
        description="Driver: camera (needs the camera extra: OpenCV and zxing-cpp).",
        examples=["camera"],
    )

    # ---- the source: exactly one ------------------------------------------------------------
    device: str | int | None = Field(
        default=None,
        description="A V4L2 camera (USB, CSI): its device path, preferably the stable "
        "/dev/v4l/by-id/...-video-index0 name, or its index (0 for /dev/video0). Give device, "
        "url or folder.",
        examples=["/dev/v4l/by-id/usb-IDS_Imaging_UI-1240-video-index0", 0],
    )
    url: str | None = Field(
        default=None,
        min_length=1,
        description="A network stream OpenCV opens with FFmpeg: rtsp:// (IP cameras), "
        "http:// MJPEG; file:// plays a recorded video (commissioning, tests).",
        examples=["rtsp://192.168.10.70:554/stream1", "http://192.168.10.71/mjpg/video.mjpg"],
    )
    folder: str | None = Field(
        default=None,
        min_length=1,
        description="A folder a smart camera drops images into (over FTP or SMB): each image "
        "is read once, then deleted or moved to done.",
        examples=["/srv/ftp/cam10"],
    )
    pattern: str | None = Field(
        default=None,
        min_length=1,
        description="With folder: glob of the image file names to read (case-sensitive); "
        "others are left alone. Default: *.",
        examples=["*.png", "*.bmp", "IMG_*.jpg"],
    )
    settle: float | None = Field(
        default=None,
        ge=0,
        le=60,
        description="With folder: seconds an image's size and time must stay unchanged "
        "before it is read, so that one still being uploaded is not read half-written. "
        "Default: 0.2.",
    )
    done: DoneFolder | None = Field(
        default=None,
        description="With folder: move processed images here (bounded); null: delete them.",
    )
    width: int | None = Field(
        default=None,
        gt=0,
        le=20000,
        description="Frame width in pixels: asked of a V4L2 camera, and checked on every "
        "frame or image (the region of interest is in these pixels); a frame of another size "
        "is refused with the reason. Null: any size.",
    )
    height: int | None = Field(
        default=None,
        gt=0,
        le=20000,
        description="Frame height in pixels, as width.",
    )
    fps: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="Frames per second asked of a V4L2 camera; null: its default.",
    )
    fourcc: str | None = Field(
        default=None,
        min_length=4,
        max_length=4,
        description="Pixel format asked of a V4L2 camera, e.g. MJPG (most USB cameras give "
        "their full resolution at full rate only in MJPG) or YUYV.",
        examples=["MJPG", "YUYV"],
    )
    open_timeout: float | None = Field(
        default=None,
        gt=0,
        le=60,
        description="With device or url: seconds the camera or stream has to open and give a "
        "first frame. Default: 5.",
    )
    read_timeout: float | None = Field(
        default=None,
        gt=0,
        le=60,
        description="With device or url: seconds without a frame after which the camera is "
        "lost (device down, reopened with backoff). Default: 5.",
    )

    # ---- decoding ---------------------------------------------------------------------------
    decoder: Literal["zxing", "pyzbar"] = Field(
        default="zxing",
        description="zxing: zxing-cpp, reads DataMatrix (GS1 included, GS separators kept), "
        "QR, Aztec, PDF417 and 1D codes; pyzbar: zbar, 1D codes and QR only (needs pyzbar and "
        "libzbar0).",
    )
    formats: list[Symbology] = Field(
        default_factory=lambda: list[Symbology](["DataMatrix"]),
        min_length=1,
        description="Symbologies to look for. Fewer is faster and avoids reading a code that "
        "is not the part's.",
        examples=[["DataMatrix"], ["Code128", "QRCode"]],
    )
    roi: Roi | None = Field(default=None, description="Region of interest; null: the whole frame.")
    expected_count: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Triggered mode: codes one read must give (different texts, from one "
        "frame or several); a read ends once it has them. Fewer by the timeout: the codes "
        "read are scans and the missing ones one no-read.",
    )
    try_rotate: bool = Field(
        default=True,
        description="zxing: also look for codes turned by 90 degrees (1D codes) and in any "
        "orientation. Slower; off when the part always comes the same way round.",
    )
    try_downscale: bool = Field(
        default=True,
        description="Also decode a downscaled copy of the frame (finds codes that are large "
        "in the frame, and fine-grained noise matters less). Slower.",
    )
    try_invert: bool = Field(
        default=True,
        description="Also look for light-on-dark codes (laser or dot-peen marks on dark "
        "metal). Slower; off for printed labels.",
    )

    # ---- what becomes a scan ----------------------------------------------------------------
    mode: Literal["continuous", "triggered"] = Field(
        default="continuous",
        description="continuous: every frame is decoded, and a code seen again within window "
        "is the same scan; triggered: a trigger point's rising edge starts a read (see "
        "trigger).",
    )
    trigger: CameraTrigger | None = Field(
        default=None, description="Triggered mode: the point that starts a read, and its timeout."
    )
    window: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Continuous mode: seconds within which the same code seen again is the "
        "same scan (a part in view for many frames is one scan). A code unseen for longer is "
        "a new scan when it comes back. Default: 2.",
    )
    evidence: Evidence | None = Field(
        default=None, description="Keep frames of no-reads (or of every read); null: none."
    )
    point: Name = Field(
        default="scan",
        description="Point name of the scans, as scans.sources and records name it.",
    )
    backoff_initial: float = Field(default=0.5, gt=0, description="Reopen backoff base.")
    backoff_max: float = Field(default=30.0, gt=0, description="Reopen backoff cap.")

    # ---- effective values -------------------------------------------------------------------

    def source_kind(self) -> Literal["device", "url", "folder"]:
        """Which source the entry gives (valid configs give exactly one)."""
        if self.folder is not None:
            return "folder"
        if self.url is not None:
            return "url"
        return "device"

    def source_text(self) -> str:
        """The source as messages name it."""
        if self.folder is not None:
            return f"folder {self.folder}"
        if self.url is not None:
            return self.url
        return self.v4l2_path()

    def v4l2_path(self) -> str:
        """The V4L2 device's path (an index N is /dev/videoN)."""
        if isinstance(self.device, int):
            return f"/dev/video{self.device}"
        return self.device or ""

    def file_pattern(self) -> str:
        return self.pattern if self.pattern is not None else "*"

    def settle_time(self) -> float:
        return self.settle if self.settle is not None else 0.2

    def open_seconds(self) -> float:
        return self.open_timeout if self.open_timeout is not None else 5.0

    def read_seconds(self) -> float:
        return self.read_timeout if self.read_timeout is not None else 5.0

    def dedupe_window(self) -> float:
        return self.window if self.window is not None else 2.0

    # ---- what the agent's core asks ------------------------------------------------------------

    def named_points(self) -> Sequence[NamedPoint]:
        return [_Point(self.point, self.station)]

    def scan_points(self) -> Sequence[str]:
        return [self.point]

    def read_trigger(self) -> tuple[tuple[str | int, ...], str, str] | None:
        if self.trigger is None or self.mode != "triggered":
            return None
        return ("trigger",), self.trigger.device, self.trigger.point

    def commands(self) -> Sequence[str]:
        return ["trigger"] if self.mode == "triggered" else []

    def identity(self) -> Hashable | None:
        if self.folder is not None:
            return ("folder", posixpath.normpath(self.folder))
        if self.url is not None:
            return ("url", self.url)
        if self.device is not None:
            return ("v4l2", posixpath.normpath(self.v4l2_path()))
        return None

    def duplicate_issue(self, first: int) -> Issue:
        key = self.source_kind()
        return (
            (key,),
            f"{self.source_text()} is already read by devices[{first}]: one source, one "
            "device (a second reader would take images or frames the first never sees)",
        )

    def request_timeout(self) -> float:
        return self.open_seconds()

    # ---- cross-field checks ------------------------------------------------------------------

    def issues(self) -> list[Issue]:
        out: list[Issue] = []
        given = [k for k in ("device", "url", "folder") if getattr(self, k) is not None]
        if len(given) != 1:
            out.append(
                (
                    (given[1],) if len(given) > 1 else ("type",),
                    "give exactly one source: device (a V4L2 camera), url (an RTSP or HTTP "
                    "stream) or folder (a smart camera's images); got "
                    f"{', '.join(given) or 'none'}",
                )
            )
        out.extend(self._source_issues())
        out.extend(self._decoder_issues())
        out.extend(self._mode_issues())
        if self.roi is not None:
            for axis, size in (("x", self.width), ("y", self.height)):
                start = self.roi.x if axis == "x" else self.roi.y
                extent = self.roi.width if axis == "x" else self.roi.height
                if size is not None and start + extent > size:
                    what = "width" if axis == "x" else "height"
                    out.append(
                        (
                            ("roi", what),
                            f"the region ends at {axis} {start + extent}, outside the frame's "
                            f"{what} {size}",
                        )
                    )
        out.extend(self._folder_clashes())
        out.extend(backoff_issues(self.backoff_initial, self.backoff_max))
        return out

    def _source_issues(self) -> list[Issue]:
        out: list[Issue] = []
        if self.url is not None:
            scheme = urlsplit(self.url).scheme.lower()
            if scheme not in URL_SCHEMES:
                out.append(
                    (
                        ("url",),
                        f"unsupported URL scheme {scheme or '(none)'!r}: use "
                        f"{', '.join(s + '://' for s in URL_SCHEMES)}",
                    )
                )
        if isinstance(self.device, int) and self.device < 0:
            out.append((("device",), "a camera index is 0 or more"))
        if isinstance(self.device, str) and not self.device.startswith("/"):
            out.append(
                (
                    ("device",),
                    f"give the camera's device path, e.g. /dev/v4l/by-id/...-video-index0, or "
                    f"its index; got {self.device!r}",
                )
            )
        if self.folder is not None:
            if not self.folder.startswith("/"):
                out.append((("folder",), f"give an absolute path; got {self.folder!r}"))
            for key in ("fps", "fourcc", "open_timeout", "read_timeout"):
                if getattr(self, key) is not None:
                    out.append(((key,), f"{key} is for a camera (device or url), not a folder"))
        else:
            for key in ("pattern", "settle", "done"):
                if getattr(self, key) is not None:
                    out.append(((key,), f"{key} is for a watched folder; give folder too"))
        if self.url is not None:
            for key in ("fps", "fourcc"):
                if getattr(self, key) is not None:
                    out.append(
                        (
                            (key,),
                            f"{key} is asked of a V4L2 camera; a stream's is set on the camera",
                        )
                    )
        return out

    def _decoder_issues(self) -> list[Issue]:
        if self.decoder != "pyzbar":
            return []
        unreadable = [f for f in self.formats if f not in ZBAR_SYMBOLOGIES]
        if not unreadable:
            return []
        return [
            (
                ("formats",),
                f"pyzbar (zbar) cannot read {', '.join(unreadable)}: use decoder: zxing, or "
                f"formats zbar reads ({', '.join(ZBAR_SYMBOLOGIES)})",
            )
        ]

    def _mode_issues(self) -> list[Issue]:
        out: list[Issue] = []
        if self.mode == "triggered":
            if self.trigger is None:
                out.append(
                    (
                        ("mode",),
                        "triggered mode needs trigger: {device, point} (what starts a read)",
                    )
                )
            elif self.trigger.device == self.name:
                out.append((("trigger", "device"), "a camera cannot trigger itself"))
            if self.window is not None:
                out.append(
                    (("window",), "window is for continuous mode (a trigger gives one read)")
                )
        else:
            if self.trigger is not None:
                out.append((("trigger",), "trigger is for mode: triggered; set mode too"))
            if self.expected_count != 1:
                out.append(
                    (
                        ("expected_count",),
                        "expected_count is for triggered mode; in continuous mode every code "
                        "in view is a scan",
                    )
                )
        return out

    def _folder_clashes(self) -> list[Issue]:
        """The agent must never read its own output as input, nor move files in a circle."""
        out: list[Issue] = []
        watched = posixpath.normpath(self.folder) if self.folder is not None else None
        kept = {
            ("evidence", "folder"): self.evidence.folder if self.evidence else None,
            ("done", "folder"): self.done.folder if self.done else None,
        }
        for path, folder in kept.items():
            if folder is not None and watched is not None and posixpath.normpath(folder) == watched:
                out.append(
                    (path, "must not be the watched folder: the agent would read its own files")
                )
        if (
            self.evidence is not None
            and self.done is not None
            and posixpath.normpath(self.evidence.folder) == posixpath.normpath(self.done.folder)
        ):
            out.append(
                (
                    ("done", "folder"),
                    "must not be the evidence folder: each is bounded on its own",
                )
            )
        return out
