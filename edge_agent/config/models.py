"""The agent's config file as typed models: identity, stations and their rules, journal,
broker, control socket, templates.

Each device kind's model lives beside its driver (``drivers/<kind>/config.py``); the device
list is validated against the union of every registered kind (:func:`agent_model`), so this
module names no kind of device.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from buffer.config import BufferConfig
from drivers import registry
from drivers.device import DeviceConfig
from edge_agent.config.refs import with_station_device
from edge_agent.gate.config import GateConfig
from edge_agent.scan import ScanRule
from kernel.names import Issue, Name
from kernel.net import parse_listen
from sync.config import MqttConfig

WELL_KNOWN_CONTEXT = ("serial", "lot", "work_order", "product", "operator")


class AgentIdentity(BaseModel):
    """Who this agent is (topics and record keys carry it, so it must be unique per plant),
    and how often it sums up its work in the log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: Name = Field(
        description="Plant or site code, e.g. 'plant-lyon'.", examples=["plant-lyon"]
    )
    line: Name = Field(description="Production line, e.g. 'line3'.", examples=["line3"])
    id: Name = Field(
        description="This agent's id, unique among the plant's agents.", examples=["line3-pc1"]
    )
    summary_interval: float = Field(
        default=300.0,
        ge=0,
        description="Seconds between two summary lines in the log (parts, NOK, readings, "
        "scans, journal depth, oldest unconfirmed record, uplink); 0: none.",
        examples=[300, 3600, 0],
    )


class ContextSource(BaseModel):
    """A station context key taken from a device point (e.g. the serial from a PLC string)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name = Field(description="Device name.", examples=["press10"])
    point: Name = Field(description="Point name on that device.", examples=["part_serial"])


class ScanSource(BaseModel):
    """Where a station's scans come from: every point of an identification device, or one
    point (e.g. a PLC string register holding the last code its camera read)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name = Field(description="Device name.", examples=["press10"])
    point: Name | None = Field(default=None, description="One point only; default: every point.")


class ScanConfig(BaseModel):
    """How a station classifies scans and what they set or consume."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[ScanSource] = Field(
        min_length=1, description="Devices (or points) whose values are scans for this station."
    )
    rules: list[ScanRule] = Field(
        default_factory=list,
        description="Tried in order; the first that matches classifies the scan. A scan no "
        "rule matches is recorded as unclassified.",
    )


class TriggerConfig(BaseModel):
    """The PLC point whose edge means "a part is done", e.g. a cycle-complete bit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name = Field(description="Device name.", examples=["press10"])
    point: Name = Field(
        description="Point name on that device (polled).", examples=["cycle_complete", "data_ready"]
    )
    edge: Literal["rising", "falling", "change"] = Field(
        default="rising",
        description="rising: false -> true; falling: true -> false; change: any new value.",
    )


class SnapshotAlso(BaseModel):
    """Another device read at the same trigger, beside the snapshot (a scale's weight)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name = Field(description="Device read at the trigger too.", examples=["scale10"])
    points: list[Name] = Field(
        min_length=1,
        examples=[["weight"]],
        description="Its points, read together as that device allows (a scale: its weight).",
    )


class SnapshotConfig(BaseModel):
    """Points read together, in one request, when the trigger fires."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name = Field(description="Device the snapshot is read from.", examples=["press10"])
    points: list[Name] = Field(
        min_length=1,
        examples=[["cycle_counter", "part_serial", "final_force", "result"]],
        description="Points of that device, read together as one consistent snapshot; the "
        "device must be able to (Modbus: one request, so one table within max_registers).",
    )
    also: list[SnapshotAlso] = Field(
        default_factory=list,
        description="Other devices read at the same trigger, at the same time, each in its own "
        "request (a scale's stable weight beside the PLC's values). Their points join the part "
        "record; one that cannot be read makes only its own points bad.",
    )


