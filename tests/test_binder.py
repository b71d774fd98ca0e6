"""Binding is a pure function: tables of (contexts, observations) -> records."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from edge_agent.binder import Binder, BindingRules, StationState, bind, context_value
from kernel.model import Observation, Quality, RecordKind, Unobserved

RULES = BindingRules(
    station_of={
        ("plc", "serial"): "ST10",
        ("plc", "lot"): "ST10",
        ("plc", "temp"): "ST10",
        ("plc", "force"): "ST10",
        ("plc2", "temp"): "ST20",
        ("plc2", "serial"): "ST20",
    },
    context_of={
        ("plc", "serial"): (("ST10", "serial"),),
        ("plc", "lot"): (("ST10", "lot"),),
        ("plc2", "serial"): (("ST20", "serial"),),
    },
    station_keys={"ST10": ("serial", "lot"), "ST20": ("serial",)},
)


def obs(
    device: str, point: str, value: Any, quality: Quality = Quality.GOOD, **kw: Any
) -> Observation:
    kw.setdefault("ts", 1_700_000_000.0)
    return Observation(device, point, value, quality, **kw)


def summary(drafts: list[Any]) -> list[tuple[Any, ...]]:
    """Records as compact tuples: (kind, station, key, value, ctx serial); for a readings
    record, key is "values" and value the values."""
    out = []
    for d in drafts:
        b = d.body
        if d.kind is RecordKind.READINGS:
            out.append(R(d.station, b["values"], b["ctx"].get("serial")))
        else:
            out.append((d.kind.value, d.station, b["key"], b["value"], b["ctx"].get("serial")))
    return out


def R(station: str, values: dict[str, Any], serial: Any) -> tuple[Any, ...]:
    """A readings record in ``summary`` form."""
    return ("readings", station, "values", values, serial)


CASES: list[
    tuple[str, dict[str, dict[str, Any]], list[list[Observation]], list[tuple[Any, ...]]]
] = [
    (
        "reading with no serial is kept and marked (serial None)",
        {},
        [[obs("plc", "temp", 21.5)]],
        [R("ST10", {"temp": 21.5}, None)],
    ),
    (
        "serial read in the same response applies before its readings",
        {},
        [[obs("plc", "temp", 21.5), obs("plc", "serial", "SN1")]],
        [("context", "ST10", "serial", "SN1", "SN1"), R("ST10", {"temp": 21.5}, "SN1")],
    ),
    (
        "a reading taken before the new serial belongs to the previous one",
        {"ST10": {"serial": "SN1", "lot": None}},
        [[obs("plc", "temp", 1.0)], [obs("plc", "serial", "SN2")], [obs("plc", "temp", 2.0)]],
        [
            R("ST10", {"temp": 1.0}, "SN1"),
            ("context", "ST10", "serial", "SN2", "SN2"),
            R("ST10", {"temp": 2.0}, "SN2"),
        ],
    ),
    (
        "an unchanged serial makes no context record",
        {"ST10": {"serial": "SN1", "lot": None}},
        [[obs("plc", "serial", "SN1"), obs("plc", "temp", 3.0)]],
        [R("ST10", {"temp": 3.0}, "SN1")],
    ),
    (
        "padding is trimmed and an empty serial register clears the serial",
        {"ST10": {"serial": "SN1", "lot": None}},
        [[obs("plc", "serial", "  SN1 ")], [obs("plc", "serial", "")], [obs("plc", "temp", 4.0)]],
        [
            ("context", "ST10", "serial", None, None),
            R("ST10", {"temp": 4.0}, None),
        ],
    ),
    (
        "a BAD serial read keeps the context and is recorded as a BAD value",
        {"ST10": {"serial": "SN1", "lot": None}},
        [
            [
                obs("plc", "serial", None, Quality.BAD, error="timeout"),
                obs("plc", "temp", None, Quality.BAD),
            ]
        ],
        [
            R("ST10", {"serial": None, "temp": None}, "SN1"),
        ],
    ),
    (
        "one batch, two responses: a value read before the serial's response keeps the old serial",
        {"ST10": {"serial": "SN1", "lot": None}},
        [
            [
                obs("plc", "temp", 5.0, ts=1.0),
                obs("plc", "serial", "SN2", ts=1.01),
                obs("plc", "force", 6, ts=1.01),
            ]
        ],
        [
            R("ST10", {"temp": 5.0}, "SN1"),
            ("context", "ST10", "serial", "SN2", "SN2"),
            R("ST10", {"force": 6}, "SN2"),
        ],
    ),
    (
        "stations keep separate contexts",
        {},
        [
            [obs("plc", "serial", "A1")],
            [obs("plc2", "serial", "B1"), obs("plc2", "temp", 9.0)],
            [obs("plc", "temp", 8.0)],
        ],
        [
            ("context", "ST10", "serial", "A1", "A1"),
            ("context", "ST20", "serial", "B1", "B1"),
            R("ST20", {"temp": 9.0}, "B1"),
            R("ST10", {"temp": 8.0}, "A1"),
        ],
    ),
    (
        "lot and serial change together; both context records precede the reading",
        {},
        [[obs("plc", "serial", "SN9"), obs("plc", "lot", "L7"), obs("plc", "force", 2)]],
        [
            ("context", "ST10", "serial", "SN9", "SN9"),
            ("context", "ST10", "lot", "L7", "SN9"),
            R("ST10", {"force": 2}, "SN9"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("title", "start", "batches", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_bind_table(
    title: str,
    start: dict[str, dict[str, Any]],
    batches: list[list[Observation]],
    expected: list[tuple[Any, ...]],
) -> None:
    state = RULES.initial_state()
    for station, ctx in start.items():
        state[station] = StationState(MappingProxyType(ctx))
    binder = Binder(RULES, state)
    drafts = [d for batch in batches for d in binder.feed(batch).drafts]
    assert summary(drafts) == expected


def test_bind_is_deterministic_and_records_keep_their_context() -> None:
    batch = [obs("plc", "serial", "SN1"), obs("plc", "temp", 1.0)]
    first, second = RULES.initial_state(), RULES.initial_state()
    assert [d.body for d in bind(first, batch, RULES).drafts] == [
        d.body for d in bind(second, batch, RULES).drafts
    ]
    # A record keeps the context it was bound to, even after later changes.
    binder = Binder(RULES)
    reading = binder.feed(batch).drafts[-1]
    binder.feed([obs("plc", "serial", "SN2")])
    assert reading.body["ctx"]["serial"] == "SN1"
    assert binder.contexts["ST10"]["serial"] == "SN2"


def test_unchanged_context_is_the_same_mapping() -> None:
    binder = Binder(RULES)
    before = binder.contexts["ST10"]
    binder.feed([obs("plc", "temp", 1.0), obs("plc", "serial", None, Quality.BAD)])
    assert binder.contexts["ST10"] is before


def test_readings_body_fields() -> None:
    (d,) = (
        Binder(RULES)
        .feed(
            [
                obs(
                    "plc",
                    "temp",
                    21.5,
                    unit="degC",
                    source_ts=1_700_000_001.5,
                    server_ts=1_700_000_001.75,
                ),
                obs("plc", "force", 7),
                obs("plc", "lot", None, Quality.BAD, error="modbus exception 2"),
            ]
        )
        .drafts
    )
    assert d.kind is RecordKind.READINGS
    # Side maps hold only the points that need them: good points with no unit are just values.
    assert d.body == {
        "kind": "readings",
        "station": "ST10",
        "ts": "2023-11-14T22:13:20.000000Z",
        "device": "plc",
        "ctx": {"serial": None, "lot": None},
        "values": {"temp": 21.5, "force": 7, "lot": None},
        "quality": {"lot": "bad"},
        "errors": {"lot": "modbus exception 2"},
        "units": {"temp": "degC"},
        "source_ts": {"temp": "2023-11-14T22:13:21.500000Z"},
        "server_ts": {"temp": "2023-11-14T22:13:21.750000Z"},
    }


def test_a_window_of_unobserved_changes_is_stated_before_the_values_that_end_it() -> None:
    """A subscription rebuilt: the current values carry since when changes may be missing.
    One record per station, device and window, ahead of the context changes and readings
    of the same response (the serial among its points too), in the context before them."""
    lost = Unobserved(1_699_999_990.0, "subscription rebuilt (server restarted)")
    overflow = Unobserved(None, "queue overflowed")
    step = Binder(RULES).feed(
        [
            obs("plc", "serial", "SN2", unobserved=lost),
            obs("plc", "temp", 21.5, unobserved=lost),
            obs("plc", "force", 7, unobserved=overflow),
            obs("plc2", "temp", 3.0, unobserved=lost),
        ]
    )
    kinds = [(d.kind.value, d.station) for d in step.drafts]
    assert kinds == [
        ("unobserved", "ST10"),
        ("unobserved", "ST10"),
        ("unobserved", "ST20"),
        ("context", "ST10"),
        ("readings", "ST10"),
        ("readings", "ST20"),
    ]
    first, second, third = (d.body for d in step.drafts[:3])
    assert first == {
        "kind": "unobserved",
        "station": "ST10",
        "ts": "2023-11-14T22:13:20.000000Z",
        "device": "plc",
        "since": "2023-11-14T22:13:10.000000Z",
        "until": "2023-11-14T22:13:20.000000Z",
        "points": ["serial", "temp"],
        "reason": "subscription rebuilt (server restarted)",
        "ctx": {"serial": None, "lot": None},
    }
    assert (second["points"], second["since"], second["reason"]) == (
        ["force"],
        None,
        "queue overflowed",
    )
    assert (third["device"], third["points"]) == ("plc2", ["temp"])
    assert all(d.kind is not RecordKind.UNOBSERVED or d.state is None for d in step.drafts)


def test_one_response_gives_one_record_per_station() -> None:
    rules = BindingRules(
        station_of={("plc", "a"): "ST10", ("plc", "b"): "ST20", ("plc", "c"): "ST10"},
        context_of={},
        station_keys={"ST10": (), "ST20": ()},
    )
    step = Binder(rules).feed([obs("plc", "a", 1), obs("plc", "b", 2), obs("plc", "c", 3)])
    assert [(d.station, d.body["values"]) for d in step.drafts] == [
        ("ST10", {"a": 1, "c": 3}),
        ("ST20", {"b": 2}),
    ]
    assert all("quality" not in d.body for d in step.drafts)


def test_values_of_two_devices_never_share_a_record() -> None:
    """Same station, same ts, one batch: still one record per device, each naming its own."""
    rules = BindingRules(
        station_of={("plc", "temp"): "ST10", ("plc2", "temp"): "ST10"},
        context_of={},
        station_keys={"ST10": ()},
    )
    step = Binder(rules).feed([obs("plc", "temp", 1.0), obs("plc2", "temp", 2.0)])
    assert [(d.station, d.body["device"], d.body["values"]) for d in step.drafts] == [
        ("ST10", "plc", {"temp": 1.0}),
        ("ST10", "plc2", {"temp": 2.0}),
    ]


def test_a_point_twice_in_one_batch_is_two_records_not_one_value() -> None:
    """A subscription's queue hands over two changes of one point at once: both are kept,
    in order, each in a record of its own (a record holds one value per point)."""
    rules = BindingRules(
        station_of={("ua", "t"): "ST10", ("ua", "f"): "ST10"},
        context_of={},
        station_keys={"ST10": ()},
    )
    step = Binder(rules).feed(
        [obs("ua", "t", 1.0), obs("ua", "f", 7), obs("ua", "t", 1.5), obs("ua", "t", 2.0)]
    )
    assert [d.body["values"] for d in step.drafts] == [
        {"t": 1.0, "f": 7},
        {"t": 1.5},
        {"t": 2.0},
    ]


def test_unknown_point_is_kept_not_dropped() -> None:
    (d,) = Binder(RULES).feed([obs("ghost", "x", 1)]).drafts
    assert d.station == "_unassigned"


@pytest.mark.parametrize(
    ("raw", "expected"), [("SN1", "SN1"), (" SN1\t", "SN1"), ("", None), ("   ", None), (42, 42)]
)
def test_context_value(raw: Any, expected: Any) -> None:
    assert context_value(raw) == expected
