"""Query results as text: ``table`` for people, ``json`` for programs, ``csv`` for
spreadsheets (one row per item, one column per value: ``trace_store.export``, which also
writes XLSX).

Numbers are shown as precise as their source is (``kernel.precision``): a float64's
6.0200000000000005 is 6.02. ``trace serial`` lists continuous telemetry (``readings``)
collapsed, one summary per station visit (count, min..max per value), unless ``kinds`` asks
for them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

from kernel.precision import shown
from kernel.precision import text as number_text
from trace_store.export import csv_chunks, how, lot_table, materials_table, serial_table
from trace_store.queries import (
    READINGS_KINDS,
    LotTrace,
    MaterialsTrace,
    ReadingsSummary,
    SerialTrace,
    StationVisit,
    readings_summary,
)
from trace_store.storage import StoredEdge, StoredRecord

FORMATS = ("table", "json", "csv")

Trace = SerialTrace | LotTrace | MaterialsTrace


def render(trace: Trace, fmt: str, kinds: frozenset[str] | None = None) -> str:
    """``trace`` in ``fmt``; ``kinds`` (serial only) keeps the records of these kinds, and
    lists readings one by one when it names them."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if isinstance(trace, SerialTrace):
        if fmt == "table":
            return _serial_table(trace, kinds)
        if fmt == "json":
            return _serial_json(trace, kinds)
        return "".join(csv_chunks(serial_table(trace, kinds)))
    if isinstance(trace, LotTrace):
        if fmt == "csv":
            return "".join(csv_chunks(lot_table(trace)))
        return {"table": _lot_table, "json": _lot_json}[fmt](trace)
    if fmt == "csv":
        return "".join(csv_chunks(materials_table(trace)))
    return {"table": _materials_table, "json": _materials_json}[fmt](trace)


def nothing_found(trace: Trace, kinds: frozenset[str] | None = None) -> str:
    if isinstance(trace, SerialTrace):
        if kinds and trace.found:
            return f"no {'/'.join(sorted(kinds))} records for serial {trace.serial!r}"
        return f"no records for serial {trace.serial!r}"
    if isinstance(trace, LotTrace):
        return f"no serial consumed lot {trace.lot!r}"
    return f"no lots or components recorded for serial {trace.serial!r}"


def shown_records(visit: StationVisit, kinds: frozenset[str] | None) -> list[StoredRecord]:
    """The visit's records a report lists: those of ``kinds``, or everything but readings."""
    if kinds:
        return [r for r in visit.records if r.kind in kinds]
    return [r for r in visit.records if r.kind not in READINGS_KINDS]


# ---- one record in one line ------------------------------------------------------------------


