"""OPC UA DataValues to observations: a table of what servers send and what is recorded."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

ua = pytest.importorskip("asyncua").ua

from drivers.opcua.config import OpcUaPoint, ValueType  # noqa: E402
from drivers.opcua.values import observation  # noqa: E402
from kernel.model import Quality  # noqa: E402

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC).timestamp()
SOURCE = datetime(2026, 12, 3, 11, 59, 59, 500000)  # asyncua hands out naive UTC


def dv(value: Any, status: int = 0, source: datetime | None = SOURCE, kind: Any = None) -> Any:
    variant = ua.Variant(value, kind) if kind is not None else ua.Variant(value)
    return ua.DataValue(variant, ua.StatusCode(status), SourceTimestamp=source)


CASES = [
    # (data value, expected type, value, quality, error)
    (dv(21.5, kind=ua.VariantType.Float), ValueType.ANY, 21.5, Quality.GOOD, None),
    (dv(7, kind=ua.VariantType.UInt32), ValueType.FLOAT, 7.0, Quality.GOOD, None),
    (dv("S-0001"), ValueType.STRING, "S-0001", Quality.GOOD, None),
    (dv(True), ValueType.BOOL, True, Quality.GOOD, None),
    (
        dv(3.0, ua.StatusCodes.UncertainLastUsableValue),
        ValueType.ANY,
        3.0,
        Quality.UNCERTAIN,
        "status UncertainLastUsableValue",
    ),
    (
        dv(3.0, ua.StatusCodes.BadSensorFailure),
        ValueType.ANY,
        3.0,
        Quality.BAD,
        "status BadSensorFailure",
    ),
    (dv("12.5"), ValueType.FLOAT, None, Quality.BAD, "expected float, got String"),
    (dv(True), ValueType.INT, None, Quality.BAD, "expected int, got Boolean"),
    (dv([1, 2, 3]), ValueType.FLOAT, None, Quality.BAD, "expected float, got an array of 3"),
    (dv([1.5, 2.5]), ValueType.ANY, "[1.5, 2.5]", Quality.GOOD, None),
    (dv(5), ValueType.ARRAY, None, Quality.BAD, "expected an array, got an integer"),
    (
        dv(datetime(2026, 1, 2, 3, 4, 5, 600000)),
        ValueType.DATETIME,
        "2026-01-02T03:04:05.600000Z",
        Quality.GOOD,
        None,
    ),
    (dv(b"\x30\x14\xab"), ValueType.BYTES, "3014ab", Quality.GOOD, None),
    (dv(ua.LocalizedText("Running", "en")), ValueType.STRING, "Running", Quality.GOOD, None),
    (
        dv(1.0, source=datetime(1601, 1, 1)),
        ValueType.ANY,
        1.0,
        Quality.UNCERTAIN,
        "source timestamp 1601-01-01T00:00:00.000000Z is not a time (no clock?); agent time used",
    ),
    (
        dv(1.0, source=datetime(2126, 1, 1)),
        ValueType.ANY,
        1.0,
        Quality.UNCERTAIN,
        "source timestamp 2126-01-01T00:00:00.000000Z is in the future; agent time used",
    ),
    (
        dv(1.0, ua.StatusCodes.BadOutOfService, source=datetime(1601, 1, 1)),
        ValueType.ANY,
        1.0,
        Quality.BAD,
        "status BadOutOfService; source timestamp 1601-01-01T00:00:00.000000Z is not a time "
        "(no clock?); agent time used",
    ),
]


@pytest.mark.parametrize(("data", "expected", "value", "quality", "error"), CASES)
def test_data_value_becomes_observation(
    data: Any, expected: ValueType, value: Any, quality: Quality, error: str | None
) -> None:
    point = OpcUaPoint(name="p", node="i=2258", type=expected, unit="kN")
    o = observation("plc", point, data, now=NOW)
    assert (o.value, o.quality, o.error) == (value, quality, error)
    assert (o.device, o.point, o.unit, o.ts) == ("plc", "p", "kN", NOW)


def test_source_timestamp_is_kept_beside_the_agents() -> None:
    o = observation("plc", OpcUaPoint(name="p", node="i=2258"), dv(1), now=NOW)
    assert o.source_ts == SOURCE.replace(tzinfo=UTC).timestamp()
    o = observation("plc", OpcUaPoint(name="p", node="i=2258"), dv(1, source=None), now=NOW)
    assert o.source_ts is None
    assert o.quality is Quality.GOOD


def test_the_server_timestamp_is_kept_beside_the_source_timestamp() -> None:
    value = ua.DataValue(
        ua.Variant(1.5), ua.StatusCode(0), SourceTimestamp=SOURCE,
        ServerTimestamp=datetime(2026, 12, 3, 11, 59, 59, 750000),
    )  # fmt: skip
    got = observation("press", OpcUaPoint(name="p", node="nsu=urn:x;s=p"), value, NOW)
    assert got.source_ts == SOURCE.replace(tzinfo=UTC).timestamp()
    assert got.server_ts == NOW - 0.25


@pytest.mark.parametrize("discard_oldest", [True, False])
def test_a_queue_overflow_states_that_changes_were_discarded(discard_oldest: bool) -> None:
    point = OpcUaPoint(name="p", node="nsu=urn:x;s=p", queue_size=5, discard_oldest=discard_oldest)
    got = observation("press", point, dv(2.0, status=0x0480), NOW)
    assert got.quality is Quality.GOOD
    assert got.value == 2.0
    assert got.unobserved is not None
    assert got.unobserved.since is None
    older = "oldest" if discard_oldest else "newest"
    assert f"queue for this point overflowed (queue_size 5): it discarded the {older}" in (
        got.unobserved.reason
    )
    assert observation("press", point, dv(2.0), NOW).unobserved is None
