"""The runners: what every device needs around its driver, written once.

A runner owns the device's life: open, then either the fixed-rate monotonic poll schedule
(polled drivers) or the event stream (streaming drivers), and on failure the DOWN state, one
outage record, close, and capped full-jitter exponential backoff before the next attempt. The
daemon never calls these directly: it awaits ``driver.run(sink)``, the same for every kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

from drivers.base import Driver, PolledDriver, Sink, StreamingDriver
from kernel.backoff import backoff_delay
from kernel.errors import ConnectError, ReadError
from kernel.model import DeviceState

Session = Callable[[list[bool]], Awaitable[None]]
"""What a runner does while the device is open; returns only by raising. It sets
``answered[0]`` once the device has shown it works, which resets the backoff."""


async def supervise(driver: Driver, session: Session, sink: Sink) -> None:
    """Open ``driver`` and run ``session`` until cancelled, reopening with backoff.

    ConnectError and ReadError mean the device as a whole is gone: the device goes DOWN, an
    outage is recorded against every point once per outage (not once per retry), and the
    next attempt waits ``backoff_delay``; an attempt in which the device answered resets it.
    """
    attempt = 0
    status = driver.status
    try:
        while True:
            answered: list[bool] = [False]
            try:
                await driver.open()
                await session(answered)
            except (ConnectError, ReadError) as exc:
                reraise_swallowed_cancel()
                status.reads_failed += 1
                was_down = status.state is DeviceState.DOWN
                # DOWN first, so what the outage's records trigger (logs, status) sees the
                # device as down: a dead PLC is device trouble, not a rejected scan.
                status.set_state(DeviceState.DOWN, str(exc))
                if not was_down:
                    sink(driver.outage(str(exc)))
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


def reraise_swallowed_cancel() -> None:
    """Python 3.11's ``asyncio.wait_for`` (which pymodbus' connect uses) can lose a
    cancellation that lands just as the connection attempt fails; the task would then retry
    forever and a stopping agent would hang. The task still knows it is being cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _mark_up(driver: Driver) -> None:
    if driver.status.state in (DeviceState.STARTING, DeviceState.DOWN):
        driver.status.set_state(DeviceState.UP)


# ---- polled --------------------------------------------------------------------------------


async def run_polled(driver: PolledDriver, sink: Sink) -> None:
    """Poll ``driver`` until cancelled, on a fixed-rate monotonic schedule per group.

    The device is UP only once a read has come back (a PLC that accepts the connection but
    never answers must not flap UP/DOWN). A driver without poll groups (every point read on
    demand through ``read_points``) is UP as soon as its connection is open; the runner then
    holds the connection and only learns of its loss from ``watch_connection``. Failed
    snapshot reads and writes never change the device state: their callers see the errors.
    """
    groups = list(driver.groups())

    async def session(answered: list[bool]) -> None:
        if groups:
            await _poll_connected(driver, groups, sink, answered)
        else:
            await _hold_connection(driver, answered)

    await supervise(driver, session, sink)


async def _hold_connection(driver: PolledDriver, answered: list[bool]) -> None:
    # An open connection is all a device without poll groups can show, so it counts as an
    # answer (and resets the backoff): nothing else would ever mark such a device UP.
    answered[0] = True
    _mark_up(driver)
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
        reraise_swallowed_cancel()
        i = min(range(len(groups)), key=due.__getitem__)
        delay = due[i] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        interval, key = groups[i]
        started = loop.time()
        observations = await driver.read(key)
        driver.status.read_answered(loop.time() - started)
        if not answered[0]:
            answered[0] = True
            _mark_up(driver)
        if observations:
            sink(observations)
        now = loop.time()
        nxt = due[i] + interval
        if nxt <= now:
            nxt += ((now - nxt) // interval + 1) * interval
        due[i] = nxt


# ---- streaming -----------------------------------------------------------------------------


async def run_streaming(driver: StreamingDriver, sink: Sink) -> None:
    """Consume ``driver.stream()`` until cancelled, handing every batch to ``sink``.

    The device is UP once open (a scanner may stay silent for hours and is still fine); the
    first batch counts as an answer and resets the backoff, so a device that opens but fails
    at once backs off further each time instead of spinning. A stream that ends is a lost
    connection. Cancelling closes the stream (its ``finally`` runs) and then the driver.
    """

    async def session(answered: list[bool]) -> None:
        _mark_up(driver)
        stream = driver.stream()
        try:
            async for batch in stream:
                driver.status.reads_ok += 1
                answered[0] = True
                if batch:
                    sink(batch)
        finally:
            aclose = getattr(stream, "aclose", None)  # an async generator's finally runs now
            if aclose is not None:
                await aclose()
        raise ConnectError(driver.name, "the device's stream ended")

    await supervise(driver, session, sink)
