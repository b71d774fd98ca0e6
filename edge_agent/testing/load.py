"""Finding and loading test cases: the case file with the agent config's YAML loader
(positions, duplicate keys, ``${VAR}``), its models, then the device map it names (loaded as
``edge-agent validate`` loads it) and the scenario (checked against that map as ``simulate``
checks it), and the expectations against both. Every problem is reported at once as
``file:line:col: key.path: message``, never a traceback.

A case is a file named ``case.yaml`` (the case is its folder: Telegraf's ``testcases/<case>/``)
or any file named ``*.case.yaml`` (several cases side by side, as Redpanda Connect's
``*_test.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edge_agent.config import AgentConfig, load_config
from edge_agent.config.checks import unknown
from edge_agent.config.loader import _booleans_as_numbers, _tidy
from edge_agent.config.messages import found_text, model_issues
from edge_agent.testing.model import COMMON_FIELDS, RECORD_FIELDS, Match, TestCase
from edge_agent.yamlsrc import SourceMap, decode, load_yaml
from kernel.errors import ConfigError, ConfigIssue

CASE_FILE = "case.yaml"
CASE_SUFFIX = ".case.yaml"
UNASSIGNED = "_unassigned"
"""The station of records no station claims (edge_agent.binder)."""


@dataclass(frozen=True)
class CaseRef:
    """A case found on disk, before it is loaded."""

    name: str
    file: Path


@dataclass(frozen=True)
class LoadedCase:
    """A case that passed every check: its config and scenario loaded."""

    ref: CaseRef
    case: TestCase
    config: AgentConfig
    config_file: Path
    scenario: Any
    """A ``simulators.devicemap.LoadedScenario``."""
    lines: dict[int, int] = field(default_factory=dict)
    """Expectation index -> its line in the case file, for the report."""

    @property
    def window(self) -> float:
        """Seconds from the scenario's start the case watches the records."""
        duration: float = self.scenario.scenario.duration
        return min(self.case.within or duration, duration)


@dataclass(frozen=True)
class RefusalCase:
    """A case whose config must be refused (``expect_refused``): loaded, nothing to run."""

    ref: CaseRef
    case: TestCase
    config_file: Path
    issues: list[ConfigIssue] | None
    """The problems the config was refused with, as ``edge-agent validate`` prints them;
    None: it was accepted."""
    line: int = 0
    """The line of ``expect_refused`` in the case file, for the report."""


# ---- finding cases --------------------------------------------------------------------------


def find_cases(paths: Sequence[str | Path]) -> tuple[list[CaseRef], list[ConfigIssue]]:
    """The cases under ``paths`` (files or folders), sorted by name, and the paths that hold
    none (as issues)."""
    found: dict[Path, CaseRef] = {}
    issues: list[ConfigIssue] = []
    for given in paths:
        p = Path(given)
        if p.is_file():
            found.setdefault(p.resolve(), CaseRef(_file_name(p, p.parent), p))
            continue
        if not p.is_dir():
            issues.append(ConfigIssue(str(p), None, None, "", "no such file or folder"))
            continue
        own = p / CASE_FILE
        if own.is_file():
            found.setdefault(own.resolve(), CaseRef(p.resolve().name, own))
            continue
        before = len(found)
        for f in sorted(_case_files(p)):
            found.setdefault(f.resolve(), CaseRef(_file_name(f, p), f))
        if len(found) == before:
            issues.append(
                ConfigIssue(
                    str(p),
                    None,
                    None,
                    "",
                    f"no test case here (folders with a {CASE_FILE}, or *{CASE_SUFFIX} files)",
                )
            )
    return sorted(found.values(), key=lambda c: c.name), issues


def _case_files(root: Path) -> Iterable[Path]:
    for f in root.rglob("*.yaml"):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if f.name == CASE_FILE or f.name.endswith(CASE_SUFFIX):
            yield f


def _file_name(f: Path, root: Path) -> str:
    """``press/ok/case.yaml`` -> ``press/ok``; ``press/ok.case.yaml`` -> ``press/ok``."""
    rel = f.relative_to(root) if f.is_relative_to(root) else Path(f.name)
    if f.name == CASE_FILE:
        rel = rel.parent if rel.parent != Path() else Path(f.resolve().parent.name)
        return rel.as_posix()
    return rel.as_posix().removesuffix(CASE_SUFFIX).removesuffix(".yaml")


def select(cases: Sequence[CaseRef], keywords: Sequence[str] | None) -> list[CaseRef]:
    """``-k``: the cases whose name holds one of ``keywords`` (case aside)."""
    if not keywords:
        return list(cases)
    words = [k.casefold() for k in keywords]
    return [c for c in cases if any(w in c.name.casefold() for w in words)]


# ---- loading a case -------------------------------------------------------------------------


def load_case(ref: CaseRef, env: Mapping[str, str] | None = None) -> LoadedCase | RefusalCase:
    """Read and check one case, its config and its scenario; raise ConfigError listing every
    problem (in the case file, the config file or the scenario file, each where it is)."""
    try:
        raw = ref.file.read_bytes()
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError(
            [ConfigIssue(str(ref.file), None, None, "", f"cannot read: {why}")]
        ) from None
    text, issues = decode(raw, str(ref.file))
    if text is None:
        raise ConfigError(issues)
    return parse_case(text, ref, env)


