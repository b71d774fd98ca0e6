"""Data that flows between the layers: observations (driver -> binder) and records
(binder -> buffer -> sync).

Kept free of I/O so binding stays a pure function and every layer can be tested alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

Value = bool | int | float | str | None


class Quality(StrEnum):
    """OPC-style quality of one value. Errors are data: a bad read is an observation too."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class DeviceState(StrEnum):
    """What the operator sees for a device."""

    STARTING = "starting"
    UP = "up"
    DEGRADED = "degraded"  # connected, but some reads fail (e.g. Modbus exception responses)
    DOWN = "down"  # no connection; being retried with backoff


@dataclass(slots=True)
class Observation:
    """One value from one point of one device, as read.

    ``ts`` is UTC wall-clock (seconds since the epoch) for humans and the trace store;
    ordering never relies on it (the clock can jump) but on arrival order at the binder.

    Treated as immutable, but not ``frozen``: a frozen dataclass's ``__init__`` goes through
    ``object.__setattr__`` per field and took 2.7x as long, on a path taken for every value.
    """

    device: str
    point: str
    value: Value
    quality: Quality = Quality.GOOD
    ts: float = field(default_factory=time.time)
    source_ts: float | None = None
    unit: str | None = None
    error: str | None = None  # why quality is not GOOD
    server_ts: float | None = None  # when the server last had the value (OPC UA), if it says
    unobserved: Unobserved | None = None  # changes before this value may not have arrived
    # What the device said about the value beyond value/unit/quality, kept in the record: a
    # scale's stability, an RFID read's EPC, antenna and RSSI.
    detail: Mapping[str, Value] | None = None


@dataclass(frozen=True, slots=True)
class Unobserved:
    """Changes of a point that may not have reached the agent, before the value it is attached
    to: the current value read after a subscription was rebuilt (the server restarted) or
    after the server's queue for the point overflowed. The binder turns it into an
    ``unobserved`` record, so that a gap in a point's history is stated, not inferred.

    ``since`` is the last moment the agent is sure it had every change (epoch seconds), or None
    when it is "since this point's previous value" (a queue overflow).
    """

    since: float | None
    reason: str


class RecordKind(StrEnum):
    """Kinds of records on the wire (see docs/wire-format.md)."""

    READINGS = "readings"  # the values of one device response, with the station context
    READING = "reading"  # one value per record: wire format v1, still in older journals
    CONTEXT = "context"  # a station context key changed (serial, lot, ...)
    CONTEXT_RESTORED = "context_restored"  # the context a station had when the agent stopped
    SCAN = "scan"  # an identification (barcode, RFID...): accepted, unclassified or rejected
    CONSUMPTION = "consumption"  # genealogy: a component or lot consumed into a serial
    PART = "part"  # one cycle's part record: snapshot values, result, cycle time
    GAP = "gap"  # the PLC's cycle counter jumped: parts went by without a part record
    UNOBSERVED = "unobserved"  # a window in which a point's changes may not have arrived
    GATE = "gate"  # the station gate's decision about a scan (blocked set, route rule)


TELEMETRY_KINDS = frozenset({RecordKind.READINGS, RecordKind.READING})
"""Continuous process values: bounded and evicted first when storage runs low (invariant 4).
Every other kind is trace and is never evicted."""


@dataclass(frozen=True, slots=True)
class RecordDraft:
    """A bound record before the buffer gives it its sequence number.

    ``body`` is the record as it goes on the wire, minus ``seq`` (added on append).
    ``state``, when set, is the station's durable state after this record (its context and
    last part counter); the journal keeps it in the same transaction as the record, so after
    a crash the restored state is exactly that of the last committed record.
    """

    station: str
    kind: RecordKind
    body: dict[str, Any]
    state: dict[str, Any] | None = None


def iso_utc(ts: float) -> str:
    """Render epoch seconds as ISO 8601 UTC with microseconds and a trailing ``Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
