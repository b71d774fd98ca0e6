"""JSON Schema of the config file, for editors and CI.

``python -m edge_agent.schema > config/edge-agent.schema.json``; a test fails when the committed
file is stale. Every YAML file under ``config/`` starts with a modeline naming it, e.g.::

    # yaml-language-server: $schema=../edge-agent.schema.json

so VS Code's YAML extension (yaml-language-server) completes keys, shows each key's
description, examples and default on hover, and flags unknown keys, wrong enums and types as
the integrator types. The loader (``edge_agent.config.parse_config``) stays the authority: it
also checks what a schema cannot (references between sections, register spans, ...).

The schema is pydantic's (``agent_model().model_json_schema``, with every registered device
kind in the device union), post-processed for editors:

* root ``$schema`` / ``$id`` / ``title`` / ``description``;
* fields with a ``default_factory`` show their default like the others;
* the device union's ``discriminator`` (an OpenAPI keyword JSON Schema validators and editors
  ignore) becomes one ``if type is X then <X's schema>`` rule per kind (``allOf``), and
  ``type`` an ``enum`` of the kinds (yaml-language-server completes it, then applies the
  matching rule); each kind's schema states ``type`` as a ``const`` and requires it;
* mappings keyed by names (``context``, ``limits``, ``set``) check their keys with
  ``propertyNames`` and their values with ``additionalProperties`` (pydantic's
  ``patternProperties`` alone lets any key that misses the pattern through);
* what the file may say before the loader expands it: ``template: NAME`` in a device or
  station entry (which may then leave out required keys), template bodies in ``templates``,
  station references that leave out ``device`` when the station names one, and ``${VAR}``
  references wherever a value is not free text (``port: ${PORT:-502}``, ``id: ${AGENT_ID}``).

Only keywords that draft-07 engines understand are used (yaml-language-server validates with
draft-07 semantics), apart from ``$defs`` as the container of ``$ref`` targets.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any, cast

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from edge_agent.config import agent_model

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:edge-agent:config"
SCHEMA_FILE = "edge-agent.schema.json"
"""File name of the committed schema, in the repository's ``config/`` folder."""
MODELINE = "# yaml-language-server: $schema="
"""First line of a config file, followed by the schema's path relative to that file."""

TITLE = "edge-agent configuration"
DESCRIPTION = (
    "One edge-agent: its identity, the stations and the context rules that bind readings to "
    "serials and lots, the devices it polls, the local journal and the MQTT uplink. Check a "
    "file with `edge-agent validate FILE`; the reference is docs/configuration.md."
)

TEMPLATE_DESCRIPTION = (
    "Name of an entry in templates.{kind}: this entry takes every key of that template, then "
    "its own keys (a key given here replaces the template's whole value). Keys the template "
    "gives may be left out here."
)

ENV_REFERENCE: dict[str, Any] = {
    "description": "An environment variable, replaced when the file is loaded: ${VAR}, or "
    "${VAR:-default} for a value used when VAR is unset or empty.",
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
}
"""What ``edge_agent.yamlsrc`` substitutes in any string value, before the models see it.
No examples: an editor would offer them as values of every key that allows a reference."""

_TEMPLATE_KINDS = ("devices", "stations")
"""Sections whose entries may say ``template: NAME`` (see config._expand_templates)."""


class _Generator(GenerateJsonSchema):
    """pydantic's generator, also showing the defaults that come from a ``default_factory``
    (``[]``, ``{}``, ``[1]``), except whole sections."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        factory = schema.get("default_factory")
        if "default" in json_schema or factory is None or schema.get("default_factory_takes_data"):
            return json_schema
        value = cast(Callable[[], Any], factory)()
        if isinstance(value, BaseModel):
            return json_schema  # a section: its keys show their own defaults
        json_schema["default"] = self.encode_default(value)
        return json_schema


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a config file, ready for editors."""
    raw = agent_model().model_json_schema(mode="validation", schema_generator=_Generator)
    defs: dict[str, Any] = raw.get("$defs", {})
    for node in _subschemas(raw):
        _discriminator_to_if_then(node, defs)
        _name_keyed_mapping(node)
    _allow_templates(raw, defs)
    _station_default_device(defs)
    _allow_env_references(raw, defs)
    body = {k: v for k, v in raw.items() if k not in ("title", "description", "$defs")}
    return {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "title": TITLE,
        "description": DESCRIPTION,
        **body,
        "$defs": defs,
    }


def schema_text() -> str:
    """``config_schema()`` as the committed file holds it (stable across runs)."""
    return json.dumps(config_schema(), indent=2, sort_keys=False) + "\n"


