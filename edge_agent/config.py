"""The agent's YAML config: typed models, and a loader that reports every problem at once.

Each driver's model lives beside the driver (``drivers/<kind>/config.py``); this module
assembles them into one discriminated union on ``type:`` and adds what spans devices:
identity, stations and their context rules, buffer and broker.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from drivers.base import Issue
from drivers.modbus.config import ModbusTcpDevice, Name
from edge_agent.errors import ConfigError, ConfigIssue
from edge_agent.scan import ScanRule
from edge_agent.yamlsrc import SourceMap, load_yaml
from sync.config import MqttConfig

DeviceConfig = Annotated[ModbusTcpDevice, Field(discriminator="type")]
"""Every device kind, told apart by ``type:``. Later drivers join this union."""

WELL_KNOWN_CONTEXT = ("serial", "lot", "work_order", "product", "operator")


class AgentIdentity(BaseModel):
    """Who this agent is. Topics and record keys carry it, so it must be unique per plant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: Name = Field(description="Plant or site code, e.g. 'plant-lyon'.")
    line: Name = Field(description="Production line, e.g. 'line3'.")
    id: Name = Field(description="This agent's id, unique among the plant's agents.")


class BufferConfig(BaseModel):
    """The local journal every record lands in before it is sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(default="data/buffer.db", description="SQLite file (relative to the CWD).")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="FULL: every commit survives a power cut. NORMAL: faster, survives crashes "
        "of the agent but may lose the last commits on power loss.",
    )


class ContextSource(BaseModel):
    """A station context key taken from a device point (e.g. the serial from a PLC string)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name = Field(description="Device name.")
    point: Name = Field(description="Point name on that device.")


class ScanSource(BaseModel):
    """Where a station's scans come from: every point of an identification device, or one
    point (e.g. a PLC string register holding the last code its camera read)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name = Field(description="Device name.")
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

    device: Name = Field(description="Device name.")
    point: Name = Field(description="Point name on that device (polled).")
    edge: Literal["rising", "falling", "change"] = Field(
        default="rising",
        description="rising: false -> true; falling: true -> false; change: any new value.",
    )


class SnapshotConfig(BaseModel):
    """Points read together, in one request, when the trigger fires."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name = Field(description="Device the snapshot is read from.")
    points: list[Name] = Field(
        min_length=1,
        description="Points of that device; they must fit in one Modbus request (one table, "
        "within max_registers), which is what makes the snapshot consistent.",
    )


