"""The contract between the device-map simulator and each kind's own simulator.

A kind of device provides its simulator in its folder, ``drivers/<kind>/simulator.py``, as a
module attribute ``SIMULATOR`` (a :class:`KindSimulator`), found the way the registry finds
the kind itself: nothing outside the kind's folder names it. The kind's simulator knows its
wire and its value types; everything else (the scenario, the clock, the part cycle, faults
and events at their moments) is the device-map simulator's, reached through :class:`World`.

This module imports nothing of ``edge_agent``: ``drivers/`` may import it without making the
packages depend on each other in a circle.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from drivers import registry
from drivers.device import DeviceConfig
from kernel.model import Value

FAULT_KINDS = ("silent", "exception", "garbage", "unplug", "restart")
"""Faults a scenario can name; each kind's simulator says which of them it plays."""
EVENT_KINDS = ("scans", "weights", "tags", "reads")
"""Scenario events a kind's simulator may take: a scan sent, a load placed, an RFID tag in
the field, the answers to the agent's trigger commands."""


@dataclass(frozen=True)
class ActiveFault:
    """A fault in force on one device, from the scenario."""

    kind: str
    """One of :data:`FAULT_KINDS`."""
    code: int | None = None
    """exception: the Modbus exception code to answer with."""
    points: frozenset[str] = frozenset()
    """exception: only requests touching these points fail; empty: every request."""
    data: bytes | None = None
    """garbage: the bytes to send (None: the kind's own idea of noise)."""
    duration: float = 0.0
    """Seconds the fault lasts; 0 for a one-off (a burst of garbage)."""


@dataclass(frozen=True)
class TagInField:
    """An RFID tag in a reader's field, from the scenario's ``tags:``."""

    epc: str
    """Upper-case hex."""
    dwell: float
    antenna: int = 1
    rssi: float = -50.0


@dataclass(frozen=True)
class ValueSpec:
    """What values a point takes, in engineering units, for checking a scenario's values
    before anything runs."""

    type_name: str
    """The type as the config names it, for messages: ``uint16``, ``float32``, ``Boolean``."""
    kind: Literal["bool", "number", "text", "any"]
    """any: true/false, a number or text (a variable whose type the config leaves open)."""
    integer: bool = False
    """number: the device holds a whole number (after scale and offset are undone)."""
    low: float | int | None = None
    high: float | int | None = None
    scale: float = 1.0
    offset: float = 0.0
    max_bytes: int | None = None
    """text: most bytes the point holds."""
    encoding: str = "latin-1"
    """text: how characters become bytes on the device."""
    detail: str = ""
    """What the messages add after the type, e.g. ``(6 registers)``."""

    def check(self, value: object) -> str | None:
        """Why ``value`` does not fit, or None when it does."""
        what = f"{self.type_name} point"
        a = "an" if self.type_name[:1].lower() in "aeio" else "a"
        if self.kind == "any":
            ok = isinstance(value, bool | int | float | str)
            return None if ok else f"expected a value for {a} {what}, found {_shown(value)}"
        if self.kind == "bool":
            if not isinstance(value, bool):
                return f"expected true or false for {a} {what}, found {_shown(value)}"
            return None
        if self.kind == "text":
            if not isinstance(value, str):
                return f"expected text for {a} {what}, found {_shown(value)}"
            try:
                size = len(value.encode(self.encoding))
            except UnicodeEncodeError:
                return f"{_shown(value)} holds a character {a} {what} cannot ({self.encoding})"
            if self.max_bytes is not None and size > self.max_bytes:
                where = f" {self.detail}" if self.detail else ""
                return (
                    f"{_shown(value)} does not fit {a} {what}{where}: {size} characters, "
                    f"at most {self.max_bytes}"
                )
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number for {a} {what}, found {_shown(value)}"
        return self.check_number(value)

    def check_number(self, value: float) -> str | None:
        """Range and representability of a number (not a boolean)."""
        a = "an" if self.type_name[:1].lower() in "aeio" else "a"
        what = f"{a} {self.type_name} point"
        if self.scale != 1.0:
            what += f" (scale {self.scale:g}"
            what += f", offset {self.offset:g})" if self.offset != 0.0 else ")"
        elif self.offset != 0.0:
            what += f" (offset {self.offset:g})"
        if math.isnan(value):
            return None if not self.integer else f"nan does not fit {what}"
        low, high = self.low, self.high
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"{_num(low)} .. {_num(high)}"
            scaled = self.scale != 1.0 or self.offset != 0.0
            return f"{_shown(value)} does not fit {what}" + (
                f": {span}" if scaled else f" ({span})"
            )
        if self.integer:
            raw = (value - self.offset) / self.scale
            if abs(raw - round(raw)) > 1e-6 * max(1.0, abs(raw)):
                if self.scale == 1.0 and self.offset == 0.0:
                    return f"{_shown(value)} does not fit {what}: whole numbers only"
                plus = f"{self.offset:g} plus " if self.offset != 0.0 else ""
                return (
                    f"{_shown(value)} does not fit {what}: the device holds a whole number, "
                    f"so a value is {plus}a multiple of {self.scale:g}"
                )
        return None


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"{value[:30]!r}... ({len(value)} characters)"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value)) if abs(value) >= 1e6 else f"{value:g}"
    return f"{value}" if not isinstance(value, float) else f"{value:g}"


