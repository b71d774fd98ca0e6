"""Camera driver: frames from a camera, a stream or a watched folder, decoded into scans.

A streaming driver: ``runners.run_streaming`` owns the device state, backoff and outage
records. What the camera reads is an observation of the configured point, like a scanner's:

- a code read: GOOD, the text as a scanner would send it (AIM identifier first, GS kept), so
  the station's scan rules classify it (GS1 included); ``detail`` holds the symbology
  (``format``), the code's corners in the frame (``position``), the frame's index, the decode
  time and, when the frame was kept, its file (``frame_file``);
- a code whose text cannot be a scan (control characters, not UTF-8): BAD with the reason and
  the text escaped in ``detail``;
- a no-read (triggered mode: nothing within the timeout; a watched folder's image without a
  code): BAD with the reason, the frame kept as evidence and named in ``detail``;
- an image that is not one (corrupt, cut short, wrong size or colour format): BAD with the
  reason (a watched folder's image is recorded as a rejected scan, its bytes kept as
  evidence). A live camera's unusable frames make the device DEGRADED with the reason
  instead: one record per frame would be thirty a second.

**Threads.** Nothing here blocks the event loop (invariant 7). The decode thread is a
:class:`~drivers.threads.BlockingSource` that the driver opens in ``open()`` and closes in
``close()``; it owns the decoder, the evidence and done folders and a watched folder. A live
camera or stream has a capture thread of its own besides (``sources.LiveCapture``), started
and joined by the decode thread, with a one-frame slot between them: when decoding is slower
than the camera, frames are dropped, not queued, and counted (``status.dropped``). What the
decode thread sends the loop is a :class:`_Report`: the observations, the device's health,
and its counters. Triggers reach the decode thread through a thread-safe queue.

**Modes.** Continuous: every frame is decoded; a code seen again less than ``window`` seconds
after it was last seen is the same scan, so a part in view for many frames is one scan.
Triggered (``trigger_read``, on the rising edge of the trigger point): frames taken after
the trigger are decoded until ``expected_count`` different codes are read (one scan each), or
the timeout passes: then the codes read are scans and one no-read says what was missing.
One trigger, one outcome: a trigger during a read ends that read as a no-read first.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import cv2

from drivers.base import StreamingDriver
from drivers.camera.config import CameraDevice
from drivers.camera.decoding import Code, Decoder, make_decoder, timed_decode
from drivers.camera.evidence import BoundedFolder
from drivers.camera.sources import (
    Frame,
    LatestSlot,
    LiveCapture,
    UnusableFrame,
    WatchedFolder,
    to_gray,
)
from drivers.registry import DriverContext, MissingExtra
from drivers.threads import BlockingSource, ThreadLeak
from kernel.errors import ConnectError, WriteError
from kernel.model import DeviceState, Observation, Quality, Value

log = logging.getLogger(__name__)

WAIT = 0.1
"""Longest the decode thread waits for a frame before it looks at triggers and timeouts."""
REPORT_EVERY = 1.0
"""Seconds between two reports of the counters alone (frames, drops) to the loop."""
MAX_REMEMBERED = 10_000
"""Codes remembered for continuous dedupe at most (a window holds far fewer)."""


@dataclass
class CameraCounters:
    """What the camera did since the driver was built; updated in the loop from reports."""

    frames: int = 0
    """Frames captured, or images read from the folder."""
    decoded: int = 0
    """Frames the decoder looked at."""
    dropped: int = 0
    """Live frames replaced before the decoder could take them (decoding slower than the
    camera). Also in ``status.dropped``."""
    ignored: int = 0
    """Triggered mode: folder images that arrived while no read was triggered (removed
    unread)."""
    unusable: int = 0
    """Frames or images that could not be decoded (corrupt, wrong size or format)."""
    decode_ms: float = 0.0
    """Time the last decode took."""


@dataclass
class _Memory:
    """What the camera remembers across reconnects, handed from one decode thread to the
    next (only one runs at a time): a part still in view when a stream comes back is not
    scanned again, and an image that could not be removed is not read again."""

    seen: dict[str, float] = field(default_factory=dict)
    """Continuous mode: code key -> monotonic time it was last seen."""
    skipped: dict[tuple[str, int, int], None] = field(default_factory=dict)
    """Watched folder: (name, size, mtime) of images that could not be removed."""


@dataclass
class _Report:
    """What the decode thread sends the loop."""

    observations: list[Observation]
    health: str | None
    counters: CameraCounters


@dataclass
class _Read:
    """A triggered read in progress."""

    started: float
    """Monotonic time of the trigger: only frames taken from then on count."""
    deadline: float
    codes: dict[str, tuple[Code, Frame, float]] = field(default_factory=dict)
    """Code key -> the code, the frame it was found in, the decode time."""
    last: Frame | None = None
    """The last frame looked at, kept as evidence of a no-read."""
    frames: int = 0
    unusable: str | None = None


class CameraDriver(StreamingDriver):
    """One camera, stream or watched folder."""

    def __init__(
        self,
        device: CameraDevice,
        context: DriverContext | None = None,
        *,
        decoder: Decoder | None = None,
    ) -> None:
        """``decoder`` replaces the configured one: for tests only (a deliberately slow
        decoder shows that frames are dropped, not queued)."""
        super().__init__(device.name, device.backoff_initial, device.backoff_max)
        self.device = device
        try:
            self._decoder = decoder or make_decoder(device)
        except ImportError as exc:
            raise MissingExtra(
                f"device {device.name!r}: decoder {device.decoder} cannot be loaded ({exc}): "
                "pip install pyzbar, and the zbar library (apt-get install libzbar0)"
            ) from exc
        self.counters = CameraCounters()
        self._memory = _Memory()
        self._source: BlockingSource[_Report] | None = None
        self._worker: _Worker | None = None
        self._health: str | None = None

    def point_names(self) -> Sequence[str]:
        return [self.device.point]

    async def open(self) -> None:
        await self.close()
        worker = _Worker(self.name, self.device, self._decoder, self.counters, self._memory)
        source: BlockingSource[_Report] = BlockingSource(
            self.name,
            worker.step,
            open=worker.open,
            close=worker.close,
            interrupt=worker.interrupt,
            stop_within=worker.stop_within,
        )
        await source.__aenter__()  # opens the camera in the decode thread; raises ConnectError
        self._source, self._worker = source, worker
        self._health = None

    async def close(self) -> None:
        source, worker = self._source, self._worker
        self._source = self._worker = None
        if source is None or worker is None:
            return
        try:
            await source.__aexit__(None, None, None)
        except ThreadLeak as exc:
            log.error("device %s: %s", self.name, exc, extra={"device": self.name})
            return
        # The decode thread has ended: its last counts (frames after the last report, up to
        # the loss of the camera) are read here, not raced.
        self.counters.__dict__.update(worker.counters.__dict__)
        self.status.dropped = worker.counters.dropped

    async def stream(self) -> AsyncIterator[Sequence[Observation]]:
        source = self._source
        if source is None:
            raise ConnectError(self.name, "not connected")
        seen_frames = self.counters.frames
        answered = False
        async for report in source:
            self._apply(report)
            if report.observations:
                answered = True
                yield report.observations
            elif not answered and report.counters.frames > seen_frames:
                # Frames come: the camera works (resets the runner's backoff), even if no
                # code is in view for hours.
                answered = True
                yield []

    def _apply(self, report: _Report) -> None:
        counters = report.counters
        self.counters.__dict__.update(counters.__dict__)
        self.status.dropped = counters.dropped
        self.status.reads_failed += sum(o.quality is not Quality.GOOD for o in report.observations)
        if report.health != self._health:
            self._health = report.health
            if report.health is not None:
                self.status.set_state(DeviceState.DEGRADED, report.health)
            else:
                self.status.set_state(DeviceState.UP)

    async def trigger_read(self) -> None:
        if self.device.mode != "triggered":
            raise WriteError(self.name, "not in triggered mode")
        worker = self._worker
        if worker is None:
            raise ConnectError(self.name, "not connected: the read is not triggered")
        worker.trigger(time.monotonic())

    async def command(self, name: str) -> str:
        if name == "trigger" and self.device.mode == "triggered":
            await self.trigger_read()
            return "read triggered"
        return await super().command(name)


class _Worker:
    """The decode thread's state and steps. ``trigger`` and ``interrupt`` are called from the
    loop; everything else runs in the decode thread.

    ---- owned by the decode thread ----
    """

    def __init__(
        self,
        name: str,
        config: CameraDevice,
        decoder: Decoder,
        counters: CameraCounters,
        memory: _Memory,
    ) -> None:
        self.name = name
        self.config = config
        self.decoder = decoder
        # Counters go on from where the last session left them.
        self.counters = CameraCounters(**counters.__dict__)
        self._dropped_before = counters.dropped
        self._triggers: queue.SimpleQueue[float] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._slot: LatestSlot | None = None
        self._capture: LiveCapture | None = None
        self._folder: WatchedFolder | None = None
        self._done: BoundedFolder | None = None
        self._evidence: BoundedFolder | None = None
        self._evidence_open = False
        self._problems: dict[str, str] = {}
        self._reported: tuple[str | None, int, int] = (None, -1, -1)
        self._last_report = 0.0
        self._read: _Read | None = None
        self._memory = memory
        mine = re.compile(re.escape(name) + r"-\d{8}T\d{6}")  # this device's kept files
        if config.evidence is not None:
            ev = config.evidence
            self._evidence = BoundedFolder(ev.folder, mine, ev.max_files, ev.max_bytes)
        if config.done is not None:
            d = config.done
            self._done = BoundedFolder(d.folder, mine, d.max_files, d.max_bytes)

    @property
    def stop_within(self) -> float:
        """How long the decode thread may take to stop: a decode in progress, and a capture
        thread blocked in an open or a read."""
        cfg = self.config
        if cfg.source_kind() == "folder":
            return 10.0 + cfg.settle_time()
        return cfg.open_seconds() + cfg.read_seconds() + 10.0

    # ---- called from the loop -----------------------------------------------------------

    def trigger(self, at: float) -> None:
        self._triggers.put(at)
        self._wake.set()
        if self._slot is not None:
            self._slot.wake()

    def interrupt(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._slot is not None:
            self._slot.wake()

    # ---- the decode thread ----------------------------------------------------------------

    def open(self) -> None:
        cfg = self.config
        if self._done is not None:
            try:
                self._done.open()
            except OSError as exc:
                raise ConnectError(
                    self.name, f"done folder {cfg.done.folder if cfg.done else ''}: {exc}"
                ) from exc
        self._open_evidence()
        if cfg.source_kind() == "folder":
            folder = WatchedFolder(
                self.name, cfg, frames=self.counters.frames, skipped=self._memory.skipped
            )
            folder.open()
            self._folder = folder
        else:
            slot = LatestSlot()
            capture = LiveCapture(self.name, cfg, slot, self.counters.frames)
            self._slot = slot
            try:
                capture.start()
            except BaseException:
                if not capture.stop():
                    log.error("device %s: capture thread did not stop", self.name)
                raise
            self._capture = capture

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None and not capture.stop():
            log.error(
                "device %s: the capture thread is still blocked in OpenCV %.0f s after stop",
                self.name,
                capture.join_within,
                extra={"device": self.name},
            )

    def step(self) -> _Report | None:
        self._wake.clear()
        observations = self._take_triggers()
        frame = self._next_frame()
        if frame is not None:
            observations += self._on_frame(frame)
        read = self._read
        if read is not None and time.monotonic() >= read.deadline:
            observations += self._end_read(read, timed_out=True)
        return self._report(observations)

    def _next_frame(self) -> Frame | None:
        wait = WAIT
        if self._read is not None:
            wait = max(0.0, min(wait, self._read.deadline - time.monotonic()))
        if self._stopping.is_set():
            return None
        if self._folder is not None:
            frame = self._folder.next(self._wake, wait)
            self.counters.frames = self._folder.frames
            return frame
        if self._slot is not None and self._capture is not None:
            frame = self._slot.take(wait)
            self.counters.frames = self._capture.frames
            self.counters.dropped = self._dropped_before + self._slot.dropped
            return frame
        return None

    def _report(self, observations: list[Observation]) -> _Report | None:
        health = "; ".join(self._problems.values()) or None
        now = time.monotonic()
        state = (health, self.counters.frames, self.counters.dropped)
        quiet = state == self._reported or now - self._last_report < REPORT_EVERY
        if not observations and health == self._reported[0] and quiet:
            return None
        self._reported, self._last_report = state, now
        return _Report(observations, health, CameraCounters(**self.counters.__dict__))

    # ---- triggers ---------------------------------------------------------------------------

    def _take_triggers(self) -> list[Observation]:
        out: list[Observation] = []
        timeout = self.config.trigger.timeout if self.config.trigger else 1.0
        while True:
            try:
                at = self._triggers.get_nowait()
            except queue.Empty:
                return out
            if self._read is not None:
                out += self._end_read(self._read, timed_out=False)
            self._read = _Read(started=at, deadline=at + timeout)

    def _end_read(self, read: _Read, *, timed_out: bool) -> list[Observation]:
        self._read = None
        cfg = self.config
        timeout = cfg.trigger.timeout if cfg.trigger else 0.0
        kept: dict[int, dict[str, Value]] = {}  # one evidence file per frame, not per code
        out: list[Observation] = []
        for code, frame, ms in read.codes.values():
            if frame.index not in kept:
                kept[frame.index] = {}
                if self._saves_reads() or code.error is not None:
                    self._keep(frame, "rejected" if code.error else "read", kept[frame.index])
            out.append(self._scan(code, frame, ms, kept[frame.index]))
        wanted = cfg.expected_count
        if len(read.codes) >= wanted:
            return out
        if timed_out:
            why = f"no read within {timeout:g} s of the trigger"
        else:
            why = "no read before the next trigger"
        if read.codes:
            why = f"{len(read.codes)} of {wanted} codes read: {why}"
        if read.last is None:
            why += " (no frame came from the camera)"
        elif read.unusable is not None:
            why += f" (frames unusable: {read.unusable})"
        detail: dict[str, Value] = {"frames": read.frames}
        if read.last is not None:
            detail["frame"] = read.last.index
            self._keep(read.last, "noread", detail)
        out.append(Observation(self.name, cfg.point, None, Quality.BAD, error=why, detail=detail))
        return out

    # ---- frames -------------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> list[Observation]:
        try:
            if self.config.mode == "triggered":
                return self._on_triggered_frame(frame)
            return self._on_continuous_frame(frame)
        finally:
            if self._folder is not None:
                self._problem("folder", self._folder.finish(frame, self._done))

    def _decode(self, frame: Frame) -> tuple[list[Code], float] | str:
        """The codes in the frame and the decode time, or why it cannot be decoded."""
        try:
            gray, offset = to_gray(frame, self.config)
        except UnusableFrame as exc:
            self.counters.unusable += 1
            return str(exc)
        try:
            codes, ms = timed_decode(self.decoder, gray, offset)
        except Exception as exc:  # a library error on one frame is that frame's problem
            log.debug("device %s: decoder failed", self.name, exc_info=True)
            self.counters.unusable += 1
            return f"the decoder failed: {exc!r}"
        self.counters.decoded += 1
        self.counters.decode_ms = ms
        return codes, ms

    def _on_continuous_frame(self, frame: Frame) -> list[Observation]:
        decoded = self._decode(frame)
        if isinstance(decoded, str):
            if self._folder is not None:
                return [self._rejected_image(frame, decoded)]
            self._problem("frames", f"frames unusable: {decoded}")
            return []
        self._problem("frames", None)
        codes, ms = decoded
        if not codes and self._folder is not None:
            # An image from a smart camera is a shot taken on purpose: one without a code is
            # a no-read, never nothing.
            name = frame.path.name if frame.path else ""
            detail: dict[str, Value] = {"frame": frame.index, "image": name}
            self._keep(frame, "noread", detail)
            why = f"no code in image {name}"
            return [Observation(self.name, self.config.point, None, Quality.BAD, ts=frame.ts,
                                error=why, detail=detail)]  # fmt: skip
        window = self.config.dedupe_window()
        seen = self._memory.seen
        for key in [k for k, t in seen.items() if frame.taken - t >= window]:
            del seen[key]
        new: list[Code] = []
        for code in codes:
            last = seen.get(code.key)
            seen[code.key] = frame.taken
            if last is None or frame.taken - last >= window:
                new.append(code)
        while len(seen) > MAX_REMEMBERED:
            del seen[next(iter(seen))]
        if not new:
            return []
        kept: dict[str, Value] = {}
        if self._saves_reads() or any(c.error for c in new):
            self._keep(frame, "read" if all(c.error is None for c in new) else "rejected", kept)
        return [self._scan(code, frame, ms, kept) for code in new]

    def _on_triggered_frame(self, frame: Frame) -> list[Observation]:
        read = self._read
        if read is None or frame.taken < read.started:
            if self._folder is not None:
                self.counters.ignored += 1
            return []
        read.frames += 1
        read.last = frame
        decoded = self._decode(frame)
        if isinstance(decoded, str):
            read.unusable = decoded
            return []
        codes, ms = decoded
        for code in codes:
            read.codes.setdefault(code.key, (code, frame, ms))
        if len(read.codes) < self.config.expected_count:
            return []
        return self._end_read(read, timed_out=False)

    # ---- records --------------------------------------------------------------------------

    def _scan(self, code: Code, frame: Frame, ms: float, kept: dict[str, Value]) -> Observation:
        """The observation of one code; ``kept`` names the frame's evidence file, if any."""
        detail: dict[str, Value] = {
            "format": code.format,
            "position": code.position,
            "frame": frame.index,
            "decode_ms": round(ms, 1),
        }
        if frame.path is not None:
            detail["image"] = frame.path.name
        detail.update(kept)
        point = self.config.point
        if code.error is not None:
            detail["text"] = code.shown
            detail["length"] = code.length
            return Observation(
                self.name, point, None, Quality.BAD, ts=frame.ts, error=code.error, detail=detail
            )
        return Observation(self.name, point, code.text, ts=frame.ts, detail=detail)

    def _rejected_image(self, frame: Frame, why: str) -> Observation:
        detail: dict[str, Value] = {"frame": frame.index}
        if frame.path is not None:
            detail["image"] = frame.path.name
        if frame.raw is not None:
            detail["length"] = len(frame.raw)
        self._keep(frame, "rejected", detail)
        return Observation(
            self.name, self.config.point, None, Quality.BAD, ts=frame.ts, error=why, detail=detail
        )

    def _saves_reads(self) -> bool:
        ev = self.config.evidence
        return ev is not None and ev.save == "all"

    # ---- evidence ---------------------------------------------------------------------------

    def _open_evidence(self) -> None:
        if self._evidence is None or self._evidence_open:
            return
        try:
            self._evidence.open()
        except OSError as exc:
            self._problem("evidence", f"evidence folder {self._evidence.folder}: {exc}")
        else:
            self._evidence_open = True
            self._problem("evidence", None)

    def _keep(self, frame: Frame, what: str, detail: dict[str, Value]) -> None:
        """Save ``frame`` as evidence (if configured) and name the file in ``detail``; a
        frame that cannot be saved says why there instead."""
        evidence = self._evidence
        if evidence is None:
            return
        if "frame_file" in detail:
            return
        self._open_evidence()
        if not self._evidence_open:
            detail["evidence_error"] = self._problems.get("evidence", "evidence folder unusable")
            return
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(frame.ts))
        stamp += f".{int(frame.ts * 1000) % 1000:03d}Z"
        base = f"{self.name}-{stamp}-{frame.index:06d}-{what}"
        try:
            if frame.raw is not None:
                suffix = frame.path.suffix if frame.path is not None else ""
                if not re.fullmatch(r"\.[A-Za-z0-9]{1,5}", suffix):
                    suffix = ".bin"
                path = evidence.add_bytes(base + suffix, frame.raw)
            else:
                path = evidence.add_bytes(base + "." + self._format(), self._encode(frame))
        except (OSError, ValueError, cv2.error) as exc:
            why = f"frame not kept: {exc}"
            detail["evidence_error"] = why
            self._problem("evidence", f"evidence folder {evidence.folder}: {exc}")
            return
        self._problem("evidence", None)
        detail["frame_file"] = str(path)

    def _format(self) -> str:
        return self.config.evidence.format if self.config.evidence else "png"

    def _encode(self, frame: Frame) -> bytes:
        if frame.image is None:
            raise ValueError("no pixels to keep")
        ok, data = cv2.imencode("." + self._format(), frame.image)
        if not ok:
            raise ValueError(f"OpenCV cannot encode this frame as {self._format()}")
        return bytes(data.tobytes())

    def _problem(self, what: str, why: str | None) -> None:
        if why is None:
            self._problems.pop(what, None)
        else:
            self._problems[what] = why
