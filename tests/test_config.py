"""Config validation: every problem at once, each with file:line and key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import load_config, parse_config
from kernel.errors import ConfigError
from tests.config_helpers import GOOD, KIND_TYPES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "config").rglob("*.yaml"))


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
            "line3.yaml:10:5: devices[0].hots: unknown key 'hots'; did you mean 'host'?",
        ),
        (
            ("address: 0,", "address: 70000,"),
            "line3.yaml:12:22: devices[0].points[1].address: expected at most 65535, found 70000",
        ),
        (
            ("type: float32", "type: float33"),
            "line3.yaml:12:34: devices[0].points[1].type: unknown value 'float33'; expected one of bool, "
            "bit, int16, uint16, int32, uint32, int64, uint64, float32, float64, string; did you mean "
            "'float32'?",
        ),
        (
            ("word_order: CDAB", "word_order: ABDC"),
            "line3.yaml:12:49: devices[0].points[1].word_order: unknown value 'ABDC'; expected one of ABCD, CDAB, BADC, DCBA; did you mean 'ABCD'?",
        ),
        (
            ("type: float32,", "type: float32, count: 1,"),
            "line3.yaml:12:49: devices[0].points[1].count: float32 occupies 2 register(s), not 1",
        ),
        (
            ("name: temp", "name: serial"),
            "line3.yaml:12:10: devices[0].points[1].name: duplicate point name 'serial' (also points[0])",
        ),
        (
            ("point: serial}", "point: serail}"),
            "line3.yaml:5:30: stations[0].context.serial.point: unknown point of 'plc1' 'serail'; did you mean 'serial'?",
        ),
        (
            ("type: string, count: 6", "type: string"),
            "line3.yaml:11:9: devices[0].points[0].count: type string needs count (registers, two characters each)",
        ),
        (
            ("type: modbus_tcp", "type: modbus_tpc"),
            "line3.yaml:8:5: devices[0].type: unknown device type 'modbus_tpc'; expected one of "
            + KIND_TYPES
            + "; did you mean 'modbus_tcp'?",
        ),
        (("    host: 127.0.0.1\n", ""), "line3.yaml:7:5: devices[0].host: missing required key"),
        (
            (
                "agent: {site: plant1, line: line3, id: pc1}",
                "agent: {site: plant1, line: line3, id: pc1, id: pc2}",
            ),
            "line3.yaml:1:45: agent.id: duplicate key (first given on line 1)",
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
    assert found == [
        "line3.yaml:1:9: agent.site: expected a name (letters, digits, '_', '.', '-'; starting "
        "with a letter or '_'), found 'plant 1'",
        "line3.yaml:10:5: devices[0].colour: unknown key 'colour'",
        "line3.yaml:13:22: devices[0].points[1].address: expected at least 0, found -1",
    ]


def test_yaml_syntax_error_names_line() -> None:
    found = errors(GOOD.replace("    points:", "    points: [oops"))
    assert len(found) == 1
    assert found[0].startswith("line3.yaml:1")  # some line; the exact one depends on the parser
    assert "YAML syntax" in found[0]


def test_yaml_syntax_error_line_is_right() -> None:
    found = errors("agent:\n  site: a\n  line: b\n   id: c\n")
    assert found == [
        "line3.yaml:4:6: YAML syntax: mapping values are not allowed here (check this line's "
        "indentation, or quote a value that contains ': ')"
    ]


def test_multi_station_requires_assignment() -> None:
    text = GOOD.replace("devices:", "  - name: ST20\ndevices:")
    found = errors(text)
    assert found == [
        "line3.yaml:12:9: devices[0].points[0]: belongs to no station: set station on the device "
        "or the point (only a single-station file may leave it out)",
        "line3.yaml:13:9: devices[0].points[1]: belongs to no station: set station on the device "
        "or the point (only a single-station file may leave it out)",
    ]


def test_unknown_station_reference() -> None:
    found = errors(GOOD.replace("    host: 127.0.0.1", "    host: 127.0.0.1\n    station: ST11"))
    assert found == [
        "line3.yaml:10:5: devices[0].station: unknown station 'ST11'; did you mean 'ST10'?"
    ]


def test_empty_and_non_mapping_files() -> None:
    assert errors("") == ["line3.yaml:1:1: the file is empty"]
    assert errors("- a\n- b\n") == ["line3.yaml:1:1: expected a mapping of sections, found a list"]


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
    assert f"{bad}:12:22: devices[0].points[1].address:" in proc.stderr
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


NEW_EXAMPLES = ["screwdriving-station.yaml", "line-of-ten.yaml"]


@pytest.mark.parametrize("name", NEW_EXAMPLES)
def test_examples_name_their_schema(name: str) -> None:
    first = (ROOT / "config" / "examples" / name).read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../edge-agent.schema.json"


def test_validate_cli_accepts_every_example() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "validate", *map(str, EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": OK (") == len(EXAMPLES)


def test_line_of_ten_matches_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """`edge-agent simulate --port 5020 --stations 10` serves what line-of-ten.yaml reads."""
    from simulators.scenario import station_name
    from simulators.station import COIL_CYCLE_COMPLETE, REGISTER_MAP

    path = ROOT / "config" / "examples" / "line-of-ten.yaml"
    monkeypatch.delenv("PLC_GATEWAY", raising=False)
    cfg = load_config(path)
    assert [s.name for s in cfg.stations] == [station_name(i) for i in range(10)]
    assert [(d.host, d.port, d.unit_id) for d in cfg.devices] == [
        ("127.0.0.1", 5020, i) for i in range(1, 11)
    ]
    for dev, st in zip(cfg.devices, cfg.stations, strict=True):
        assert dev.station == st.name
        assert st.part is not None
        assert st.part.trigger.device == st.part.snapshot.device == dev.name
        for p in dev.points:
            if p.name == "cycle_complete":
                assert p.address == COIL_CYCLE_COMPLETE
                continue
            address, kind, order, count, unit, _scale = REGISTER_MAP[p.name]
            assert (p.address, p.type, p.word_order, p.register_count, p.unit) == (
                address,
                kind,
                order,
                count,
                unit,
            ), p.name
    monkeypatch.setenv("PLC_GATEWAY", "10.1.3.50")
    assert {d.host for d in load_config(path).devices} == {"10.1.3.50"}
