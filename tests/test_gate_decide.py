"""The station gate's decisions, without I/O: a config, a blocked set, scans in, records and
actions out (the binder is a pure function; the gate is part of it)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge_agent.binder import (
    Acknowledge,
    AskRoute,
    Binder,
    BindingRules,
    WriteInterlock,
)
from edge_agent.config import parse_config
from edge_agent.gate.blocked import Garbled, parse
from edge_agent.gate.decide import RouteAnswer
from kernel.errors import ConfigError
from kernel.model import Observation

CONFIG = """
agent: {site: s1, line: L1, id: pc1}
devices:
  - {name: plc, type: modbus_tcp, host: 127.0.0.1, port: 5020, station: ST20,
     points: [{name: refused, table: coil, address: 3, type: bool},
              {name: done, table: coil, address: 1, type: bool},
              {name: result, address: 0, type: uint16},
              {name: temp, address: 10, type: float32}]}
  - {name: scan20, type: scanner, port: /dev/null, station: ST20,
     feedback: {good: "<ESC>7", bad: "<ESC>8"}}
stations:
  - name: ST10
    part:
      trigger: {device: plc, point: done}
      snapshot: {device: plc, points: [result]}
      result: {point: result}
  - name: ST20
    context: {product: null}
    scans:
      sources: [{device: scan20}]
      rules:
        - {name: serial, regex: '^SN(?P<s>.+)$', set: {serial: s}}
        - {name: lot, regex: '^LOT:(?P<lot>.+)$', set: {lot: lot}, consume: {lot: lot}}
        - {name: product, regex: '^P:(?P<p>.+)$', set: {product: p}}
    gate:
      interlock: {device: plc, point: refused}
      route:
        - {requires: ST10}
        - {requires: ST50, line: L9, on_unreachable: allow_flag}
