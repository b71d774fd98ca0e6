"""Relative paths in a config file are taken from the file's folder, never from the CWD (which
is ``/`` under systemd); absolute paths and device names stay as written."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from drivers import registry
from edge_agent.cli import main
from edge_agent.config import agent_model, control_socket, load_config, parse_config
from edge_agent.config.paths import is_path_field, resolve

CONFIG = """\
agent: {site: plant1, line: line3, id: pc1}
stations:
  - name: ST10
    scans:
      sources: [{device: cam10}, {device: wedge10}]
devices:
  - name: press10
    type: opcua
    endpoint: opc.tcp://127.0.0.1:4840
    security_policy: Basic256Sha256
    security_mode: SignAndEncrypt
    pki: pki
    user_certificate: certs/user.der
    user_private_key: certs/user.pem
    points:
      - {name: temp, node: "ns=2;s=temp"}
  - name: press20
    type: opcua
    endpoint: opc.tcp://127.0.0.1:4841
    username: line3
    password_file: secrets/opcua-password
    points:
      - {name: temp, node: "ns=2;s=temp"}
  - name: cam10
    type: camera
    folder: ftp/cam10
    evidence: {folder: ../evidence}
    done: {folder: ./ftp/done}
  - name: wedge10
    type: keyboard_scanner
    input: /dev/input/by-id/wedge-event-kbd
  - name: plc10
    type: modbus_rtu
    port: ttyUSB0
    unit_id: 1
    points:
      - {name: temp, address: 0, type: uint16}
buffer:
  path: data/buffer.db
control:
  socket: run/control.sock
mqtt:
  host: broker.local
  username: line3
  password_file: secrets/mqtt-password
  tls:
    ca_file: tls/ca.pem
    cert_file: tls/pc1.crt
    key_file: tls/pc1.key
    key_password_file: secrets/key-password
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The config's folder, with its secret files; the test runs from another folder."""
    where = tmp_path / "etc" / "line3"
    (where / "secrets").mkdir(parents=True)
    for name in ("opcua-password", "mqtt-password", "key-password"):
        (where / "secrets" / name).write_text(f"{name}-secret\n")
    (where / "line3.yaml").write_text(CONFIG)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return where


def test_relative_paths_are_taken_from_the_config_folder(folder: Path) -> None:
    cfg = load_config(folder / "line3.yaml")
    devices: list[Any] = list(cfg.devices)  # each kind's own model
    opcua, opcua_pw, camera, wedge, rtu = devices
    at = str(folder)
    assert cfg.buffer.path == f"{at}/data/buffer.db"
    assert cfg.control.socket == f"{at}/run/control.sock"
    assert cfg.mqtt.password_file == f"{at}/secrets/mqtt-password"
    assert cfg.mqtt.tls is not None
    tls = cfg.mqtt.tls
    assert (tls.ca_file, tls.cert_file, tls.key_file, tls.key_password_file) == (
        f"{at}/tls/ca.pem",
        f"{at}/tls/pc1.crt",
        f"{at}/tls/pc1.key",
        f"{at}/secrets/key-password",
    )
    assert (opcua.pki, opcua.user_certificate, opcua.user_private_key) == (
        f"{at}/pki",
        f"{at}/certs/user.der",
        f"{at}/certs/user.pem",
    )
    assert camera.folder == f"{at}/ftp/cam10"  # relative is fine now: it cannot move
    assert camera.evidence.folder == f"{folder.parent}/evidence"  # normalised
    assert camera.done.folder == f"{at}/ftp/done"
    # The secret files were read from the config's folder, not the CWD.
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == "mqtt-password-secret"
    assert tls.key_password is not None
    assert tls.key_password.get_secret_value() == "key-password-secret"
    assert opcua_pw.password_file == f"{at}/secrets/opcua-password"
    assert opcua_pw.password.get_secret_value() == "opcua-password-secret"
    # Device names are not files of the config.
    assert wedge.input == "/dev/input/by-id/wedge-event-kbd"
    assert rtu.port == "ttyUSB0"


def test_defaults_are_taken_from_the_config_folder_too(folder: Path) -> None:
    """``status -c`` from any folder must find the socket the agent opened."""
    text = CONFIG.split("buffer:")[0].replace("    pki: pki\n", "")
    (folder / "short.yaml").write_text(text)
    cfg = load_config(folder / "short.yaml")
    assert cfg.buffer.path == f"{folder}/data/buffer.db"
    assert cfg.control.socket == f"{folder}/data/control.sock"
    opcua: Any = cfg.devices[0]
    assert opcua.pki == f"{folder}/data/pki"
    assert cfg.mqtt.password_file is None


def test_a_config_named_relative_to_the_cwd(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder.parent)
    cfg = load_config("line3/line3.yaml")
    assert cfg.buffer.path == f"{folder}/data/buffer.db"


