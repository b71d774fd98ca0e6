"""Serving the workbench under a path prefix behind the plant's reverse proxy
(``--root-path /quality``): ``https://intranet.plant/quality/serial?id=...``.

The pages and their templates know only root-relative paths (``/serial``, ``/static/...``).
This layer, outside everything else, makes them work under the prefix whether the proxy
passes the prefix on or strips it:

- a request path under the prefix loses it before routing (the proxy passed it on); one
  without it is routed as it is (the proxy stripped it);
- a redirect's ``Location`` and every root-relative ``href``, ``src`` and ``action`` in an
  HTML page gain the prefix; the session cookie is limited to the prefix.

Exports and other downloads pass through untouched.
"""

from __future__ import annotations

import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_ATTRIBUTE = re.compile(rb'(\s(?:href|src|action)=")/(?!/)')
_VALID = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")


def parse_root_path(text: str) -> str:
    """``/quality`` or ``/a/b`` (a trailing slash is dropped; ``/`` or empty: no prefix);
    ValueError names the problem."""
    path = text.strip().rstrip("/")
    if not path:
        return ""
    if not _VALID.match(path):
        raise ValueError(
            f"{text!r}: expected a path such as /quality (letters, digits, '.', '_', '~', '-')"
        )
    return path


class PrefixMiddleware:
    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix
        self._bytes = prefix.encode()
        self._cookie_path = f"Path={prefix}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == self.prefix or path.startswith(self.prefix + "/"):
            path = path[len(self.prefix) :] or "/"
        scope = dict(scope, path=path, raw_path=path.encode(), root_path="")
        start: Message | None = None
        chunks: list[bytes] = []

        async def wrapped(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                location = headers.get("location")
                if (
                    location is not None
                    and location.startswith("/")
                    and not location.startswith("//")
                ):
                    headers["location"] = self.prefix + location
                cookies = headers.getlist("set-cookie")
                if cookies:
                    del headers["set-cookie"]
                    for cookie in cookies:
                        headers.append("set-cookie", cookie.replace("Path=/", self._cookie_path))
                if headers.get("content-type", "").startswith("text/html"):
                    start = message  # held until the body is complete: its length changes
                    return
                await send(message)
                return
            if message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = _ATTRIBUTE.sub(rb"\1" + self._bytes + b"/", b"".join(chunks))
                MutableHeaders(scope=start)["content-length"] = str(len(body))
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, wrapped)