def _num(x: float | int | None) -> str:
    if x is None:
        return "any"
    return str(x) if isinstance(x, int) else f"{x:g}"


@dataclass(frozen=True)
class Placement:
    """Where simulated devices live on this machine."""

    host: str = "127.0.0.1"
    """Address TCP servers listen on; the overrides name it for the agent."""
    pty_dir: Path = field(default_factory=lambda: Path("."))
    """Folder serial simulators put their ports (pty symlinks) in."""
    _names: set[str] = field(default_factory=set, compare=False, repr=False)

    def port_name(self, config_port: str) -> str:
        """A name in :attr:`pty_dir` for the simulated serial port of ``config_port`` (the
        config's path): its last part, made safe, and unused so far (``ttyUSB0``, else
        ``ttyUSB0-2``, ...: two config ports may end in the same name)."""
        last = os.path.basename(os.path.normpath(config_port))
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", last).strip(".") or "port"
        name, n = stem, 1
        while name in self._names or (self.pty_dir / name).exists():
            n += 1
            name = f"{stem}-{n}"
        self._names.add(name)
        return name


class TriggerAnswers(Protocol):
    """What a triggered reader answers, from the scenario's ``reads:``."""

    @property
    def delay(self) -> float:
        """Seconds from a trigger command to its answer."""
        ...

    def answer(self, k: int) -> str | None:
        """The answer to trigger k (0 for the first); None: a no-read."""
        ...


class World(Protocol):
    """What a kind's simulator asks of the scenario while it serves."""

    def value(self, device: str, point: str) -> Value:
        """The value the scenario gives the point now; None: the scenario does not drive it
        (the device keeps what it holds, e.g. what the agent wrote)."""
        ...

    def written(self, device: str, point: str, value: Value) -> None:
        """The agent wrote ``value`` to the point (a handshake's data taken)."""
        ...

    def fault(self, device: str) -> ActiveFault | None:
        """The fault in force on the device now, if any."""
        ...

    def trigger_answers(self, device: str) -> TriggerAnswers | None:
        """What the device answers to trigger commands; None: the scenario does not say
        (the reader never answers: every trigger is a no-read)."""
        ...

    def now(self) -> float:
        """Seconds since the scenario started."""
        ...


