"""The start page and the Lines page: how current the store is for each agent.

Per agent: its newest stored record (seq, time, station, when the store received it), the
watermark the store confirmed (every seq up to it is stored or void) and when it last moved,
and how many records are stored above it (a gap below them is still open: a message of that
agent has not arrived yet). Records an agent still holds in its journal are not visible here:
its own ``edge-agent status`` says those.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.responses import Response

from trace_store.export import Table
from trace_store.storage import Storage
from trace_store.web import params
from trace_store.web.app import Ctx, Page
from trace_store.web.export import stream
from trace_store.web.params import parse_wire

STALE_SECONDS = 300  # no record for this long: the row is marked


def home(ctx: Ctx) -> Page:
    return Page(
        "home.html",
        {"stations": ctx.storage.stations(), "agents": _rows(ctx)},
        "Start",
    )


def lines_page(ctx: Ctx) -> Page:
    return Page("lines.html", {"agents": _rows(ctx)}, "Lines", ctx.config.refresh)


def _rows(ctx: Ctx) -> list[dict[str, object]]:
    now = datetime.now(UTC)
    rows = []
    for f in ctx.storage.freshness():
        age = None
        if f.last_received:
            age = (now - parse_wire(f.last_received)).total_seconds()
        rows.append({"f": f, "age": _age(age), "stale": age is None or age > STALE_SECONDS})
    return rows


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 0:
        return "just now"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def export(ctx: Ctx) -> Response:
    fmt = params.choice(ctx.params, "format", ("csv", "xlsx"))
    return stream(ctx.pool, lines_table, fmt, "lines")


def lines_table(storage: Storage) -> Table:
    headers = [
        "site", "line", "agent", "last_received", "last_seq", "last_ts", "last_station",
        "watermark", "watermark_moved", "stored_above_watermark",
    ]  # fmt: skip
    rows = [
        [f.site, f.line, f.agent, f.last_received, f.last_seq, f.last_ts, f.last_station,
         f.watermark, f.watermark_at, f.ahead]
        for f in storage.freshness()
    ]  # fmt: skip
    return Table(headers, rows, "lines")
