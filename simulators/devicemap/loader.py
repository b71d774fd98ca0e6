"""Loading a scenario file: the agent config's YAML loader (positions, duplicate keys, tags,
``${VAR}``), the scenario's models, then the checks against the agent's config; every
problem reported at once as ``file:line:col: key.path: message``, never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from edge_agent.config import AgentConfig
from edge_agent.config.loader import _booleans_as_numbers, _tidy
from edge_agent.config.messages import found_text, model_issues
from edge_agent.yamlsrc import decode, load_yaml
from kernel.errors import ConfigError, ConfigIssue
from simulators.devicemap.checks import check_scenario
from simulators.devicemap.cycle import CycleRoles
from simulators.devicemap.scenario import Scenario


@dataclass(frozen=True)
class LoadedScenario:
    """A scenario that passed every check, with its part cycles' points resolved."""

    scenario: Scenario
    file: str
    roles: dict[str, CycleRoles] = field(default_factory=dict)


def load_scenario(
    path: str | Path, config: AgentConfig, env: Mapping[str, str] | None = None
) -> LoadedScenario:
    """Read, validate and check a scenario file against ``config``; raise ConfigError
    listing every problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue(str(p), None, None, "", f"cannot read: {why}")]) from None
    text, issues = decode(raw, str(p))
    if text is None:
        raise ConfigError(issues)
    return parse_scenario(text, config, str(p), env)


def parse_scenario(
    text: str, config: AgentConfig, file: str = "<scenario>", env: Mapping[str, str] | None = None
) -> LoadedScenario:
    """:func:`load_scenario` for text."""
    data, smap, issues = load_yaml(text, file, env)
    if data is None:
        raise ConfigError(issues)
    if not isinstance(data, dict):
        found = found_text(data, smap, ())
        issues.append(smap.issue((), f"expected a mapping (duration, points, ...), found {found}"))
        raise ConfigError(issues)
    _booleans_as_numbers(Scenario, data, (), smap, issues)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        issues.extend(model_issues(Scenario, exc, data, smap))
        raise ConfigError(_tidy(issues)) from None
    checked = check_scenario(scenario, config)
    for path, message in checked.issues:
        if path[-1:] == ("constant",) and path not in smap.positions:
            path = path[:-1]  # a plain value: `force: 20.5` is the constant
        if not smap.is_reported(path):
            issues.append(smap.issue(path, message))
    if issues:
        raise ConfigError(_tidy(issues))
    return LoadedScenario(scenario, file, checked.roles)
