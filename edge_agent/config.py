"""The agent's YAML config: typed models, and a loader that reports every problem at once.

Each driver's model lives beside the driver (``drivers/<kind>/config.py``); this module
assembles them into one discriminated union on ``type:`` and adds what spans devices:
identity, stations and their context rules, buffer and broker.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import types
import typing
from collections.abc import Iterator, Mapping, Set
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_core import ErrorDetails

from drivers.base import Issue
from drivers.modbus.config import ModbusTcpDevice, Name, Report
from edge_agent import yamlsrc
from edge_agent.errors import ConfigError, ConfigIssue
from edge_agent.scan import ScanRule
from edge_agent.yamlsrc import SourceMap, decode, load_yaml
from sync.config import MqttConfig

DeviceConfig = Annotated[ModbusTcpDevice, Field(discriminator="type")]
"""Every device kind, told apart by ``type:``. Later drivers join this union."""

WELL_KNOWN_CONTEXT = ("serial", "lot", "work_order", "product", "operator")


class AgentIdentity(BaseModel):
    """Who this agent is. Topics and record keys carry it, so it must be unique per plant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: Name = Field(
        description="Plant or site code, e.g. 'plant-lyon'.", examples=["plant-lyon"]
    )
    line: Name = Field(description="Production line, e.g. 'line3'.", examples=["line3"])
    id: Name = Field(
        description="This agent's id, unique among the plant's agents.", examples=["line3-pc1"]
    )


GIB = 1 << 30
MIB = 1 << 20


class TelemetryRetention(BaseModel):
    """Bounds on continuous telemetry (``readings`` records) in the journal. Past any bound the
    oldest telemetry is evicted first, counted and reported (alarm ``telemetry_evicted``).
    Trace records (context, scans, parts, genealogy, gaps) are never evicted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_rows: int | None = Field(
        default=2_000_000,
        ge=1,
        description="Most telemetry records kept; null: no bound on the count.",
        examples=[2_000_000],
    )
    max_bytes: int | None = Field(
        default=GIB,
        ge=MIB,
        description="Most bytes of telemetry kept (sum of the record bodies as sent); null: no "
        "bound on the size.",
        examples=[GIB],
    )
    max_age: float | None = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="Seconds a telemetry record is kept at most, counted from when it was "
        "committed (604800 = 7 days); null: no bound on the age.",
        examples=[604800],
    )


class DiskWatermarkConfig(BaseModel):
    """Free space of the filesystem that holds the journal, checked every check_interval."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warn_free_bytes: int = Field(
        default=2 * GIB,
        ge=0,
        description="Below this much free space: alarm disk_low (nothing else changes).",
        examples=[2 * GIB],
    )
    critical_free_bytes: int = Field(
        default=256 * MIB,
        ge=0,
        description="Below this: alarm disk_critical, new readings are refused, and telemetry "
        "is evicted until the journal holds this much free room for trace records.",
        examples=[256 * MIB],
    )
    check_interval: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Seconds between two checks of the free space.",
        examples=[10],
    )

    @model_validator(mode="after")
    def _check(self) -> DiskWatermarkConfig:
        if self.critical_free_bytes > self.warn_free_bytes:
            raise ValueError(
                "critical_free_bytes must not be above warn_free_bytes (the warning comes first)"
            )
        return self


