"""Binding rules beyond plain readings, as tables: scans, genealogy, triggered part records,
the handshake, manual context and restart. No I/O: the binder is fed observations and the
outcome of its actions, as the daemon would."""

from __future__ import annotations

from typing import Any

import pytest

from edge_agent.binder import (
    Binder,
    BindingRules,
    Capture,
    ContextRejected,
    Handshake,
    WriteTaken,
)
from edge_agent.config import parse_config
from kernel.model import Observation, Quality, RecordDraft, RecordKind

CONFIG = r"""
agent: {site: s1, line: l1, id: a1}
stations:
  - name: ST10
    context:
      serial: {device: plc, point: serial}
      work_order:
    scans:
      sources: [{device: cam, point: code}]
      rules:
        - {name: label, gs1: true, require: ["21"], set: {serial: "21", product: "01", lot: "10"}}
        - name: material
          regex: '^MAT-(?P<lot>[A-Z0-9]+)(?:-(?P<qty>\d+))?$'
          consume: {lot: lot, quantity: qty, unit: pcs}
        - {name: badge, regex: '^OP(?P<op>\d{4})$', set: {operator: op}}
    part:
      trigger: {device: plc, point: done}
      snapshot: {device: plc, points: [serial, counter, force, result]}
      counter: counter
      result: {point: result, ok: [1], nok: [2]}
      limits: {force: {min: 18, max: 22.5}}
  - name: ST20
    context:
      serial: {device: plc2, point: serial}
    part:
      trigger: {device: plc2, point: ready}
      snapshot: {device: plc2, points: [counter, force]}
      counter: counter
      handshake: {taken: taken}
  - name: ST30
    part:
      trigger: {device: plc3, point: step, edge: change}
      snapshot: {device: plc3, points: [force]}
devices:
  - name: plc
    type: modbus_tcp
    host: 127.0.0.1
    station: ST10
    points:
      - {name: serial, address: 0, type: string, count: 6}
      - {name: counter, address: 6, type: uint32}
      - {name: force, address: 8, type: float32, unit: kN}
      - {name: result, address: 10, type: uint16}
      - {name: temp, address: 11, type: int16}
      - {name: done, address: 0, table: coil, type: bool}
  - name: plc2
    type: modbus_tcp
    host: 127.0.0.1
    unit_id: 2
    station: ST20
    points:
      - {name: serial, address: 0, type: string, count: 6}
      - {name: counter, address: 6, type: uint32}
      - {name: force, address: 8, type: float32, unit: kN}
      - {name: ready, address: 0, table: coil, type: bool}
      - {name: taken, address: 1, table: coil, type: bool, report: snapshot}
  - name: plc3
    type: modbus_tcp
    host: 127.0.0.1
    unit_id: 3
    station: ST30
    points:
      - {name: step, address: 0, type: uint16}
      - {name: force, address: 2, type: float32}
  - name: cam
    type: modbus_tcp
    host: 127.0.0.1
    unit_id: 4
    station: ST10
    points:
      - {name: code, address: 0, type: string, count: 40}
"""

RULES = BindingRules.from_config(parse_config(CONFIG, "binding.yaml"))
GS = "\x1d"
LABEL = f"]d201095011010209171719050810ABCD1234{GS}21SN0042"
T0 = 1_700_000_000.0


def obs(
    device: str, point: str, value: Any, quality: Quality = Quality.GOOD, **kw: Any
) -> Observation:
    kw.setdefault("ts", T0)
    return Observation(device, point, value, quality, **kw)


def kinds(drafts: list[RecordDraft]) -> list[str]:
    return [d.kind.value for d in drafts]


def only(drafts: list[RecordDraft], kind: RecordKind) -> dict[str, Any]:
    (d,) = [d for d in drafts if d.kind is kind]
    return d.body


def snapshot(device: str, ts: float = T0 + 0.01, **values: Any) -> list[Observation]:
    units = {"force": "kN"}
    return [obs(device, k, v, ts=ts, unit=units.get(k)) for k, v in values.items()]


def cycle(
    binder: Binder, device: str, trigger: str, level: Any, ts: float, **values: Any
) -> tuple[list[RecordDraft], list[Any]]:
    """Feed a trigger observation; complete any capture it asks for with ``values``.
    Returns what is not the trigger's own reading record."""
    step = binder.feed([obs(device, trigger, level, ts=ts)])
    drafts = [d for d in step.drafts if d.kind is not RecordKind.READINGS]
    actions = list(step.actions)
    for cap in [a for a in step.actions if isinstance(a, Capture)]:
        done = binder.complete(cap, snapshot(device, ts + 0.01, **values), None)
        drafts += done.drafts
        actions += done.actions
    return drafts, actions


