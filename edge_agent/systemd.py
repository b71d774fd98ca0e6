"""Telling systemd how the agent is doing: READY, STATUS, WATCHDOG and STOPPING.

Why: on a line PC the agent runs as a ``Type=notify`` service (packaging/systemd/). systemd
should consider it started only once it really records (journal open, devices started), show
a one-line summary in ``systemctl status``, and restart it when it is alive but stuck: a
process that still exists but whose journal thread hangs in a commit records nothing, and
only a watchdog notices.

The protocol is a datagram of ``KEY=VALUE`` lines sent to ``$NOTIFY_SOCKET`` (a path, or an
abstract socket name written with a leading ``@``); libsystemd is not needed for that. Without
``NOTIFY_SOCKET`` (not under systemd) everything here is a no-op. A socket that is missing or
gone is logged once, on the transition (and once more if it comes back), and never stops the
agent: losing the service manager's view must not lose records.

The watchdog rule (see ``Health``): every ``WATCHDOG_USEC / 2`` the supervisor sends
``WATCHDOG=1`` only if
  * the event loop runs: the supervisor is a task on it, so a blocked loop sends nothing;
  * the journal's thread answered the probe sent one tick earlier (``SqliteBuffer.probe``, a
    no-op job in its queue): a thread stuck in a commit for a whole interval leaves it
    unanswered;
  * the uplink's task (``MqttSync.run``, which owns the uplink's reconnect loop on the event
    loop) is still running. A broker that is down is *not* a failure: the journal keeps the
    records and a restart would not bring the broker back.
Two missed ticks make systemd restart the agent (``WatchdogSec`` = two intervals).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

STATUS_EVERY = 5.0
"""Seconds between two STATUS refreshes when systemd asks for no watchdog."""


class Notifier:
    """``sd_notify()`` without libsystemd: one non-blocking datagram per message.

    Failures are logged on transitions only (a flapping socket must not flood the log) and
    reported as ``False``; they never raise.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._target: str | bytes | None = None
        self._sock: socket.socket | None = None
        self._failing = False
        if address:
            # '@name' is an abstract socket: its name starts with a NUL byte on the wire.
            self._target = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A receiver that stopped reading must never block the event loop.
            self._sock.setblocking(False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ...) as one message; ``True`` if it went out."""
        if self._sock is None or self._target is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._target)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "cannot notify systemd at NOTIFY_SOCKET=%s (%s); the agent runs on, "
                    "but systemd sees no readiness, status or watchdog until it answers",
                    self.address,
                    exc.strerror or exc,
                )
            return False
        if self._failing:
            self._failing = False
            log.info("systemd notify socket %s answers again", self.address)
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between two ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), or ``None`` if systemd
    asks for no watchdog, or asks another process (``WATCHDOG_PID``)."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; no watchdog pings", usec)
        return None
    return value / 2_000_000 if value > 0 else None


@dataclass(frozen=True)
class Health:
    """What the supervisor asks the agent each tick (callables, so a reload that replaces
    the uplink is followed)."""

    journal_probe: Callable[[], Awaitable[None]]
    """A round trip through the journal's thread."""
    uplink_running: Callable[[], bool]
    """The uplink's task has not ended."""
    status: Callable[[], str]
    """The one-line summary for ``systemctl status``."""


class Supervisor:
    """The task that tells systemd: READY once, then STATUS (and WATCHDOG while healthy)
    every tick on a monotonic schedule, STOPPING when cancelled."""

    def __init__(self, notifier: Notifier, health: Health, watchdog: float | None) -> None:
        self.notifier = notifier
        self.health = health
        self.watchdog = watchdog
        self.period = watchdog if watchdog is not None else STATUS_EVERY
        self._probe: asyncio.Future[None] | None = None
        self._probe_sent = 0.0
        self._stuck: str | None = None  # why pings stopped (logged on the transition)

    async def run(self) -> None:
        """READY=1 now (the caller has opened the journal and started the devices), then
        ticks until cancelled; sends STOPPING=1 on the way out. No-op without a socket."""
        if not self.notifier.enabled:
            return
        loop = asyncio.get_running_loop()
        try:
            self._send_probe()
            self.notifier.notify("READY=1", f"STATUS={self._status()}")
            if self.watchdog is not None:
                log.info("systemd watchdog: a ping every %.3g s while healthy", self.watchdog)
            due = loop.time()
            while True:
                due += self.period
                await asyncio.sleep(max(0.0, due - loop.time()))
                if loop.time() > due + self.period:  # the loop was stalled: skip lost ticks
                    due = loop.time()
                self._tick()
        finally:
            if self._probe is not None:
                self._probe.cancel()
                await asyncio.gather(self._probe, return_exceptions=True)
            self.notifier.notify("STOPPING=1", "STATUS=stopping")

    def _tick(self) -> None:
        problem = self._problem()
        if self.watchdog is None:
            self.notifier.notify(f"STATUS={self._status()}")
            return
        if problem is None:
            if self._stuck is not None:
                log.info("systemd watchdog: healthy again; pings resume")
                self._stuck = None
            self.notifier.notify("WATCHDOG=1", f"STATUS={self._status()}")
            return
        if self._stuck is None:
            log.error("systemd watchdog: %s; no ping (systemd restarts the agent)", problem)
        self._stuck = problem
        self.notifier.notify(f"STATUS={self._status()}; watchdog: {problem}")

    def _problem(self) -> str | None:
        """Why the agent is not making progress now, or ``None`` (see the module's rule).
        Sends the next journal probe when the last one was answered."""
        probe = self._probe
        problem: str | None = None
        if probe is not None and not probe.done():
            waited = time.monotonic() - self._probe_sent
            problem = f"journal thread has not answered for {waited:.1f} s"
        elif probe is not None and (exc := probe.exception()) is not None:
            problem = f"journal thread failed: {exc}"
        else:
            self._send_probe()
        if problem is None and not self.health.uplink_running():
            problem = "uplink task has ended"
        return problem

    def _send_probe(self) -> None:
        self._probe_sent = time.monotonic()
        self._probe = asyncio.ensure_future(self.health.journal_probe())

    def _status(self) -> str:
        try:
            return self.health.status().replace("\n", " ")
        except Exception as exc:  # a status bug must never stop the pings
            return f"status unavailable: {exc!r}"
