"""The Dashboard page: one station over a time window (by default the 24 hours up to its
newest part): output and first-pass yield per hour and per shift, the Pareto of NOK causes
(which characteristic failed its limits), and the control chart of one process value with
its limits and Cpk. It reloads itself every ``--refresh`` seconds as records arrive."""

from __future__ import annotations

from starlette.responses import Response

from trace_store.export import Table
from trace_store.web import params, svg
from trace_store.web.app import Ctx, Page
from trace_store.web.export import stream
from trace_store.web.stats import StationStats, station_stats
from trace_store.web.svg import control_chart, pareto, stacked_bars

DEFAULT_HOURS = 24


def _window(ctx: Ctx, station: str) -> tuple[str, str, bool]:
    """(since, until, live): the asked window, by default the 24 h up to the newest part."""
    plant, last_ts = ctx.config.plant, ctx.storage.last_ts
    return params.time_window(ctx.params, plant, station, last_ts, DEFAULT_HOURS)


def _stats(ctx: Ctx, station: str, since: str, until: str) -> StationStats:
    return station_stats(
        ctx.storage, station, since, until, line=params.text(ctx.params, "line"),
        value=params.text(ctx.params, "value"), plant=ctx.config.plant,
    )  # fmt: skip


def dashboard_page(ctx: Ctx) -> Page:
    q = ctx.params
    stations = ctx.storage.stations()
    station = params.text(q, "station")
    if station is None:
        if not stations:
            return Page("dashboard.html", {"stations": [], "station": None}, "Dashboards")
        station = stations[0][0]
    since, until, live = _window(ctx, station)
    stats = _stats(ctx, station, since, until)
    value = stats.value
    capability = stats.capability()
    hours = stats.hour_list()
    return Page(
        "dashboard.html",
        {
            "stations": stations,
            "station": station,
            "stats": stats,
            "value": value,
            "form": {"from": ctx.config.plant.form(since), "to": ctx.config.plant.form(until)},
            # The window as asked (a live page's export is of the window up to the newest part).
            "export_args": {
                "station": station,
                "from": q.get("from"),
                "to": q.get("to"),
                "line": q.get("line"),
            },
            "hours": hours,
            "output_chart": stacked_bars([(b.label, b.ok, b.nok) for b in hours]),
            "pareto": pareto(stats.causes.most_common(15)),
            "capability": capability,
            "chart_points": svg.MAX_POINTS,
            "control": (
                control_chart(
                    [(t, v) for t, v, _ in stats.series],
                    mean=capability.mean,
                    ucl=capability.ucl,
                    lcl=capability.lcl,
                    lsl=capability.lsl,
                    usl=capability.usl,
                    nok=[bad for _, _, bad in stats.series],
                )
                if capability
                else None
            ),
        },
        f"Dashboard {station}",
        ctx.config.refresh if live else 0,
    )


TABLES = ("hours", "shifts", "causes")


def export(ctx: Ctx) -> Response:
    """One of the page's tables as CSV or XLSX (``table``: hours, shifts or causes)."""
    station = params.required(ctx.params, "station")
    which = params.choice(ctx.params, "table", TABLES)
    fmt = params.choice(ctx.params, "format", ("csv", "xlsx"))
    since, until, _ = _window(ctx, station)
    stats = _stats(ctx, station, since, until)  # small: one row per hour at most
    table = stats_table(stats, which)
    return stream(ctx.pool, lambda _: table, fmt, f"{which}-{station}-{since[:10]}")


def stats_table(stats: StationStats, which: str) -> Table:
    name = f"{which} {stats.station}"
    if which == "causes":
        causes = stats.causes.most_common()
        return Table(["cause", "nok_parts"], [[c, n] for c, n in causes], name)
    headers = [
        "hour" if which == "hours" else "shift", "station", "parts", "ok", "nok",
        "result_unknown", "first_pass", "first_pass_ok", "first_pass_yield",
    ]  # fmt: skip
    buckets = stats.hour_list() if which == "hours" else [
        stats.shifts[k] for k in sorted(stats.shifts)
    ]  # fmt: skip
    rows = [
        [b.label.replace("T", " ") + (":00" if which == "hours" else ""), stats.station,
         b.output, b.ok, b.nok, b.other, b.first, b.first_ok, b.fpy]
        for b in buckets
    ]  # fmt: skip
    return Table(headers, rows, name)