def summary(record: StoredRecord) -> str:
    """What a person needs from a record body, in one line."""
    b = record.body
    kind = record.kind
    if kind == "part":
        values = b.get("values")
        if not isinstance(values, dict):
            values = {}
        parts = [f"result {_v(b.get('result'))}", f"quality {_v(b.get('quality'))}"]
        parts += [_value(name, v) for name, v in values.items()]
        if b.get("cycle_time") is not None:
            parts.append(f"cycle {_v(b.get('cycle_time'))} s")
        if b.get("counter") is not None:
            parts.append(f"counter {_v(b.get('counter'))}")
        if b.get("repeat"):
            parts.append(f"repeat {_v(b.get('repeat'))}")
        return _with_error(", ".join(parts), b)
    if kind == "consumption":
        what = " ".join(f"{key} {b[key]}" for key in ("lot", "component", "product") if b.get(key))
        if b.get("quantity") is not None:
            what += f", {_v(b.get('quantity'))} {b.get('unit') or ''}".rstrip()
        return _with_error(f"consumed {what or '?'} ({_v(b.get('quality'))})", b)
    if kind == "context":
        text = f"{b.get('key')} = {_v(b.get('value'))} (was {_v(b.get('previous'))})"
        source = b.get("source")
        if isinstance(source, dict):
            if source.get("manual"):
                text += f", set by {source.get('user') or 'hand'}"
            elif source.get("device"):
                text += f", from {source.get('device')}.{source.get('point')}"
        return text
    if kind == "context_restored":
        return f"context restored: {_compact(b.get('ctx'))}"
    if kind == "readings":
        return _readings(b)
    if kind == "reading":
        unit = f" {b['unit']}" if b.get("unit") else ""
        text = f"{b.get('device')}.{b.get('point')} = {_v(b.get('value'))}{unit}"
        return _with_error(f"{text} ({_v(b.get('quality'))})", b)
    if kind == "scan":
        text = f"scan {_v(b.get('text'))!s} {_v(b.get('status'))}"
        if b.get("rule"):
            text += f" by rule {b.get('rule')}"
        return _with_error(text, b)
    if kind == "gap":
        missed = b.get("missed")
        count = "an unknown number of" if missed is None else _v(missed)
        return (
            f"counter {_v(b.get('previous'))} -> {_v(b.get('counter'))}: "
            f"{count} part(s) without a record"
        )
    if kind == "unobserved":
        points = b.get("points")
        names = ", ".join(map(str, points)) if isinstance(points, list) else _v(points)
        since = b.get("since") or "the previous value"
        return (
            f"{b.get('device')}: changes of {names} from {since} to {_v(b.get('until'))} "
            f"may be missing ({_v(b.get('reason'))})"
        )
    if kind == "gate":  # a station gate's decision (docs/quality.md)
        what = " ".join(f"{k} {b[k]}" for k in ("lot", "serial", "text") if b.get(k))
        return f"gate {_v(b.get('decision'))} ({_v(b.get('check'))}) {what}: {_v(b.get('reason'))}"
    rest = {k: v for k, v in b.items() if k not in ("seq", "kind", "station", "ts", "ctx")}
    return _compact(rest)


def _readings(b: dict[str, Any]) -> str:
    values = b.get("values")
    if not isinstance(values, dict):
        return _compact(values)
    side: dict[str, dict[str, Any]] = {}
    for key in SIDE_MAPS:
        value = b.get(key)
        side[key] = value if isinstance(value, dict) else {}
    items = []
    for point, value in values.items():
        text = f"{point}={_v(value)}"
        if side["units"].get(point):
            text += f" {side['units'][point]}"
        quality = side["quality"].get(point)
        if quality not in (None, "good"):
            text += f" ({quality}"
            text += f": {side['errors'][point]})" if side["errors"].get(point) else ")"
        items.append(text)
    return f"{b.get('device')}: " + ", ".join(items)


SIDE_MAPS = ("units", "quality", "errors")


def _value(name: str, v: Any) -> str:
    if not isinstance(v, dict):
        return f"{name}={_v(v)}"
    text = f"{name}={_v(v.get('value'))}"
    if v.get("unit"):
        text += f" {v['unit']}"
    if v.get("min") is not None or v.get("max") is not None:
        text += f" [{_v(v.get('min'))}..{_v(v.get('max'))}]"
    if v.get("ok") is False:
        text += " NOK"
    if v.get("quality") not in (None, "good"):
        text += f" ({v.get('quality')})"
    return text


def _with_error(text: str, body: dict[str, Any]) -> str:
    return f"{text}: {body['error']}" if body.get("error") else text