class BufferConfig(BaseModel):
    """The local journal every record lands in before it is sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(default="data/buffer.db", description="SQLite file (relative to the CWD).")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="FULL: every commit survives a power cut. NORMAL: faster, survives crashes "
        "of the agent but may lose the last commits on power loss.",
    )
    max_bytes: int | None = Field(
        default=None,
        ge=MIB,
        description="Hard cap on the journal file's size in bytes; null: the disk is the "
        "limit. When full, telemetry gives way; with none left, trace records wait in memory "
        "(alarm buffer_full) until delivery frees room.",
        examples=[8 * GIB],
    )
    telemetry: TelemetryRetention = Field(
        default_factory=TelemetryRetention,
        description="Bounds on continuous telemetry (readings): rows, bytes, age.",
    )
    disk: DiskWatermarkConfig = Field(
        default_factory=DiskWatermarkConfig,
        description="Free-space watermarks of the journal's filesystem and their alarms.",
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


class SnapshotConfig(BaseModel):
    """Points read together, in one request, when the trigger fires."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name = Field(description="Device the snapshot is read from.", examples=["press10"])
    points: list[Name] = Field(
        min_length=1,
        examples=[["cycle_counter", "part_serial", "final_force", "result"]],
        description="Points of that device; they must fit in one Modbus request (one table, "
        "within max_registers), which is what makes the snapshot consistent.",
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
        description="Unix socket path (relative to the CWD); only local users with access to "
        "the file can use it.",
    )


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
    templates: Templates = Field(
        default_factory=Templates,
        description="Reuse: a device or station entry with `template: NAME` takes every key of "
        "templates.devices.NAME (or templates.stations.NAME), then its own keys. A key given in "
        "the entry replaces the template's whole value: `points:` in an entry replaces the "
        "template's list, it does not add to it.",
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
        plcs: dict[tuple[str, int, int], int] = {}
        for i, dev in enumerate(self.devices):
            out.extend((("devices", i, *p), m) for p, m in dev.issues())
            out.extend((("devices", i, *p), m) for p, m in _poll_issues(dev))
            if dev.name in devices:
                out.append((("devices", i, "name"), f"duplicate device {dev.name!r}"))
            devices.setdefault(dev.name, i)
            plc = (dev.host.strip().lower(), dev.port, dev.unit_id)
            if plc in plcs:
                out.append(
                    (
                        ("devices", i, "unit_id"),
                        f"same PLC as devices[{plcs[plc]}] ({dev.host}:{dev.port} unit "
                        f"{dev.unit_id}): give each PLC unit one entry (its points may each set "
                        "poll_interval and station)",
                    )
                )
            plcs.setdefault(plc, i)
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
        if st.device is not None and st.device not in devices:
            out.append(((*path, "device"), _unknown("device", st.device, devices)))
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


def _poll_issues(dev: ModbusTcpDevice) -> list[Issue]:
    """Polled points whose interval is shorter than the device's timeout."""
    out: list[Issue] = []
    device_default = False
    for j, p in enumerate(dev.points):
        if p.report is Report.SNAPSHOT:
            continue
        if p.poll_interval is None:
            device_default = device_default or dev.poll_interval < dev.timeout
        elif p.poll_interval < dev.timeout:
            out.append((("points", j, "poll_interval"), _overrun(p.poll_interval, dev.timeout)))
    if device_default:
        out.insert(0, (("poll_interval",), _overrun(dev.poll_interval, dev.timeout)))
    return out


def _overrun(interval: float, timeout: float) -> str:
    return (
        f"poll_interval {float(interval)} s is shorter than timeout {float(timeout)} s: a slow "
        "answer would overrun the next poll; raise poll_interval or lower timeout"
    )


def _unknown(what: str, name: str, known: Any) -> str:
    msg = f"unknown {what} {name!r}"
    close = _close(name, list(known))
    if close is not None:
        msg += f"; did you mean {close!r}?"
    elif known:
        msg += f" (known: {', '.join(sorted(known))})"
    return msg


def _close(word: str, choices: list[str]) -> str | None:
    """The choice ``word`` most likely misspells (case aside), or None. Among equally close
    choices the one sharing the longest start wins ('ABDC' -> 'ABCD', not 'BADC')."""
    folded = {c.casefold(): c for c in reversed(choices)}
    w = word.casefold()
    close = difflib.get_close_matches(w, list(folded), n=len(folded))
    if not close:
        return None

    def rank(c: str) -> tuple[float, int]:
        prefix = next(
            (n for n, (a, b) in enumerate(zip(w, c, strict=False)) if a != b), min(len(w), len(c))
        )
        return difflib.SequenceMatcher(None, w, c).ratio(), prefix

    return folded[max(close, key=rank)]


# ---- station references that take a device ------------------------------------------------


def device_refs(station: Any) -> list[tuple[str | int, ...]]:
    """Paths (relative to a station mapping) of the references that name a device:
    context.<key>, scans.sources[j], part.trigger, part.snapshot."""
    if not isinstance(station, dict):
        return []
    refs: list[tuple[str | int, ...]] = []
    ctx = station.get("context")
    if isinstance(ctx, dict):
        refs += [("context", k) for k, v in ctx.items() if isinstance(v, dict)]
    scans = station.get("scans")
    if isinstance(scans, dict) and isinstance(scans.get("sources"), list):
        refs += [
            ("scans", "sources", j) for j, v in enumerate(scans["sources"]) if isinstance(v, dict)
        ]
    part = station.get("part")
    if isinstance(part, dict):
        refs += [("part", k) for k in ("trigger", "snapshot") if isinstance(part.get(k), dict)]
    return refs


def _at(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def defaulted_refs(station: Any) -> list[tuple[str | int, ...]]:
    """The device references of a station that omit ``device`` while the station gives one."""
    if not isinstance(station, dict) or station.get("device") is None:
        return []
    return [r for r in device_refs(station) if "device" not in _at(station, r)]


def with_station_device(station: Any) -> Any:
    """A copy of a station mapping whose references without ``device`` name the station's."""
    refs = defaulted_refs(station)
    if not refs:
        return station
    out = dict(station)
    copied: set[tuple[str | int, ...]] = set()
    for ref in refs:
        parent: Any = out
        for n, part in enumerate(ref):  # copy what is changed: the input may be shared
            child = parent[part]
            if ref[: n + 1] not in copied:
                child = dict(child) if isinstance(child, dict) else list(child)
                parent[part] = child
                copied.add(ref[: n + 1])
            parent = child
        parent["device"] = station["device"]
    return out


# ---- loading ---------------------------------------------------------------------------


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate a config file; raise ConfigError listing every problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue(str(p), None, None, "", f"cannot read: {why}")]) from None
    text, issues = decode(raw, str(p))
    if text is None:
        raise ConfigError(issues)
    return parse_config(text, str(p), env)


