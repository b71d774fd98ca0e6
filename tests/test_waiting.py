"""The tests' own waiting and leak checks: a wait that fails says what it waited for and what
it last saw; a task left on the loop is named, then cancelled."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.leak_helpers import leftover_tasks
from tests.waiting import Pending, bounded, deadline, wait_until, wait_until_sync


async def test_wait_until_returns_the_met_conditions_value() -> None:
    seen: list[int] = []
    asyncio.get_running_loop().call_later(0.02, seen.append, 7)
    assert await wait_until(lambda: seen or Pending("nothing yet"), 5, "a value") == [7]


async def test_an_async_condition_is_awaited() -> None:
    calls = 0

    async def check() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 3

    assert await wait_until(check, 5, "three checks") is True


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (lambda: False, "timed out after 0.05 s waiting for the journal empty"),
        (
            lambda: Pending("depth 12"),
            "timed out after 0.05 s waiting for the journal empty; last seen: depth 12",
        ),
        (lambda: 0, "timed out after 0.05 s waiting for the journal empty; last seen: 0"),
    ],
)
async def test_a_wait_that_fails_says_what_and_what_it_last_saw(
    condition: object, message: str
) -> None:
    with pytest.raises(AssertionError) as failed:
        await wait_until(condition, 0.05, "the journal empty")  # type: ignore[call-overload]
    assert str(failed.value) == message


def test_the_sync_wait_polls_a_thread() -> None:
    done = threading.Event()
    timer = threading.Timer(0.02, done.set)
    timer.start()
    try:
        assert wait_until_sync(done.is_set, 5, "the timer") is True
    finally:
        timer.join()
    with pytest.raises(AssertionError, match=r"waiting for never; last seen: \[\]"):
        wait_until_sync(list, 0.05, "never")


async def test_bounded_and_deadline_turn_a_hang_into_a_message() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for the event"):
        await bounded(asyncio.Event().wait(), 0.05, "the event")
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for a line"):
        async with deadline(0.05, "a line"):
            await asyncio.Event().wait()
    # A timeout of the awaited thing itself is not ours: it goes through as it was.
    with pytest.raises(TimeoutError):
        await bounded(asyncio.wait_for(asyncio.Event().wait(), 0.01), 5, "the event")


async def test_a_task_left_on_the_loop_is_named_and_cancelled() -> None:
    async def poll_forever() -> None:
        await asyncio.Event().wait()

    left = asyncio.create_task(poll_forever(), name="device:press10")
    finished = asyncio.create_task(asyncio.sleep(0))
    assert await leftover_tasks() == [
        "device:press10 (test_a_task_left_on_the_loop_is_named_and_cancelled.<locals>.poll_forever)"
    ]
    assert left.cancelled()
    assert finished.done()
