"""Running one case: the simulators of its device map, the real agent pointed at them and at
the run's broker, a subscriber taking the records off the broker, and the case's clock.

The phases, each with its own limit, all inside one deadline for the whole case (a case can
fail, it can never hang):

1. start: the simulators (clock stopped), a subscriber, the agent; wait until every
   simulated device is up;
2. play the scenario and match the records as they arrive, until every expectation is
   settled or the case's window (``within``, at most the scenario's duration) is over;
3. delivery: everything the agent committed in the window has come through the broker;
4. stop the agent, the simulators and the subscriber; judge the records of the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_agent.config import AgentConfig
from edge_agent.testing.load import CaseRef, LoadedCase
from edge_agent.testing.logcapture import CaseLog, current
from edge_agent.testing.matching import Record, Tally
from edge_agent.testing.report import failures
from kernel.model import DeviceState

STARTUP_LIMIT = 20.0
"""Seconds for the simulators, the subscriber and the agent to start and the devices to
come up."""
DELIVERY_LIMIT = 10.0
"""Seconds for what the agent committed to come through the broker after the window."""
STOP_LIMIT = 20.0
"""Seconds for the agent (its last commit, its uplink) and the simulators to stop."""
POLL = 0.05
"""Seconds between two looks at what arrived."""
TAIL_OVERFLOW = "tail.overflow"

Status = Literal["passed", "failed", "error"]


@dataclass
class CaseResult:
    """What one case came to."""

    ref: CaseRef
    status: Status
    seconds: float = 0.0
    message: str = ""
    """One line: why it failed or could not run."""
    details: list[str] = field(default_factory=list)
    """The diff: one block of lines per expectation not met."""
    log: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    records: int = 0
    notes: list[str] = field(default_factory=list)
    """Things worth knowing that are no failure (devices the simulators left out)."""
    bad_input: bool = False
    """Not run: the case file, its config or its scenario has mistakes (``details``)."""


class CaseError(Exception):
    """The case could not be run to its end (a device never up, the agent failed)."""


async def run_case(
    case: LoadedCase,
    broker_host: str,
    broker_port: int,
    *,
    mqtt: Mapping[str, Any] | None = None,
    work_root: str | Path | None = None,
) -> CaseResult:
    """Run ``case`` against the broker at ``broker_host:broker_port`` (``mqtt``: more keys
    of the agent's mqtt section the broker needs); never raises (but for cancellation),
    never runs past the case's deadline."""
    log = CaseLog()
    current.set(log)
    began = time.monotonic()
    result = CaseResult(case.ref, "error")
    work = Path(tempfile.mkdtemp(prefix="edge-test-", dir=work_root))
    run = _CaseRun(case, broker_host, broker_port, work, result, mqtt or {})
    limit = 2 * STARTUP_LIMIT + case.window + DELIVERY_LIMIT + 2 * STOP_LIMIT
    try:
        async with asyncio.timeout(limit):
            await run.run()
    except TimeoutError:
        result.status = "error"
        result.message = f"did not finish within {limit:g} s ({run.phase})"
    except CaseError as exc:
        result.status, result.message = "error", str(exc)
    except Exception as exc:  # the runner's own boundary: one broken case never ends the run
        result.status = "error"
        result.message = f"{run.phase}: {type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.monotonic() - began
    result.log = list(log.lines)
    result.warnings = list(log.warnings)
    return result


class _CaseRun:
    def __init__(
        self,
        case: LoadedCase,
        host: str,
        port: int,
        work: Path,
        result: CaseResult,
        mqtt_keys: Mapping[str, Any],
    ) -> None:
        self.case = case
        self.host, self.port = host, port
        self.work = work
        self.result = result
        self.phase = "starting the simulators"
        self.uid = uuid.uuid4().hex[:10]
        self.committed: set[int] = set()
        self.mqtt_keys = mqtt_keys
        self.started: float | None = None
        """Wall-clock time the scenario started."""

    async def run(self) -> None:
        from simulators.devicemap import Simulation, apply_overrides

        case = self.case
        sim = Simulation(case.config, case.scenario, pty_dir=self.work / "pty")
        self.result.notes += [f"not simulated: {d} ({why})" for d, why in sim.unsupported.items()]
        async with contextlib.AsyncExitStack() as stack:
            try:
                await sim.start(play=False)
            except OSError as exc:
                raise CaseError(f"the simulators cannot start: {exc}") from None
            stack.push_async_callback(self._bounded, sim.stop(), "stopping the simulators")
            config = self._agent_config(apply_overrides(case.config, sim.overrides))
            self.phase = "starting the subscriber"
            collector = await self._collector()
            stack.push_async_callback(self._bounded, asyncio.to_thread(collector.stop), "")
            self.phase = "starting the agent"
            agent, runner = await self._agent(config, stack)
            self.phase = "waiting for the devices to come up"
            await self._devices_up(agent, runner, set(sim.overrides))
            self.phase = "playing the scenario"
            sim.play()
            self.started = time.time()  # the records' ts are the agent's wall clock
            tally = Tally(case.case.expectations, case.case.order, self.started)
            seen = 0
            deadline = time.monotonic() + case.window
            while True:
                records, seen = _take(collector, seen)
                tally.add(records)
                if tally.settled(sim.world.now()) or time.monotonic() >= deadline:
                    break
                if runner.done():
                    raise CaseError(f"the agent stopped: {_ended(runner)}")
                await asyncio.sleep(POLL)
            window = sim.world.now()
            self.phase = "waiting for delivery through the broker"
            last = await agent.buffer.flush()
            missing = await self._delivered(collector, last)
            self.phase = "stopping the agent and the simulators"
        final = _records(collector, last)  # the stop above sent more: only the window's
        self._judge(final, missing, window)

    def _agent_config(self, config: AgentConfig) -> AgentConfig:
        """The device map as the line PC runs it, but for where it keeps and sends things:
        a journal and socket of the case's own, the run's broker on a topic of the case's
        own (cases run side by side), no metrics port."""
        mqtt = config.mqtt.model_copy(
            update={
                "host": self.host,
                "port": self.port,
                "client_id": f"edge-test-{self.uid}",
                "topic_prefix": f"edge-test/{self.uid}",
                "tls": None,
                "username": None,
                "password": None,
                "password_file": None,
                "confirm": "puback",
                "backoff_initial": 0.1,
                "backoff_max": 1.0,
                **self.mqtt_keys,
            }
        )
        return config.model_copy(
            update={
                "buffer": config.buffer.model_copy(update={"path": str(self.work / "buffer.db")}),
                "control": config.control.model_copy(
                    update={"socket": str(self.work / "control.sock")}
                ),
                "metrics": config.metrics.model_copy(update={"enabled": False}),
                "mqtt": mqtt,
            }
        )

    async def _collector(self) -> Any:
        from simulators.consumer import RecordCollector

        collector = RecordCollector(
            self.host,
            self.port,
            topic=f"edge-test/{self.uid}/+/+/+/records",
            client_id=f"edge-test-{self.uid}-sub",
        )
        try:
            await asyncio.to_thread(collector.start)
        except TimeoutError as exc:
            raise CaseError(f"cannot subscribe to the broker: {exc}") from None
        return collector

    async def _agent(
        self, config: AgentConfig, stack: contextlib.AsyncExitStack
    ) -> tuple[Any, asyncio.Task[None]]:
        from edge_agent.daemon import Agent

        try:
            agent = Agent(config)
        except Exception as exc:  # a driver the install lacks (an extra), a bad path
            raise CaseError(f"the agent cannot start: {exc}") from None
        follower = asyncio.create_task(self._follow(agent), name="test: committed seqs")
        stack.push_async_callback(_cancel, follower)
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop), name="test: agent")
        stack.push_async_callback(self._stop_agent, runner, stop)
        started = asyncio.create_task(agent.started.wait())
        try:
            await asyncio.wait({started, runner}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel(started)
        if runner.done():
            raise CaseError(f"the agent cannot start: {_ended(runner)}")
        return agent, runner

    async def _follow(self, agent: Any) -> None:
        """The seqs the agent commits (its ``tail``), to know what must come through."""
        async for batch in agent.tail.subscribe().batches():
            for r in batch:
                if r.get("kind") == TAIL_OVERFLOW:
                    self.committed.update(range(r["first_seq"], r["last_seq"] + 1))
                else:
                    self.committed.add(r["seq"])

    async def _devices_up(self, agent: Any, runner: asyncio.Task[None], names: set[str]) -> None:
        drivers = [d for d in agent.drivers if d.name in names]
        deadline = time.monotonic() + STARTUP_LIMIT
        while not all(d.status.state is DeviceState.UP for d in drivers):
            if runner.done():
                raise CaseError(f"the agent stopped: {_ended(runner)}")
            if time.monotonic() > deadline:
                down = [
                    f"{d.name} ({d.status.state.value}: {d.status.last_error or 'no answer yet'})"
                    for d in drivers
                    if d.status.state is not DeviceState.UP
                ]
                raise CaseError(
                    f"device(s) not up {STARTUP_LIMIT:g} s after the start: {', '.join(down)}"
                )
            await asyncio.sleep(POLL)

    async def _delivered(self, collector: Any, last: int) -> list[int]:
        """Wait until every seq up to ``last`` the agent committed has come through the
        broker; return those that did not in time."""
        deadline = time.monotonic() + DELIVERY_LIMIT
        while True:
            with collector.lock:
                got = {s for (_a, s) in collector.data.records}
            tail_done = last == 0 or max(self.committed, default=0) >= last
            missing = sorted(s for s in self.committed if s <= last and s not in got)
            if (tail_done and not missing) or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(POLL)

    async def _stop_agent(self, runner: asyncio.Task[None], stop: asyncio.Event) -> None:
        stop.set()
        await self._bounded(runner, "stopping the agent")

    async def _bounded(self, work: Awaitable[Any], what: str) -> None:
        """Await ``work`` for at most STOP_LIMIT; a cleanup that hangs is cancelled, and a
        failing one noted (the case's verdict is made already)."""
        try:
            async with asyncio.timeout(STOP_LIMIT):
                await work
        except TimeoutError:
            self.result.notes.append(f"{what or 'cleanup'}: gave up after {STOP_LIMIT:g} s")
        except Exception as exc:
            if what:
                self.result.notes.append(f"{what}: {type(exc).__name__}: {exc}")

    def _judge(self, records: list[Record], missing: list[int], window: float) -> None:
        case, result = self.case, self.result
        result.records = len(records)
        tally = Tally(case.case.expectations, case.case.order, self.started)
        tally.add(records)
        outcomes = tally.outcomes()
        result.details = failures(case, tally, outcomes)
        failed = [o for o in outcomes if not o.met]
        problems = []
        if failed:
            problems.append(
                f"{len(failed)} of {len(outcomes)} expectation(s) not met in {window:.1f} s "
                f"({len(records)} record(s) from the agent)"
            )
        if missing:
            shown = ", ".join(str(s) for s in missing[:10]) + (", ..." if len(missing) > 10 else "")
            problems.append(
                f"{len(missing)} record(s) the agent committed did not come through the broker "
                f"within {DELIVERY_LIMIT:g} s (seq {shown})"
            )
        result.status = "failed" if problems else "passed"
        result.message = "; ".join(problems)


def _take(collector: Any, seen: int) -> tuple[list[Record], int]:
    """The records that arrived since the first ``seen`` (in arrival order)."""
    with collector.lock:
        data = collector.data
        keys = data.order[seen:]
        return [data.records[k] for k in keys], seen + len(keys)


def _records(collector: Any, last: int) -> list[Record]:
    """Every record up to seq ``last`` (the window's), in seq order."""
    with collector.lock:
        records = [r for (_a, s), r in collector.data.records.items() if s <= last]
    return sorted(records, key=lambda r: int(r["seq"]))


def _ended(task: asyncio.Task[None]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return "it returned" if exc is None else f"{type(exc).__name__}: {exc}"


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
