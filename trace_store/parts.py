"""The part facts table: what lists and dashboards need of each part record, as columns.

A recall list of 10,000 serials reads 50,000 part records and a month's dashboard of one
station 88,000; reading those fields out of the JSON bodies cost a disk read per scattered
body and, on PostgreSQL, a ``jsonb`` conversion of each whole body (docs/workbench.md,
"Performance at plant scale"). So the store writes them at ingest, in the same transaction
as the record, into ``parts``: one row per part record, keyed like ``records`` by (agent,
epoch, seq), so a record delivered twice has one row here as well.

Columns: the record's key, serial, line, station, ts, and from the body ``result``,
``repeat`` (0: a first pass, as ``not body.get("repeat")``; otherwise the repeat, 1 where it
is not a small positive integer), ``ctx.product``, ``ctx.work_order`` and, for a NOK part,
``causes``: why it is NOK (``nok_causes``), a JSON list, so that a dashboard's Pareto of NOK
causes is read from an index instead of the NOK parts' bodies. A field that
cannot be kept as database text (``\\u0000`` from a garbled scan, a lone surrogate) sets
``raw``: the readers then take that row's fields from its body (``facts``), so it shows as
it was sent.

A database of schema 2 gets the table and its rows at its first start (``backfill``).

Functions on a ``Storage``, inside its transaction (``Storage.write``, ``schema.create``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trace_store.envelope import Row
    from trace_store.storage import Storage

log = logging.getLogger(__name__)

COLUMNS = (
    "agent, epoch, seq, serial, line, station, ts, result, repeat, product, work_order, raw, causes"
)
INSERT = (
    f"INSERT INTO parts ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (agent, epoch, seq) DO NOTHING"
)
TABLE = "CREATE TABLE IF NOT EXISTS parts ("
BACKFILL_ROWS = 20_000  # part records read and written per step of the backfill
MAX_REPEAT = 2**31 - 1


@dataclass(frozen=True, slots=True)
class PartFields:
    """The fields of a part record's body that ``parts`` holds."""

    result: str | None
    repeat: int
    product: str | None
    work_order: str | None
    raw: bool = False  # a field is not database text: read the body instead
    causes: str | None = None  # a NOK part's ``nok_causes``, as a JSON list


def part_fields(body: Any) -> PartFields:
    """The ``PartFields`` of a decoded part record body."""
    if not isinstance(body, dict):
        return PartFields(None, 0, None, None)
    ctx = body.get("ctx")
    ctx = ctx if isinstance(ctx, dict) else {}
    result, product, work_order = (
        text(v) for v in (body.get("result"), ctx.get("product"), ctx.get("work_order"))
    )
    raw = not all(v is None or storable(v) for v in (result, product, work_order))
    if raw:
        result = product = work_order = None
    causes = None
    if result == "nok":
        values = body.get("values")
        # ASCII JSON: always database text, whatever the names hold.
        causes = json.dumps(nok_causes(values if isinstance(values, dict) else {}))
    return PartFields(result, repeat_of(body.get("repeat")), product, work_order, raw, causes)


def nok_causes(values: dict[str, Any]) -> list[str]:
    """Why a NOK part is NOK, from its ``values``: the values that failed their limits;
    else those that could not be read (``unreadable: name``); else the PLC said so."""
    failed = [k for k, v in values.items() if isinstance(v, dict) and v.get("ok") is False]
    if failed:
        return failed
    unreadable = [k for k, v in values.items() if isinstance(v, dict) and v.get("quality") == "bad"]
    if unreadable:
        return [f"unreadable: {k}" for k in unreadable]
    return ["result from the PLC"]


def fields_of(row: Row) -> PartFields:
    """A part row's fields: as the envelope found them, else read from its body (rows made
    by other writers: tests, tools)."""
    if row.part is not None:
        return row.part
    try:
        return part_fields(json.loads(row.body))
    except ValueError:
        return PartFields(None, 0, None, None)


