"""What lists and dashboards need from part records, read out of the bodies by the database.

A recall list of 10,000 serials has 50,000 part records and a month's dashboard of one station
86,000: decoding each body's JSON in Python cost most of a second per 50,000. Here the
database extracts the few fields needed (SQLite's ``json_extract``, PostgreSQL's ``jsonb``
operators, see ``Storage._documents`` / ``_json_at``); a dashboard's counts come from
SQLite's expression index on the parts' result and repeat without reading bodies.

A body holding ``\\u0000`` (a garbled scan in the station context) is one PostgreSQL cannot
read as ``jsonb`` and SQLite's ``json_extract`` cuts short: such a row comes with its body
(``Storage._undecoded``) and is decoded here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from trace_store.storage import CHUNK, Storage


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
    """The part records of ``serials`` (index ``records_serial_kind``), in no particular
    order (``queries.summarize_parts`` orders each serial's by time)."""
    fields = (("result",), ("ctx", "product"), ("ctx", "work_order"))
    out: list[PartFact] = []
    with storage._transaction():
        for chunk in _chunks(sorted(set(serials))):
            marks = ", ".join("?" * len(chunk))
            exprs, params = _fields(storage, fields)
            source = storage._documents(
                "serial, agent, seq, station, ts, body", f"serial IN ({marks}) AND kind = 'part'"
            )
            rows = storage._execute(
                f"SELECT serial, agent, seq, station, ts, {exprs}, {storage._undecoded} "
                f"FROM {source}",
                [*params, *chunk],
            )
            for r in rows:
                values = list(r[5:8]) if r[8] is None else _decoded(r[8], fields)
                out.append(PartFact(r[0], r[1], int(r[2]), r[3], r[4], *(_text(v) for v in values)))
    return out


def _window(station: str, since: str, until: str, line: str | None) -> tuple[str, list[Any]]:
    where = "station = ? AND kind = 'part' AND ts >= ? AND ts < ?"
    params: list[Any] = [station, since, until]
    if line is not None:
        where += " AND line = ?"
        params.append(line)
    return where, params


RESULT = "json_extract(body, '$.result')"
REPEAT = "json_extract(body, '$.repeat')"
AGAIN = f"NOT ({REPEAT} IS NULL OR {REPEAT} = 0 OR {REPEAT} = '')"  # not a first pass


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
    ``YYYY-MM-DDTHH:MM``) or per hour (13).

    With SQLite's index on the parts' result and repeat (``records_part_result``) no body is
    read but those of the rare rows that are not a first-pass OK: every part counted from
    ``records_station_kind_key`` alone, then the others (not OK; repeats) found through the
    expressions stored in the index. Otherwise each body is read once (``_documents``)."""
    where, wparams = _window(station, since, until, line)
    tallies: dict[str, MinuteTally] = {}

    def tally(minute: str) -> MinuteTally:
        found = tallies.get(minute)
        if found is None:
            found = tallies[minute] = MinuteTally(minute)
        return found

    with storage._transaction():
        if storage._part_index is not None:
            hint = f"INDEXED BY {storage._part_index}"
            # The times only (a covering index scan), counted here: cheaper than SQLite's
            # GROUP BY on an expression of ts, which sorts.
            counts = Counter(ts[:width] for (ts,) in storage._execute(
                f"SELECT ts FROM records WHERE {where}", wparams
            ))  # fmt: skip
            for minute, n in counts.items():
                t = tally(minute)
                t.ok = t.first = t.first_ok = n  # corrected below by the exceptions
            for minute, result, n in storage._execute(
                f"SELECT substr(ts, 1, {width}), {RESULT}, COUNT(*) FROM records {hint} "
                f"WHERE {where} AND {RESULT} IS NOT 'ok' GROUP BY 1, 2",
                wparams,
            ):
                t = tally(minute)
                t.ok -= int(n)
                t.first_ok -= int(n)
                if result == "nok":
                    t.nok += int(n)
                else:
                    t.other += int(n)
            for minute, ok, n in storage._execute(
                f"SELECT substr(ts, 1, {width}), {RESULT} IS 'ok', COUNT(*) FROM records {hint} "
                f"WHERE {where} AND {AGAIN} GROUP BY 1, 2",
                wparams,
            ):
                t = tally(minute)
                t.first -= int(n)
                if ok:
                    t.first_ok -= int(n)
        else:
            exprs, params = _fields(storage, (("result",), ("repeat",)))
            for minute, result, repeat, undecoded, n in storage._execute(
                f"SELECT substr(ts, 1, {width}), {exprs}, {storage._undecoded}, COUNT(*) "
                f"FROM {storage._documents('ts, body', where)} GROUP BY 1, 2, 3, 4",
                [*params, *wparams],
            ):
                if undecoded is not None:
                    result, repeat = _decoded(undecoded, (("result",), ("repeat",)))
                t = tally(minute)
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
    """The ``values`` of the station's NOK part records in the window (for their causes)."""
    where, wparams = _window(station, since, until, line)
    if storage._part_index is not None:
        sql = (
            f"SELECT body FROM records INDEXED BY {storage._part_index} "
            f"WHERE {where} AND {RESULT} = 'nok'"
        )
        params = wparams
    else:
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
