"""The local control socket: how ``edge-agent context set`` (and later ``reload``) reach a
running agent.

A Unix socket, so only local users allowed to open the file can change a station's context;
one JSON object per line each way. Requests: ``{"op": "context.set", "station": ...,
"values": {...}, "user": ...}``, ``{"op": "device.command", "device": ..., "command": ...}``
(a scale's zero or tare, a reader's trigger; answered with the device's answer),
``{"op": "reload"}`` and ``{"op": "status"}``. Replies: ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. A ``context.set`` is answered only once its records are
committed, so the operator's "done" means the change is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    """The control socket cannot be served or reached."""


class ControlServer:
    """Serve ``handler`` on a Unix socket at ``path`` until stopped."""

    def __init__(self, path: str | Path, handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
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
                writer.write(json.dumps(reply, default=dict).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


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
