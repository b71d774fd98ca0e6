"""What every device entry in the YAML is, and what the rest of the agent may ask of it.

Each kind's config model (``drivers/<kind>/config.py``) subclasses :class:`DeviceConfig`.
The agent's core (cross-section checks, binding rules, the daemon) only ever calls these
methods, so that it never needs to know which kind of device it is looking at: whether a
point exists, which station it belongs to, whether a set of points can be read as one
consistent snapshot, whether a point can be written, which connection the device shares.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from kernel.model import Value
from kernel.names import Issue, Name


@dataclass(frozen=True, slots=True)
class BusClaim:
    """A connection several devices may share (an RS-485 port, an RTU-over-TCP gateway).

    Devices whose claims have the same ``key`` share one bus object at run time, so their
    ``settings`` (baud rate, parity, ...) must agree: two devices that open one serial port
    with different settings are a config error, not a port that works for whoever came first.
    """

    key: str
    """What identifies the wire, e.g. the serial port's path."""
    what: str
    """How messages name it, e.g. ``serial port /dev/ttyUSB0``."""
    settings: Mapping[str, Any]
    """Settings every device on the bus must give alike (key -> value, keys as in the YAML)."""


class NamedPoint(Protocol):
    """A point entry of a kind whose ``points:`` list names each point (and may give it a
    station of its own)."""

    @property
    def name(self) -> str: ...

    @property
    def station(self) -> str | None: ...


def duplicate_point_issues(points: Sequence[NamedPoint]) -> list[Issue]:
    """A point name used twice in one ``points:`` list, reported at the later entry."""
    out: list[Issue] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(points):
        if p.name in seen:
            message = f"duplicate point name {p.name!r} (also points[{seen[p.name]}])"
            out.append((("points", i, "name"), message))
        else:
            seen[p.name] = i
    return out


def backoff_issues(initial: float, maximum: float) -> list[Issue]:
    """A reconnect backoff whose cap is below its base, for every kind that has one."""
    if maximum < initial:
        return [(("backoff_max",), "must be at least backoff_initial")]
    return []


class DeviceConfig(BaseModel):
    """Base of every device kind's config model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="Driver that runs this device.")
    name: Name = Field(
        description="Device name, unique in the file; used in logs and records.",
        examples=["press10", "scanner1"],
    )
    station: Name | None = Field(
        default=None,
        description="Station the points belong to unless a point says otherwise.",
        examples=["ST10"],
    )

    def named_points(self) -> Sequence[NamedPoint]:
        """The entries of the kind's ``points:`` list; kinds with one override this, and the
        methods below then follow from it."""
        return []

    def point_names(self) -> Sequence[str]:
        """Every point the device reports, in config order."""
        return [p.name for p in self.named_points()]

    def point_station(self, point: str) -> str | None:
        """The station a point's values are bound to: the point's own, else the device's."""
        own = next((p.station for p in self.named_points() if p.name == point), None)
        return own or self.station

    def point_entries(self) -> list[tuple[tuple[str | int, ...], str | None]]:
        """(key path of the point's entry relative to the device, the station that entry
        names itself or None) for kinds whose points may each name a station."""
        return [(("points", j), p.station) for j, p in enumerate(self.named_points())]

    def issues(self) -> list[Issue]:
        """Cross-field problems, with key paths relative to this device."""
        return []

    def trigger_issue(self, point: str) -> str | None:
        """Why ``point`` (known to exist) cannot trigger a part: a point that is never read on
        its own (only by snapshots) never changes, so no part would ever be recorded. None if
        it can. Default: every point this kind has is reported."""
        return None

    def snapshot_issue(self, points: Sequence[str]) -> tuple[tuple[str | int, ...], str] | None:
        """Why ``points`` (all known to exist) cannot be read as one consistent snapshot for a
        part trigger, as (key path relative to the snapshot section, message); None if they
        can. Default: this kind cannot take snapshots."""
        return (
            ("device",),
            f"a {self.type} device cannot read a consistent snapshot; take the snapshot from "
            "a device that can (a PLC)",
        )

    def write_issue(self, point: str) -> str | None:
        """Why ``point`` (known to exist) cannot be written (PLC handshake bits); None if it
        can. Default: this kind writes nothing."""
        return f"a {self.type} device is never written to"

    def value_issue(self, point: str, value: Value) -> str | None:
        """Why ``value`` cannot be written to ``point`` (known to be writable), or None. A
        value the config names (a gate's interlock) is checked at load, not at the first
        refusal. Default: the device decides when written."""
        return None

    def identity(self) -> Hashable | None:
        """What identifies the physical device, so that two entries for one device (which
        would read it twice and record each value twice) are a config error."""
        return None

    def duplicate_issue(self, first: int) -> Issue:
        """The error for this entry when ``devices[first]`` has the same endpoint."""
        return (
            ("name",),
            f"same device as devices[{first}]: give each device one entry",
        )

    def scan_points(self) -> Sequence[str]:
        """Points whose values are identifications (barcodes, tags): each must be a scan
        source of a station, or its reads would be recorded as plain readings."""
        return []

    def acknowledges(self, point: str) -> bool:
        """Whether the device wants to hear that a scan of ``point`` was recorded (good read)
        or rejected (bad read), once the record is committed."""
        return False

    def read_trigger(self) -> tuple[tuple[str | int, ...], str, str] | None:
        """(key path of the setting, device, point) of the point whose rising edge makes the
        agent ask this device to read (``Driver.trigger_read``); None if none."""
        return None

    def commands(self) -> Sequence[str]:
        """Operator commands this device takes (``edge-agent device command``)."""
        return []

    def value_digits(self, point: str) -> int | None:
        """Significant decimal digits ``point``'s numbers carry: 7 for a 32-bit float source,
        15 for a 64-bit one (or integer arithmetic through a scale). Displays round to it, so
        a float32's 6.02 shows as 6.02, not 6.019999980926514. None: the kind cannot tell."""
        return None

    def bus(self) -> BusClaim | None:
        """The shared connection this device is reached through, if any."""
        return None

    def request_timeout(self) -> float:
        """Longest a single request to the device may take: bounds snapshot reads and writes
        a stopping agent waits for."""
        return 10.0
