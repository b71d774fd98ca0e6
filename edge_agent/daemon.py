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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from buffer import Journal, SqliteBuffer
from drivers.base import Driver
from drivers.bus import Buses
from drivers.registry import DriverContext, MissingExtra, create_driver
from edge_agent.actions import ActionRunner
from edge_agent.binder import (
    Binder,
    BindingRules,
    ContextRejected,
)
from edge_agent.config import AgentConfig, load_config
from edge_agent.control import ControlServer, Stream
from edge_agent.events import EventLog
from edge_agent.gate.keeper import BlockedKeeper
from edge_agent.gate.route import RouteAsker
from edge_agent.stats import AgentStats
from edge_agent.summary import SummaryLog
from edge_agent.systemd import Health, Notifier, Supervisor, watchdog_interval
from edge_agent.tail import TailHub
from kernel.alarms import Alarms
from kernel.backoff import backoff_delay
from kernel.errors import BufferError_, ConfigError, DeviceError
from kernel.model import (
    TELEMETRY_KINDS,
    DeviceState,
    Observation,
    RecordDraft,
    Value,
)
from sync.mqtt import MqttSync
from sync.wire import agent_topic, blocked_topic

if TYPE_CHECKING:
    from edge_agent.metrics import MetricsServer

log = logging.getLogger(__name__)

PHASE_SLOTS = 2
"""Poll phases devices are spread over (each slot's reads are committed and sent together).
Measured at 10 PLCs x 64 points every 64 ms: 1 slot gave read->broker p99 14 ms (the worst
case change->broker missed poll + 20 ms); 2 slots 9 ms at +13% CPU; 4 slots 7 ms but +40% CPU
and a third less peak throughput (smaller commits and messages)."""

STOP_FLUSH_TIMEOUT = 10.0
"""Seconds a stopping agent waits for its last commit (only a full journal takes longer)."""


def _spread(drivers: Iterable[Driver]) -> None:
    """Give devices evenly spread poll phases: with every PLC read in the same instant, each
    read would wait for all the others' binding, commit and publish (latency in bursts).
    Devices without a schedule (streaming ones) ignore their phase."""
    listed = list(drivers)
    slots = min(len(listed), PHASE_SLOTS)
    for i, driver in enumerate(listed):
        driver.phase = (i % slots) / slots


