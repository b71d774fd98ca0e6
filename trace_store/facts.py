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

from trace_store.storage import CHUNK, Storage

FIELDS = (("result",), ("ctx", "product"), ("ctx", "work_order"))
# A part's record body (in a query of ``parts p``), by its primary key.
BODY = "SELECT body FROM records r WHERE r.agent = p.agent AND r.epoch = p.epoch AND r.seq = p.seq"


@dataclass(frozen=True, slots=True)
class PartFact:
    """One part record, as a list needs it."""

    serial: str
    agent: str
    seq: int
    station: str
    ts: str
    result: str | None
    product: str | None
    work_order: str | None


@dataclass(slots=True)
class MinuteTally:
    """A station's part records of one minute (``YYYY-MM-DDTHH:MM``)."""

    minute: str
    ok: int = 0
    nok: int = 0
    other: int = 0  # result not known
    first: int = 0  # repeat 0 or absent: the serial's first cycle at the station
    first_ok: int = 0


def part_facts(storage: Storage, serials: Sequence[str]) -> list[PartFact]:
    """The part records of ``serials`` (index ``parts_serial``), in no particular order
    (``queries.summarize_parts`` orders each serial's by time)."""
    out: list[PartFact] = []
    with storage._transaction():
        for chunk in _chunks(sorted(set(serials))):
            marks = ", ".join("?" * len(chunk))
            if storage._parts:
                rows = storage._execute(
                    "SELECT serial, agent, seq, station, ts, result, product, work_order, "
                    f"CASE WHEN raw = 1 THEN ({BODY}) END FROM parts p WHERE serial IN ({marks})",
                    list(chunk),
                )
            else:
                exprs, params = _fields(storage, FIELDS)
                source = storage._documents(
                    "serial, agent, seq, station, ts, body",
                    f"serial IN ({marks}) AND kind = 'part'",
                )
                rows = storage._execute(
                    f"SELECT serial, agent, seq, station, ts, {exprs}, {storage._undecoded} "
                    f"FROM {source}",
                    [*params, *chunk],
                )
            for r in rows:
                if r[8] is None and storage._parts:
                    # Stored as ``parts.text`` made them: None or a non-empty text.
                    out.append(PartFact(r[0], r[1], int(r[2]), r[3], r[4], r[5], r[6], r[7]))
                    continue
                values = list(r[5:8]) if r[8] is None else _decoded(r[8], FIELDS)
                out.append(PartFact(r[0], r[1], int(r[2]), r[3], r[4], *(_text(v) for v in values)))
    return out


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


def nok_values(
    storage: Storage, station: str, since: str, until: str, line: str | None = None
) -> Iterator[dict[str, Any]]:
    """The ``values`` of the station's NOK part records in the window (for their causes):
    found in ``parts``, only their bodies read (by key)."""
    if storage._parts:
        where, params = _window(station, since, until, line, kind=False)
        sql = f"SELECT ({BODY}) FROM parts p WHERE {where} AND (result = 'nok' OR raw = 1)"
    else:
        where, wparams = _window(station, since, until, line)
        expr, rparams = storage._json_at(("result",))
        sql = (
            f"SELECT body FROM {storage._documents('ts, body', where)} "
            f"WHERE {expr} = 'nok' OR {storage._undecoded} IS NOT NULL"
        )
        params = [*wparams, *rparams]
    with storage._transaction():
        rows = storage._execute(sql, params)
    for (text,) in rows:
        body = json.loads(text)
        if isinstance(body, dict) and body.get("result") == "nok":
            values = body.get("values")
            yield values if isinstance(values, dict) else {}


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
    chosen, vparams = storage._json_at(("values", value))
    sql = (
        f"SELECT ts, {chosen}, {storage._undecoded} "
        f"FROM {storage._documents('ts, body', where + ' ORDER BY ts DESC LIMIT ?')}"
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
