"""Generate docs/configuration.md from the config models, so the reference cannot drift.

``python -m edge_agent.docgen > docs/configuration.md``; a test fails when the file is stale.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from drivers import registry
from edge_agent.config import (
    AgentIdentity,
    BufferConfig,
    ContextSource,
    DiskWatermarkConfig,
    StationConfig,
    TelemetryRetention,
    Templates,
    agent_model,
)
from edge_agent.config.models import (
    HandshakeConfig,
    Limits,
    PartConfig,
    ResultConfig,
    ScanConfig,
    ScanSource,
    SnapshotAlso,
    SnapshotConfig,
    TriggerConfig,
)
from edge_agent.scan import Consume, ScanRule
from sync.config import MqttConfig, MqttTls

BEFORE_DEVICES: list[tuple[str, type[BaseModel]]] = [
    ("agent", AgentIdentity),
    ("stations[]", StationConfig),
    ("stations[].context.<key>", ContextSource),
    ("stations[].scans", ScanConfig),
    ("stations[].scans.sources[]", ScanSource),
    ("stations[].scans.rules[]", ScanRule),
    ("stations[].scans.rules[].consume", Consume),
    ("stations[].part", PartConfig),
    ("stations[].part.trigger", TriggerConfig),
    ("stations[].part.snapshot", SnapshotConfig),
    ("stations[].part.snapshot.also[]", SnapshotAlso),
    ("stations[].part.result", ResultConfig),
    ("stations[].part.limits.<point>", Limits),
    ("stations[].part.handshake", HandshakeConfig),
]
AFTER_DEVICES: list[tuple[str, type[BaseModel]]] = [
    ("buffer", BufferConfig),
    ("buffer.telemetry", TelemetryRetention),
    ("buffer.disk", DiskWatermarkConfig),
    ("mqtt", MqttConfig),
    ("mqtt.tls", MqttTls),
    ("templates", Templates),
]


def sections() -> list[tuple[str, type[BaseModel]]]:
    """Every section of the reference: the agent's, and each registered device kind's."""
    devices: list[tuple[str, type[BaseModel]]] = []
    for kind in registry.kinds():
        devices.append((f"devices[] with type: {kind.type}", kind.config))
        devices += [(f"devices[].{title} ({kind.type})", model) for title, model in kind.sections]
    # The top level as validated: its device list names every registered kind.
    return [("Top level", agent_model()), *BEFORE_DEVICES, *devices, *AFTER_DEVICES]


FILE_SYNTAX = [
    "## Templates, station devices, variables, secrets",
    "",
    "- **Templates.** `templates.devices.NAME` and `templates.stations.NAME` hold partial",
    "  entries. An entry with `template: NAME` takes every key of the template, then its own: a",
    "  key given in the entry replaces the template's whole value (`points:` in an entry",
    "  replaces the template's list, it does not add to it). Templates do not nest. A mistake in",
    "  a template is reported at the template's line, naming the entry that uses it:",
    "  `devices[3].timeout (from template 'press-plc')`.",
    "- **Station device.** A station's `device` is the default of `context.<key>.device`,",
    "  `scans.sources[].device`, `part.trigger.device` and `part.snapshot.device`.",
    "- **Environment variables.** In any string value, `${VAR}` is replaced by the variable",
    "  (an error if it is not set), `${VAR:-default}` by the variable or, if it is unset or",
    "  empty, the default; `$${` is a literal `${`. Substitution happens after parsing, so a",
    "  value cannot add YAML structure; `port: ${PORT:-502}` still becomes the number 502.",
    "- **Secrets from files.** `password_file: /run/secrets/mqtt` (beside a secret key such as",
    "  `mqtt.password`, not with it) reads the secret from that file when the config is loaded;",
    "  one trailing newline is dropped. Secrets never appear in messages, logs or dumps.",
    "- YAML anchors, aliases and merge keys (`<<: *base`) work; tags such as `!!python/object`",
    "  are refused.",
    "",
]
"""Hand-written: what the file format adds on top of the models."""


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(annotation))
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in get_args(annotation))
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if origin is dict:
        k, v = get_args(annotation)
        return f"map of {_type_name(k)} to {_type_name(v)}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " / ".join(str(m.value) for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        if field.default_factory in (dict, list):
            return "empty"
        return "(section defaults)"
    value = field.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "null"
    return f"`{value}`"


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config models by `python -m edge_agent.docgen`; do not edit by hand.",
        "Check a file with `edge-agent validate FILE`: every problem is listed at once as",
        "`file:line:col: key.path: message`, and the exit status is 2.",
        "",
        "Names (sites, lines, stations, devices, points) are letters, digits, `_`, `.`, `-`,",
        "starting with a letter or `_`. Unknown keys are errors, never silently ignored.",
        "",
        *FILE_SYNTAX,
    ]
    for title, model in sections():
        lines += [f"## {title}", "", (model.__doc__ or "").strip().split("\n")[0], ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
            kind = _type_name(field.annotation).replace("|", "\\|")
            lines.append(f"| `{name}` | {kind} | {_default(field)} | {desc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
