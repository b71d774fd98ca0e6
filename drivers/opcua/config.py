"""Config model of an OPC UA server (a PLC) and its points.

Imports nothing of asyncua: a config is validated on machines without the ``opcua`` extra,
which only the driver needs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from drivers.device import DeviceConfig, backoff_issues, duplicate_point_issues
from kernel.names import Issue, Name

_NODE_ID = re.compile(r"^(?:(?:nsu=[^;]+|ns=\d+);)?(?:s=.+|i=\d+|g=[0-9A-Fa-f-]{36}|b=.+)$")
"""``nsu=URI;s=Name``, ``ns=2;i=17``, ``i=2258`` (namespace 0): OPC UA's NodeId text forms."""
_ENDPOINT = re.compile(r"^opc\.tcp://[^/\s:]+(:\d{1,5})?(/\S*)?$")


class SecurityPolicy(StrEnum):
    """OPC UA security policies offered; None has no signing or encryption."""

    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256_Sha256_RsaPss"


class SecurityMode(StrEnum):
    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class OpcUaReport(StrEnum):
    """How a point's values reach the agent."""

    ON_CHANGE = "on_change"  # a monitored item in the device's subscription
    SNAPSHOT = "snapshot"  # not subscribed; read only when a part trigger's snapshot asks


class ValueType(StrEnum):
    """What a point's value must be; another type from the server is a BAD value saying so."""

    ANY = "any"
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    STRING = "string"
    DATETIME = "datetime"  # recorded as ISO 8601 UTC text
    BYTES = "bytes"  # ByteString, recorded as hex text
    ARRAY = "array"  # recorded as JSON text


class DataChangeTrigger(StrEnum):
    """What counts as a change for a monitored item (OPC UA DataChangeTrigger)."""

    STATUS = "status"
    STATUS_VALUE = "status_value"
    STATUS_VALUE_TIMESTAMP = "status_value_timestamp"


