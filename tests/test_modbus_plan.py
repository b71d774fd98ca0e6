"""Planner tables: points in, expected requests out."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.modbus.config import DataType, ModbusPoint, ModbusTcpDevice, Table
from drivers.modbus.plan import Request, plan_device, plan_issues, plan_requests

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
