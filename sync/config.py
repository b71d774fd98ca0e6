"""Config model of the MQTT uplink (lives beside ``sync/mqtt.py``, which it configures).

Everything that turns this model into a paho client lives in one place
(``sync.mqtt._new_client``).
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


class MqttTls(BaseModel):
    """TLS to the broker; with ``cert_file`` and ``key_file`` the agent also proves who it is
    (mutual TLS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: str | None = Field(
        default=None,
        min_length=1,
        description="PEM file of the CA(s) that signed the broker's certificate; default: the "
        "operating system's trusted CAs.",
        examples=["/etc/edge-agent/plant-ca.pem"],
    )
    cert_file: str | None = Field(
        default=None,
        min_length=1,
        description="PEM client certificate (chain) for mutual TLS; needs key_file.",
        examples=["/etc/edge-agent/line3-pc1.crt"],
    )
    key_file: str | None = Field(
        default=None,
        min_length=1,
        description="PEM private key of cert_file.",
        examples=["/etc/edge-agent/line3-pc1.key"],
    )
    key_password: SecretStr | None = Field(
        default=None,
        description="Password of an encrypted key_file.",
        examples=["${MQTT_KEY_PASSWORD}"],
    )
    key_password_file: str | None = Field(
        default=None,
        min_length=1,
        description="File holding key_password instead, read when the config is loaded.",
        examples=["/run/secrets/mqtt-key"],
    )
    verify_hostname: bool = Field(
        default=True,
        description="Check that the broker's certificate names mqtt.host. Turn off only for "
        "brokers reached by an address their certificate does not list.",
        examples=[True],
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        if self.key_password is not None and self.key_file is None:
            raise ValueError("key_password given without key_file")
        return self


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
        "config is loaded; one trailing newline is dropped. Relative to the config file's "
        "folder. Not with password.",
        examples=["/run/secrets/mqtt"],
    )

    protocol: Literal["3.1.1", "5"] = Field(
        default="3.1.1",
        description="MQTT protocol version. With 5 a message the broker refuses (e.g. not "
        "authorized) is reported by its reason code and kept for a later attempt.",
        examples=["5"],
    )
    tls: MqttTls | None = Field(
        default=None,
        description="Connect with TLS (usually port 8883); absent: plain TCP.",
        examples=[{"ca_file": "/etc/edge-agent/plant-ca.pem"}],
    )
    order: Literal["in_order", "live_first"] = Field(
        default="in_order",
        description="in_order: the backlog after an outage goes first, then live data, all in "
        "seq order. live_first: new records go out at once and the backlog is drained beside "
        "them at drain_rate (receivers then order by seq).",
        examples=["live_first"],
    )
    drain_rate: float = Field(
        default=5000.0,
        gt=0,
        le=10_000_000,
        description="Records per second of backlog sent in live_first order.",
        examples=[2000.0],
    )
    confirm: Literal["puback", "store"] = Field(
        default="puback",
        description="When journal rows are released: puback, once the broker acknowledged "
        "them; store, once the trace store confirmed it committed them (end-to-end; see "
        "docs/wire-format.md).",
        examples=["store"],
    )
    confirm_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds without progress of the store's confirmation, while records are "
        "unconfirmed, after which the agent sends them again (confirm: store). Doubles after "
        "each resend that brought no progress, up to 16 times this.",
        examples=[60.0],
    )
    status: bool = Field(
        default=True,
        description="Publish a retained online/offline status (with a Last Will) to "
        "<prefix>/<site>/<line>/<agent>/status.",
        examples=[True],
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
