"""JSON Schema of scenario files, for editors: ``python -m simulators.devicemap.schema >
config/scenario.schema.json`` (a test fails when the committed file is stale). A scenario
file names it on its first line::

    # yaml-language-server: $schema=scenario.schema.json

The loader stays the authority: it also checks the scenario against the agent's config
(points that exist, values that fit their types), which a schema cannot.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from edge_agent.schema import _name_keyed_mapping, _subschemas
from simulators.devicemap.scenario import Scenario

SCHEMA_FILE = "scenario.schema.json"
SCHEMA_ID = "urn:edge-agent:scenario"


def scenario_schema() -> dict[str, Any]:
    raw = Scenario.model_json_schema(mode="validation", by_alias=True)
    for node in _subschemas(raw):
        _name_keyed_mapping(node)  # device, point and station names check their keys
    defs = raw.get("$defs", {})
    # A plain value is a constant (PointScript's "before" validator): say so to the editor.
    script = defs.pop("PointScript")
    defs["PointScriptMapping"] = script
    defs["PointScript"] = {
        "description": script.get("description", ""),
        "anyOf": [
            {"type": "boolean"},
            {"type": "number"},
            {"type": "string"},
            {"$ref": "#/$defs/PointScriptMapping"},
        ],
    }
    body = {k: v for k, v in raw.items() if k not in ("title", "description", "$defs")}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "edge-agent simulate scenario",
        "description": raw.get("description", ""),
        **body,
        "$defs": defs,
    }


def schema_text() -> str:
    return json.dumps(scenario_schema(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_text())
