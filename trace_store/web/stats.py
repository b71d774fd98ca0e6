"""A station's figures over a time window, from its part records: output and first-pass
yield per hour and per shift, the Pareto of NOK causes, and one process value's control
chart with Cpk.

The part records are read page by page in time order (index ``records_station_kind_ts``)
and folded as they come; at most ``MAX_PARTS`` are read, the newest window first being the
caller's to choose (the page says when the window was cut).

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

from trace_store.storage import Storage, StoredRecord
from trace_store.web.params import parse_wire, shifted, wire_time

PAGE = 2000
MAX_PARTS = 100_000
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
    truncated: bool = False
    last_ts: str | None = None

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


def parse_shifts(text: str) -> list[str]:
    """``06:00,14:00,22:00`` -> sorted start times; ValueError names a bad one."""
    starts = []
    for part in text.split(","):
        part = part.strip()
        hh, sep, mm = part.partition(":")
        if not (sep and hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
            raise ValueError(f"shift start {part!r} is not HH:MM")
        starts.append(f"{int(hh):02d}:{int(mm):02d}")
    if not starts:
        raise ValueError("no shift starts")
    return sorted(set(starts))


def shift_of(ts: str, starts: list[str]) -> str:
    """The shift a time falls in, as ``DATE START``; a time before the first start belongs
    to the previous day's last shift."""
    clock = ts[11:16]
    before = [s for s in starts if s <= clock]
    if before:
        return f"{ts[:10]} {before[-1]}"
    return f"{shifted(ts, timedelta(days=-1))[:10]} {starts[-1]}"


def station_stats(
    storage: Storage,
    station: str,
    since: str,
    until: str,
    *,
    line: str | None = None,
    value: str | None = None,
    shifts: list[str] | None = None,
    max_parts: int = MAX_PARTS,
) -> StationStats:
    stats = StationStats(station, since, until)
    starts = shifts or ["06:00", "14:00", "22:00"]
    after: tuple[str, str, int] | None = None
    read = 0
    while True:
        page = storage.records_at(station, "part", since, until, after=after, line=line, limit=PAGE)
        for record in page:
            _fold(stats, record, value, starts)
        read += len(page)
        if len(page) < PAGE:
            break
        if read >= max_parts:
            stats.truncated = True
            break
        last = page[-1]
        after = (last.ts, last.agent, last.seq)
    return stats


def _fold(stats: StationStats, record: StoredRecord, value: str | None, starts: list[str]) -> None:
    b = record.body
    result = b.get("result")
    first = not b.get("repeat")
    stats.last_ts = record.ts
    for bucket in (
        stats.total,
        stats.hours.setdefault(record.ts[:13], Bucket(record.ts[:13])),
        stats.shifts.setdefault(shift_of(record.ts, starts), Bucket(shift_of(record.ts, starts))),
    ):
        if result == "ok":
            bucket.ok += 1
        elif result == "nok":
            bucket.nok += 1
        else:
            bucket.other += 1
        if first:
            bucket.first += 1
            bucket.first_ok += result == "ok"
    values = b.get("values")
    values = values if isinstance(values, dict) else {}
    for name in values:
        stats.values[name] = stats.values.get(name, 0) + 1
    if result == "nok":
        for cause in nok_causes(values):
            stats.causes[cause] += 1
    entry = values.get(value) if value else None
    if isinstance(entry, dict):
        v = entry.get("value")
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            t = parse_wire(record.ts).timestamp()
            stats.series.append((t, float(v), entry.get("ok") is False))
            stats.limits = (
                _num(entry.get("min"), stats.limits[0]),
                _num(entry.get("max"), stats.limits[1]),
            )
            stats.unit = entry.get("unit") or stats.unit


def nok_causes(values: dict[str, Any]) -> list[str]:
    failed = [k for k, v in values.items() if isinstance(v, dict) and v.get("ok") is False]
    if failed:
        return failed
    unreadable = [k for k, v in values.items() if isinstance(v, dict) and v.get("quality") == "bad"]
    if unreadable:
        return [f"unreadable: {k}" for k in unreadable]
    return ["result from the PLC"]


def _num(value: Any, default: float | None) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default
