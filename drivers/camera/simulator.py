"""Simulated cameras from the config (``edge-agent simulate --config``): the scenario's
``scans:`` rendered as real symbols (zxing-cpp writes them, as in :mod:`simulators.camera`)
in images the camera driver decodes like any other.

- ``folder`` (a smart camera uploading one image per read): each scan is one image file
  dropped into a folder of the simulation's own (written aside, then renamed into place),
  named to match the config's ``pattern``. The overrides point ``folder`` (and ``done``'s
  folder) there.
- ``url`` (an IP camera's stream, rtsp or http): an HTTP MJPEG stream on a local port,
  :data:`FPS` frames a second, showing each scan's symbol for :data:`SHOWN` seconds and
  an empty background otherwise. The overrides point ``url`` at it.
- ``device`` (a V4L2 camera) is not simulated: that needs the v4l2loopback kernel module.

A scan's ``data`` is what the camera must read: with an AIM identifier first (``]d2`` GS1
DataMatrix, ``]Q3`` GS1 QR, ``]C1`` GS1-128, ``]d1`` DataMatrix, ``]Q1`` QR, ``]C0`` Code
128) it chooses the symbol; without one, the config's first format of DataMatrix, QRCode
and Code128 (DataMatrix if none) encodes the text, and the record's text starts with that
symbology's identifier.

Faults: ``silent`` (no image dropped; the stream's connections stay open but no frame comes:
a hung camera) and ``unplug`` (a stream only: its server closes until the fault ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from drivers.camera.config import CameraDevice
from drivers.device import DeviceConfig
from drivers.links.config import control_bytes
from simulators.camera.config import Symbology
from simulators.camera.files import encode_image
from simulators.camera.scene import _make_symbol
from simulators.devicemap.kinds import (
    ActiveFault,
    Endpoint,
    KindSimulator,
    Placement,
    ValueSpec,
    World,
)
from simulators.opcua.internals import in_own_thread

SHOWN = 1.0
"""Seconds a stream shows a scan's symbol."""
FPS = 10.0
"""Frames a second of a stream (a stream's rate is the camera's own, not the config's)."""
DEFAULT_SIZE = (640, 480)
BACKGROUND = 200
MODULE = 4
"""Pixels per module of a symbol, less if it would not fit the frame."""
BOUNDARY = b"frame"
_PLAIN = {
    "DataMatrix": Symbology.DATAMATRIX,
    "QRCode": Symbology.QR,
    "Code128": Symbology.CODE128,
}


def symbol_code(data: str, formats: Sequence[str]) -> tuple[str, Symbology]:
    """The code as a reader reports it (AIM id + text) and the symbol that encodes it."""
    for symbology in Symbology:
        if data.startswith(symbology.aim):
            return data, symbology
    chosen = next((_PLAIN[f] for f in formats if f in _PLAIN), Symbology.DATAMATRIX)
    return chosen.aim + data, chosen


