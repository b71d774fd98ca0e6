"""JSON Schema of test case files, for editors: ``python -m edge_agent.testing.schema >
config/testcase.schema.json`` (a test fails when the committed file is stale), or
``edge-agent test --schema``. A case file names it on its first line::

    # yaml-language-server: $schema=testcase.schema.json

An inline scenario is checked by the scenario's schema, carried inside. The loader stays the
authority: it also checks the case against its config (stations, devices and points that
exist, fields a record kind has), which a schema cannot.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from edge_agent.testing.model import MATCH_KEYS, TestCase

SCHEMA_FILE = "testcase.schema.json"
SCHEMA_ID = "urn:edge-agent:testcase"

_SCALARS: list[dict[str, Any]] = [
    {"type": "boolean"},
    {"type": "number"},
    {"type": "string"},
    {"type": "null"},
]


def testcase_schema() -> dict[str, Any]:
    from simulators.devicemap.schema import scenario_schema

    raw = TestCase.model_json_schema(mode="validation", by_alias=True)
    defs: dict[str, Any] = raw.pop("$defs")
    form = defs["Match"]
    props = {k: v for k, v in form["properties"].items() if k in MATCH_KEYS}
    # The forms the loader takes (Match's "before" validator), as an editor can check them.
    defs["MatchForm"] = {
        "description": "`{value: V, tolerance: T}`, `{min: A, max: B}` or `{pattern: REGEX}`.",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "minProperties": 1,
    }
    defs["Match"] = {
        "description": form["description"],
        "anyOf": [
            *_SCALARS,
            {"type": "array", "items": {"anyOf": _SCALARS[:3]}},
            {"$ref": "#/$defs/MatchForm"},
            {
                "description": "A mapping: each key matched as written (a key other than "
                f"{', '.join(sorted(MATCH_KEYS))} makes it one).",
                "type": "object",
                "additionalProperties": {"$ref": "#/$defs/Match"},
                "not": {"propertyNames": {"enum": sorted(MATCH_KEYS)}},
            },
        ],
    }
    count = defs["Count"]
    defs["Count"] = {
        "description": count["description"],
        "anyOf": [
            {"type": "integer", "minimum": 0},
            {
                **{k: v for k, v in count.items() if k not in ("title", "description")},
                "minProperties": 1,
            },
        ],
    }
    scenario = scenario_schema()
    for name, body in scenario["$defs"].items():
        assert name not in defs, f"{name} is defined by both schemas"
        defs[name] = body
    defs["Scenario"] = {
        k: v for k, v in scenario.items() if k not in ("$schema", "$id", "title", "$defs")
    }
    raw["properties"]["scenario"] = {
        "description": raw["properties"]["scenario"]["description"],
        "anyOf": [{"type": "string", "minLength": 1}, {"$ref": "#/$defs/Scenario"}],
        "examples": raw["properties"]["scenario"].get("examples", []),
    }
    body = {k: v for k, v in raw.items() if k not in ("title", "description")}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "edge-agent test case",
        "description": raw.get("description", "")
        + " Checked by `edge-agent test` (docs/testing-configs.md).",
        **body,
        "$defs": defs,
    }


def schema_text() -> str:
    return json.dumps(testcase_schema(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_text())
