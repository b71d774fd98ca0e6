"""The overrides that point an agent config at the simulators: applied to a loaded config,
and written into a copy of the file (``simulate --write-config``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import load_config
from kernel.errors import ConfigError
from simulators.devicemap import apply_overrides, overridden_text, write_config

CONFIG = """\
# the line's config, as the integrator wrote it
agent: {site: s1, line: l1, id: "${AGENT_ID:-pc1}"}
templates:
  devices:
    press: {type: modbus_tcp, host: 10.0.0.5, station: ST10, points: [{name: v, address: 0, type: uint16}]}
stations:
  - {name: ST10}
devices:
  - {name: p1, template: press, unit_id: 1}
  - {name: p2, template: press, unit_id: 2}
  - {name: rtu, type: modbus_rtu, port: /dev/ttyUSB0, station: ST10, points: [{name: v, address: 0, type: uint16}]}
buffer: {path: journal/buffer.db}
mqtt: {host: broker, username: agent, password_file: secrets/mqtt}
"""
OVERRIDES: dict[str, dict[str, Any]] = {
    "p1": {"host": "127.0.0.1", "port": 40001},
    "p2": {"host": "127.0.0.1", "port": 40001},
    "rtu": {"port": "/tmp/sim/ttyUSB0"},
}


@pytest.fixture
def line(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "mqtt").write_text("s3cret\n")
    path = tmp_path / "line.yaml"
    path.write_text(CONFIG)
    return path


def test_applied_to_a_loaded_config(line: Path) -> None:
    config = load_config(line)
    live = apply_overrides(config, OVERRIDES)
    got = {d.name: d.model_dump() for d in live.devices}
    assert (got["p1"]["host"], got["p1"]["port"], got["p1"]["unit_id"]) == ("127.0.0.1", 40001, 1)
    assert got["rtu"]["port"] == "/tmp/sim/ttyUSB0"
    assert live.mqtt == config.mqtt  # nothing else changes
    with pytest.raises(ValueError, match="port"):
        apply_overrides(config, {"p1": {"port": "not a port"}})


def test_written_beside_the_config_or_elsewhere(line: Path, tmp_path: Path) -> None:
    """The file as written (templates, ${VAR}, secret files kept; nothing secret copied),
    the devices' own entries overridden; elsewhere, relative paths made absolute."""
    beside = tmp_path / "line.sim.yaml"
    write_config(line, OVERRIDES, beside)
    text = beside.read_text()
    assert "s3cret" not in text
    assert "${AGENT_ID:-pc1}" in text
    assert "template: press" in text
    assert "password_file: secrets/mqtt" in text
    loaded = load_config(beside)
    assert {d.name: d.model_dump()["port"] for d in loaded.devices} == {
        "p1": 40001, "p2": 40001, "rtu": "/tmp/sim/ttyUSB0"
    }  # fmt: skip
    assert loaded.buffer.path == str(tmp_path / "journal" / "buffer.db")

    ci = tmp_path / "ci"
    ci.mkdir()
    elsewhere = overridden_text(line, OVERRIDES, ci / "line.yaml")
    assert f"password_file: {tmp_path / 'secrets' / 'mqtt'}" in elsewhere
    (ci / "line.yaml").write_text(elsewhere)
    moved = load_config(ci / "line.yaml")
    assert moved.buffer.path == str(tmp_path / "journal" / "buffer.db")
    assert moved.mqtt.password is not None
    assert moved.mqtt.password.get_secret_value() == "s3cret"


def test_a_config_with_mistakes_is_not_written(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: {site: s}\n")
    with pytest.raises(ConfigError):
        write_config(bad, {}, tmp_path / "out.yaml")
    assert not (tmp_path / "out.yaml").exists()
