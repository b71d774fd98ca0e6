"""Scanner driver: every message a reader sends is one scan observation.

A streaming driver (``runners.run_streaming`` owns state, backoff and outage records) on a
byte link (``drivers.links``): serial, TCP client or TCP server. The link's bytes are cut into
messages by the configured framing; then each message is

- a scan (GOOD, the text as sent, GS separators and AIM prefix kept: the scan rules classify
  it, exactly as a PLC string scan);
- a no-read (the reader's no-read text): BAD with ``no read (the reader sent 'NOREAD')``;
- garbage (a frame too long, incomplete, not text): BAD with the framer's reason and the
  bytes, escaped, in ``detail``, so nothing the reader sent disappears.

The good-read / bad-read answer (``acknowledge``) is sent by the daemon once the scan record
is committed. A trigger (``trigger_read``) sends the start command and arms a read window:
a scan inside it ends the window, else a no-read is recorded when it closes and the stop
command is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from drivers.base import StreamingDriver
from drivers.links.base import Link, read_frames
from drivers.links.config import control_bytes
from drivers.links.factory import make_framer, make_link
from drivers.links.framing import Frame, decode
from drivers.registry import DriverContext
from drivers.scanner.config import ScannerDevice
from kernel.errors import ConnectError, ReadError, WriteError
from kernel.model import Observation, Quality, Value

log = logging.getLogger(__name__)

STOP_GRACE = 0.5
"""Seconds a reader has to answer the stop command (with its no-read text) after the read
window closed, before the agent records the no-read itself."""
SHOWN_BYTES = 256
"""Bytes of a rejected message kept in its record (escaped); the length is always given."""


class ScannerDriver(StreamingDriver):
    """One scanner or reader on one link."""

    def __init__(self, device: ScannerDevice, context: DriverContext | None = None) -> None:
        super().__init__(device.name, device.backoff_initial, device.backoff_max)
        self.device = device
        self._no_read_texts = frozenset(device.no_read)
        feedback = device.feedback
        self._answers = (
            (control_bytes(feedback.good), control_bytes(feedback.bad)) if feedback else None
        )
        trigger = device.trigger
        self._start = control_bytes(trigger.start) if trigger else b""
        self._stop = control_bytes(trigger.stop) if trigger and trigger.stop else b""
        self._link: Link | None = None
        self._queue: asyncio.Queue[list[Observation] | Exception] | None = None
        self._window: asyncio.TimerHandle | None = None  # an armed trigger's read window
        self._writes: set[asyncio.Task[None]] = set()  # stop commands under way

    async def open(self) -> None:
        await self.close()
        link = make_link(self.device)
        await link.open()
        self._link = link

    async def close(self) -> None:
        self._disarm()
        link, self._link = self._link, None
        for task in list(self._writes):
            task.cancel()
        if self._writes:
            await asyncio.wait(set(self._writes))
        if link is not None:
            await link.close()

    def point_names(self) -> Sequence[str]:
        return [self.device.point]

    # -- scans ------------------------------------------------------------------------------

    async def stream(self) -> AsyncIterator[Sequence[Observation]]:
        link = self._link
        if link is None:
            raise ConnectError(self.name, "not connected")
        # Reads and read-window expiries meet in one queue: a no-read is an observation like
        # a scan, in the order it happened.
        queue: asyncio.Queue[list[Observation] | Exception] = asyncio.Queue()
        self._queue = queue
        reader = asyncio.create_task(self._read(link, queue), name=f"read:{self.name}")
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self._queue = None
            self._disarm()
            reader.cancel()
            await asyncio.wait({reader})

    async def _read(
        self, link: Link, queue: asyncio.Queue[list[Observation] | Exception]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for frames in read_frames(link, make_framer(self.device)):
                # Frame times are the loop's clock; records want the wall clock.
                offset = time.time() - loop.time()
                batch = [self._observe(f, f.ts + offset) for f in frames if not f.blank]
                if batch:
                    self._disarm()  # the read the trigger asked for has come
                    queue.put_nowait(batch)
            queue.put_nowait(ConnectError(self.name, f"{link.description} closed"))
        except (ConnectError, ReadError) as exc:
            queue.put_nowait(exc)
        except Exception as exc:  # a bug must end the stream loudly, not hang it
            log.exception("device %s: reading failed", self.name, extra={"device": self.name})
            queue.put_nowait(ReadError(self.name, f"reading failed: {exc!r}"))

    def _observe(self, frame: Frame, ts: float) -> Observation:
        point = self.device.point
        if frame.error is not None:
            return self._rejected(frame.raw, frame.error, ts)
        text, error = decode(frame)
        if text is None:
            return self._rejected(frame.raw, error or "not text", ts)
        if text.strip("\r\n") in self._no_read_texts:
            return Observation(
                self.name, point, None, Quality.BAD, ts=ts,
                error=f"no read (the reader sent {text.strip()!r})",
            )  # fmt: skip
        return Observation(self.name, point, text, ts=ts)

    def _rejected(self, raw: bytes, why: str, ts: float) -> Observation:
        self.status.reads_failed += 1
        shown = raw[:SHOWN_BYTES].decode("latin-1").encode("unicode_escape").decode("ascii")
        detail: dict[str, Value] = {"bytes": shown, "length": len(raw)}
        return Observation(
            self.name, self.device.point, None, Quality.BAD, ts=ts, error=why, detail=detail
        )

    # -- answers and triggers ---------------------------------------------------------------

    async def acknowledge(self, point: str, accepted: bool) -> None:
        if self._answers is None:
            return
        link = self._link
        if link is None:
            raise ConnectError(self.name, "not connected: the read answer is not sent")
        await link.write(self._answers[0] if accepted else self._answers[1])

    async def trigger_read(self) -> None:
        link, trigger = self._link, self.device.trigger
        if trigger is None:
            raise WriteError(self.name, "no trigger configured")
        if link is None or self._queue is None:
            raise ConnectError(self.name, "not connected: the read is not triggered")
        self._disarm()
        await link.write(self._start)
        self._window = asyncio.get_running_loop().call_later(
            trigger.read_timeout, self._window_closed, trigger.read_timeout
        )

    async def command(self, name: str) -> str:
        if name == "trigger" and self.device.trigger is not None:
            await self.trigger_read()
            return "read triggered"
        return await super().command(name)

    def _disarm(self) -> None:
        if self._window is not None:
            self._window.cancel()
            self._window = None

    def _window_closed(self, timeout: float) -> None:
        """The read window closed without a scan. A reader told to stop answers with its
        no-read text (Keyence: ERROR), which is then the no-read record; one that says nothing
        within ``STOP_GRACE`` gets one from the agent. Either way one trigger, one record."""
        self._window = None
        if self._stop and self._link is not None:
            task = asyncio.create_task(self._send_stop(self._link), name=f"stop:{self.name}")
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
            why = f"no read within {timeout:g} s of the trigger, and no answer to the stop"
            self._window = asyncio.get_running_loop().call_later(
                STOP_GRACE, self._record_no_read, why
            )
        else:
            self._record_no_read(f"no read within {timeout:g} s of the trigger")

    def _record_no_read(self, why: str) -> None:
        self._window = None
        if self._queue is not None:
            self._queue.put_nowait(
                [Observation(self.name, self.device.point, None, Quality.BAD, error=why)]
            )

    async def _send_stop(self, link: Link) -> None:
        with contextlib.suppress(ConnectError):  # the stream notices a lost link by itself
            await link.write(self._stop)