def repeat_of(repeat: Any) -> int:
    """0 for a first pass (``repeat`` 0, absent, null, empty or false)."""
    if repeat in (None, 0, "0", "", False, "false"):
        return 0
    if isinstance(repeat, int) and not isinstance(repeat, bool) and 0 < repeat <= MAX_REPEAT:
        return repeat
    return 1


def text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def storable(value: str) -> bool:
    """Whether the databases can hold ``value`` as text (no NUL, no lone surrogate)."""
    if "\0" in value:
        return False  # PostgreSQL's text cannot hold it
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def ddl(integer: str) -> list[str]:
    return [
        f"""{TABLE}
            agent TEXT NOT NULL,
            epoch TEXT NOT NULL DEFAULT '',
            seq {integer} NOT NULL,
            serial TEXT,
            line TEXT NOT NULL,
            station TEXT NOT NULL,
            ts TEXT NOT NULL,
            result TEXT,
            repeat {integer} NOT NULL DEFAULT 0,
            product TEXT,
            work_order TEXT,
            raw {integer} NOT NULL DEFAULT 0,
            causes TEXT,
            PRIMARY KEY (agent, epoch, seq))""",
        # A recall list's serials: their part facts (the lot list, its export, the recall
        # report); the rows of one lot were written together, so they lie close.
        "CREATE INDEX IF NOT EXISTS parts_serial ON parts (serial)",
        # A dashboard's counts and NOK causes: the index alone answers them (covering: result,
        # repeat, raw, the line filter and the causes, set on NOK parts only, are in it),
        # 88,000 entries for a month of a station.
        "CREATE INDEX IF NOT EXISTS parts_station_ts ON parts "
        "(station, ts, result, repeat, line, raw, causes)",
    ]


def insert(storage: Storage, rows: Sequence[Row], skip: Sequence[Row] = ()) -> None:
    """The part rows of ``rows`` into ``parts``, except those in ``skip`` (records whose key
    the database holds for another record: that one's facts are the ones to keep)."""
    left_out = {id(r) for r in skip}
    facts = [(r, fields_of(r)) for r in rows if r.kind == "part" and id(r) not in left_out]
    if not facts:
        return
    storage._executemany(
        INSERT,
        [
            _values((r.agent, r.epoch, r.seq, r.serial, r.line, r.station, r.ts), f)
            for r, f in facts
        ],
    )


def _values(key: tuple[Any, ...], f: PartFields) -> tuple[Any, ...]:
    """A row of ``COLUMNS``: ``key`` is its first seven, the record's own columns."""
    return (*key, f.result, f.repeat, f.product, f.work_order, int(f.raw), f.causes)


def backfill(storage: Storage) -> None:
    """Schema 2 -> 3: a row in ``parts`` for every part record (the table is new and empty).
    At a year of a 10-station line (10 million part records) that takes minutes, so it
    says so."""
    log.warning(
        "%s: filling the part facts table from the part records (first start after an "
        "upgrade: on a large database this may take minutes; the store starts when it is "
        "done)",
        storage.location,
    )
    started = time.monotonic()
    done = 0
    # One pass over the table in its own order (a scan, not a walk of an index).
    for rows in storage._stream(
        "SELECT agent, epoch, seq, serial, line, station, ts, body FROM records "
        "WHERE kind = 'part'",
        BACKFILL_ROWS,
    ):
        out = []
        for agent, epoch, seq, serial, line, station, ts, body in rows:
            try:
                f = part_fields(json.loads(body))
            except ValueError:
                f = PartFields(None, 0, None, None)
            out.append(_values((agent, epoch, seq, serial, line, station, ts), f))
        storage._executemany(INSERT, out)
        done += len(out)
    log.warning(
        "%s: part facts of %d part records written in %.1f s",
        storage.location,
        done,
        time.monotonic() - started,
    )