def test_a_relative_device_name_is_not_made_a_file_of_the_config(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = folder / "wedge.yaml"
    path.write_text(CONFIG.replace("input: /dev/input/by-id/", "input: by-id/"))
    assert main(["validate", str(path)]) == 2
    assert "give the input device's absolute path" in capsys.readouterr().err


def test_absolute_paths_stay_as_they_are(folder: Path) -> None:
    text = CONFIG.replace("path: data/buffer.db", "path: /var/lib/edge-agent//buffer.db")
    text = text.replace("socket: run/control.sock", "socket: /run/edge-agent/control.sock")
    (folder / "abs.yaml").write_text(text)
    cfg = load_config(folder / "abs.yaml")
    assert cfg.buffer.path == "/var/lib/edge-agent//buffer.db"  # as written, not normalised
    assert cfg.control.socket == "/run/edge-agent/control.sock"


def test_text_without_a_file_keeps_paths_relative_to_the_cwd(folder: Path) -> None:
    text = CONFIG.replace("secrets/", str(folder / "secrets") + "/")
    text = text.replace("folder: ftp/cam10", "folder: /srv/ftp/cam10")
    cfg = parse_config(text, "line3.yaml")
    assert cfg.buffer.path == "data/buffer.db"
    assert cfg.control.socket == "run/control.sock"
    camera: Any = cfg.devices[2]
    assert camera.evidence.folder == "../evidence"


def test_folders_are_compared_once_resolved(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The watched folder written relative, the evidence folder absolute: the same folder."""
    evidence = f"evidence: {{folder: {folder}/ftp/cam10}}"
    (folder / "clash.yaml").write_text(CONFIG.replace("evidence: {folder: ../evidence}", evidence))
    assert main(["validate", str(folder / "clash.yaml")]) == 2
    assert "must not be the watched folder" in capsys.readouterr().err


def test_validate_reports_file_line_from_another_cwd(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = folder / "bad.yaml"
    path.write_text(CONFIG.replace("secrets/mqtt-password", "secrets/nope"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    line = CONFIG.splitlines().index("  password_file: secrets/mqtt-password") + 1
    assert f"{path}:{line}:" in err
    assert f"cannot read '{folder}/secrets/nope'" in err  # the file it looked for


def test_control_socket_is_read_from_a_file_that_does_not_validate(folder: Path) -> None:
    path = folder / "editing.yaml"
    path.write_text(CONFIG.replace("type: opcua", "type: opcuaa"))
    assert control_socket(path) == f"{folder}/run/control.sock"
    path.write_text("agent: [unclosed\n")
    assert control_socket(path) == f"{folder}/data/control.sock"
    assert control_socket(folder / "missing.yaml") == f"{folder}/data/control.sock"


@pytest.mark.parametrize(
    ("value", "base", "expected"),
    [
        ("data/x.db", Path("/etc/ea"), "/etc/ea/data/x.db"),
        ("./x.db", Path("/etc/ea"), "/etc/ea/x.db"),
        ("../x.db", Path("/etc/ea"), "/etc/x.db"),
        ("/abs/x.db", Path("/etc/ea"), "/abs/x.db"),
        ("data/x.db", None, "data/x.db"),
        ("", Path("/etc/ea"), ""),
    ],
)
def test_resolve(value: str, base: Path | None, expected: str) -> None:
    assert resolve(value, base) == expected


def _string_fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[tuple[str, str]]:
    """(model, field) for every field of ``model`` and the models below that takes a str."""
    if model in seen:
        return set()
    seen.add(model)
    out: set[tuple[str, str]] = set()
    for name, field in model.model_fields.items():
        stack: list[Any] = [field.annotation]
        while stack:
            ann = stack.pop()
            if ann is str:
                out.add((model.__name__, name))
            elif isinstance(ann, type) and issubclass(ann, BaseModel):
                out |= _string_fields(ann, seen)
            else:
                stack.extend(get_args(ann))
    return out


def test_the_path_fields_are_exactly_these() -> None:
    """A new field named like a path (``folder``, ``*_file`` ...) is resolved: say so here."""
    seen: set[type[BaseModel]] = set()
    fields = _string_fields(agent_model(), seen)
    for kind in registry.kinds():
        fields |= _string_fields(kind.config, seen)
    assert sorted(f for f in fields if is_path_field(f[1])) == [
        ("BufferConfig", "path"),
        ("CameraDevice", "folder"),
        ("ControlConfig", "socket"),
        ("DoneFolder", "folder"),
        ("Evidence", "folder"),
        ("MqttConfig", "password_file"),
        ("MqttTls", "ca_file"),
        ("MqttTls", "cert_file"),
        ("MqttTls", "key_file"),
        ("MqttTls", "key_password_file"),
        ("OpcUaDevice", "password_file"),
        ("OpcUaDevice", "pki"),
        ("OpcUaDevice", "user_certificate"),
        ("OpcUaDevice", "user_private_key"),
    ]
