"""Frames served as an HTTP MJPEG stream: :class:`MjpegCamera`.

An HTTP MJPEG stream (``multipart/x-mixed-replace``) from an asyncio server on 127.0.0.1, as
IP cameras serve it; ``cv2.VideoCapture(url)`` opens it (FFMPEG backend). Frames follow the
clock at ``fps``; a slow client gets the newest frame, not a backlog. Faults:
:meth:`MjpegCamera.kill` (connections dropped, connects refused: the stream dies),
:meth:`MjpegCamera.stall` (connections stay open, no frames come: a hung camera) and
:meth:`MjpegCamera.resume` (the stream returns, on the same URL). Checked with
opencv-python-headless 5.1 (FFMPEG): a read on a killed stream fails at once, an open while it
is dead fails at once (refused); on a stall a read blocks for ``CAP_PROP_READ_TIMEOUT_MSEC``
(30 s unless given when opening) and the capture is then finished for good, even after
:meth:`~MjpegCamera.resume`: a reader must open it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from simulators.camera.files import encode_image
from simulators.camera.live import _LiveCamera
from simulators.camera.scene import CameraScene, FrameTruth

log = logging.getLogger(__name__)

BOUNDARY = "frame"


@dataclass(frozen=True)
class SentFrame:
    """One frame written to one client."""

    connection: int
    """The connection's number (1 = the first accepted)."""
    index: int
    at: float


@dataclass
class _Published:
    seq: int
    jpeg: bytes
    truth: FrameTruth


class MjpegCamera(_LiveCamera):
    """An IP camera's MJPEG stream on ``url`` (module doc).

    ``async with MjpegCamera(scene) as cam:`` -- open ``cam.url`` with
    ``cv2.VideoCapture(cam.url)`` (blocking: in a thread). ``cam.published`` holds the truth
    of every frame rendered for the stream, ``cam.sent`` what went to which connection.
    """

    def __init__(
        self,
        scene: CameraScene,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/video.mjpg",
    ) -> None:
        super().__init__(scene, "camera-mjpeg")
        self.host = host
        self.port = port
        self.path = path
        self.published: list[FrameTruth] = []
        """Truth of every frame rendered for the stream, in order."""
        self.sent: list[SentFrame] = []
        self.connections = 0
        """Connections accepted so far (a request for another path counts too)."""
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._frame = asyncio.Condition()
        self._latest: _Published | None = None
        self._stalled = False
        self._epoch = 0  # +1 at every kill: connections of an older epoch end

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def clients(self) -> int:
        """Connections being streamed to now."""
        return len(self._clients)

    @property
    def alive(self) -> bool:
        """Listening (not killed)."""
        return self._server is not None

    async def start(self) -> None:
        await super().start()
        await self._listen()
        self._spawn(self._produce(), name="camera-mjpeg-frames")

    async def close(self) -> None:
        await self._stop_listening()
        await super().close()

    async def kill(self) -> None:
        """The stream dies: every connection is dropped, new ones are refused."""
        await self._stop_listening()

    def stall(self) -> None:
        """The camera hangs: connections stay open (and are accepted), no frame is sent."""
        self._stalled = True

    async def resume(self) -> None:
        """The stream returns, on the same URL (after :meth:`kill` or :meth:`stall`)."""
        self._stalled = False
        if self._server is None:
            await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop_listening(self) -> None:
        """Close the listening socket and every connection, and wait for their handlers.

        The handlers are not cancelled (Python 3.11's streams log a cancelled handler as an
        error): their connections are aborted and they are woken, and they return by
        themselves."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._epoch += 1
        handlers = list(self._clients.items())
        for _task, writer in handlers:
            writer.transport.abort()
        async with self._frame:
            self._frame.notify_all()
        for task, _writer in handlers:
            await task
        if server is not None:
            await server.wait_closed()

    async def _produce(self) -> None:
        """Render a frame at every tick of the clock while someone watches."""
        i = max(0, self.scene.index_at(time.monotonic()) + 1)
        while True:
            await self._sleep_until(self.scene.frame_time(i))
            if self._clients and not self._stalled:
                jpeg, truth = await self._in_thread(self._render, i)
                self.published.append(truth)
                async with self._frame:
                    seq = self._latest.seq + 1 if self._latest is not None else 0
                    self._latest = _Published(seq, jpeg, truth)
                    self._frame.notify_all()
            # A slow render skips ticks rather than falling behind the clock.
            i = max(i + 1, self.scene.index_at(time.monotonic()) + 1)

    def _render(self, index: int) -> tuple[bytes, FrameTruth]:
        """(Render thread) frame ``index`` as JPEG."""
        frame = self.scene.render(index, self.scene.frame_time(index))
        return encode_image(frame.image, ".jpg", self.scene.config.jpeg_quality), frame.truth

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection, epoch = self.connections, self._epoch
        task = asyncio.current_task()
        if self._server is None or task is None:  # killed while the connection was queued
            writer.transport.abort()
            return
        self._clients[task] = writer
        try:
            await self._stream(connection, epoch, reader, writer)
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
        ):
            pass  # the client went away, never sent a request, or the stream was killed
        except Exception as exc:
            log.error("camera stream connection %d died", connection, exc_info=exc)
            self._errors.append(exc)
        finally:
            self._clients.pop(task, None)
            writer.transport.abort()

    async def _next_frame(self, after: int, epoch: int) -> _Published | None:
        """The newest frame once there is one newer than ``after``; None when the stream was
        killed since ``epoch``."""
        async with self._frame:
            await self._frame.wait_for(
                lambda: (
                    self._epoch != epoch or (self._latest is not None and self._latest.seq > after)
                )
            )
            return self._latest if self._epoch == epoch else None

    async def _stream(
        self,
        connection: int,
        epoch: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        async with asyncio.timeout(5.0):
            head = await reader.readuntil(b"\r\n\r\n")
        request = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(request) < 2 or request[0] != "GET" or request[1].split("?")[0] != self.path:
            writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        writer.write(
            b"HTTP/1.0 200 OK\r\n"
            b"Content-Type: multipart/x-mixed-replace; boundary=" + BOUNDARY.encode() + b"\r\n"
            b"Cache-Control: no-cache, no-store\r\nPragma: no-cache\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        last = self._latest.seq if self._latest is not None else -1
        while (current := await self._next_frame(last, epoch)) is not None:
            last = current.seq
            writer.write(
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(current.jpeg)}\r\n\r\n".encode()
                + current.jpeg
                + b"\r\n"
            )
            await writer.drain()
            self.sent.append(SentFrame(connection, current.truth.index, time.monotonic()))
