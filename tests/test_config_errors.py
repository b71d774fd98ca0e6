"""Config errors an integrator can act on: each kind located as file:line:col with the key path,
saying what was expected and what was found; and nothing a person can type makes a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import yamlsrc
from edge_agent.config import load_config, parse_config
from kernel.errors import ConfigError, ConfigIssue
from tests.config_helpers import GOOD, KIND_TYPES

BASE = GOOD  # the smallest valid file; each case breaks one thing

PART = """\
    part:
      trigger: {device: plc1, point: done}
      snapshot: {device: plc1, points: [temp, result]}
      result: {point: result, ok: [1], nok: [2]}
      limits:
        temp: {max: 80}
"""
WITH_PART = BASE.replace("devices:\n", PART + "devices:\n").replace(
    "unit: degC}\n",
    "unit: degC}\n"
    "      - {name: result, address: 2, type: uint16}\n"
    "      - {name: done, table: coil, address: 1, type: bool}\n",
)


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc_info:
        parse_config(text, "line3.yaml", env={})
    return [str(i) for i in exc_info.value.issues]


def test_bases_are_valid() -> None:
    parse_config(BASE, env={})
    parse_config(WITH_PART, env={})


def test_issue_prints_file_line_col_path_message() -> None:
    assert (
        str(ConfigIssue("a.yaml", 3, 7, "devices[0].port", "m")) == "a.yaml:3:7: devices[0].port: m"
    )
    assert str(ConfigIssue("a.yaml", 3, 7, "", "m")) == "a.yaml:3:7: m"
    assert str(ConfigIssue("a.yaml", None, None, "", "cannot read")) == "a.yaml: cannot read"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # what was expected, what was found
        (
            "host: 127.0.0.1",
            "host: 127.0.0.1\n    timeout: fast",
            "line3.yaml:10:5: devices[0].timeout: expected a number, found 'fast'",
        ),
        (
            "host: 127.0.0.1",
            "host: 127.0.0.1\n    port: 1.5",
            "line3.yaml:10:5: devices[0].port: expected a whole number, found 1.5",
        ),
        (
            "host: 127.0.0.1",
            "host: 127.0.0.1\n    timeout: 0",
            "line3.yaml:10:5: devices[0].timeout: expected more than 0, found 0",
        ),
        (
            "address: 0,",
            "address: 99999999999999999999999999999999999999999,",
            "line3.yaml:12:22: devices[0].points[1].address: expected at most 65535, found a "
            "41-character number",
        ),
        (
            "host: 127.0.0.1",
            "host: yes",
            "line3.yaml:9:5: devices[0].host: expected a string, found yes (YAML reads it as "
            "true; write 'yes' in quotes for the text)",
        ),
        (
            "id: pc1",
            "id: 0012",
            "line3.yaml:1:36: agent.id: expected a string, found 0012 (YAML reads it as 10; "
            "write '0012' in quotes for the text)",  # YAML 1.1: a leading 0 is octal
        ),
        (
            "- name: plc1",
            "- name: 'plc 1'",
            "line3.yaml:7:5: devices[0].name: expected a name (letters, digits, '_', '.', '-'; "
            "starting with a letter or '_'), found 'plc 1'",
        ),
        (
            "- name: plc1",
            "- name: " + "p" * 65,
            "line3.yaml:7:5: devices[0].name: expected at most 64 characters, found 65",
        ),
        # enums and literals: the choices, and the likely one
        (
            "word_order: CDAB",
            "word_order: ABDC",
            "line3.yaml:12:49: devices[0].points[1].word_order: unknown value 'ABDC'; expected "
            "one of ABCD, CDAB, BADC, DCBA; did you mean 'ABCD'?",
        ),
        (
            "word_order: CDAB",
            "word_order: cdab",
            "line3.yaml:12:49: devices[0].points[1].word_order: unknown value 'cdab'; expected "
            "one of ABCD, CDAB, BADC, DCBA; did you mean 'CDAB'?",
        ),
        (
            "word_order: CDAB",
            "word_order: little",
            "line3.yaml:12:49: devices[0].points[1].word_order: unknown value 'little'; expected "
            "one of ABCD, CDAB, BADC, DCBA",
        ),
        (
            "host: 127.0.0.1",
            "host: 127.0.0.1\n    address_base: 2",
            "line3.yaml:10:5: devices[0].address_base: expected one of 0, 1, found 2",
        ),
        (
            "type: modbus_tcp",
            "type: modbus-tcp",
            "line3.yaml:8:5: devices[0].type: unknown device type 'modbus-tcp'; expected one of "
            + KIND_TYPES
            + "; did you mean 'modbus_tcp'?",
        ),
        # keys: unknown ones with a did-you-mean, at any depth; missing ones where they belong
        (
            "devices:\n",
            "mqqt: {host: broker}\ndevices:\n",
            "line3.yaml:6:1: mqqt: unknown key 'mqqt'; did you mean 'mqtt'?",
        ),
        (
            "point: serial}",
            "pont: serial}",
            [  # the misspelt key leaves the right one missing
                "line3.yaml:5:7: stations[0].context.serial.point: missing required key",
                "line3.yaml:5:30: stations[0].context.serial.pont: unknown key 'pont'; did you "
                "mean 'point'?",
            ],
        ),
        ("    host: 127.0.0.1\n", "", "line3.yaml:7:5: devices[0].host: missing required key"),
        (
            "{device: plc1, point: serial}",
            "{point: serial}",
            "line3.yaml:5:7: stations[0].context.serial.device: no device: give device here or "
            "on the station",
        ),
        # shapes: a list where a mapping belongs, and the other way round
        (
            "devices:\n",
            "buffer: [data/buffer.db]\ndevices:\n",
            "line3.yaml:6:1: buffer: expected a mapping (key: value), found a list",
        ),
        (
            "stations:\n  - name: ST10\n    context:\n      serial: {device: plc1, point: serial}\n",
            "stations:\n  name: ST10\n",
            "line3.yaml:2:1: stations: expected a list, found a mapping",
        ),
        (
            "{device: plc1, point: serial}",
            "plc1.serial",
            "line3.yaml:5:7: stations[0].context.serial: expected a mapping (key: value), found "
            "'plc1.serial'",
        ),
        (
            "devices:\n  - name: plc1\n",
            "devices: []\nx:\n  - name: plc1\n",
            [
                "line3.yaml:6:1: devices: expected at least 1 entry, found 0",
                "line3.yaml:7:1: x: unknown key 'x'",
            ],
        ),
        # cross-field checks
        (
            "type: float32,",
            "type: float32, count: 1,",
            "line3.yaml:12:49: devices[0].points[1].count: float32 occupies 2 register(s), not 1",
        ),
        (
            "point: serial}",
            "point: serail}",
            "line3.yaml:5:30: stations[0].context.serial.point: unknown point of 'plc1' "
            "'serail'; did you mean 'serial'?",
        ),
        (
            "  - name: ST10\n",
            "  - name: ST10\n    device: plc2\n",
            "line3.yaml:4:5: stations[0].device: unknown device 'plc2'; did you mean 'plc1'?",
        ),
        (
            "word_order: CDAB,",
            "word_order: CDAB, scale: .nan,",
            "line3.yaml:12:67: devices[0].points[1].scale: expected a finite number, found nan",
        ),
    ],
)
def test_error_kinds(old: str, new: str, expected: str | list[str]) -> None:
    assert old in BASE
    found = errors(BASE.replace(old, new, 1))
    assert found == (expected if isinstance(expected, list) else [expected])


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "ok: [1]",
            "ok: [{value: 1}]",
            "line3.yaml:9:36: stations[0].part.result.ok[0]: expected true or false, a whole "
            "number or a string, found a mapping",
        ),
        (
            "temp: {max: 80}",
            "temp: {max: .inf}",
            "line3.yaml:11:16: stations[0].part.limits.temp.max: expected a finite number, found "
            ".inf",
        ),
        (
            "temp: {max: 80}",
            "temp: {max: 80, min: 90}",
            "line3.yaml:11:25: stations[0].part.limits.temp.min: min 90.0 is above max 80.0",
        ),
    ],
)
def test_part_error_kinds(old: str, new: str, expected: str) -> None:
    assert old in WITH_PART
    assert errors(WITH_PART.replace(old, new, 1)) == [expected]


def test_every_problem_at_once_in_file_order() -> None:
    text = (
        BASE.replace("id: pc1", "id: pc 1")
        .replace("host: 127.0.0.1", "host: 127.0.0.1\n    port: fast\n    colour: red")
        .replace("word_order: CDAB", "word_order: ABDC")
    )
    assert errors(text) == [
        "line3.yaml:1:36: agent.id: expected a name (letters, digits, '_', '.', '-'; starting "
        "with a letter or '_'), found 'pc 1'",
        "line3.yaml:10:5: devices[0].port: expected a whole number, found 'fast'",
        "line3.yaml:11:5: devices[0].colour: unknown key 'colour'",
        "line3.yaml:14:49: devices[0].points[1].word_order: unknown value 'ABDC'; expected one "
        "of ABCD, CDAB, BADC, DCBA; did you mean 'ABCD'?",
    ]


# ---- what a person can type never makes a traceback ---------------------------------------

REFUSED = "is not allowed: a config holds plain values (text, numbers, true/false, lists, mappings)"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "    host: 127.0.0.1",
            "\thost: 127.0.0.1",
            "line3.yaml:9:1: YAML syntax: a tab character; YAML indents (and separates) with "
            "spaces only",
        ),
        (
            "host: 127.0.0.1",
            "host: !!python/object/apply:os.system ['echo hi']",
            f"line3.yaml:9:11: devices[0].host: tag '!!python/object/apply:os.system' {REFUSED}",
        ),
        (
            "host: 127.0.0.1",
            "host: !!python/object:os.system {}",
            f"line3.yaml:9:11: devices[0].host: tag '!!python/object:os.system' {REFUSED}",
        ),
        (
            "host: 127.0.0.1",
            "host: !!python/name:os.system ''",
            f"line3.yaml:9:11: devices[0].host: tag '!!python/name:os.system' {REFUSED}",
        ),
        (
            "host: 127.0.0.1",
            "host: !env PLC_HOST",
            f"line3.yaml:9:11: devices[0].host: tag '!env' {REFUSED}",
        ),
        (
            "host: 127.0.0.1",
            "host: !!binary MTI3LjAuMC4x",
            f"line3.yaml:9:11: devices[0].host: tag '!!binary' {REFUSED}",
        ),
        (
            "host: 127.0.0.1",
            "host: 127.0.0.1\n    port: " + "9" * 5000,
            "line3.yaml:10:11: devices[0].port: a number with too many digits (5000)",
        ),
        (
            "host: 127.0.0.1",
            "host: 127.0.0.1\n    port: +1.0e+999",
            "line3.yaml:10:5: devices[0].port: expected a finite number, found +1.0e+999",
        ),
        (
            "host: 127.0.0.1",
            "host: 127.0\x00.0.1",
            "line3.yaml:9:16: control character U+0000 is not allowed in YAML",
        ),
        (
            "    points:",
            "    points: [oops",
            "line3.yaml:11:9: YAML syntax: while parsing a flow sequence expected ',' or ']', "
            "but got '{'",
        ),
        (
            "agent: {site: plant1, line: line3, id: pc1}",
            "agent: {site: plant1, line: line3, id: pc1, id: pc2}",
            "line3.yaml:1:45: agent.id: duplicate key (first given on line 1)",
        ),
        (
            "  - name: ST10\n",
            "  - name: ST10\n    ? [a, b]\n    : 1\n",
            "line3.yaml:4:7: stations[0]: keys must be plain words, not lists or mappings",
        ),
        (
            "devices:\n",
            "---\ndevices:\n",
            "line3.yaml:6:1: YAML syntax: expected a single document in the stream but found "
            "another document",
        ),
        (
            "    context:\n      serial: {device: plc1, point: serial}\n",
            "    context: &ctx\n      serial: {device: plc1, point: serial}\n      more: *ctx\n",
            "line3.yaml:4:14: stations[0].context.more: an alias that contains itself",
        ),
    ],
)
def test_hostile_input_is_an_issue(old: str, new: str, expected: str) -> None:
    assert old in BASE
    assert errors(BASE.replace(old, new, 1)) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "line3.yaml:1:1: the file is empty"),
        ("# only a comment\n", "line3.yaml:1:1: the file is empty"),
        ("---\n...\n", "line3.yaml:1:1: the file is empty"),
        ("- a\n- b\n", "line3.yaml:1:1: expected a mapping of sections, found a list"),
        ("hello\n", "line3.yaml:1:1: expected a mapping of sections, found 'hello'"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "line3.yaml:1:1: YAML nested too deeply"),
        ("a: *nope\n", "line3.yaml:1:4: YAML syntax: found undefined alias 'nope'"),
    ],
)
def test_unusable_documents(text: str, expected: str) -> None:
    assert errors(text) == [expected]


def test_alias_bombs_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlsrc, "MAX_VALUES", 1000)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 9)]
    assert errors("\n".join(lines) + "\n") == [
        "line3.yaml:1:1: the document expands to more than 1000 values through its aliases"
    ]


def test_merge_keys_override_as_yaml_says() -> None:
    text = BASE.replace(
        "devices:\n  - name: plc1\n",
        "templates:\n  devices:\n    plc: &plc {type: modbus_tcp, port: 1502, timeout: 2}\n"
        "devices:\n  - <<: *plc\n    name: plc1\n    port: 502\n    poll_interval: 2\n",
    )
    dev = parse_config(text, env={}).devices[0]
    assert (dev.port, dev.timeout) == (502, 2.0)  # the key beside << wins, no duplicate error
    twice = text.replace("    port: 502\n", "    port: 502\n    port: 503\n")
    assert errors(twice) == [
        "line3.yaml:13:5: devices[0].port: duplicate key (first given on line 12)"
    ]


def test_load_config_file_problems(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(BASE.replace("unit: degC", "unit: \xb0C").encode("latin-1"))
    with pytest.raises(ConfigError) as exc_info:
        load_config(latin1)
    assert [str(i) for i in exc_info.value.issues] == [
        f"{latin1}:12:73: not UTF-8 text (byte 0xb0); save the file as UTF-8"
    ]
    for missing in (tmp_path / "nope.yaml", tmp_path):
        with pytest.raises(ConfigError) as exc_info:
            load_config(missing)
        (issue,) = exc_info.value.issues
        assert str(issue).startswith(f"{missing}: cannot read: ")
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert load_config(bom).devices[0].name == "plc1"


def test_validate_cli_never_prints_a_traceback(tmp_path: Path) -> None:
    files = {
        "binary.yaml": b"\x00\xff\xfe garbage",
        "tags.yaml": b"agent: !!python/object/apply:os.system ['touch pwned']\n",
        "tabs.yaml": b"agent:\n\tsite: a\n",
        "list.yaml": b"- 1\n",
        "deep.yaml": b"a: " + b"[" * 3000 + b"]" * 3000,
    }
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    paths = [str(tmp_path / n) for n in files] + [str(tmp_path / "missing.yaml")]
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "validate", *paths],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "pwned").exists()
    for path in paths:
        assert f"{path}: " in proc.stderr or f"{path}:1" in proc.stderr
