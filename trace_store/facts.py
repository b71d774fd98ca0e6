"""What lists and dashboards need from part records: read from the part facts table.

A recall list of 10,000 serials has 50,000 part records and a month's dashboard of one station
88,000: reading fields out of their JSON bodies cost a disk read per scattered body and, on
PostgreSQL, a ``jsonb`` conversion of each. The store writes those fields at ingest into
``parts`` (``trace_store/parts.py``); here they are read from it: a recall list's facts
through ``parts_serial``, a dashboard's counts from ``parts_station_ts`` alone (covering).

A part whose fields are not database text (``\\u0000`` from a garbled scan: ``parts.raw``)
comes with its record's body and is decoded here, as is every part of a database whose store
has not been upgraded yet (a reader of it: ``Storage._parts`` False), whose fields the
database reads out of the bodies (``Storage._documents`` / ``_json_at``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from trace_store.parts import nok_causes
from trace_store.storage import CHUNK, Storage

FIELDS = (("result",), ("ctx", "product"), ("ctx", "work_order"))
# A part's record body (in a query of ``parts p``), by its primary key.
BODY = "SELECT body FROM records r WHERE r.agent = p.agent AND r.epoch = p.epoch AND r.seq = p.seq"


@dataclass(frozen=True, slots=True)
class PartSummary:
    """What a serial's part records say, for lists: the latest one (by time) gives the
    result, its station and time; product and work order come from the context of the
    latest part record that had them (a station context key, e.g. ``product`` set by a
    label scan)."""

    serial: str
    result: str | None
    station: str
    ts: str
    product: str | None
    work_order: str | None
    parts: int  # part records of the serial, every station
    nok: int  # of which NOK


@dataclass(slots=True)
class MinuteTally:
    """A station's part records of one minute (``YYYY-MM-DDTHH:MM``)."""

    minute: str
    ok: int = 0
    nok: int = 0
    other: int = 0  # result not known
    first: int = 0  # repeat 0 or absent: the serial's first cycle at the station
    first_ok: int = 0


def part_summaries(storage: Storage, serials: Sequence[str]) -> dict[str, PartSummary]:
    """Each serial's ``PartSummary`` (serials without a part record are left out): its part
    records' facts (index ``parts_serial``) in time order, folded in one pass. (A recall list
    of 10,000 serials has 50,000 part records: narrow tuples folded here cost less than one
    object per record, and less than the same fold as window functions in PostgreSQL.)"""
    out: dict[str, PartSummary] = {}
    with storage._transaction():
        for chunk in _chunks(sorted(set(serials))):
            among, ids = storage._in("serial", chunk)
            if storage._parts:
                rows = storage._execute(
                    "SELECT serial, station, ts, result, product, work_order, "
                    f"CASE WHEN raw = 1 THEN ({BODY}) END FROM parts p WHERE {among} "
                    "ORDER BY serial, ts, agent, seq",
                    ids,
                )
            else:
                exprs, params = _fields(storage, FIELDS)
                source = storage._documents(
                    "serial, agent, seq, station, ts, body", f"{among} AND kind = 'part'"
                )
                rows = storage._execute(
                    f"SELECT serial, station, ts, {exprs}, {storage._undecoded} "
                    f"FROM {source} ORDER BY serial, ts, agent, seq",
                    [*params, *ids],
                )
            out.update(_folded(rows, storage._parts))
    return out


def _folded(rows: Sequence[tuple[Any, ...]], clean: bool) -> Iterator[tuple[str, PartSummary]]:
    """Rows of (serial, station, ts, result, product, work order, undecoded body), by serial
    then time, as one summary per serial: the latest record's result,
    station and time, the latest product and work order that were set, the counts.
    ``clean``: the fields are as ``parts.text`` stored them (None or a non-empty text), else
    as the database read them out of the bodies (made text here)."""
    i, n = 0, len(rows)
    while i < n:
        serial = rows[i][0]
        product = work_order = None
        count = nok = 0
        while i < n and rows[i][0] == serial:
            r = rows[i]
            i += 1
            if r[6] is None and clean:
                result, made, order = r[3], r[4], r[5]
            else:
                values = r[3:6] if r[6] is None else _decoded(r[6], FIELDS)
                result, made, order = (_text(v) for v in values)
            product = made or product
            work_order = order or work_order
            count += 1
            nok += result == "nok"
        last = rows[i - 1]
        yield serial, PartSummary(serial, result, last[1], last[2], product, work_order, count, nok)


def _window(
    station: str, since: str, until: str, line: str | None, *, kind: bool = True
) -> tuple[str, list[Any]]:
    """The WHERE of a station's parts in a window: of ``records`` (``kind``) or ``parts``."""
    where = "station = ? AND ts >= ? AND ts < ?"
    if kind:
        where += " AND kind = 'part'"
    params: list[Any] = [station, since, until]
    if line is not None:
        where += " AND line = ?"
        params.append(line)
    return where, params


