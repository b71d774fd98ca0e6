"""TCP as a :class:`~drivers.links.base.Link`: the agent connects to a reader, or listens for it.

Networked scanners and RFID readers come in two flavours. Most run a TCP server (often on
port 23 or 2112, "raw" or "terminal" mode): :class:`TcpClientLink` connects to it. Some can
only push to a host: :class:`TcpServerLink` listens and the reader connects.

Both are plain asyncio streams, no thread. A reader that loses power or its cable sends no
FIN, and a silent scanner looks exactly like a dead one; so TCP keepalive is on, with short
timers (idle 10 s, then 3 probes 5 s apart by default), and the kernel reports a dead peer
within about 25 s as a read error. Writes have a deadline, since a peer that stopped
reading would otherwise make ``drain()`` wait forever.

The server link takes one reader connection at a time, and a new one replaces the old: a
reader that rebooted connects again while its old connection is still half-open on our side
(no FIN ever came), and refusing it would lock the reader out until keepalive noticed. The
replacement shows in :meth:`TcpServerLink.chunks` as an empty chunk, the link protocol's mark
for a break in the stream, so the framer drops the old connection's half frame instead of
gluing it to the new connection's bytes. When the connection ends without a replacement,
``chunks()`` raises ConnectError (the device is DOWN until the reader comes back, and the
runner closes and reopens the link: the listening socket has SO_REUSEADDR so it binds again
at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

from drivers.links.reasons import tcp_reason
from kernel.errors import ConnectError

log = logging.getLogger(__name__)

CHUNK = 65536
CLOSED_BY_READER = "the reader closed the connection"


def set_keepalive(sock: socket.socket | None, idle: float | None) -> None:
    """TCP keepalive on ``sock``: first probe after ``idle`` s of silence, then 3 probes 5 s
    apart (``idle=None``: leave keepalive off)."""
    if sock is None or idle is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # Linux names; elsewhere the system's (much longer) defaults apply.
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(value)))


class TcpClientLink:
    """``TcpClientLink("rfid2", "10.0.0.5", 2112)``: the agent connects to the reader."""

    def __init__(
        self,
        device: str,
        host: str,
        port: int,
        *,
        connect_timeout: float = 5.0,
        write_timeout: float = 5.0,
        keepalive: float | None = 10.0,
    ) -> None:
        self.device = device
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.keepalive = keepalive
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def description(self) -> str:
        return f"tcp {self.address}"

    async def open(self) -> None:
        if self._writer is not None:
            raise RuntimeError(f"{self.description} is already open")
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            raise ConnectError(
                self.device,
                f"no answer from {self.address} within {self.connect_timeout:g} s (wrong "
                "address, reader off, or a firewall dropping the connection)",
            ) from None
        except OSError as exc:
            raise ConnectError(self.device, tcp_reason(self.address, exc, "open")) from exc
        set_keepalive(writer.get_extra_info("socket"), self.keepalive)
        self._reader, self._writer = reader, writer

    async def chunks(self) -> AsyncIterator[bytes]:
        reader = self._reader
        while reader is not None and self._reader is reader:  # until close()
            try:
                data = await reader.read(CHUNK)
            except OSError as exc:
                raise ConnectError(self.device, tcp_reason(self.address, exc, "read")) from exc
            if data:
                yield data
            elif self._reader is reader:  # EOF, not our own close()
                raise ConnectError(self.device, CLOSED_BY_READER)

    async def write(self, data: bytes) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ConnectError(self.device, f"{self.description} is not open")
        await _send(self.device, self.address, writer, data, self.write_timeout)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            await _close_writer(writer)


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str


class TcpServerLink:
    """``TcpServerLink("scanner3", "", 51236)``: the agent listens, the reader connects.

    ``host`` ``""`` listens on every interface; ``port`` 0 takes a free port (tests), which
    :attr:`port` shows once open.
    """

    def __init__(
        self,
        device: str,
        host: str,
        port: int,
        *,
        write_timeout: float = 5.0,
        keepalive: float | None = 10.0,
    ) -> None:
        self.device = device
        self.host = host
        self.port = port
        self.write_timeout = write_timeout
        self.keepalive = keepalive
        self.connections = 0
        """Reader connections accepted since the link was made."""
        self._server: asyncio.Server | None = None
        self._listening = False
        self._current: _Connection | None = None
        self._replaced: set[_Connection] = set()
        self._changed = asyncio.Event()

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def description(self) -> str:
        return f"listening on {self.address}"

    @property
    def peer(self) -> str | None:
        """The connected reader's address, or None."""
        return self._current.peer if self._current is not None else None

    async def open(self) -> None:
        if self._listening:
            raise RuntimeError(f"{self.description} is already open")
        self._listening = True
        try:
            server = await asyncio.start_server(
                self._accept, self.host or None, self.port, reuse_address=True
            )
        except OSError as exc:
            self._listening = False
            raise ConnectError(self.device, tcp_reason(self.address, exc, "listen")) from exc
        except BaseException:  # cancelled while binding
            self._listening = False
            raise
        self._server = server
        if self.port == 0:
            self.port = server.sockets[0].getsockname()[1]
        log.debug("%s: %s", self.device, self.description)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        if not self._listening:  # accepted just as the server stopped
            writer.close()
            return
        set_keepalive(writer.get_extra_info("socket"), self.keepalive)
        old, self._current = self._current, _Connection(reader, writer, peer)
        self.connections += 1
        if old is not None:
            log.info("%s: reader connected from %s, replacing %s", self.device, peer, old.peer)
            self._replaced.add(old)
            old.writer.close()  # its reader sees EOF; chunks() moves to the new one
        else:
            log.info("%s: reader connected from %s", self.device, peer)
        self._changed.set()

    async def wait_reader(self) -> None:
        """Return once a reader is connected (at once if one is) or the link is closed: a
        device that connects to us cannot be asked anything before it has."""
        while self._listening and self._current is None:
            self._changed.clear()
            await self._changed.wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        reading: _Connection | None = None
        while self._listening:
            conn = self._current
            if conn is None:
                self._changed.clear()
                await self._changed.wait()
                continue
            if reading is not None and conn is not reading:  # a new connection took over
                self._replaced.discard(reading)
                await _close_writer(reading.writer)
                reading = conn
                yield b""  # the break in the stream (see the Link protocol)
                continue
            reading = conn
            error: OSError | None = None
            try:
                data = await conn.reader.read(CHUNK)
            except OSError as exc:
                data, error = b"", exc
            if data:
                yield data
                continue
            if self._current is not conn:  # replaced or closed meanwhile: see above
                continue
            self._current = None
            await _close_writer(conn.writer)
            if error is not None:
                raise ConnectError(self.device, tcp_reason(conn.peer, error, "read"))
            raise ConnectError(self.device, CLOSED_BY_READER)

    async def write(self, data: bytes) -> None:
        conn = self._current
        if not self._listening:
            raise ConnectError(self.device, f"{self.description} is not open")
        if conn is None or conn.writer.is_closing():
            raise ConnectError(self.device, f"no reader is connected ({self.description})")
        await _send(self.device, conn.peer, conn.writer, data, self.write_timeout)

    async def close(self) -> None:
        self._listening = False
        server, self._server = self._server, None
        conn, self._current = self._current, None
        old, self._replaced = self._replaced, set()
        self._changed.set()  # a chunks() waiting for a reader ends
        writers = [c.writer for c in (*old, *([conn] if conn else []))]
        for writer in writers:
            writer.close()
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for writer in writers:
            await _close_writer(writer)


async def _send(
    device: str, address: str, writer: asyncio.StreamWriter, data: bytes, within: float
) -> None:
    try:
        writer.write(data)
        async with asyncio.timeout(within):
            await writer.drain()
    except TimeoutError:
        raise ConnectError(
            device,
            f"writing to {address} timed out after {within:g} s (the reader stopped taking data)",
        ) from None
    except OSError as exc:
        raise ConnectError(device, tcp_reason(address, exc, "write")) from exc


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Close and wait (briefly) until the transport is gone; never raises. Bytes the peer
    has not taken are dropped (abort): a closing link has no one left to deliver them to,
    and a graceful close would wait for a peer that stopped reading."""
    if writer.transport.get_write_buffer_size() > 0:
        writer.transport.abort()
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