class OpcUaPoint(BaseModel):
    """One variable of the server: by NodeId or by browse path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(
        description="Point name, unique on the device; used in records and references.",
        examples=["part_serial", "cycle_complete"],
    )
    node: str | None = Field(
        default=None,
        description="NodeId. Prefer the namespace URI form nsu=URI;s=Name (or ;i=17): namespace "
        "indexes (ns=2) can change when the server restarts. Give node or browse_path.",
        examples=["nsu=urn:plant:press10;s=Station.PartSerial", "ns=3;s=\"DB10\".\"Serial\""],
    )
    browse_path: str | None = Field(
        default=None,
        description="Path of browse names from the Objects folder, '/'-separated; a name is "
        "NAME (in the device's namespace), or nsu=URI;NAME.",
        examples=["ST10/part_serial", "PLC_1/DataBlocksGlobal/DB10/Serial"],
    )
    report: OpcUaReport = Field(
        default=OpcUaReport.ON_CHANGE,
        description="on_change: a monitored item, recorded at every change the server "
        "reports; snapshot: not subscribed, read only when a part trigger's snapshot asks.",
    )
    sampling_interval: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="Seconds between the server's samples of the value; 0: as fast as the "
        "server can. A pulse shorter than this can be missed.",
        examples=[0.0, 0.05, 1.0],
    )
    queue_size: int = Field(
        default=10,
        ge=1,
        le=10000,
        description="Changes the server keeps between two publishes; 1 keeps only the latest "
        "(a short pulse between two publishes is then lost).",
        examples=[10, 100],
    )
    discard_oldest: bool = Field(
        default=True,
        description="When the queue is full: true drops the oldest change, false the newest.",
    )
    deadband_absolute: float | None = Field(
        default=None,
        ge=0,
        description="Report a numeric change only if it exceeds this much (AbsoluteDeadband).",
        examples=[0.1],
    )
    deadband_percent: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Report a change only beyond this percent of the EURange "
        "(PercentDeadband; the node must have an EURange).",
        examples=[1.0],
    )
    trigger: DataChangeTrigger = Field(
        default=DataChangeTrigger.STATUS_VALUE,
        description="What is a change: status, status_value, or status_value_timestamp (a "
        "new source timestamp counts even with the same value).",
    )
    type: ValueType = Field(
        default=ValueType.ANY,
        description="Expected value type; a value of another type is recorded BAD with the "
        "type that came. any: whatever the server sends.",
    )
    unit: str | None = Field(
        default=None, max_length=32, description="Engineering unit.", examples=["kN", "degC"]
    )
    station: Name | None = Field(
        default=None, description="Station this point belongs to; defaults to the device's."
    )

    def issues(self, namespace: str | None) -> list[Issue]:
        out: list[Issue] = []
        if (self.node is None) == (self.browse_path is None):
            out.append(((), "give node or browse_path, one"))
        if self.node is not None and not _NODE_ID.match(self.node):
            out.append(
                (
                    ("node",),
                    f"{self.node!r} is not a NodeId: write nsu=URI;s=Name, nsu=URI;i=17, "
                    "ns=2;s=Name or i=2258",
                )
            )
        if self.browse_path is not None:
            segments = self.browse_path.strip("/").split("/")
            if any(not s for s in segments):
                out.append((("browse_path",), "an empty name between two '/'"))
            elif namespace is None and any(not s.startswith("nsu=") for s in segments):
                out.append(
                    (
                        ("browse_path",),
                        "names without nsu=URI; need the device's namespace (set namespace)",
                    )
                )
        if self.deadband_absolute is not None and self.deadband_percent is not None:
            out.append((("deadband_percent",), "give deadband_absolute or deadband_percent"))
        if self.report is OpcUaReport.SNAPSHOT:
            for key in ("deadband_absolute", "deadband_percent"):
                if getattr(self, key) is not None:
                    out.append(((key,), "a snapshot point is not subscribed: drop it"))
        return out


class OpcUaDevice(DeviceConfig):
    """A PLC or other OPC UA server: subscriptions for changes, one Read for snapshots."""

    type: Literal["opcua"] = Field(description="Driver: opcua.", examples=["opcua"])
    endpoint: str = Field(
        description="Server endpoint URL: opc.tcp://host:port[/path].",
        examples=["opc.tcp://192.168.10.30:4840", "opc.tcp://plc-st10.line3.local:4840/"],
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace URI of browse_path names written without nsu=.",
        examples=["urn:plant:press10"],
    )
    security_policy: SecurityPolicy = Field(
        default=SecurityPolicy.NONE,
        description="None, Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss. "
        "With a policy the agent connects only with it, never falling back to None.",
    )
    security_mode: SecurityMode = Field(
        default=SecurityMode.NONE,
        description="None (with policy None), Sign or SignAndEncrypt.",
    )
    pki: str = Field(
        default="data/pki",
        description="Folder of the agent's certificate (own/, created on first start), the "
        "server certificates it trusts (trusted/) and those it refused (rejected/: move one "
        "to trusted/ to trust it). Relative to the config file's folder.",
    )
    application_uri: str = Field(
        default="urn:edge-agent:client",
        description="The agent's ApplicationUri, written into its certificate.",
    )
    username: str | None = Field(
        default=None, description="User identity; without it the session is anonymous."
    )
    password: SecretStr | None = Field(
        default=None, description="Password of username (or password_file)."
    )
    password_file: str | None = Field(
        default=None, description="File holding the password (one trailing newline dropped)."
    )
    user_certificate: str | None = Field(
        default=None,
        description="User identity by certificate (X509): its file, DER or PEM; instead of "
        "username. Needs user_private_key and a security policy.",
        examples=["/etc/edge-agent/line3-user.der"],
    )
    user_private_key: str | None = Field(
        default=None,
        description="PEM file of the user certificate's private key.",
        examples=["/etc/edge-agent/line3-user.pem"],
    )
    timeout: float = Field(
        default=5.0, gt=0, le=120, description="Seconds per service request."
    )
    session_timeout: float = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="Seconds the server keeps the session while the connection is lost.",
    )
    publishing_interval: float = Field(
        default=0.1,
        gt=0,
        le=3600,
        description="Seconds between the server's notification messages.",
        examples=[0.05, 0.5],
    )
    keepalive_count: int = Field(
        default=10,
        ge=1,
        le=10000,
        description="Publishing intervals without changes after which the server sends a "
        "keep-alive; silence beyond that marks the subscription dead within seconds.",
    )
    lifetime_count: int = Field(
        default=30,
        ge=3,
        le=100000,
        description="Publishing intervals without a publish request after which the server "
        "drops the subscription; at least 3 x keepalive_count (OPC UA Part 4).",
    )
    retry_interval: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Seconds between attempts to create monitored items that failed (a node "
        "missing or refused); the other points are unaffected meanwhile.",
    )
    backoff_initial: float = Field(
        default=0.5, gt=0, le=60, description="Reconnect backoff base.", examples=[1.0]
    )
    backoff_max: float = Field(
        default=30.0, gt=0, le=3600, description="Reconnect backoff cap.", examples=[60.0]
    )
    points: list[OpcUaPoint] = Field(
        min_length=1,
        description="The server's variables this device reads.",
        examples=[
            [
                {"name": "part_serial", "node": "nsu=urn:plant:press10;s=ST10.part_serial"},
                {"name": "force", "browse_path": "ST10/force", "unit": "kN"},
            ]
        ],
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, url: str) -> str:
        if not _ENDPOINT.match(url):
            raise ValueError(f"expected opc.tcp://host:port[/path], found {url!r}")
        return url

    def issues(self) -> list[Issue]:
        out: list[Issue] = duplicate_point_issues(self.points)
        for i, p in enumerate(self.points):
            out.extend((("points", i, *path), msg) for path, msg in p.issues(self.namespace))
        none_policy = self.security_policy is SecurityPolicy.NONE
        if none_policy != (self.security_mode is SecurityMode.NONE):
            out.append(
                (
                    ("security_mode",),
                    "security_mode None goes with security_policy None, and Sign or "
                    "SignAndEncrypt with a policy",
                )
            )
        if self.password is not None and self.username is None:
            out.append((("password",), "a password needs a username"))
        if self.username is not None and self.password is None and self.password_file is None:
            out.append((("username",), "give password or password_file"))
        if (self.user_certificate is None) != (self.user_private_key is None):
            missing = "user_private_key" if self.user_private_key is None else "user_certificate"
            out.append(((missing,), "a user certificate needs both user_certificate and "
                         "user_private_key"))  # fmt: skip
        if self.user_certificate is not None and self.username is not None:
            out.append((("user_certificate",), "give username or user_certificate, not both"))
        if self.user_certificate is not None and none_policy:
            out.append(
                (
                    ("user_certificate",),
                    "a user certificate is signed over a secure channel: set security_policy",
                )
            )
        if self.lifetime_count < 3 * self.keepalive_count:
            out.append(
                (
                    ("lifetime_count",),
                    f"must be at least 3 x keepalive_count ({3 * self.keepalive_count})",
                )
            )
        out.extend(backoff_issues(self.backoff_initial, self.backoff_max))
        return out

    def trigger_issue(self, point: str) -> str | None:
        if any(p.name == point and p.report is OpcUaReport.SNAPSHOT for p in self.points):
            return (
                f"{point!r} has report: snapshot, so it is never read on its own and cannot "
                "trigger a part: give it report: on_change"
            )
        return None

    def named_points(self) -> list[OpcUaPoint]:
        return self.points

    def point(self, name: str) -> OpcUaPoint | None:
        return next((p for p in self.points if p.name == name), None)

    def snapshot_issue(self, points: Sequence[str]) -> tuple[tuple[str | int, ...], str] | None:
        return None  # one Read service call reads any set of nodes together

    def write_issue(self, point: str) -> str | None:
        p = self.point(point)
        if p is not None and p.type in (ValueType.ARRAY, ValueType.DATETIME, ValueType.BYTES):
            return f"type {p.type.value} is not written; the handshake writes a bool or a number"
        return None

    def request_timeout(self) -> float:
        return self.timeout
