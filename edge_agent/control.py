"""The local control socket: how ``edge-agent context set`` (and later ``reload``) reach a
running agent.

A Unix socket, so only local users allowed to open the file can change a station's context;
one JSON object per line each way. Requests: ``{"op": "context.set", "station": ...,
"values": {...}, "user": ...}``, ``{"op": "device.command", "device": ..., "command": ...}``
(a scale's zero or tare, a reader's trigger; answered with the device's answer),
``{"op": "reload"}`` and ``{"op": "status"}``. Replies: ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. A ``context.set`` is answered only once its records are
committed, so the operator's "done" means the change is durable.

A handler may answer with a :class:`Stream` instead (``{"op": "tail", ...}``): its head line,
then its lines as they come, until the client disconnects; the connection then closes. A
stream is paced by the client (each chunk waits for the socket to take it); what the agent
does meanwhile is the stream's source's business (``edge_agent.tail`` bounds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
MAX_LINE = 32 << 20
"""Longest line a client of a stream reads (one record: a scan's detail, a part's values)."""


@dataclass(frozen=True)
class Stream:
    """A reply that goes on: ``head`` (one JSON object, ``{"ok": true, ...}``) first, then each
    chunk ``body`` yields (complete JSON lines), until the client disconnects or ``body``
    ends. ``body`` is closed (``aclose``) either way."""

    head: dict[str, Any]
    body: AsyncGenerator[bytes, None]


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | Stream]]


class ControlError(Exception):
    """The control socket cannot be served or reached."""


class ControlServer:
    """Serve ``handler`` on a Unix socket at ``path`` until stopped."""

    def __init__(self, path: str | Path, handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        self._server: asyncio.Server | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            # A socket file left by an agent that was killed is stale; one that answers
            # belongs to an agent that is running, and two agents must not share a journal.
            try:
                _, writer = await asyncio.open_unix_connection(self.path)
            except OSError:
                self.path.unlink()
            else:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                raise ControlError(
                    f"another agent is running: its control socket {self.path} answers"
                )
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_REQUEST)
        os.chmod(self.path, 0o660)
        log.debug("control socket %s", self.path)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Streams never end by themselves, and since Python 3.12 wait_closed waits for them.
        self._stopping.set()
        if self._streams:
            await asyncio.wait(list(self._streams))
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise TypeError("a request is a JSON object")
                    reply = await self.handler(request)
                except (ValueError, TypeError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                if isinstance(reply, Stream):
                    await self._stream(reply, reader, writer)
                    return
                writer.write(json.dumps(reply, default=dict).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _stream(
        self, stream: Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Send ``stream`` until the client leaves (EOF on its side, or a failed write)."""
        me = asyncio.current_task()
        if me is not None:
            self._streams.add(me)

        async def pump() -> None:
            async for chunk in stream.body:
                writer.write(chunk)
                await writer.drain()

        async def client_gone() -> None:
            # Whatever the client sends now is read and ignored, so it cannot pile up.
            while await reader.read(4096):
                pass

        try:
            writer.write(json.dumps(stream.head, default=dict).encode() + b"\n")
            await writer.drain()
            tasks = [
                asyncio.create_task(pump(), name="control-stream"),
                asyncio.create_task(client_gone(), name="control-stream-eof"),
                asyncio.create_task(self._stopping.wait(), name="control-stream-stop"),
            ]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await stream.body.aclose()
            if writer.transport.get_write_buffer_size():
                # A client that stopped reading would keep close() waiting for ever.
                writer.transport.abort()
            if me is not None:
                self._streams.discard(me)


async def request(
    path: str | Path, message: dict[str, Any], answer_within: float = 10.0
) -> dict[str, Any]:
    """Send one request to the agent at ``path`` and return its reply."""
    try:
        async with asyncio.timeout(answer_within):
            reader, writer = await asyncio.open_unix_connection(path, limit=MAX_REQUEST)
            try:
                writer.write(json.dumps(message).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError as exc:
        raise ControlError(f"the agent at {path} did not answer within {answer_within}s") from exc
    except OSError as exc:
        raise ControlError(
            f"cannot reach the agent at {path}: {exc.strerror or exc} (is it running?)"
        ) from exc
    if not line:
        raise ControlError(f"the agent at {path} closed the connection without answering")
    reply = json.loads(line)
    if not isinstance(reply, dict):
        raise ControlError(f"unexpected reply from the agent: {line!r}")
    return reply