class Limits(BaseModel):
    """Acceptance limits of one snapshot value (inclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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

    point: Name = Field(description="Snapshot point holding the result.")
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

    taken: Name = Field(description="Writable point on the trigger's device: 'data taken'.")
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

    name: Name = Field(description="Station name, e.g. 'ST10'; appears in topics and records.")
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
        description="Unix socket path (relative to the CWD); only local users with access to "
        "the file can use it.",
    )


class AgentConfig(BaseModel):
    """The whole config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: AgentIdentity = Field(description="Identity: site, line and agent id.")
    stations: list[StationConfig] = Field(
        min_length=1, description="Stations and the rules that set their context."
    )
    devices: list[DeviceConfig] = Field(
        min_length=1, description="Devices, each with a `type:` naming its driver."
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

    def issues(self) -> list[Issue]:
        """Checks that span sections: unique names, and every reference resolves."""
        out: list[Issue] = []
        stations: dict[str, int] = {}
        for i, st in enumerate(self.stations):
            if st.name in stations:
                out.append(((("stations", i, "name")), f"duplicate station {st.name!r}"))
            stations.setdefault(st.name, i)
        devices: dict[str, int] = {}
        for i, dev in enumerate(self.devices):
            out.extend((("devices", i, *p), m) for p, m in dev.issues())
            if dev.name in devices:
                out.append((("devices", i, "name"), f"duplicate device {dev.name!r}"))
            devices.setdefault(dev.name, i)
            if dev.station is not None and dev.station not in stations:
                out.append((("devices", i, "station"), _unknown("station", dev.station, stations)))
            for j, p in enumerate(dev.points):
                if p.station is not None and p.station not in stations:
                    out.append(
                        (
                            ("devices", i, "points", j, "station"),
                            _unknown("station", p.station, stations),
                        )
                    )
                elif dev.point_station(p) is None and len(self.stations) > 1:
                    out.append(
                        (
                            ("devices", i, "points", j),
                            "belongs to no station: set station on the device or the point "
                            "(only a single-station file may leave it out)",
                        )
                    )
        for i, st in enumerate(self.stations):
            out.extend(self._station_issues(st, ("stations", i), devices))
        return out

    def device(self, name: str) -> ModbusTcpDevice | None:
        for dev in self.devices:
            if dev.name == name:
                return dev
        return None

    def _point_issue(
        self, path: tuple[str | int, ...], device: str, point: str | None, devices: dict[str, int]
    ) -> list[Issue]:
        """A (device, point) reference that does not resolve, as an issue at ``path``."""
        if device not in devices:
            return [((*path, "device"), _unknown("device", device, devices))]
        if point is None:
            return []
        names = {p.name for p in self.devices[devices[device]].points}
        if point not in names:
            return [((*path, "point"), _unknown(f"point of {device!r}", point, names))]
        return []

    def _station_issues(
        self, st: StationConfig, path: tuple[str | int, ...], devices: dict[str, int]
    ) -> list[Issue]:
        out: list[Issue] = []
        for key, src in st.context.items():
            if src is not None:
                out.extend(
                    self._point_issue((*path, "context", key), src.device, src.point, devices)
                )
        if st.scans is not None:
            for j, scan_src in enumerate(st.scans.sources):
                out.extend(
                    self._point_issue(
                        (*path, "scans", "sources", j), scan_src.device, scan_src.point, devices
                    )
                )
            for j, rule in enumerate(st.scans.rules):
                out.extend(((*path, "scans", "rules", j, *p), m) for p, m in rule.issues())
        if st.part is not None:
            out.extend(self._part_issues(st.part, (*path, "part"), devices))
        return out

    def _part_issues(
        self, part: PartConfig, path: tuple[str | int, ...], devices: dict[str, int]
    ) -> list[Issue]:
        from drivers.modbus.plan import snapshot_requests  # the planner imports the models

        trig, snap = part.trigger, part.snapshot
        out = self._point_issue((*path, "trigger"), trig.device, trig.point, devices)
        snap_issues = self._point_issue((*path, "snapshot"), snap.device, None, devices)
        out.extend(snap_issues)
        if snap_issues:
            return out
        dev = self.devices[devices[snap.device]]
        names = {p.name for p in dev.points}
        bad = False
        for j, name in enumerate(snap.points):
            if name not in names:
                out.append(
                    (
                        (*path, "snapshot", "points", j),
                        _unknown(f"point of {dev.name!r}", name, names),
                    )
                )
                bad = True
        if not bad:
            requests = snapshot_requests(dev, snap.points)
            if len(requests) > 1:
                spans = ", ".join(f"{r.table.value} {r.address}+{r.count}" for r in requests)
                out.append(
                    (
                        (*path, "snapshot", "points"),
                        f"needs {len(requests)} requests ({spans}); a consistent snapshot is "
                        "one request: keep its points in one table within max_registers",
                    )
                )
        in_snapshot = set(snap.points)
        refs: list[tuple[tuple[str | int, ...], str]] = []
        if part.counter is not None:
            refs.append(((*path, "counter"), part.counter))
        if part.result is not None:
            refs.append(((*path, "result", "point"), part.result.point))
        if part.cycle_time is not None:
            refs.append(((*path, "cycle_time"), part.cycle_time))
        refs.extend(((*path, "limits", name), name) for name in part.limits)
        for ref_path, name in refs:
            if name not in in_snapshot:
                out.append(
                    (
                        ref_path,
                        f"{name!r} is not a snapshot point (snapshot.points: "
                        f"{', '.join(snap.points)})",
                    )
                )
        for name, lim in part.limits.items():
            if lim.min is None and lim.max is None:
                out.append(((*path, "limits", name), "give min, max or both"))
            elif lim.min is not None and lim.max is not None and lim.min > lim.max:
                out.append(
                    ((*path, "limits", name, "min"), f"min {lim.min} is above max {lim.max}")
                )
        if part.handshake is not None:
            if trig.edge != "rising":
                out.append(
                    ((*path, "trigger", "edge"), "a handshake trigger is 'data ready': use rising")
                )
            trig_dev = self.device(trig.device)
            if trig_dev is not None:
                taken = next((p for p in trig_dev.points if p.name == part.handshake.taken), None)
                if taken is None:
                    out.append(
                        (
                            (*path, "handshake", "taken"),
                            _unknown(
                                f"point of {trig.device!r}",
                                part.handshake.taken,
                                {p.name for p in trig_dev.points},
                            ),
                        )
                    )
                else:
                    why = taken.write_issue()
                    if why is not None:
                        out.append(((*path, "handshake", "taken"), f"cannot be written: {why}"))
        return out

    def station_of(self, device: ModbusTcpDevice, point_name: str) -> str:
        """The station a point's readings are bound to (validated to exist)."""
        for p in device.points:
            if p.name == point_name:
                st = device.point_station(p)
                if st is not None:
                    return st
        return self.stations[0].name


def _unknown(what: str, name: str, known: Any) -> str:
    msg = f"unknown {what} {name!r}"
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    elif known:
        msg += f" (known: {', '.join(sorted(known))})"
    return msg


# ---- loading ---------------------------------------------------------------------------


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a config file; raise ConfigError listing every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(str(p), None, None, "", f"cannot read: {exc}")]) from exc
    return parse_config(text, str(p))


