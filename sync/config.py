"""Config model of the MQTT uplink (lives beside ``sync/mqtt.py``, which it configures).

Only plain TCP and MQTT 3.1.1 for now. TLS and MQTT 5 come later as new optional fields
(e.g. ``tls: MqttTls | None = None``, ``protocol: Literal["3.1.1", "5"]``); everything that
turns this model into a paho client lives in one place (``sync.mqtt._new_client``), so adding
them touches that function and this model only.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

MQTT_MAX_PACKET = 268_435_455  # largest remaining length MQTT 3.1.1 can encode


def invalid_topic_level(level: str) -> str | None:
    """Why ``level`` cannot be one level of a topic we publish to, or None if it can."""
    if not level:
        return "empty topic level"
    if "/" in level:
        return f"{level!r} contains '/'"
    if any(c in level for c in "+#\0"):
        return f"{level!r} contains an MQTT wildcard or NUL"
    return None


class MqttConfig(BaseModel):
    """Where and how the agent publishes its journal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(
        default="localhost",
        min_length=1,
        description="Broker host name or IP.",
        examples=["192.168.10.5", "mqtt.plant-lyon.local"],
    )
    port: int = Field(default=1883, ge=1, le=65535, description="Broker TCP port.", examples=[1883])
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="MQTT client id; defaults to 'edge-agent-<agent id>'. Must be unique per "
        "broker: a second client with the same id disconnects the first.",
        examples=["edge-agent-line3-pc1"],
    )
    topic_prefix: str = Field(
        default="trace",
        min_length=1,
        max_length=128,
        description="First topic level(s); records go to <prefix>/<site>/<line>/<station>/records.",
        examples=["trace", "plant-lyon/trace"],
    )
    keepalive: int = Field(
        default=30,
        ge=5,
        le=65535,
        description="Seconds between MQTT pings when idle.",
        examples=[60],
    )
    connect_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds allowed for the TCP connect and again for the broker's CONNACK.",
        examples=[5.0],
    )
    qos: Literal[1] = Field(
        default=1,
        description="MQTT QoS of record messages. Only 1 (at least once) is supported: rows "
        "leave the journal when the broker's PUBACK arrives.",
        examples=[1],
    )
    max_inflight: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Messages published but not yet acknowledged (PUBACK) at any time.",
        examples=[32],
    )
    batch_max_records: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Records read from the journal per batch.",
        examples=[500],
    )
    batch_max_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        le=MQTT_MAX_PACKET // 2,
        description="Bytes of record bodies read per batch (one oversized record still goes "
        "alone). Bounds the size of one message.",
        examples=[1_048_576],
    )
    backoff_initial: float = Field(
        default=0.5,
        gt=0,
        le=3600,
        description="Seconds; reconnect waits uniform(0, min(backoff_max, "
        "backoff_initial * 2**attempt)).",
        examples=[1.0],
    )
    backoff_max: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds; upper bound of one reconnect wait.",
        examples=[60.0],
    )
    username: str | None = Field(
        default=None,
        min_length=1,
        description="User name for broker authentication.",
        examples=["line3-pc1"],
    )
    password: SecretStr | None = Field(
        default=None,
        description="Password for broker authentication (needs username).",
        examples=["${MQTT_PASSWORD}"],
    )
    password_file: str | None = Field(
        default=None,
        min_length=1,
        description="File holding the password instead (e.g. /run/secrets/mqtt), read when the "
        "config is loaded; one trailing newline is dropped. Relative to the CWD. Not with "
        "password.",
        examples=["/run/secrets/mqtt"],
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        problems: list[str] = []
        if self.backoff_max < self.backoff_initial:
            problems.append("backoff_max must be >= backoff_initial")
        if self.password is not None and self.username is None:
            problems.append("password given without username")
        if any(invalid_topic_level(level) for level in self.topic_prefix.split("/")):
            problems.append("topic_prefix: levels must be non-empty and free of '+', '#' and NUL")
        if problems:
            raise ValueError("; ".join(problems))
        return self
