"""The one runtime shape of every driver, and its two flavours.

A driver turns a device into observations and knows nothing of serials, lots or MQTT. The
daemon builds every driver through the registry and awaits ``driver.run(sink)``: it never
knows whether a device is polled or streams. Polled drivers (Modbus, OPC UA reads) implement
open/read/close and let ``runners.run_polled`` keep the schedule; streaming drivers
(scanners, scales, cameras, subscriptions) implement open/stream/close and let
``runners.run_streaming`` consume them. Either way one device has one task, so one dead
device stalls nothing else, and state, backoff and outage records are the runners' job.

What a device can do beyond observing (a consistent snapshot for a part trigger, writing a
handshake bit, being probed) is declared by its config model (``drivers.device``) and
checked when the config is loaded; the driver's ``read_points``/``write`` do the work.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Hashable, Sequence

from drivers.state import DeviceStatus
from kernel.errors import ReadError, WriteError
from kernel.model import Observation, Quality, Value

Sink = Callable[[Sequence[Observation]], None]
"""Where observations go. Must not block: it is called in the event loop."""

DEFAULT_BACKOFF = (0.5, 30.0)
"""Reconnect backoff (base, cap) in seconds for drivers whose config sets none."""


class Driver(ABC):
    """What the daemon, the binder's actions and the probe see of any device."""

    def __init__(
        self,
        name: str,
        backoff_initial: float = DEFAULT_BACKOFF[0],
        backoff_max: float = DEFAULT_BACKOFF[1],
    ) -> None:
        self.name = name
        self.status = DeviceStatus(name)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # Where in its schedule the device starts, as a fraction of an interval: the daemon
        # spreads devices so that they do not all read (and commit, and publish) in the same
        # instant. Streaming devices have no schedule and ignore it.
        self.phase = 0.0

    @abstractmethod
    async def run(self, sink: Sink) -> None:
        """Acquire from the device until cancelled, handing observations to ``sink``."""

    @abstractmethod
    async def open(self) -> None:
        """Connect. Raise ConnectError on failure."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection. Must not raise."""

    @abstractmethod
    def point_names(self) -> Sequence[str]:
        """Every point, so an outage can be recorded against each of them."""

    async def read_points(self, names: Sequence[str]) -> list[Observation]:
        """Read the named points now, as one consistent snapshot (a part trigger's). Per-point
        failures come back as BAD observations; a device that stopped answering raises
        ConnectError/ReadError (the caller records the snapshot as failed; the runner notices
        the outage on its own). Only kinds whose config model allows snapshots get here."""
        raise ReadError(self.name, "snapshot reads are not supported by this driver")

    async def write(self, point: str, value: Value) -> None:
        """Write one point (PLC handshake bits, 'data taken'). Raise WriteError or
        ConnectError; returns only once the device acknowledged the write."""
        raise WriteError(self.name, "writes are not supported by this driver")

    async def acknowledge(self, point: str, accepted: bool) -> None:  # noqa: B027
        """Tell the device its scan of ``point`` is recorded (a scanner's good-read answer) or
        was rejected (bad-read). Called only once the scan's record is committed, and only for
        points whose config says the device answers (``DeviceConfig.acknowledges``). Optional:
        a device that takes no answer ignores it."""

    async def trigger_read(self) -> None:
        """Ask the device to read now (a fixed-mount scanner's trigger command); what it reads,
        or that it read nothing in time, arrives through ``run``'s sink. Only kinds whose
        config names a read trigger (``DeviceConfig.read_trigger``) get here."""
        raise WriteError(self.name, "this device cannot be triggered")

    async def command(self, name: str) -> str:
        """Carry out an operator's command (``edge-agent device command``: a scale's zero or
        tare); return what the device answered. Only names the config lists
        (``DeviceConfig.commands``) get here."""
        raise WriteError(self.name, f"unknown command {name!r}")

    def outage(self, reason: str) -> list[Observation]:
        """Observations recording that nothing is known about the points from now on."""
        now = time.time()
        return [
            Observation(self.name, p, None, Quality.BAD, ts=now, error=reason)
            for p in self.point_names()
        ]


class PolledDriver(Driver):
    """A device that is asked for its values on a schedule."""

    @abstractmethod
    def groups(self) -> Sequence[tuple[float, Hashable]]:
        """(interval seconds, group key) for every group of points polled together."""

    @abstractmethod
    async def read(self, group: Hashable) -> list[Observation]:
        """Read one group. Per-point failures (e.g. a Modbus exception response) come back as
        BAD observations and the driver sets ``status`` to DEGRADED (back to UP once every
        group reads clean); raise ConnectError/ReadError when the device as a whole stopped
        answering, which closes the connection and starts the backoff."""

    async def watch_connection(self) -> None:
        """Return only by raising ConnectError/ReadError once the open connection is lost.

        ``run_polled`` awaits this instead of polling when the driver has no poll groups (every
        point is read on demand by ``read_points``), so that such a device is still
        reconnected. The default waits until cancelled: a driver that cannot tell leaves loss
        detection to ``read_points``/``write`` raising ConnectError, with no reconnect.
        """
        await asyncio.get_running_loop().create_future()

    async def run(self, sink: Sink) -> None:
        from drivers.runners import run_polled

        await run_polled(self, sink)


class StreamingDriver(Driver):
    """A device that pushes values (scanner, scale, camera, OPC UA subscription)."""

    @abstractmethod
    def stream(self) -> AsyncIterator[Sequence[Observation]]:
        """The device's observations, batch by batch, while the connection is open. Raise
        ConnectError/ReadError when the device is lost; ending means the same. A value the
        device sent but that makes no sense (a garbled scan) is an observation with BAD
        quality and its error, never an exception and never dropped."""

    async def run(self, sink: Sink) -> None:
        from drivers.runners import run_streaming

        await run_streaming(self, sink)