def _v(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return number_text(value)
    return str(value)


def _compact(value: Any) -> str:
    return json.dumps(_rounded(value), separators=(",", ":"), ensure_ascii=False)


def _rounded(value: Any) -> Any:
    """``value`` with every float in it rounded to its precision (for JSON output)."""
    if isinstance(value, float):
        return shown(value)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def readings_text(summary: ReadingsSummary) -> str:
    """A station visit's readings in one line: count, time span, min..max per value."""
    by_device: dict[str, list[str]] = {}
    for p in summary.points:
        if p.low is None:
            text = f"{p.point} {_v(p.last)}"
        elif p.low == p.high:
            text = f"{p.point} {_v(p.low)}"
        else:
            text = f"{p.point} {_v(p.low)}..{_v(p.high)}"
        if p.unit and p.low is not None:
            text += f" {p.unit}"
        if p.bad:
            text += f" ({p.bad} bad)"
        by_device.setdefault(p.device, []).append(text)
    values = "; ".join(f"{d}: {', '.join(t)}" for d, t in by_device.items())
    span = "" if summary.records == 1 else f" until {summary.last_ts}"
    return f"{summary.records} record(s){span}: {values} (--kind readings lists them)"


# ---- serial --------------------------------------------------------------------------------


def _serial_table(trace: SerialTrace, kinds: frozenset[str] | None) -> str:
    out = io.StringIO()
    if trace.visits:
        stations = len({(v.agent, v.station) for v in trace.visits})
        out.write(
            f"serial {trace.serial}: {trace.records} record(s) at {stations} station(s), "
            f"{trace.visits[0].first_ts} .. {trace.visits[-1].last_ts}\n"
        )
    else:
        out.write(f"serial {trace.serial}: no records of its own\n")
    collapse = not kinds or not (kinds & READINGS_KINDS)
    for visit in trace.visits:
        listed = shown_records(visit, kinds)
        collapsed = readings_summary(visit.records) if collapse and not kinds else None
        if not listed and collapsed is None:
            continue
        out.write(
            f"\n{visit.station}  ({visit.site}/{visit.line}, agent {visit.agent})  "
            f"{visit.first_ts} .. {visit.last_ts}\n"
        )
        rows = [(r.ts, str(r.seq), r.kind, summary(r)) for r in listed]
        if collapsed is not None:
            row = (
                collapsed.first_ts,
                str(collapsed.first_seq),
                "readings",
                readings_text(collapsed),
            )
            at = next((i for i, r in enumerate(listed) if r.seq > collapsed.first_seq), len(rows))
            rows.insert(at, row)
        out.write(_table(("time", "seq", "kind", "details"), rows, indent="  "))
    if trace.used_in:
        out.write("\nused as a component in:\n")
        used = [
            (e.parent, e.station, f"{e.site}/{e.line}", e.agent, str(e.seq), e.ts)
            for e in trace.used_in
        ]
        out.write(_table(("serial", "station", "line", "agent", "seq", "time"), used, "  "))
    return out.getvalue()


def _serial_json(trace: SerialTrace, kinds: frozenset[str] | None) -> str:
    stations = []
    for v in trace.visits:
        entry: dict[str, Any] = {
            "station": v.station,
            "site": v.site,
            "line": v.line,
            "agent": v.agent,
            "first_ts": v.first_ts,
            "last_ts": v.last_ts,
            "records": [_record_json(r) for r in shown_records(v, kinds)],
        }
        collapsed = readings_summary(v.records) if not kinds else None
        if collapsed is not None:
            entry["readings"] = _readings_json(collapsed)
        if entry["records"] or "readings" in entry:
            stations.append(entry)
    doc = {
        "serial": trace.serial,
        "records": trace.records,
        "stations": stations,
        "used_in": [_edge_json(e) | {"serial": e.parent} for e in trace.used_in],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _readings_json(summary: ReadingsSummary) -> dict[str, Any]:
    return {
        "records": summary.records,
        "first_ts": summary.first_ts,
        "last_ts": summary.last_ts,
        "first_seq": summary.first_seq,
        "last_seq": summary.last_seq,
        "points": [
            {
                "device": p.device,
                "point": p.point,
                "unit": p.unit,
                "count": p.count,
                "bad": p.bad,
                "min": _rounded(p.low),
                "max": _rounded(p.high),
            }
            for p in summary.points
        ],
    }


def _record_json(r: StoredRecord) -> dict[str, Any]:
    return {"agent": r.agent, "seq": r.seq, "kind": r.kind, "ts": r.ts, "body": _rounded(r.body)}


# ---- lot -----------------------------------------------------------------------------------


def _lot_table(trace: LotTrace) -> str:
    direct = sum(1 for a in trace.serials if a.depth == 1)
    results = _result_counts(trace)
    header = (
        f"lot {trace.lot}: {len(trace.serials)} serial(s) affected "
        f"({direct} consumed it directly, {len(trace.serials) - direct} through components)"
        + (f"; {results}" if results else "")
        + "\n"
    )
    rows = []
    for a in trace.serials:
        part = trace.parts.get(a.serial)
        rows.append(
            (
                a.serial,
                str(a.depth),
                a.edge.child,
                how(a.edge),
                _upper(part.result if part else None),
                (part.product if part else None) or "",
                (part.work_order if part else None) or "",
                a.edge.station,
                f"{a.edge.site}/{a.edge.line}",
                a.edge.agent,
                str(a.edge.seq),
                a.edge.ts,
                ", ".join(trace.used_in.get(a.serial, ())),
            )
        )
    headers = (
        "serial", "depth", "via", "how", "result", "product", "work_order", "station", "line",
        "agent", "seq", "time", "consumed_into",
    )  # fmt: skip
    return header + _table(headers, rows)


def _result_counts(trace: LotTrace) -> str:
    """``4 OK, 1 NOK, 2 without a part record``; empty when part summaries were not asked."""
    if not trace.parts and not trace.used_in:
        return ""
    counts: dict[str, int] = {}
    for a in trace.serials:
        part = trace.parts.get(a.serial)
        key = _upper(part.result) if part else "no part record"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def _upper(result: str | None) -> str:
    return "-" if result is None else result.upper()


def _lot_json(trace: LotTrace) -> str:
    serials = []
    for a in trace.serials:
        part = trace.parts.get(a.serial)
        entry = {"serial": a.serial, "depth": a.depth, "via": a.edge.child, "how": how(a.edge)}
        entry |= _edge_json(a.edge)
        # The edge's product is the consumed item's; the serial's own is its context's.
        entry["consumed_product"] = entry.pop("product")
        entry |= {
            "product": part.product if part else None,
            "result": part.result if part else None,
            "work_order": part.work_order if part else None,
            "consumed_into": list(trace.used_in.get(a.serial, ())),
        }
        serials.append(entry)
    return json.dumps({"lot": trace.lot, "serials": serials}, indent=2, ensure_ascii=False) + "\n"


# ---- materials -------------------------------------------------------------------------------


def _materials_table(trace: MaterialsTrace) -> str:
    lots = sum(1 for m in trace.materials if m.kind == "lot")
    header = (
        f"serial {trace.serial}: {len(trace.materials)} material(s) "
        f"({lots} lot(s), {len(trace.materials) - lots} component(s))\n"
    )
    rows = [
        (
            str(m.depth),
            m.kind,
            m.id,
            m.edge.parent,
            how(m.edge),
            m.edge.product or "",
            _quantity(m.edge),
            m.edge.station,
            m.edge.agent,
            str(m.edge.seq),
            m.edge.ts,
        )
        for m in trace.materials
    ]
    headers = (
        "depth",
        "kind",
        "id",
        "into",
        "how",
        "product",
        "quantity",
        "station",
        "agent",
        "seq",
        "time",
    )
    return header + _table(headers, rows)


def _materials_json(trace: MaterialsTrace) -> str:
    doc = {
        "serial": trace.serial,
        "materials": [
            {
                "depth": m.depth,
                "kind": m.kind,
                "id": m.id,
                "into": m.edge.parent,
                "how": how(m.edge),
            }
            | _edge_json(m.edge)
            for m in trace.materials
        ],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _quantity(edge: StoredEdge) -> str:
    if edge.quantity is None:
        return ""
    return f"{edge.quantity:g} {edge.unit or ''}".rstrip()


# ---- helpers ---------------------------------------------------------------------------------


def _edge_json(e: StoredEdge) -> dict[str, Any]:
    return {
        "site": e.site,
        "line": e.line,
        "station": e.station,
        "agent": e.agent,
        "seq": e.seq,
        "ts": e.ts,
        "product": e.product,
        "quantity": e.quantity,
        "unit": e.unit,
    }


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "".join(
        indent
        + "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        + "\n"
        for line in lines
    )
