"""One simulated device on a byte link, whichever way the config reaches it: a serial port
(a null modem: the agent opens one end, the simulator holds the other), a TCP server (the
agent connects: ``host`` + ``tcp_port``) or a TCP client (the device connects to the agent's
``listen_port``). What a kind sends over it (a scanner's codes) is the kind's; this module
only moves bytes, frames messages the way the config cuts them, and plays the link's faults:
``garbage`` (bytes that are no text, framed as one message) and ``unplug`` (the cable out:
the pty hangs up, the TCP connections drop).

Bytes the agent sends (a good-read answer, a trigger command) are kept in :attr:`received`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from typing import Any

from drivers.links.config import SUFFIXES, LinkDevice
from simulators.devicemap.kinds import ActiveFault, Endpoint, Placement
from simulators.serial_link import NullModem

log = logging.getLogger(__name__)

GARBAGE = b"\xff\xfe\x00\x81\xc3("
"""A garbage burst when the scenario gives no data: bytes that are not UTF-8 text."""
RECONNECT = 0.1
"""Seconds between a client link's attempts to reach the agent's listen port."""
MAX_RECEIVED = 1 << 20


def frame(device: LinkDevice, payload: bytes) -> bytes:
    """``payload`` as one message on the device's link: with its terminator, between STX and
    ETX, or as it is (framing: pattern, where the payload must match the pattern)."""
    if device.framing == "stx_etx":
        return b"\x02" + payload + b"\x03"
    if device.framing == "suffix":
        return payload + SUFFIXES[device.suffix]
    return payload


def free_port(host: str) -> int:
    """A TCP port nobody listens on now, for a listen port the overrides give the agent."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class StreamEndpoint(Endpoint):
    """One device on its own link (the config allows one device per port)."""

    def __init__(self, device: LinkDevice, place: Placement) -> None:
        self.device = device
        self.devices = (device.name,)
        self.host = place.host
        self.received = bytearray()
        self.sent = 0
        """Messages written to the link."""
        self._modem: NullModem | None = None
        self._fd: int | None = None
        self._server: asyncio.Server | None = None
        self._port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._client: asyncio.Task[None] | None = None
        self._unplugged = False
        if device.port is not None:
            name = place.port_name(device.port)
            self._modem = NullModem(place.pty_dir, name, f".{name}.device")
        elif device.listen_port is not None:
            self._port = free_port(place.host)

    @property
    def mode(self) -> str:
        if self._modem is not None:
            return "serial"
        return "client" if self.device.listen_port is not None else "server"

    async def start(self) -> None:
        if self._modem is not None:
            await self._modem.start()
            self._open_pty()
        elif self.mode == "server":
            self._server = await asyncio.start_server(self._on_client, self.host, self._port)
            self._port = int(self._server.sockets[0].getsockname()[1])
        else:
            self._client = asyncio.create_task(
                self._connect(), name=f"simulate: {self.device.name}"
            )

    async def stop(self) -> None:
        await self._disconnect()
        if self._modem is not None:
            await self._modem.close()

    def overrides(self) -> dict[str, dict[str, Any]]:
        if self._modem is not None:
            keys: dict[str, Any] = {"port": str(self._modem.a_path)}
        elif self.mode == "server":
            keys = {"host": self.host, "tcp_port": self._port}
        else:
            keys = {"listen_host": self.host, "listen_port": self._port}
        return {self.device.name: keys}

    def describe(self) -> str:
        d = self.device
        if self._modem is not None:
            where = f"serial port {self._modem.a_path} ({d.baudrate} baud)"
        elif self.mode == "server":
            where = f"TCP server {self.host}:{self._port}"
        else:
            where = f"TCP client of the agent's listen port {self.host}:{self._port}"
        return f"{d.type} {d.name} on {where}"

    # ---- sending -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write ``data`` to the agent now; OSError when the link is down (unplugged, or the
        agent not connected)."""
        if self._unplugged:
            raise OSError(f"{self.device.name}: the link is unplugged")
        if self._fd is not None:
            try:
                os.write(self._fd, data)
            except BlockingIOError as exc:  # the agent does not read: a wire drops it too
                raise OSError(f"{self.device.name}: the agent is not reading the port") from exc
        elif self._writers:
            for w in list(self._writers):
                w.write(data)
        else:
            raise OSError(f"{self.device.name}: the agent is not connected")
        self.sent += 1

    def send_message(self, payload: bytes) -> None:
        self.send(frame(self.device, payload))

    # ---- faults ------------------------------------------------------------------------------

    async def fault_started(self, device: str, fault: ActiveFault) -> None:
        if fault.kind == "garbage":
            self.send_message(GARBAGE if fault.data is None else fault.data)
        elif fault.kind == "unplug":
            self._unplugged = True
            await self._disconnect()
            if self._modem is not None:
                self._modem.unplug()

    async def fault_ended(self, device: str, fault: ActiveFault) -> None:
        if fault.kind != "unplug" or not self._unplugged:
            return
        self._unplugged = False
        if self._modem is not None:
            self._modem.replug()
            self._open_pty()
        else:
            await self.start()

    # ---- the link ----------------------------------------------------------------------------

    def _open_pty(self) -> None:
        assert self._modem is not None
        self._fd = os.open(self._modem.b_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        asyncio.get_running_loop().add_reader(self._fd, self._read_pty)

    def _read_pty(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            data = b""
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        self.received += data
        del self.received[:-MAX_RECEIVED]

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while data := await reader.read(4096):
                self._keep(data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _connect(self) -> None:
        """Client mode: reach the agent's listen port, and again whenever it is lost."""
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, self._port)
            except OSError:
                await asyncio.sleep(RECONNECT)
                continue
            self._writers.add(writer)
            try:
                while data := await reader.read(4096):
                    self._keep(data)
            except ConnectionError:
                pass
            finally:
                self._writers.discard(writer)
                writer.close()

    async def _disconnect(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        if self._client is not None:
            task, self._client = self._client, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in list(self._writers):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()
