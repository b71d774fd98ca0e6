"""The plant's clock: its time zone and its shifts (``--time-zone``, ``--shifts``).

Records carry UTC (the wire format); people think in the plant's local time and shifts. Every
time the pages show or read goes through here: shown and typed in the plant's zone, compared
and stored as UTC. A shift is named and starts at a local wall-clock time; it runs until the
next one starts, and a time before the day's first start belongs to the previous day's last
shift (the night shift that began at 22:00 yesterday). Daylight saving is the zone's: the
night shift on the night the clocks go back is an hour longer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_SHIFTS = "06:00,14:00,22:00"
_CACHE_LIMIT = 100_000  # hours converted per process before the cache starts over


@dataclass(frozen=True)
class Shift:
    name: str
    start: str  # local "HH:MM"


def parse_shifts(text: str) -> list[Shift]:
    """``06:00,14:00,22:00`` (named S1, S2, S3 in time order) or ``early=06:00,late=14:00``;
    ValueError names a bad entry."""
    entries: list[tuple[str | None, str]] = []
    for part in text.split(","):
        name, sep, clock = part.strip().rpartition("=")
        name = name.strip() if sep else ""
        hh, colon, mm = clock.strip().partition(":")
        if not (colon and hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
            raise ValueError(f"shift start {clock.strip()!r} is not HH:MM")
        if sep and not name:
            raise ValueError(f"shift {part.strip()!r} has an empty name")
        entries.append((name or None, f"{int(hh):02d}:{int(mm):02d}"))
    starts = [start for _, start in entries]
    if len(set(starts)) != len(starts):
        raise ValueError("two shifts start at the same time")
    entries.sort(key=lambda e: e[1])
    shifts = [Shift(name or f"S{i}", start) for i, (name, start) in enumerate(entries, start=1)]
    if len({s.name for s in shifts}) != len(shifts):
        raise ValueError("two shifts have the same name")
    return shifts


def parse_zone(name: str) -> tzinfo:
    """``Europe/Berlin``, ``UTC``; ValueError when the system does not know the zone."""
    if name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (e.g. Europe/Berlin, UTC)") from exc


@dataclass
class PlantTime:
    zone: tzinfo = UTC
    shifts: list[Shift] = field(default_factory=lambda: parse_shifts(DEFAULT_SHIFTS))
    _hours: dict[str, datetime] = field(default_factory=dict, repr=False)

    @property
    def zone_name(self) -> str:
        return "UTC" if self.zone is UTC else str(self.zone)

    def local(self, ts: str) -> datetime:
        """A wire time as a naive local datetime. The zone's offset is looked up once per UTC
        hour (offsets change on whole hours): a month's dashboard converts 40,000 minutes."""
        hour = ts[:13]
        start = self._hours.get(hour)
        if start is None:
            if len(self._hours) > _CACHE_LIMIT:
                self._hours.clear()
            utc = datetime.fromisoformat(hour + ":00:00+00:00")
            start = self._hours[hour] = utc.astimezone(self.zone).replace(tzinfo=None)
        minute, second = ts[14:16], ts[17:19]
        return start + timedelta(
            minutes=int(minute) if minute.isdigit() else 0,
            seconds=int(second) if second.isdigit() else 0,
        )

    def whole_hours(self, since: str, until: str) -> bool:
        """Do shifts and local hours start on whole UTC hours from ``since`` to ``until``
        (every shift at HH:00, the zone's offset whole hours)? Then counts per UTC hour
        fold into them exactly."""
        if any(not s.start.endswith(":00") for s in self.shifts):
            return False
        return all(self.local(ts[:13] + ":00:00").minute == 0 for ts in (since, until))

    def shown(self, ts: str | None) -> str:
        """``2026-11-21 11:15:02`` in the plant's zone."""
        if not ts:
            return ""
        return self.local(ts).strftime("%Y-%m-%d %H:%M:%S")

    def form(self, ts: str | None) -> str:
        """A wire time as an ``<input type=datetime-local>`` value (local, minutes)."""
        return "" if not ts else self.local(ts).strftime("%Y-%m-%dT%H:%M")

    def to_utc(self, moment: datetime) -> datetime:
        """A typed time: naive means the plant's zone."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.zone)
        return moment.astimezone(UTC)

    def hour(self, ts: str) -> str:
        """The local hour a wire time falls in, ``YYYY-MM-DDTHH``."""
        d = self.local(ts)
        return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}"

    def shift_of(self, ts: str) -> tuple[str, Shift]:
        """(the local date the shift began, the shift) of a wire time."""
        moment = self.local(ts)
        clock = f"{moment.hour:02d}:{moment.minute:02d}"
        before = [s for s in self.shifts if s.start <= clock]
        if before:
            return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}", before[-1]
        day = moment - timedelta(days=1)
        return f"{day.year:04d}-{day.month:02d}-{day.day:02d}", self.shifts[-1]

    def shift_label(self, ts: str) -> str:
        day, shift = self.shift_of(ts)
        return f"{day} {shift.name} ({shift.start})"
