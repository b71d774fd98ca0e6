"""Scenario files: checked like the agent's config (file:line:col: key.path: message, every
problem at once, never a traceback), against the config they drive; their JSON Schema is
committed, current and agrees with the loader; the examples in docs/simulate.md are valid."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.keyboard_scanner.simulator import uinput_missing
from edge_agent.config import AgentConfig, parse_config
from kernel.errors import ConfigError
from simulators.devicemap import parse_scenario
from simulators.devicemap.cycle import CycleRoles, PartCycle
from simulators.devicemap.schema import SCHEMA_FILE, scenario_schema, schema_text
from simulators.devicemap.signals import noise, ramp, step

NO_KEYBOARD = uinput_missing()
"""Why no virtual keyboard can be made here (a container), or None."""

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "config" / SCHEMA_FILE
DOC = ROOT / "docs" / "simulate.md"

CONFIG = """
agent: {site: s, line: l, id: a}
stations:
  - name: ST10
    device: plc
    context: {serial: {point: serial}}
    part:
      trigger: {point: done}
      snapshot: {points: [count, serial, result]}
      counter: count
      result: {point: result, ok: [1], nok: [2]}
    scans: {sources: [{device: sc1}, {device: wedge}]}
  - name: ST20
    device: plc
devices:
  - name: plc
    type: modbus_tcp
    host: 10.0.0.1
    station: ST10
    points:
      - {name: count, address: 0, type: uint16}
      - {name: serial, address: 1, type: string, count: 3}
      - {name: force, address: 4, type: float32}
      - {name: temp, address: 6, type: int16, scale: 0.1}
      - {name: result, address: 7, type: uint16}
      - {name: done, table: coil, address: 0, type: bool}
      - {name: big, address: 8, type: int64}
  - {name: sc1, type: scanner, port: /dev/ttyACM0, station: ST10}
  - {name: wedge, type: keyboard_scanner, input: /dev/input/by-id/x, station: ST10}
