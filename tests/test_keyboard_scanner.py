"""The keyboard-wedge scanner driver: its config, its error reasons, and the driver with a
fake input device.

**The one mock, and why.** A real input device needs /dev/input (a plugged keyboard) or
/dev/uinput (a virtual one), and this machine has neither: a container's /dev has no input
subsystem. So the driver is given a fake ``InputDevice`` at its one seam, ``open_input`` (where
``evdev.InputDevice(path)`` is called). The fake behaves as evdev's does where the driver can
tell: a non-blocking descriptor (a real pipe) that polls readable when events wait, ``read()``
raising BlockingIOError when none do and OSError ENODEV once unplugged, ``grab`` raising EBUSY
when another process holds it. Everything after the seam is the production code: the reader
thread, the poll on the device and the wake pipe, grab and release, errno translation, the
keymap, the runner's state and backoff. Where evdev runs without a device (a path that does
not exist, /dev/null), it is used as it is, built the daemon's way through the registry.
:func:`test_a_real_keyboard_through_uinput` runs the whole path against the kernel where
/dev/uinput exists, and is skipped here with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from drivers.keyboard_scanner.config import KeyboardScannerDevice
from drivers.keyboard_scanner.driver import (
    EV_KEY,
    EV_SYN,
    SYN_DROPPED,
    SYN_REPORT,
    KeyboardScannerDriver,
    input_reason,
)
from drivers.keyboard_scanner.keymap import GS, KEY_CODES
from kernel.model import DeviceState, Observation, Quality
from tests.keyboard_helpers import typing
from tests.modbus_helpers import Collector, no_leaks
from tests.modbus_helpers import stop_task as stop
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

PATH = "/dev/input/by-id/usb-Test_Scanner-event-kbd"


@pytest.fixture(autouse=True)
async def _no_leaks() -> AsyncIterator[None]:
    async with no_leaks():
        yield


def wedge(**kw: Any) -> KeyboardScannerDevice:
    raw = {"type": "keyboard_scanner", "name": "wedge10", "station": "ST10", "input": PATH, **kw}
    dev = KeyboardScannerDevice.model_validate(raw)
    assert dev.issues() == []
    return dev


# ---- the fake input device (the one seam) ----------------------------------------------------


@dataclass(frozen=True)
class Event:
    type: int
    code: int
    value: int


class FakeInputDevice:
    """One open of the input device: what ``evdev.InputDevice`` is to the driver."""

    name = "Test Scanner Keyboard"

    def __init__(self, plug: FakePlug) -> None:
        self._plug = plug
        self._read_end, self._write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._events: deque[Event] = deque()
        self._lock = threading.Lock()
        self.grabbed = False
        self.closed = False

    @property
    def fd(self) -> int:
        return self._read_end

    def push(self, events: list[Event]) -> None:
        with self._lock:
            self._events.extend(events)
        os.write(self._write_end, b"\0")  # readable, as the kernel's queue would be

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._events)

    def keys_typed(self, events: list[tuple[int, int]]) -> None:
        self.push([Event(EV_KEY, c, v) for c, v in events])

    def wake(self) -> None:
        os.write(self._write_end, b"\0")  # an unplugged evdev descriptor polls readable (HUP)

    def read(self) -> Iterator[Event]:
        # evdev's read() is a generator that reads on its first next(), as this one does.
        with contextlib.suppress(BlockingIOError):
            os.read(self._read_end, 4096)
        if not self._plug.plugged:
            raise OSError(errno.ENODEV, "No such device")
        with self._lock:
            events = list(self._events)
            self._events.clear()
        if not events:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        yield from events

    def grab(self) -> None:
        if self._plug.grab_error is not None:
            raise self._plug.grab_error
        self.grabbed = True

    def ungrab(self) -> None:
        if not self._plug.plugged:
            raise OSError(errno.ENODEV, "No such device")
        self.grabbed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._read_end)
            os.close(self._write_end)


class FakePlug:
    """The USB socket: ``open_input`` for the driver; plug, unplug, type for the test."""

    def __init__(self) -> None:
        self.plugged = True
        self.open_error: OSError | None = None
        self.grab_error: OSError | None = None
        self.opened: list[FakeInputDevice] = []
        self.paths: list[str] = []

    def __call__(self, path: str) -> FakeInputDevice:
        self.paths.append(path)
        if not self.plugged:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if self.open_error is not None:
            raise self.open_error
        device = FakeInputDevice(self)
        self.opened.append(device)
        return device

    @property
    def current(self) -> FakeInputDevice:
        return self.opened[-1]

    def type(self, text: str, layout: str = "us", gs_key: str = "ctrl+]") -> None:
        """The scanner types ``text`` + Enter, each key event followed by SYN_REPORT."""
        events: list[Event] = []
        for code, value in typing(text, layout, gs_key):
            events += [Event(EV_KEY, code, value), Event(EV_SYN, SYN_REPORT, 0)]
        self.current.push(events)

    def keys(self, events: list[tuple[int, int]]) -> None:
        self.current.keys_typed(events)

    def unplug(self) -> None:
        self.plugged = False
        self.current.wake()


async def start(
    dev: KeyboardScannerDevice, plug: FakePlug
) -> tuple[KeyboardScannerDriver, Collector, asyncio.Task[None]]:
    driver = KeyboardScannerDriver(dev, open_input=plug)
    sink = Collector()
    task = asyncio.create_task(driver.run(sink), name=f"device:{driver.name}")
    return driver, sink, task


def scans(sink: Collector) -> list[Observation]:
    return sink.of("scan")


def is_up(driver: KeyboardScannerDriver) -> bool:
    return driver.status.state is DeviceState.UP


# ---- the driver ------------------------------------------------------------------------------

GS1_SCAN = "]d20109501101530003" + "21ABC123" + GS + "10LOT7"


async def test_each_scan_is_one_observation_and_bad_ones_say_why() -> None:
    plug = FakePlug()
    driver, sink, task = await start(wedge(layout="de", gs_key="~"), plug)
    try:
        await wait_until(lambda: is_up(driver), what="device open")
        assert plug.paths == [PATH]
        assert plug.current.grabbed, "grabbed: the scans do not type into the HMI"
        before = time.time()
        plug.type(GS1_SCAN, "de", gs_key="~")
        plug.type("OP12345", "de")
        plug.keys([(KEY_CODES["A"], 1), (KEY_CODES["A"], 0), (183, 1), (183, 0)])
        plug.keys([(KEY_CODES["B"], 1), (KEY_CODES["B"], 0), (KEY_CODES["ENTER"], 1)])
        await wait_until(lambda: len(scans(sink)) >= 3, what="three scans")
    finally:
        await stop(task)
    good, operator, bad = scans(sink)
    assert (good.value, good.quality, good.error) == (GS1_SCAN, Quality.GOOD, None)
    assert operator.value == "OP12345"
    assert bad.value is None
    assert bad.quality is Quality.BAD
    assert bad.error == "key 183 (F13) has no character in layout de"
    assert bad.detail == {"typed": "a", "length": 1}
    assert all(before <= o.ts <= time.time() for o in (good, operator, bad)), "wall clock"
    assert driver.status.reads_failed == 1
    device = plug.current
    assert device.closed
    assert not device.grabbed, "released on stop"


async def test_an_unfinished_scan_is_rejected_after_the_inter_key_timeout() -> None:
    plug = FakePlug()
    driver, sink, task = await start(wedge(inter_key_timeout=0.05), plug)
    try:
        await wait_until(lambda: is_up(driver), what="device open")
        ctrl, g = KEY_CODES["LEFTCTRL"], KEY_CODES["G"]
        head = typing("AB", "us")[:-2]  # no Enter: the scanner stopped mid-code
        plug.keys([*head, (ctrl, 1), (g, 1), (g, 0), (ctrl, 0)])
        await wait_until(lambda: bool(scans(sink)), what="the rejected scan")
        plug.type("CD")
        await wait_until(lambda: len(scans(sink)) >= 2, what="the next scan")
    finally:
        await stop(task)
    rejected, good = scans(sink)
    assert rejected.error == "no Enter within 0.05 s of the last key: incomplete scan"
    assert rejected.detail == {"typed": "AB\\x07", "length": 3}
    assert good.value == "CD"


async def test_no_read_text_and_grab_false() -> None:
    plug = FakePlug()
    driver, sink, task = await start(wedge(no_read=["NOREAD"], grab=False), plug)
    try:
        await wait_until(lambda: is_up(driver), what="device open")
        assert not plug.current.grabbed
        plug.type("NOREAD")
        await wait_until(lambda: bool(scans(sink)), what="the no-read")
    finally:
        await stop(task)
    (obs,) = scans(sink)
    assert (obs.value, obs.quality) == (None, Quality.BAD)
    assert obs.error == "no read (the scanner typed 'NOREAD')"


async def test_lost_key_events_reject_the_scan_they_cut() -> None:
    plug = FakePlug()
    driver, sink, task = await start(wedge(), plug)
    try:
        await wait_until(lambda: is_up(driver), what="device open")
        head = typing("12", "us")[:-2]
        plug.keys(head)
        plug.current.push(
            [
                Event(EV_SYN, SYN_DROPPED, 0),
                Event(EV_KEY, KEY_CODES["5"], 1),  # before the next report: ignored
                Event(EV_SYN, SYN_REPORT, 0),
            ]
        )
        plug.type("34")
        plug.type("56")
        await wait_until(lambda: len(scans(sink)) >= 2, what="two scans")
    finally:
        await stop(task)
    cut, good = scans(sink)
    assert (
        cut.error
        == "key events were lost (the input buffer overflowed): a scan may be cut or missing"
    )
    assert cut.detail == {"typed": "12", "length": 2}  # typed up to the problem
    assert good.value == "56"


async def test_an_unplugged_scanner_is_down_and_back_when_replugged() -> None:
    """ENODEV on read: the scan it cut short is recorded, the device goes DOWN (one outage
    record), reopening fails with ENOENT (backoff) until the scanner is back."""
    plug = FakePlug()
    dev = wedge(backoff_initial=0.01, backoff_max=0.05)
    driver, sink, task = await start(dev, plug)
    try:
        await wait_until(lambda: is_up(driver), what="device open")
        first = plug.current
        first.keys_typed(typing("AB", "us")[:-2])
        # The kernel drops what a client has not read when the device goes: unplug once read.
        await wait_until(lambda: first.pending == 0, what="the keys read")
        plug.unplug()
        await wait_until(lambda: driver.status.state is DeviceState.DOWN, what="down")
        await wait_until(lambda: len(plug.paths) >= 3, what="reopen attempts")
        assert "does not exist (scanner unplugged?" in (driver.status.last_error or "")
        assert first.closed
        plug.plugged = True
        await wait_until(lambda: is_up(driver), what="up again")
        assert plug.current.grabbed
        plug.type("CD")
        await wait_until(lambda: scans(sink)[-1].value == "CD", what="a scan after replug")
    finally:
        await stop(task)
    got = scans(sink)
    cut, outage = got[0], got[1]
    assert cut.error == (f"scan cut short: input device {PATH} disappeared (scanner unplugged?)")
    assert cut.detail == {"typed": "AB", "length": 2}
    assert outage.quality is Quality.BAD
    assert outage.error == f"device 'wedge10': input device {PATH} disappeared (scanner unplugged?)"
    assert [o for o in got[2:-1] if o.quality is Quality.BAD] == [], "one outage record"
    assert len(plug.opened) == 2


@pytest.mark.parametrize(
    ("where", "error", "says"),
    [
        (
            "open",
            PermissionError(errno.EACCES, "Permission denied"),
            "add the agent's user to the input group",
        ),
        ("grab", OSError(errno.EBUSY, "Device or resource busy"), "is grabbed by another process"),
    ],
)
async def test_open_failures_say_how_to_fix_them(where: str, error: OSError, says: str) -> None:
    plug = FakePlug()
    setattr(plug, f"{where}_error", error)
    driver, _sink, task = await start(wedge(backoff_initial=0.01, backoff_max=0.05), plug)
    try:
        await wait_until(lambda: driver.status.state is DeviceState.DOWN, what="down")
        assert says in (driver.status.last_error or "")
    finally:
        await stop(task)
    assert all(d.closed for d in plug.opened), "a device that could not be grabbed is closed"


# ---- error reasons ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "error", "reason"),
    [
        (
            "open",
            FileNotFoundError(errno.ENOENT, "No such file or directory"),
            f"input device {PATH} does not exist (scanner unplugged? use its /dev/input/by-id/...-event-kbd name, which stays the same across reboots and USB sockets: ls -l /dev/input/by-id/)",
        ),
        (
            "open",
            PermissionError(errno.EACCES, "Permission denied"),
            f"no permission to read input device {PATH}: add the agent's user to the input group (sudo usermod -aG input <user>, then log in again; for a systemd service: SupplementaryGroups=input) or give it the device with a udev rule (docs/devices/keyboard-scanner.md)",
        ),
        (
            "open",
            OSError(errno.ENOTTY, "Inappropriate ioctl for device"),
            f"{PATH} is not an input event device: use the scanner's /dev/input/by-id/...-event-kbd name (evtest lists them)",
        ),
        (
            "open",
            OSError(errno.ENODEV, "No such device"),
            f"input device {PATH} is gone (scanner unplugged?)",
        ),
        (
            "open",
            OSError(errno.EMFILE, "Too many open files"),
            f"cannot open input device {PATH}: Too many open files",
        ),
        (
            "grab",
            OSError(errno.EBUSY, "Device or resource busy"),
            f"input device {PATH} is grabbed by another process (another edge-agent, or a program reading the scanner exclusively): fuser -v {PATH} lists who has it open",
        ),
        (
            "grab",
            OSError(errno.ENODEV, "No such device"),
            f"input device {PATH} is gone (scanner unplugged?)",
        ),
        (
            "grab",
            OSError(errno.EINVAL, "Invalid argument"),
            f"cannot grab input device {PATH}: Invalid argument",
        ),
        (
            "read",
            OSError(errno.ENODEV, "No such device"),
            f"input device {PATH} disappeared (scanner unplugged?)",
        ),
        (
            "read",
            OSError(errno.EIO, "Input/output error"),
            f"input device {PATH} disappeared (scanner unplugged?)",
        ),
        (
            "read",
            OSError(errno.EFAULT, "Bad address"),
            f"reading input device {PATH} failed: Bad address",
        ),
    ],
)
def test_input_reasons(step: str, error: OSError, reason: str) -> None:
    assert input_reason(PATH, error, step) == reason


# ---- the config ------------------------------------------------------------------------------


def test_config_defaults_and_what_the_core_asks() -> None:
    dev = wedge()
    assert (dev.layout, dev.gs_key, dev.suffix, dev.grab, dev.point) == (
        "us", "ctrl+]", "enter", True, "scan",
    )  # fmt: skip
    assert dev.scan_points() == ["scan"]
    assert dev.point_names() == ["scan"]
    assert dev.point_station("scan") == "ST10"
    assert dev.identity() == wedge(input=PATH.replace("by-id/", "by-id//")).identity()
    assert not dev.acknowledges("scan")
    assert dev.write_issue("scan") is not None
    assert dev.snapshot_issue(["scan"]) is not None


def test_the_kind_and_its_config_load_without_evdev() -> None:
    """The config model and the driver module import evdev only when a device is opened."""
    code = (
        "import sys, drivers.keyboard_scanner, drivers.keyboard_scanner.driver\n"
        "assert 'evdev' not in sys.modules, 'evdev imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- real evdev ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/dev/input/by-id/usb-Not_Plugged-event-kbd", "does not exist (scanner unplugged?"),
        ("/dev/null", "/dev/null is not an input event device"),
    ],
)
async def test_real_evdev_without_a_device_says_why(path: str, says: str) -> None:
    """No fake: the daemon's way of building the driver, evdev's own errors, translated."""
    pytest.importorskip("evdev", reason="the keyboard extra is not installed")
    from drivers import registry
    from drivers.bus import Buses

    dev = wedge(input=path, backoff_initial=0.01, backoff_max=0.05)
    driver = registry.create_driver(dev, registry.DriverContext(Buses()))
    assert isinstance(driver, KeyboardScannerDriver)
    sink = Collector()
    task = asyncio.create_task(driver.run(sink))
    try:
        await wait_until(lambda: driver.status.state is DeviceState.DOWN, what="down")
    finally:
        await stop(task)
    assert says in (driver.status.last_error or "")
    assert [o.error for o in scans(sink)] == [driver.status.last_error], "one outage record"


# ---- real hardware ---------------------------------------------------------------------------


def _uinput_missing() -> str | None:
    try:
        import evdev  # noqa: F401
    except ImportError:
        return "the keyboard extra (evdev) is not installed"
    if not os.path.exists("/dev/uinput"):
        return "no /dev/uinput on this machine: a virtual keyboard cannot be made (containers)"
    if not os.access("/dev/uinput", os.W_OK):
        return "/dev/uinput is not writable by this user"
    return None


@pytest.mark.skipif(_uinput_missing() is not None, reason=str(_uinput_missing()))
async def test_a_real_keyboard_through_uinput() -> None:
    """evdev itself, no fake: a virtual keyboard made with uinput types a scan that the driver
    reads from the kernel, grabbed."""
    import evdev
    from evdev import ecodes

    keys = sorted(set(KEY_CODES.values()))
    with evdev.UInput({ecodes.EV_KEY: keys}, name="edge-agent test scanner") as ui:
        path = ui.device.path
        driver = KeyboardScannerDriver(wedge(input=path))
        sink = Collector()
        task = asyncio.create_task(driver.run(sink))
        try:
            await wait_until(lambda: is_up(driver), what="device open")
            for code, value in typing("AB-12", "us"):
                ui.write(ecodes.EV_KEY, code, value)
                ui.syn()
            await wait_until(lambda: bool(scans(sink)), what="a scan")
        finally:
            await stop(task)
    assert scans(sink)[0].value == "AB-12"
