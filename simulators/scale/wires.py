"""The byte streams a session talks over: the scale's end of a serial cable (a pty), or one TCP
connection. A read of ``b""`` is the end: a pulled cable's EOF, a client gone."""

from __future__ import annotations

import asyncio
import errno
import os
import tty
from contextlib import suppress
from typing import Protocol as TypingProtocol

_CHUNK = 4096


class _Wire(TypingProtocol):
    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...


class _TcpWire:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        try:
            return await self._reader.read(_CHUNK)
        except ConnectionError:
            return b""

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()
        with suppress(ConnectionError):
            await self._writer.wait_closed()


class _PtyWire:
    """The scale's end of a serial cable: a tty opened non-blocking and served by the loop."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(self._fd)
        except BaseException:
            os.close(self._fd)
            raise
        self._incoming = asyncio.StreamReader()
        self._loop.add_reader(self._fd, self._readable)
        self._closed = False

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: the other side hung up (the cable was pulled)
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self._loop.remove_reader(self._fd)
            self._incoming.feed_eof()
            return
        self._incoming.feed_data(data)

    async def read(self) -> bytes:
        return await self._incoming.read(_CHUNK)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await self._writable()

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()

        def writable() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(self._fd, writable)
        try:
            await ready
        finally:
            self._loop.remove_writer(self._fd)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