class Limits(BaseModel):
    """Acceptance limits of one snapshot value (inclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min: float | None = Field(default=None, description="Lowest accepted value.")
    max: float | None = Field(default=None, description="Highest accepted value.")


ResultValue = bool | int | str


def _ok_values() -> list[ResultValue]:
    return [1]


def _nok_values() -> list[ResultValue]:
    return [2]


class ResultConfig(BaseModel):
    """The part's OK/NOK as the PLC states it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    point: Name = Field(description="Snapshot point holding the result.", examples=["result"])
    ok: list[ResultValue] = Field(
        default_factory=_ok_values, description="Values that mean OK.", examples=[[1], [True]]
    )
    nok: list[ResultValue] = Field(
        default_factory=_nok_values, description="Values that mean NOK.", examples=[[2], [False]]
    )


class HandshakeConfig(BaseModel):
    """PLC handshake: the trigger point is "data ready"; the agent writes ``taken`` only once
    the part record is committed, and resets it when the PLC drops "data ready"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    taken: Name = Field(
        description="Writable point on the trigger's device: 'data taken'.", examples=["data_taken"]
    )
    reset: bool = Field(
        default=True, description="Write taken=false once the PLC has dropped data ready."
    )


class PartConfig(BaseModel):
    """One part record per cycle: a trigger, a snapshot, and how to judge the result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trigger: TriggerConfig = Field(description="What says a part is done.")
    snapshot: SnapshotConfig = Field(description="The values that make the part record.")
    counter: Name | None = Field(
        default=None,
        description="Snapshot point with the PLC's part counter: a jump records a gap (missed "
        "parts), an unchanged value a trigger seen twice for one part.",
    )
    result: ResultConfig | None = Field(
        default=None, description="OK/NOK from a PLC point (combined with limits if both)."
    )
    limits: dict[Name, Limits] = Field(
        default_factory=dict, description="Snapshot point -> limits; a value outside is NOK."
    )
    cycle_time: Name | None = Field(
        default=None,
        description="Snapshot point with the PLC's cycle time (unit ms or s); default: the time "
        "between two triggers.",
    )
    handshake: HandshakeConfig | None = Field(
        default=None, description="Optional data ready / data taken handshake."
    )


