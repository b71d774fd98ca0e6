"""Config validation: every problem at once, each with file:line and key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load_config, parse_config
from edge_agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "config").rglob("*.yaml"))

GOOD = """\
agent: {site: plant1, line: line3, id: pc1}
stations:
  - name: ST10
    context:
      serial: {device: plc1, point: serial}
devices:
  - name: plc1
    type: modbus_tcp
    host: 127.0.0.1
    points:
      - {name: serial, address: 100, type: string, count: 6}
      - {name: temp, address: 0, type: float32, word_order: CDAB, unit: degC}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc_info:
        parse_config(text, "line3.yaml")
    return [str(i) for i in exc_info.value.issues]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.devices


def test_good_config_defaults() -> None:
    cfg = parse_config(GOOD)
    dev = cfg.devices[0]
    assert dev.port == 502
    assert dev.points[1].word_order == "CDAB"
    assert cfg.station_of(dev, "temp") == "ST10"  # single station: the default
    assert cfg.buffer.synchronous == "FULL"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # (old, new) substitution in GOOD -> the exact error line
        (
            ("host: 127.0.0.1", "host: 127.0.0.1\n    hots: x"),
            "line3.yaml:10: devices[0].hots: unknown key 'hots'; did you mean 'host'?",
        ),
        (
            ("address: 0,", "address: 70000,"),
            "line3.yaml:12: devices[0].points[1].address: Input should be less than or equal to 65535 (found 70000)",
        ),
        (
            ("type: float32", "type: float33"),
            "line3.yaml:12: devices[0].points[1].type: Input should be 'bool', 'bit', 'int16', 'uint16', "
            "'int32', 'uint32', 'int64', 'uint64', 'float32', 'float64' or 'string' (found 'float33')",
        ),
        (
            ("word_order: CDAB", "word_order: ABDC"),
            "line3.yaml:12: devices[0].points[1].word_order: Input should be 'ABCD', 'CDAB', 'BADC' or 'DCBA' (found 'ABDC')",
        ),
        (
            ("type: float32,", "type: float32, count: 1,"),
            "line3.yaml:12: devices[0].points[1].count: float32 occupies 2 register(s), not 1",
        ),
        (
            ("name: temp", "name: serial"),
            "line3.yaml:12: devices[0].points[1].name: duplicate point name 'serial' (also points[0])",
        ),
        (
            ("point: serial}", "point: serail}"),
            "line3.yaml:5: stations[0].context.serial.point: unknown point of 'plc1' 'serail'; did you mean 'serial'?",
        ),
        (
            ("type: string, count: 6", "type: string"),
            "line3.yaml:11: devices[0].points[0].count: type string needs count (registers, two characters each)",
        ),
        (
            ("type: modbus_tcp", "type: modbus_tpc"),
            "line3.yaml:8: devices[0].type: unknown device type 'modbus_tpc'; expected one of 'modbus_tcp'",
        ),
        (("    host: 127.0.0.1\n", ""), "line3.yaml:7: devices[0].host: missing required key"),
        (
            (
                "agent: {site: plant1, line: line3, id: pc1}",
                "agent: {site: plant1, line: line3, id: pc1, id: pc2}",
            ),
            "line3.yaml:1: agent.id: duplicate key (first given on line 1)",
        ),
    ],
)
def test_single_error_is_located(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in GOOD
    assert errors(GOOD.replace(old, new, 1)) == [expected]


def test_every_problem_at_once() -> None:
    text = (
        GOOD.replace("address: 0,", "address: -1,")
        .replace("hosts", "x")
        .replace("host: 127.0.0.1", "host: 127.0.0.1\n    colour: red")
        .replace("site: plant1", "site: 'plant 1'")
    )
    found = errors(text)
    assert len(found) == 3, found
    assert found[0].startswith("line3.yaml:1: agent.site: String should match pattern")
    assert found[1] == "line3.yaml:10: devices[0].colour: unknown key 'colour'"
    assert found[2].startswith(
        "line3.yaml:13: devices[0].points[1].address: Input should be greater"
    )


def test_yaml_syntax_error_names_line() -> None:
    found = errors(GOOD.replace("    points:", "    points: [oops"))
    assert len(found) == 1
    assert found[0].startswith("line3.yaml:1")  # some line; the exact one depends on the parser
    assert "YAML syntax" in found[0]


def test_yaml_syntax_error_line_is_right() -> None:
    found = errors("agent:\n  site: a\n  line: b\n   id: c\n")
    assert found[0].startswith("line3.yaml:4:")
    assert "YAML syntax" in found[0]


def test_multi_station_requires_assignment() -> None:
    text = GOOD.replace("devices:", "  - name: ST20\ndevices:")
    found = errors(text)
    assert found == [
        "line3.yaml:12: devices[0].points[0]: belongs to no station: set station on the device "
        "or the point (only a single-station file may leave it out)",
        "line3.yaml:13: devices[0].points[1]: belongs to no station: set station on the device "
        "or the point (only a single-station file may leave it out)",
    ]


def test_unknown_station_reference() -> None:
    found = errors(GOOD.replace("    host: 127.0.0.1", "    host: 127.0.0.1\n    station: ST11"))
    assert found == [
        "line3.yaml:10: devices[0].station: unknown station 'ST11'; did you mean 'ST10'?"
    ]


def test_empty_and_non_mapping_files() -> None:
    assert errors("") == ["line3.yaml:1: the file is empty"]
    assert errors("- a\n- b\n") == ["line3.yaml:1: expected a mapping of sections, found list"]


def test_validate_cli_exit_2_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "line3.yaml"
    bad.write_text(GOOD.replace("address: 0,", "address: 70000,").replace("hosts", "x"))
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{bad}:12: devices[0].points[1].address:" in proc.stderr
    assert "Traceback" not in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "validate", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout


def test_configuration_reference_is_current() -> None:
    from edge_agent.docgen import render

    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render(), "run: python -m edge_agent.docgen > docs/configuration.md"