"""


@pytest.fixture(scope="module")
def config() -> AgentConfig:
    return parse_config(CONFIG, "line.yaml")


def problems(text: str, config: AgentConfig) -> list[str]:
    try:
        parse_scenario(text, config, "s.yaml")
    except ConfigError as exc:
        return [str(i) for i in exc.issues]
    return []


CASES: list[tuple[str, str, list[str]]] = [
    ("no duration", "points: {}", ["s.yaml:1:1: duration: missing required key"]),
    ("a boolean for a number", "duration: yes",
     ["s.yaml:1:1: duration: expected a number, found yes (a boolean to YAML)"]),
    ("no end", "duration: 0", ["s.yaml:1:1: duration: expected more than 0, found 0"]),
    ("not a mapping", "- duration: 1",
     ["s.yaml:1:1: expected a mapping (duration, points, ...), found a list"]),
    ("duplicate key", "duration: 5\nduration: 6",
     ["s.yaml:2:1: duration: duplicate key (first given on line 1)"]),
    ("YAML syntax", "duration: [5",
     ["s.yaml:1:13: YAML syntax: while parsing a flow sequence expected ',' or ']', but got '<stream end>'"]),
    ("unknown key, with a suggestion", "duration: 5\npoints:\n  plc:\n    force: {ramp: {from: 1, too: 2, period: 1}}",
     ["s.yaml:4:13: points.plc.force.ramp.to: missing required key",
      "s.yaml:4:29: points.plc.force.ramp.too: unknown key 'too'; did you mean 'to'?"]),
    ("two forms at once", "duration: 5\npoints:\n  plc:\n    force: {constant: 1, noise: {mean: 1, stddev: 1}}",
     ["s.yaml:4:5: points.plc.force: give one of constant, ramp, noise or sequence; found constant, noise"]),
    ("values that do not fit their points",
     "duration: 5\npoints:\n  plc:\n    done: 1\n    force: true\n    temp: hot\n    count: 70000\n    big: 9223372036854775808",
     ["s.yaml:4:5: points.plc.done: expected true or false for a bool point, found 1",
      "s.yaml:5:5: points.plc.force: expected a number for a float32 point, found true",
      "s.yaml:6:5: points.plc.temp: expected a number for an int16 point, found 'hot'",
      "s.yaml:7:5: points.plc.count: 70000 does not fit a uint16 point (0 .. 65535)",
      "s.yaml:8:5: points.plc.big: 9223372036854775808 does not fit an int64 point (-9223372036854775808 .. 9223372036854775807)"]),
    ("a scaled integer holds multiples of its scale",
     "duration: 5\npoints:\n  plc:\n    temp: {sequence: {values: [20.0, 20.05, 3276.8], every: 1}}",
     ["s.yaml:4:38: points.plc.temp.sequence.values[1]: 20.05 does not fit an int16 point (scale 0.1): the device holds a whole number, so a value is a multiple of 0.1",
      "s.yaml:4:45: points.plc.temp.sequence.values[2]: 3276.8 does not fit an int16 point (scale 0.1): -3276.8 .. 3276.7"]),
    ("text where a number belongs", "duration: 5\npoints:\n  plc:\n    force: {sequence: {values: [1.5, 'x'], every: 1}}",
     ["s.yaml:4:38: points.plc.force.sequence.values[1]: expected a number for a float32 point, found 'x'"]),
    ("a ramp on a bool", "duration: 5\npoints:\n  plc:\n    done: {ramp: {from: 0, to: 1, period: 1}}",
     ["s.yaml:4:12: points.plc.done.ramp: a ramp needs a number point; 'done' is a bool point"]),
    ("unknown device and point", "duration: 5\npoints:\n  plk: {x: 1}\n  plc: {forse: 1.5}",
     ["s.yaml:3:3: points.plk: unknown device 'plk'; did you mean 'plc'?",
      "s.yaml:4:9: points.plc.forse: unknown point of 'plc' 'forse'; did you mean 'force'?"]),
    ("devices without values", "duration: 5\npoints:\n  sc1: {scan: x}\n  wedge: {scan: x}",
     ["s.yaml:3:9: points.sc1.scan: 'scan' of 'sc1' takes no scripted values (its codes are scans: entries)",
      *([f"s.yaml:4:3: points.wedge: device 'wedge' (keyboard_scanner) cannot be simulated: {NO_KEYBOARD}"]
        if NO_KEYBOARD else ["s.yaml:4:12: points.wedge.scan: 'scan' of 'wedge' takes no scripted values (its codes are scans: entries)"])]),
    ("a cycle without a trigger", "duration: 5\nstations:\n  ST20: {part_cycle: {period: 1}}\n  ST30: {}",
     ["s.yaml:3:10: stations.ST20.part_cycle: station 'ST20' has no part trigger in the config: give part_cycle.trigger",
      "s.yaml:4:3: stations.ST30: unknown station 'ST30'; did you mean 'ST20'?"]),
    ("serial patterns", "duration: 5\nstations:\n  ST10: {part_cycle: {period: 1, serial: 'SN{m}'}}",
     ["s.yaml:3:34: stations.ST10.part_cycle.serial: not a serial pattern ('m'): write the number as {n} or {n:06d}"]),
    ("a serial the point cannot hold", "duration: 5\nstations:\n  ST10: {part_cycle: {period: 1}}",
     ["s.yaml:3:10: stations.ST10.part_cycle.serial: serial of part n=1: 'SN000001' does not fit a string point (3 registers): 8 characters, at most 6"]),
    ("a result the point cannot hold", "duration: 5\nstations:\n  ST10: {part_cycle: {period: 1, serial: '{n:04d}', nok: bad}}",
     ["s.yaml:3:53: stations.ST10.part_cycle.nok: nok result: expected a number for a uint16 point, found 'bad'"]),
    ("events", "duration: 5\nscans:\n  - {device: sc1, at: 6, data: 'A<FOO>'}\n  - {device: plc, at: 1, data: x}\nweights:\n  - {device: sc1, at: 1, weight: 1}",
     ["s.yaml:3:19: scans[0].at: at 6 s is not before the scenario's end (duration 5 s)",
      "s.yaml:3:26: scans[0].data: unknown byte name <FOO>: use <CR>, <LF>, <ESC>, ... or <0x1b>",
      "s.yaml:4:6: scans[1].device: a modbus_tcp device takes no scans",
      "s.yaml:6:6: weights[0].device: a scanner device takes no loads (weights)"]),
    ("faults", "duration: 5\nfaults:\n"
     "  - {device: sc1, at: 1, fault: restart, duration: 1}\n"
     "  - {device: plc, at: 1, fault: exception, duration: 1, code: 4, points: [forse]}\n"
     "  - {device: plc, at: 1.5, fault: unplug}\n"
     "  - {device: plc, at: 3, fault: exception, duration: 1}\n"
     "  - {device: sc1, at: 3, fault: garbage, data: x, code: 3}\n"
     "  - {device: nope, at: 3, fault: garbage}",
     ["s.yaml:3:26: faults[0].fault: a scanner device cannot have fault 'restart' (it can have: silent, garbage, unplug)",
      "s.yaml:4:75: faults[1].points[0]: unknown point of 'plc' 'forse'; did you mean 'force'?",
      "s.yaml:5:5: faults[2]: overlaps faults[1] on 'plc' (1 .. 2 s): one fault at a time per device",
      "s.yaml:5:5: faults[2].duration: an unplug fault needs a duration (seconds)",
      "s.yaml:6:5: faults[3]: an exception fault needs code: one of 1, 2, 3, 4, 5, 6, 7, 8, 10, 11",
      "s.yaml:7:51: faults[4].code: code is for fault: exception",
      "s.yaml:8:6: faults[5].device: unknown device 'nope' (known: plc, sc1, wedge)"]),
    ("an unknown fault", "duration: 5\nfaults: [{device: plc, at: 1, fault: explode, duration: 1}]",
     ["s.yaml:2:31: faults[0].fault: unknown value 'explode'; expected one of silent, exception, garbage, unplug, restart"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_scenarios_are_located_errors(
    text: str, expected: list[str], config: AgentConfig
) -> None:
    assert problems(text, config) == expected


def test_a_good_scenario_resolves_the_part_cycle_from_the_config(config: AgentConfig) -> None:
    text = (
        "duration: 5\npoints: {plc: {force: 1.5, temp: -40.5}}\n"
        "stations: {ST10: {part_cycle: {period: 1, serial: 'S{n:04d}'}}}\n"
        "scans: [{device: sc1, at: 1, data: 'L1<GS>2'}]\n"
        "faults: [{device: plc, at: 1, fault: silent, duration: 1}, {device: sc1, at: 2, fault: garbage}]"
    )
    loaded = parse_scenario(text, config, "s.yaml")
    assert loaded.roles["ST10"] == CycleRoles(
        station="ST10",
        trigger=("plc", "done"),
        serial=("plc", "serial"),
        counter=("plc", "count"),
        result=("plc", "result"),
        ok=1,
        nok=2,
    )


def test_a_scenario_file_that_cannot_be_read(tmp_path: Path, config: AgentConfig) -> None:
    from simulators.devicemap import load_scenario

    (tmp_path / "bad.yaml").write_bytes(b"duration: 5\nx: \xff\n")
    for path, message in (
        (tmp_path / "missing.yaml", ": cannot read: No such file or directory"),
        (tmp_path / "bad.yaml", ":2:4: not UTF-8 text (byte 0xff); save the file as UTF-8"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_scenario(path, config)
        assert str(caught.value) == f"{path}{message}"


# ---- the pure parts: scripts and the part cycle -------------------------------------------------


def test_scripts_are_functions_of_time() -> None:
    assert [ramp(t, 0, 10, 4, True) for t in (0, 1, 2, 4, 5)] == [0, 2.5, 5, 0, 2.5]
    assert ramp(9, 0, 10, 4, False) == 10
    assert [step(t, ["a", "b", "c"], 2, True) for t in (0, 1.9, 2, 4, 6)] == [
        "a",
        "a",
        "b",
        "c",
        "a",
    ]
    assert step(100, ["a", "b"], 2, False) == "b"
    assert noise(0.1, 5, 1, 1, "k") == noise(0.9, 5, 1, 1, "k") != noise(1.1, 5, 1, 1, "k")


def test_a_free_running_cycle_and_a_handshake_cycle() -> None:
    roles = CycleRoles("ST10", ("plc", "ready"), serial=("plc", "sn"), counter=("plc", "n"),
                       result=("plc", "r"), ok=1, nok=2)  # fmt: skip
    free = PartCycle(roles, period=1.0, serial="S{n}", first=5, pulse=0.2, nok_ratio=0, seed=0)
    shown = {t: (free.value(("plc", "sn"), t), free.value(("plc", "ready"), t),
                 free.value(("plc", "r"), t)) for t in (0.1, 0.85, 1.1, 1.9)}  # fmt: skip
    assert shown == {0.1: ("S5", False, None), 0.85: ("S5", True, 1), 1.1: ("S6", False, 1),
                     1.9: ("S6", True, 1)}  # fmt: skip
    hs = PartCycle(
        CycleRoles("ST10", ("plc", "ready"), counter=("plc", "n"), taken=("plc", "taken")),
        period=1.0, serial="S{n}", first=1, pulse=0.2, nok_ratio=0, seed=0,
    )  # fmt: skip
    assert hs.value(("plc", "ready"), 5.0) is True  # waits for the agent however long
    assert hs.value(("plc", "n"), 5.0) == 1
    hs.written(("plc", "taken"), True, 5.1)
    assert hs.value(("plc", "ready"), 5.2) is False
    hs.written(("plc", "taken"), False, 5.3)
    assert (hs.value(("plc", "n"), 5.4), hs.value(("plc", "ready"), 5.4)) == (2, False)
    assert hs.value(("plc", "ready"), 6.3) is True
    assert hs.released == 1


# ---- the schema ---------------------------------------------------------------------------------


def test_committed_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), (
        "run: python -m simulators.devicemap.schema > config/scenario.schema.json"
    )


def test_schema_module_prints_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "simulators.devicemap.schema"], capture_output=True, text=True,
        check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    assert out == schema_text()


def doc_examples() -> dict[str, str]:
    """The YAML blocks of docs/simulate.md marked ``<!-- example: NAME -->``."""
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"<!-- example: (\S+) -->\n```yaml\n(.*?)```", text, flags=re.S)
    return dict(found)


def test_schema_and_loader_agree_on_the_docs_example_and_on_mistakes() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = scenario_schema()
    validators = [jsonschema.Draft202012Validator(schema), jsonschema.Draft7Validator(schema)]
    for v in validators:
        v.check_schema(schema)
    examples = doc_examples()
    assert set(examples) == {"line.yaml", "scenario.yaml"}
    config = parse_config(examples["line.yaml"], "line.yaml")
    scenario_text = examples["scenario.yaml"]
    loaded = parse_scenario(scenario_text, config, "scenario.yaml")
    assert "ST10" in loaded.roles
    data: Any = yaml.safe_load(scenario_text)
    for v in validators:
        assert list(v.iter_errors(data)) == []
    bad: Any
    for bad in ({**data, "duratoin": 3}, {**data, "duration": "soon"},
                {**data, "points": {"press10": {"x": [1]}}}, {"points": {}}):  # fmt: skip
        for v in validators:
            assert list(v.iter_errors(bad)), bad
    assert json.loads(SCHEMA_PATH.read_text())["$id"] == "urn:edge-agent:scenario"
