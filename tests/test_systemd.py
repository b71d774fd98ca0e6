"""systemd integration: the agent's sd_notify messages seen by a real AF_UNIX datagram socket
standing in for systemd, with the in-process agent on a Modbus simulator and a real Mosquitto;
the notifier's failure handling; and the unit files checked by ``systemd-analyze verify``.

A wedged journal thread is simulated with a job in the thread's own queue that blocks until
the test releases it: exactly the state of a thread stuck in a commit or an fsync (SQLite's own
write lock from outside would not do: the thread's busy timeout turns it into retries)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import pytest

from edge_agent.config import agent_model
from edge_agent.daemon import Agent
from edge_agent.systemd import Notifier, watchdog_interval
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config
from simulators.station import StationModel
from tests.modbus_helpers import wait_until
from tests.mqtt_helpers import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "packaging" / "systemd"
WATCHDOG_USEC = 400_000
PERIOD = WATCHDOG_USEC / 2e6


@dataclass
class Message:
    at: float  # loop time of receipt
    fields: dict[str, str]
    ready_state: tuple[bool, int] = (False, 0)  # (agent started, device tasks) at receipt


@dataclass
class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET, read on the test's event loop."""

    sock: socket.socket
    state: Callable[[], tuple[bool, int]]
    messages: list[Message] = field(default_factory=list)

    def read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(Message(loop.time(), fields, self.state()))

    def with_field(self, key: str) -> list[Message]:
        return [m for m in self.messages if key in m.fields]


@asynccontextmanager
async def systemd_socket(
    path: Path, state: Callable[[], tuple[bool, int]]
) -> AsyncIterator[FakeSystemd]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    fake = FakeSystemd(sock, state)
    loop = asyncio.get_running_loop()
    loop.add_reader(sock.fileno(), fake.read)
    try:
        yield fake
    finally:
        loop.remove_reader(sock.fileno())
        fake.read()
        sock.close()


@asynccontextmanager
async def running_agent(tmp_path: Path, mosquitto: Mosquitto) -> AsyncIterator[Agent]:
    """A one-station agent on a Modbus simulator, stopped (and awaited) on exit."""
    async with ModbusStationServer([StationModel(unit_id=1, cycle_time=0.05)]) as plc:
        raw = demo_config(
            modbus_port=plc.port,
            mqtt_port=mosquitto.port,
            buffer_path=str(tmp_path / "buffer.db"),
            poll_interval=0.05,
            agent_id="systemd-pc1",
        )
        agent = Agent(agent_model().model_validate(raw))
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            yield agent
        finally:
            stop.set()
            await task


def notify_env(monkeypatch: pytest.MonkeyPatch, socket_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(socket_path))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)


