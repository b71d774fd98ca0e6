"""Counters of what the agent recorded, in total and per station: for ``status``, the
metrics endpoint and the periodic summary line. Counted from the drafts as they are queued
for commit, in the event loop (the only writer)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from kernel.model import TELEMETRY_KINDS, RecordDraft, RecordKind


@dataclass(frozen=True)
class LastPart:
    """The station's most recent part record, as status shows it."""

    serial: str | None
    result: str | None  # "ok", "nok" or None (could not be told)
    quality: str  # "good", "uncertain", "bad"
    ts: str  # the trigger's time, ISO 8601 UTC as in the record
    error: str | None


@dataclass
class StationStats:
    parts: int = 0
    nok: int = 0  # part records with result "nok"
    unknown: int = 0  # part records whose result could not be told (result null)
    readings: int = 0
    scans: int = 0
    rejected_scans: int = 0
    gaps: int = 0
    missed_parts: int = 0  # parts the counter says were made without a record (known gaps)
    unobserved: int = 0
    last_part: LastPart | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AgentStats:
    observations: int = 0
    records: int = 0
    started: float = field(default_factory=time.time)
    stations: dict[str, StationStats] = field(default_factory=dict)

    def station(self, name: str) -> StationStats:
        st = self.stations.get(name)
        if st is None:
            st = self.stations[name] = StationStats()
        return st

    def count(self, d: RecordDraft) -> None:
        """Count one record queued for commit."""
        self.records += 1
        st = self.station(d.station)
        if d.kind in TELEMETRY_KINDS:
            st.readings += 1
            return
        b = d.body
        if d.kind is RecordKind.PART:
            st.parts += 1
            if b.get("result") == "nok":
                st.nok += 1
            elif b.get("result") is None:
                st.unknown += 1
            st.last_part = LastPart(
                serial=b.get("serial"),
                result=b.get("result"),
                quality=b["quality"],
                ts=b["ts"],
                error=b.get("error"),
            )
        elif d.kind is RecordKind.SCAN:
            st.scans += 1
            if b["status"] == "rejected":
                st.rejected_scans += 1
        elif d.kind is RecordKind.GAP:
            st.gaps += 1
            if isinstance(b.get("missed"), int):
                st.missed_parts += b["missed"]
        elif d.kind is RecordKind.UNOBSERVED:
            st.unobserved += 1

    def _total(self, name: str) -> int:
        return sum(int(getattr(st, name)) for st in self.stations.values())

    @property
    def parts(self) -> int:
        return self._total("parts")

    @property
    def nok(self) -> int:
        return self._total("nok")

    @property
    def readings(self) -> int:
        return self._total("readings")

    @property
    def scans(self) -> int:
        """Scan records (a scan read by two stations counts twice)."""
        return self._total("scans")

    @property
    def rejected_scans(self) -> int:
        return self._total("rejected_scans")

    @property
    def gaps(self) -> int:
        return self._total("gaps")

    @property
    def unobserved(self) -> int:
        """Windows in which a device's changes may not have arrived."""
        return self._total("unobserved")
