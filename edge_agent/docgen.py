"""Generate docs/configuration.md from the config models, so the reference cannot drift.

``python -m edge_agent.docgen > docs/configuration.md``; a test fails when the file is stale.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from drivers import registry
from edge_agent.config import (
    AgentIdentity,
    BufferConfig,
    ContextSource,
    ControlConfig,
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
    ("control", ControlConfig),
    ("templates", Templates),
]


def sections() -> list[tuple[str, type[BaseModel]]]:
    """Every section of the reference: the agent's, and each registered device kind's."""
    devices: list[tuple[str, type[BaseModel]]] = []
    for kind in registry.kinds():
        devices.append((f"devices[] with type: {kind.type}", kind.config))
        devices += [(f"devices[].{title} ({kind.type})", model) for title, model in kind.sections]
    # The top level as validated: its device list names every registered kind.
    listed = [("Top level", agent_model()), *BEFORE_DEVICES, *devices, *AFTER_DEVICES]
    # A section added to the models but not to the lists above still gets its table.
    known = {model for _, model in listed}
    for title, model in nested_models(agent_model(), ""):
        if model not in known:
            known.add(model)
            listed.append((title, model))
    return listed


def nested_models(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel]]]:
    """(key path, model) of every model under ``model``'s fields, outside the device list
    (each kind's sections say what is under it): ``mqtt.tls``, ``stations[].part``."""
    out: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        if not prefix and name == "devices":
            continue
        for suffix, sub in _models_in(field.annotation):
            path = f"{prefix}{name}{suffix}"
            out += [(path, sub), *nested_models(sub, f"{path}.")]
    return out


def _models_in(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """The models an annotation holds, with the path suffix to reach them: ``[]`` through a
    list, ``.<key>`` through a map."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in get_args(annotation) for m in _models_in(a)]
    if origin is list:
        return [(f"[]{s}", m) for s, m in _models_in(get_args(annotation)[0])]
    if origin is dict:
        return [(f".<key>{s}", m) for s, m in _models_in(get_args(annotation)[1])]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("", annotation)]
    return []


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


RULES_INTRO = [
    "## Rules `validate` enforces beyond the types",
    "",
    "The tables above give each key's type, range and default. On top of them",
    "`edge-agent validate` (and `run`, and `reload`) checks how keys and sections fit together.",
    "Each rule below is followed by what `validate` prints for a file that breaks it (after",
    "`file:line:col:`). Every rule is a test case: a `config.yaml`, the lines it must produce",
    "(`expected.txt`) and the rule in words (`rule.txt`), in `edge_agent/config/testcases/` for",
    "the file as a whole and in `drivers/<kind>/testcases/` for each kind of device. The test",
    "suite runs every one, so these are the messages `validate` really prints; follow a rule's",
    "link for the file that breaks it. Kinds built on one model share its rules, listed once:",
    "the register map of both Modbus kinds, the serial and TCP link of scanners, scales and",
    "RFID readers.",
    "",
    "A kind of device whose optional packages are not installed is refused as well, with the",
    "command that installs them: `devices[N].type: device type 'KIND' needs MODULE, which is not",
    "installed: pip install 'edge-agent[EXTRA]'`.",
    "",
    "### What `validate` accepts, and what the agent then does",
    "",
    "- **An edge on a point that is not a bool.** A trigger (`part.trigger`, a reader's",
    "  `trigger`) takes the point's value as true or false: 0, 0.0 and an empty string are",
    "  false, any other value true. `edge: rising` on a counter therefore fires only when the",
    "  counter leaves 0, not at every count, and `falling` only when it returns to 0. Trigger on",
    "  a bool (a coil, a `type: bit`, an OPC UA Boolean), or use `edge: change` (any new value)",
    "  for a counter or a sequence number.",
    "- **A trigger already high when the agent starts** (or when its device comes back after an",
    "  outage, or after a bad reading). The agent did not see the edge and cannot know whether",
    "  it recorded that part before: without `part.counter` it records nothing for that level,",
    "  never an invented part, and the next real edge records the next part. With",
    "  `part.counter` it reads the snapshot (`rising`: if the level is high; `falling`: if it is",
    "  low; `change`: never) and the counter decides: the value of the last part recorded is",
    "  that part again and is dropped, a jump is recorded as a gap (missed parts). With a",
    '  handshake, a "data ready" already high is a part the PLC still holds: it is read, and',
    '  "data taken" written once it is committed; a "data ready" already low makes the agent',
    '  reset "data taken" (it may have stopped between writing it and the PLC\'s answer). A',
    "  reader's trigger already high is not an edge either: trigger that read by hand with",
    "  `edge-agent device command -c FILE --device NAME trigger`.",
    '- **A reset of "data taken" that fails** (the connection is going or coming back, the PLC',
    "  refuses the write) is written again, after 0.25 s and then at intervals growing to 5 s,",
    '  until it gets through or "data ready" rises again: the PLC waits for that reset before',
    "  its next part, and nothing else would bring it.",
    "",
]
"""Hand-written: what the rules section says before the test cases."""

ROOT = Path(__file__).resolve().parent.parent
CORE_CASES = Path(__file__).resolve().parent / "config" / "testcases"
_POSITION = re.compile(r"^config\.yaml(?::\d+:\d+)?: ")


def rule_cases() -> list[tuple[str, Path]]:
    """(heading, folder of test cases): the file as a whole, then each registered kind."""
    found = [("Across the file", CORE_CASES)]
    found += [(f"devices[] with type: {k.type}", k.folder / "testcases") for k in registry.kinds()]
    return found


def _rule_lines(case: Path) -> list[str]:
    """One test case as a rule: its words, a link to its file, the lines validate prints. A
    valid case is shown only when it says in words what it allows."""
    expected = (case / "expected.txt").read_text(encoding="utf-8").strip().splitlines()
    rule_file = case / "rule.txt"
    if rule_file.is_file():
        words = " ".join(rule_file.read_text(encoding="utf-8").split())
    elif expected == ["OK"]:
        return []
    else:
        words = case.name.replace("-", " ").capitalize() + "."
    try:
        link = (case / "config.yaml").relative_to(ROOT).as_posix()
    except ValueError:  # a kind registered from outside the repository (tests)
        return [f"- {words}"]
    out = [f"- {words} ([example](../{link}))"]
    if expected != ["OK"]:
        out += ["  ```text", *(f"  {_POSITION.sub('', line)}" for line in expected), "  ```"]
    return out


def rules() -> list[str]:
    """The rules section: hand-written words, then every test case of the core and the kinds."""
    lines = list(RULES_INTRO)
    for heading, folder in rule_cases():
        cases = sorted(c for c in folder.glob("*/") if (c / "expected.txt").is_file())
        body = [line for case in cases for line in _rule_lines(case)]
        if body:
            lines += [f"### {heading}", "", *body, ""]
    return lines


def _intro(model: type[BaseModel]) -> str:
    """The first paragraph of the model's docstring, on one line."""
    paragraph = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0]
    return " ".join(paragraph.split()).replace("``", "`")


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
        lines += [f"## {title}", "", _intro(model), ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
            kind = _type_name(field.annotation).replace("|", "\\|")
            lines.append(f"| `{name}` | {kind} | {_default(field)} | {desc} |")
        lines.append("")
    lines += rules()
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