async def test_ready_status_watchdog_and_stopping(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY=1 once the journal is open and the devices are started, STATUS with the summary,
    WATCHDOG=1 every WATCHDOG_USEC/2 while healthy, STOPPING=1 at shutdown."""
    path = tmp_path / "notify.sock"
    notify_env(monkeypatch, path)
    agent: Agent | None = None

    def state() -> tuple[bool, int]:
        return (False, 0) if agent is None else (agent.started.is_set(), len(agent.device_tasks))

    async with systemd_socket(path, state) as systemd:
        async with running_agent(tmp_path, mosquitto) as agent:
            await wait_until(lambda: len(systemd.with_field("WATCHDOG")) >= 8, 10, "8 pings")
            await wait_until(lambda: agent.sync.status.connected, 10, "uplink connected")
            await wait_until(
                lambda: "uplink connected" in systemd.messages[-1].fields.get("STATUS", ""),
                10,
                "a status line with the uplink up",
            )
            before_stop = len(systemd.messages)
        await wait_until(lambda: len(systemd.with_field("STOPPING")) == 1, 5, "STOPPING=1")

    ready = systemd.with_field("READY")
    assert len(ready) == 1
    assert systemd.messages[0] is ready[0]  # nothing before READY
    assert ready[0].ready_state == (True, 1)  # journal open (run got past it), device started
    assert agent.buffer.committed_seq > 0

    status = systemd.messages[-2].fields["STATUS"]
    assert status.startswith("devices 1/1 up, journal "), status

    pings = [m.at for m in systemd.with_field("WATCHDOG")]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert PERIOD * 0.75 < median(gaps) < PERIOD * 1.5, gaps
    assert max(gaps) < 2 * PERIOD, gaps  # systemd would have restarted us at 2 * PERIOD
    assert ready[0].at < pings[0]
    assert all(m.fields["WATCHDOG"] == "1" for m in systemd.with_field("WATCHDOG"))

    stopping = systemd.with_field("STOPPING")[0]
    assert systemd.messages.index(stopping) >= before_stop
    assert systemd.messages[-1] is stopping  # nothing after STOPPING


async def test_wedged_journal_thread_stops_the_pings(
    tmp_path: Path,
    mosquitto: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A journal thread stuck for a whole interval gets no ping (systemd then restarts the
    agent); STATUS says why; once it answers again the pings resume."""
    path = tmp_path / "notify.sock"
    notify_env(monkeypatch, path)
    caplog.set_level(logging.INFO, logger="edge_agent.systemd")
    async with (
        systemd_socket(path, lambda: (False, 0)) as systemd,
        running_agent(tmp_path, mosquitto) as agent,
    ):
        await wait_until(lambda: len(systemd.with_field("WATCHDOG")) >= 2, 10, "2 pings")
        release = threading.Event()
        # The test hook: a job that holds the journal's thread (see the module doc).
        wedge = asyncio.ensure_future(agent.buffer._submit(lambda db: release.wait(30)))
        try:
            wedged_at = asyncio.get_running_loop().time()

            def stuck() -> list[Message]:
                return [
                    m
                    for m in systemd.messages
                    if "journal thread has not answered" in m.fields.get("STATUS", "")
                ]

            await wait_until(lambda: len(stuck()) >= 3, 10, "3 ticks without a ping")
            first_stuck = systemd.messages.index(stuck()[0])
            # The last ping is at most one interval after the wedge (the probe sent just
            # before it could still be answered), and none since.
            last_ping = systemd.with_field("WATCHDOG")[-1].at
            assert last_ping < wedged_at + 1.5 * PERIOD
            assert not any("WATCHDOG" in m.fields for m in systemd.messages[first_stuck:])
        finally:
            release.set()
            await wedge
        pings = len(systemd.with_field("WATCHDOG"))
        await wait_until(lambda: len(systemd.with_field("WATCHDOG")) > pings, 10, "pings resumed")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors  # one line on the transition, not one per tick
    assert "journal thread has not answered" in errors[0].getMessage()
    assert any("healthy again" in r.getMessage() for r in caplog.records)


async def test_missing_notify_socket_logs_once_and_the_agent_runs_on(
    tmp_path: Path,
    mosquitto: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    notify_env(monkeypatch, tmp_path / "gone.sock")
    caplog.set_level(logging.INFO)
    async with running_agent(tmp_path, mosquitto) as agent:
        await wait_until(lambda: agent.sync.status.confirmed_records >= 20, 20, "records sent")
    lines = [r for r in caplog.records if r.name == "edge_agent.systemd" and r.levelno >= 30]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "NOTIFY_SOCKET=" in lines[0].getMessage()
    assert lines[0].exc_info is None  # one clear line, no traceback
    assert "agent stopped" in caplog.text


def test_notifier_logs_transitions_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A socket that is gone is one warning however often we send; when it is back, one
    info line and messages arrive again."""
    caplog.set_level(logging.INFO, logger="edge_agent.systemd")
    path = tmp_path / "n.sock"
    notifier = Notifier(str(path))
    try:
        assert [notifier.notify("WATCHDOG=1") for _ in range(3)] == [False] * 3
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
            receiver.bind(str(path))
            assert notifier.notify("STATUS=a b", "WATCHDOG=1")
            assert receiver.recv(100) == b"STATUS=a b\nWATCHDOG=1"
    finally:
        notifier.close()
    levels = [r.levelname for r in caplog.records]
    assert levels == ["WARNING", "INFO"], caplog.text


def test_notifier_abstract_socket_and_unset() -> None:
    name = f"edge-agent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        try:
            assert notifier.notify("READY=1")
            assert receiver.recv(100) == b"READY=1"
        finally:
            notifier.close()
    unset = Notifier.from_env({})
    assert not unset.enabled
    assert not unset.notify("READY=1")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another pid
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


@pytest.mark.parametrize("unit", ["edge-agent.service", "edge-agent@.service"])
def test_unit_files_verify(unit: str, tmp_path: Path) -> None:
    """``systemd-analyze verify`` finds no unknown key or bad value (it warns, exit 0)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    source = UNITS / unit
    # A template is verified as one of its instances.
    target = tmp_path / unit.replace("@.", "@line1.")
    target.write_text(source.read_text())
    done = subprocess.run(
        [tool, "verify", str(target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
