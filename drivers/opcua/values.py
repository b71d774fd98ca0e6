"""OPC UA DataValues as observations: value, quality from the status code, timestamps.

Pure functions of what the server sent, tested with tables. Errors are data: a Bad status, a
value of another type than the config says, an array where a scalar was expected, or a
source timestamp in 1601 or the far future each become an observation with its quality and
the reason, never an exception.
"""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from drivers.opcua.config import OpcUaPoint, ValueType
from kernel.model import Observation, Quality, Unobserved, Value

FUTURE_TOLERANCE = 24 * 3600.0
"""A source timestamp more than this far ahead of the agent's clock is not believed."""
EARLIEST = datetime(1970, 1, 2, tzinfo=UTC).timestamp()
"""Before this a source timestamp is OPC UA's "no time" (1601-01-01) or a PLC without a clock."""


def observation(
    device: str, point: OpcUaPoint, dv: ua.DataValue, now: float | None = None
) -> Observation:
    """The observation of one DataValue of ``point``."""
    now = time.time() if now is None else now
    status = dv.StatusCode if dv.StatusCode is not None else ua.StatusCode()
    quality, error = _quality(status)
    raw = dv.Value.Value if dv.Value is not None else None
    value, type_error = convert(raw, point.type)
    if type_error is not None:
        quality, error, value = Quality.BAD, _join(error, type_error), None
    source_ts, ts_error = _timestamp(dv.SourceTimestamp or dv.ServerTimestamp, now)
    if ts_error is not None and quality is Quality.GOOD:
        quality = Quality.UNCERTAIN
    error = _join(error, ts_error)
    server_ts, _ = _timestamp(dv.ServerTimestamp, now)  # a bad one is simply not kept
    return Observation(
        device, point.name, value, quality, ts=now, source_ts=source_ts, unit=point.unit,
        error=error, server_ts=server_ts, unobserved=_overflow(status, point),
    )  # fmt: skip


OVERFLOW = 0x0480
"""InfoType DataValue (0x400) with the Overflow bit (0x80) of a status code (Part 4 7.39.1):
the server's queue for the monitored item was full and it discarded a change."""


def _overflow(status: ua.StatusCode, point: OpcUaPoint) -> Unobserved | None:
    if status.value & OVERFLOW != OVERFLOW:
        return None
    older = "oldest" if point.discard_oldest else "newest"
    return Unobserved(
        None,
        f"the server's queue for this point overflowed (queue_size {point.queue_size}): it "
        f"discarded the {older} change(s); raise queue_size or lower the sampling rate",
    )


def _quality(status: ua.StatusCode) -> tuple[Quality, str | None]:
    if status.is_good():
        return Quality.GOOD, None
    name = status.name
    if status.is_uncertain():
        return Quality.UNCERTAIN, f"status {name}"
    return Quality.BAD, f"status {name}"


def convert(raw: Any, expected: ValueType) -> tuple[Value, str | None]:
    """``raw`` (asyncua's Python form of a Variant) as a record value, or why it cannot be."""
    if isinstance(raw, list | tuple):
        if expected not in (ValueType.ANY, ValueType.ARRAY):
            return None, f"expected {expected.value}, got an array of {len(raw)}"
        return json.dumps([_json(v) for v in raw], ensure_ascii=False), None
    if expected is ValueType.ARRAY and raw is not None:
        return None, f"expected an array, got {_type_name(raw)}"
    value = _scalar(raw)
    if raw is None or expected is ValueType.ANY:
        return value, None
    ok = {
        ValueType.BOOL: isinstance(raw, bool),
        ValueType.INT: isinstance(raw, int) and not isinstance(raw, bool),
        ValueType.FLOAT: isinstance(raw, int | float) and not isinstance(raw, bool),
        ValueType.STRING: isinstance(raw, str | ua.LocalizedText | ua.QualifiedName),
        ValueType.DATETIME: isinstance(raw, datetime),
        ValueType.BYTES: isinstance(raw, bytes),
    }.get(expected, True)
    if not ok:
        return None, f"expected {expected.value}, got {_type_name(raw)}"
    if expected is ValueType.FLOAT and isinstance(value, int):
        value = float(value)
    return value, None


def _scalar(raw: Any) -> Value:
    if raw is None or isinstance(raw, bool | int | str):
        return raw
    if isinstance(raw, float):
        return raw  # NaN and infinities are values the PLC sent; the wire format carries them
    if isinstance(raw, datetime):
        return iso(raw)
    if isinstance(raw, bytes):
        return raw.hex()
    if isinstance(raw, ua.LocalizedText):
        return str(raw.Text or "")
    if isinstance(raw, ua.QualifiedName):
        return str(raw.Name or "")
    if isinstance(raw, ua.NodeId):
        return str(raw.to_string())
    if isinstance(raw, uuid.UUID):
        return str(raw)
    return json.dumps(_json(raw), ensure_ascii=False)


def _json(raw: Any) -> Any:
    """A JSON-able form of any Variant content (array items, structures)."""
    value = _scalar(raw) if not isinstance(raw, list | tuple) else [_json(v) for v in raw]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None and raw is not None and not isinstance(raw, list | tuple):
        if hasattr(raw, "__dict__"):
            return {k: _json(v) for k, v in vars(raw).items() if not k.startswith("_")}
        return base64.b64encode(repr(raw).encode()).decode()
    return value


def _timestamp(stamp: datetime | None, now: float) -> tuple[float | None, str | None]:
    if stamp is None:
        return None, None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)  # asyncua gives naive UTC datetimes
    ts = stamp.timestamp()
    if ts < EARLIEST:
        return None, f"source timestamp {iso(stamp)} is not a time (no clock?); agent time used"
    if ts > now + FUTURE_TOLERANCE:
        return None, f"source timestamp {iso(stamp)} is in the future; agent time used"
    return ts, None


def iso(stamp: datetime) -> str:
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _type_name(raw: Any) -> str:
    names = {bool: "Boolean", int: "an integer", float: "a float", str: "String"}
    for kind, name in names.items():
        if type(raw) is kind:
            return name
    if isinstance(raw, datetime):
        return "DateTime"
    if isinstance(raw, bytes):
        return "ByteString"
    return type(raw).__name__


def _join(first: str | None, second: str | None) -> str | None:
    if first and second:
        return f"{first}; {second}"
    return first or second
