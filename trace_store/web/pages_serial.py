"""The Serial page: what happened to one unit.

Its route through the stations on a timeline; each station visit with its part record(s)
(values, units, limits, OK/NOK, rework), scans, context changes and other trace records;
the visit's readings collapsed into one sparkline per value, the part's time marked; and the
genealogy both ways: what is in it (lots, components, recursively) and what it went into.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.responses import RedirectResponse, Response

from trace_store.export import out_of_limits, serial_table
from trace_store.queries import (
    READINGS_KINDS,
    PointStats,
    SerialTrace,
    StationVisit,
    reading_values,
    readings_summary,
    trace_forward,
    trace_materials,
    trace_serial,
)
from trace_store.report import readings_text, summary
from trace_store.storage import StoredRecord
from trace_store.web import params
from trace_store.web.app import Ctx, Page
from trace_store.web.export import stream
from trace_store.web.params import NotFound, parse_wire
from trace_store.web.svg import Span, sparkline, timeline

KINDS = (
    "part", "context", "context_restored", "scan", "consumption", "gap", "unobserved", "gate",
)  # fmt: skip
MAX_READING_ROWS = 200  # listed under a visit's chart; the CSV export has every one


@dataclass
class PartValue:
    name: str
    value: Any
    unit: str | None
    low: Any
    high: Any
    ok: bool | None
    quality: str | None
    error: str | None


@dataclass
class Event:
    record: StoredRecord
    text: str
    values: list[PartValue] = field(default_factory=list)

    @property
    def nok(self) -> bool:
        return self.record.body.get("result") == "nok" or bool(out_of_limits(self.record))


@dataclass
class Chart:
    device: str
    point: str
    unit: str | None
    count: int
    bad: int
    low: float | int | None
    high: float | int | None
    svg: Any


@dataclass
class VisitView:
    visit: StationVisit
    anchor: str
    result: str | None
    events: list[Event]
    readings: str | None  # the one-line summary, None when the visit has no readings
    charts: list[Chart]
    reading_rows: list[tuple[StoredRecord, str]]
    more_readings: int


def search(ctx: Ctx) -> Response:
    """A serial if one has records, else a lot if one was consumed, else a 404."""
    q = params.required(ctx.params, "q")
    if ctx.storage.serial_exists(q):
        return RedirectResponse(f"/serial?id={_q(q)}", status_code=303)
    if ctx.storage.edges_to("lot", [q]):
        return RedirectResponse(f"/lot?id={_q(q)}", status_code=303)
    if ctx.storage.edges_to("component", [q]):
        return RedirectResponse(f"/serial?id={_q(q)}", status_code=303)
    raise NotFound(f"Nothing is recorded for {q!r}: no serial and no lot by that name.")


def serial_page(ctx: Ctx) -> Page:
    serial = params.required(ctx.params, "id")
    kinds = _kinds(ctx)
    trace = trace_serial(ctx.storage, serial)
    materials = trace_materials(ctx.storage, serial)
    into = trace_forward(ctx.storage, serial)
    if not trace.found and not materials.found:
        raise NotFound(f"No records for serial {serial!r}.")
    visits = [_visit_view(v, i, kinds) for i, v in enumerate(trace.visits)]
    return Page(
        "serial.html",
        {
            "serial": serial,
            "trace": trace,
            "overview": _overview(trace),
            "timeline": _timeline(trace, visits),
            "visits": visits,
            "materials": materials,
            "into": into,
            "kinds": KINDS,
            "chosen": kinds,
            "readings_listed": bool(kinds & READINGS_KINDS),
        },
        f"Serial {serial}",
    )


def export(ctx: Ctx) -> Response:
    serial = params.required(ctx.params, "id")
    fmt = params.choice(ctx.params, "format", ("csv", "xlsx"))
    kinds = frozenset(_kinds(ctx)) if ctx.params.getlist("kind") else None
    trace = trace_serial(ctx.storage, serial)
    if not trace.found:
        raise NotFound(f"No records for serial {serial!r}.")
    # One serial's records are bounded (a trace held in memory anyway); the file is streamed.
    return stream(ctx.pool, lambda _: serial_table(trace, kinds), fmt, f"serial-{serial}")


# ---- building the view ---------------------------------------------------------------------------


def _kinds(ctx: Ctx) -> frozenset[str]:
    chosen = ctx.params.getlist("kind")
    known = (*KINDS, *READINGS_KINDS)
    for kind in chosen:
        if kind not in known:
            raise params.BadParameter("kind", f"{kind[:40]!r} is not a record kind")
    return frozenset(chosen) if chosen else frozenset(KINDS)


def _overview(trace: SerialTrace) -> dict[str, Any]:
    parts = [r for v in trace.visits for r in v.records if r.kind == "part"]
    parts.sort(key=lambda r: (r.ts, r.agent, r.seq))
    last = parts[-1] if parts else None
    ctx = (last.body.get("ctx") if last else None) or {}
    ctx = ctx if isinstance(ctx, dict) else {}
    return {
        "result": last.body.get("result") if last else None,
        "parts": len(parts),
        "nok": sum(1 for r in parts if r.body.get("result") == "nok"),
        "reworks": sum(1 for r in parts if r.body.get("repeat")),
        "product": ctx.get("product"),
        "work_order": ctx.get("work_order"),
        "lot": ctx.get("lot"),
        "stations": list(dict.fromkeys(v.station for v in trace.visits)),
        "first": trace.visits[0].first_ts if trace.visits else None,
        "last": trace.visits[-1].last_ts if trace.visits else None,
    }


def _timeline(trace: SerialTrace, visits: list[VisitView]) -> Any:
    spans = [
        Span(
            v.visit.station,
            parse_wire(v.visit.first_ts).timestamp(),
            parse_wire(v.visit.last_ts).timestamp(),
            v.result or "none",
            f"#{v.anchor}",
        )
        for v in visits
    ]
    return timeline(spans)


def _visit_view(visit: StationVisit, index: int, kinds: frozenset[str]) -> VisitView:
    events = [
        Event(r, summary(r), _part_values(r) if r.kind == "part" else [])
        for r in visit.records
        if r.kind in kinds and r.kind not in READINGS_KINDS
    ]
    parts = [r for r in visit.records if r.kind == "part"]
    result = parts[-1].body.get("result") if parts else None
    collapsed = readings_summary(visit.records)
    readings = [r for r in visit.records if r.kind in READINGS_KINDS]
    listed = kinds & READINGS_KINDS
    rows = [(r, summary(r)) for r in readings[:MAX_READING_ROWS]] if listed else []
    return VisitView(
        visit,
        f"visit-{index + 1}",
        result if isinstance(result, str) else None,
        events,
        readings_text(collapsed).removesuffix(" (--kind readings lists them)")
        if collapsed
        else None,
        _charts(readings, parts),
        rows,
        max(0, len(readings) - len(rows)) if listed else 0,
    )


def _charts(readings: list[StoredRecord], parts: list[StoredRecord]) -> list[Chart]:
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    stats: dict[tuple[str, str], PointStats] = {}
    for record in readings:
        t = parse_wire(record.ts).timestamp()
        for device, point, value, quality, unit in reading_values(record):
            key = (device, point)
            if key not in stats:
                stats[key] = PointStats(device, point)
                series[key] = []
            stats[key].unit = stats[key].unit or unit
            stats[key].add(value, quality)
            if isinstance(value, int | float) and not isinstance(value, bool):
                series[key].append((t, float(value)))
    marks = [parse_wire(p.ts).timestamp() for p in parts]
    return [
        Chart(
            s.device,
            s.point,
            s.unit,
            s.count,
            s.bad,
            s.low,
            s.high,
            sparkline(series[key], marks, title=f"{s.device}.{s.point}"),
        )
        for key, s in stats.items()
    ]


def _part_values(record: StoredRecord) -> list[PartValue]:
    values = record.body.get("values")
    if not isinstance(values, dict):
        return []
    out = []
    for name, v in values.items():
        if not isinstance(v, dict):
            out.append(PartValue(name, v, None, None, None, None, None, None))
            continue
        out.append(
            PartValue(
                name,
                v.get("value"),
                v.get("unit"),
                v.get("min"),
                v.get("max"),
                v.get("ok") if isinstance(v.get("ok"), bool) else None,
                v.get("quality"),
                v.get("error"),
            )
        )
    return out


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