# ---- scans ---------------------------------------------------------------------------------


SCAN_CASES: list[tuple[str, str, list[str], dict[str, Any], dict[str, Any]]] = [
    (
        "GS1 DataMatrix label sets serial, product and lot; AI 17 is kept",
        LABEL,
        ["scan", "context", "context", "context"],
        {"status": "accepted", "rule": "label", "aim": "]d2"},
        {"serial": "SN0042", "product": "09501101020917", "lot": "ABCD1234"},
    ),
    (
        "a bad GTIN check digit is a rejected scan that changes nothing",
        f"]d201095011010209181719050810ABCD1234{GS}21SN0042",
        ["scan"],
        {"status": "rejected", "rule": "label", "quality": "bad"},
        {},
    ),
    (
        "an operator badge sets an integrator key",
        "OP0815",
        ["scan", "context"],
        {"status": "accepted", "rule": "badge", "quality": "good"},
        {"operator": "0815"},
    ),
    (
        "a scan no rule knows is recorded as unclassified",
        "HELLO WORLD",
        ["scan"],
        {"status": "unclassified", "rule": None, "quality": "uncertain"},
        {},
    ),
    (
        "a garbled scan (control character) is rejected, not dropped",
        "SN\x0700",
        ["scan"],
        {"status": "rejected", "quality": "bad"},
        {},
    ),
]


@pytest.mark.parametrize(
    ("title", "text", "expected_kinds", "scan_fields", "ctx"),
    SCAN_CASES,
    ids=[c[0] for c in SCAN_CASES],
)
def test_scan_table(
    title: str,
    text: str,
    expected_kinds: list[str],
    scan_fields: dict[str, Any],
    ctx: dict[str, Any],
) -> None:
    binder = Binder(RULES)
    drafts = binder.feed([obs("cam", "code", text)]).drafts
    assert kinds(drafts) == expected_kinds
    scan = only(drafts, RecordKind.SCAN)
    assert {k: scan.get(k) for k in scan_fields} == scan_fields
    assert scan["text"] == text
    assert {k: v for k, v in binder.contexts["ST10"].items() if v is not None} == ctx
    if scan["status"] == "rejected":
        assert scan["error"]


def test_gs1_scan_record_keeps_every_ai() -> None:
    scan = only(Binder(RULES).feed([obs("cam", "code", LABEL)]).drafts, RecordKind.SCAN)
    assert scan["gs1"] == {"01": "09501101020917", "17": "190508", "10": "ABCD1234", "21": "SN0042"}
    assert scan["symbology"] == "GS1 DataMatrix"


def test_a_scan_source_that_fails_is_a_rejected_scan() -> None:
    drafts = Binder(RULES).feed([obs("cam", "code", None, Quality.BAD, error="timeout")]).drafts
    assert kinds(drafts) == ["scan"]
    assert drafts[0].body["status"] == "rejected"
    assert drafts[0].body["error"] == "timeout"


def test_material_scan_becomes_consumption_of_the_current_serial() -> None:
    binder = Binder(RULES)
    binder.feed([obs("plc", "serial", "SN7")])
    drafts = binder.feed([obs("cam", "code", "MAT-L991-12")]).drafts
    assert kinds(drafts) == ["scan", "consumption"]
    cons = only(drafts, RecordKind.CONSUMPTION)
    assert (cons["serial"], cons["lot"], cons["quantity"], cons["unit"]) == (
        "SN7",
        "L991",
        12.0,
        "pcs",
    )
    assert cons["quality"] == "good"
    assert cons["rule"] == "material"


def test_consumption_with_no_serial_is_kept_and_flagged() -> None:
    cons = only(Binder(RULES).feed([obs("cam", "code", "MAT-L1")]).drafts, RecordKind.CONSUMPTION)
    assert cons["serial"] is None
    assert cons["quality"] == "uncertain"
    assert "no serial" in cons["error"]


def test_scan_in_the_same_response_applies_before_readings() -> None:
    binder = Binder(RULES)
    drafts = binder.feed([obs("plc", "temp", 5), obs("cam", "code", "OP1234")]).drafts
    assert kinds(drafts) == ["scan", "context", "readings"]
    assert drafts[-1].body["ctx"]["operator"] == "1234"


