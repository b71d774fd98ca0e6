"""What a test left running on its event loop, for conftest's ``no_task_leak``.

The check runs as one more coroutine on the test's own loop, after every other fixture has
been torn down and before pytest-asyncio closes the loop (closing would cancel the leftovers
silently): any task still pending then was started by the test or its fixtures and never
awaited to its end.
"""

from __future__ import annotations

import asyncio

CANCELLED_GRACE = 5.0
"""Seconds a task already cancelled gets to finish (its ``finally`` may close a socket or
join a thread) before it counts as leaked."""

SETTLE_TURNS = 5
"""Loop turns every other pending task gets: a done-callback or a just-closed transport may
still have a step to run. A task that needs more than that is running, so it leaked."""


def describe(task: asyncio.Task[object]) -> str:
    """``name (coroutine qualname)``: the name says who started it, the coroutine what it ran."""
    coro = task.get_coro()
    what = getattr(coro, "__qualname__", None) or repr(coro)
    return f"{task.get_name()} ({what})"


async def leftover_tasks() -> list[str]:
    """The tasks still pending on this loop besides the caller, after the grace above; they
    are then cancelled and awaited, so the loop closes without complaints."""
    me = asyncio.current_task()

    def pending() -> set[asyncio.Task[object]]:
        return {t for t in asyncio.all_tasks() if t is not me and not t.done()}

    for _ in range(SETTLE_TURNS):
        if not pending():
            return []
        await asyncio.sleep(0)
    cancelled = {t for t in pending() if t.cancelling()}
    if cancelled:
        await asyncio.wait(cancelled, timeout=CANCELLED_GRACE)
    leaked = pending()
    names = sorted(describe(t) for t in leaked)
    for task in leaked:
        task.cancel()
    if leaked:
        await asyncio.wait(leaked, timeout=CANCELLED_GRACE)
    return names
