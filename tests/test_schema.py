"""The config file's JSON Schema: committed and current, named by every config file, complete
enough for an editor (descriptions, examples), and in agreement with the loader."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from edge_agent.config import agent_model, load_config, parse_config
from edge_agent.schema import MODELINE, SCHEMA_FILE, SCHEMA_ID, config_schema, schema_text
from edge_agent.yamlsrc import format_path, load_yaml
from kernel.errors import ConfigError, ConfigIssue

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
SCHEMA_PATH = CONFIG / SCHEMA_FILE
CONFIG_FILES = sorted(p for pattern in ("*.yaml", "*.yml") for p in CONFIG.rglob(pattern))
REGENERATE = "run: python -m edge_agent.schema > config/edge-agent.schema.json"

# Keywords a draft-07 engine (yaml-language-server validates with draft-07 semantics) and a
# 2020-12 validator both understand; anything else an editor would silently ignore.
PORTABLE_KEYWORDS = {
    "$schema", "$id", "$ref", "$defs", "title", "description", "default", "examples",
    "type", "enum", "const", "format", "writeOnly", "readOnly",
    "properties", "required", "additionalProperties", "propertyNames", "minProperties",
    "items", "minItems", "maxItems", "uniqueItems",
    "minLength", "maxLength", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
    "anyOf", "oneOf", "allOf", "not", "if", "then", "else",
}  # fmt: skip


SUBSCHEMA_KEYWORDS = ("items", "additionalProperties", "propertyNames", "not", "if", "then", "else")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return config_schema()


@pytest.fixture(scope="module")
def validators(schema: dict[str, Any]) -> list[Any]:
    """The schema as a 2020-12 validator and as the draft-07 engine editors run."""
    jsonschema = pytest.importorskip("jsonschema")
    return [jsonschema.Draft202012Validator(schema), jsonschema.Draft7Validator(schema)]


def schema_errors(validators: list[Any], data: Any) -> list[str]:
    """Errors of ``data`` under each dialect; both must agree on valid or not."""
    found = [[e.message for e in v.iter_errors(data)] for v in validators]
    assert bool(found[0]) == bool(found[1]), f"2020-12 and draft-07 disagree: {found}"
    return found[0]


def as_written(path: Path) -> Any:
    """The file's data as the loader reads it before expanding templates: what the schema
    describes, and close to what an editor sees."""
    data, _, issues = load_yaml(path.read_text(encoding="utf-8"), str(path), env={})
    assert not issues, [str(i) for i in issues]
    return data


def loader_errors(data: Any) -> list[ConfigIssue]:
    try:
        parse_config(yaml.safe_dump(data, sort_keys=False), "doc.yaml", env={})
    except ConfigError as exc:
        return exc.issues
    return []


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with its ``$ref`` chain merged in (the node's own keys win, as in editors)."""
    while "$ref" in node:
        target: Any = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def all_properties(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, schema) of every property of every model, nested ones included; not the
    property fragments inside if/then/else conditions."""

    def walk(node: Any, label: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if not isinstance(node, dict):
            return
        for name, prop in (node.get("properties") or {}).items():
            yield f"{label}.{name}", prop
            yield from walk(prop, f"{label}.{name}")
        for key in ("items", "additionalProperties"):
            yield from walk(node.get(key), f"{label}[]" if key == "items" else f"{label}.*")
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key) or []:
                if not (isinstance(sub, dict) and set(sub) <= {"if", "then", "else"}):
                    yield from walk(sub, label)

    yield from walk(schema, "(root)")
    for name, definition in schema["$defs"].items():
        yield from walk(definition, name)


def is_leaf(schema: dict[str, Any], prop: dict[str, Any]) -> bool:
    """Not an object with keys of its own, nor a list of such objects."""
    node = resolve(schema, prop)
    branches = [resolve(schema, b) for b in node.get("anyOf", []) + node.get("oneOf", [])]
    for branch in [node, *branches]:
        if "properties" in branch or isinstance(branch.get("additionalProperties"), dict):
            return False
        items = branch.get("items")
        if isinstance(items, dict) and not is_leaf(schema, items):
            return False
    return True


def has_value_hint(schema: dict[str, Any], prop: dict[str, Any]) -> bool:
    node = resolve(schema, prop)
    branches = [node, *(resolve(schema, b) for b in node.get("anyOf", []))]
    return any(k in b for b in branches for k in ("examples", "enum", "const", "default"))


def models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from ``root``'s fields, by class name (pydantic's $defs keys)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation.__name__ not in found:
                found[annotation.__name__] = annotation
                for field in annotation.model_fields.values():
                    visit(field.annotation)
            return
        for arg in getattr(annotation, "__args__", ()) or ():
            visit(arg)
        for meta in getattr(annotation, "__metadata__", ()) or ():
            visit(meta)
        origin = getattr(annotation, "__origin__", None)
        if origin is not None and origin is not annotation:
            visit(origin)

    visit(root)
    return found


# ---- (a) the committed file is current ----------------------------------------------------


def test_committed_schema_is_current() -> None:
    assert SCHEMA_PATH.exists(), REGENERATE
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), REGENERATE


def test_schema_text_is_stable_and_the_module_prints_it() -> None:
    text = schema_text()
    assert text == schema_text()
    assert text.endswith("}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.schema"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    assert proc.stdout == text


# ---- (b) every config file names the schema -----------------------------------------------


def test_there_are_config_files() -> None:
    assert len(CONFIG_FILES) >= 2


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_config_file_starts_with_schema_modeline(path: Path) -> None:
    relative = Path(os.path.relpath(SCHEMA_PATH, path.parent)).as_posix()
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    assert first == f"{MODELINE}{relative}", (
        f"{path.relative_to(ROOT)}: the first line must be exactly {MODELINE}{relative}"
    )
    named = first.removeprefix(MODELINE)
    assert (path.parent / named).resolve() == SCHEMA_PATH.resolve()


# ---- the schema's shape -------------------------------------------------------------------


def test_root_metadata(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID
    assert schema["title"]
    assert "edge-agent validate" in schema["description"]
    assert schema["additionalProperties"] is False
    assert list(schema)[:4] == ["$schema", "$id", "title", "description"]


def test_schema_is_valid_in_both_dialects(schema: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    # yaml-language-server checks a schema against the draft-07 meta-schema before using it.
    jsonschema.Draft7Validator.check_schema(schema)


def test_schema_uses_only_keywords_editors_understand(schema: dict[str, Any]) -> None:
    def keywords(node: Any, path: str) -> Iterator[tuple[str, str]]:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            yield path, key
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    yield from keywords(sub, f"{path}/{key}/{name}")
            elif key in ("anyOf", "oneOf", "allOf"):
                for i, sub in enumerate(value):
                    yield from keywords(sub, f"{path}/{key}/{i}")
            elif key in SUBSCHEMA_KEYWORDS:
                yield from keywords(value, f"{path}/{key}")

    unknown = sorted({f"{p}: {k}" for p, k in keywords(schema, "#") if k not in PORTABLE_KEYWORDS})
    assert not unknown, "\n".join(unknown)
    assert '"discriminator"' not in json.dumps(schema)


def test_models_that_forbid_extra_keys_forbid_them_in_the_schema(schema: dict[str, Any]) -> None:
    root = agent_model()
    found = models(root)
    assert {"AgentConfig", "ModbusTcpDevice", "ModbusPoint", "MqttConfig", "ScanRule"} <= set(found)
    for name, model in found.items():
        if model.model_config.get("extra") != "forbid":
            continue
        node = schema if model is root else schema["$defs"][name]
        assert node["additionalProperties"] is False, name


def test_device_kinds_are_told_apart_by_type(schema: dict[str, Any]) -> None:
    """One ``if type is X then X`` rule per kind: only the entry's own kind is checked, so an
    editor marks the wrong key, not ``type``; ``type`` completes from its enum."""
    items = schema["properties"]["devices"]["items"]
    rules = items["allOf"]
    assert rules
    tags = []
    for rule in rules:
        device = resolve(schema, rule["then"])
        assert rule["if"]["properties"]["type"]["const"] == device["properties"]["type"]["const"]
        tags.append(device["properties"]["type"]["const"])
        # Required unless the entry takes a template (which may give the type).
        assert device["if"] == {"required": ["template"]}
        assert device["else"]["required"][0] == "type"
    assert len(set(tags)) == len(tags)
    assert {"modbus_tcp", "modbus_rtu"} <= set(tags)
    assert items["properties"]["type"]["enum"] == tags


def test_secrets_are_write_only_strings(schema: dict[str, Any]) -> None:
    password = schema["$defs"]["MqttConfig"]["properties"]["password"]
    (secret,) = [b for b in password["anyOf"] if b.get("type") == "string"]
    assert secret["writeOnly"] is True
    assert {"type": "null"} in password["anyOf"]


def test_name_keyed_mappings_check_their_keys(schema: dict[str, Any]) -> None:
    context = schema["$defs"]["StationConfig"]["properties"]["context"]
    assert "patternProperties" not in context
    assert context["propertyNames"]["pattern"] == r"^[A-Za-z_][A-Za-z0-9_.\-]*$"
    assert isinstance(context["additionalProperties"], dict)


def test_factory_defaults_are_shown(schema: dict[str, Any]) -> None:
    defs = schema["$defs"]
    assert defs["ResultConfig"]["properties"]["ok"]["default"] == [1]
    assert defs["ScanRule"]["properties"]["require"]["default"] == []
    assert defs["StationConfig"]["properties"]["context"]["default"] == {}
    assert "default" not in schema["properties"]["mqtt"]  # a section: its keys show theirs


# ---- (c) descriptions and examples --------------------------------------------------------


def test_every_property_has_a_description_and_leaves_a_value_hint(schema: dict[str, Any]) -> None:
    """What an editor shows on hover and offers on completion. Fix an offender in its model:
    ``Field(description=..., examples=[...])``."""
    offenders = []
    for label, prop in all_properties(schema):
        if set(prop) == {"$ref"} and "/properties/" in prop["$ref"]:
            continue  # a template body's key: checked where it points
        node = resolve(schema, prop)
        if not str(node.get("description", "")).strip():
            offenders.append(f"{label}: no description")
        if is_leaf(schema, prop) and not has_value_hint(schema, prop):
            offenders.append(f"{label}: no examples (nor enum, const or default)")
    assert not offenders, f"{len(offenders)} properties:\n" + "\n".join(offenders)


def test_examples_are_valid_values(schema: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    registry = referencing.Registry().with_resource(
        SCHEMA_ID, referencing.jsonschema.DRAFT202012.create_resource(schema)
    )
    bad = []
    for pointer, prop in _pointers(schema):
        for example in prop.get("examples", []):
            check = jsonschema.Draft202012Validator(
                {"$ref": f"{SCHEMA_ID}#{pointer}"}, registry=registry
            )
            errors = [e.message for e in check.iter_errors(example)]
            if errors:
                bad.append(f"{pointer}: example {example!r}: {errors[0]}")
    assert not bad, "\n".join(bad)


def _pointers(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    def walk(node: Any, pointer: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if not isinstance(node, dict):
            return
        for name, prop in (node.get("properties") or {}).items():
            yield f"{pointer}/properties/{name}", prop
            yield from walk(prop, f"{pointer}/properties/{name}")
        for key in ("items", "additionalProperties"):
            yield from walk(node.get(key), f"{pointer}/{key}")
        for key in ("anyOf", "oneOf"):
            for i, sub in enumerate(node.get(key) or []):
                yield from walk(sub, f"{pointer}/{key}/{i}")

    yield from walk(schema, "")
    for name, definition in schema["$defs"].items():
        yield from walk(definition, f"/$defs/{name}")


# ---- (d) the example files: valid for the schema and for the loader -----------------------


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_config_file_is_valid_for_schema_and_loader(path: Path, validators: list[Any]) -> None:
    assert schema_errors(validators, as_written(path)) == []
    assert load_config(path, env={}).devices


# ---- (e) the schema and the loader agree on what is wrong --------------------------------

BASE: dict[str, Any] = {
    "agent": {"site": "plant-lyon", "line": "line3", "id": "line3-pc1"},
    "stations": [
        {"name": "ST10", "context": {"serial": {"device": "press10", "point": "part_serial"}}}
    ],
    "devices": [
        {
            "name": "press10",
            "type": "modbus_tcp",
            "host": "192.168.10.21",
            "points": [
                {"name": "part_serial", "address": 20, "type": "string", "count": 6},
                {"name": "force", "address": 4, "type": "float32", "word_order": "CDAB"},
            ],
        }
    ],
    "mqtt": {"host": "192.168.10.5", "username": "line3-pc1", "password": "s3cret"},
}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change: set the value at a dotted path (list indexes as numbers)."""

    def change(doc: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = doc
        for part in parents:
            node = node[part]
        node[last] = copy.deepcopy(value)

    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = doc
        for part in parents:
            node = node[part]
        del node[last]

    return change


def _apply(*changes: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for change in changes:
        change(doc)
    return doc


TEMPLATED = [
    _set(
        "templates",
        {
            "devices": {
                "press-plc": {
                    "type": "modbus_tcp",
                    "host": "192.168.10.21",
                    "points": BASE["devices"][0]["points"],
                }
            },
            "stations": {"press-station": {"context": {"serial": {"point": "part_serial"}}}},
        },
    ),
    _set("devices", [{"template": "press-plc", "name": "press10", "unit_id": 1}]),
    _set("stations", [{"template": "press-station", "name": "ST10", "device": "press10"}]),
]

VALID = {
    "base": [],
    "templates": TEMPLATED,
    "station default device": [
        _set("stations.0.device", "press10"),
        _set("stations.0.context.serial", {"point": "part_serial"}),
    ],
    "context key set by hand": [_set("stations.0.context.work_order", None)],
    "environment variables": [
        _set("agent.id", "${AGENT_ID:-line3-pc1}"),
        _set("devices.0.host", "${PLC_HOST:-192.168.10.21}"),
        _set("devices.0.port", "${PLC_PORT:-502}"),
        _set("devices.0.points.1.word_order", "${WORD_ORDER:-CDAB}"),
        _set("mqtt.password", "${MQTT_PASSWORD:-s3cret}"),
    ],
    "defaults spelled out": [_set("buffer", {"synchronous": "NORMAL"}), _set("mqtt.qos", 1)],
}

INVALID = {
    "unknown top-level key": [_set("colour", "red")],
    "unknown device key": [_set("devices.0.hots", "192.168.10.22")],
    "unknown point key": [_set("devices.0.points.1.wordorder", "CDAB")],
    "wrong enum": [_set("devices.0.points.1.word_order", "ABDC")],
    "wrong enum in a literal": [_set("buffer", {"synchronous": "OFF"})],
    "wrong type: text for a port": [_set("devices.0.port", "five-oh-two")],
    "wrong type: mapping for a list": [_set("devices.0.points", {})],
    "wrong type: number for a secret": [_set("mqtt.password", 1234)],
    "out of range": [_set("devices.0.unit_id", 256)],
    "name with a space": [_set("stations.0.name", "ST 10")],
    "context key that is no name": [_set("stations.0.context.1st", None)],
    "unknown device type": [_set("devices.0.type", "modbus_xyz")],
    "device without type": [_delete("devices.0.type")],
    "device without host": [_delete("devices.0.host")],
    "no stations": [_set("stations", [])],
    "reference without device, station without one": [
        _set("stations.0.context.serial", {"point": "part_serial"})
    ],
    "template inside a template": [
        *TEMPLATED,
        _set("templates.devices.press-plc.template", "other"),
    ],
    "unknown key in a template": [*TEMPLATED, _set("templates.devices.press-plc.hots", "x")],
}


REPORTED_AT_THE_USE = {"unknown key in a template"}
"""The loader reports a template's mistake at each entry that uses it (on the template's
line); the editor marks the template itself."""


@pytest.mark.parametrize("case", VALID)
def test_schema_and_loader_accept(case: str, validators: list[Any]) -> None:
    doc = _apply(*VALID[case])
    assert loader_errors(doc) == []
    assert schema_errors(validators, doc) == []


@pytest.mark.parametrize("case", INVALID)
def test_schema_and_loader_reject(case: str, validators: list[Any]) -> None:
    """Both reject, and where: the editor's mark is on the key the loader names, or on the
    mapping that holds it (a missing or unknown key)."""
    jsonschema = pytest.importorskip("jsonschema")
    doc = _apply(*INVALID[case])
    issues = loader_errors(doc)
    assert issues, "the loader accepts it"
    assert schema_errors(validators, doc), "the schema accepts it"
    if case in REPORTED_AT_THE_USE:
        return
    for validator in validators:
        error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
        where = format_path(tuple(error.absolute_path))
        assert any(i.path.startswith(where) for i in issues), (where, [str(i) for i in issues])