class Endpoint(ABC):
    """One simulated wire end (a TCP server, a serial line) serving one or more devices of a
    kind. Started and stopped by the device-map simulator, on its event loop."""

    devices: tuple[str, ...] = ()

    @abstractmethod
    async def start(self) -> None:
        """Listen or open the port; raise OSError when that is impossible."""

    @abstractmethod
    async def stop(self) -> None:
        """Release everything; nothing may outlive it."""

    @abstractmethod
    def overrides(self) -> dict[str, dict[str, Any]]:
        """Device name -> config keys the agent needs to reach this endpoint."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the console: what serves which devices where."""

    async def fault_started(self, device: str, fault: ActiveFault) -> None:  # noqa: B027
        """A fault begins on ``device`` (the world reports it from now on as well). Faults
        the endpoint plays by asking the world at each request need nothing here."""

    async def fault_ended(self, device: str, fault: ActiveFault) -> None:  # noqa: B027
        """The fault on ``device`` is over."""

    async def scan(self, device: str, data: str) -> None:
        """Send one scan (kinds that take ``scans``)."""
        raise NotImplementedError

    async def weigh(self, device: str, weight: float) -> None:
        """Put a load on the scale (kinds that take ``weights``)."""
        raise NotImplementedError

    async def tag(self, device: str, tag: TagInField) -> None:
        """Carry a tag into the reader's field (kinds that take ``tags``); returns at once,
        the reads go on for the tag's dwell."""
        raise NotImplementedError


class KindSimulator(ABC):
    """What a kind's ``SIMULATOR`` offers: the types of its points and its endpoints."""

    faults: frozenset[str] = frozenset()
    """Which of :data:`FAULT_KINDS` it plays."""
    events: frozenset[str] = frozenset()
    """Which of :data:`EVENT_KINDS` it takes."""

    @abstractmethod
    def value_spec(self, device: DeviceConfig, point: str) -> ValueSpec | None:
        """The point's values; None when the point takes no scripted values (a scanner's
        scans arrive as ``scans`` events)."""

    @abstractmethod
    def endpoints(
        self, devices: Sequence[DeviceConfig], world: World, place: Placement
    ) -> list[Endpoint]:
        """The endpoints serving ``devices`` (every device of this kind in the config):
        devices the config puts on one wire share one endpoint."""

    def device_issue(self, device: DeviceConfig) -> str | None:
        """Why this device cannot be simulated although its kind can (a setting the
        simulator does not play), or None."""
        return None

    def event_issue(self, device: DeviceConfig, event: str) -> str | None:
        """Why this device cannot take ``event`` (one of :data:`EVENT_KINDS`) although the
        kind does (a reader without a trigger has no trigger to answer), or None."""
        return None

    def fault_issue(self, device: DeviceConfig, fault: str) -> str | None:
        """Why this device cannot have ``fault`` although the kind plays it (a TCP unit has
        no serial line to put garbage on), or None."""
        return None


@dataclass(frozen=True)
class Lookup:
    """A kind's simulator, or why there is none."""

    simulator: KindSimulator | None
    reason: str = ""


def simulator_for(type_name: str) -> Lookup:
    """The simulator of the kind whose ``type:`` is ``type_name``: ``SIMULATOR`` in the
    ``simulator`` module beside the kind's config model."""
    kind = registry.find(type_name)
    if kind is None:
        return Lookup(None, f"no device kind {type_name!r}")
    package = kind.config.__module__.rpartition(".")[0]
    module_name = f"{package}.simulator"
    try:
        found = importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return Lookup(None, f"the {type_name} driver has no simulator yet")
    missing = kind.missing()
    if missing is not None:
        return Lookup(None, missing)
    simulator = getattr(importlib.import_module(module_name), "SIMULATOR", None)
    if not isinstance(simulator, KindSimulator):
        return Lookup(None, f"{module_name} defines no SIMULATOR")
    return Lookup(simulator)


def simulators_of(devices: Sequence[DeviceConfig]) -> dict[str, Lookup]:
    """:func:`simulator_for` of every type the devices use, each looked up once."""
    return {t: simulator_for(t) for t in dict.fromkeys(d.type for d in devices)}
