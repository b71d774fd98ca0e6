"""Query results as text: ``table`` for people, ``json`` for programs, ``csv`` for
spreadsheets (one row per item)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from trace_store.queries import LotTrace, MaterialsTrace, SerialTrace
from trace_store.storage import StoredEdge, StoredRecord

FORMATS = ("table", "json", "csv")

Trace = SerialTrace | LotTrace | MaterialsTrace


def render(trace: Trace, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if isinstance(trace, SerialTrace):
        return {"table": _serial_table, "json": _serial_json, "csv": _serial_csv}[fmt](trace)
    if isinstance(trace, LotTrace):
        return {"table": _lot_table, "json": _lot_json, "csv": _lot_csv}[fmt](trace)
    return {"table": _materials_table, "json": _materials_json, "csv": _materials_csv}[fmt](trace)


def nothing_found(trace: Trace) -> str:
    if isinstance(trace, SerialTrace):
        return f"no records for serial {trace.serial!r}"
    if isinstance(trace, LotTrace):
        return f"no serial consumed lot {trace.lot!r}"
    return f"no lots or components recorded for serial {trace.serial!r}"


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
    return str(value)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# ---- serial --------------------------------------------------------------------------------


def _serial_table(trace: SerialTrace) -> str:
    out = io.StringIO()
    if trace.visits:
        stations = len({(v.agent, v.station) for v in trace.visits})
        out.write(
            f"serial {trace.serial}: {trace.records} record(s) at {stations} station(s), "
            f"{trace.visits[0].first_ts} .. {trace.visits[-1].last_ts}\n"
        )
    else:
        out.write(f"serial {trace.serial}: no records of its own\n")
    for visit in trace.visits:
        out.write(
            f"\n{visit.station}  ({visit.site}/{visit.line}, agent {visit.agent})  "
            f"{visit.first_ts} .. {visit.last_ts}\n"
        )
        rows = [(r.ts, str(r.seq), r.kind, summary(r)) for r in visit.records]
        out.write(_table(("time", "seq", "kind", "details"), rows, indent="  "))
    if trace.used_in:
        out.write("\nused as a component in:\n")
        used = [
            (e.parent, e.station, f"{e.site}/{e.line}", e.agent, str(e.seq), e.ts)
            for e in trace.used_in
        ]
        out.write(_table(("serial", "station", "line", "agent", "seq", "time"), used, "  "))
    return out.getvalue()


def _serial_json(trace: SerialTrace) -> str:
    doc = {
        "serial": trace.serial,
        "records": trace.records,
        "stations": [
            {
                "station": v.station,
                "site": v.site,
                "line": v.line,
                "agent": v.agent,
                "first_ts": v.first_ts,
                "last_ts": v.last_ts,
                "records": [_record_json(r) for r in v.records],
            }
            for v in trace.visits
        ],
        "used_in": [_edge_json(e) | {"serial": e.parent} for e in trace.used_in],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _serial_csv(trace: SerialTrace) -> str:
    rows: list[Sequence[Any]] = [
        (r.station, r.site, r.line, r.agent, r.seq, r.ts, r.kind, summary(r), _compact(r.body))
        for v in trace.visits
        for r in v.records
    ]
    return _csv(("station", "site", "line", "agent", "seq", "ts", "kind", "details", "body"), rows)


def _record_json(r: StoredRecord) -> dict[str, Any]:
    return {"agent": r.agent, "seq": r.seq, "kind": r.kind, "ts": r.ts, "body": r.body}


# ---- lot -----------------------------------------------------------------------------------


def _lot_table(trace: LotTrace) -> str:
    direct = sum(1 for a in trace.serials if a.depth == 1)
    header = (
        f"lot {trace.lot}: {len(trace.serials)} serial(s) affected "
        f"({direct} consumed it directly, {len(trace.serials) - direct} through components)\n"
    )
    rows = [
        (
            a.serial,
            str(a.depth),
            a.edge.child,
            _how(a.edge),
            a.edge.station,
            f"{a.edge.site}/{a.edge.line}",
            a.edge.agent,
            str(a.edge.seq),
            a.edge.ts,
        )
        for a in trace.serials
    ]
    headers = ("serial", "depth", "via", "how", "station", "line", "agent", "seq", "time")
    return header + _table(headers, rows)


def _lot_json(trace: LotTrace) -> str:
    doc = {
        "lot": trace.lot,
        "serials": [
            {"serial": a.serial, "depth": a.depth, "via": a.edge.child, "how": _how(a.edge)}
            | _edge_json(a.edge)
            for a in trace.serials
        ],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _lot_csv(trace: LotTrace) -> str:
    rows = [
        (
            a.serial,
            a.depth,
            a.edge.child,
            _how(a.edge),
            a.edge.site,
            a.edge.line,
            a.edge.station,
            a.edge.agent,
            a.edge.seq,
            a.edge.ts,
        )
        for a in trace.serials
    ]
    headers = ("serial", "depth", "via", "how", "site", "line", "station", "agent", "seq", "ts")
    return _csv(headers, rows)


def _how(edge: StoredEdge) -> str:
    """How the parent took the child in: ``consumption``, ``part ctx.lot`` or ``component``."""
    if edge.child_kind == "component":
        return "component"
    return "consumption" if edge.how == "consumption" else "part ctx.lot"


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
            _how(m.edge),
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
                "how": _how(m.edge),
            }
            | _edge_json(m.edge)
            for m in trace.materials
        ],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _materials_csv(trace: MaterialsTrace) -> str:
    rows = [
        (
            m.depth,
            m.kind,
            m.id,
            m.edge.parent,
            _how(m.edge),
            m.edge.product or "",
            "" if m.edge.quantity is None else m.edge.quantity,
            m.edge.unit or "",
            m.edge.site,
            m.edge.line,
            m.edge.station,
            m.edge.agent,
            m.edge.seq,
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
        "unit",
        "site",
        "line",
        "station",
        "agent",
        "seq",
        "ts",
    )
    return _csv(headers, rows)


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


def _csv(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return out.getvalue()
