"""Secrets read from files (``password_file``) at load time; the secret is never printed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from edge_agent.config import load_config, parse_config, read_secret_files
from edge_agent.yamlsrc import load_yaml
from kernel.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Pa55-w0rd"

BASE = """\
agent: {site: plant1, line: line3, id: pc1}
stations:
  - name: ST10
devices:
  - name: plc1
    type: modbus_tcp
    host: 127.0.0.1
    points:
      - {name: temp, address: 0, type: float32}
mqtt:
  host: broker.local
  username: line3
  password_file: PASSWORD_FILE
"""


def config(tmp_path: Path, content: bytes | None = SECRET.encode() + b"\n", **swap: str) -> str:
    secret = tmp_path / "mqtt-password"
    if content is not None:
        secret.write_bytes(content)
    text = BASE.replace("PASSWORD_FILE", str(secret))
    for old, new in swap.items():
        text = text.replace(old, new)
    return text


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc_info:
        parse_config(text, "line3.yaml", env={})
    assert SECRET not in str(exc_info.value)
    return [str(i) for i in exc_info.value.issues]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (SECRET.encode() + b"\n", SECRET),
        (SECRET.encode(), SECRET),
        (SECRET.encode() + b"\r\n", SECRET),
        (SECRET.encode() + b"\n\n", SECRET + "\n"),  # one trailing newline only
        (b" spaces kept ", " spaces kept "),
    ],
)
def test_password_file_is_read(tmp_path: Path, content: bytes, expected: str) -> None:
    cfg = parse_config(config(tmp_path, content), env={})
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == expected
    assert cfg.mqtt.password_file == str(tmp_path / "mqtt-password")


def test_the_secret_is_never_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "line3.yaml"
    path.write_text(config(tmp_path))
    with caplog.at_level(logging.DEBUG):
        cfg = load_config(path, env={})
    for shown in (
        repr(cfg),
        str(cfg),
        str(cfg.model_dump()),
        cfg.model_dump_json(),
        repr(cfg.mqtt),
        caplog.text,
        (ROOT / "docs" / "configuration.md").read_text(),
    ):
        assert SECRET not in shown
    # ... nor in the errors of a config that is wrong elsewhere
    assert issues(config(tmp_path, **{"address: 0": "address: -1"})) == [
        "line3.yaml:9:22: devices[0].points[0].address: expected at least 0, found -1"
    ]


def test_a_mistyped_password_is_not_echoed() -> None:
    found = issues(BASE.replace("password_file: PASSWORD_FILE", "password: 12345678"))
    assert found == [
        "line3.yaml:13:3: mqtt.password: expected a string, found a value (not shown: a secret)"
    ]


@pytest.mark.parametrize(
    ("content", "swap", "expected"),
    [
        (
            None,
            {},
            "line3.yaml:13:3: mqtt.password_file: cannot read '{file}': No such file or directory",
        ),
        (b"", {}, "line3.yaml:13:3: mqtt.password_file: '{file}' is empty"),
        (b"\n", {}, "line3.yaml:13:3: mqtt.password_file: '{file}' is empty"),
        (b"\xff\xfe", {}, "line3.yaml:13:3: mqtt.password_file: '{file}' is not UTF-8 text"),
        (
            b"x" * (64 * 1024 + 1),
            {},
            "line3.yaml:13:3: mqtt.password_file: '{file}' is larger than 64 KiB: not a secret?",
        ),
        (
            SECRET.encode(),
            {"  username: line3\n": "  username: line3\n  password: other\n"},
            "line3.yaml:14:3: mqtt.password_file: give password or password_file, not both",
        ),
        (
            SECRET.encode(),
            {"  username: line3\n": ""},
            "line3.yaml:10:1: mqtt: password given without username",
        ),
    ],
)
def test_password_file_problems(
    tmp_path: Path, content: bytes | None, swap: dict[str, str], expected: str
) -> None:
    file = tmp_path / "mqtt-password"
    assert issues(config(tmp_path, content, **swap)) == [expected.format(file=file)]


def test_password_file_must_be_a_regular_file(tmp_path: Path) -> None:
    text = BASE.replace("PASSWORD_FILE", str(tmp_path))
    assert issues(text) == [
        f"line3.yaml:13:3: mqtt.password_file: cannot read '{tmp_path}': not a regular file"
    ]


def test_password_file_path_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "mqtt-password").write_text(SECRET)
    text = BASE.replace("PASSWORD_FILE", "${SECRETS_DIR}/mqtt-password")
    cfg = parse_config(text, env={"SECRETS_DIR": str(tmp_path)})
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == SECRET


class _Tls(BaseModel):
    key_password: SecretStr | None = None
    key_password_file: str | None = None


class _Uplink(BaseModel):
    tls: list[_Tls] = []


def test_any_secret_field_takes_a_file(tmp_path: Path) -> None:
    """The mechanism is generic: a model with a secret ``X`` and an ``X_file`` gets it read."""
    (tmp_path / "key-pass").write_text("k3y\n")
    data, smap, found = load_yaml(
        f"tls:\n  - key_password_file: {tmp_path / 'key-pass'}\n  - key_password: inline\n",
        "up.yaml",
        {},
    )
    read_secret_files(_Uplink, data, (), smap, found)
    assert found == []
    up = _Uplink.model_validate(data)
    assert [t.key_password.get_secret_value() for t in up.tls if t.key_password] == [
        "k3y",
        "inline",
    ]