# ---- walking ------------------------------------------------------------------------------

_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE = (
    "items",
    "additionalProperties",
    "propertyNames",
    "contains",
    "not",
    "if",
    "then",
    "else",
)


def _subschemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every subschema of ``node`` (itself included), never values such as examples."""
    if not isinstance(node, dict):
        return
    yield node
    for key in _SCHEMA_MAPS:
        for sub in (node.get(key) or {}).values():
            yield from _subschemas(sub)
    for key in _SCHEMA_LISTS:
        for sub in node.get(key) or []:
            yield from _subschemas(sub)
    for key in _SCHEMA_ONE:
        yield from _subschemas(node.get(key))


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target: dict[str, Any] = defs[ref.removeprefix("#/$defs/")]
        return target
    return node


# ---- fixes ---------------------------------------------------------------------------------


def _discriminator_to_if_then(node: dict[str, Any], defs: dict[str, Any]) -> None:
    """OpenAPI's ``discriminator`` -> one ``if type is X then X's schema`` rule per kind.

    A ``oneOf`` of branches told apart by a ``const`` would do for validity, but then every
    mistake inside a device (an unknown key, a value out of range) is also a ``type``
    mismatch in every other kind's branch, and validators report that deeper error: the
    editor would mark ``type`` instead of the key that is wrong. With ``if``/``then`` only
    the device's own kind is checked; ``type`` itself is checked by its ``enum``.
    """
    disc = node.pop("discriminator", None)
    if disc is None:
        return
    tag = disc["propertyName"]
    rules: list[dict[str, Any]] = []
    values: list[Any] = []
    for branch in node.pop("oneOf", []):
        target = _resolve(branch, defs)
        prop = target["properties"][tag]
        if "const" not in prop and len(prop.get("enum", [])) == 1:
            prop["const"] = prop.pop("enum")[0]
        if "const" not in prop:  # pragma: no cover - pydantic checks
            raise ValueError(f"discriminated branch {branch} has no literal {tag!r}")
        required = target.setdefault("required", [])
        if tag not in required:
            required.insert(0, tag)
        values.append(prop["const"])
        when = {"properties": {tag: {"const": prop["const"]}}, "required": [tag]}
        rules.append({"if": when, "then": branch})
    node["properties"] = {
        tag: {"description": "Driver that runs this device.", "enum": values},
    }
    node["allOf"] = rules


def _name_keyed_mapping(node: dict[str, Any]) -> None:
    """``dict[Name, X]``: keys checked by ``propertyNames``, values by ``additionalProperties``."""
    patterns = node.get("patternProperties")
    names = node.get("propertyNames")
    if not isinstance(patterns, dict) or len(patterns) != 1 or "additionalProperties" in node:
        return
    ((pattern, value),) = patterns.items()
    del node["patternProperties"]
    node["propertyNames"] = {**(names or {}), "pattern": pattern}
    node["additionalProperties"] = value


def _allow_templates(root: dict[str, Any], defs: dict[str, Any]) -> None:
    """Entries of ``devices`` and ``stations`` may say ``template: NAME`` and then leave out
    what the template gives; ``templates.<kind>.NAME`` holds any keys of such an entry."""
    templates = _resolve(root["properties"].get("templates", {}), defs)
    bodies = templates.get("properties", {})
    for kind in _TEMPLATE_KINDS:
        items = root["properties"][kind]["items"]
        rules = [rule for rule in items.get("allOf", []) if "then" in rule]
        refs = [rule["then"] for rule in rules] or [items]
        branches = [_resolve(b, defs) for b in refs]
        names = [b["$ref"].removeprefix("#/$defs/") for b in refs]
        partials: list[dict[str, Any]] = []
        for name, entry in zip(names, branches, strict=True):
            partial_name = f"{name}Template"
            defs[partial_name] = {
                "description": f"Any keys of {kind} entries ({name}), for template: NAME.",
                "type": "object",
                "properties": {
                    key: {"$ref": f"#/$defs/{name}/properties/{key}"}
                    for key in entry["properties"]
                    if key != "template"
                },
                "additionalProperties": False,
            }
            partials.append({"$ref": f"#/$defs/{partial_name}"})
            entry["properties"].setdefault(
                "template",
                {
                    "description": TEMPLATE_DESCRIPTION.format(kind=kind),
                    "type": "string",
                    "examples": ["press-plc" if kind == "devices" else "press-station"],
                },
            )
            required = entry.pop("required", [])
            if required:
                entry["if"] = {"required": ["template"]}
                entry["else"] = {"required": required}
        if rules:  # a union told apart by type: its tag is required unless a template gives it
            tag = next(iter(rules[0]["if"]["required"]))
            items["if"] = {"required": ["template"]}
            items["else"] = {"required": [tag]}
        if kind in bodies:
            bodies[kind]["additionalProperties"] = _template_body(rules, partials)


def _template_body(rules: list[dict[str, Any]], partials: list[dict[str, Any]]) -> dict[str, Any]:
    """A template's keys: those of its ``type``'s kind when it names one (so the editor marks
    the wrong key, as for entries), else those of any kind."""
    if len(partials) == 1:
        return partials[0]
    by_type = [
        {"if": rule["if"], "then": partial} for rule, partial in zip(rules, partials, strict=True)
    ]
    tag = next(iter(rules[0]["if"]["required"]))
    return {"if": {"required": [tag]}, "then": {"allOf": by_type}, "else": {"anyOf": partials}}


_STATION_REFS: dict[str, Any] = {
    # Mirrors config.device_refs: context.<key>, scans.sources[], part.trigger, part.snapshot.
    "context": {"additionalProperties": {"required": ["device"]}},
    "scans": {"properties": {"sources": {"items": {"required": ["device"]}}}},
    "part": {
        "properties": {
            "trigger": {"required": ["device"]},
            "snapshot": {"required": ["device"]},
        }
    },
}
_REF_DEFS = ("ContextSource", "ScanSource", "TriggerConfig", "SnapshotConfig")


def _station_default_device(defs: dict[str, Any]) -> None:
    """A station's references may leave out ``device`` when the station names one (or takes
    a template, which may): ``device`` is required in them only otherwise."""
    station = defs.get("StationConfig")
    if station is None or "device" not in station.get("properties", {}):
        return
    for name in _REF_DEFS:
        ref_def = defs.get(name)
        if ref_def is not None and "device" in ref_def.get("required", []):
            ref_def["required"].remove("device")
            if not ref_def["required"]:
                del ref_def["required"]
    condition = {
        "anyOf": [
            {"required": ["template"]},
            {"required": ["device"], "properties": {"device": {"type": "string"}}},
        ]
    }
    rule = {"if": condition, "else": {"properties": copy.deepcopy(_STATION_REFS)}}
    if "if" in station:  # the template rule: both must hold
        station.setdefault("allOf", []).append(rule)
    else:
        station.update(rule)


_ANNOTATIONS = ("title", "description", "default", "examples")


def _allow_env_references(root: dict[str, Any], defs: dict[str, Any]) -> None:
    """Every value that is not free text may also be written as a ``${VAR}`` reference."""
    defs["EnvReference"] = copy.deepcopy(ENV_REFERENCE)
    tags = {"type"}  # the device union's discriminator stays a plain const

    def visit(node: dict[str, Any]) -> None:
        for name, prop in (node.get("properties") or {}).items():
            if name in tags and "const" in prop:
                continue
            node["properties"][name] = wrap(prop)
        for key in ("items", "additionalProperties"):
            sub = node.get(key)
            if isinstance(sub, dict):
                node[key] = wrap(sub)

    def wrap(prop: dict[str, Any]) -> dict[str, Any]:
        if "/properties/" in prop.get("$ref", ""):
            return prop  # a template body's key: wrapped where it points
        if not _is_scalar(prop, defs):
            if "properties" not in prop:  # objects are visited through their $defs entry
                visit(prop)
            return prop
        if _takes_any_text(prop, defs):
            return prop
        inner = {k: v for k, v in prop.items() if k not in _ANNOTATIONS}
        branches = inner["anyOf"] if list(inner) == ["anyOf"] else [inner]
        outer = {k: prop[k] for k in _ANNOTATIONS if k in prop}
        return {"anyOf": [*branches, {"$ref": "#/$defs/EnvReference"}], **outer}

    visit(root)
    for name, definition in list(defs.items()):
        if name != "EnvReference":
            visit(definition)


def _is_scalar(node: dict[str, Any], defs: dict[str, Any]) -> bool:
    target = _resolve(node, defs)
    if "anyOf" in target:
        return all(_is_scalar(b, defs) for b in target["anyOf"])
    if "oneOf" in target or "properties" in target or "items" in target:
        return False
    return target.get("type") not in ("object", "array")


def _takes_any_text(node: dict[str, Any], defs: dict[str, Any]) -> bool:
    target = _resolve(node, defs)
    if "anyOf" in target:
        return any(_takes_any_text(b, defs) for b in target["anyOf"])
    constrained = {"pattern", "enum", "const"} & set(target)
    return target.get("type") == "string" and not constrained


if __name__ == "__main__":
    sys.stdout.write(schema_text())
