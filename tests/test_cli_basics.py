"""``edge-agent --version``, the config file from $EDGE_AGENT_CONFIG, and the control
commands finding the agent's socket through a config file that does not validate."""

from __future__ import annotations

import asyncio
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cli import main
from edge_agent.control import ControlServer

CLI = [sys.executable, "-m", "edge_agent.cli"]

GOOD = """\
agent: {site: plant1, line: line3, id: pc1}
stations:
  - name: ST10
devices:
  - name: plc1
    type: modbus_tcp
    host: 127.0.0.1
    points:
      - {name: temp, address: 0, type: float32}
control:
  socket: run/agent.sock
"""
BAD = GOOD.replace("type: float32", "type: float33")
BAD_LINE = GOOD.splitlines().index("      - {name: temp, address: 0, type: float32}") + 1


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config folder with good.yaml and bad.yaml; the test runs from another folder, with
    neither environment variable set."""
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text(BAD)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("EDGE_AGENT_CONFIG", raising=False)
    monkeypatch.delenv("EDGE_AGENT_SOCKET", raising=False)
    return tmp_path


def test_version() -> None:
    out = subprocess.run(
        [*CLI, "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    lines = out.splitlines()
    assert lines[0] == f"edge-agent {metadata.version('edge-agent')}"
    assert lines[1] == f"Python {platform.python_version()}"
    assert lines[2].startswith("optional: ")
    # The test environment has every extra (pyproject's test dependencies).
    assert [m.split()[0] for m in lines[2].removeprefix("optional: ").split(", ")] == [
        "asyncua",
        "evdev",
        "epcpy",
        "cv2",
        "zxingcpp",
    ]


def test_validate_takes_the_config_from_the_environment(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(folder / "good.yaml"))
    assert main(["validate"]) == 0
    assert main(["config", "validate"]) == 0
    assert capsys.readouterr().out.count(f"{folder / 'good.yaml'}: OK") == 2
    # The command line wins.
    assert main(["validate", str(folder / "bad.yaml")]) == 2
    assert f"{folder / 'bad.yaml'}:{BAD_LINE}:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["run"], ["validate"], ["config", "probe"], ["buffer", "salvage", "damaged.db"]]
)
def test_no_config_anywhere_is_a_usage_error(
    folder: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(argv)
    assert exc_info.value.code == 2
    assert "give a config file (-c FILE), or set EDGE_AGENT_CONFIG" in capsys.readouterr().err


Replies = list[dict[str, Any]]


async def _serve(path: Path, argv: list[str], reply: dict[str, Any]) -> tuple[int, Replies]:
    """Run ``main(argv)`` against a fake agent answering ``reply`` on ``path``."""
    asked: Replies = []

    async def handler(message: dict[str, Any]) -> dict[str, Any]:
        asked.append(message)
        return reply

    server = ControlServer(path, handler)
    await server.start()
    try:
        code = await asyncio.to_thread(main, argv)
    finally:
        await server.stop()
    return code, asked


STATUS = {"ok": True, "status": {"alarms": []}}


@pytest.mark.parametrize(
    ("argv", "reply", "code", "op"),
    [
        (["status", "--json"], STATUS, 0, "status"),
        (["context", "show"], {"ok": True, "status": {"stations": {"ST10": {}}}}, 0, "status"),
        (["device", "command", "--device", "plc1", "zero"], {"ok": True, "answer": "ok"}, 0,
         "device.command"),
        (["reload"], {"ok": False, "errors": ["bad.yaml:9:38: ..."]}, 2, "reload"),
    ],
)  # fmt: skip
async def test_a_config_that_does_not_validate_still_names_the_socket(
    folder: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    reply: dict[str, Any],
    code: int,
    op: str,
) -> None:
    full = [*argv, "-c", str(folder / "bad.yaml")]
    got, asked = await _serve(folder / "run" / "agent.sock", full, reply)
    assert (got, [m["op"] for m in asked]) == (code, [op])
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"warning: {folder / 'bad.yaml'} does not validate: ")
    assert f"bad.yaml:{BAD_LINE}:" in err[0]
    assert err[0].endswith(f"using its control socket {folder / 'run' / 'agent.sock'}")


async def test_status_takes_the_config_from_the_environment(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(folder / "good.yaml"))
    got, asked = await _serve(folder / "run" / "agent.sock", ["status", "--json"], STATUS)
    assert (got, len(asked)) == (0, 1)
    assert capsys.readouterr().err == ""


def test_the_socket_variable_wins_over_the_config_variable(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(folder / "good.yaml"))
    monkeypatch.setenv("EDGE_AGENT_SOCKET", str(folder / "other.sock"))
    assert main(["status"]) == 1
    assert f"cannot reach the agent at {folder / 'other.sock'}" in capsys.readouterr().err


def test_a_file_that_does_not_parse_means_the_default_socket_beside_it(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "broken.yaml").write_text("agent: [unclosed\n")
    assert main(["status", "-c", str(folder / "broken.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"warning: {folder / 'broken.yaml'} does not validate: {folder / 'broken.yaml'}:" in err
    assert f"cannot reach the agent at {folder / 'data' / 'control.sock'}" in err
