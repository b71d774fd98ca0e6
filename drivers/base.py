"""The two driver shapes and the runner that owns scheduling, backoff and device state.

A driver turns a device into observations and knows nothing of serials, lots or MQTT.
Polled drivers (Modbus, OPC UA reads) implement open/read/close and let ``run_polled`` keep
the schedule; streaming drivers (scanners, scales, cameras, subscriptions) implement
open/stream/close. Either way one device has one task, so one dead device stalls nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass, field

from edge_agent.errors import ConnectError, ReadError, WriteError
from edge_agent.model import DeviceState, Observation, Quality, Value

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[Observation]], None]
"""Where observations go. Must not block: it is called in the event loop."""

Issue = tuple[tuple[str | int, ...], str]
"""A config problem: key path relative to the model that found it, and the message."""


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempt)).

    Jitter keeps a line of agents from reconnecting in lockstep after a network blip.
    """
    r = rng or random
    return r.uniform(0.0, min(cap, base * (2 ** min(attempt, 32))))


@dataclass
class DeviceStatus:
    """Live state of one device, shown in logs, the demo and metrics."""

    name: str
    state: DeviceState = DeviceState.STARTING
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    reads_ok: int = 0
    reads_failed: int = 0
    reconnects: int = 0

    def set_state(self, state: DeviceState, error: str | None = None) -> None:
        """Change state, logging only on transitions so a flapping PLC cannot flood the disk."""
        if state is self.state:
            self.last_error = error or self.last_error
            return
        previous, self.state, self.since = self.state, state, time.time()
        if error:
            self.last_error = error
        if state is DeviceState.DOWN:
            log.error("device %s is down: %s", self.name, error, extra={"device": self.name})
        elif state is DeviceState.DEGRADED:
            log.warning("device %s is degraded: %s", self.name, error, extra={"device": self.name})
        elif state is DeviceState.UP and previous is not DeviceState.STARTING:
            log.info(
                "device %s recovered (was %s)",
                self.name,
                previous.value,
                extra={"device": self.name},
            )
        else:
            log.info("device %s is %s", self.name, state.value, extra={"device": self.name})


class PolledDriver(ABC):
    """A device that is asked for its values on a schedule."""

    def __init__(self, name: str, backoff_initial: float, backoff_max: float) -> None:
        self.name = name
        self.status = DeviceStatus(name)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # Where in its interval each poll grid starts, as a fraction: the daemon spreads its
        # devices over the interval so that they do not all poll (and commit, and publish)
        # in the same instant.
        self.phase = 0.0

    @abstractmethod
    def groups(self) -> Sequence[tuple[float, Hashable]]:
        """(interval seconds, group key) for every group of points polled together."""

    @abstractmethod
    async def open(self) -> None:
        """Connect. Raise ConnectError on failure."""

    @abstractmethod
    async def read(self, group: Hashable) -> list[Observation]:
        """Read one group. Per-point failures (e.g. a Modbus exception response) come back as
        BAD observations and the driver sets ``status`` to DEGRADED (back to UP once every
        group reads clean); raise ConnectError/ReadError when the device as a whole stopped
        answering, which closes the connection and starts the backoff."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection. Must not raise."""

    @abstractmethod
    def point_names(self) -> Sequence[str]:
        """Every point, so an outage can be recorded against each of them."""

    async def read_points(self, names: Sequence[str]) -> list[Observation]:
        """Read the named points now, as one consistent snapshot: in as few requests as the
        device allows (points of one table within max_registers share one request), whatever
        their poll interval or report mode. Per-point failures come back as BAD observations;
        a device that stopped answering raises ConnectError/ReadError (the caller records the
        snapshot as failed; the poll loop notices the outage on its own). Observations of one
        request share its ts. Never filters on_change points."""
        raise ReadError(self.name, "snapshot reads are not supported by this driver")

    async def write(self, point: str, value: Value) -> None:
        """Write one point (PLC handshake bits, 'data taken'). Raise WriteError or
        ConnectError; returns only once the device acknowledged the write."""
        raise WriteError(self.name, "writes are not supported by this driver")

    async def watch_connection(self) -> None:
        """Return only by raising ConnectError/ReadError once the open connection is lost.

        ``run_polled`` awaits this instead of polling when the driver has no poll groups (every
        point is read on demand by ``read_points``), so that such a device is still
        reconnected. The default waits until cancelled: a driver that cannot tell leaves loss
        detection to ``read_points``/``write`` raising ConnectError, with no reconnect.
        """
        await asyncio.get_running_loop().create_future()

    def outage(self, reason: str) -> list[Observation]:
        """Observations recording that nothing is known about the points from now on."""
        now = time.time()
        return [
            Observation(self.name, p, None, Quality.BAD, ts=now, error=reason)
            for p in self.point_names()
        ]


