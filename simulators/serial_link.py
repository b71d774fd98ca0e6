"""A virtual null-modem cable on pseudo-terminals, so CI can run a serial driver for real.

Two pty pairs; the event loop relays bytes between their master ends, and each slave end
(/dev/pts/N) gets a stable symlink in a directory of the caller's choosing, like the
/dev/serial/by-id/... links a plant uses. Anything that opens a serial port by name (pyserial,
pymodbus) opens the symlink and cannot tell it from a USB adapter. Pure Python and no thread:
no socat on CI machines, nothing that outlives the test's event loop.

What Linux does with ptys, and what follows:

- Once every fd of a slave is closed, the master reads EIO and polls as hung up (POLLHUP)
  until a slave is opened again, so an ``add_reader`` on it would spin. The link therefore
  holds one fd of each slave itself, for the pair's lifetime: a client or server closing and
  reopening its port later just works, and the termios (raw) set here stay put. EIO is still
  ignored on read, should it ever come.
- Bytes relayed to a side that nobody has open wait in that slave's input queue; pyserial
  flushes the queue when it opens the port, so, as on a real wire, a frame sent to a port that
  was closed is lost. When a queue is full the write fails with EAGAIN and the bytes are
  dropped (counted in ``lost_bytes``): a wire does not push back either.
- Closing a master hangs its slave up: a reader of the slave gets EOF (pyserial raises
  SerialException) and writes get EIO. :meth:`NullModem.unplug` does that to both sides.
- Both ends are set raw: the line discipline's defaults (ONLCR, ICRNL, echo, XON/XOFF) would
  rewrite the bytes of binary frames.
- A pty has no parity bit: Linux clears PARENB (and forces CS8) on every tcsetattr. glibc
  (Debian 12's 2.36 at least) reads the settings back after TCSANOW and fails with EINVAL when
  the kernel changed nothing, which is what a pty does with a request that differs only in
  PARENB. pyserial reconfigures the port that way whenever a timeout is set after opening, as
  pymodbus always does, so parity E or O (8E1 is the Modbus RTU default) could not be opened.
  While a link is plugged, :class:`_ParityShim` wraps ``termios.tcsetattr`` and lets exactly
  that error pass for the link's own ptys, once it has checked that every other setting took.

The fault hooks act on "frames" from b to a: what the relay reads from b's master in one go.
pymodbus writes a frame with one write, so in practice that is one Modbus frame.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import termios
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_CHUNK = 4096


@dataclass(frozen=True)
class _Pty:
    """One pty pair: the master we relay, and a slave fd we hold so the master never hangs up."""

    master: int
    slave: int

    @classmethod
    def open(cls) -> _Pty:
        master, slave = os.openpty()
        pty = cls(master, slave)
        try:
            tty.setraw(master)
            tty.setraw(slave)
            os.set_blocking(master, False)
        except BaseException:
            pty.close()
            raise
        return pty

    @property
    def device(self) -> str:
        return os.ttyname(self.slave)

    @property
    def rdev(self) -> int:
        return os.fstat(self.slave).st_rdev

    def close(self) -> None:
        os.close(self.master)  # first: the slave's users see the hang-up
        os.close(self.slave)


class NullModem:
    """Two serial ports, ``a_path`` and ``b_path``, wired to each other.

    Use ``async with NullModem(tmp_path, "ttyAGENT", "ttyPLC") as link:`` and open
    ``link.a_path`` / ``link.b_path`` as serial ports. Must be started, used and closed on one
    running event loop.
    """

    def __init__(
        self, directory: str | os.PathLike[str], a_name: str = "ttyA", b_name: str = "ttyB"
    ) -> None:
        if a_name == b_name:
            raise ValueError("the two ends need different names")
        self.a_path = Path(directory) / a_name
        self.b_path = Path(directory) / b_name
        self.a_to_b_bytes = 0
        self.b_to_a_bytes = 0
        self.lost_bytes = 0
        """Bytes dropped because the receiving side's queue was full (nobody reading)."""
        self.corrupted = 0
        self.dropped = 0
        """Frames b -> a corrupted / dropped by :meth:`corrupt_next` / :meth:`drop_next`."""
        self._corrupt = 0
        self._drop = 0
        self._pair: tuple[_Pty, _Pty] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def plugged(self) -> bool:
        return self._pair is not None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.replug()

    async def close(self) -> None:
        self.unplug()

    async def __aenter__(self) -> NullModem:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def unplug(self) -> None:
        """Pull the cable (a USB adapter out): stop relaying, hang both sides up, remove both
        links. Whoever has a port open gets an error on its next read; opening fails."""
        if self._pair is None:
            return
        pair, self._pair = self._pair, None
        _SHIM.remove(*(pty.rdev for pty in pair))
        for pty, link in zip(pair, (self.a_path, self.b_path), strict=True):
            if self._loop is not None:
                self._loop.remove_reader(pty.master)
            link.unlink(missing_ok=True)
            pty.close()
        log.info("null modem %s <-> %s unplugged", self.a_path, self.b_path)

    def replug(self) -> None:
        """Plug a cable in again: fresh ptys behind the same two paths."""
        if self._loop is None:
            raise RuntimeError("start() the null modem first")
        if self._pair is not None:
            return
        opened: list[_Pty] = []
        try:
            for link in (self.a_path, self.b_path):
                opened.append(_Pty.open())
                _link(link, opened[-1].device)
        except OSError:
            for pty in opened:
                pty.close()
            raise
        a, b = opened
        self._pair = (a, b)
        _SHIM.add(a.rdev, b.rdev)
        self._loop.add_reader(a.master, self._relay, a, b, False)
        self._loop.add_reader(b.master, self._relay, b, a, True)
        log.info("null modem %s (%s) <-> %s (%s)", self.a_path, a.device, self.b_path, b.device)

    def corrupt_next(self, frames: int = 1) -> None:
        """Flip the last byte (the CRC) of the next ``frames`` frames from b to a; 0 stops."""
        self._corrupt = frames

    def drop_next(self, frames: int = 1) -> None:
        """Swallow the next ``frames`` frames from b to a (silence on the line); 0 stops."""
        self._drop = frames

    def _relay(self, src: _Pty, dst: _Pty, towards_a: bool) -> None:
        try:
            data = os.read(src.master, _CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # no slave open: nothing to relay (see module doc)
                return
            raise
        if not data:
            return
        if towards_a:
            self.b_to_a_bytes += len(data)
            if self._drop > 0:
                self._drop -= 1
                self.dropped += 1
                return
            if self._corrupt > 0:
                self._corrupt -= 1
                self.corrupted += 1
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
        else:
            self.a_to_b_bytes += len(data)
        try:
            written = os.write(dst.master, data)
        except OSError:  # EAGAIN: the receiving queue is full
            written = 0
        self.lost_bytes += len(data) - written


def _link(link: Path, target: str) -> None:
    """Point ``link`` at ``target``, atomically (a reader never sees the link missing)."""
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


class _ParityShim:
    """Wraps ``termios.tcsetattr`` while some NullModem is plugged (see the module doc).

    Process-wide by nature (pyserial calls the module function); it changes nothing for any fd
    but the slaves of a plugged NullModem, and is removed when the last one is unplugged.
    """

    _IGNORED_BY_PTY = termios.PARENB | termios.CSIZE

    def __init__(self) -> None:
        self._devices: set[int] = set()
        self._real = termios.tcsetattr

    def add(self, *rdevs: int) -> None:
        if not self._devices:
            self._real = termios.tcsetattr
            termios.tcsetattr = self._tcsetattr
        self._devices.update(rdevs)

    def remove(self, *rdevs: int) -> None:
        self._devices.difference_update(rdevs)
        if not self._devices:
            termios.tcsetattr = self._real

    def _tcsetattr(self, fd: Any, when: int, attributes: Any, /) -> None:
        try:
            self._real(fd, when, attributes)
        except termios.error as exc:
            if exc.args[0] != errno.EINVAL or not self._took_all_a_pty_can(fd, attributes):
                raise

    def _took_all_a_pty_can(self, fd: Any, wanted: list[Any]) -> bool:
        if os.fstat(fd if isinstance(fd, int) else fd.fileno()).st_rdev not in self._devices:
            return False
        got = termios.tcgetattr(fd)
        flags_and_speeds = (0, 1, 3, 4, 5)
        return all(got[i] == wanted[i] for i in flags_and_speeds) and not (
            (got[2] ^ wanted[2]) & ~self._IGNORED_BY_PTY
        )


_SHIM = _ParityShim()
