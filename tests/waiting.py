"""The one way a test waits for a condition: poll it against a deadline, fail saying what.

``wait_until`` polls on the event loop, ``wait_until_sync`` in a plain thread (tests that drive
threads or processes). Both take the condition, the deadline in seconds (``within``) and what
was being waited for (``what``), and fail with an ``AssertionError`` naming it. A condition
that is not yet met may say what it saw instead of returning False, by returning
``Pending("depth 12")`` (falsy) or any other falsy value that is not False or None (``0``,
``[]``): the failure message then ends with the last value seen. A met condition's value is
returned, so ``rows = await wait_until(lambda: read_rows() or Pending("none"), ...)`` works.

Polling, not a fixed sleep: the test moves on as soon as the condition holds. What cannot be
polled gets a deadline too: ``bounded(awaitable, within, what)`` for one await with none of its
own (``journal.wait_empty()``, ``event.wait()``), ``async with deadline(within, what):`` for a
block that waits in several steps (reading a stream until the line it wants).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar, overload

T = TypeVar("T")

DEFAULT_WITHIN = 10.0
"""Seconds, generous for a loaded machine: a deadline only costs time when a test fails."""


@dataclass(frozen=True)
class Pending:
    """A condition's "not yet", with what it saw (the failure message quotes it)."""

    seen: str

    def __bool__(self) -> bool:
        return False


def _failure(what: str, within: float, last: object) -> AssertionError:
    message = f"timed out after {within:g} s waiting for {what}"
    if isinstance(last, Pending):
        message += f"; last seen: {last.seen}"
    elif last is not None and last is not False:
        message += f"; last seen: {last!r}"
    return AssertionError(message)


@overload
async def wait_until(
    condition: Callable[[], Awaitable[T]],
    within: float = DEFAULT_WITHIN,
    what: str = "condition",
    *,
    interval: float = 0.005,
) -> T: ...


@overload
async def wait_until(
    condition: Callable[[], T],
    within: float = DEFAULT_WITHIN,
    what: str = "condition",
    *,
    interval: float = 0.005,
) -> T: ...


async def wait_until(
    condition: Callable[[], object],
    within: float = DEFAULT_WITHIN,
    what: str = "condition",
    *,
    interval: float = 0.005,
) -> object:
    """Poll ``condition`` (plain or async) on the loop until it is truthy; return its value.

    Fails with ``what`` and the last value seen after ``within`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise _failure(what, within, value)
        await asyncio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], T],
    within: float = DEFAULT_WITHIN,
    what: str = "condition",
    *,
    interval: float = 0.01,
) -> T:
    """Poll ``condition`` in this thread until it is truthy; return its value.

    For tests that drive threads or processes, never on an event loop's thread.
    """
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(what, within, value)
        time.sleep(interval)


async def bounded(awaitable: Awaitable[T], within: float, what: str) -> T:
    """Await something that has no deadline of its own (``journal.wait_empty()``,
    ``event.wait()``); fail with ``what`` after ``within`` seconds instead of hanging."""
    async with deadline(within, what):
        result = await awaitable
    return result


@asynccontextmanager
async def deadline(within: float, what: str) -> AsyncIterator[None]:
    """Bound a block that waits in several steps (reading a stream until a line comes); fail
    with ``what`` after ``within`` seconds instead of looping until the test's timeout."""
    timeout = asyncio.timeout(within)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if not timeout.expired():
            raise  # the block's own timeout, not ours
        raise AssertionError(f"timed out after {within:g} s waiting for {what}") from None
