"""Modbus TCP: one device (a PLC, or one unit behind a gateway) on a connection of its own.

The shared Modbus logic (requests, decoding, writes, the probe's single requests) is
``drivers.modbus.driver.ModbusDriver``; this class owns the TCP client: opening it (and
saying why it could not be opened), noticing its loss, and taking turns on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import AsyncIterator

from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.config import ModbusTcpDevice
from drivers.modbus.driver import ModbusDriver
from drivers.registry import DriverContext
from kernel.errors import ConnectError

log = logging.getLogger("drivers.modbus.driver")


class ModbusTcpDriver(ModbusDriver):
    """One Modbus TCP device (or one unit id behind a gateway) with its own client."""

    device: ModbusTcpDevice

    def __init__(self, device: ModbusTcpDevice, context: DriverContext | None = None) -> None:
        super().__init__(device)
        self._client: AsyncModbusTcpClient | None = None
        self._lost: asyncio.Event | None = None  # set when the open connection drops
        self._lock = asyncio.Lock()  # one request on the wire at a time, see the module doc
        self._request_done = -math.inf  # loop time the last request ended, for request_delay

    async def open(self) -> None:
        await self.close()
        d = self.device
        lost = asyncio.Event()
        client = AsyncModbusTcpClient(
            d.host,
            port=d.port,
            name=f"modbus:{d.name}",
            timeout=d.timeout,
            retries=0,
            # 0 turns off pymodbus' own reconnect task: run_polled owns the backoff, and a
            # second reconnect loop would race it and outlive close().
            reconnect_delay=0,
            # pymodbus reports a drop (peer closed, or its own close after several
            # unanswered requests) only here; our own close() does not call it.
            trace_connect=lambda up: None if up else lost.set(),
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if not await client.connect():
                elapsed = loop.time() - started
                raise ConnectError(d.name, await self._connect_failure_reason(elapsed))
            # Published only after connect_delay, so that snapshot reads and writes from
            # other tasks cannot reach a PLC that is not ready yet.
            if d.connect_delay:
                await asyncio.sleep(d.connect_delay)
            self._client, self._lost = client, lost
            self._request_done = -math.inf
            self._connected()
        except BaseException:
            self._client = self._lost = None
            client.close()
            raise


    async def watch_connection(self) -> None:
        lost = self._lost
        if lost is None:
            raise ConnectError(self.name, "not connected")
        await lost.wait()
        raise ConnectError(self.name, "connection lost (closed by the device or the network)")

    async def close(self) -> None:
        client, self._client, self._lost = self._client, None, None
        if client is None:
            return
        try:
            client.close()
        except Exception:  # close() must never raise; a half-dead socket is still released
            log.debug("device %s: error while closing", self.name, exc_info=True)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[AsyncModbusTcpClient]:
        """The client, for one request, once every earlier request is done and
        ``request_delay`` has passed since the last one ended.

        pymodbus 3.16 serialises requests on a client itself, but its lock knows nothing of
        request_delay, and it silently reconnects a closed client when asked to send.
        """
        async with self._lock:
            loop = asyncio.get_running_loop()
            wait = self._request_done + self.device.request_delay - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            # Checked under the lock and after the pause: the connection may have been
            # replaced or lost meanwhile, and a closed pymodbus client would reconnect.
            client = self._client
            if client is None or not client.connected:
                raise ConnectError(self.name, "not connected (connection lost)")
            try:
                yield client
            finally:
                self._request_done = loop.time()

    async def _connect_failure_reason(self, elapsed: float) -> str:
        """Why connecting failed. pymodbus only says False, so a fast failure is probed once
        more with a bare socket to tell "refused" from "no route" or "unknown host"."""
        d = self.device
        where = f"{d.host}:{d.port}"
        if elapsed >= 0.9 * d.timeout:
            return f"connect to {where} timed out after {d.timeout}s"
        try:
            async with asyncio.timeout(d.timeout):
                _, writer = await asyncio.open_connection(d.host, d.port)
        except TimeoutError:
            return f"connect to {where} timed out after {d.timeout}s"
        except ConnectionRefusedError:
            return f"connection to {where} refused"
        except socket.gaierror as exc:
            return f"cannot resolve host {d.host!r}: {exc.strerror}"
        except OSError as exc:
            return f"cannot connect to {where}: {exc.strerror or exc}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return f"connect to {where} failed (transient)"
