"""A station's figures over a time window, from its part records: output and first-pass
yield per hour and per shift, the Pareto of NOK causes, and one process value's control
chart with Cpk.

The database counts the part records per minute, result and first pass over the index range
(the part facts table's index ``parts_station_ts``; ``trace_store.facts``), so a month costs a
fraction of a second and no window is cut short (docs/workbench.md, "Performance at plant scale").

- First pass: a part record whose ``repeat`` is 0 or absent (the serial's first cycle at the
  station); first-pass yield is the share of those that were OK.
- A NOK part's causes are its values that failed their limits (``ok: false``); a NOK with
  none is "result from the PLC", one whose values could not be read "unreadable: NAME".
- Control limits are the individuals chart's: mean +- 3 sigma with sigma from the average
  moving range (MR/1.128); Cpk uses that sigma, Ppk the overall standard deviation.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from trace_store import facts
from trace_store.storage import Storage
from trace_store.web.params import parse_wire, wire_time
from trace_store.web.plant_time import PlantTime

SAMPLE = 100  # first parts of the window whose value names the form offers
# Newest parts of the window in the control chart and Cpk: a capability study wants some
# hundreds of consecutive values, a chart of 1,000 px shows no more; each is a body read,
# a disk read each on a window that is not in the cache (docs/workbench.md, "Performance").
SERIES = 2000
D2 = 1.128  # the moving range's d2 for subgroups of 2


@dataclass
class Bucket:
    label: str
    ok: int = 0
    nok: int = 0
    other: int = 0  # result not known
    first: int = 0
    first_ok: int = 0

    @property
    def output(self) -> int:
        return self.ok + self.nok + self.other

    @property
    def fpy(self) -> float | None:
        return None if not self.first else self.first_ok / self.first


@dataclass
class Capability:
    count: int
    mean: float
    sigma_within: float
    sigma_overall: float
    ucl: float
    lcl: float
    lsl: float | None
    usl: float | None
    cpk: float | None
    ppk: float | None
    unit: str | None


@dataclass
class StationStats:
    station: str
    since: str
    until: str
    total: Bucket = field(default_factory=lambda: Bucket("total"))
    hours: dict[str, Bucket] = field(default_factory=dict)
    shifts: dict[str, Bucket] = field(default_factory=dict)
    causes: Counter[str] = field(default_factory=Counter)
    values: dict[str, int] = field(default_factory=dict)  # value name -> parts having it
    series: list[tuple[float, float, bool]] = field(default_factory=list)  # (t, v, nok)
    limits: tuple[float | None, float | None] = (None, None)
    unit: str | None = None
    last_ts: str | None = None
    value: str | None = None  # the value charted
    capped: bool = False  # the window had more parts with the value than the chart shows

    def hour_list(self) -> list[Bucket]:
        """Every hour from the first part's to the last's, empty ones included (at most
        two weeks of hours; longer windows are listed as they come)."""
        if not self.hours:
            return []
        keys = sorted(self.hours)
        first, last = parse_wire(keys[0] + ":00:00Z"), parse_wire(keys[-1] + ":00:00Z")
        if (last - first) > timedelta(days=14):
            return [self.hours[k] for k in keys]
        out = []
        moment = first
        while moment <= last:
            key = wire_time(moment)[:13]
            out.append(self.hours.get(key) or Bucket(key))
            moment += timedelta(hours=1)
        return out

    def capability(self) -> Capability | None:
        values = [v for _, v, _ in self.series]
        if len(values) < 2:
            return None
        n = len(values)
        mean = sum(values) / n
        overall = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        mr = sum(abs(b - a) for a, b in itertools.pairwise(values)) / (n - 1)
        within = mr / D2
        lsl, usl = self.limits
        return Capability(
            n,
            mean,
            within,
            overall,
            mean + 3 * within,
            mean - 3 * within,
            lsl,
            usl,
            _index(mean, within, lsl, usl),
            _index(mean, overall, lsl, usl),
            self.unit,
        )


def _index(mean: float, sigma: float, lsl: float | None, usl: float | None) -> float | None:
    if sigma <= 0 or (lsl is None and usl is None):
        return None
    sides = []
    if usl is not None:
        sides.append((usl - mean) / (3 * sigma))
    if lsl is not None:
        sides.append((mean - lsl) / (3 * sigma))
    return min(sides)


def station_stats(
    storage: Storage,
    station: str,
    since: str,
    until: str,
    *,
    line: str | None = None,
    value: str | None = None,
    plant: PlantTime | None = None,
) -> StationStats:
    """The figures (``trace_store.facts``): counts per minute folded into the plant's hours
    and shifts, the causes of the NOK parts, and the chart and Cpk of ``value`` over the
    window's newest ``SERIES`` parts. Without ``value``, the chart is of the value most
    parts have (``stats.value``)."""
    stats = StationStats(station, since, until)
    clock = plant or PlantTime()
    # The names to choose from, from the window's first parts (a sample: a station's
    # characteristics do not change by the minute).
    for record in storage.records_at(station, "part", since, until, line=line, limit=SAMPLE):
        names = record.body.get("values")
        for name in names if isinstance(names, dict) else {}:
            stats.values[name] = stats.values.get(name, 0) + 1
    if value is None and stats.values:
        value = max(stats.values, key=lambda name: stats.values[name])
    stats.value = value
    width = 13 if clock.whole_hours(since, until) else 16  # count per hour or per minute
    for tally in facts.minute_tallies(storage, station, since, until, line, width=width):
        _count(stats, tally, clock)
    for causes in facts.nok_causes_in(storage, station, since, until, line):
        for cause in causes:
            stats.causes[cause] += 1
    if value:
        newest = facts.newest_values(storage, station, since, until, value, SERIES, line)
        stats.capped = len(newest) >= SERIES
        for ts, entry in newest:
            _point(stats, ts, entry)
    return stats


def _count(stats: StationStats, t: facts.MinuteTally, clock: PlantTime) -> None:
    minute = t.minute + (":00:00" if len(t.minute) == 13 else ":00")
    hour = clock.hour(minute)  # the plant's local hour and shift
    shift = clock.shift_label(minute)
    stats.last_ts = minute
    for bucket in (
        stats.total,
        stats.hours.get(hour) or stats.hours.setdefault(hour, Bucket(hour)),
        stats.shifts.get(shift) or stats.shifts.setdefault(shift, Bucket(shift)),
    ):
        bucket.ok += t.ok
        bucket.nok += t.nok
        bucket.other += t.other
        bucket.first += t.first
        bucket.first_ok += t.first_ok


def _point(stats: StationStats, ts: str, entry: dict[str, Any]) -> None:
    v = entry.get("value")
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        stats.series.append((parse_wire(ts).timestamp(), float(v), entry.get("ok") is False))
        stats.limits = (
            _num(entry.get("min"), stats.limits[0]),
            _num(entry.get("max"), stats.limits[1]),
        )
        stats.unit = entry.get("unit") or stats.unit


def _num(value: Any, default: float | None) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default