# ---- triggered part records ----------------------------------------------------------------


GOOD_PART = {"serial": "SN1", "counter": 5, "force": 20.5, "result": 1}


def test_rising_edge_captures_one_part_record() -> None:
    binder = Binder(RULES)
    binder.feed([obs("plc", "serial", "SN1")])
    assert not binder.feed([obs("plc", "done", False)]).actions
    drafts, actions = cycle(binder, "plc", "done", True, T0 + 1, **GOOD_PART)
    assert [type(a) for a in actions] == [Capture]
    part = only(drafts, RecordKind.PART)
    assert part["serial"] == "SN1"
    assert part["result"] == "ok"
    assert part["quality"] == "good"
    assert part["counter"] == 5
    assert part["repeat"] == 0
    assert part["values"]["force"] == {
        "value": 20.5,
        "unit": "kN",
        "quality": "good",
        "min": 18.0,
        "max": 22.5,
        "ok": True,
    }
    assert part["trigger"] == {"device": "plc", "point": "done", "value": True}
    assert part["ts"] == "2023-11-14T22:13:21.000000Z"
    # Staying high is not another part; neither is falling.
    assert not binder.feed([obs("plc", "done", True, ts=T0 + 2)]).actions
    assert not binder.feed([obs("plc", "done", False, ts=T0 + 3)]).actions


PART_CASES: list[tuple[str, dict[str, Any], str | None, str, str | None]] = [
    ("PLC says OK, force within limits", GOOD_PART, "ok", "good", None),
    ("PLC says NOK", {**GOOD_PART, "result": 2}, "nok", "good", None),
    ("force above the limit makes NOK", {**GOOD_PART, "force": 23.0}, "nok", "good", None),
    (
        "an unknown result code cannot be judged",
        {**GOOD_PART, "result": 7},
        None,
        "bad",
        "neither ok",
    ),
    (
        "no serial current at the trigger is kept and flagged",
        {**GOOD_PART, "serial": ""},
        "ok",
        "uncertain",
        "no serial",
    ),
]


@pytest.mark.parametrize(
    ("title", "values", "result", "quality", "error"), PART_CASES, ids=[c[0] for c in PART_CASES]
)
def test_part_result_table(
    title: str, values: dict[str, Any], result: str | None, quality: str, error: str | None
) -> None:
    binder = Binder(RULES)
    binder.feed([obs("plc", "done", False)])
    drafts, _ = cycle(binder, "plc", "done", True, T0 + 1, **values)
    part = only(drafts, RecordKind.PART)
    assert (part["result"], part["quality"]) == (result, quality)
    if error is None:
        assert "error" not in part
    else:
        assert error in part["error"]


def test_snapshot_read_failure_is_a_bad_part_record() -> None:
    binder = Binder(RULES)
    binder.feed([obs("plc", "serial", "SN1"), obs("plc", "done", False)])
    (cap,) = binder.feed([obs("plc", "done", True, ts=T0 + 1)]).actions
    assert isinstance(cap, Capture)
    part = only(binder.complete(cap, None, "no response within 1.0s").drafts, RecordKind.PART)
    assert part["quality"] == "bad"
    assert part["serial"] == "SN1"
    assert part["result"] is None
    assert "snapshot read failed" in part["error"]
    assert part["values"]["force"]["value"] is None


def test_counter_jump_records_a_gap_and_a_repeat_counter_no_second_part() -> None:
    binder = Binder(RULES)
    binder.feed([obs("plc", "done", False)])
    cycle(binder, "plc", "done", True, T0 + 1, **GOOD_PART)
    binder.feed([obs("plc", "done", False, ts=T0 + 1.5)])
    drafts, _ = cycle(binder, "plc", "done", True, T0 + 2, **{**GOOD_PART, "counter": 8})
    assert kinds(drafts) == ["gap", "part"]
    gap = only(drafts, RecordKind.GAP)
    assert (gap["previous"], gap["counter"], gap["missed"]) == (5, 8, 2)
    binder.feed([obs("plc", "done", False, ts=T0 + 2.5)])
    drafts, _ = cycle(binder, "plc", "done", True, T0 + 3, **{**GOOD_PART, "counter": 8})
    assert drafts == []  # the same part seen twice has its record already
    binder.feed([obs("plc", "done", False, ts=T0 + 3.5)])
    drafts, _ = cycle(binder, "plc", "done", True, T0 + 4, **{**GOOD_PART, "counter": 1})
    gap = only(drafts, RecordKind.GAP)
    assert gap["missed"] is None  # counter reset: unknown
    assert only(drafts, RecordKind.PART)["counter"] == 1


