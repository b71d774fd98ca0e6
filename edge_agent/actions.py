"""What the binder asks the agent to do beside recording: read a part's snapshot at its
trigger, write a PLC handshake's "taken", answer a reader good-read/bad-read, trigger a
reader. Each runs as its own task, so a slow device never holds up binding; what must wait
for a commit (invariant 1: "taken" and the reader's beep mean "recorded") flushes first."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from buffer import Journal
from drivers.base import Driver
from edge_agent.binder import (
    Acknowledge,
    Action,
    AskRoute,
    Binder,
    Capture,
    TriggerRead,
    WriteInterlock,
    WriteTaken,
)
from edge_agent.gate.decide import RouteAnswer
from kernel.errors import BufferError_, DeviceError
from kernel.model import Observation, Quality, RecordDraft

log = logging.getLogger("edge_agent.daemon")

RESET_RETRY_FIRST = 0.25  # seconds before a failed "data taken" reset is written again
RESET_RETRY_MAX = 5.0  # the retries' interval grows to this while the device stays away


class ActionRunner:
    """Runs the binder's actions against the devices; owned by the event loop."""

    def __init__(
        self,
        driver: Callable[[str], Driver],
        binder: Binder,
        emit: Callable[[list[RecordDraft]], None],
        journal: Journal,
        ask: Callable[[str, str, str | None, float], Awaitable[RouteAnswer | None]] | None = None,
    ) -> None:
        self._driver = driver
        self._ask = ask  # (serial, station, line, wait) -> the trace store's answer
        self.binder = binder
        self._emit = emit
        self.buffer = journal
        self._tasks: set[asyncio.Task[None]] = set()
        self._resets: dict[str, asyncio.Task[None]] = {}  # station -> its reset written again

    def start(self, actions: Sequence[Action]) -> None:
        for action in actions:
            coro: Coroutine[Any, Any, None]
            if isinstance(action, Capture):
                coro = self._capture(action)
            elif isinstance(action, WriteTaken):
                coro = self._write(action)
            elif isinstance(action, Acknowledge):
                coro = self._acknowledge(action)
            elif isinstance(action, WriteInterlock):
                coro = self._interlock(action)
            elif isinstance(action, AskRoute):
                coro = self._ask_route(action)
            else:
                coro = self._trigger_read(action)
            task = asyncio.create_task(coro, name=f"{type(action).__name__}:{action.station}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _capture(self, cap: Capture) -> None:
        """Read a part's snapshot and record it; in a handshake, say "taken" only once the
        part record is committed (invariant 1)."""
        snapshot: list[Observation] | None = None
        error: str | None = None
        # The other devices (a scale) are read at the same time, each in its own request.
        also = asyncio.gather(*(self._read_also(device, points) for device, points in cap.also))
        try:
            snapshot = await self._driver(cap.device).read_points(cap.points)
        except DeviceError as exc:
            error = str(exc)
            if cap.handshake:
                log.warning(
                    "station %s: snapshot read failed, will read again while the PLC "
                    "holds data ready: %s",
                    cap.station,
                    error,
                    extra={"station": cap.station},
                )
        finally:
            extra = [o for observations in await also for o in observations]
        if extra:
            snapshot = [*(snapshot or ()), *extra]
        step = self.binder.complete(cap, snapshot, error)
        writes = [a for a in step.actions if isinstance(a, WriteTaken)]
        try:
            self._emit(step.drafts)
            if writes:
                await self.buffer.flush()
        except BufferError_:
            return  # _emit has stopped the agent; the PLC keeps its data (no "taken")
        for w in writes:
            await self._write(w)

    async def _read_also(self, device: str, points: tuple[str, ...]) -> list[Observation]:
        """A part's points on another device; one that cannot be read makes only its own
        points bad, with the reason."""
        try:
            return await self._driver(device).read_points(points)
        except DeviceError as exc:
            return [Observation(device, p, None, Quality.BAD, error=str(exc)) for p in points]

    async def _write(self, w: WriteTaken) -> None:
        try:
            await self._driver(w.device).write(w.point, w.value)
        except DeviceError as exc:
            log.warning(
                "station %s: handshake write %s=%s failed: %s",
                w.station,
                w.point,
                w.value,
                exc,
                extra={"station": w.station},
            )
            if w.value:
                self.binder.handshake_failed(w.station)
            elif self.binder.awaiting_reset(w.station):
                self._reset_again(w)

    def _reset_again(self, w: WriteTaken) -> None:
        """The PLC waits for "data taken" to fall before its next part, and data ready stays
        low meanwhile, so no observation would bring the reset again: a reset that failed
        (the connection was going or coming back) is retried until it is written, or until
        the station no longer waits for it. A real outage is the driver's to report."""
        old = self._resets.pop(w.station, None)
        if old is not None:
            old.cancel()
        task = asyncio.create_task(self._retry_reset(w), name=f"reset-taken:{w.station}")
        self._resets[w.station] = task
        task.add_done_callback(functools.partial(self._reset_done, w.station))

    def _reset_done(self, station: str, task: asyncio.Task[None]) -> None:
        if self._resets.get(station) is task:
            del self._resets[station]

    async def _retry_reset(self, w: WriteTaken) -> None:
        delay, failed = RESET_RETRY_FIRST, 1
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESET_RETRY_MAX)
            if not self.binder.awaiting_reset(w.station):
                return
            try:
                await self._driver(w.device).write(w.point, w.value)
            except DeviceError:
                failed += 1
                continue
            log.info(
                "station %s: handshake %s=%s written after %d failed attempts",
                w.station,
                w.point,
                w.value,
                failed,
                extra={"station": w.station},
            )
            return

    async def _acknowledge(self, ack: Acknowledge) -> None:
        """The reader's good-read / bad-read answer, once the scan's record is committed: the
        operator's beep means "recorded" (invariant 1, as for the handshake)."""
        try:
            await self.buffer.flush()
        except BufferError_:
            return  # not committed: no answer, the operator scans again
        try:
            await self._driver(ack.device).acknowledge(ack.point, ack.accepted)
        except DeviceError as exc:
            log.warning(
                "station %s: the %s answer to %s's scan was not sent: %s",
                ack.station,
                "good-read" if ack.accepted else "bad-read",
                ack.device,
                exc,
                extra={"station": ack.station, "device": ack.device},
            )

    async def _interlock(self, w: WriteInterlock) -> None:
        """Written at once, not after the commit: stopping a part must not wait for a disk
        (the refusal's records are committed beside it; the bad-read answer waits for them)."""
        try:
            await self._driver(w.device).write(w.point, w.value)
        except DeviceError as exc:
            log.error(
                "station %s: gate interlock %s.%s=%r not written: %s",
                w.station,
                w.device,
                w.point,
                w.value,
                exc,
                extra={"station": w.station, "device": w.device},
            )

    async def _ask_route(self, ask: AskRoute) -> None:
        """Ask the trace store about each remote route rule at once; whatever happens, the
        held scans are bound afterwards (without answers, by each rule's on_unreachable)."""
        answers: dict[int, RouteAnswer | None] = dict.fromkeys(
            (check.index for check in ask.checks), None
        )
        stopping = False
        try:
            if self._ask is not None:
                asked = self._ask
                got = await asyncio.gather(
                    *(
                        asked(ask.serial, c.rule.requires, c.rule.line, c.rule.timeout)
                        for c in ask.checks
                    )
                )
                answers.update(zip((c.index for c in ask.checks), got, strict=True))
        except asyncio.CancelledError:
            stopping = True  # the agent stops: record the scans, start nothing new
            raise
        finally:
            step = self.binder.answered(ask, answers)
            with contextlib.suppress(BufferError_):
                self._emit(step.drafts)
                if not stopping:
                    self.start(step.actions)

    async def _trigger_read(self, trig: TriggerRead) -> None:
        try:
            await self._driver(trig.device).trigger_read()
        except DeviceError as exc:
            log.warning(
                "station %s: reader %s not triggered: %s",
                trig.station,
                trig.device,
                exc,
                extra={"station": trig.station, "device": trig.device},
            )

    async def finish(self, limit: float) -> None:
        """Let captures in flight end (each is bounded by its device's timeout, ``limit``
        covers them), so a part whose trigger was seen is recorded; a handshake part cut short
        is captured again after the restart, because the PLC still holds its data. Resets
        still being retried stop now: the next start resets "data taken" anyway."""
        for retry in list(self._resets.values()):
            retry.cancel()
        await asyncio.gather(*self._resets.values(), return_exceptions=True)
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=limit)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
