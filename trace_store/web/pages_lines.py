"""The start page and the Lines page: how current the store is for each agent.

Per agent: its newest stored record (seq, time, station, when the store received it), the
watermark the store confirmed (every seq up to it is stored or void) and when it last moved,
and how many records are stored above it (a gap below them is still open: a message of that
agent has not arrived yet); and what the agent last said on its status topic
(``agent_status.py``): online or offline, its alarms, how many records its journal still
holds (as of that moment). An agent that has spoken but sent no record yet has a row too.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.responses import Response

from trace_store import agent_status
from trace_store.agent_status import AgentStatus
from trace_store.export import Table
from trace_store.storage import AgentFreshness, Storage
from trace_store.web import params
from trace_store.web.app import Ctx, Page
from trace_store.web.export import stream
from trace_store.web.params import parse_wire

STALE_SECONDS = 300  # no record for this long: the row is marked


def home(ctx: Ctx) -> Page:
    return Page(
        "home.html",
        {"stations": ctx.storage.stations()},
        "Start",
    )


def lines_page(ctx: Ctx) -> Page:
    return Page("lines.html", {"agents": _rows(ctx)}, "Lines", ctx.config.refresh)


def _rows(ctx: Ctx) -> list[dict[str, object]]:
    now = datetime.now(UTC)
    rows = []
    for f, status in _agents(ctx.storage):
        age = None
        if f.last_received:
            age = (now - parse_wire(f.last_received)).total_seconds()
        said = None
        if status is not None:
            said = _age((now - parse_wire(status.received_at)).total_seconds())
        rows.append(
            {
                "f": f,
                "age": _age(age),
                "stale": age is None or age > STALE_SECONDS,
                "status": status,
                "said": said,
            }
        )
    return rows


def _agents(storage: Storage) -> list[tuple[AgentFreshness, AgentStatus | None]]:
    """Every agent the store has records or a status of, by site, line and agent."""
    statuses = agent_status.read(storage)
    out: list[tuple[AgentFreshness, AgentStatus | None]] = [
        (f, statuses.pop(f.agent, None)) for f in storage.freshness()
    ]
    for s in statuses.values():  # spoken, nothing sent yet
        out.append((AgentFreshness(s.agent, s.site, s.line, 0, "", None, None, None, None), s))
    out.sort(key=lambda row: (row[0].site, row[0].line, row[0].agent))
    return out


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
        "pc_state", "pc_reason", "pc_status_received", "held_on_pc", "held_on_pc_at",
        "pc_alarms",
    ]  # fmt: skip
    rows = [
        [f.site, f.line, f.agent, f.last_received, f.last_seq, f.last_ts, f.last_station,
         f.watermark, f.watermark_at or None, f.ahead,
         *((s.state, s.reason, s.received_at, s.held, s.held_ts, " ".join(s.alarms))
           if s else (None,) * 6)]
        for f, s in _agents(storage)
    ]  # fmt: skip
    return Table(headers, rows, "lines")