def test_level_at_start_is_captured_when_a_counter_can_tell_duplicates() -> None:
    binder = Binder(RULES)
    drafts, actions = cycle(binder, "plc", "done", True, T0, **GOOD_PART)
    assert kinds(drafts) == ["part"]
    # After an outage the level is unknown again; the counter says it is the same part.
    binder.feed([obs("plc", "done", None, Quality.BAD, error="down")])
    drafts, actions = cycle(binder, "plc", "done", True, T0 + 5, **GOOD_PART)
    assert actions
    assert drafts == []


def test_change_trigger_without_counter_ignores_the_first_value() -> None:
    binder = Binder(RULES)
    assert not binder.feed([obs("plc3", "step", 4)]).actions
    drafts, _ = cycle(binder, "plc3", "step", 5, T0 + 1, force=3.0)
    assert only(drafts, RecordKind.PART)["result"] is None  # nothing judges it
    assert not binder.feed([obs("plc3", "step", 5, ts=T0 + 2)]).actions


def test_cycle_time_is_measured_between_triggers() -> None:
    binder = Binder(RULES)
    binder.feed([obs("plc3", "step", 0)])
    first, _ = cycle(binder, "plc3", "step", 1, T0 + 1, force=1.0)
    second, _ = cycle(binder, "plc3", "step", 2, T0 + 3.5, force=1.0)
    assert only(first, RecordKind.PART)["cycle_time"] is None
    assert only(second, RecordKind.PART)["cycle_time"] == 2.5


def test_a_serial_with_a_part_record_is_marked_as_repeat() -> None:
    binder = Binder(RULES)
    binder.feed([obs("plc", "serial", "SN1"), obs("plc", "done", False)])
    cycle(binder, "plc", "done", True, T0 + 1, **GOOD_PART)
    binder.feed([obs("plc", "serial", "SN2"), obs("plc", "done", False, ts=T0 + 2)])
    back = binder.feed([obs("plc", "serial", "SN1", ts=T0 + 3)]).drafts
    assert only(back, RecordKind.CONTEXT)["repeat"] == 1
    drafts, _ = cycle(binder, "plc", "done", True, T0 + 4, **{**GOOD_PART, "counter": 6})
    assert only(drafts, RecordKind.PART)["repeat"] == 1


def test_part_context_is_the_triggers_corrected_by_the_snapshot() -> None:
    binder = Binder(RULES)
    binder.feed([obs("plc", "serial", "SN1"), obs("plc", "done", False)])
    (cap,) = binder.feed([obs("plc", "done", True, ts=T0 + 1)]).actions
    assert isinstance(cap, Capture)
    # Before the snapshot comes back, a scan moves the station to the next part.
    binder.feed([obs("cam", "code", LABEL, ts=T0 + 1.001)])
    done = binder.complete(cap, snapshot("plc", **GOOD_PART), None)
    part = only(done.drafts, RecordKind.PART)
    assert part["serial"] == "SN1"
    assert part["ctx"]["serial"] == "SN1"
    assert binder.contexts["ST10"]["serial"] == "SN0042"  # untouched by the part record


# ---- handshake -----------------------------------------------------------------------------


def test_handshake_sequence() -> None:
    binder = Binder(RULES)
    binder.feed([obs("plc2", "serial", "A1")])
    (cap,) = binder.feed([obs("plc2", "ready", True, ts=T0 + 1)]).actions
    assert isinstance(cap, Capture)
    assert cap.handshake
    # Data ready stays high while the part is captured: no second capture.
    assert not binder.feed([obs("plc2", "ready", True, ts=T0 + 1.1)]).actions
    done = binder.complete(cap, snapshot("plc2", counter=1, force=2.0), None)
    assert kinds(done.drafts) == ["part"]
    assert done.actions == [WriteTaken("ST20", "plc2", "taken", True)]
    assert binder.state["ST20"].handshake is Handshake.TAKEN
    assert not binder.feed([obs("plc2", "ready", True, ts=T0 + 1.2)]).actions
    reset = binder.feed([obs("plc2", "ready", False, ts=T0 + 1.3)]).actions
    assert reset == [WriteTaken("ST20", "plc2", "taken", False)]
    (nxt,) = binder.feed([obs("plc2", "ready", True, ts=T0 + 2)]).actions
    assert isinstance(nxt, Capture)