class Agent:
    """One agent process: every device of one config, bound, buffered and forwarded."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        drain_timeout: float = 2.0,
        config_path: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.drain_timeout = drain_timeout
        self.binder = Binder(BindingRules.from_config(cfg))
        self.alarms = Alarms()
        self.tail = TailHub(lambda: self.cfg)  # `edge-agent tail`: records once committed
        self.buffer: Journal = SqliteBuffer.from_config(
            cfg.buffer,
            alarms=self.alarms,
            config_path=config_path,
            max_serials=self.binder.rules.max_serials,
            on_commit=self.tail.committed,
        )
        # Devices that share a wire (RS-485 units, an RTU gateway) share one bus object, also
        # across reloads.
        self._context = DriverContext(buses=Buses())
        self._by_name = {d.name: create_driver(d, self._context) for d in cfg.devices}
        _spread(self._by_name.values())
        self._device_tasks: dict[str, asyncio.Task[None]] = {}
        self._reload_lock = asyncio.Lock()
        self.control = ControlServer(cfg.control.socket, self._control)
        self.metrics: MetricsServer | None = None
        if cfg.metrics.enabled:
            # Imported only when enabled: prometheus_client is ~50 ms of every start-up.
            from edge_agent.metrics import MetricsServer

            self.metrics = MetricsServer(self, cfg.metrics)
        # The station gate: the blocked set kept from the trace store, route questions.
        self.keeper = BlockedKeeper(self.binder.gate, self.buffer)
        self.asker = RouteAsker(
            lambda topic, payload: self.sync.send(topic, payload),
            agent_topic(cfg.mqtt, cfg.agent.site, cfg.agent.line, cfg.agent.id, "route/ask"),
            cfg.agent.line,
        )
        self.actions = ActionRunner(
            lambda name: self._by_name[name],
            self.binder,
            self._emit,
            self.buffer,
            ask=self.asker.ask,
        )
        self.events = EventLog(self._device_down)
        self.sync = self._new_sync(cfg)
        self._sync_task: asyncio.Task[None] | None = None
        self.stats = AgentStats()
        self.started = asyncio.Event()
        self.fatal: BaseException | None = None
        self._stop: asyncio.Event | None = None

    @property
    def drivers(self) -> list[Driver]:
        return list(self._by_name.values())

    @property
    def device_tasks(self) -> Mapping[str, asyncio.Task[None]]:
        """The running task of each device (a restarted device gets a new one)."""
        return MappingProxyType(self._device_tasks)

    def _new_sync(self, cfg: AgentConfig) -> MqttSync:
        sync = MqttSync(
            cfg.mqtt,
            agent_id=cfg.agent.id,
            site=cfg.agent.site,
            line=cfg.agent.line,
            buffer=self.buffer,
            alarms=self.alarms,
        )
        if any(st.gate is not None for st in cfg.stations):
            # Only with a gate: a plant's ACL need not open these topics to other agents.
            sync.listeners[blocked_topic(cfg.mqtt)] = self.keeper.message
            answers = agent_topic(
                cfg.mqtt, cfg.agent.site, cfg.agent.line, cfg.agent.id, "route/answer"
            )
            sync.listeners[answers] = self.asker.answer
        return sync

    def _sink(self, batch: Sequence[Observation]) -> None:
        """Called in the event loop by every driver: bind, queue for commit, act."""
        step = self.binder.feed(batch)
        self.stats.observations += len(batch)
        self._emit(step.drafts)
        self.actions.start(step.actions)

    def _emit(self, drafts: list[RecordDraft]) -> None:
        if not drafts:
            return
        before = self.buffer.last_assigned_seq
        try:
            last = self.buffer.append(drafts)
        except BufferError_ as exc:
            # Without a journal nothing can be kept safely: stop acquiring, loudly.
            if self.fatal is None:
                log.critical("journal failed, stopping acquisition: %s", exc)
                self.fatal = exc
                if self._stop is not None:
                    self._stop.set()
            raise
        self.tail.appended(drafts, before, last)
        for d in drafts:
            self.stats.count(d)
            if d.kind not in TELEMETRY_KINDS:
                self.events.note(d)

    def _device_down(self, name: str) -> bool:
        driver = self._by_name.get(name)
        return driver is not None and driver.status.state is DeviceState.DOWN

    async def command(self, device: str, name: str) -> str:
        """An operator's command to a device (``edge-agent device command``)."""
        driver = self._by_name.get(device)
        if driver is None:
            raise DeviceError(device, "no such device in the running config")
        cfg = next(d for d in self.cfg.devices if d.name == device)
        if name not in cfg.commands():
            known = ", ".join(cfg.commands()) or "none"
            raise DeviceError(device, f"does not take command {name!r} (it takes: {known})")
        return await driver.command(name)

    async def set_context(
        self, station: str, values: dict[str, Value], user: str | None = None
    ) -> int:
        """Manual context change; returns once committed, with the last seq it wrote."""
        step = self.binder.set_context(station, values, ts=time.time(), user=user)
        self._emit(step.drafts)
        return await self.buffer.flush()

    async def release_interlock(self, station: str, user: str | None = None) -> int:
        """The operator lowers a station's gate interlock; returns once the gate record is
        committed (the write to the PLC is under way), with its seq."""
        step = self.binder.release_interlock(station, ts=time.time(), user=user)
        self._emit(step.drafts)
        self.actions.start(step.actions)
        return await self.buffer.flush()

    async def _control(self, request: dict[str, Any]) -> dict[str, Any] | Stream:
        op = request.get("op")
        if op == "status":
            return {"ok": True, "status": self.snapshot()}
        if op == "tail":
            return self.tail.open(request)
        if op == "reload":
            return await self.reload()
        if op == "context.set":
            station, values = request.get("station"), request.get("values")
            if not isinstance(station, str) or not isinstance(values, dict) or not values:
                return {"ok": False, "error": "context.set needs station and values"}
            user = request.get("user")
            try:
                seq = await self.set_context(
                    station, values, user if isinstance(user, str) else None
                )
            except ContextRejected as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "seq": seq, "ctx": dict(self.binder.contexts[station])}
        if op == "gate.release":
            station, user = request.get("station"), request.get("user")
            if not isinstance(station, str):
                return {"ok": False, "error": "gate.release needs a station"}
            try:
                seq = await self.release_interlock(station, user if isinstance(user, str) else None)
            except ContextRejected as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "seq": seq}
        if op == "device.command":
            device, name = request.get("device"), request.get("command")
            if not isinstance(device, str) or not isinstance(name, str):
                return {"ok": False, "error": "device.command needs device and command"}
            try:
                answer = await self.command(device, name)
            except DeviceError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "answer": answer}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; then stop cleanly with everything read committed.

        Raises the journal's error if the journal failed (the process then exits non-zero,
        and the service manager restarts it)."""
        self._stop = stop
        await self.buffer.start()
        try:
            saved, parts = await self.buffer.load_state()
            self._emit(self.binder.restore(saved, parts, ts=time.time()).drafts)
            await self._load_gate()
            await self.control.start()
            if self.metrics is not None:
                try:
                    await self.metrics.start()  # StartupError when its port is taken
                except BaseException:
                    await self.control.stop()
                    raise
        except BaseException:
            await self.buffer.stop()
            raise
        try:
            self._sync_task = asyncio.create_task(self.sync.run(), name="sync")
            for driver in self.drivers:
                self._start_device(driver)
            self.started.set()
            log.info(
                "agent %s running: %d device(s), %d station(s)",
                self.cfg.agent.id,
                len(self.drivers),
                len(self.cfg.stations),
            )
            notifier = Notifier.from_env()
            supervisor = asyncio.create_task(
                Supervisor(notifier, self._health(), watchdog_interval()).run(), name="systemd"
            )
            summary = asyncio.create_task(
                SummaryLog(
                    self.cfg.agent.summary_interval,
                    self.stats,
                    self.buffer,
                    lambda: self.sync.status,
                ).run(),
                name="summary",
            )
            try:
                await stop.wait()
            finally:
                supervisor.cancel()  # says STOPPING=1 before the (bounded) shutdown work
                summary.cancel()
                await asyncio.gather(supervisor, summary, return_exceptions=True)
                notifier.close()
                await self.control.stop()
                if self.metrics is not None:
                    await self.metrics.stop()
                async with self._reload_lock:  # a reload half done would restart devices
                    await self._stop_devices(list(self._device_tasks))
                await self.actions.finish(
                    2 * max(dev.request_timeout() for dev in self.cfg.devices)
                )
                if self.fatal is None:
                    try:
                        async with asyncio.timeout(STOP_FLUSH_TIMEOUT):
                            last = await self.buffer.flush()
                    except TimeoutError:
                        # A full journal: buffer.stop() makes the last attempt and names
                        # the records that never fitted.
                        log.critical("acquisition stopped; the journal cannot commit (full?)")
                    else:
                        log.info(
                            "acquisition stopped; everything read is committed (last seq %d)",
                            last,
                        )
                        await self._drain()
                await self._stop_sync()
        finally:
            await self.keeper.close()
            if self.fatal is None:
                await self.buffer.stop()
                log.info(
                    "agent stopped; %d record(s) stay buffered for the next start",
                    self.buffer.depth,
                )
        if self.fatal is not None:
            raise self.fatal

    async def _load_gate(self) -> None:
        """What the gates decide with while the network is down: the blocked set and the
        part results kept in the journal."""
        await self.keeper.load()  # also without a gate now: a reload may add one
        await self._load_route_results()

    async def _load_route_results(self) -> None:
        """Part results of the stations local route rules read that are not loaded yet (at
        start, and after a reload that adds a rule)."""
        gate = self.binder.gate
        missing = sorted(gate.tracked - set(gate.results))
        if missing:
            gate.results.update(await self.buffer.load_route_results(missing))

    def _health(self) -> Health:
        """What the systemd watchdog checks, and the status line it shows."""

        def uplink_running() -> bool:
            return self._sync_task is not None and not self._sync_task.done()

        def status() -> str:
            up = sum(d.status.state is DeviceState.UP for d in self.drivers)
            sync = self.sync.status
            uplink = "connected" if sync.connected else f"down ({sync.last_error or 'connecting'})"
            return (
                f"devices {up}/{len(self.drivers)} up, journal {self.buffer.depth} waiting, "
                f"uplink {uplink}"
            )

        return Health(journal_probe=self.buffer.probe, uplink_running=uplink_running, status=status)

    def _start_device(self, driver: Driver) -> None:
        self._device_tasks[driver.name] = asyncio.create_task(
            self._device(driver), name=f"device:{driver.name}"
        )

    async def _stop_devices(self, names: Sequence[str]) -> None:
        tasks = [self._device_tasks.pop(n) for n in names if n in self._device_tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop_sync(self) -> None:
        task, self._sync_task = self._sync_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file and apply it without a restart (SIGHUP, ``edge-agent
        reload``).

        An invalid file is rejected with every problem logged, and the running config stays.
        A valid one is applied in place: the journal, its seq and the stations' contexts
        carry on; only devices whose settings changed are restarted (added ones started,
        removed ones stopped); sync is restarted only if the ``mqtt`` section changed.
        Identity, journal, control socket and metrics endpoint cannot move under a running
        agent: changing them is refused with the reason (restart the agent to apply them).
        """
        async with self._reload_lock:
            if self.config_path is None:
                return {"ok": False, "errors": ["this agent was not started from a config file"]}
            if self._stop is None or self._stop.is_set():
                return {"ok": False, "errors": ["the agent is not running"]}
            try:
                new = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                log.error(
                    "reload of %s rejected (%d problem(s)); the running config stays",
                    self.config_path,
                    len(exc.issues),
                )
                for issue in exc.issues:
                    log.error("  %s", issue)
                return {"ok": False, "errors": [str(i) for i in exc.issues]}
            old = self.cfg
            fixed = [
                name
                for name in ("agent", "buffer", "control", "metrics")
                if getattr(old, name) != getattr(new, name)
            ]
            if fixed:
                errors = [f"{name}: changed; restart the agent to apply it" for name in fixed]
                log.error("reload of %s rejected: %s", self.config_path, "; ".join(errors))
                return {"ok": False, "errors": errors}
            before = {d.name: d for d in old.devices}
            after = {d.name: d for d in new.devices}
            changed = [n for n in after if n in before and after[n] != before[n]]
            added = [n for n in after if n not in before]
            removed = [n for n in before if n not in after]
            try:
                fresh = {n: create_driver(after[n], self._context) for n in (*changed, *added)}
            except (MissingExtra, ValueError) as exc:
                log.error("reload of %s rejected: %s", self.config_path, exc)
                return {"ok": False, "errors": [str(exc)]}
            await self._stop_devices([*changed, *removed])
            self.binder.reconfigure(BindingRules.from_config(new))
            await self._load_route_results()
            self.cfg = new
            # Rebuilt in the file's order, so status lists devices as the file does.
            self._by_name = {n: fresh.get(n) or self._by_name[n] for n in after}
            _spread(self._by_name.values())
            for driver in fresh.values():
                self._start_device(driver)
            gated = [any(st.gate for st in c.stations) for c in (old, new)]
            sync_restarted = new.mqtt != old.mqtt or gated[0] != gated[1]
            if sync_restarted:
                await self._stop_sync()
                self.sync = self._new_sync(new)
                self._sync_task = asyncio.create_task(self.sync.run(), name="sync")
            log.info(
                "config %s reloaded: %d device(s) restarted %s, added %s, removed %s%s",
                self.config_path,
                len(changed),
                changed,
                added,
                removed,
                "; sync restarted" if sync_restarted else "",
            )
            return {
                "ok": True,
                "restarted": changed,
                "added": added,
                "removed": removed,
                "sync_restarted": sync_restarted,
            }

    async def _drain(self) -> None:
        """Give sync a short moment to deliver what is committed; whatever is left stays
        in the journal and goes out after the next start."""
        if not self.sync.status.connected:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.buffer.wait_empty(), self.drain_timeout)

    async def _device(self, driver: Driver) -> None:
        """One device's task, the same for every kind (the driver's runner polls or streams).
        A bug in a driver is logged and the device restarted after a backoff: it never takes
        the agent or the other devices down."""
        attempt = 0
        while True:
            try:
                await driver.run(self._sink)
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
            "parts": self.stats.parts,
            "gaps": self.stats.gaps,
            "unobserved": self.stats.unobserved,
            "scans": self.stats.scans,
            "rejected_scans": self.stats.rejected_scans,
            "nok": self.stats.nok,
            "readings": self.stats.readings,
            # Per station: counts and the last part record (serial, result, time).
            "station_stats": {st: s.as_dict() for st, s in self.stats.stations.items()},
            "committed_seq": self.buffer.committed_seq,
            # With the seq, a record's key (agent, epoch, seq): what the store's records show.
            "identity": self._identity_status(),
            "buffer_depth": self.buffer.depth,
            "stations": {st: dict(ctx) for st, ctx in self.binder.contexts.items()},
            "devices": {d.name: d.status.state.value for d in self.drivers},
            # Which station(s) each device serves, so status can list devices by station.
            "device_stations": {d.name: self.cfg.device_stations(d) for d in self.cfg.devices},
            # Frames a camera could not decode in time (dropped, never queued): only non-zero.
            "dropped": {d.name: d.status.dropped for d in self.drivers if d.status.dropped},
            "sync": {
                "connected": self.sync.status.connected,
                "confirm": self.cfg.mqtt.confirm,
                "confirmed_records": self.sync.status.confirmed_records,
                "store_watermark": self.sync.status.store_watermark,
                "resends": self.sync.status.resends,
                "last_error": self.sync.status.last_error,
            },
            "buffer": self.buffer.stats(),
            "alarms": [a.as_dict() for a in self.alarms.active()],
            "gate": self._gate_status(),
        }

    def _identity_status(self) -> dict[str, Any] | None:
        """The journal's id and this opening's epoch; None before the journal is open."""
        try:
            identity = self.buffer.identity
        except BufferError_:
            return None
        return {
            "journal": identity.journal,
            "epoch": identity.epoch.id,
            "epoch_first": identity.epoch.first,
        }

    def _gate_status(self) -> dict[str, Any] | None:
        gate = self.binder.gate
        if not gate.configs:
            return None
        keeper, asker, held = self.keeper, self.asker, gate.blocked
        return {
            "stations": sorted(gate.configs),
            "blocked_version": held.version,
            "blocked_at": held.at,
            "blocked": {
                "lots": len(held.lots),
                "serials": len(held.serials),
                "products": len(held.products),
            },
            "sets_received": keeper.received,
            "sets_garbled": keeper.garbled,
            "sets_older": keeper.older,
            "route_asked": asker.asked,
            "route_unanswered": asker.unanswered,
        }
