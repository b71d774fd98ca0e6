"""A serial port (RS-232, USB adapter) as a :class:`~drivers.links.base.Link`.

pyserial only reads by blocking, so the port lives in a thread owned by a
:class:`~drivers.threads.BlockingSource` (invariant 7: the event loop never blocks).

**Idle costs nothing.** A scanner is silent for hours; the reader thread must not poll. It
opens the port with ``timeout=None`` and blocks in ``read(1)`` (a ``select`` on the port and
on pyserial's abort pipe) until a byte comes, then takes everything already waiting
(``in_waiting``) in the same go, so a scan arrives as one chunk, not byte by byte. To stop,
the source calls :meth:`SerialLink._interrupt`, which is ``cancel_read()``: a byte on the
abort pipe that makes the read return empty.

**Who owns the handle.** Only the source's thread touches the ``serial.Serial`` object:
open, read, write and close all run there. A write (a good-read beep, a scale command) goes
through ``BlockingSource.call``, which runs it between two reads; since a read can block for
hours, the source is made with ``wake_for_calls=True`` so a call also calls
``cancel_read()``: the read returns at once, the write runs, the next read starts, all within
a millisecond or two. The abort pipe keeps a wake-up made between two reads, so none is lost.
Writing from another thread concurrently would also work at the OS level, but two owners
of one handle is what the architecture guide warns against, and the pipe makes it needless.
The one exception is ``cancel_read()`` itself, called from the loop's thread: a lock keeps
it from writing to the abort pipe while the thread closes the port (the pipe's fd number
could already belong to another file); it only *tries* the lock, because the thread holds
it while closing, which can wait for output to drain, and the loop must never wait for that.

The port is opened with ``exclusive=True`` (an ``flock``): two programs reading one
scanner would each get half the bytes. Errors are translated by
:func:`drivers.links.reasons.serial_reason` into reasons that say how to fix them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import suppress
from functools import partial
from typing import Literal

import serial

from drivers.links.reasons import serial_reason
from drivers.threads import BlockingSource, ThreadLeak
from kernel.errors import ConnectError

log = logging.getLogger(__name__)

Parity = Literal["N", "E", "O"]

_PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class SerialLink:
    """``SerialLink("scanner1", "/dev/serial/by-id/usb-...")``: open, chunks, write, close."""

    def __init__(
        self,
        device: str,
        port: str,
        *,
        baudrate: int = 9600,
        bytesize: Literal[5, 6, 7, 8] = 8,
        parity: Parity = "N",
        stopbits: float = 1,
        xonxoff: bool = False,
        rtscts: bool = False,
        write_timeout: float = 2.0,
    ) -> None:
        if parity not in _PARITY:
            raise ValueError(f"parity must be N, E or O, not {parity!r}")
        if bytesize not in (5, 6, 7, 8):
            raise ValueError(f"bytesize must be 5, 6, 7 or 8, not {bytesize!r}")
        if stopbits not in (1, 1.5, 2):
            raise ValueError(f"stopbits must be 1, 1.5 or 2, not {stopbits!r}")
        if baudrate <= 0:
            raise ValueError(f"baudrate must be positive, not {baudrate!r}")
        self.device = device
        self.port = port
        self.baudrate = baudrate
        self.bytesize = bytesize
        self.parity: Parity = parity
        self.stopbits = stopbits
        self.xonxoff = xonxoff
        self.rtscts = rtscts
        self.write_timeout = write_timeout
        self._source: BlockingSource[bytes] | None = None
        # ---- owned by the source's thread (the loop only calls cancel_read, see above) --
        self._handle: serial.Serial | None = None
        self._handle_lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"serial {self.port}"

    @property
    def settings(self) -> str:
        """``9600 8N1``, for logs."""
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits:g}"

    async def open(self) -> None:
        if self._source is not None:
            raise RuntimeError(f"{self.description} is already open")
        source = BlockingSource(
            self.device,
            self._read,
            open=self._open_port,
            close=self._close_port,
            interrupt=self._interrupt,
            wake_for_calls=True,
        )
        await source.__aenter__()  # opens the port in the thread; its ConnectError lands here
        self._source = source
        log.debug("%s: opened %s at %s", self.device, self.port, self.settings)

    async def chunks(self) -> AsyncIterator[bytes]:
        source = self._source
        if source is None:  # closed (or never opened): no bytes
            return
        async for chunk in source:  # a lost port raises the ConnectError made in _read
            yield chunk

    async def write(self, data: bytes) -> None:
        source = self._source
        if source is None:
            raise ConnectError(self.device, f"{self.description} is not open")
        try:
            await source.call(partial(self._write_now, data))
        except RuntimeError:  # the thread has ended: the port was lost or is closing
            raise ConnectError(
                self.device, f"serial port {self.port} is not open (lost: adapter unplugged?)"
            ) from None

    async def close(self) -> None:
        source, self._source = self._source, None
        if source is None:
            return
        try:
            await source.__aexit__(None, None, None)
        except ThreadLeak:
            log.error("%s: the reader thread of %s did not stop", self.device, self.port)
        except Exception:
            log.exception("%s: error while closing %s", self.device, self.port)

    # ---- the source's thread ---------------------------------------------------------------

    def _open_port(self) -> None:
        try:
            handle = serial.Serial(
                port=self.port,
                baudrate=self.baudrate,
                bytesize=self.bytesize,
                parity=_PARITY[self.parity],
                stopbits=self.stopbits,
                xonxoff=self.xonxoff,
                rtscts=self.rtscts,
                timeout=None,  # block until a byte comes; cancel_read() wakes the read
                write_timeout=self.write_timeout,
                exclusive=True,
            )
        except OSError as exc:  # SerialException is an OSError
            raise ConnectError(self.device, serial_reason(self.port, exc, "open")) from exc
        except ValueError as exc:
            raise ConnectError(
                self.device, f"invalid settings for serial port {self.port}: {exc}"
            ) from exc
        with self._handle_lock:
            self._handle = handle

    def _read(self) -> bytes | None:
        handle = self._handle
        assert handle is not None, "read before open"
        try:
            first = handle.read(1)
            if not first:
                return None  # woken by cancel_read: to stop, or to run a call
            waiting = handle.in_waiting
            return first + handle.read(waiting) if waiting else first
        except OSError as exc:
            raise ConnectError(self.device, serial_reason(self.port, exc, "read")) from exc

    def _write_now(self, data: bytes) -> None:
        handle = self._handle
        assert handle is not None, "write before open"
        try:
            handle.write(data)
        except OSError as exc:
            reason = serial_reason(self.port, exc, "write", self.write_timeout)
            raise ConnectError(self.device, reason) from exc

    def _close_port(self) -> None:
        with self._handle_lock:
            handle, self._handle = self._handle, None
            if handle is not None:
                handle.close()

    # ---- the loop's thread -----------------------------------------------------------------

    def _interrupt(self) -> None:
        if not self._handle_lock.acquire(blocking=False):
            return  # the thread is opening or closing the port: no read to wake
        try:
            if self._handle is not None:
                with suppress(OSError):
                    self._handle.cancel_read()
        finally:
            self._handle_lock.release()
