"""The one interface of every byte link (serial port, TCP client, TCP server), and the loop
that turns a link's bytes into frames.

A scanner, an RFID reader or a scale may sit on a serial port or behind a TCP socket, the
reader being the client or the server; its driver should not care which. So each transport
is a :class:`Link`: open, a stream of byte chunks, write, close; failures are
``ConnectError`` with a reason that says how to fix them (``drivers.links.reasons``), which is
what the streaming runner expects to go DOWN, record the outage and reconnect with backoff.

:func:`read_frames` is the part every such driver would otherwise write itself: feed each
chunk to a :class:`~drivers.links.framing.Framer`, wake up at the framer's deadline to
reject a half frame, and flush on loss so the bytes of a half frame are still accounted for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from drivers.links.framing import Frame, Framer
from kernel.errors import ConnectError

LOST = "the connection was lost before the frame was complete"
RESTARTED = "the reader reconnected before the frame was complete"


class Link(Protocol):
    """A byte stream to one device (or one wire)."""

    @property
    def description(self) -> str:
        """Where the bytes come from, for logs: ``serial /dev/ttyUSB0``, ``tcp 10.0.0.5:23``,
        ``listening on :51236``."""
        ...

    async def open(self) -> None:
        """Connect (or, for a server, start listening). Raise ConnectError on failure."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The bytes as they arrive, in pieces of any size, until :meth:`close` (then, or if
        the link is not open, the iteration ends). Raise ConnectError when the link is lost.
        An empty chunk marks a break in the stream (a server link's reader connected anew):
        whatever partial frame is pending will never be completed."""
        ...

    async def write(self, data: bytes) -> None:
        """Send ``data`` now (a good-read beep, a scale command). Raise ConnectError if the
        link is lost or not open."""
        ...

    async def close(self) -> None:
        """Release everything (threads, sockets, the port). Never raises; safe to repeat."""
        ...


async def read_frames(link: Link, framer: Framer) -> AsyncIterator[list[Frame]]:
    """The frames of ``link``'s bytes, a non-empty list per read (or per expiry).

    Timestamps are the event loop's monotonic clock. When the link is lost, the pending half
    frame comes out rejected (``LOST``) before the ConnectError is raised; when the link is
    closed, it comes out the same way and the iteration ends. Blank frames are included:
    the caller skips them (``frame.blank``).
    """
    loop = asyncio.get_running_loop()
    chunks = aiter(link.chunks())
    # The chunk being awaited lives across timeouts: cancelling it would end the link's
    # generator, so a deadline only stops the waiting, never the read.
    pending: asyncio.Task[bytes | None] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.create_task(_next(chunks), name=f"read {link.description}")
            deadline = framer.deadline()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if not done:
                frames = framer.expire(loop.time())
            else:
                finished, pending = pending, None
                try:
                    chunk = finished.result()
                except ConnectError:
                    frames = framer.flush(LOST)
                    if frames:
                        yield frames
                    raise
                if chunk is None:  # the link was closed
                    frames = framer.flush(LOST)
                    if frames:
                        yield frames
                    return
                now = loop.time()
                frames = framer.feed(chunk, now) if chunk else framer.flush(RESTARTED)
            if frames:
                yield frames
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()  # retrieved: whatever it was, the reading is over
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _next(chunks: AsyncIterator[bytes]) -> bytes | None:
    """The next chunk, or None once the link's stream has ended."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None
