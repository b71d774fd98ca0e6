"""The Dashboard page: one station over a time window (by default the 24 hours up to its
newest part): output and first-pass yield per hour and per shift, the Pareto of NOK causes
(which characteristic failed its limits), and the control chart of one process value with
its limits and Cpk. It reloads itself every ``--refresh`` seconds as records arrive."""

from __future__ import annotations

from datetime import timedelta

from trace_store.web import params
from trace_store.web.app import Ctx, Page
from trace_store.web.params import NotFound, form_time, shifted
from trace_store.web.stats import station_stats
from trace_store.web.svg import control_chart, pareto, stacked_bars

DEFAULT_HOURS = 24


def dashboard_page(ctx: Ctx) -> Page:
    q = ctx.params
    stations = ctx.storage.stations()
    station = params.text(q, "station")
    if station is None:
        if not stations:
            return Page("dashboard.html", {"stations": [], "station": None}, "Dashboards")
        station = stations[0][0]
    since, until = params.when(q, "from"), params.when(q, "to")
    live = until is None
    if until is None:
        last = ctx.storage.last_ts(station)
        if last is None:
            raise NotFound(f"No part records at station {station!r}.")
        until = shifted(last, timedelta(seconds=1))
    if since is None:
        since = shifted(until, timedelta(hours=-DEFAULT_HOURS))
    if since >= until:
        raise params.BadParameter("from", "must be before 'to'")
    value = params.text(q, "value")
    stats = station_stats(
        ctx.storage, station, since, until, line=params.text(q, "line"), value=value,
        shifts=ctx.config.shifts,
    )  # fmt: skip
    if value is None and stats.values:
        # The first value with limits, else the first one: a chart to start from.
        value = next(iter(sorted(stats.values, key=lambda v: -stats.values[v])), None)
        stats = station_stats(
            ctx.storage, station, since, until, line=params.text(q, "line"), value=value,
            shifts=ctx.config.shifts,
        )  # fmt: skip
    capability = stats.capability()
    hours = stats.hour_list()
    return Page(
        "dashboard.html",
        {
            "stations": stations,
            "station": station,
            "stats": stats,
            "value": value,
            "form": {"from": form_time(since), "to": form_time(until)},
            "hours": hours,
            "output_chart": stacked_bars([(b.label, b.ok, b.nok) for b in hours]),
            "pareto": pareto(stats.causes.most_common(15)),
            "capability": capability,
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
