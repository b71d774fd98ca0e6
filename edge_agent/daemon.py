"""The daemon: wires drivers -> binder -> buffer -> sync, one task per device.

Nothing here polls, binds, stores or publishes by itself; each of those is its own component.
The agent owns their lifecycle: start in dependency order, and on stop cancel acquisition
first, commit everything read so far, then stop sync and close the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from buffer.sqlite import SqliteBuffer
from drivers.base import PolledDriver, backoff_delay, run_polled
from drivers.registry import create_driver
from edge_agent.binder import Binder, BindingRules
from edge_agent.config import AgentConfig
from edge_agent.errors import BufferError_
from edge_agent.model import DeviceState, Observation
from sync.mqtt import MqttSync

log = logging.getLogger(__name__)


@dataclass
class AgentStats:
    observations: int = 0
    records: int = 0
    started: float = field(default_factory=time.time)


class Agent:
    """One agent process: every device of one config, bound, buffered and forwarded."""

    def __init__(self, cfg: AgentConfig, *, drain_timeout: float = 2.0) -> None:
        self.cfg = cfg
        self.drain_timeout = drain_timeout
        self.rules = BindingRules.from_config(cfg)
        self.binder = Binder(self.rules)
        self.buffer = SqliteBuffer(cfg.buffer.path, synchronous=cfg.buffer.synchronous)
        self.drivers: list[PolledDriver] = []
        for device in cfg.devices:
            driver = create_driver(device)
            if not isinstance(driver, PolledDriver):  # streaming devices come with their drivers
                raise TypeError(f"device {device.name!r}: streaming drivers are not wired in yet")
            self.drivers.append(driver)
        self.sync = MqttSync(
            cfg.mqtt,
            agent_id=cfg.agent.id,
            site=cfg.agent.site,
            line=cfg.agent.line,
            buffer=self.buffer,
        )
        self.stats = AgentStats()
        self.started = asyncio.Event()
        self.fatal: BaseException | None = None
        self._stop: asyncio.Event | None = None

    def _sink(self, batch: Sequence[Observation]) -> None:
        """Called in the event loop by every driver: bind, then queue for commit."""
        drafts = self.binder.feed(batch)
        self.stats.observations += len(batch)
        if drafts:
            try:
                self.buffer.append(drafts)
            except BufferError_ as exc:
                # Without a journal nothing can be kept safely: stop acquiring, loudly.
                if self.fatal is None:
                    log.critical("journal failed, stopping acquisition: %s", exc)
                    self.fatal = exc
                    if self._stop is not None:
                        self._stop.set()
                raise
            self.stats.records += len(drafts)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then stop cleanly with everything read committed.

        Raises the journal's error if the journal failed (the process then exits non-zero,
        and the service manager restarts it)."""
        self._stop = stop
        await self.buffer.start()
        try:
            sync_task = asyncio.create_task(self.sync.run(), name="sync")
            device_tasks = [
                asyncio.create_task(self._device(d), name=f"device:{d.name}") for d in self.drivers
            ]
            self.started.set()
            log.info(
                "agent %s running: %d device(s), %d station(s)",
                self.cfg.agent.id,
                len(self.drivers),
                len(self.cfg.stations),
            )
            try:
                await stop.wait()
            finally:
                for t in device_tasks:
                    t.cancel()
                await asyncio.gather(*device_tasks, return_exceptions=True)
                if self.fatal is None:
                    last = await self.buffer.flush()
                    log.info(
                        "acquisition stopped; everything read is committed (last seq %d)", last
                    )
                    await self._drain()
                sync_task.cancel()
                await asyncio.gather(sync_task, return_exceptions=True)
        finally:
            if self.fatal is None:
                await self.buffer.stop()
                log.info(
                    "agent stopped; %d record(s) stay buffered for the next start",
                    self.buffer.depth,
                )
        if self.fatal is not None:
            raise self.fatal

    async def _drain(self) -> None:
        """Give sync a short moment to deliver what is committed; whatever is left stays
        in the journal and goes out after the next start."""
        if not self.sync.status.connected:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.buffer.wait_empty(), self.drain_timeout)

    async def _device(self, driver: PolledDriver) -> None:
        """One device's task. A bug in a driver is logged and the device restarted after a
        backoff: it never takes the agent or the other devices down."""
        attempt = 0
        while True:
            try:
                await run_polled(driver, self._sink)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception(
                    "device %s failed unexpectedly; restarting it",
                    driver.name,
                    extra={"device": driver.name},
                )
                driver.status.set_state(DeviceState.DOWN, f"internal error: {exc!r}")
                await asyncio.sleep(backoff_delay(attempt, 1.0, 60.0))
                attempt += 1

    def snapshot(self) -> dict[str, Any]:
        """What an operator wants to see at a glance."""
        return {
            "agent": self.cfg.agent.id,
            "observations": self.stats.observations,
            "records": self.stats.records,
            "committed_seq": self.buffer.committed_seq,
            "buffer_depth": self.buffer.depth,
            "stations": {st: dict(ctx) for st, ctx in self.binder.contexts.items()},
            "devices": {d.name: d.status.state.value for d in self.drivers},
            "sync": {
                "connected": self.sync.status.connected,
                "confirmed_records": self.sync.status.confirmed_records,
                "last_error": self.sync.status.last_error,
            },
        }