class StreamingDriver(ABC):
    """A device that pushes values (scanner, scale, camera, OPC UA subscription)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = DeviceStatus(name)

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    def stream(self) -> AsyncIterator[Sequence[Observation]]: ...

    @abstractmethod
    async def close(self) -> None: ...


async def run_polled(driver: PolledDriver, sink: Sink) -> None:
    """Poll ``driver`` until cancelled, on a fixed-rate monotonic schedule per group.

    The device is UP only once a read has come back (a PLC that accepts the connection but
    never answers must not flap UP/DOWN), DOWN when open or read fails, and is then retried
    with full-jitter exponential backoff; a connection that answered resets the backoff.

    A driver without poll groups (every point read on demand through ``read_points``) is UP as
    soon as its connection is open; the runner then holds the connection and only learns of
    its loss from ``watch_connection``. Failed snapshot reads and writes never change the
    device state: their callers see the errors.
    """
    attempt = 0
    status = driver.status
    groups = list(driver.groups())
    try:
        while True:
            answered: list[bool] = [False]
            try:
                await driver.open()
                if groups:
                    await _poll_connected(driver, groups, sink, answered)
                else:
                    await _hold_connection(driver, answered)
            except (ConnectError, ReadError) as exc:
                _reraise_swallowed_cancel()
                status.reads_failed += 1
                # Outage records once per outage, not once per retry.
                if status.state is not DeviceState.DOWN:
                    sink(driver.outage(str(exc)))
                status.set_state(DeviceState.DOWN, str(exc))
                await driver.close()
                status.reconnects += 1
                if answered[0]:
                    attempt = 0
                await asyncio.sleep(
                    backoff_delay(attempt, driver.backoff_initial, driver.backoff_max)
                )
                attempt += 1
    finally:
        await driver.close()


def _reraise_swallowed_cancel() -> None:
    """Python 3.11's ``asyncio.wait_for`` (which pymodbus' connect uses) can lose a
    cancellation that lands just as the connection attempt fails; the task would then retry
    forever and a stopping agent would hang. The task still knows it is being cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _hold_connection(driver: PolledDriver, answered: list[bool]) -> None:
    # An open connection is all a device without poll groups can show, so it counts as an
    # answer (and resets the backoff): nothing else would ever mark such a device UP.
    answered[0] = True
    if driver.status.state in (DeviceState.STARTING, DeviceState.DOWN):
        driver.status.set_state(DeviceState.UP)
    await driver.watch_connection()
    raise ConnectError(driver.name, "connection watch ended")


async def _poll_connected(
    driver: PolledDriver,
    groups: list[tuple[float, Hashable]],
    sink: Sink,
    answered: list[bool],
) -> None:
    """Each group keeps its own phase: a slow read delays the next slot but never shifts
    the grid, and missed slots are skipped rather than bunched up."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    due = [start + driver.phase * interval for interval, _ in groups]
    while True:
        # A read that completed just as the task was cancelled can swallow the cancellation
        # (3.11's wait_for inside pymodbus); without this check the poll loop would go on.
        _reraise_swallowed_cancel()
        i = min(range(len(groups)), key=due.__getitem__)
        delay = due[i] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        interval, key = groups[i]
        observations = await driver.read(key)
        driver.status.reads_ok += 1
        if not answered[0]:
            answered[0] = True
            if driver.status.state in (DeviceState.STARTING, DeviceState.DOWN):
                driver.status.set_state(DeviceState.UP)
        if observations:
            sink(observations)
        now = loop.time()
        nxt = due[i] + interval
        if nxt <= now:
            nxt += ((now - nxt) // interval + 1) * interval
        due[i] = nxt
