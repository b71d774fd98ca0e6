"""Planner tables: points in, expected requests out."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.modbus.config import DataType, ModbusPoint, ModbusTcpDevice, Report, Table
from drivers.modbus.plan import (
    Request,
    plan_device,
    plan_issues,
    plan_requests,
    snapshot_requests,
)

H, IN, C, D = Table.HOLDING, Table.INPUT, Table.COIL, Table.DISCRETE_INPUT

# A compact way to write a point: (name, address, type, extra fields).
Spec = tuple[str, int, str, dict[str, Any]]
# Expected request: (table, protocol address, count, [(point name, offset), ...]).
Want = tuple[Table, int, int, list[tuple[str, int]]]


def mk(name: str, address: int, type_: str, **kw: Any) -> ModbusPoint:
    if type_ == "bool":
        kw.setdefault("table", Table.COIL)
    return ModbusPoint(name=name, address=address, type=DataType(type_), **kw)


def shape(requests: list[Request]) -> list[Want]:
    return [
        (r.table, r.address, r.count, [(pp.point.name, pp.offset) for pp in r.points])
        for r in requests
    ]


CASES: list[tuple[str, list[Spec], dict[str, Any], list[Want]]] = [
    (
        "adjacent points coalesce",
        [("a", 0, "uint16", {}), ("b", 1, "int32", {}), ("c", 3, "float64", {})],
        {},
        [(H, 0, 7, [("a", 0), ("b", 1), ("c", 3)])],
    ),
    (
        "config order does not matter",
        [("c", 3, "float64", {}), ("a", 0, "uint16", {}), ("b", 1, "int32", {})],
        {},
        [(H, 0, 7, [("a", 0), ("b", 1), ("c", 3)])],
    ),
    (
        "gap within max_gap is read through",
        [("a", 0, "uint16", {}), ("b", 9, "uint16", {})],
        {"max_gap": 8},
        [(H, 0, 10, [("a", 0), ("b", 9)])],
    ),
    (
        "gap larger than max_gap splits",
        [("a", 0, "uint16", {}), ("b", 10, "uint16", {})],
        {"max_gap": 8},
        [(H, 0, 1, [("a", 0)]), (H, 10, 1, [("b", 0)])],
    ),
    (
        "max_gap 0 still merges neighbours",
        [("a", 0, "uint16", {}), ("b", 1, "uint16", {}), ("c", 3, "uint16", {})],
        {"max_gap": 0},
        [(H, 0, 2, [("a", 0), ("b", 1)]), (H, 3, 1, [("c", 0)])],
    ),
    (
        "125 registers fit one request",
        [("a", 0, "uint16", {}), ("b", 124, "uint16", {})],
        {"max_gap": 124},
        [(H, 0, 125, [("a", 0), ("b", 124)])],
    ),
    (
        "the 126th register starts a new request",
        [("a", 0, "uint16", {}), ("b", 124, "int32", {})],
        {"max_gap": 124},
        [(H, 0, 1, [("a", 0)]), (H, 124, 2, [("b", 0)])],
    ),
    (
        "a device limit below 125 is honoured",
        [(f"p{i}", i * 2, "int32", {}) for i in range(6)],
        {"max_registers": 4},
        [
            (H, 0, 4, [("p0", 0), ("p1", 2)]),
            (H, 4, 4, [("p2", 0), ("p3", 2)]),
            (H, 8, 4, [("p4", 0), ("p5", 2)]),
        ],
    ),
    (
        "tables are never merged",
        [
            ("h", 0, "uint16", {"table": H}),
            ("i", 1, "uint16", {"table": IN}),
            ("c", 2, "bool", {"table": C}),
            ("d", 3, "bool", {"table": D}),
        ],
        {},
        [
            (H, 0, 1, [("h", 0)]),
            (IN, 1, 1, [("i", 0)]),
            (C, 2, 1, [("c", 0)]),
            (D, 3, 1, [("d", 0)]),
        ],
    ),
    (
        "bits of one status word share its register",
        [
            ("run", 5, "bit", {"bit": 0}),
            ("fault", 5, "bit", {"bit": 15}),
            ("word", 5, "uint16", {}),
        ],
        {},
        [(H, 5, 1, [("run", 0), ("fault", 0), ("word", 0)])],
    ),
    (
        "overlapping multi-register points share",
        [
            ("serial", 10, "string", {"count": 8}),
            ("head", 10, "uint32", {}),
            ("tail", 17, "uint16", {}),
        ],
        {},
        [(H, 10, 8, [("serial", 0), ("head", 0), ("tail", 7)])],
    ),
    (
        "coils allow 2000 bits per request",
        [("a", 0, "bool", {}), ("b", 1999, "bool", {})],
        {"max_gap": 2000},
        [(C, 0, 2000, [("a", 0), ("b", 1999)])],
    ),
    (
        "the 2001st coil starts a new request",
        [("a", 0, "bool", {}), ("b", 2000, "bool", {})],
        {"max_gap": 2000},
        [(C, 0, 1, [("a", 0)]), (C, 2000, 1, [("b", 0)])],
    ),
    (
        "the register limit does not apply to coils",
        [(f"c{i}", i, "bool", {}) for i in range(130)],
        {},
        [(C, 0, 130, [(f"c{i}", i) for i in range(130)])],
    ),
    (
        "address_base 1 shifts every request",
        [("a", 1, "uint16", {}), ("b", 2, "int32", {}), ("c", 40001, "uint16", {})],
        {"address_base": 1},
        [(H, 0, 3, [("a", 0), ("b", 1)]), (H, 40000, 1, [("c", 0)])],
    ),
]


@pytest.mark.parametrize(
    ("points", "kw", "expected"),
    [pytest.param(points, kw, expected, id=name) for name, points, kw, expected in CASES],
)
def test_plan_requests(points: list[Spec], kw: dict[str, Any], expected: list[Want]) -> None:
    assert shape(plan_requests([mk(n, a, t, **x) for n, a, t, x in points], **kw)) == expected


def test_point_longer_than_a_request_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"'s'.*more than one request"):
        plan_requests([mk("s", 0, "string", count=100)], max_registers=50)


def test_address_below_base_is_rejected() -> None:
    with pytest.raises(ValueError, match="below 1"):
        plan_requests([mk("a", 0, "uint16")], address_base=1)


def device(points: list[ModbusPoint], **kw: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice(type="modbus_tcp", name="plc", host="127.0.0.1", points=points, **kw)


def test_device_groups_by_effective_interval() -> None:
    dev = device(
        [
            mk("slow", 0, "uint16", poll_interval=10.0),
            mk("a", 1, "uint16"),
            mk("fast", 2, "uint16", poll_interval=0.1),
            mk("b", 3, "uint16", poll_interval=1.0),  # same as the device default
        ],
        poll_interval=1.0,
    )
    groups = plan_device(dev)
    assert [g.interval for g in groups] == [0.1, 1.0, 10.0]
    assert [[p.name for p in g.points] for g in groups] == [["fast"], ["a", "b"], ["slow"]]
    # Different intervals never share a request even when their registers touch.
    assert [shape(list(g.requests)) for g in groups] == [
        [(H, 2, 1, [("fast", 0)])],
        [(H, 1, 3, [("a", 0), ("b", 2)])],
        [(H, 0, 1, [("slow", 0)])],
    ]


def test_device_settings_reach_the_planner() -> None:
    dev = device(
        [mk("a", 1, "uint16"), mk("b", 4, "uint16"), mk("c", 7, "int32")],
        address_base=1,
        max_gap=2,
        max_registers=5,
    )
    (group,) = plan_device(dev)
    assert shape(list(group.requests)) == [
        (H, 0, 4, [("a", 0), ("b", 3)]),
        (H, 6, 2, [("c", 0)]),
    ]


def test_points_too_long_for_a_request_are_config_issues() -> None:
    dev = device(
        [mk("ok", 0, "string", count=10), mk("long", 20, "string", count=20)], max_registers=16
    )
    assert plan_issues(dev) == [
        (("points", 1, "count"), "20 registers do not fit one request (max_registers is 16)")
    ]


# -- snapshots ----------------------------------------------------------------------------

SNAPSHOT_DEVICE = [
    mk("counter", 0, "uint32", poll_interval=0.1),
    mk("serial", 2, "string", count=4, report=Report.ON_CHANGE),
    mk("force", 6, "float32", report=Report.SNAPSHOT),
    mk("result", 8, "uint16", report=Report.SNAPSHOT),
    mk("far", 30, "uint16", report=Report.SNAPSHOT),
    mk("in_a", 0, "uint16", table=IN, report=Report.SNAPSHOT),
    mk("ready", 2, "bool", report=Report.SNAPSHOT),
    mk("slow", 10, "uint16", poll_interval=60.0),
]


@pytest.mark.parametrize(
    ("names", "kw", "expected"),
    [
        pytest.param(
            ["result", "counter", "force", "serial"],
            {},
            [(H, 0, 9, [("counter", 0), ("serial", 2), ("force", 6), ("result", 8)])],
            id="intervals and report modes do not split a snapshot",
        ),
        pytest.param(
            ["counter", "slow"],
            {},
            [(H, 0, 11, [("counter", 0), ("slow", 10)])],
            id="points of different poll groups coalesce",
        ),
        pytest.param(
            ["counter", "in_a", "ready"],
            {},
            [(H, 0, 2, [("counter", 0)]), (IN, 0, 1, [("in_a", 0)]), (C, 2, 1, [("ready", 0)])],
            id="tables split",
        ),
        pytest.param(
            ["result", "far"],
            {"max_gap": 0},
            [(H, 8, 23, [("result", 0), ("far", 22)])],
            id="a snapshot bridges gaps wider than max_gap: one instant beats a round trip",
        ),
        pytest.param(
            ["counter", "force", "result"],
            {"max_registers": 8},
            [(H, 0, 8, [("counter", 0), ("force", 6)]), (H, 8, 1, [("result", 0)])],
            id="max_registers splits",
        ),
        pytest.param(
            ["force", "force", "result", "force"],
            {},
            [(H, 6, 3, [("force", 0), ("result", 2)])],
            id="a repeated name is read once",
        ),
        pytest.param([], {}, [], id="nothing to read"),
    ],
)
def test_snapshot_requests(names: list[str], kw: dict[str, Any], expected: list[Want]) -> None:
    assert shape(snapshot_requests(device(SNAPSHOT_DEVICE, **kw), names)) == expected


def test_snapshot_of_unknown_points_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="device 'plc' has no point\\(s\\) 'nope', 'nah'"):
        snapshot_requests(device(SNAPSHOT_DEVICE), ["counter", "nope", "nah"])


def test_snapshot_honours_address_base() -> None:
    dev = device([mk("a", 1, "uint16"), mk("b", 3, "uint16")], address_base=1)
    assert shape(snapshot_requests(dev, ["b", "a"])) == [(H, 0, 3, [("a", 0), ("b", 2)])]


def test_snapshot_only_points_are_not_polled() -> None:
    groups = plan_device(device(SNAPSHOT_DEVICE))
    assert [[p.name for p in g.points] for g in groups] == [["counter"], ["serial"], ["slow"]]


def test_a_device_of_snapshot_points_only_has_no_poll_groups() -> None:
    dev = device([mk("a", 0, "uint16", report=Report.SNAPSHOT)])
    assert dev.issues() == []
    assert plan_device(dev) == []


def test_snapshot_points_take_no_poll_interval() -> None:
    p = mk("a", 0, "uint16", report=Report.SNAPSHOT, poll_interval=1.0)
    assert p.issues() == [
        (("poll_interval",), "report snapshot is never polled; drop poll_interval")
    ]


@pytest.mark.parametrize(
    ("spec", "issue"),
    [
        (("c", 0, "bool", {}), None),
        (("h16", 0, "int16", {}), None),
        (("hu16", 0, "uint16", {"word_order": "BADC"}), None),
        (
            ("d", 0, "bool", {"table": D}),
            "discrete_input is read-only in Modbus; use a coil or holding register",
        ),
        (
            ("i", 0, "uint16", {"table": IN}),
            "input is read-only in Modbus; use a coil or holding register",
        ),
        (
            ("b", 0, "bit", {"bit": 3}),
            "type bit would need a read-modify-write of the whole register, which can undo bits "
            "the PLC changes in between; use a coil or a whole int16/uint16 register",
        ),
        (
            ("f", 0, "float32", {}),
            "only single-register int16/uint16 points are written (FC6), not float32",
        ),
        (
            ("s", 0, "string", {"count": 1}),
            "only single-register int16/uint16 points are written (FC6), not string",
        ),
        (
            ("sc", 0, "int16", {"scale": 0.1}),
            "scaled points are not written; use scale 1 and offset 0 (the raw register)",
        ),
        (
            ("of", 0, "uint16", {"offset": 1.0}),
            "scaled points are not written; use scale 1 and offset 0 (the raw register)",
        ),
    ],
)
def test_write_issue(spec: Spec, issue: str | None) -> None:
    name, address, type_, kw = spec
    p = mk(name, address, type_, **kw)
    assert p.issues() == []
    assert p.write_issue() == issue
