"""Cross-field checks at start-up: overlapping registers, one entry per PLC unit, polls that a
slow answer would overrun. Each is reported at the YAML line of the value to change."""

from __future__ import annotations

import pytest

from edge_agent.config import parse_config
from kernel.errors import ConfigError

HEAD = """\
agent: {site: plant1, line: line3, id: pc1}
stations:
  - name: ST10
devices:
  - name: plc1
    type: modbus_tcp
    host: 10.0.0.5
    points:
"""
SHARE = "only bits of one register or exact aliases (same address and type) may share"


def check(points: list[str], tail: str = "") -> list[str]:
    text = HEAD + "".join(f"      - {{{p}}}\n" for p in points) + tail
    try:
        parse_config(text, "plc.yaml", env={})
    except ConfigError as exc:
        return [str(i) for i in exc.issues]
    return []


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        # what may share registers
        (
            [
                "name: running, address: 7, type: bit, bit: 0",
                "name: nok, address: 7, type: bit, bit: 2",
                "name: status, address: 7, type: uint16",  # the word beside its bits
            ],
            [],
        ),
        (
            [
                "name: force, address: 4, type: float32, unit: kN",
                "name: force_n, address: 4, type: float32, scale: 1000, unit: N",  # exact alias
                "name: force_coil, address: 4, type: bool, table: coil",  # another table
                "name: force_in, address: 4, type: float32, table: input",
            ],
            [],
        ),
        (["name: a, address: 0, type: uint32", "name: b, address: 2, type: uint32"], []),
        # partial overlaps: a misread register map
        (
            ["name: total, address: 10, type: uint32", "name: rest, address: 11, type: int16"],
            [
                "plc.yaml:10:22: devices[0].points[1].address: int16 at register 11 overlaps "
                f"'total' (points[0], uint32 at registers 10..11): {SHARE}"
            ],
        ),
        (  # reported at the later entry, whatever the addresses
            ["name: rest, address: 11, type: int16", "name: total, address: 10, type: uint32"],
            [
                "plc.yaml:10:23: devices[0].points[1].address: uint32 at registers 10..11 "
                f"overlaps 'rest' (points[0], int16 at register 11): {SHARE}"
            ],
        ),
        (
            ["name: a, address: 10, type: float32", "name: b, address: 10, type: uint32"],
            [
                "plc.yaml:10:19: devices[0].points[1].address: uint32 at registers 10..11 "
                f"overlaps 'a' (points[0], float32 at registers 10..11): {SHARE}"
            ],
        ),
        (
            [
                "name: serial, address: 20, type: string, count: 6",
                "name: lot, address: 24, type: string, count: 4",
            ],
            [
                "plc.yaml:10:21: devices[0].points[1].address: string at registers 24..27 "
                f"overlaps 'serial' (points[0], string at registers 20..25): {SHARE}"
            ],
        ),
        (
            [
                "name: energy, address: 10, type: uint64",
                "name: flag, address: 12, type: bit, bit: 3",
            ],
            [
                "plc.yaml:10:22: devices[0].points[1].address: bit at register 12 overlaps "
                f"'energy' (points[0], uint64 at registers 10..13): {SHARE}"
            ],
        ),
        (
            [
                "name: a, address: 0, type: uint64",
                "name: b, address: 1, type: int16",
                "name: c, address: 3, type: uint32",
            ],
            [
                "plc.yaml:10:19: devices[0].points[1].address: int16 at register 1 overlaps 'a' "
                f"(points[0], uint64 at registers 0..3): {SHARE}",
                "plc.yaml:11:19: devices[0].points[2].address: uint32 at registers 3..4 overlaps "
                f"'a' (points[0], uint64 at registers 0..3): {SHARE}",
            ],
        ),
    ],
)
def test_register_overlaps(points: list[str], expected: list[str]) -> None:
    assert check(points) == expected


