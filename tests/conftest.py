"""Shared fixtures. Keep this file thin: helpers live in modules beside it (mqtt_helpers, ...)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_asyncio import is_async_test

from tests.leak_helpers import leftover_tasks
from tests.mqtt_helpers import Mosquitto, Subscriber

# Fixtures several modules share live in plugin modules; importing them here registers them
# for every test (a test module imports helpers, never another test module).
from tests.store_fixtures import (  # noqa: F401
    chain_db,
    db,
    postgres,
    publisher,
    refusing_seq_5,
    sqlite_db,
    storage,
    stores,
)
from tests.sync_helpers import buffer  # noqa: F401

THREAD_GRACE = 5.0
"""Seconds threads started by a test get to finish after it before they count as leaked."""


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    """Fail the test if a thread it started is still alive after its teardown.

    Autouse fixtures are set up first and so torn down last: every other fixture (brokers,
    buffers, the event loop and its executor) has been closed when this checks.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE
    for thread in threading.enumerate():
        if thread not in before:
            thread.join(max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    if leaked:
        pytest.fail(f"test leaked threads: {', '.join(sorted(leaked))}", pytrace=False)


@pytest.fixture(autouse=True)
def no_task_leak(no_thread_leak: None, request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail an async test whose event loop still has a pending task at its teardown.

    pytest-asyncio runs each async test on a function-scoped ``asyncio.Runner`` (the
    ``_function_scoped_runner`` fixture) and closes it at that fixture's teardown, cancelling
    whatever is left without a word. Requesting the runner here sets it up inside this
    fixture, so it is torn down after this fixture, and every other fixture of the test (set
    up later) before: the check runs on the test's loop once everything that owns a task has
    had its chance to stop it. It asks for ``no_thread_leak`` so that one is set up before the
    runner and checks after the runner has joined the loop's executor threads.
    """
    marker = request.node.get_closest_marker("asyncio")
    scope = (marker.kwargs.get("loop_scope") if marker else None) or "function"
    if not is_async_test(request.node) or scope != "function":
        yield  # no loop, or one shared by several tests: its tasks may outlive one of them
        return
    runner = request.getfixturevalue("_function_scoped_runner")
    yield
    leaked = runner.run(leftover_tasks())
    if leaked:
        pytest.fail(f"test leaked asyncio tasks: {', '.join(leaked)}", pytrace=False)


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """Put the root logger back as it was: a test that runs the CLI's ``main()`` in-process
    gets its handler pointed at that test's captured stderr, which is closed afterwards (every
    later log line would then be a "Logging error"), and pytest's own capture handler removed."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running mosquitto on a free 127.0.0.1 port, persistence in the test's tmp dir."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def mqtt_subscriber(mosquitto: Mosquitto, request: pytest.FixtureRequest) -> Iterator[Subscriber]:
    """A persistent QoS 1 subscriber to every topic of ``mosquitto``, subscribed already."""
    client_id = "sub-" + re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:40]
    subscriber = Subscriber(mosquitto.port, "#", client_id=client_id)
    subscriber.start()
    try:
        yield subscriber
    finally:
        subscriber.stop()


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    """An empty folder a camera (or a smart camera's FTP upload) watches: ``tmp_path/in``."""
    folder = tmp_path / "in"
    folder.mkdir()
    return folder
