"""Where a camera's frames come from: a live camera or stream through OpenCV, or a folder a
smart camera drops images into; and what makes a frame usable.

**Live sources drop, they never queue.** A V4L2 camera or a stream delivers frames at its own
rate whether or not anyone decodes them; frames left unread pile up in the driver's or
FFmpeg's buffers and every later read is stale. So a capture thread of its own
(:class:`LiveCapture`) reads frames as fast as they come and puts each in a
:class:`LatestSlot` holding at most one: when decoding is slower than the camera, the frame
not yet taken is replaced by the newer one and counted as dropped. Memory stays at a few
frames whatever the rates.

**A folder queues on disk, and never drops.** Images a smart camera uploads are shots, each
one taken on purpose; the decode thread reads them itself (:class:`WatchedFolder`), oldest
first, one at a time, so a burst waits on disk, not in memory. An image is read once its size
and time stood still for ``settle`` seconds (an FTP upload in progress looks like a
shorter file), then deleted or moved to the done folder.

**Handles have one owner.** The capture thread opens, reads and releases its
``cv2.VideoCapture`` (OpenCV's handles are not safe to share across threads); the decode
thread owns the folder. Blocking calls are bounded: OpenCV's FFmpeg backend honours the open
and read timeouts (``CAP_PROP_OPEN_TIMEOUT_MSEC``, ``CAP_PROP_READ_TIMEOUT_MSEC``), V4L2
reads fail at once when the camera is unplugged, so the capture thread can always be joined
within ``open_timeout``/``read_timeout`` plus a margin.
"""

from __future__ import annotations

import fnmatch
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np
import numpy.typing as npt

from drivers.camera.config import CameraDevice
from drivers.camera.decoding import Gray
from drivers.camera.evidence import BoundedFolder
from kernel.errors import ConnectError

MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""Largest image file read from a watched folder; a larger one is rejected unread."""
POLL_INTERVAL = 0.05
"""Seconds between two listings of a watched folder."""
MAX_SKIPPED = 10_000
"""Images that could not be removed after reading, remembered so they are not read again."""


class UnusableFrame(ValueError):
    """A frame or image that cannot be decoded: the reason is the message."""


@dataclass(slots=True)
class Frame:
    """One frame of a live source, or one image of a watched folder."""

    index: int
    """Counts the source's frames since the driver was built."""
    taken: float
    """Monotonic time it was captured (live) or first seen (folder)."""
    ts: float
    """Wall-clock time of ``taken``, for records."""
    image: npt.NDArray[Any] | None = None
    """The pixels as the source gave them, None if unusable."""
    error: str | None = None
    """Why the frame cannot be decoded."""
    path: Path | None = None
    """Folder: the image file."""
    raw: bytes | None = None
    """Folder: the file's bytes, kept as evidence as they came."""


def to_gray(frame: Frame, config: CameraDevice) -> tuple[Gray, tuple[int, int]]:
    """The region of interest of ``frame`` as 8-bit gray, and its offset in the frame.

    Raises :class:`UnusableFrame` naming what is wrong: a colour format other than gray,
    BGR or BGRA in 8 or 16 bits, a size other than the configured one, a region of interest
    outside the frame.
    """
    if frame.error is not None:
        raise UnusableFrame(frame.error)
    image = frame.image
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise UnusableFrame("empty frame")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3):
        raise UnusableFrame(f"frame of shape {image.shape} is not an image")
    h, w = image.shape[:2]
    if (config.width is not None and w != config.width) or (
        config.height is not None and h != config.height
    ):
        want = f"{config.width or w}x{config.height or h}"
        raise UnusableFrame(f"frame is {w}x{h}, expected {want} (width, height)")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise UnusableFrame(f"pixels of type {image.dtype} (only 8 or 16 bit are decoded)")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        elif channels == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
        else:
            raise UnusableFrame(f"frame has {channels} channels (1, 3 or 4 are decoded)")
    offset = (0, 0)
    roi = config.roi
    if roi is not None:
        if roi.x + roi.width > w or roi.y + roi.height > h:
            raise UnusableFrame(
                f"the region of interest ({roi.x},{roi.y} {roi.width}x{roi.height}) is "
                f"outside the {w}x{h} frame"
            )
        image = image[roi.y : roi.y + roi.height, roi.x : roi.x + roi.width]
        offset = (roi.x, roi.y)
    return np.ascontiguousarray(image), offset


