"""Recall queries: the two questions traceability exists for (docs/trace-store.md).

- ``trace_serial``: everything recorded about one serial, station by station.
- ``trace_lot`` (forward): every serial that consumed a lot, directly (a consumption record,
  or a part record made while the station's context lot was it) and then, recursively, every
  serial that consumed one of those as a component. That list is the recall.
- ``trace_materials`` (backward): every lot and component built into a serial, recursively
  through its components.

Ordering: within one agent records are in ``seq`` order, the only order the wire format
promises; timestamps only order what different agents recorded (a serial that crossed lines).
"""

from __future__ import annotations

from dataclasses import dataclass

from trace_store.storage import Storage, StoredEdge, StoredRecord


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
    records = storage.records_of_serial(serial)  # by agent, then seq
    first_ts: dict[str, str] = {}
    for record in records:
        first_ts.setdefault(record.agent, record.ts)  # the agent's first record, by seq
    records.sort(key=lambda r: (first_ts[r.agent], r.agent, r.seq))
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


def trace_lot(storage: Storage, lot: str) -> LotTrace:
    found: dict[str, Affected] = {}
    edges = storage.edges_to("lot", [lot])
    depth = 1
    while edges:
        reached: list[str] = []
        for edge in edges:  # by time: the first edge to reach a serial explains it
            if edge.parent not in found:
                found[edge.parent] = Affected(edge.parent, depth, edge)
                reached.append(edge.parent)
        if not reached:
            break
        edges = storage.edges_to("component", reached)
        depth += 1
    return LotTrace(lot, tuple(found.values()))


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
