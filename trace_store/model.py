"""What the store's database holds and hands back, as Python values: the rows a write
commits (``Batch``) and the records, edges and states the reads return
(``trace_store/storage.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from trace_store.envelope import LEGACY_EPOCH, Edge, Row, Stream


@dataclass(frozen=True, slots=True)
class AgentState:
    """An agent's row: where it is, and the watermark of its current epoch."""

    agent: str
    site: str
    line: str
    watermark: int
    epoch: str = LEGACY_EPOCH
    journal: str | None = None


@dataclass(frozen=True, slots=True)
class StreamState:
    """One (agent, epoch): its journal, its first seq and its watermark."""

    agent: str
    epoch: str
    site: str
    line: str
    watermark: int
    first_seq: int = 1
    journal: str | None = None
    updated_at: str = ""

    @property
    def stream(self) -> Stream:
        return (self.agent, self.epoch)


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    received_at: str
    reason: str
    detail: str
    topic: str
    size: int
    agent: str | None
    excerpt: str
    payload: bytes | None  # None when not kept (oversized)


@dataclass(slots=True)
class Batch:
    """What one transaction writes."""

    rows: list[Row] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    agents: dict[str, AgentState] = field(default_factory=dict)
    streams: dict[Stream, StreamState] = field(default_factory=dict)
    rejected: list[RejectedMessage] = field(default_factory=list)
    # Filled by ``write``: rows whose key the database held for a different record.
    conflicts: list[Row] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    agent: str
    seq: int
    site: str
    line: str
    station: str
    kind: str
    ts: str
    serial: str | None
    body: dict[str, Any]
    received_at: str
    epoch: str = LEGACY_EPOCH


@dataclass(frozen=True, slots=True)
class StoredEdge:
    agent: str
    seq: int
    parent: str
    child_kind: str
    child: str
    how: str
    site: str
    line: str
    station: str
    ts: str
    product: str | None
    quantity: float | None
    unit: str | None
    epoch: str = LEGACY_EPOCH


@dataclass(frozen=True, slots=True)
class AgentFreshness:
    """How current the store is for one agent (the workbench's Lines page)."""

    agent: str
    site: str
    line: str
    watermark: int
    watermark_at: str  # when the store last wrote the agent's row (its watermark moved)
    last_seq: int | None  # the newest record stored, None when none
    last_ts: str | None
    last_station: str | None
    last_received: str | None

    @property
    def ahead(self) -> int:
        """Records stored above the watermark: a gap below them is still open."""
        return 0 if self.last_seq is None else max(0, self.last_seq - self.watermark)


PageKey = tuple[str, str, str, int]
"""(ts, agent, epoch, seq): where a keyset page of a station's records ends."""

RECORD_COLUMNS = "agent, seq, site, line, station, kind, ts, serial, body, received_at, epoch"


def page_key(record: StoredRecord) -> PageKey:
    return (record.ts, record.agent, record.epoch, record.seq)


def utc_now() -> str:
    """``2026-11-21T10:15:02.123456Z``, the wire format's timestamp form."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