class StationConfig(BaseModel):
    """A station: the unit whose context (serial, lot, ...) readings are bound to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(
        description="Station name, e.g. 'ST10'; appears in topics and records.", examples=["ST10"]
    )
    device: Name | None = Field(
        default=None,
        description="Default device of the station's references: context.<key>, "
        "scans.sources[], part.trigger and part.snapshot may omit `device` to mean this one.",
    )
    context: dict[Name, ContextSource | None] = Field(
        default_factory=dict,
        description="Context key -> source point, or empty for a key set only by scans or by "
        "`edge-agent context set`. Well-known keys: serial, lot, work_order, product, operator; "
        "any other name is an integrator-defined key.",
    )
    scans: ScanConfig | None = Field(
        default=None, description="Scans that set context keys or record consumption."
    )
    part: PartConfig | None = Field(
        default=None, description="Triggered part records (one per cycle)."
    )
    gate: GateConfig | None = Field(
        default=None,
        description="The gate: scans of blocked lots, serials or products, and serials that "
        "skipped a required station, are refused (docs/gate.md).",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_device(cls, data: Any) -> Any:
        return with_station_device(data)

    def context_keys(self) -> tuple[str, ...]:
        """Every context key of the station: configured ones, then those only scans set."""
        keys = dict.fromkeys(self.context)
        if self.scans is not None:
            for rule in self.scans.rules:
                keys.update(dict.fromkeys(rule.set))
        return tuple(keys)


class ControlConfig(BaseModel):
    """The local control socket (``edge-agent context set``, ``edge-agent reload``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    socket: str = Field(
        default="data/control.sock",
        description="Unix socket path (relative to the config file's folder); only local users "
        "with access to the file can use it.",
    )


class MetricsConfig(BaseModel):
    """The Prometheus endpoint (docs/metrics.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=False,
        description="Serve GET /metrics. Enable it on a line PC; off by default so that several "
        "agents on one machine (and test runs) do not compete for one port.",
    )
    listen: str = Field(
        default="127.0.0.1:9464",
        description="HOST:PORT to listen on ([::1]:9464 for IPv6). The default answers local "
        "scrapers only; 0.0.0.0:9464 lets a central Prometheus scrape the PC directly.",
        examples=["127.0.0.1:9464", "0.0.0.0:9464"],
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, text: str) -> str:
        parse_listen(text)  # its ValueError names what is wrong
        return text

    def address(self) -> tuple[str, int]:
        """(host, port) of ``listen``."""
        return parse_listen(self.listen)


class Templates(BaseModel):
    """Partial device and station entries, reused by `template: <name>` in an entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: dict[Name, dict[str, Any]] = Field(
        default_factory=dict,
        description="Template name -> any device keys (type, port, timeout, points, ...).",
    )
    stations: dict[Name, dict[str, Any]] = Field(
        default_factory=dict,
        description="Template name -> any station keys (device, context, scans, part, ...).",
    )


DEVICES_DESCRIPTION = "Devices, each with a `type:` naming its driver."


class AgentConfig(BaseModel):
    """The whole config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: AgentIdentity = Field(description="Identity: site, line and agent id.")
    stations: list[StationConfig] = Field(
        min_length=1, description="Stations and the rules that set their context."
    )
    devices: list[DeviceConfig] = Field(
        min_length=1, description=DEVICES_DESCRIPTION
    )
    buffer: BufferConfig = Field(
        default_factory=BufferConfig, description="The local SQLite journal."
    )
    mqtt: MqttConfig = Field(
        default_factory=MqttConfig, description="The broker the journal is forwarded to."
    )
    control: ControlConfig = Field(
        default_factory=ControlConfig, description="Local control socket."
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig,
        description="Prometheus endpoint: per device, journal, uplink and station metrics.",
    )
    templates: Templates = Field(
        default_factory=Templates,
        description="Reuse: a device or station entry with `template: NAME` takes every key of "
        "templates.devices.NAME (or templates.stations.NAME), then its own keys. A key given in "
        "the entry replaces the template's whole value: `points:` in an entry replaces the "
        "template's list, it does not add to it.",
    )

    def issues(self) -> list[Issue]:
        """Checks that span sections: unique names, and every reference resolves."""
        from edge_agent.config.checks import config_issues  # the checks read these models

        return config_issues(self)

    def device(self, name: str) -> DeviceConfig | None:
        for dev in self.devices:
            if dev.name == name:
                return dev
        return None

    def station_of(self, device: DeviceConfig, point_name: str) -> str:
        """The station a point's readings are bound to (validated to exist)."""
        return device.point_station(point_name) or self.stations[0].name

    def device_stations(self, device: DeviceConfig) -> list[str]:
        """The stations a device's points are bound to, in config order."""
        points = device.point_names() or [""]  # no points: the device's own station
        return list(dict.fromkeys(self.station_of(device, p) for p in points))


_built: dict[int, type[AgentConfig]] = {}


def agent_model() -> type[AgentConfig]:
    """``AgentConfig`` whose ``devices`` validate against every registered kind, told apart
    by ``type:`` (a discriminated union). Built once per set of kinds."""
    generation = registry.generation()
    model = _built.get(generation)
    if model is None:
        configs = tuple(kind.config for kind in registry.kinds())
        union: Any = Union[configs] if len(configs) > 1 else configs[0]  # noqa: UP007
        device = Annotated[union, Field(discriminator="type")]
        model = create_model(
            "AgentConfig",
            __base__=AgentConfig,
            __module__=AgentConfig.__module__,
            __doc__=AgentConfig.__doc__,
            devices=(list[device], Field(min_length=1, description=DEVICES_DESCRIPTION)),
        )
        _built.clear()
        _built[generation] = model
    return model
