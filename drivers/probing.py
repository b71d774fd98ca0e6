"""What a commissioning probe found: one result type for every kind of device.

A kind's probe (``DriverKind.probe``) fills these; ``edge_agent.probe`` runs the probes and
prints them as a table or JSON, knowing nothing of the kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernel.model import DeviceState, Quality, Value


@dataclass(frozen=True, slots=True)
class PointProbe:
    """One point as the probe read it."""

    name: str
    table: str
    """Where the point lives: a Modbus table, an OPC UA browse name."""
    address: int | str
    """As written in the YAML."""
    protocol_address: int | str
    """On the wire: Modbus ``address - address_base``, the NodeId an OPC UA path resolved to."""
    type: str
    raw: tuple[int, ...] | tuple[bool, ...] | str | None
    """What came back before decoding: registers or bits; an OPC UA status code's name;
    None if nothing came for it."""
    value: Value
    unit: str | None
    quality: Quality
    latency: float | None
    """Seconds from sending the request that carried the point to its answer."""
    request: str | None
    """That request, e.g. ``holding 0+64``; ``holding 66+1 alone`` after a split."""
    error: str | None = None
    """Why the point is not good, explained."""
    details: dict[str, Any] = field(default_factory=dict)
    """Kind-specific facts for ``--json`` (OPC UA: source and server timestamps)."""

    @property
    def ok(self) -> bool:
        return self.quality is Quality.GOOD


@dataclass(slots=True)
class DeviceProbe:
    """One device as the probe found it."""

    name: str
    type: str
    endpoint: str
    """Where the device was reached, as the table's header shows it (``10.0.0.5:502  unit 1``)."""
    timeout: float
    details: dict[str, Any] = field(default_factory=dict)
    """Kind-specific facts for ``--json`` (host, port, unit_id, ...), in the order given."""
    connected: bool = False
    connect_latency: float | None = None
    """Seconds to open the connection (connect_delay not included)."""
    error: str | None = None
    """Why the device could not be probed at all, or why probing stopped early."""
    points: list[PointProbe] = field(default_factory=list)
    """Every point in config order; empty when the connection could not be opened."""
    notes: list[str] = field(default_factory=list)
    """Warnings about the device as a whole (e.g. a coalesced request the poll will fail)."""
    requests: int = 0
    """Requests sent."""

    @property
    def ok(self) -> bool:
        return self.connected and self.error is None and all(p.ok for p in self.points)

    @property
    def state(self) -> DeviceState:
        """UP: every point good; DEGRADED: some points bad; DOWN: the device is unreachable."""
        if not self.connected or self.error is not None:
            return DeviceState.DOWN
        return DeviceState.UP if self.ok else DeviceState.DEGRADED

    @property
    def summary(self) -> str:
        good = sum(p.ok for p in self.points)
        counts = f"{good} of {len(self.points)} points good"
        if not self.connected:
            return f"{self.state.value}: {self.error}"
        if self.error is not None:
            return f"{self.state.value}: {counts}; {self.error}"
        return f"{self.state.value}: {counts}"
