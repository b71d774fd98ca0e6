"""What the live cameras (:mod:`.folder`, :mod:`.mjpeg`) share: start and close, a render
thread, the tasks they own and what those died of, the station's clock.

Rendering is CPU work (a 2592x1944 frame takes tens of milliseconds): the live cameras render
in their own single worker thread, never on the event loop, and shut it down in ``close()``.
Everything a live camera starts is undone by ``close()`` (or its ``async with`` block), which
re-raises what any of its tasks died of.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, TypeVar

from simulators.camera.scene import CameraScene

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class _LiveCamera:
    """Start/close, a render thread, owned tasks and their errors, the station clock."""

    def __init__(self, scene: CameraScene, thread_name: str) -> None:
        self.scene = scene
        """The scene; its station's ``t0`` is resolved by ``start()`` when it was None."""
        self._thread_name = thread_name
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._errors: list[BaseException] = []
        self._started = False
        self.started_at: float | None = None

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("camera already started")
        self._started = True
        self.started_at = time.monotonic()
        if self.scene.model.t0 is None:
            self.scene = self.scene.with_t0(self.started_at)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=self._thread_name)

    async def close(self) -> None:
        """Stop every task and the render thread, then re-raise what a task died of."""
        await self._cancel_tasks()
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=True)  # at most one frame's rendering left to finish
        if self._errors:
            raise self._errors[0]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _cancel_tasks(self) -> None:
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("camera task %s died", task.get_name(), exc_info=exc)
            self._errors.append(exc)

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise RuntimeError("start() the camera first")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @staticmethod
    async def _sleep_until(t: float) -> None:
        """Sleep until monotonic ``t`` (never wakes early, so cycle_at(now) is the due one)."""
        # A deadline, not a condition: there is no event to wait for.
        while (delay := t - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)
