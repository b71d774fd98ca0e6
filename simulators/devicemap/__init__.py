"""Simulate any device map: every device an agent config reads, served from the config's own
addresses, types, word orders and node ids, and driven by a scenario file (values, part
cycles, faults, scans and loads at given moments). ``edge-agent simulate --config``; see
docs/simulate.md.

The modules, each with one job:

- :mod:`.kinds`: the contract with each kind's simulator (``drivers/<kind>/simulator.py``).
- :mod:`.scenario`: the scenario file's models; :mod:`.schema` its JSON Schema.
- :mod:`.checks`: a scenario against the agent's config; :mod:`.loader` reads a file.
- :mod:`.signals`: scripts as functions of time; :mod:`.cycle`: a station's part cycle.
- :mod:`.world`: the scenario while it plays; :mod:`.runtime`: :class:`Simulation`.
- :mod:`.streams`: a device on a byte link (serial, TCP), for the kinds that send text.
- :mod:`.overrides`: the agent's config pointed at the simulators.

The names below are imported on first use: ``drivers/<kind>/simulator.py`` imports
:mod:`.kinds`, and must not pull in ``edge_agent`` (the loader's) through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulators.devicemap.cycle import CycleRoles, PartCycle, PartTruth
    from simulators.devicemap.kinds import ActiveFault, Endpoint, KindSimulator, ValueSpec, World
    from simulators.devicemap.loader import LoadedScenario, load_scenario, parse_scenario
    from simulators.devicemap.overrides import apply_overrides, overridden_text, write_config
    from simulators.devicemap.runtime import Happened, Simulation
    from simulators.devicemap.scenario import Scenario
    from simulators.devicemap.world import ScriptedWorld, Write

_EXPORTS = {
    "CycleRoles": "cycle",
    "PartCycle": "cycle",
    "PartTruth": "cycle",
    "ActiveFault": "kinds",
    "Endpoint": "kinds",
    "KindSimulator": "kinds",
    "ValueSpec": "kinds",
    "World": "kinds",
    "LoadedScenario": "loader",
    "load_scenario": "loader",
    "parse_scenario": "loader",
    "apply_overrides": "overrides",
    "overridden_text": "overrides",
    "write_config": "overrides",
    "Happened": "runtime",
    "Simulation": "runtime",
    "Scenario": "scenario",
    "ScriptedWorld": "world",
    "Write": "world",
}

__all__ = [
    "ActiveFault",
    "CycleRoles",
    "Endpoint",
    "Happened",
    "KindSimulator",
    "LoadedScenario",
    "PartCycle",
    "PartTruth",
    "Scenario",
    "ScriptedWorld",
    "Simulation",
    "ValueSpec",
    "World",
    "Write",
    "apply_overrides",
    "load_scenario",
    "overridden_text",
    "parse_scenario",
    "write_config",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