TWO = """\
  - name: plc2
    type: modbus_tcp
    host: {host}
    port: {port}
    unit_id: {unit}
    points:
      - {{name: b, address: 0, type: uint16}}
"""


@pytest.mark.parametrize(
    ("host", "port", "unit", "expected"),
    [
        (
            "10.0.0.5",
            502,
            1,
            [
                "plc.yaml:14:5: devices[1].unit_id: same PLC as devices[0] (10.0.0.5:502 unit "
                "1): give each PLC unit one entry (its points may each set poll_interval and "
                "station)"
            ],
        ),
        (
            "PLC-A.local",
            502,
            1,
            [
                "plc.yaml:14:5: devices[1].unit_id: same PLC as devices[0] (PLC-A.local:502 "
                "unit 1): give each PLC unit one entry (its points may each set poll_interval "
                "and station)"
            ],
        ),
        ("10.0.0.5", 502, 2, []),  # another unit behind the same gateway
        ("10.0.0.5", 5020, 1, []),
        ("10.0.0.6", 502, 1, []),
    ],
)
def test_one_entry_per_plc_unit(host: str, port: int, unit: int, expected: list[str]) -> None:
    first = "plc-a.local" if host == "PLC-A.local" else "10.0.0.5"
    text = HEAD.replace("10.0.0.5", first) + "      - {name: a, address: 0, type: uint16}\n"
    text += TWO.format(host=host, port=port, unit=unit)
    try:
        parse_config(text, "plc.yaml", env={})
        found: list[str] = []
    except ConfigError as exc:
        found = [str(i) for i in exc.issues]
    assert found == expected


OVERRUN = "a slow answer would overrun the next poll; raise poll_interval or lower timeout"


@pytest.mark.parametrize(
    ("device", "points", "expected"),
    [
        (
            "timeout: 1.0\n    poll_interval: 0.2\n",
            ["name: a, address: 0, type: uint16", "name: b, address: 1, type: uint16"],
            [
                "plc.yaml:9:5: devices[0].poll_interval: poll_interval 0.2 s is shorter than "
                f"timeout 1.0 s: {OVERRUN}"
            ],
        ),
        (  # a point's own interval, at that point
            "timeout: 0.5\n",
            [
                "name: a, address: 0, type: uint16",
                "name: b, address: 1, type: uint16, poll_interval: 0.1",
            ],
            [
                "plc.yaml:11:45: devices[0].points[1].poll_interval: poll_interval 0.1 s is "
                f"shorter than timeout 0.5 s: {OVERRUN}"
            ],
        ),
        (  # the default timeout (1 s) against a written interval
            "poll_interval: 0.25\n",
            ["name: a, address: 0, type: uint16"],
            [
                "plc.yaml:8:5: devices[0].poll_interval: poll_interval 0.25 s is shorter than "
                f"timeout 1.0 s: {OVERRUN}"
            ],
        ),
        ("timeout: 0.2\n    poll_interval: 0.2\n", ["name: a, address: 0, type: uint16"], []),
        (  # snapshot points are never polled
            "timeout: 1.0\n    poll_interval: 0.1\n",
            ["name: a, address: 0, type: uint16, report: snapshot"],
            [],
        ),
        (  # every polled point has its own, long enough, interval
            "timeout: 1.0\n    poll_interval: 0.1\n",
            [
                "name: a, address: 0, type: uint16, poll_interval: 1",
                "name: b, address: 1, type: uint16, report: snapshot",
            ],
            [],
        ),
    ],
)
def test_poll_interval_not_shorter_than_timeout(
    device: str, points: list[str], expected: list[str]
) -> None:
    text = HEAD.replace("    points:\n", f"    {device}    points:\n")
    text += "".join(f"      - {{{p}}}\n" for p in points)
    try:
        parse_config(text, "plc.yaml", env={})
        found: list[str] = []
    except ConfigError as exc:
        found = [str(i) for i in exc.issues]
    assert found == expected
