"""The recall scope of a block: every serial the blocked lot, serial or product went into,
forward through sub-assemblies (``queries.trace_lot`` / ``trace_forward``), with where each
serial was last seen. Kept as a report (``blocks.py`` stores it with the block) that can be
exported and signed off.

"Last seen" is the newest of: the serial's latest part record, the genealogy edge that
brought it into the scope, and its consumption into another serial. The store knows nothing
of a serial beyond its records (shipping is not in it).
A product's scope is the serials that consumed material of that product (the genealogy's
``product``) and what they went into; serials *made as* that product are not listed, as the
store has no index of part records by product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from trace_store import queries
from trace_store.export import Table
from trace_store.facts import PartSummary, part_summaries
from trace_store.storage import Storage


@dataclass(frozen=True, slots=True)
class ScopeRow:
    """One serial in a recall scope. ``depth`` 0 is a blocked serial itself, 1 consumed the
    blocked material directly, deeper through components; ``via`` is what it consumed."""

    serial: str
    depth: int
    via: str
    how: str
    product: str | None
    result: str | None
    last_station: str
    last_line: str
    last_ts: str
    last_agent: str
    consumed_into: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["consumed_into"] = list(self.consumed_into)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ScopeRow:
        return cls(**{**d, "consumed_into": tuple(d.get("consumed_into") or ())})


HEADERS = (
    "serial",
    "depth",
    "via",
    "how",
    "product",
    "result",
    "last_station",
    "last_line",
    "last_ts",
    "last_agent",
    "consumed_into",
)


def recall_scope(storage: Storage, kind: str, key: str) -> list[ScopeRow]:
    """Every serial affected by blocking ``key`` (a ``kind`` of ``tables.KINDS``)."""
    affected: list[queries.Affected]
    own: list[str] = []
    if kind == "lot":
        affected = list(queries.trace_lot(storage, key).serials)
    elif kind == "serial":
        affected = list(queries.trace_forward(storage, key))
        own = [key] if storage.serial_exists(key) else []
    else:
        # ``_edges`` is the storage's generic lookup; a product has no edge kind of its own.
        edges = storage._edges("product", [key])
        affected = list(queries._forward(storage, edges))
    serials = own + [a.serial for a in affected]
    parts: dict[str, PartSummary] = {}
    used: dict[str, list[str]] = {}
    seen: dict[str, _Seen] = {}  # where each serial was last consumed as a component
    for chunk in queries.chunks(serials):
        parts.update(part_summaries(storage, chunk))
        for edge in storage.edges_to("component", chunk):  # by time
            into = used.setdefault(edge.child, [])
            if edge.parent not in into:
                into.append(edge.parent)
            seen[edge.child] = _Seen(edge.ts, edge.station, edge.line, edge.agent)
    rows = []
    for serial in own:
        last = _later(seen.get(serial), parts.get(serial), _Seen("", "", "", ""))
        rows.append(_row(serial, 0, serial, "blocked", parts.get(serial), used, last))
    for a in affected:
        e = a.edge
        last = _later(
            seen.get(a.serial), parts.get(a.serial), _Seen(e.ts, e.station, e.line, e.agent)
        )
        rows.append(_row(a.serial, a.depth, e.child, e.how, parts.get(a.serial), used, last))
    return rows


def known(storage: Storage, kind: str, key: str) -> bool:
    """Does the store hold anything of ``key`` yet?"""
    if kind == "lot":
        return bool(storage.edges_to("lot", [key]))
    if kind == "serial":
        return storage.serial_exists(key) or bool(storage.edges_to("component", [key]))
    return bool(storage._edges("product", [key]))


def table(rows: Sequence[ScopeRow], name: str) -> Table:
    """The scope as a spreadsheet (``export.write_csv`` / ``write_xlsx``)."""
    return Table(
        HEADERS,
        (
            [
                r.serial,
                r.depth,
                r.via,
                r.how,
                r.product,
                r.result,
                r.last_station,
                r.last_line,
                r.last_ts,
                r.last_agent,
                " ".join(r.consumed_into),
            ]
            for r in rows
        ),
        name,
    )


@dataclass(frozen=True, slots=True)
class _Seen:
    ts: str
    station: str
    line: str
    agent: str


def _later(consumed: _Seen | None, part: PartSummary | None, edge: _Seen) -> _Seen:
    """The newest of: where it was consumed into another serial, its latest part record,
    the edge that brought it into the scope."""
    best = edge
    if part is not None and part.ts > best.ts:
        best = _Seen(part.ts, part.station, best.line, best.agent)
    if consumed is not None and consumed.ts > best.ts:
        best = consumed
    return best


def _row(
    serial: str,
    depth: int,
    via: str,
    how: str,
    part: PartSummary | None,
    used: dict[str, list[str]],
    last: _Seen,
) -> ScopeRow:
    return ScopeRow(
        serial,
        depth,
        via,
        how,
        part.product if part is not None else None,
        part.result if part is not None else None,
        last.station,
        last.line,
        last.ts,
        last.agent,
        tuple(used.get(serial, ())),
    )