def parse_config(
    text: str, file: str = "<config>", env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Validate config text; raise ConfigError listing every problem with file:line:col.

    Before the models see the data: templates are expanded, station default devices filled
    in, ``<name>_file`` secrets read (``env``, default ``os.environ``, serves ``${VAR}``).
    """
    data, smap, issues = load_yaml(text, file, env)
    if data is None:
        raise ConfigError(issues)
    if not isinstance(data, dict):
        issues.append(
            smap.issue((), f"expected a mapping of sections, found {_found(data, smap, ())}")
        )
        raise ConfigError(issues)
    incomplete = _expand_templates(data, smap, issues)
    _fill_station_devices(data, smap)
    _read_secret_files(AgentConfig, data, (), smap, issues)
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(exc.errors(), data, smap, incomplete))
        raise ConfigError(_tidy(issues)) from None
    issues.extend(smap.issue(path, msg) for path, msg in cfg.issues())
    if issues:
        raise ConfigError(_tidy(issues))
    return cfg


def _tidy(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Sorted by position; one issue per position and message. Ten devices from one template
    with one mistake in it are one issue at the template's line, saying how often it is used."""
    groups: dict[tuple[str, int | None, int | None, str], list[ConfigIssue]] = {}
    for issue in issues:
        groups.setdefault((issue.file, issue.line, issue.column, issue.message), []).append(issue)
    out = []
    for group in groups.values():
        best = min(group, key=lambda i: ("(" in i.path, len(i.path), i.path))
        uses = len({i.path for i in group})
        if uses > 1 and best.path.endswith(")") and "(from template " in best.path:
            more = uses - 1
            path = f"{best.path[:-1]}, and {more} more use{'s' if more > 1 else ''})"
            best = ConfigIssue(best.file, best.line, best.column, path, best.message)
        out.append(best)
    return sorted(out, key=lambda i: (i.line or 0, i.column or 0, i.path))


# ---- templates, station default devices, secret files -------------------------------------


def _expand_templates(
    data: dict[str, Any], smap: SourceMap, issues: list[ConfigIssue]
) -> set[tuple[str | int, ...]]:
    """Replace every ``template: NAME`` entry by the template's keys overridden by its own
    (shallow), and point the source map of the inherited keys at the template's lines.
    Returns the entries whose template could not be used (their missing keys are no news)."""
    incomplete: set[tuple[str | int, ...]] = set()
    section = data.get("templates")
    budget = yamlsrc.MAX_VALUES - len(smap.positions)  # values the expansion may add
    sizes: dict[tuple[str, str, str], int] = {}
    for kind in ("devices", "stations"):
        raw = section.get(kind) if isinstance(section, dict) else None
        bodies = (
            {k: v for k, v in raw.items() if isinstance(v, dict)} if isinstance(raw, dict) else {}
        )
        for name, body in bodies.items():
            if "template" in body:
                issues.append(
                    smap.issue(
                        ("templates", kind, name, "template"),
                        "a template cannot use another template; copy its keys here",
                    )
                )
        entries = data.get(kind)
        if not isinstance(entries, list):
            continue
        entries = data[kind] = list(entries)  # changed below; the list may be an alias's too
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "template" not in entry:
                continue
            name = entry["template"]
            own = {k: v for k, v in entry.items() if k != "template"}
            entries[i] = own
            where = (kind, i, "template")
            if not isinstance(name, str) or name not in bodies:
                incomplete.add((kind, i))
            if not isinstance(name, str):
                issues.append(
                    smap.issue(
                        where, f"expected a template name, found {_found(name, smap, where)}"
                    )
                )
                continue
            if name not in bodies:
                if isinstance(raw, dict) and name in raw:
                    continue  # the template itself is reported (not a mapping)
                what = f"{kind[:-1]} template"
                msg = (
                    _unknown(what, name, bodies)
                    if bodies
                    else f"unknown {what} {name!r}: templates.{kind} defines none"
                )
                issues.append(smap.issue(where, msg))
                continue
            inherited = [k for k in bodies[name] if k not in own and k != "template"]
            for k in inherited:
                if (kind, name, k) not in sizes:
                    sizes[(kind, name, k)] = _size(bodies[name][k])
            size = sum(sizes[(kind, name, k)] for k in inherited)
            if budget - size < 0:
                incomplete.add((kind, i))
                if budget >= 0:  # say it once
                    limit = yamlsrc.MAX_VALUES
                    msg = f"the templates expand the document to more than {limit} values"
                    issues.append(smap.issue(where, msg))
                budget = -1
                continue
            budget -= size
            # Shared, not copied: nothing downstream changes the data in place.
            merged = {k: bodies[name][k] for k in inherited}
            note = f"from template {name!r}"
            for key in inherited:
                smap.link((kind, i, key), ("templates", kind, name, key), note)
            merged.update(own)
            entries[i] = merged
    return incomplete


def _fill_station_devices(data: dict[str, Any], smap: SourceMap) -> None:
    """Name the station's ``device`` in its references that omit one, as the model would, and
    locate those at the station's ``device`` key (what an error there is about)."""
    stations = data.get("stations")
    if not isinstance(stations, list):
        return
    stations = data["stations"] = list(stations)  # changed below; may be an alias's too
    for i, st in enumerate(stations):
        refs = defaulted_refs(st)
        if not refs:
            continue
        for ref in refs:
            smap.link(
                ("stations", i, *ref, "device"), ("stations", i, "device"), "the station's device"
            )
        stations[i] = with_station_device(st)


MAX_SECRET_BYTES = 64 * 1024


def _read_secret_files(
    model: type[BaseModel],
    data: Any,
    path: tuple[str | int, ...],
    smap: SourceMap,
    issues: list[ConfigIssue],
) -> None:
    """For every model with a secret field ``<name>`` and a ``<name>_file`` field: read the
    file into ``<name>`` (one trailing newline stripped). The secret never enters a message."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in list(data.items()):
        field = fields.get(key)
        if field is None or value is None:
            continue
        base = key.removesuffix("_file")
        if base != key and base in fields and _holds(fields[base].annotation, SecretStr):
            if not isinstance(value, str):
                continue  # the model reports the type
            if isinstance(data.get(base), SecretStr):
                continue  # read already: a template's mapping shared by several entries
            if base in data:
                issues.append(smap.issue((*path, key), f"give {base} or {key}, not both"))
                continue
            secret, problem = _read_secret(value)
            if secret is None:
                issues.append(smap.issue((*path, key), problem))
                continue
            data[base] = SecretStr(secret)
            smap.link((*path, base), (*path, key), f"read from {key}")
            continue
        for sub, sub_data, sub_path in _models_under(field.annotation, value, (*path, key)):
            _read_secret_files(sub, sub_data, sub_path, smap, issues)


def _size(value: Any) -> int:
    """Values in ``value`` (itself included), as the source map counts them."""
    if isinstance(value, dict):
        return 1 + sum(_size(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_size(v) for v in value)
    return 1


def _read_secret(file: str) -> tuple[str | None, str]:
    """(secret, "") or (None, why not). Only a regular file is opened: a FIFO would block."""
    try:
        if not stat.S_ISREG(os.stat(file).st_mode):
            return None, f"cannot read {file!r}: not a regular file"
        with open(file, "rb") as fh:
            raw = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read {file!r}: {exc.strerror or exc}"
    if len(raw) > MAX_SECRET_BYTES:
        return None, f"{file!r} is larger than {MAX_SECRET_BYTES // 1024} KiB: not a secret?"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, f"{file!r} is not UTF-8 text"
    text = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
    if not text:
        return None, f"{file!r} is empty"
    return text, ""


def _models_under(
    annotation: Any, value: Any, path: tuple[str | int, ...]
) -> Iterator[tuple[type[BaseModel], Any, tuple[str | int, ...]]]:
    """The (model, data, path) of every mapping ``value`` holds according to ``annotation``."""
    ann = _unwrap(annotation, value)
    origin = get_origin(ann)
    if origin is list and isinstance(value, list):
        for j, item in enumerate(value):
            yield from _models_under(get_args(ann)[0], item, (*path, j))
    elif origin is dict and isinstance(value, dict):
        for k, item in value.items():
            yield from _models_under(get_args(ann)[1], item, (*path, k))
    elif isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(value, dict):
        yield ann, value, path


# ---- the models' structure, for messages --------------------------------------------------


def _unwrap(annotation: Any, value: Any = None) -> Any:
    """``Annotated[X, ...]`` -> X; ``X | None`` -> X; a union of models -> the one whose
    ``type`` literal is ``value``'s type (a discriminated union)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(args) == 1:
                annotation = args[0]
                continue
            if models:
                tag = value.get("type") if isinstance(value, dict) else None
                for m in models:
                    type_field = m.model_fields.get("type")
                    if type_field is not None and tag in get_args(type_field.annotation):
                        return m
                return models[0]
        return annotation


def _annotation_at(path: tuple[str | int, ...], data: Any) -> Any:
    """The declared type of the value at ``path`` (None if the path leaves the models)."""
    ann: Any = AgentConfig
    node = data
    for part in path:
        ann = _unwrap(ann, node)
        origin = get_origin(ann)
        if origin is list and isinstance(part, int):
            ann = get_args(ann)[0]
        elif origin is dict and isinstance(part, str):
            ann = get_args(ann)[1]
        elif isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(part, str):
            field = ann.model_fields.get(part)
            if field is None:
                return None
            ann = field.annotation
        else:
            return None
        node = _child(node, part)
    return ann


def _has(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _holds(annotation: Any, kind: type) -> bool:
    """Whether ``kind`` appears in ``annotation`` (``SecretStr | None`` holds SecretStr)."""
    if annotation is kind:
        return True
    return any(_holds(a, kind) for a in get_args(annotation))


def _allowed_keys(path: tuple[str | int, ...], data: Any) -> list[str]:
    """Keys of the model that holds ``path[-1]``, for "did you mean"."""
    ann = _unwrap(_annotation_at(path[:-1], data), _child_at(path[:-1], data))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return list(ann.model_fields)
    return []


def _child_at(path: tuple[str | int, ...], data: Any) -> Any:
    for part in path:
        data = _child(data, part)
    return data


# ---- pydantic's errors as messages an integrator can act on -------------------------------

_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
_EXPECTED = {
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "int_parsing_size": "a whole number of sensible size",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
    "is_instance_of": "a string",
}


def _pydantic_issues(
    errors: list[ErrorDetails],
    data: Any,
    smap: SourceMap,
    incomplete: Set[tuple[str | int, ...]] = frozenset(),
) -> list[ConfigIssue]:
    """One issue per location: the errors of a union's members (``bool | int | str``) at
    one value become one "expected A, B or C" message."""
    by_path: dict[tuple[str | int, ...], list[ErrorDetails]] = {}
    for err in errors:
        path = _data_path(err, data)
        if err["type"] == "union_tag_invalid":
            path = (*path, "type")
        # What loading reported already (an unset variable, an unknown template) is not
        # reported again as a consequence (an empty host, the template's missing keys).
        if smap.is_reported(path) or (
            err["type"] in ("missing", "union_tag_not_found")
            and (path[:-1] in incomplete or path in incomplete)
        ):
            continue
        by_path.setdefault(path, []).append(err)
    out: list[ConfigIssue] = []
    for path, errs in by_path.items():
        kinds = [e["type"] for e in errs]
        if len(errs) > 1 and all(k in _EXPECTED for k in kinds):
            expected = list(dict.fromkeys(_EXPECTED[k] for k in kinds))
            alternatives = ", ".join(expected[:-1]) + f" or {expected[-1]}"
            found = _found(errs[0].get("input"), smap, path)
            out.append(smap.issue(path, f"expected {alternatives}, found {found}"))
        else:
            out.extend(smap.issue(path, _message(err, path, data, smap)) for err in errs)
    return out


def _message(err: ErrorDetails, path: tuple[str | int, ...], data: Any, smap: SourceMap) -> str:
    kind = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    secret = _holds(_annotation_at(path, data), SecretStr)
    found = "a value (not shown: a secret)" if secret else _found(value, smap, path)
    if kind == "extra_forbidden":
        key = str(path[-1])
        close = _close(key, _allowed_keys(path, data))
        return f"unknown key {key!r}" + (f"; did you mean {close!r}?" if close else "")
    if kind == "missing":
        if path[:1] == ("stations",) and path[-1] == "device":
            return "no device: give device here or on the station"
        return "missing required key"
    if kind == "union_tag_invalid":
        tag = value.get("type") if isinstance(value, dict) else value
        return _choice("device type", tag, str(ctx.get("expected_tags", "")))
    if kind == "union_tag_not_found":
        return "missing required key 'type' (which driver runs this device)"
    if kind in ("enum", "literal_error"):
        return _choice("value", value, str(ctx.get("expected", "")))
    if kind == "string_type" and smap.raw(path) is not None and not secret:
        raw = str(smap.raw(path))
        return (
            f"expected a string, found {raw} (YAML reads it as {_found(value, smap, ())}; "
            f"write '{raw}' in quotes for the text)"
        )
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, found {found}"
    bounds = {
        "greater_than": "more than {gt}",
        "greater_than_equal": "at least {ge}",
        "less_than": "less than {lt}",
        "less_than_equal": "at most {le}",
    }
    if kind in bounds:
        limits = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
        return f"expected {bounds[kind].format(**limits)}, found {found}"
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        return f"expected at least {n} character{'s' if n != 1 else ''}, found {found}"
    if kind == "string_too_long":
        length = len(value) if isinstance(value, str) else "more"
        return f"expected at most {ctx.get('max_length')} characters, found {length}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        least = "at least" if kind == "too_short" else "at most"
        return (
            f"expected {least} {bound} entr{'y' if bound == 1 else 'ies'}, "
            f"found {ctx.get('actual_length')}"
        )
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == _NAME_PATTERN:
            return (
                "expected a name (letters, digits, '_', '.', '-'; starting with a letter or "
                f"'_'), found {found}"
            )
        return f"expected text matching {ctx.get('pattern')}, found {found}"
    if kind in ("value_error", "assertion_error"):
        return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if secret or isinstance(value, dict | list):
        return str(err["msg"])
    return f"{err['msg']} (found {found})"


def _choice(what: str, value: Any, expected: str) -> str:
    """``unknown value 'ABDC'; expected one of ABCD, CDAB, BADC, DCBA; did you mean 'ABCD'?``"""
    choices = re.findall(r"'([^']*)'", expected)
    if not choices or not isinstance(value, str):
        listed = ", ".join(choices) if choices else expected.replace(" or ", ", ")
        return f"expected one of {listed}, found {_found(value, None, ())}"
    msg = f"unknown {what} {value!r}; expected one of {', '.join(choices)}"
    close = _close(value, choices)
    return msg + (f"; did you mean {close!r}?" if close else "")


def _found(value: Any, smap: SourceMap | None, path: tuple[str | int, ...]) -> str:
    """What was written, short: ``'fast'``, ``12``, ``true``, ``nothing``, ``a list``."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if smap is not None and smap.raw(path) is not None:
            text = str(smap.raw(path))
        else:
            text = str(value) if not isinstance(value, int) or abs(value) < 10**30 else ""
        return text if len(text) <= 30 else f"a {len(text)}-character number"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else f"{value[:50]!r}... ({len(value)} characters)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _data_path(err: ErrorDetails, data: Any) -> tuple[str | int, ...]:
    """Map pydantic's loc onto the file's keys: drop what is not a key in the file, i.e. the
    tags of discriminated unions (``modbus_tcp`` in ``devices.0.modbus_tcp.points``) and of
    union members (``bool`` in ``ok.0.bool``). A missing key stays: it names what to add."""
    loc = err["loc"]
    path: list[str | int] = []
    node: Any = data
    for n, part in enumerate(loc):
        if _has(node, part):
            path.append(part)
            node = _child(node, part)
        elif n == len(loc) - 1 and err["type"] == "missing":
            path.append(part)
    return tuple(path)