def render(code: str, symbology: Symbology, size: tuple[int, int]) -> np.ndarray[Any, Any]:
    """A gray frame of ``size`` (width, height) with the symbol in its middle. CPU-bound."""
    width, height = size
    image = np.full((height, width), BACKGROUND, dtype=np.uint8)
    bitmap = _make_symbol(code, symbology).bitmap
    scale = min(MODULE, width // bitmap.shape[1], height // bitmap.shape[0])
    if scale < 1:
        raise ValueError(f"the symbol of {code!r} does not fit a {width}x{height} frame")
    patch = np.kron(bitmap, np.ones((scale, scale), dtype=np.uint8))
    top = (height - patch.shape[0]) // 2
    left = (width - patch.shape[1]) // 2
    image[top : top + patch.shape[0], left : left + patch.shape[1]] = patch
    return image


def _file_name(pattern: str, n: int, ext: str) -> str:
    """A name the config's glob takes: its first ``*`` replaced by a number, ``?`` by 0."""
    if pattern == "*":
        return f"sim-{n:05d}{ext}"
    return pattern.replace("*", f"sim-{n:05d}", 1).replace("*", "").replace("?", "0")


class CameraEndpoint(Endpoint):
    def __init__(self, device: CameraDevice, world: World, place: Placement) -> None:
        self.device = device
        self.devices = (device.name,)
        self.world = world
        self.host = place.host
        self.size = (device.width or DEFAULT_SIZE[0], device.height or DEFAULT_SIZE[1])
        self.shown: list[str] = []
        """Every code put in front of the camera (ground truth for tests)."""
        self._folder = place.pty_dir / f"{device.name}-images"
        self._n = 0
        self._server: asyncio.Server | None = None
        self._port = 0
        self._frames: asyncio.Condition | None = None
        self._jpeg = b""
        self._seq = 0
        self._blank = b""
        self._clear: asyncio.TimerHandle | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def streaming(self) -> bool:
        return self.device.url is not None

    async def start(self) -> None:
        if not self.streaming:
            self._folder.mkdir(parents=True, exist_ok=True)
            if self.device.done is not None:
                (self._folder / "done").mkdir(exist_ok=True)
            return
        self._frames = asyncio.Condition()
        self._closing = False
        if not self._blank:
            blank = np.full((self.size[1], self.size[0]), BACKGROUND, dtype=np.uint8)
            self._blank = await in_own_thread(lambda: encode_image(blank, ".jpg"), "camera-sim")
        self._jpeg = self._jpeg or self._blank
        self._server = await asyncio.start_server(self._serve, self.host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._ticker = asyncio.create_task(self._tick(), name=f"simulate: {self.device.name}")

    async def stop(self) -> None:
        if self._clear is not None:
            self._clear.cancel()
        if self._frames is not None:
            async with self._frames:  # every connection's handler ends at its next look
                self._closing = True
                self._frames.notify_all()
        server, self._server = self._server, None
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if server is None:
            return
        server.close()
        for w in list(self._clients):
            w.transport.abort()
        await server.wait_closed()
        if self._handlers:  # 3.11's wait_closed does not wait for them
            await asyncio.wait(set(self._handlers))

    def overrides(self) -> dict[str, dict[str, Any]]:
        if self.streaming:
            return {self.device.name: {"url": self.url}}
        keys: dict[str, Any] = {"folder": str(self._folder)}
        if self.device.done is not None:
            done = self.device.done.model_dump()
            keys["done"] = {**done, "folder": str(self._folder / "done")}
        return {self.device.name: keys}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}/video.mjpg"

    def describe(self) -> str:
        if self.streaming:
            return f"camera {self.device.name}: MJPEG stream {self.url}"
        return f"camera {self.device.name}: images dropped into {self._folder}"

    # ---- scans -------------------------------------------------------------------------------

    async def scan(self, device: str, data: str) -> None:
        if self._faulted("silent"):
            raise OSError(f"{device} is silent (fault): no image taken")
        code, symbology = symbol_code(control_bytes(data).decode("latin-1"), self.device.formats)
        image = await in_own_thread(lambda: render(code, symbology, self.size), "camera-sim")
        self.shown.append(code)
        if not self.streaming:
            await self._drop(image)
            return
        self._jpeg = await in_own_thread(lambda: encode_image(image, ".jpg"), "camera-sim")
        if self._clear is not None:
            self._clear.cancel()
        self._clear = asyncio.get_running_loop().call_later(SHOWN, self._show_blank)

    def _show_blank(self) -> None:
        self._jpeg = self._blank

    async def _drop(self, image: np.ndarray[Any, Any]) -> None:
        pattern = self.device.pattern or "*"
        ext = ".jpg" if pattern.lower().endswith((".jpg", ".jpeg")) else ".png"
        self._n += 1
        name = _file_name(pattern, self._n, ext)
        data = await in_own_thread(lambda: encode_image(image, Path(name).suffix or ext), "cam")
        tmp = self._folder / f".{name}.part"  # a name the glob does not take: a dot first
        tmp.write_bytes(data)
        os.replace(tmp, self._folder / name)

    def _faulted(self, kind: str) -> bool:
        fault = self.world.fault(self.device.name)
        return fault is not None and fault.kind == kind

    async def fault_started(self, device: str, fault: ActiveFault) -> None:
        if fault.kind == "unplug":
            await self.stop()

    async def fault_ended(self, device: str, fault: ActiveFault) -> None:
        if fault.kind == "unplug":
            await self.start()

    # ---- the stream --------------------------------------------------------------------------

    async def _tick(self) -> None:
        """A new frame every 1/FPS seconds (the current image), unless the camera is silent."""
        period = 1.0 / FPS
        assert self._frames is not None
        while True:
            if not self._faulted("silent"):
                async with self._frames:
                    self._seq += 1
                    self._frames.notify_all()
            await asyncio.sleep(period)

    async def _next(self, seen: int) -> int | None:
        """The number of the next frame after ``seen``, once it is due; None: the stream
        is closing."""
        assert self._frames is not None
        async with self._frames:
            await self._frames.wait_for(lambda: self._seq > seen or self._closing)
            return None if self._closing else self._seq

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            async with asyncio.timeout(5.0):
                await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.0 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary="
                + BOUNDARY
                + b"\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
            )
            seen = self._seq
            while (due := await self._next(seen)) is not None:
                seen = due
                jpeg = self._jpeg
                writer.write(
                    b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                    + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n"
                )  # fmt: skip
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except TimeoutError:
            pass  # never sent its request
        finally:
            self._clients.discard(writer)
            self._handlers.discard(task)
            writer.transport.abort()


class CameraSimulator(KindSimulator):
    faults = frozenset({"silent", "unplug"})
    events = frozenset({"scans"})

    def value_spec(self, device: DeviceConfig, point: str) -> ValueSpec | None:
        return None  # what it reads are scans: entries

    def device_issue(self, device: DeviceConfig) -> str | None:
        cam = cast(CameraDevice, device)
        if cam.device is not None:
            return (
                "a V4L2 camera (device) is not simulated: that needs the v4l2loopback kernel "
                "module; a camera with url or folder is"
            )
        if cam.folder is not None:
            name = _file_name(cam.pattern or "*", 1, ".png")
            if not fnmatch.fnmatchcase(name, cam.pattern or "*"):
                return f"no image file name found that pattern {cam.pattern!r} takes"
        return None

    def fault_issue(self, device: DeviceConfig, fault: str) -> str | None:
        if fault == "unplug" and cast(CameraDevice, device).folder is not None:
            return "a camera dropping images into a folder cannot be unplugged: use silent"
        return None

    def endpoints(
        self, devices: Sequence[DeviceConfig], world: World, place: Placement
    ) -> list[Endpoint]:
        return [CameraEndpoint(cast(CameraDevice, d), world, place) for d in devices]


SIMULATOR = CameraSimulator()