# ---- live sources ----------------------------------------------------------------------------


class LatestSlot:
    """Capture -> decode hand-off holding at most one frame. ``put`` replaces a frame not yet
    taken (counted in ``dropped``); ``take`` waits for a frame, a failure or a wake-up."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._error: BaseException | None = None
        self._woken = False
        self.dropped = 0
        """Frames replaced before the decoder took them. Written under the lock."""

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        """The source is lost: the next ``take`` raises ``error``."""
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def wake(self) -> None:
        """Make a waiting ``take`` return (None) now: a stop, a trigger."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def take(self, timeout: float) -> Frame | None:
        with self._cond:
            self._cond.wait_for(
                lambda: self._frame is not None or self._error is not None or self._woken,
                timeout,
            )
            self._woken = False
            frame, self._frame = self._frame, None
            if frame is None and self._error is not None:
                raise self._error
            return frame


class LiveCapture:
    """The capture thread of a V4L2 camera or a stream: opens it, reads frames into the
    slot, releases it. Started and stopped by the decode thread."""

    def __init__(self, device: str, config: CameraDevice, slot: LatestSlot, first: int) -> None:
        self.device = device
        self.config = config
        self.slot = slot
        self.frames = first
        """Frames captured (the next frame's index). Written by the capture thread only."""
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._open_error: ConnectError | None = None
        self._thread = threading.Thread(target=self._main, name=f"capture:{device}", daemon=True)

    @property
    def join_within(self) -> float:
        """Longest the thread may take to end once told to stop (a blocked open or read)."""
        return self.config.open_seconds() + self.config.read_seconds() + 2.0

    def start(self) -> None:
        """Start the thread and wait until the source is open and gave its first frame;
        raises ConnectError with the reason otherwise."""
        self._thread.start()
        self._opened.wait(self.join_within)
        if self._open_error is not None:
            raise self._open_error
        if not self._opened.is_set():
            raise ConnectError(self.device, f"{self.config.source_text()}: open did not return")

    def stop(self) -> bool:
        """Tell the thread to stop and wait for it; False if it is still blocked."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(self.join_within)
        return not self._thread.is_alive()

    # ---- the capture thread --------------------------------------------------------------

    def _main(self) -> None:
        cap: cv2.VideoCapture | None = None
        try:
            cap = self._open()
            frame = self._read(cap, self.config.open_seconds())
            self._opened.set()
            self.slot.put(frame)
            # A recorded video plays at its frame rate, as the camera delivered it; a camera
            # or a stream paces itself.
            period = self._file_period(cap)
            due = time.monotonic()
            while not self._stop.is_set():
                if period:
                    due += period
                    if self._stop.wait(max(0.0, due - time.monotonic())):
                        break
                self.slot.put(self._read(cap, self.config.read_seconds()))
        except ConnectError as exc:
            if self._opened.is_set():
                self.slot.fail(exc)
            else:
                self._open_error = exc
                self._opened.set()
        except Exception as exc:  # an OpenCV error is a lost camera, with its text
            error = ConnectError(self.device, f"{self.config.source_text()}: {exc}")
            if self._opened.is_set():
                self.slot.fail(error)
            else:
                self._open_error = error
                self._opened.set()
        finally:
            if cap is not None:
                cap.release()

    def _file_period(self, cap: cv2.VideoCapture) -> float:
        url = self.config.url
        if url is None or not url.lower().startswith("file:"):
            return 0.0
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        return 1.0 / fps if 0 < fps <= 1000 else 0.0

    def _open(self) -> cv2.VideoCapture:
        cfg = self.config
        open_ms = int(cfg.open_seconds() * 1000)
        read_ms = int(cfg.read_seconds() * 1000)
        started = time.monotonic()
        if cfg.url is not None:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                open_ms,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                read_ms,
            ]
            cap = cv2.VideoCapture(_ffmpeg_location(cfg.url), cv2.CAP_FFMPEG, params)
        else:
            path = cfg.v4l2_path()
            if not os.path.exists(path):
                raise ConnectError(
                    self.device,
                    f"no camera at {path} (unplugged? prefer the /dev/v4l/by-id/ name, and the "
                    "agent's user must be in the video group)",
                )
            cap = cv2.VideoCapture(path, cv2.CAP_V4L2)
            if cap.isOpened():
                self._ask(cap)
        if not cap.isOpened():
            cap.release()
            waited = time.monotonic() - started
            if cfg.url is not None and waited >= 0.9 * cfg.open_seconds():
                why = f"no answer within {cfg.open_seconds():g} s (open_timeout)"
            elif cfg.url is not None:
                why = "refused, not found, or not a video stream"
            else:
                why = "cannot be opened (in use by another program? the agent's user must be in "
                why += "the video group)"
            raise ConnectError(self.device, f"{cfg.source_text()}: {why}")
        return cap

    def _ask(self, cap: cv2.VideoCapture) -> None:
        """What the config asks of a V4L2 camera; a camera may ignore any of it (the frame
        size is then checked on every frame)."""
        cfg = self.config
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the freshest frame, not one from the queue
        if cfg.fourcc is not None:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*cfg.fourcc))
        if cfg.width is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
        if cfg.height is not None:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        if cfg.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.read_seconds() * 1000))

    def _read(self, cap: cv2.VideoCapture, within: float) -> Frame:
        started = time.monotonic()
        ok, image = cap.read()
        if not ok:
            waited = time.monotonic() - started
            what = self.config.source_text()
            if waited >= 0.9 * within:
                raise ConnectError(self.device, f"{what}: no frame within {within:g} s")
            raise ConnectError(self.device, f"{what}: the stream ended or the camera was lost")
        now = time.monotonic()
        frame = Frame(self.frames, now, time.time(), image)
        self.frames += 1
        return frame


def _ffmpeg_location(url: str) -> str:
    """What FFmpeg opens: a file: URL's path (percent-decoded), any other URL as it is."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "file":
        return unquote(parts.path)
    return url