def parse_case(
    text: str, ref: CaseRef, env: Mapping[str, str] | None = None
) -> LoadedCase | RefusalCase:
    """:func:`load_case` for the text of ``ref.file``."""
    file = str(ref.file)
    data, smap, issues = load_yaml(text, file, env)
    if data is None:
        raise ConfigError(issues)
    if not isinstance(data, dict):
        found = found_text(data, smap, ())
        issues.append(
            smap.issue((), f"expected a mapping (config, scenario, expect), found {found}")
        )
        raise ConfigError(issues)
    _booleans_as_numbers(TestCase, data, (), smap, issues)
    try:
        case = TestCase.model_validate(data)
    except ValidationError as exc:
        issues.extend(model_issues(TestCase, exc, data, smap))
        raise ConfigError(_tidy(issues)) from None
    if issues:
        raise ConfigError(_tidy(issues))
    base = ref.file.parent
    config_file = base / case.config
    if not config_file.is_file():
        issues.append(smap.issue(("config",), f"no such file: {config_file}"))
        raise ConfigError(issues)
    if case.expect_refused is not None:
        try:
            load_config(config_file, env)  # as `edge-agent validate` loads it
        except ConfigError as exc:
            refused: list[ConfigIssue] | None = list(exc.issues)
        else:
            refused = None
        line = smap.locate(("expect_refused",))[0] or 0
        return RefusalCase(ref, case, config_file, refused, line)
    config = load_config(config_file, env)  # its issues name its own file
    scenario = _scenario(case, text, smap, config, base, env)
    issues += [smap.issue(path, msg) for path, msg in check_expectations(case, config)]
    duration = scenario.scenario.duration
    if case.within is not None and case.within > duration:
        issues.append(
            smap.issue(
                ("within",),
                f"{case.within:g} s is past the scenario's end ({duration:g} s), when the "
                "simulated devices stop: give at most its duration, or a longer scenario",
            )
        )
    window = min(case.within or duration, duration)
    for i, e in enumerate(case.expectations):
        if e.within is not None and e.within > window:
            what = "the case's within" if case.within is not None else "the scenario's end"
            issues.append(
                smap.issue(
                    ("expect", i, "within"),
                    f"{e.within:g} s is past {what} ({window:g} s), when the case stops "
                    "watching: give at most that",
                )
            )
    if issues:
        raise ConfigError(_tidy(issues))
    lines = {i: smap.locate(("expect", i))[0] or 0 for i in range(len(case.expectations))}
    return LoadedCase(ref, case, config, config_file, scenario, lines)


def _scenario(
    case: TestCase,
    text: str,
    smap: SourceMap,
    config: AgentConfig,
    base: Path,
    env: Mapping[str, str] | None,
) -> Any:
    from simulators.devicemap import load_scenario, parse_scenario

    assert case.scenario is not None  # the model requires it without expect_refused
    if isinstance(case.scenario, str):
        path = base / case.scenario
        if not path.is_file():
            raise ConfigError([smap.issue(("scenario",), f"no such file: {path}")])
        return load_scenario(path, config, env)
    # Inline: the scenario's own loader on the case file with everything else blanked out,
    # so its messages carry the case file's lines and columns.
    try:
        return parse_scenario(_only_scenario(text), config, str(smap.file), env)
    except ConfigError as exc:
        prefixed = [
            ConfigIssue(
                i.file, i.line, i.column, f"scenario.{i.path}" if i.path else "scenario", i.message
            )
            for i in exc.issues
        ]
        raise ConfigError(prefixed) from None


def _only_scenario(text: str) -> str:
    """``text`` with every character outside the top-level ``scenario:`` value turned into a
    space (line ends kept): the value parses alone, at its own lines and columns."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    assert isinstance(root, yaml.MappingNode)
    node = next(
        v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "scenario"
    )
    start, end = node.start_mark.index, node.end_mark.index
    return "".join(c if start <= i < end or c == "\n" else " " for i, c in enumerate(text))


# ---- the expectations against the config ----------------------------------------------------


def check_expectations(
    case: TestCase, config: AgentConfig
) -> list[tuple[tuple[str | int, ...], str]]:
    """Names an expectation gives that the config does not have, and fields its record kind
    does not carry: such an expectation could never be met."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    stations = [s.name for s in config.stations]
    devices = [d.name for d in config.devices]
    points = sorted({p for d in config.devices for p in d.point_names()})
    for i, e in enumerate(case.expectations):
        at: tuple[str | int, ...] = ("expect", i)
        foreign: set[str] = set()  # fields the kind does not carry: nothing more to say
        if e.kind is not None:
            allowed = (*COMMON_FIELDS, *RECORD_FIELDS.get(e.kind.value, ()))
            foreign = {key for key in e.matchers() if key not in allowed}
            out += [
                (
                    (*at, key),
                    f"a {e.kind.value} record has no field {key!r} "
                    f"(its fields: {', '.join(allowed)})",
                )
                for key in e.matchers()
                if key in foreign
            ]
        for key, known in (("station", stations), ("device", devices)):
            name = _exact_text(getattr(e, key))
            if key not in foreign and name is not None and name not in [*known, UNASSIGNED]:
                out.append(((*at, key), unknown(key, name, known)))
        values = e.values
        if values is not None and values.fields is not None:
            for point in values.fields:
                if point not in points:
                    out.append(((*at, "values", point), unknown("point", point, points)))
    return out


def _exact_text(m: Match | None) -> str | None:
    return m.value if m is not None and m.equal and isinstance(m.value, str) else None