def parse_config(text: str, file: str = "<config>") -> AgentConfig:
    """Validate config text; raise ConfigError listing every problem with file:line."""
    data, smap, issues = load_yaml(text, file)
    if data is None:
        raise ConfigError(issues)
    if not isinstance(data, dict):
        issues.append(
            smap.issue((), f"expected a mapping of sections, found {type(data).__name__}")
        )
        raise ConfigError(issues)
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as exc:
        issues.extend(_pydantic_issue(err, data, smap) for err in exc.errors())
        raise ConfigError(_sorted(issues)) from None
    issues.extend(smap.issue(path, msg) for path, msg in cfg.issues())
    if issues:
        raise ConfigError(_sorted(issues))
    return cfg


def _sorted(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(issues, key=lambda i: (i.line or 0, i.column or 0, i.path))


def _pydantic_issue(err: ErrorDetails, data: Any, smap: SourceMap) -> ConfigIssue:
    path = _data_path(err["loc"], data)
    kind = err["type"]
    found = err.get("input")
    if kind == "extra_forbidden":
        key = str(path[-1])
        close = difflib.get_close_matches(key, _allowed_keys(path), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return smap.issue(path, f"unknown key {key!r}{hint}")
    if kind == "missing":
        return smap.issue(path, "missing required key")
    if kind == "union_tag_invalid":
        expected = err.get("ctx", {}).get("expected_tags")
        tag = found.get("type") if isinstance(found, dict) else found
        return smap.issue(
            (*path, "type"), f"unknown device type {tag!r}; expected one of {expected}"
        )
    if kind == "union_tag_not_found":
        return smap.issue(path, "missing required key 'type' (which driver runs this device)")
    msg = err["msg"]
    if not isinstance(found, dict | list):
        msg += f" (found {found!r})"
    return smap.issue(path, msg)


def _data_path(loc: tuple[int | str, ...], data: Any) -> tuple[str | int, ...]:
    """Map pydantic's loc onto the file's keys: drop discriminator tags (the ``modbus_tcp``
    in ``devices.0.modbus_tcp.points``), which are not keys in the file."""
    path: list[str | int] = []
    node: Any = data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue
        path.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(path)


def _allowed_keys(path: tuple[str | int, ...]) -> list[str]:
    """Field names of the model that holds ``path[-1]``, for "did you mean"."""
    model: Any = AgentConfig
    for part in path[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return []
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model inside an annotation like ``list[X]``, ``X | None`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
