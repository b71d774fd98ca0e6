"""Recall queries: the two questions traceability exists for (docs/trace-store.md).

- ``trace_serial``: everything recorded about one serial, station by station.
- ``trace_lot`` (forward): every serial that consumed a lot, directly (a consumption record,
  or a part record made while the station's context lot was it) and then, recursively, every
  serial that consumed one of those as a component. That list is the recall.
- ``trace_materials`` (backward): every lot and component built into a serial, recursively
  through its components.

Ordering: within one agent's journal epoch records are in ``seq`` order, the only order the
wire format promises; timestamps only order different streams (another agent: a serial that
crossed lines; another journal epoch of the same agent).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from trace_store.facts import PartSummary, part_summaries
from trace_store.storage import CHUNK, Storage, StoredEdge, StoredRecord

READINGS_KINDS = frozenset({"readings", "reading"})
"""Continuous telemetry: collapsed into a summary per station visit unless asked for."""


@dataclass(frozen=True, slots=True)
class StationVisit:
    """Consecutive records of one serial at one station (a later rework visit to the same
    station is a visit of its own)."""

    station: str
    site: str
    line: str
    agent: str
    records: tuple[StoredRecord, ...]

    @property
    def first_ts(self) -> str:
        return self.records[0].ts

    @property
    def last_ts(self) -> str:
        return self.records[-1].ts


@dataclass(frozen=True, slots=True)
class SerialTrace:
    serial: str
    visits: tuple[StationVisit, ...]
    used_in: tuple[StoredEdge, ...]  # this serial consumed as a component into another

    @property
    def found(self) -> bool:
        return bool(self.visits or self.used_in)

    @property
    def records(self) -> int:
        return sum(len(v.records) for v in self.visits)


@dataclass(frozen=True, slots=True)
class Affected:
    """A serial in a lot's recall list. ``edge`` is how it was reached first: its ``child``
    is the lot (depth 1) or the component serial (deeper) it consumed."""

    serial: str
    depth: int
    edge: StoredEdge


@dataclass(frozen=True, slots=True)
class LotTrace:
    lot: str
    serials: tuple[Affected, ...]
    # Filled by ``trace_lot(..., details=True)``: each serial's part summary, and the serials
    # it was consumed into as a component.
    parts: dict[str, PartSummary] = field(default_factory=dict)
    used_in: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return bool(self.serials)


@dataclass(frozen=True, slots=True)
class Material:
    """A lot or component in a serial. ``edge.parent`` is the serial it went into (the serial
    asked about at depth 1, one of its components deeper)."""

    depth: int
    edge: StoredEdge

    @property
    def kind(self) -> str:
        return self.edge.child_kind

    @property
    def id(self) -> str:
        return self.edge.child


@dataclass(frozen=True, slots=True)
class MaterialsTrace:
    serial: str
    materials: tuple[Material, ...]

    @property
    def found(self) -> bool:
        return bool(self.materials)


def trace_serial(storage: Storage, serial: str) -> SerialTrace:
    records = storage.records_of_serial(serial)
    # Seq orders records within one journal epoch only (two journal files of one agent, or two
    # openings of one file, number from overlapping seqs): each (agent, epoch) stream is in seq
    # order, and streams are ordered by their first record's time.
    records.sort(key=lambda r: (r.agent, r.epoch, r.seq))
    first_ts: dict[tuple[str, str], str] = {}
    for record in records:
        first_ts.setdefault((record.agent, record.epoch), record.ts)
    records.sort(key=lambda r: (first_ts[(r.agent, r.epoch)], r.agent, r.epoch, r.seq))
    visits: list[StationVisit] = []
    run: list[StoredRecord] = []
    for record in records:
        if run and (run[-1].agent, run[-1].station) != (record.agent, record.station):
            visits.append(_visit(run))
            run = []
        run.append(record)
    if run:
        visits.append(_visit(run))
    return SerialTrace(serial, tuple(visits), tuple(storage.edges_to("component", [serial])))


def trace_lot(storage: Storage, lot: str, *, details: bool = False) -> LotTrace:
    """The recall list; with ``details`` also every serial's part summary (one indexed query
    per 500 serials) and where it was consumed (found on the way)."""
    serials, used = forward_used(storage, storage.edges_to("lot", [lot]))
    if not details:
        return LotTrace(lot, serials)
    parts: dict[str, PartSummary] = {}
    for chunk in chunks([a.serial for a in serials]):
        parts.update(part_summaries(storage, chunk))
    return LotTrace(lot, serials, parts, used)


def trace_forward(storage: Storage, serial: str) -> tuple[Affected, ...]:
    """Every serial ``serial`` went into as a component, and what those went into."""
    return _forward(storage, storage.edges_to("component", [serial]), exclude=serial)


def _forward(
    storage: Storage, edges: list[StoredEdge], exclude: str | None = None
) -> tuple[Affected, ...]:
    return forward_used(storage, edges, exclude)[0]


def forward_used(
    storage: Storage, edges: list[StoredEdge], exclude: str | None = None
) -> tuple[tuple[Affected, ...], dict[str, tuple[str, ...]]]:
    """The serials ``edges`` lead to, then what those went into, and so on; and, for each
    serial reached, the serials it was consumed into (by time): every reached serial's
    consumers are read once, by the walk itself."""
    found: dict[str, Affected] = {}
    used: dict[str, list[str]] = {}
    depth = 1
    while edges:
        reached: list[str] = []
        for edge in edges:  # by time: the first edge to reach a serial explains it
            if depth > 1:
                into = used.setdefault(edge.child, [])
                if edge.parent not in into:
                    into.append(edge.parent)
            if edge.parent not in found and edge.parent != exclude:
                found[edge.parent] = Affected(edge.parent, depth, edge)
                reached.append(edge.parent)
        if not reached:
            break
        edges = storage.edges_to("component", reached)
        depth += 1
    return tuple(found.values()), {k: tuple(v) for k, v in used.items()}


def chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def trace_materials(storage: Storage, serial: str) -> MaterialsTrace:
    materials: list[Material] = []
    seen: set[tuple[str, str, str]] = set()
    visited = {serial}  # components already expanded (guards against cycles in bad data)
    frontier = [serial]
    depth = 1
    while frontier:
        reached: list[str] = []
        for edge in storage.edges_from(frontier):
            key = (edge.parent, edge.child_kind, edge.child)
            if key in seen:
                continue  # the same lot at every part record of a station: listed once
            seen.add(key)
            materials.append(Material(depth, edge))
            if edge.child_kind == "component" and edge.child not in visited:
                visited.add(edge.child)
                reached.append(edge.child)
        frontier = reached
        depth += 1
    return MaterialsTrace(serial, tuple(materials))


def _visit(run: list[StoredRecord]) -> StationVisit:
    first = run[0]
    return StationVisit(first.station, first.site, first.line, first.agent, tuple(run))


# ---- readings, collapsed ----------------------------------------------------------------------


@dataclass(slots=True)
class PointStats:
    """One point's values in a run of readings: numbers give min and max, anything else only
    counts; ``bad`` counts values without a good quality."""

    device: str
    point: str
    unit: str | None = None
    count: int = 0
    bad: int = 0
    low: float | int | None = None  # an int stays an int: a counter is not shown as 17.0
    high: float | int | None = None
    last: Any = None

    def add(self, value: Any, quality: Any) -> None:
        self.count += 1
        if quality not in (None, "good") or value is None:
            self.bad += 1
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.low = value if self.low is None else min(self.low, value)
            self.high = value if self.high is None else max(self.high, value)
        if value is not None:
            self.last = value


@dataclass(frozen=True, slots=True)
class ReadingsSummary:
    records: int
    first_ts: str
    last_ts: str
    first_seq: int
    last_seq: int
    points: tuple[PointStats, ...]


def readings_summary(records: Sequence[StoredRecord]) -> ReadingsSummary | None:
    """Count and min/max per device point of the ``readings`` (and v1 ``reading``) records
    among ``records``; None when there are none."""
    runs = [r for r in records if r.kind in READINGS_KINDS]
    if not runs:
        return None
    points: dict[tuple[str, str], PointStats] = {}
    for record in runs:
        for device, point, value, quality, unit in reading_values(record):
            stats = points.get((device, point))
            if stats is None:
                stats = points[(device, point)] = PointStats(device, point)
            stats.unit = stats.unit or unit
            stats.add(value, quality)
    return ReadingsSummary(
        len(runs),
        runs[0].ts,
        runs[-1].ts,
        runs[0].seq,
        runs[-1].seq,
        tuple(points.values()),
    )


def reading_values(record: StoredRecord) -> Iterator[tuple[str, str, Any, Any, str | None]]:
    """(device, point, value, quality, unit) of each value in a readings or reading record."""
    b = record.body
    device = str(b.get("device"))
    if record.kind == "reading":
        unit = b.get("unit")
        yield device, str(b.get("point")), b.get("value"), b.get("quality"), _text(unit)
        return
    values = b.get("values")
    if not isinstance(values, dict):
        return
    units, quality = (_mapping(b.get(k)) for k in ("units", "quality"))
    for point, value in values.items():
        yield device, str(point), value, quality.get(point), _text(units.get(point))


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
