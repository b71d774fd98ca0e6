"""What went wrong with a serial port or a TCP connection, in words that say how to fix it.

The person reading these is commissioning a line, often without a Python background: an
``[Errno 13] Permission denied`` does not tell them to add the agent's user to ``dialout``.
The links translate every ``OSError`` (pyserial's ``SerialException`` is one) through these
functions at their edge, into the reason of a ``ConnectError``. Pure functions of the error's
errno and text, so they are tested as tables with constructed errors (the tests run as root
and cannot provoke a real permission error).
"""

from __future__ import annotations

import errno
import socket
from typing import Literal

Step = Literal["open", "read", "write"]

_IN_USE = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY)
_GONE = (errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF)


def serial_reason(port: str, exc: OSError, step: Step, write_timeout: float | None = None) -> str:
    """Why ``step`` failed on serial port ``port``. ``exc`` is what pyserial raised (a
    ``SerialException``, ``SerialTimeoutException`` or a plain ``OSError``)."""
    code = exc.errno
    text = str(exc)
    if step == "open":
        if code == errno.ENOENT:
            return (
                f"serial port {port} does not exist (adapter unplugged? prefer the "
                "/dev/serial/by-id/ names, which stay the same across reboots and USB sockets)"
            )
        if code in (errno.EACCES, errno.EPERM):
            return (
                f"no permission to open serial port {port}: add the agent's user to the "
                "dialout group (sudo usermod -aG dialout <user>, then log in again; for a "
                "systemd service: SupplementaryGroups=dialout)"
            )
        if code in _IN_USE or "exclusively lock" in text:
            return (
                f"serial port {port} is in use by another process (the agent opens it "
                f"exclusively): fuser {port} shows which"
            )
        if code == errno.ENOTTY or "Inappropriate ioctl" in text:  # pyserial drops the errno
            return f"{port} is not a serial port"
        if code in _GONE:
            return f"serial port {port} is gone (adapter unplugged?)"
        return f"cannot open serial port {port}: {_detail(exc)}"
    if step == "write" and _is_write_timeout(exc):
        after = f" after {write_timeout:g} s" if write_timeout is not None else ""
        return (
            f"writing to serial port {port} timed out{after}: the device does not take data "
            "(with rtscts or xonxoff on: check the handshake wiring and settings)"
        )
    doing = "reading" if step == "read" else "writing"
    return f"serial port {port} lost while {doing} (adapter unplugged?): {_detail(exc)}"


def tcp_reason(address: str, exc: OSError, step: Step | Literal["listen"]) -> str:
    """Why ``step`` failed on the TCP connection to (or, for ``listen``, the port at)
    ``address`` (``host:port``)."""
    code = exc.errno
    if step == "listen":
        if code == errno.EADDRINUSE:
            port = address.rpartition(":")[2]
            return (
                f"cannot listen on {address}: the port is in use by another program "
                f"(ss -ltnp 'sport = :{port}' shows which)"
            )
        if code in (errno.EACCES, errno.EPERM):
            return (
                f"cannot listen on {address}: ports below 1024 need root or "
                "CAP_NET_BIND_SERVICE; use a port above 1024"
            )
        if code == errno.EADDRNOTAVAIL:
            return f"cannot listen on {address}: this PC has no such address"
        return f"cannot listen on {address}: {_detail(exc)}"
    if isinstance(exc, socket.gaierror):
        host = address.rpartition(":")[0]
        return f"cannot resolve host name {host!r} (a typo, or no DNS on this network?)"
    if code == errno.ECONNREFUSED:
        return (
            f"connection to {address} refused: the reader is up but does not listen on that "
            "port (wrong port, or its TCP server is off)"
        )
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN):
        return f"{address} is unreachable: check the cable, the IP address and the netmask"
    if code in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
        return "the reader closed the connection"
    if code == errno.ETIMEDOUT:
        return f"no answer from {address} (TCP timed out: the reader is off or the network is down)"
    return f"connection to {address} failed while {_doing(step)}: {_detail(exc)}"


def _is_write_timeout(exc: OSError) -> bool:
    # pyserial's SerialTimeoutException, without importing pyserial here.
    return type(exc).__name__ == "SerialTimeoutException" or "timeout" in str(exc).lower()


def _doing(step: str) -> str:
    return {"open": "connecting", "read": "reading", "write": "writing"}.get(step, step)


def _detail(exc: OSError) -> str:
    """The OS's words without the ``[Errno N]`` noise, or the library's text."""
    if exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
