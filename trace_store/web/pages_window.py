"""The Window page: "station ST20 drifted from 10:00 to 11:30, what did it make?"

Every part record of a station in a time window, optionally only those with a value outside
given bounds, of one operator, or of one result; paged by a keyset cursor (the last
(ts, agent, seq) shown), so page 50 costs what page 1 costs. The filters that look inside
the record body run here, on rows the index range already narrowed to the window; one
request reads at most ``MAX_SCAN`` rows and offers to go on from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response

from trace_store.export import Table, out_of_limits, record_values, value_columns
from trace_store.storage import PageKey, Storage, StoredRecord, page_key
from trace_store.web import params
from trace_store.web.app import Ctx, Page
from trace_store.web.export import stream
from trace_store.web.params import encode_cursor
from trace_store.web.plant_time import PlantTime

BATCH = 500
MAX_SCAN = 20_000
DEFAULT_HOURS = 8


@dataclass(frozen=True)
class Window:
    station: str
    since: str
    until: str
    line: str | None = None
    operator: str | None = None
    result: str | None = None
    value: str | None = None
    low: float | None = None
    high: float | None = None
    shift: str | None = None  # a shift's name: only parts made in that shift
    plant: PlantTime = field(default_factory=PlantTime, compare=False)

    def args(self) -> dict[str, Any]:
        return {
            "station": self.station, "line": self.line, "from": self.plant.form(self.since),
            "to": self.plant.form(self.until), "operator": self.operator,
            "result": self.result, "value": self.value, "min": self.low, "max": self.high,
            "shift": self.shift,
        }  # fmt: skip

    def matches(self, record: StoredRecord) -> bool:
        b = record.body
        if self.result and b.get("result") != self.result:
            return False
        if self.shift and self.plant.shift_of(record.ts)[1].name != self.shift:
            return False
        if self.operator:
            ctx = b.get("ctx")
            if not isinstance(ctx, dict) or str(ctx.get("operator")) != self.operator:
                return False
        if self.value:
            v = record_values(record).get(self.value)
            if not isinstance(v, int | float) or isinstance(v, bool):
                return False
            if self.low is None and self.high is None:
                return self.value in out_of_limits(record)
            return (self.low is not None and v < self.low) or (
                self.high is not None and v > self.high
            )
        return True


def read_window(ctx: Ctx) -> Window | None:
    """The window the query asks for; None when no station is chosen yet."""
    q = ctx.params
    station = params.text(q, "station")
    if station is None:
        return None
    plant = ctx.config.plant
    since, until, _ = params.time_window(q, plant, station, ctx.storage.last_ts, DEFAULT_HOURS)
    result = params.choice(q, "result", ("", "ok", "nok")) if q.get("result") else None
    low, high = params.number(q, "min"), params.number(q, "max")
    value = params.text(q, "value")
    if (low is not None or high is not None) and value is None:
        raise params.BadParameter("value", "name the value that 'min'/'max' bound")
    if low is not None and high is not None and low > high:
        raise params.BadParameter("min", "is above 'max'")
    names = [s.name for s in plant.shifts]
    shift = params.choice(q, "shift", ("", *names)) if q.get("shift") else None
    return Window(
        station, since, until, params.text(q, "line"), params.text(q, "operator"), result,
        value, low, high, shift or None, plant,
    )  # fmt: skip


def scan(
    storage: Storage, w: Window, after: PageKey | None, want: int, budget: int
) -> tuple[list[StoredRecord], PageKey | None]:
    """Up to ``want`` matching records after ``after``, reading at most ``budget`` rows;
    returns them and the cursor to go on from (None: the window is done)."""
    found: list[StoredRecord] = []
    read = 0
    while True:
        page = storage.records_at(
            w.station, "part", w.since, w.until, after=after, line=w.line, limit=BATCH
        )
        read += len(page)
        for i, record in enumerate(page):
            if w.matches(record):
                found.append(record)
                if len(found) == want:
                    more = i < len(page) - 1 or len(page) == BATCH
                    return found, page_key(record) if more else None
        if len(page) < BATCH:
            return found, None
        after = page_key(page[-1])
        if read >= budget:
            return found, after


def window_page(ctx: Ctx) -> Page:
    stations = ctx.storage.stations()
    w = read_window(ctx)
    values: dict[str, Any] = {
        "stations": stations, "w": w, "rows": [], "next": None,
        "shifts": ctx.config.plant.shifts,
    }  # fmt: skip
    if w is not None:
        after = params.cursor(ctx.params)
        rows, next_key = scan(ctx.storage, w, after, ctx.config.page_size, MAX_SCAN)
        values |= {
            "rows": [_row(r) for r in rows],
            "columns": value_columns(rows),
            "next": encode_cursor(next_key) if next_key else None,
            "continued": after is not None,
            "args": w.args(),
        }
    title = f"Window {w.station}" if w else "Window"
    return Page("window.html", values, title)


def export(ctx: Ctx) -> Response:
    w = read_window(ctx)
    if w is None:
        raise params.BadParameter("station", "missing")
    fmt = params.choice(ctx.params, "format", ("csv", "xlsx"))
    return stream(ctx.pool, lambda storage: window_table(storage, w), fmt, f"window-{w.station}")


def window_table(storage: Storage, w: Window) -> Table:
    """Every matching part record, one column per value: a first pass over the window finds
    the value names (the header comes first), the second writes the rows."""

    def every() -> Iterator[StoredRecord]:
        after = None
        while True:
            rows, after = scan(storage, w, after, BATCH, MAX_SCAN)
            yield from rows
            if after is None:
                return

    columns = value_columns(every())
    headers = [
        "serial", "ts", "result", "repeat", "operator", "work_order", "lot", "out_of_limits",
        "station", "site", "line", "agent", "seq", *(label for _, label in columns),
    ]  # fmt: skip

    def rows() -> Iterator[list[Any]]:
        for r in every():
            found = r.body.get("ctx")
            ctx: dict[str, Any] = found if isinstance(found, dict) else {}
            values = record_values(r)
            yield [
                r.serial, r.ts, r.body.get("result"), r.body.get("repeat"), ctx.get("operator"),
                ctx.get("work_order"), ctx.get("lot"), " ".join(out_of_limits(r)), r.station,
                r.site, r.line, r.agent, r.seq,
                *(_plain(values.get(name)) for name, _ in columns),
            ]  # fmt: skip

    return Table(headers, rows(), f"window {w.station}")


def _row(record: StoredRecord) -> dict[str, Any]:
    ctx = record.body.get("ctx")
    ctx = ctx if isinstance(ctx, dict) else {}
    return {
        "record": record,
        "values": record_values(record),
        "nok": set(out_of_limits(record)),
        "operator": ctx.get("operator"),
        "work_order": ctx.get("work_order"),
        "lot": ctx.get("lot"),
    }


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)
