"""Simulated keyboard-wedge scanners from the config (``edge-agent simulate --config``): a
virtual keyboard made with Linux's uinput (python-evdev), typing the scenario's scans as a
scanner set to the config's layout types them (each character's key at its lowest level,
GS as ``gs_key`` says, then Enter); the overrides point the agent's ``input`` at its event
device.

A keyboard can only be made where ``/dev/uinput`` exists and is writable (not in a usual
container) and the keyboard extra (evdev) is installed. Elsewhere every such device is left
out with that reason (``not simulated: NAME (...)``): nothing here pretends to be a keyboard
the driver would not read in the same way from the kernel.

Faults: ``unplug`` (the virtual keyboard is removed, its event device vanishes, and it is
made again when the fault ends: a new event device, as a scanner plugged back in; the
agent's ``input`` is the first one's path, so point it at a stable name in real use).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any, cast

from drivers.device import DeviceConfig
from drivers.keyboard_scanner.config import KeyboardScannerDevice
from drivers.keyboard_scanner.keymap import GS, KEY_CODES, LAYOUTS, parse_gs_key
from drivers.links.config import control_bytes
from simulators.devicemap.kinds import (
    ActiveFault,
    Endpoint,
    KindSimulator,
    Placement,
    ValueSpec,
    World,
)

K = KEY_CODES
KEY_PAUSE = 0.002
"""Seconds between two key events: a scanner types fast, but the kernel gets them in turn."""
Event = tuple[int, int]
"""(key code, 1 down / 0 up)."""


def uinput_missing() -> str | None:
    """Why no virtual keyboard can be made here, or None."""
    try:
        import evdev  # noqa: F401
    except ImportError:
        return "the keyboard extra (evdev) is not installed"
    if not os.path.exists("/dev/uinput"):
        return "no /dev/uinput on this machine: a virtual keyboard cannot be made (containers)"
    if not os.access("/dev/uinput", os.W_OK):
        return "/dev/uinput is not writable by this user"
    return None


def key_events(text: str, layout: str, gs_key: str) -> list[Event]:
    """The key events a scanner set to ``layout`` sends for ``text`` and its Enter. Raises
    ValueError for a character the layout cannot type."""
    board = LAYOUTS[layout]
    gs = parse_gs_key(gs_key)
    events: list[Event] = []
    for char in text:
        if char == GS and gs.key is not None:
            events += [(gs.key, 1), (gs.key, 0)]
            continue
        if char == GS and gs.char is None:  # the Ctrl+] chord
            code, level = min(board.strokes("]"), key=lambda s: s[1])
            ctrl = K["LEFTCTRL"]
            events += [(ctrl, 1), *_at(code, level), (ctrl, 0)]
            continue
        want = gs.char if char == GS else char
        assert want is not None
        found = board.strokes(want)
        if not found:
            raise ValueError(f"{want!r} cannot be typed on layout {layout}")
        code, level = min(found, key=lambda s: (s in board.dead, s[1]))
        events += _at(code, level)
        if (code, level) in board.dead:  # a dead key types its accent before Space
            events += [(K["SPACE"], 1), (K["SPACE"], 0)]
    return [*events, (K["ENTER"], 1), (K["ENTER"], 0)]


def _at(code: int, level: int) -> list[Event]:
    mods = []
    if level in (2, 3):
        mods.append(K["RIGHTALT"])
    if level in (1, 3):
        mods.append(K["LEFTSHIFT"])
    return [*[(m, 1) for m in mods], (code, 1), (code, 0), *[(m, 0) for m in reversed(mods)]]


class KeyboardEndpoint(Endpoint):
    """One virtual keyboard per scanner."""

    def __init__(self, device: KeyboardScannerDevice) -> None:
        self.device = device
        self.devices = (device.name,)
        self._ui: Any = None  # evdev.UInput
        self._path = ""

    async def start(self) -> None:
        import evdev
        from evdev import ecodes

        keys = sorted(set(K.values()))
        # Two ioctls on /dev/uinput: quick, and no executor thread to outlive the simulation.
        self._ui = evdev.UInput(
            {ecodes.EV_KEY: keys}, name=f"edge-agent simulate {self.device.name}"
        )
        self._path = self._path or str(self._ui.device.path)

    async def stop(self) -> None:
        ui, self._ui = self._ui, None
        if ui is not None:
            ui.close()

    def overrides(self) -> dict[str, dict[str, Any]]:
        return {self.device.name: {"input": self._path}}

    def describe(self) -> str:
        return f"keyboard_scanner {self.device.name} as virtual keyboard {self._path}"

    async def scan(self, device: str, data: str) -> None:
        from evdev import ecodes

        if self._ui is None:
            raise OSError(f"{device}: the keyboard is unplugged")
        text = control_bytes(data).decode("latin-1")
        events = key_events(text, self.device.layout, self.device.gs_key)

        for code, value in events:
            self._ui.write(ecodes.EV_KEY, code, value)
            self._ui.syn()
            await asyncio.sleep(KEY_PAUSE)

    async def fault_started(self, device: str, fault: ActiveFault) -> None:
        if fault.kind == "unplug":
            await self.stop()

    async def fault_ended(self, device: str, fault: ActiveFault) -> None:
        if fault.kind == "unplug":
            await self.start()


class KeyboardSimulator(KindSimulator):
    faults = frozenset({"unplug"})
    events = frozenset({"scans"})

    def value_spec(self, device: DeviceConfig, point: str) -> ValueSpec | None:
        return None  # scans are events, not values

    def device_issue(self, device: DeviceConfig) -> str | None:
        return uinput_missing()

    def endpoints(
        self, devices: Sequence[DeviceConfig], world: World, place: Placement
    ) -> list[Endpoint]:
        return [KeyboardEndpoint(cast(KeyboardScannerDevice, d)) for d in devices]


SIMULATOR = KeyboardSimulator()
