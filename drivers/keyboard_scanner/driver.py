"""Keyboard-wedge scanner driver: the scanner's Linux input device, grabbed, key events to
scans (``keymap.WedgeDecoder``), one observation per scan.

A streaming driver: ``runners.run_streaming`` owns the device state, backoff and outage
records. Each scan is an observation of the configured point, with the wall-clock time it
ended: GOOD with the text as typed (GS included, AIM prefix kept: the station's scan rules
classify it, as a serial scanner's), or BAD with the reason the keymap gave and what had been
typed in ``detail`` (``typed``, escaped, and ``length``), so a garbled scan is recorded, never
dropped. The scanner's no-read text, if it types one, is BAD ``no read``.

**Why a thread.** The device is read in a thread owned by a ``BlockingSource``, which opens
it (evdev's ``InputDevice``: open and four ioctls), grabs it (``EVIOCGRAB``), reads it and
closes it. evdev's asyncio API (``async_read_loop``, ``add_reader`` on a non-blocking fd)
would not block the loop for reads either, but the thread gives the handle and the decoder's
state (held modifiers, a half-typed scan) one owner, keeps opening, grabbing and closing a
device that may be vanishing off the loop, makes the inter-key timeout the poll timeout (no
timer on the loop), and inherits the shared source's stop and leak guarantees. Idle costs
nothing: the thread blocks in ``poll`` on the device and on a wake pipe that ``interrupt``
writes to when the source stops. The pipe is made before the thread starts and closed after
it has ended, so the loop never writes to a closed or reused descriptor.

**The seam.** ``open_input(path)`` is the one place evdev is touched (imported there, so the
module loads without the extra); the tests pass a fake device there, because this machine
has no /dev/input or /dev/uinput to make a real one. Everything after it (grab, poll, read,
errno translation, decoding) is the code that runs on a line PC.

**Errors.** Opening, grabbing and reading failures become ``ConnectError`` reasons that say
how to fix them (:func:`input_reason`): no such device (unplugged? use /dev/input/by-id/),
no permission (the ``input`` group or a udev rule), grabbed by another process. A device that
disappears (``ENODEV`` on read: unplugged) ends the stream with ``ConnectError``; the runner
marks it down and reopens it with backoff until it is back. A scan cut short by the unplug is
handed on first, rejected, so nothing typed is lost without a record. Events the kernel
dropped (``SYN_DROPPED``: the reader fell behind) reject the scan they belonged to.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import select
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import suppress
from typing import Protocol

from drivers.base import StreamingDriver
from drivers.keyboard_scanner.config import KeyboardScannerDevice
from drivers.keyboard_scanner.keymap import KeyScan, WedgeDecoder
from drivers.registry import DriverContext
from drivers.threads import BlockingSource, ThreadLeak
from kernel.errors import ConnectError
from kernel.model import Observation, Quality, Value

log = logging.getLogger(__name__)

EV_SYN, EV_KEY = 0, 1
SYN_REPORT, SYN_DROPPED = 0, 3
SHOWN_CHARS = 256
"""Characters of a rejected scan kept in its record (escaped); the length is always given."""
_GONE = (errno.ENODEV, errno.ENXIO, errno.EIO, errno.EBADF)
LOST = "key events were lost (the input buffer overflowed): a scan may be cut or missing"
"""The reason of a scan that SYN_DROPPED cut (the reader fell behind the kernel's buffer)."""


class InputEvent(Protocol):
    """What the driver reads of an ``evdev.InputEvent``."""

    @property
    def type(self) -> int: ...

    @property
    def code(self) -> int: ...

    @property
    def value(self) -> int: ...


class InputDevice(Protocol):
    """What the driver uses of an ``evdev.InputDevice``: a non-blocking descriptor to poll,
    ``read`` (raises BlockingIOError when nothing is waiting, OSError ENODEV once unplugged),
    ``grab``/``ungrab`` (EVIOCGRAB) and ``close``."""

    @property
    def fd(self) -> int: ...

    @property
    def name(self) -> str: ...

    def read(self) -> Iterator[InputEvent]: ...

    def grab(self) -> None: ...

    def ungrab(self) -> None: ...

    def close(self) -> None: ...


OpenInput = Callable[[str], InputDevice]
"""Opens the input device at a path; raises OSError as ``os.open`` and the ioctls do."""


def open_evdev(path: str) -> InputDevice:
    """The real ``open_input``: evdev's ``InputDevice`` (opened non-blocking)."""
    import evdev

    device: InputDevice = evdev.InputDevice(path)
    return device


def input_reason(path: str, exc: OSError, step: str) -> str:
    """Why ``step`` (``open``, ``grab`` or ``read``) failed on input device ``path``, in
    words that say how to fix it. A pure function of the error, tested as a table (the tests
    run as root and have no input devices to provoke real errors with)."""
    code = exc.errno
    if step == "open":
        if code == errno.ENOENT:
            return (
                f"input device {path} does not exist (scanner unplugged? use its "
                "/dev/input/by-id/...-event-kbd name, which stays the same across reboots and "
                "USB sockets: ls -l /dev/input/by-id/)"
            )
        if code in (errno.EACCES, errno.EPERM):
            return (
                f"no permission to read input device {path}: add the agent's user to the "
                "input group (sudo usermod -aG input <user>, then log in again; for a systemd "
                "service: SupplementaryGroups=input) or give it the device with a udev rule "
                "(docs/devices/keyboard-scanner.md)"
            )
        if code in (errno.ENOTTY, errno.EINVAL):
            return (
                f"{path} is not an input event device: use the scanner's "
                "/dev/input/by-id/...-event-kbd name (evtest lists them)"
            )
        if code in _GONE:
            return f"input device {path} is gone (scanner unplugged?)"
        return f"cannot open input device {path}: {_detail(exc)}"
    if step == "grab":
        if code == errno.EBUSY:
            return (
                f"input device {path} is grabbed by another process (another edge-agent, or a "
                f"program reading the scanner exclusively): fuser -v {path} lists who has it "
                "open"
            )
        if code in _GONE:
            return f"input device {path} is gone (scanner unplugged?)"
        return f"cannot grab input device {path}: {_detail(exc)}"
    if code in _GONE:
        return f"input device {path} disappeared (scanner unplugged?)"
    return f"reading input device {path} failed: {_detail(exc)}"


def _detail(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class KeyboardScannerDriver(StreamingDriver):
    """One keyboard-wedge scanner on one input device."""

    def __init__(
        self,
        device: KeyboardScannerDevice,
        context: DriverContext | None = None,
        *,
        open_input: OpenInput = open_evdev,
    ) -> None:
        super().__init__(device.name, device.backoff_initial, device.backoff_max)
        self.device = device
        self._open_input = open_input
        self._no_read = frozenset(device.no_read)
        self._session: _Session | None = None

    async def open(self) -> None:
        await self.close()
        session = _Session(self.name, self.device, self._open_input)
        await session.start()
        self._session = session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.stop()

    def point_names(self) -> Sequence[str]:
        return [self.device.point]

    async def stream(self) -> AsyncIterator[Sequence[Observation]]:
        session = self._session
        if session is None:
            raise ConnectError(self.name, "not open")
        async for scans in session.source:  # a lost device raises the ConnectError it made
            yield [self._observe(scan, ts) for ts, scan in scans]

    def _observe(self, scan: KeyScan, ts: float) -> Observation:
        point = self.device.point
        if scan.text is None:
            self.status.reads_failed += 1
            shown = scan.typed[:SHOWN_CHARS].encode("unicode_escape").decode("ascii")
            detail: dict[str, Value] = {"typed": shown, "length": len(scan.typed)}
            return Observation(
                self.name, point, None, Quality.BAD, ts=ts, error=scan.error, detail=detail
            )
        if scan.text in self._no_read:
            return Observation(
                self.name, point, None, Quality.BAD, ts=ts,
                error=f"no read (the scanner typed {scan.text!r})",
            )  # fmt: skip
        return Observation(self.name, point, scan.text, ts=ts)


Scans = list[tuple[float, KeyScan]]
"""Scans finished in one read, each with the wall-clock time it ended."""


class _Session:
    """One opening of the input device: the reader thread (a ``BlockingSource`` running a
    :class:`_Reader`) and the wake pipe that interrupts its poll. The pipe outlives the
    thread on both sides, so ``_interrupt`` (the loop's thread) never writes to a descriptor
    that is closed or already another file's."""

    def __init__(self, name: str, device: KeyboardScannerDevice, open_input: OpenInput) -> None:
        self.name = name
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        reader = _Reader(name, device, open_input, self._wake_read)
        self.source: BlockingSource[Scans] = BlockingSource(
            name, reader.read, open=reader.open, close=reader.close, interrupt=self._interrupt
        )
        self._pipe_open = True

    async def start(self) -> None:
        try:
            await self.source.__aenter__()  # opens in the thread; its ConnectError lands here
        except BaseException:
            self._close_pipe()
            raise

    async def stop(self) -> None:
        try:
            await self.source.__aexit__(None, None, None)
        except ThreadLeak:
            # The thread may still poll the pipe: leave it open rather than close it under it.
            log.error("device %s: the input reader thread did not stop", self.name)
            return
        except Exception:
            log.exception("device %s: error while closing the input device", self.name)
        self._close_pipe()

    def _interrupt(self) -> None:
        if self._pipe_open:
            with suppress(BlockingIOError):  # full: a wake-up is pending already
                os.write(self._wake_write, b"\0")

    def _close_pipe(self) -> None:
        if self._pipe_open:
            self._pipe_open = False
            os.close(self._wake_read)
            os.close(self._wake_write)


class _Reader:
    """The input device and the decoder: ---- owned by the source's thread ---- (``open``,
    ``read`` and ``close`` all run there)."""

    def __init__(
        self, name: str, device: KeyboardScannerDevice, open_input: OpenInput, wake: int
    ) -> None:
        self.name = name
        self.device = device
        self.path = device.input
        self._open_input = open_input
        self._wake = wake
        self._handle: InputDevice | None = None
        self._poll: select.poll | None = None
        self._decoder: WedgeDecoder | None = None
        self._failure: ConnectError | None = None  # raised by the next read
        self._dropped = False  # after SYN_DROPPED, until the next SYN_REPORT

    def open(self) -> None:
        try:
            handle = self._open_input(self.path)
        except OSError as exc:
            raise ConnectError(self.name, input_reason(self.path, exc, "open")) from exc
        if self.device.grab:
            try:
                handle.grab()
            except OSError as exc:
                with suppress(OSError):
                    handle.close()
                raise ConnectError(self.name, input_reason(self.path, exc, "grab")) from exc
        poll = select.poll()
        poll.register(handle.fd, select.POLLIN)
        poll.register(self._wake, select.POLLIN)
        dev = self.device
        self._decoder = WedgeDecoder(
            dev.layout,
            gs_key=dev.gs_key,
            suffix=dev.suffix,
            max_length=dev.max_length,
            inter_key_timeout=dev.inter_key_timeout,
        )
        self._handle, self._poll = handle, poll
        self._failure, self._dropped = None, False
        log.info(
            "device %s: reading input %s (%s)%s",
            self.name, self.path, handle.name, ", grabbed" if dev.grab else "",
            extra={"device": self.name},
        )  # fmt: skip

    def read(self) -> Scans | None:
        handle, poll, decoder = self._handle, self._poll, self._decoder
        assert handle is not None, "read before open"
        assert poll is not None
        assert decoder is not None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        deadline = decoder.deadline()
        wait = None if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1e3))
        scans: Scans = []
        for fd, _ in poll.poll(wait):
            if fd == self._wake:
                with suppress(BlockingIOError):
                    os.read(self._wake, 512)
            else:
                scans += self._events(handle, decoder)
                if self._failure is not None:
                    return scans  # the scan the loss cut short; the failure comes next
        overdue = decoder.expire(time.monotonic())
        if overdue is not None:
            scans.append((time.time(), overdue))
        return scans or None

    def _events(self, handle: InputDevice, decoder: WedgeDecoder) -> Scans:
        try:
            events = [(e.type, e.code, e.value) for e in handle.read()]
        except BlockingIOError:
            return []
        except OSError as exc:
            failure = ConnectError(self.name, input_reason(self.path, exc, "read"))
            failure.__cause__ = exc
            cut = decoder.abort(f"scan cut short: {failure.reason}")
            if cut is None:
                raise failure from exc
            self._failure = failure
            return [(time.time(), cut)]
        now, wall = time.monotonic(), time.time()
        scans: Scans = []
        for kind, code, value in events:
            if kind == EV_SYN:
                if code == SYN_DROPPED:
                    self._dropped = True
                    decoder.lost(LOST, now)
                elif code == SYN_REPORT:
                    self._dropped = False
            elif kind == EV_KEY and not self._dropped:
                scans += [(wall, scan) for scan in decoder.key(code, value, now)]
        return scans

    def close(self) -> None:
        handle, self._handle = self._handle, None
        self._poll = self._decoder = None
        if handle is None:
            return
        if self.device.grab:
            with suppress(OSError):  # unplugged: nothing to release
                handle.ungrab()
        with suppress(OSError):
            handle.close()
