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


class StationConfig(BaseModel):
    """A station: the unit whose context (serial, lot, ...) readings are bound to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(description="Station name, e.g. 'ST10'; appears in topics and records.")
    context: dict[Name, ContextSource] = Field(
        default_factory=dict,
        description="Context key -> source point. Well-known keys: serial, lot, work_order, "
        "product, operator; any other name is an integrator-defined key.",
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
            for key, src in st.context.items():
                path: tuple[str | int, ...] = ("stations", i, "context", key)
                if src.device not in devices:
                    out.append(((*path, "device"), _unknown("device", src.device, devices)))
                    continue
                dev = self.devices[devices[src.device]]
                names = {p.name for p in dev.points}
                if src.point not in names:
                    out.append(
                        ((*path, "point"), _unknown(f"point of {src.device!r}", src.point, names))
                    )
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
