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

from drivers.modbus.config import ModbusPoint, ModbusTcpDevice
from edge_agent.config import (
    AgentConfig,
    AgentIdentity,
    BufferConfig,
    ContextSource,
    StationConfig,
)
from sync.config import MqttConfig

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Top level", AgentConfig),
    ("agent", AgentIdentity),
    ("stations[]", StationConfig),
    ("stations[].context.<key>", ContextSource),
    ("devices[] with type: modbus_tcp", ModbusTcpDevice),
    ("devices[].points[] (modbus_tcp)", ModbusPoint),
    ("buffer", BufferConfig),
    ("mqtt", MqttConfig),
]


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
        "`file:line: key.path: message`, and the exit status is 2.",
        "",
        "Names (sites, lines, stations, devices, points) are letters, digits, `_`, `.`, `-`,",
        "starting with a letter or `_`. Unknown keys are errors, never silently ignored.",
        "",
    ]
    for title, model in SECTIONS:
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