"""


def binder(text: str = CONFIG) -> Binder:
    cfg = parse_config(text)
    assert cfg.issues() == []
    return Binder(BindingRules.from_config(cfg))


def scan(text: str) -> Observation:
    return Observation("scan20", "scan", text, ts=1_700_000_000.0)


def blocked(version: int, **lists: list[str]) -> bytes:
    doc: dict[str, Any] = {"v": 1, "version": version, "at": "2026-12-03T21:00:00.000Z"}
    for name, keys in lists.items():
        doc[name] = [{"key": k, "reason": "failed incoming inspection", "by": "qe"} for k in keys]
    return json.dumps(doc).encode()


def kinds(step: Any) -> list[str]:
    return [d.kind.value for d in step.drafts]


def test_a_blocked_lot_is_refused_and_changes_nothing() -> None:
    b = binder()
    b.gate.blocked = parse(blocked(7, lots=["L42"]))
    step = b.feed([scan("LOT:L42")])
    assert kinds(step) == ["scan", "gate"]  # no context change, no consumption
    scan_rec, gate_rec = (d.body for d in step.drafts)
    assert scan_rec["status"] == "refused"
    assert scan_rec["quality"] == "bad"
    assert scan_rec["consume"] == {"lot": "L42"}
    assert "lot L42 is blocked: failed incoming inspection" in scan_rec["error"]
    assert scan_rec["gate"] == {"decision": "refused", "version": 7}
    assert gate_rec["decision"] == "refused"
    assert gate_rec["check"] == "blocked"
    assert gate_rec["lot"] == "L42"
    assert gate_rec["version"] == 7
    assert gate_rec["text"] == "LOT:L42"
    assert b.contexts["ST20"]["lot"] is None
    assert step.actions == [
        WriteInterlock("ST20", "plc", "refused", True),
        Acknowledge("ST20", "scan20", "scan", False),
    ]


def test_the_next_scan_let_through_releases_the_interlock_once() -> None:
    b = binder()
    b.gate.blocked = parse(blocked(1, lots=["L42"]))
    b.feed([scan("LOT:L42")])
    step = b.feed([scan("LOT:L43")])
    assert kinds(step) == ["scan", "context", "consumption"]
    assert step.drafts[0].body["gate"] == {"decision": "allowed", "version": 1}
    assert WriteInterlock("ST20", "plc", "refused", False) in step.actions
    again = b.feed([scan("LOT:L44")])
    assert not [a for a in again.actions if isinstance(a, WriteInterlock)]


def test_a_blocked_product_refuses_what_would_build_it() -> None:
    b = binder()
    b.gate.blocked = parse(blocked(2, products=["P-100"]))
    refused = b.feed([scan("P:P-100")])
    assert refused.drafts[0].body["status"] == "refused"
    assert b.contexts["ST20"]["product"] is None
    ok = b.feed([scan("P:P-200")])
    assert ok.drafts[0].body["status"] == "accepted"


@pytest.mark.parametrize(
    ("history", "decision", "reason"),
    [
        ([], "refused", "no part record at ST10"),
        (["nok"], "refused", "latest part record at ST10: nok"),
        (["nok", "ok"], "allowed", "OK at ST10"),
        (["ok", "nok"], "refused", "latest part record at ST10: nok"),
    ],
)
def test_a_local_route_rule_reads_the_latest_part_record(
    history: list[str], decision: str, reason: str
) -> None:
    b = binder()
    for result in history:
        b.gate.note_part("ST10", "123", result)
    step = b.feed([scan("SN123")])
    if decision == "refused":
        gate = [d.body for d in step.drafts if d.kind.value == "gate"]
        assert gate[0]["decision"] == "refused"
        assert gate[0]["source"] == "local"
        assert gate[0]["reason"] == reason
        assert step.drafts[0].body["status"] == "refused"
        assert b.contexts["ST20"]["serial"] is None
        return
    # The local rule passed: the remote one (another line) is asked before anything binds.
    (ask,) = [a for a in step.actions if isinstance(a, AskRoute)]
    assert step.drafts == []
    assert ask.serial == "123"
    assert [c.rule.requires for c in ask.checks] == ["ST50"]
    done = b.answered(ask, {1: RouteAnswer("ok", "2026-12-03T20:00:00.000Z", "pc9")})
    gates = [d.body for d in done.drafts if d.kind.value == "gate"]
    assert [(g["requires"], g["decision"], g["source"]) for g in gates] == [
        ("ST10", "allowed", "local"),
        ("ST50", "allowed", "store"),
    ]
    assert b.contexts["ST20"]["serial"] == "123"
    assert Acknowledge("ST20", "scan20", "scan", True) in done.actions


@pytest.mark.parametrize(
    ("answer", "decision", "source"),
    [
        (RouteAnswer("ok"), "allowed", "store"),
        (RouteAnswer("nok"), "refused", "store"),
        (RouteAnswer(None), "refused", "store"),
        (None, "flagged", "unreachable"),  # on_unreachable: allow_flag
    ],
)
def test_the_stores_answer_decides_a_remote_rule(
    answer: RouteAnswer | None, decision: str, source: str
) -> None:
    b = binder()
    b.gate.note_part("ST10", "9", "ok")
    (ask,) = [a for a in b.feed([scan("SN9")]).actions if isinstance(a, AskRoute)]
    step = b.answered(ask, {1: answer})
    remote = [d.body for d in step.drafts if d.kind.value == "gate"][-1]
    assert (remote["decision"], remote["source"]) == (decision, source)
    accepted = decision != "refused"
    assert step.drafts[0].body["status"] == ("accepted" if accepted else "refused")
    assert b.contexts["ST20"]["serial"] == ("9" if accepted else None)


def test_scans_behind_a_question_wait_and_keep_their_order() -> None:
    b = binder()
    b.gate.note_part("ST10", "1", "ok")
    b.gate.note_part("ST10", "2", "ok")
    first = b.feed([scan("SN1")])
    (ask,) = [a for a in first.actions if isinstance(a, AskRoute)]
    behind = b.feed([scan("LOT:L7"), scan("SN2")])  # same ts: one response
    assert behind.drafts == []
    assert behind.actions == []
    done = b.answered(ask, {1: RouteAnswer("ok")})
    # The first is decided; the lot scan binds to serial 1; SN2 asks again, nothing after it.
    assert [d.body.get("text") for d in done.drafts if d.kind.value == "scan"] == [
        "SN1",
        "LOT:L7",
    ]
    consumption = next(d.body for d in done.drafts if d.kind.value == "consumption")
    assert consumption["serial"] == "1"
    (again,) = [a for a in done.actions if isinstance(a, AskRoute)]
    assert again.serial == "2"


def test_flag_lets_a_blocked_lot_through_with_a_record() -> None:
    b = binder(CONFIG.replace("    gate:\n", "    gate:\n      blocked: flag\n"))
    b.gate.blocked = parse(blocked(3, lots=["L42"]))
    step = b.feed([scan("LOT:L42")])
    assert kinds(step) == ["scan", "gate", "context", "consumption"]
    assert step.drafts[1].body["decision"] == "flagged"
    assert step.drafts[3].body["gate"] == "flagged"
    assert not [a for a in step.actions if isinstance(a, WriteInterlock) and a.value]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"v": 2, "version": 1}',
        b'{"v": 1, "version": "7"}',
        b'{"v": 1, "version": 7, "lots": [{"reason": "no key"}]}',
        b'{"v": 1, "version": 7, "lots": {"L1": {}}}',
    ],
)
def test_a_garbled_set_does_not_parse(payload: bytes) -> None:
    with pytest.raises(Garbled):
        parse(payload)


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        (
            "gate: {interlock: {device: plc, point: temp}}",
            "ST20.gate.interlock.point: cannot be written: only single-register",
        ),
        ("gate: {interlock: {device: plc, point: nope}}", "unknown point of 'plc' 'nope'"),
        (
            "gate: {interlock: {device: plc, point: refused, value: 2}}",
            "ST20.gate.interlock.value: cannot be written there: a coil takes true/false",
        ),
        ("gate: {route: [{requires: ST20}]}", "a station cannot require itself"),
        ("gate: {route: [{requires: ST30}]}", "station 'ST30' records no parts"),
        ("gate: {route: [{requires: ST10, timeout: 0}]}", "expected more than 0, found 0"),
    ],
)
def test_gate_config_errors_name_their_line(gate: str, message: str) -> None:
    text = CONFIG.replace(
        "    gate:\n      interlock: {device: plc, point: refused}\n"
        "      route:\n        - {requires: ST10}\n"
        "        - {requires: ST50, line: L9, on_unreachable: allow_flag}\n",
        f"    {gate}\n  - {{name: ST30}}\n",
    )
    assert text != CONFIG
    with pytest.raises(ConfigError) as err:
        parse_config(text, "plant.yaml")
    shown = "\n".join(str(i) for i in err.value.issues)
    assert "plant.yaml:" in shown
    assert message in shown.replace("stations[1]", "ST20"), shown