def test_handshake_resets_taken_when_it_starts_with_ready_low() -> None:
    """Killed after writing "taken": the PLC dropped "ready" and waits for "taken" to drop."""
    binder = Binder(RULES)
    assert binder.feed([obs("plc2", "ready", False)]).actions == [
        WriteTaken("ST20", "plc2", "taken", False)
    ]
    assert not binder.feed([obs("plc2", "ready", False, ts=T0 + 0.1)]).actions


def test_handshake_failed_snapshot_is_read_again_not_recorded() -> None:
    binder = Binder(RULES)
    (cap,) = binder.feed([obs("plc2", "ready", True)]).actions
    assert isinstance(cap, Capture)
    failed = binder.complete(cap, None, "timeout")
    assert failed.drafts == []
    assert failed.actions == []
    (again,) = binder.feed([obs("plc2", "ready", True, ts=T0 + 0.1)]).actions
    assert isinstance(again, Capture)


def test_handshake_write_failure_rewrites_taken_without_a_second_record() -> None:
    binder = Binder(RULES)
    (cap,) = binder.feed([obs("plc2", "ready", True)]).actions
    assert isinstance(cap, Capture)
    binder.complete(cap, snapshot("plc2", counter=9, force=1.0), None)
    binder.handshake_failed("ST20")
    (again,) = binder.feed([obs("plc2", "ready", True, ts=T0 + 0.1)]).actions
    assert isinstance(again, Capture)
    done = binder.complete(again, snapshot("plc2", counter=9, force=1.0), None)
    assert done.drafts == []
    assert done.actions == [WriteTaken("ST20", "plc2", "taken", True)]


# ---- manual context, durable state, restart --------------------------------------------------


def test_manual_context_set_is_a_record_with_its_author() -> None:
    binder = Binder(RULES)
    step = binder.set_context("ST10", {"work_order": "WO-7"}, ts=T0, user="anna")
    ctx = only(step.drafts, RecordKind.CONTEXT)
    assert (ctx["key"], ctx["value"], ctx["source"]) == (
        "work_order",
        "WO-7",
        {"manual": True, "user": "anna"},
    )
    assert step.drafts[0].state == {
        "ctx": {
            "serial": None,
            "work_order": "WO-7",
            "product": None,
            "lot": None,
            "operator": None,
        },
        "counter": None,
    }
    readings = binder.feed([obs("plc", "temp", 1)]).drafts
    assert readings[0].body["ctx"]["work_order"] == "WO-7"


@pytest.mark.parametrize(
    ("station", "values", "message"),
    [
        ("ST99", {"work_order": "x"}, "unknown station 'ST99'"),
        ("ST10", {"work_ordr": "x"}, "did you mean 'work_order'"),
    ],
)
def test_manual_context_rejects_unknown_names(
    station: str, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ContextRejected, match=message):
        Binder(RULES).set_context(station, values, ts=T0, user=None)


def test_station_keys_include_the_ones_only_scans_set() -> None:
    assert RULES.station_keys["ST10"] == ("serial", "work_order", "product", "lot", "operator")


def test_restore_brings_back_context_and_counter_and_records_it() -> None:
    first = Binder(RULES)
    first.feed([obs("plc", "serial", "SN1"), obs("plc", "done", False)])
    drafts, _ = cycle(first, "plc", "done", True, T0 + 1, **GOOD_PART)
    saved = {"ST10": drafts[-1].state, "ST99": {"ctx": {"serial": "gone"}, "counter": 3}}
    assert saved["ST10"] is not None

    second = Binder(RULES)
    step = second.restore(saved, {"ST10": {"SN1": 1}}, ts=T0 + 10)
    restored = only(step.drafts, RecordKind.CONTEXT_RESTORED)
    assert restored["ctx"]["serial"] == "SN1"
    assert restored["counter"] == 5
    assert "ST99" not in second.contexts  # a station no longer configured is not revived
    # The same part seen again after the restart gets no second record...
    drafts, _ = cycle(second, "plc", "done", True, T0 + 11, **GOOD_PART)
    assert drafts == []
    # ...the next one is a repeat if its serial was already here.
    second.feed([obs("plc", "done", False, ts=T0 + 12)])
    drafts, _ = cycle(second, "plc", "done", True, T0 + 13, **{**GOOD_PART, "counter": 6})
    assert only(drafts, RecordKind.PART)["repeat"] == 1
