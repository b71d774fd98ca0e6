"""Quality rules against tables of part records: each rule fires exactly on the record it
should, not one earlier, and clears when it should; the rules file's errors name file:line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trace_store.quality.ruleconf import RulesError, load_rules
from trace_store.quality.rules import (
    ConsecutiveNok,
    Cpk,
    Engine,
    NokRate,
    Part,
    Rule,
    RunRules,
    Where,
)


def part(
    n: int,
    result: str | None = "ok",
    *,
    station: str = "ST10",
    lot: str = "L1",
    value: float | None = None,
    ts: str | None = None,
) -> Part:
    return Part(
        agent="pc1",
        epoch="e1",
        seq=n,
        line="L3",
        station=station,
        ts=ts or f"2026-12-03T10:{n // 60:02d}:{n % 60:02d}.000000Z",
        serial=f"SN{n}",
        result=result,
        lot=lot,
        product="P-100",
        values={} if value is None else {"force": value},
        limits={"force": (18.0, 22.0)},
    )


def run(rule: Rule, parts: list[Part]) -> list[tuple[int, str]]:
    """(index of the part, state) of every transition."""
    engine = Engine([rule])
    return [(i, t.state) for i, p in enumerate(parts) for t in engine.feed(p)]


def results(text: str, **kw: Any) -> list[Part]:
    """'..xx.' -> ok ok nok nok ok ('-': no result)."""
    codes = {".": "ok", "x": "nok", "-": None}
    return [part(i + 1, codes[c], **kw) for i, c in enumerate(text)]


@pytest.mark.parametrize(
    ("count", "table", "expected"),
    [
        (3, "xx.xx.", []),  # never three in a row
        (3, "..xxx", [(4, "firing")]),  # fires on the third, not the second
        (3, "xxx.x", [(2, "firing"), (3, "ok")]),  # an OK part clears it
        (3, "xx-x", [(3, "firing")]),  # a part without a result neither counts nor breaks
        (1, ".x", [(1, "firing")]),
    ],
)
def test_consecutive_nok(count: int, table: str, expected: list[tuple[int, str]]) -> None:
    assert run(ConsecutiveNok("c", count=count), results(table)) == expected


def test_consecutive_nok_is_counted_per_station() -> None:
    parts = [part(1, "nok"), part(2, "nok", station="ST20"), part(3, "nok"), part(4, "nok")]
    assert run(ConsecutiveNok("c", count=3), parts) == [(3, "firing")]


@pytest.mark.parametrize(
    ("threshold", "window", "min_parts", "table", "expected"),
    [
        # 2 of 10 = 20% is not above 20%; the 3rd NOK in the window is.
        (0.2, 10, 10, "x....x...x", [(9, "firing")]),
        (0.2, 10, 10, "x....x....x", []),  # at the 11th part the first NOK left the window
        # Too few parts yet: 2 of 4 is 50% but min_parts is 5; the 5th part makes it count.
        (0.3, 10, 5, "xx..", []),
        (0.3, 10, 5, "xx...", [(4, "firing")]),
        # The window slides: old NOKs leave it and the rule clears.
        (0.2, 5, 5, "xx..." + ".", [(4, "firing"), (5, "ok")]),
    ],
)
def test_nok_rate(
    threshold: float, window: int, min_parts: int, table: str, expected: list[tuple[int, str]]
) -> None:
    rule = NokRate(
        "r", per="station", threshold=threshold, window_parts=window, min_parts=min_parts
    )
    assert run(rule, results(table)) == expected


def test_nok_rate_per_lot_counts_each_lot_and_a_time_window() -> None:
    rule = NokRate("r", per="lot", threshold=0.4, window_parts=100, min_parts=2)
    parts = [
        part(1, "nok", lot="A"),
        part(2, "ok", lot="B"),
        part(3, "nok", lot="B"),
        part(4, "ok", lot="A"),
        part(5, "nok", lot="B"),
    ]
    # B: ok nok -> 50% at the 3rd part; A: nok ok -> 50% at the 4th. Each key that starts
    # firing is an alert of its own.
    assert run(rule, parts) == [(2, "firing"), (3, "firing")]
    timed = NokRate(
        "t", per="station", threshold=0.5, window_parts=100, window_minutes=1, min_parts=1
    )
    old = [
        part(1, "nok", ts="2026-12-03T10:00:00.000000Z"),
        part(2, "nok", ts="2026-12-03T10:00:30.000000Z"),
        part(3, "ok", ts="2026-12-03T10:01:45.000000Z"),
    ]
    # At part 3 the NOKs are older than a minute: 0 of 1.
    assert run(timed, old) == [(0, "firing"), (2, "ok")]


def test_where_limits_a_rule() -> None:
    rule = ConsecutiveNok("c", Where(station="ST20"), count=2)
    assert run(rule, results("xxx")) == []
    assert run(rule, results("xxx", station="ST20")) == [(1, "firing")]


def values(zs: list[float]) -> list[Part]:
    """Parts whose force is ``center + z * sigma`` with center 20, sigma 0.5."""
    return [part(i + 1, value=20 + z * 0.5) for i, z in enumerate(zs)]


@pytest.mark.parametrize(
    ("test", "zs", "fires_at"),
    [
        ("we1", [0, 1, 2.9, -2.9, 3.1], 4),
        ("we1", [0, 1, 2.9, -2.9, 3.0], None),  # beyond, not at
        ("we2", [2.5, 0, 2.1], 2),
        ("we2", [2.5, 0, -2.1], None),  # two beyond, but not on one side
        ("we2", [2.5, 0, 0, 2.1], None),  # 2 of 4, not of 3
        ("we3", [1.5, 1.2, 0, 1.1, 1.3], 4),
        ("we3", [1.5, 1.2, 0, 1.1, 0.9], None),
        ("we4", [0.1] * 7 + [-0.1], None),
        ("we4", [-0.2] + [0.1] * 8, 8),
        ("nelson2", [0.1] * 8 + [-0.1, 0.1], None),
        ("nelson2", [0.1] * 9, 8),
        ("nelson3", [-1, -0.5, 0, 0.5, 1, 1.5], 5),
        ("nelson3", [-1, -0.5, 0, 0.5, 1, 1], None),
        ("nelson4", [(-1) ** i * 0.5 for i in range(14)], 13),
        ("nelson4", [(-1) ** i * 0.5 for i in range(13)], None),
        ("nelson7", [0.5] * 14 + [-0.5], 14),
        ("nelson7", [0.5] * 14 + [1.5], None),
        ("nelson8", [1.5, -1.5] * 4, 7),
        ("nelson8", [1.5] * 8, None),  # all on one side: not this test
    ],
)
def test_run_rules_fire_on_the_point_that_completes_the_run(
    test: str, zs: list[float], fires_at: int | None
) -> None:
    rule = RunRules("spc", value="force", center=20.0, sigma=0.5, tests=(test,))
    got = [i for i, s in run(rule, values(zs)) if s == "firing"]
    assert got == ([] if fires_at is None else [fires_at])


def test_a_run_rule_alert_carries_the_run_as_evidence() -> None:
    engine = Engine([RunRules("spc", value="force", center=20.0, sigma=0.5, tests=("we2",))])
    fired = [t for p in values([2.5, 0, 2.1]) for t in engine.feed(p)]
    assert [e["seq"] for e in fired[0].payload()["evidence"]] == [1, 2, 3]
    assert fired[0].payload()["message"] == (
        "force at L3/ST10: 2 of 3 points beyond 2 sigma on one side (we2)"
    )


def test_cpk_needs_its_parts_and_fires_below_the_bound() -> None:
    rule = Cpk("cpk", value="force", parts=5, min=1.33)
    # Centred, tight: Cpk far above 1.33 -> quiet. Then drifting to the upper limit.
    steady = [20.0, 20.1, 19.9, 20.05, 19.95]
    drift = [21.5, 21.7, 21.9]
    transitions = run(rule, values([(v - 20) / 0.5 for v in steady + drift]))
    assert transitions == [(5, "firing")]
    # Four parts are not enough to judge, whatever their spread.
    assert run(Cpk("c", value="force", parts=5), values([0, 3.9, -3.9, 3.9])) == []


def test_a_record_delivered_twice_counts_once() -> None:
    engine = Engine([ConsecutiveNok("c", count=2)])
    first = part(1, "nok")
    assert engine.feed(first) == []
    assert engine.feed(first) == []  # the resend
    assert [t.state for t in engine.feed(part(2, "nok"))] == ["firing"]


# ---- the rules file ----------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


def test_a_good_rules_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
webhook: http://127.0.0.1:9/alerts
rules:
  - id: st20-nok
    kind: nok_rate
    per: lot
    threshold: 0.05
    window_parts: 200
    where: {station: ST20}
  - id: st10-three
    kind: consecutive_nok
    count: 3
    webhook: https://hooks.example/q
  - id: force-spc
    kind: run_rules
    value: force
    center: 20.0
    sigma: 0.4
    tests: [we1, nelson3]
  - id: force-cpk
    kind: cpk
    value: force
""",
    )
    rules = load_rules(path)
    assert rules.webhook == "http://127.0.0.1:9/alerts"
    assert [r.id for r in rules.rules] == ["st20-nok", "st10-three", "force-spc", "force-cpk"]
    assert rules.rules[0].where == Where(station="ST20")
    assert rules.rules[3] == Cpk("force-cpk", value="force", parts=30, min=1.33)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "rules:\n  - id: a\n    kind: nok_rate\n    threshold: 2\n",
            "rules.yaml:4: rules[0].threshold: required: a fraction",
        ),
        (
            "rules:\n  - id: a\n    kind: nok_rat\n",
            "rules.yaml:3: rules[0].kind: required: one of nok_rate",
        ),
        (
            "rules:\n  - id: a\n    kind: cpk\n    value: f\n    parts: 1\n",
            "rules.yaml:5: rules[0].parts: expected a whole number of at least 2",
        ),
        (
            "rules:\n  - id: a\n    kind: run_rules\n    value: f\n    center: 1\n",
            "rules.yaml:2: rules[0].sigma: required",
        ),
        (
            "rules:\n  - id: a\n    kind: consecutive_nok\n    cont: 3\n",
            "rules.yaml:4: rules[0].cont: unknown key for a consecutive_nok rule",
        ),
        (
            "rules:\n  - id: a\n    kind: consecutive_nok\n  - id: a\n    kind: consecutive_nok\n",
            "rules.yaml:4: rules[1].id: id 'a' used twice",
        ),
        (
            "rules:\n  - id: a\n    id: b\n    kind: consecutive_nok\n",
            "rules.yaml:3: rules[0].id: written twice",
        ),
        ("rules:\n  - id: a\n    kind: [oops\n", "rules.yaml:4: not valid YAML"),
        (
            "rules:\n  - id: a\n    kind: consecutive_nok\n    webhook: ftp://x\n",
            "rules.yaml:4: rules[0].webhook: expected an http:// or https:// URL",
        ),
        ("rules: []\n", "rules.yaml:1: rules: expected a list of rules"),
    ],
)
def test_a_bad_rules_file_names_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        load_rules(write(tmp_path, text))
    assert str(caught.value).replace(str(tmp_path) + "/", "").startswith(message), caught.value
