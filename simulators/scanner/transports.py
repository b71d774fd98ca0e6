"""A scanner's wire.

Transports: :class:`PtyTransport` (a :class:`~simulators.serial_link.NullModem`; the scanner
holds one end, the agent opens ``agent_path``), :class:`TcpServerTransport` (the agent connects,
as to a reader in TCP server mode; one connection at a time, the newest wins) and
:class:`TcpClientTransport` (the scanner connects to the agent's port, retrying until it
listens and after every disconnect). A frame written while no peer is connected is lost, as on
a real network (``delivered`` False); on a pty it waits in the agent side's queue, which
pyserial flushes when it opens the port, as on a real wire.

No threads: the pty is read with ``loop.add_reader`` on the simulator's own file descriptor
(non-blocking), TCP with asyncio streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulators.serial_link import NullModem

_CHUNK = 4096


class Transport(ABC):
    """A scanner's wire. ``send`` hands bytes over synchronously (so a scan's ``sent_at`` is
    taken before any answer can be read); ``drain`` waits until the OS took them."""

    def __init__(self) -> None:
        self._connected = asyncio.Event()

    @property
    def connected(self) -> bool:
        """A peer can receive what is sent now."""
        return self._connected.is_set()

    async def wait_connected(self, within: float = 5.0) -> None:
        """Wait until a peer is connected; TimeoutError after ``within`` seconds."""
        async with asyncio.timeout(within):
            await self._connected.wait()

    @abstractmethod
    async def open(self, on_data: Callable[[bytes], None]) -> None:
        """Start; every received chunk goes to ``on_data`` (called in the event loop)."""

    @abstractmethod
    def send(self, data: bytes) -> bool:
        """Hand ``data`` over; False when nobody could receive it (it is lost)."""

    @abstractmethod
    async def drain(self) -> None:
        """Wait until what was handed over has been taken by the OS."""

    @abstractmethod
    async def close(self) -> None: ...


class PtyTransport(Transport):
    """A virtual serial cable: the agent opens ``agent_path``; the scanner holds the other
    end, read with ``loop.add_reader`` (no thread)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        agent_name: str = "ttyAGENT",
        scanner_name: str = "ttySCANNER",
    ) -> None:
        super().__init__()
        self.link = NullModem(directory, agent_name, scanner_name)
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_data: Callable[[bytes], None] = lambda _data: None
        self._pending = b""
        self._flushed = asyncio.Event()
        self._flushed.set()

    @property
    def agent_path(self) -> Path:
        """The serial port the agent opens."""
        return self.link.a_path

    async def open(self, on_data: Callable[[bytes], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_data = on_data
        await self.link.start()
        try:
            fd = os.open(self.link.b_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            await self.link.close()
            raise
        self._fd = fd
        self._loop.add_reader(fd, self._readable)
        self._connected.set()

    def send(self, data: bytes) -> bool:
        if self._fd is None:
            return False
        if self._pending:
            self._pending += data
            return True
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError:  # EIO: the cable was unplugged
            self._hang_up()
            return False
        if written < len(data):
            self._pending = data[written:]
            self._flushed.clear()
            assert self._loop is not None
            self._loop.add_writer(self._fd, self._flush)
        return True

    async def drain(self) -> None:
        await self._flushed.wait()

    def _flush(self) -> None:
        if self._fd is None:
            return
        try:
            written = os.write(self._fd, self._pending)
        except BlockingIOError:
            return
        except OSError:
            self._hang_up()
            return
        self._pending = self._pending[written:]
        if not self._pending:
            assert self._loop is not None
            self._loop.remove_writer(self._fd)
            self._flushed.set()

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: hung up (NullModem.unplug)
            self._hang_up()
            return
        if not data:
            self._hang_up()
            return
        self._on_data(data)

    def _hang_up(self) -> None:
        """Stop using the fd (it would poll readable forever); it is closed by close()."""
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._pending = b""
        self._flushed.set()
        self._connected.clear()

    async def close(self) -> None:
        if self._fd is not None:
            self._hang_up()
            fd, self._fd = self._fd, None
            os.close(fd)
        await self.link.close()


class _StreamTransport(Transport):
    """One TCP connection at a time; reading runs in a task per connection."""

    def __init__(self) -> None:
        super().__init__()
        self._writer: asyncio.StreamWriter | None = None
        self._on_data: Callable[[bytes], None] = lambda _data: None
        self.connections = 0
        """Connections made so far."""

    def send(self, data: bytes) -> bool:
        writer = self._writer
        if writer is None or writer.is_closing():
            return False
        writer.write(data)
        return True

    async def drain(self) -> None:
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one connection until it ends; it is the current one until then."""
        self._writer = writer
        self.connections += 1
        self._connected.set()
        try:
            while data := await reader.read(_CHUNK):
                self._on_data(data)
        except ConnectionError:
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                self._connected.clear()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class TcpServerTransport(_StreamTransport):
    """The scanner listens (``port`` 0 picks a free one, known after ``open``); the agent
    connects. A new connection replaces the previous one, which is closed.

    Connections are ended by closing their socket, never by cancelling their handler: asyncio
    (3.11) logs a cancelled ``client_connected_cb`` task as an error."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def open(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            old = self._writer
            if old is not None:
                old.close()  # its handler sees EOF and ends
            await self._serve(reader, writer)
        finally:
            del self._handlers[task]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # stop listening
        for writer in self._handlers.values():
            writer.close()  # each handler reads EOF and ends
        if self._handlers:
            await asyncio.wait(list(self._handlers))
        if server is not None:
            await server.wait_closed()
        self._connected.clear()


class TcpClientTransport(_StreamTransport):
    """The scanner connects to the agent at ``host:port``, retrying every ``retry_interval``
    until it listens, and again after the connection ends."""

    def __init__(self, host: str, port: int, retry_interval: float = 0.05) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.retry_interval = retry_interval
        self.failed_attempts = 0
        self._task: asyncio.Task[None] | None = None

    async def open(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self._task = asyncio.create_task(
            self._connect_forever(), name=f"scanner-connect-{self.host}:{self.port}"
        )

    async def _connect_forever(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.failed_attempts += 1
            else:
                await self._serve(reader, writer)
            await asyncio.sleep(self.retry_interval)

    async def close(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._connected.clear()
