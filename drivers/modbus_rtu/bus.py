"""One Modbus RTU bus: a serial port (or an RTU-over-TCP gateway) that its units share.

RS-485 carries one request at a time, and a unit that does not answer holds the line until
its timeout: the bus owns the pymodbus client and a lock, and each unit takes its turn for
one request with its own timeout and retries. Between two frames the line stays quiet for
3.5 character times (the RTU frame delimiter; 1.75 ms above 19200 baud, per the Modbus
serial line spec), longer if the unit asks for a ``request_delay``.

A port that vanishes (USB adapter unplugged) ends the client; every unit then fails its next
turn, goes DOWN and releases the bus, and the first unit to retry reopens it, with the reason
("does not exist", "in use by another program", "no permission") when it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
from collections.abc import AsyncIterator

import serial
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.framer import FramerType

from drivers.bus import BusUnavailable, SharedBus
from drivers.modbus_rtu.config import ModbusRtuDevice
from drivers.threads import run_in_thread

log = logging.getLogger(__name__)

NEVER_DISCONNECT = 1 << 30
"""pymodbus closes a TCP connection after a few unanswered requests in a row; on a shared
RTU gateway that silence is one dead unit's, not the gateway's, so it must not cut off the
other units."""


def frame_silence(baudrate: int, bytesize: int, parity: str, stopbits: int) -> float:
    """Seconds of quiet that end an RTU frame: 3.5 characters, or 1.75 ms above 19200 baud."""
    if baudrate > 19200:
        return 0.00175
    bits = 1 + bytesize + (0 if parity == "N" else 1) + stopbits
    return 3.5 * bits / baudrate


class RtuBus(SharedBus):
    """The client of one wire and the turns on it. Built from the first unit's config; the
    config checks make every unit on the wire agree on the wire's settings."""

    def __init__(self, device: ModbusRtuDevice) -> None:
        claim = device.bus()
        super().__init__(claim.settings)
        self.what = claim.what
        self._device = device
        serial_line = device.port is not None
        self.silence = (
            frame_silence(device.baudrate, device.bytesize, device.parity, device.stopbits)
            if serial_line
            else 0.0
        )
        self._client: ModbusBaseClient | None = None
        self.lost = asyncio.Event()  # set when the open connection drops; replaced on open
        self._turns = asyncio.Lock()
        self._quiet_since = -math.inf  # loop time the last exchange on the wire ended

    @property
    def is_open(self) -> bool:
        client = self._client
        return client is not None and client.connected and not self.lost.is_set()

    async def _open(self) -> None:
        d = self._device
        lost = asyncio.Event()

        def on_connect(up: bool) -> None:
            if not up:
                lost.set()

        client: ModbusBaseClient
        common = {
            "timeout": d.timeout,
            "retries": 0,
            # 0 turns off pymodbus' own reconnect task: the units' runners own the backoff.
            "reconnect_delay": 0,
            "trace_connect": on_connect,
        }
        if d.port is not None:
            client = AsyncModbusSerialClient(
                d.port,
                framer=FramerType.RTU,
                baudrate=d.baudrate,
                bytesize=d.bytesize,
                parity=d.parity,
                stopbits=d.stopbits,
                name=f"rtu:{d.port}",
                **common,  # type: ignore[arg-type]
            )
        else:
            client = AsyncModbusTcpClient(
                d.host or "",
                port=d.tcp_port,
                framer=FramerType.RTU,
                name=f"rtu:{d.host}:{d.tcp_port}",
                **common,  # type: ignore[arg-type]
            )
        client.set_max_no_responses(NEVER_DISCONNECT)
        try:
            if not await client.connect():
                raise BusUnavailable(await self._failure_reason())
        except BaseException:
            client.close()
            raise
        self._client, self.lost = client, lost
        self._quiet_since = -math.inf
        log.info("%s open (%s)", self.what, _settings_text(self.settings))

    async def _close(self) -> None:
        client, self._client = self._client, None
        self.lost.set()  # whoever waits on this connection learns it is gone
        if client is None:
            return
        try:
            client.close()
        except Exception:  # close() must never raise; a vanished port is still released
            log.debug("%s: error while closing", self.what, exc_info=True)

    @contextlib.asynccontextmanager
    async def turn(
        self, answer_within: float, retries: int, gap: float
    ) -> AsyncIterator[ModbusBaseClient]:
        """The client for one request of one unit: once every earlier request is done and the
        line has been quiet for the frame silence (or ``gap``, if longer); with the unit's
        own timeout (``answer_within``) and ``retries`` in force. Raises BusUnavailable when
        the wire is gone (a closed pymodbus client would reconnect on its own if asked to
        send)."""
        async with self._turns:
            loop = asyncio.get_running_loop()
            wait = self._quiet_since + max(self.silence, gap) - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            client = self._client
            if client is None or not self.is_open:
                raise BusUnavailable(f"{self.what} is not open (lost)")
            # pymodbus reads both for every request; set under the lock they are this
            # unit's alone, so a slow unit's timeout never applies to its neighbours.
            client.ctx.comm_params.timeout_connect = answer_within
            client.ctx.retries = retries
            try:
                yield client
            finally:
                self._quiet_since = loop.time()

    async def _failure_reason(self) -> str:
        """Why the wire could not be opened: pymodbus only says False, so the port is opened
        once more with pyserial (in a thread: opening a tty may block) to learn the errno."""
        d = self._device
        if d.port is None:
            return f"cannot connect to gateway {d.host}:{d.tcp_port} (refused or unreachable)"
        port = d.port

        def attempt() -> str:
            try:
                handle = serial.Serial(port, exclusive=True)
            except serial.SerialException as exc:
                return _serial_reason(port, exc)
            handle.close()
            return f"opening {port} failed (transient; it opens now)"

        return await run_in_thread(f"open:{port}", attempt)


def _serial_reason(port: str, exc: serial.SerialException) -> str:
    code = exc.errno
    if code == errno.ENOENT:
        return (
            f"serial port {port} does not exist (adapter unplugged, or a wrong name: "
            "/dev/serial/by-id/ names stay the same across reboots)"
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            f"no permission to open {port}: add the agent's user to the group that owns it "
            "(usually dialout)"
        )
    if code in (errno.EAGAIN, errno.EBUSY) or "exclusively lock" in str(exc):
        return f"serial port {port} is in use by another program"
    if code == errno.ENOTTY or code == errno.ENXIO:
        return f"{port} is not a serial port (or its device is gone)"
    return f"cannot open serial port {port}: {exc}"


def _settings_text(settings: dict[str, object]) -> str:
    if not settings:
        return "RTU over TCP"
    parity = settings.get("parity", "?")
    return f"{settings['baudrate']} baud {settings['bytesize']}{parity}{settings['stopbits']}"