# ---- watched folder --------------------------------------------------------------------------


@dataclass(slots=True)
class _Seen:
    size: int
    mtime_ns: int
    first: float
    """Monotonic time the file was first listed."""
    stable_since: float
    """Monotonic time its size and time were last seen to change."""


@dataclass(slots=True)
class WatchedFolder:
    """A folder polled for new images; owned by the decode thread."""

    device: str
    config: CameraDevice
    frames: int = 0
    """Images read (the next image's index)."""
    _seen: dict[str, _Seen] = field(default_factory=dict)
    skipped: dict[tuple[str, int, int], None] = field(default_factory=dict)
    """(name, size, mtime) of images that could not be removed: not read again."""
    _next_poll: float = 0.0
    _pending: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return Path(self.config.folder or "")

    def open(self) -> None:
        """Check the folder can be read and emptied; raises ConnectError with the reason."""
        path = self.path
        if not path.is_dir():
            raise ConnectError(self.device, self._missing())
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise ConnectError(
                self.device,
                f"watched folder {path}: the agent's user may not read and delete its files",
            )
        self._seen.clear()
        self._pending.clear()
        self._next_poll = 0.0

    def _missing(self) -> str:
        return f"watched folder {self.path} does not exist (not mounted?)"

    def next(self, wake: threading.Event, timeout: float) -> Frame | None:
        """The oldest image that has settled, read; None if none came within ``timeout`` or
        ``wake`` was set. Raises ConnectError when the folder is gone."""
        deadline = time.monotonic() + timeout
        while True:
            while self._pending:
                frame = self._load(self._pending.pop(0))
                if frame is not None:
                    return frame
            now = time.monotonic()
            if now >= self._next_poll:
                self._next_poll = now + POLL_INTERVAL
                self._pending = self._ready(now)
                if self._pending:
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if wake.wait(max(0.0, min(self._next_poll - time.monotonic(), remaining))):
                return None

    def _ready(self, now: float) -> list[str]:
        """Names of the images that have settled, oldest first."""
        pattern = self.config.file_pattern()
        hidden_too = pattern.startswith(".")
        listed: dict[str, tuple[int, int]] = {}
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    # Uploads in progress go under hidden names (.name.part, FTP servers'
                    # temporary files): never read one, whatever the pattern.
                    if entry.name.startswith(".") and not hidden_too:
                        continue
                    if not fnmatch.fnmatchcase(entry.name, pattern):
                        continue
                    try:
                        if not entry.is_file():
                            continue
                        st = entry.stat()
                    except OSError:
                        continue  # gone between listing and stat
                    listed[entry.name] = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError as exc:
            raise ConnectError(self.device, self._missing()) from exc
        except OSError as exc:
            raise ConnectError(
                self.device, f"watched folder {self.path}: {exc.strerror or exc}"
            ) from exc
        settle = self.config.settle_time()
        ready: list[tuple[int, str]] = []
        for name, (size, mtime) in listed.items():
            if (name, size, mtime) in self.skipped:
                continue
            seen = self._seen.get(name)
            if seen is None or (seen.size, seen.mtime_ns) != (size, mtime):
                first = seen.first if seen is not None else now
                self._seen[name] = seen = _Seen(size, mtime, first, now)
            if now - seen.stable_since >= settle:
                ready.append((mtime, name))
        for name in [n for n in self._seen if n not in listed]:
            del self._seen[name]
        return [name for _, name in sorted(ready)]

    def _load(self, name: str) -> Frame | None:
        seen = self._seen.pop(name, None)
        if seen is None:
            return None
        path = self.path / name
        index = self.frames
        self.frames += 1
        ts = time.time() - (time.monotonic() - seen.first)
        frame = Frame(index, seen.first, ts, path=path)
        if seen.size > MAX_IMAGE_BYTES:
            frame.error = f"image {name} is {seen.size} bytes, more than {MAX_IMAGE_BYTES}"
            return frame
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None  # taken by someone else meanwhile
        except OSError as exc:
            frame.error = f"image {name} cannot be read: {exc.strerror or exc}"
            return frame
        frame.raw = raw
        image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            frame.error = (
                f"image {name} ({len(raw)} bytes) is not an image OpenCV can read: corrupt, "
                "cut short, or another format"
            )
        else:
            frame.image = image
        return frame

    def finish(self, frame: Frame, done: BoundedFolder | None) -> str | None:
        """Delete the image, or move it to ``done`` (a BoundedFolder); the reason it could not
        be, or None. An image that cannot be removed is not read again."""
        path = frame.path
        if path is None:
            return None
        try:
            if done is not None:
                stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(frame.ts))
                done.add_file(path, f"{self.device}-{stamp}-{frame.index:06d}-{path.name}")
            else:
                path.unlink()
        except FileNotFoundError:
            return None
        except OSError as exc:
            try:
                st = path.stat()
                self.skipped[(path.name, st.st_size, st.st_mtime_ns)] = None
                while len(self.skipped) > MAX_SKIPPED:
                    del self.skipped[next(iter(self.skipped))]
            except OSError:
                pass
            what = "moved" if done is not None else "deleted"
            return f"image {path.name} cannot be {what} after reading: {exc.strerror or exc}"
        return None
