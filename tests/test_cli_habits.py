"""The CLI's habits: options anywhere, -c everywhere, help on every option, starter configs,
and one-line errors with the exit status systemd's restart policy reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_agent.cli import EXIT_STARTUP, _Version, main
from edge_agent.cli_args import build_parser, commands, help_gaps
from edge_agent.config import load_config, parse_config
from edge_agent.schema import schema_text
from edge_agent.starter import SCHEMA_LINE, host_agent_id
from simulators.broker import free_port
from simulators.scenario import demo_config

CLI = [sys.executable, "-m", "edge_agent.cli"]


def _cli(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


def test_every_option_and_argument_has_a_help_text() -> None:
    assert help_gaps(build_parser(_Version)) == []


def test_global_options_work_before_and_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "agent.yaml"
    assert main(["config", "init", "-o", str(cfg), "--log-level", "warning"]) == 0
    assert main(["--log-level", "ERROR", "validate", str(cfg)]) == 0
    assert main(["validate", "-c", str(cfg), "--log-format", "json", "--log-level", "DEBUG"]) == 0
    assert capsys.readouterr().out.count(f"{cfg}: OK") == 2
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(cfg), "--log-level", "LOUD"])
    assert exc.value.code == 2
    assert "choose from DEBUG, INFO, WARNING, ERROR, CRITICAL" in capsys.readouterr().err


def test_every_command_reading_a_config_takes_dash_c(tmp_path: Path) -> None:
    parser = build_parser(_Version)
    takes = {"run", "validate", "config probe", "config validate", "config browse",
             "buffer salvage", "status", "reload", "tail", "context set", "context show",
             "device command"}  # fmt: skip
    for command in commands(parser):
        if command not in takes:
            continue
        sub = parser
        for word in command.split():
            sub = next(
                a.choices[word]
                for a in sub._actions
                if hasattr(a, "choices") and isinstance(a.choices, dict) and word in a.choices
            )
        flags = {s for a in sub._actions for s in a.option_strings}
        assert {"-c", "--config"} <= flags, command


def test_a_config_given_twice_differently_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "a.yaml", "-c", "b.yaml"])
    assert exc.value.code == 2
    assert "two config files given: a.yaml and -c b.yaml" in capsys.readouterr().err


def test_config_init_writes_a_commented_valid_starter_and_its_schema(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "agent.yaml"
    done = _cli("config", "init", "-o", str(target), "--site", "lyon", "--line", "line3")
    assert done.returncode == 0, done.stderr
    text = target.read_text()
    assert text.splitlines()[0] == SCHEMA_LINE
    assert (target.parent / "edge-agent.schema.json").read_text() == schema_text()
    assert "templates:" in text
    assert text.count("template: press-") == 4
    cfg = load_config(target)
    assert (cfg.agent.site, cfg.agent.line, cfg.agent.id) == ("lyon", "line3", host_agent_id())
    # The default socket (beside the config, as every relative path) and metrics off.
    assert cfg.control.socket == str(target.parent / "data" / "control.sock")
    assert cfg.buffer.path == str(target.parent / "data" / "buffer.db")
    assert not cfg.metrics.enabled
    # It reads the simulator's register map: the same points as `simulate --print-config`.
    sim = parse_config(yaml.safe_dump(demo_config(modbus_port=5020, mqtt_port=1, buffer_path="b")))
    mine = {p.name: p for p in cfg.devices[0].points}
    for point in sim.devices[0].points:
        if point.name in mine:
            assert mine[point.name] == point, point.name
    again = _cli("config", "init", "-o", str(target))
    assert again.returncode == 1
    assert "exists; give --force" in again.stderr


def test_config_init_for_the_service_uses_the_systemd_directories(tmp_path: Path) -> None:
    out = _cli("config", "init", "--service", "--id", "line3-pc1").stdout
    (tmp_path / "agent.yaml").write_text(out)
    cfg = load_config(tmp_path / "agent.yaml")
    assert cfg.agent.id == "line3-pc1"
    assert cfg.buffer.path == "/var/lib/edge-agent/buffer.db"
    assert cfg.control.socket == "/run/edge-agent/control.sock"
    assert cfg.metrics.enabled


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Line3-PC1.plant.local", "line3-pc1"),
        ("3ds_box", "pc-3ds_box"),
        ("büro pc", "b-ro-pc"),
        ("", "agent"),
        ("x" * 80, "x" * 64),
    ],
)
def test_agent_id_from_the_host_name(host: str, expected: str) -> None:
    assert host_agent_id(host) == expected


@pytest.mark.parametrize("flags", [[], ["--opcua"], ["--rtu", "/tmp/edge-agent-rs485"]])
def test_print_config_uses_templates_and_means_the_same_config(flags: list[str]) -> None:
    out = _cli("simulate", "--stations", "3", *flags, "--print-config").stdout
    assert out.splitlines()[0] == SCHEMA_LINE
    raw = yaml.safe_load(out)
    assert "control" not in raw  # the default socket
    assert raw["agent"]["id"] == host_agent_id()
    assert [s["template"] for s in raw["stations"]] == ["station"] * 3
    assert [d["template"] for d in raw["devices"]] == ["station-plc"] * 3
    printed = parse_config(out, "printed.yaml")
    full = parse_config(
        yaml.safe_dump(
            demo_config(
                modbus_port=5020,
                mqtt_port=1883,
                buffer_path="data/buffer.db",
                stations=3,
                agent_id=host_agent_id(),
                rtu_port="/tmp/edge-agent-rs485/ttyAGENT" if "--rtu" in flags else None,
                opcua_endpoint="opc.tcp://127.0.0.1:5020/" if "--opcua" in flags else None,
            )
        ),
        "full.yaml",
    )
    # Templates expand to exactly the stations and devices of the full form (the station's
    # own `device:` is only the default its references were written with).
    assert [s.model_copy(update={"device": None}) for s in printed.stations] == full.stations
    assert [d.model_dump(exclude={"parity"}) for d in printed.devices] == [
        d.model_dump(exclude={"parity"}) for d in full.devices
    ]


def test_a_second_agent_on_the_same_journal_is_one_line_and_exit_75(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    raw = demo_config(
        modbus_port=free_port(), mqtt_port=free_port(), buffer_path=str(tmp_path / "buffer.db")
    )
    cfg.write_text(yaml.safe_dump(raw))
    first = subprocess.Popen(
        [*CLI, "run", "-c", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert first.stdout is not None
        for line in first.stdout:  # the first agent is running once it says so
            if "running:" in line:
                break
        else:
            pytest.fail("the first agent never said it was running")
        # Its control socket is elsewhere, so only the journal's lock stands in the way.
        raw["control"]["socket"] = str(tmp_path / "other.sock")
        second_cfg = tmp_path / "second.yaml"
        second_cfg.write_text(yaml.safe_dump(raw))
        second = _cli("run", str(second_cfg))
        assert second.returncode == EXIT_STARTUP
        assert "Traceback" not in second.stderr
        lines = second.stderr.strip().splitlines()
        assert lines[-1].startswith("edge-agent: cannot start: journal ")
        assert f"is in use by process {first.pid}" in lines[-1]
        # Same socket as the first: refused before the journal is touched, also one line.
        same = _cli("run", str(cfg))
        assert same.returncode == EXIT_STARTUP
        assert "Traceback" not in same.stderr
    finally:
        first.terminate()
        first.communicate(timeout=30)
    assert first.returncode == 0


def test_an_unwritable_journal_and_a_missing_config_are_one_line_each(tmp_path: Path) -> None:
    raw = demo_config(modbus_port=free_port(), mqtt_port=free_port(), buffer_path="b.db")
    # A journal under a regular file cannot be created, even by root.
    (tmp_path / "file").write_text("")
    raw["buffer"]["path"] = str(tmp_path / "file" / "buffer.db")
    raw["control"]["socket"] = str(tmp_path / "agent.sock")
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(raw))
    done = _cli("run", str(tmp_path / "agent.yaml"))
    assert done.returncode == EXIT_STARTUP
    assert "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"edge-agent: cannot start: cannot open buffer {tmp_path / 'file' / 'buffer.db'}"
        )
    )
    missing = _cli("run", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"
    )


def test_the_cli_reference_is_fresh() -> None:
    from edge_agent.cli_doc import render

    fresh = render()
    assert (Path(__file__).parent.parent / "docs" / "cli.md").read_text() == fresh, (
        "docs/cli.md is stale: python -m edge_agent.cli_doc > docs/cli.md"
    )
