"""The simulation of a whole device map: every device of an agent config served by its
kind's simulator, the scenario's clock, and its timeline (faults, scans, loads, the end).

In-process, for a test runner::

    async with Simulation(config, load_scenario(path, config), pty_dir=tmp) as sim:
        agent_config = apply_overrides(config, sim.overrides)
        ...  # run the agent with agent_config
        await sim.wait()  # the scenario's end (its duration)

``edge-agent simulate --config`` is the same object on the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.device import DeviceConfig
from drivers.links.config import control_bytes
from edge_agent.config import AgentConfig
from simulators.devicemap.kinds import (
    ActiveFault,
    Endpoint,
    Placement,
    TagInField,
    simulators_of,
)
from simulators.devicemap.loader import LoadedScenario
from simulators.devicemap.world import ScriptedWorld

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Happened:
    """One step of the timeline as it was carried out, ``t`` seconds from the start."""

    t: float
    device: str
    what: str
    """``fault silent started``, ``fault silent ended``, ``scan 'SN1'``, ``weight 1.25 g``."""
    error: str | None = None
    """Why the step could not be carried out, if it could not."""


_Step = tuple[float, int, str, str, Callable[[], Awaitable[None]]]
"""(t, order, device, what, action); at one instant fault ends go before starts."""


class Simulation:
    """Every device of ``config`` the kinds can simulate, playing ``scenario`` (None:
    nothing is driven, the devices hold zeros and what the agent writes, until stopped)."""

    def __init__(
        self,
        config: AgentConfig,
        scenario: LoadedScenario | None = None,
        *,
        pty_dir: str | Path,
        host: str = "127.0.0.1",
        on_step: Callable[[Happened], None] | None = None,
    ) -> None:
        self.config = config
        self.scenario = scenario
        self.world = ScriptedWorld(scenario)
        self.place = Placement(host=host, pty_dir=Path(pty_dir))
        self.unsupported: dict[str, str] = {}
        """Device -> why it is not simulated (its kind has no simulator yet)."""
        self.endpoints: list[Endpoint] = []
        self.history: list[Happened] = []
        self.on_step = on_step
        """Called with each step of the timeline once carried out (``simulate`` prints it)."""
        self.finished = asyncio.Event()
        """Set when the scenario has run its duration (never without a scenario)."""
        self._task: asyncio.Task[None] | None = None
        self._started: list[Endpoint] = []
        by_type: dict[str, list[DeviceConfig]] = {}
        for d in config.devices:
            by_type.setdefault(d.type, []).append(d)
        for type_name, lookup in simulators_of(config.devices).items():
            if lookup.simulator is None:
                for d in by_type[type_name]:
                    self.unsupported[d.name] = f"{type_name}: {lookup.reason}"
                continue
            served = []
            for d in by_type[type_name]:
                why = lookup.simulator.device_issue(d)
                if why is None:
                    served.append(d)
                else:
                    self.unsupported[d.name] = f"{type_name}: {why}"
            if served:
                self.endpoints += lookup.simulator.endpoints(served, self.world, self.place)
        self._endpoint = {name: e for e in self.endpoints for name in e.devices}

    @property
    def overrides(self) -> dict[str, dict[str, Any]]:
        """Device name -> the config keys (host, port, ...) that point the agent at its
        simulator. Known once started (ports are picked then)."""
        out: dict[str, dict[str, Any]] = {}
        for e in self._started:
            out.update(e.overrides())
        return {d.name: out[d.name] for d in self.config.devices if d.name in out}

    def describe(self) -> list[str]:
        """What serves what, one line per endpoint, then the devices left out."""
        lines = [e.describe() for e in self._started]
        lines += [f"not simulated: {name} ({why})" for name, why in self.unsupported.items()]
        return lines

    async def start(self, *, play: bool = True) -> None:
        """Open every endpoint (OSError if one cannot be), then start the scenario's clock
        (``play=False``: not yet; the devices show the scenario's values at 0 s until
        :meth:`play`, so a runner can start the agent first and begin once it is up)."""
        self.place.pty_dir.mkdir(parents=True, exist_ok=True)
        try:
            for e in self.endpoints:
                await e.start()
                self._started.append(e)
        except BaseException:
            await self.stop()
            raise
        if play:
            self.play()

    def play(self) -> None:
        """Start the scenario's clock and timeline now (once; :meth:`start` does it unless
        told not to)."""
        if self.world.started:
            return
        self.world.start()
        if self.scenario is not None:
            self._task = asyncio.create_task(self._play(), name="simulate: scenario")

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._started:
            e = self._started.pop()
            try:
                await e.stop()
            except Exception:  # one stuck endpoint must not keep the others open
                log.exception("stopping %s", e.describe())

    async def __aenter__(self) -> Simulation:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait(self) -> None:
        """Until the scenario has run its duration."""
        await self.finished.wait()

    # ---- the timeline ------------------------------------------------------------------------

    def _steps(self) -> list[_Step]:
        assert self.scenario is not None
        s = self.scenario.scenario
        steps: list[_Step] = []
        for f in s.faults:
            fault = ActiveFault(
                kind=f.fault,
                code=f.code,
                points=frozenset(f.points or ()),
                data=None if f.data is None else control_bytes(f.data),
                duration=f.duration,
            )
            steps.append(
                (f.at, 1, f.device, f"fault {f.fault} started", self._begin(f.device, fault))
            )
            if f.duration > 0 and f.at + f.duration < s.duration:
                steps.append(
                    (
                        f.at + f.duration,
                        0,
                        f.device,
                        f"fault {f.fault} ended",
                        self._end(f.device, fault),
                    )
                )
        for e in s.scans:
            steps.append((e.at, 2, e.device, f"scan {e.data!r}", self._scan(e.device, e.data)))
        for w in s.weights:
            steps.append(
                (w.at, 2, w.device, f"weight {w.weight:g}", self._weigh(w.device, w.weight))
            )
        for g in s.tags:
            tag = TagInField(g.epc, g.dwell, g.antenna, g.rssi)
            steps.append((g.at, 2, g.device, f"tag {g.epc}", self._tag(g.device, tag)))
        return sorted(steps, key=lambda x: (x[0], x[1]))

    async def _play(self) -> None:
        assert self.scenario is not None
        try:
            for t, _order, device, what, action in self._steps():
                await self._until(t)
                began, error = self.world.now(), None
                try:
                    await action()
                except Exception as exc:  # one step that fails must not end the scenario
                    error = str(exc) or type(exc).__name__
                    log.error("simulate: %s at %g s on %s failed: %s", what, t, device, error)
                self._record(Happened(began, device, what, error))
            await self._until(self.scenario.scenario.duration)
            for device, fault in list(self.world.faults.items()):
                await self._end(device, fault)()
                self._record(Happened(self.world.now(), device, f"fault {fault.kind} ended"))
        finally:
            self.finished.set()

    def _record(self, step: Happened) -> None:
        self.history.append(step)
        if self.on_step is not None:
            self.on_step(step)

    async def _until(self, t: float) -> None:
        delay = self.world.at(t) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _begin(self, device: str, fault: ActiveFault) -> Callable[[], Awaitable[None]]:
        async def begin() -> None:
            if fault.duration > 0:
                self.world.faults[device] = fault
            await self._endpoint[device].fault_started(device, fault)

        return begin

    def _end(self, device: str, fault: ActiveFault) -> Callable[[], Awaitable[None]]:
        async def end() -> None:
            if self.world.faults.get(device) is fault:
                del self.world.faults[device]
            await self._endpoint[device].fault_ended(device, fault)

        return end

    def _scan(self, device: str, data: str) -> Callable[[], Awaitable[None]]:
        async def scan() -> None:
            await self._endpoint[device].scan(device, data)

        return scan

    def _tag(self, device: str, tag: TagInField) -> Callable[[], Awaitable[None]]:
        async def carry() -> None:
            await self._endpoint[device].tag(device, tag)

        return carry

    def _weigh(self, device: str, weight: float) -> Callable[[], Awaitable[None]]:
        async def weigh() -> None:
            await self._endpoint[device].weigh(device, weight)

        return weigh