def minute_tallies(
    storage: Storage,
    station: str,
    since: str,
    until: str,
    line: str | None = None,
    *,
    width: int = 16,
) -> list[MinuteTally]:
    """The station's part records in ``[since, until)`` counted per minute (``width`` 16:
    ``YYYY-MM-DDTHH:MM``) or per hour (13): from the index ``parts_station_ts`` alone, no
    body read (but those of parts whose fields are not database text)."""
    tallies: dict[str, MinuteTally] = {}
    with storage._transaction():
        if storage._parts:
            where, wparams = _window(station, since, until, line, kind=False)
            rows = storage._execute(
                f"SELECT substr(ts, 1, {width}), result, repeat, NULL, COUNT(*) FROM parts "
                f"WHERE {where} AND raw = 0 GROUP BY 1, 2, 3",
                wparams,
            )
            rows += storage._execute(
                f"SELECT substr(ts, 1, {width}), NULL, NULL, ({BODY}), 1 FROM parts p "
                f"WHERE {where} AND raw = 1",
                wparams,
            )
        else:
            where, wparams = _window(station, since, until, line)
            exprs, params = _fields(storage, (("result",), ("repeat",)))
            rows = storage._execute(
                f"SELECT substr(ts, 1, {width}), {exprs}, {storage._undecoded}, COUNT(*) "
                f"FROM {storage._documents('ts, body', where)} GROUP BY 1, 2, 3, 4",
                [*params, *wparams],
            )
    for minute, result, repeat, undecoded, n in rows:
        if undecoded is not None:
            result, repeat = _decoded(undecoded, (("result",), ("repeat",)))
        t = tallies.get(minute)
        if t is None:
            t = tallies[minute] = MinuteTally(minute)
        outcome = _text(result)
        if outcome == "ok":
            t.ok += int(n)
        elif outcome == "nok":
            t.nok += int(n)
        else:
            t.other += int(n)
        if _first(repeat):
            t.first += int(n)
            t.first_ok += int(n) if outcome == "ok" else 0
    return [tallies[m] for m in sorted(tallies)]


def nok_causes_in(
    storage: Storage, station: str, since: str, until: str, line: str | None = None
) -> Iterator[list[str]]:
    """The causes of each of the station's NOK parts in the window (``parts.nok_causes``):
    from the index ``parts_station_ts`` alone, no body read (but those of parts whose fields
    are not database text, or without causes)."""
    if storage._parts:
        where, params = _window(station, since, until, line, kind=False)
        sql = (
            f"SELECT causes, CASE WHEN raw = 1 OR causes IS NULL THEN ({BODY}) END FROM parts p "
            f"WHERE {where} AND (result = 'nok' OR raw = 1)"
        )
    else:
        where, wparams = _window(station, since, until, line)
        expr, rparams = storage._json_at(("result",))
        sql = (
            f"SELECT NULL, body FROM {storage._documents('ts, body', where)} "
            f"WHERE {expr} = 'nok' OR {storage._undecoded} IS NOT NULL"
        )
        params = [*wparams, *rparams]
    with storage._transaction():
        rows = storage._execute(sql, params)
    for causes, text in rows:
        if text is None:
            found = json.loads(causes)
            yield [str(c) for c in found] if isinstance(found, list) else []
            continue
        body = json.loads(text)
        if isinstance(body, dict) and body.get("result") == "nok":
            values = body.get("values")
            yield nok_causes(values if isinstance(values, dict) else {})


def newest_values(
    storage: Storage,
    station: str,
    since: str,
    until: str,
    value: str,
    limit: int,
    line: str | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """(ts, ``values[value]``) of the newest ``limit`` parts of the window that have the
    value, oldest first: the index range read backwards, so only those bodies are read."""
    where, wparams = _window(station, since, until, line)
    chosen, vparams = storage._body_at(("values", value))
    sql = (
        f"SELECT ts, {chosen}, {storage._raw_body} FROM records WHERE {where} "
        "ORDER BY ts DESC LIMIT ?"
    )
    with storage._transaction():
        rows = storage._execute(sql, [*vparams, *wparams, limit])
    out = []
    for ts, obj, undecoded in rows:
        if undecoded is not None:
            [obj] = _decoded(undecoded, (("values", value),))
        found = _object(obj)
        if found is not None:
            out.append((ts, found))
    out.reverse()
    return out


def _object(text: Any) -> dict[str, Any] | None:
    """A JSON object the database returned as text (SQLite, PostgreSQL ``#>>``)."""
    if isinstance(text, dict):
        return text
    if not isinstance(text, str) or not text.startswith("{"):
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _fields(storage: Storage, paths: Sequence[Sequence[str]]) -> tuple[str, list[Any]]:
    exprs: list[str] = []
    params: list[Any] = []
    for path in paths:
        expr, p = storage._json_at(path)
        exprs.append(expr)
        params += p
    return ", ".join(exprs), params


def _decoded(text: str, paths: Sequence[Sequence[str]]) -> list[Any]:
    """The fields at ``paths`` of a body the database could not read, decoded here."""
    try:
        body = json.loads(text)
    except ValueError:
        return [None] * len(paths)
    out = []
    for path in paths:
        node: Any = body
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        out.append(node)
    return out


def _first(repeat: Any) -> bool:
    """``repeat`` 0, absent or null is a first pass (as ``not body.get("repeat")``)."""
    return repeat in (None, 0, "0", "", False, "false")


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
