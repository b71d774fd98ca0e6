"""The rules file (``edge-agent trace-store --rules FILE``; docs/quality.md, "Rules").

Every problem is found when the store starts and named like the agent's configuration errors,
``FILE:LINE: PATH: problem`` (``rules.yaml:14: rules[2].threshold: must be above 0 and at
most 1``), all of them at once. The YAML is composed with PyYAML's node tree so each key keeps
its line; only plain YAML types are accepted (no tags), and a key written twice is an error
rather than the last one silently winning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from trace_store.quality.rules import (
    KINDS,
    RUN_TESTS,
    ConsecutiveNok,
    Cpk,
    NokRate,
    Rule,
    RunRules,
    Where,
)

Path_ = tuple[str | int, ...]
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
COMMON = {"id", "kind", "where", "webhook"}
FIELDS: dict[str, set[str]] = {
    "nok_rate": {"per", "threshold", "window_parts", "window_minutes", "min_parts"},
    "consecutive_nok": {"count"},
    "run_rules": {"value", "center", "sigma", "tests"},
    "cpk": {"value", "parts", "min", "lower", "upper"},
}


class RulesError(ValueError):
    """The rules file is wrong; the message lists every problem, one per line."""


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    webhook: str | None  # for every rule without its own


def load_rules(path: str | Path) -> RuleSet:
    """Read and check the rules file. Raises RulesError naming file:line for each problem."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"{name}: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RulesError(f"{name}{line}: not valid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise RulesError(f"{name}: not valid YAML: {exc}") from exc
    checker = _Checker(name)
    data = checker.plain(node, ()) if node is not None else None
    rules = checker.rule_set(data)
    if checker.problems:
        raise RulesError("\n".join(checker.problems))
    return rules


class _Checker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: dict[Path_, int] = {}
        self.problems: list[str] = []
        self._constructor = SafeConstructor()

    def problem(self, path: Path_, text: str) -> None:
        line = None
        for n in range(len(path), -1, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                break
        where = f"{self.name}:{line}" if line is not None else self.name
        self.problems.append(f"{where}: {_dotted(path) or '(top)'}: {text}")

    # ---- YAML nodes -> plain data, remembering lines -------------------------------------------

    def plain(self, node: yaml.Node, path: Path_) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problem(path, "keys must be plain text")
                    continue
                key = str(key_node.value)
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                if key in out:
                    self.problem((*path, key), "written twice")
                    continue
                out[key] = self.plain(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.plain(item, (*path, i)) for i, item in enumerate(node.value)]
        try:
            return self._constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            self.problem(path, f"not a plain YAML value ({exc.problem})")
            return None

    # ---- checks --------------------------------------------------------------------------------

    def rule_set(self, data: Any) -> RuleSet:
        if not isinstance(data, dict):
            self.problem((), "expected a mapping with 'rules:'")
            return RuleSet((), None)
        for extra in sorted(set(data) - {"rules", "webhook"}):
            self.problem((extra,), "unknown key (expected rules, webhook)")
        webhook = self.url(data, ("webhook",))
        items = data.get("rules")
        if not isinstance(items, list) or not items:
            self.problem(("rules",), "expected a list of rules")
            return RuleSet((), webhook)
        rules: list[Rule] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            rule = self.rule(item, ("rules", i))
            if rule is None:
                continue
            if rule.id in seen:
                self.problem(("rules", i, "id"), f"id {rule.id!r} used twice")
            seen.add(rule.id)
            rules.append(rule)
        return RuleSet(tuple(rules), webhook)

    def rule(self, item: Any, path: Path_) -> Rule | None:
        if not isinstance(item, dict):
            self.problem(path, "expected a mapping (id, kind, ...)")
            return None
        before = len(self.problems)
        rule_id = item.get("id")
        if not isinstance(rule_id, str) or not ID.fullmatch(rule_id):
            self.problem((*path, "id"), "required: 1-64 letters, digits, '_', '.', '-'")
        kind = item.get("kind")
        if kind not in KINDS:
            self.problem((*path, "kind"), f"required: one of {', '.join(KINDS)}")
            return None
        for extra in sorted(set(item) - COMMON - FIELDS[kind]):
            self.problem((*path, extra), f"unknown key for a {kind} rule")
        where = self.where(item.get("where"), (*path, "where"))
        common: dict[str, Any] = {"id": rule_id, "where": where}
        common["webhook"] = self.url(item, (*path, "webhook"))
        rule: Rule | None = None
        if kind == "nok_rate":
            per = item.get("per", "station")
            if per not in ("lot", "station", "product"):
                self.problem((*path, "per"), "one of lot, station, product")
            window = self.integer(item, path, "window_parts", 50, 1)
            minutes = self.number(item, path, "window_minutes", None, 0.0)
            rule = NokRate(
                **common,
                per=str(per),
                threshold=self.fraction(item, path, "threshold"),
                window_parts=window,
                window_minutes=minutes,
                min_parts=self.integer(item, path, "min_parts", min(10, window), 1),
            )
        elif kind == "consecutive_nok":
            rule = ConsecutiveNok(**common, count=self.integer(item, path, "count", 3, 1))
        elif kind == "run_rules":
            tests = item.get("tests", ["we1", "we2", "we3", "we4"])
            if not isinstance(tests, list) or not tests or any(t not in RUN_TESTS for t in tests):
                self.problem((*path, "tests"), f"a list of {', '.join(RUN_TESTS)}")
                tests = []
            sigma = self.number(item, path, "sigma", None, 0.0)
            if sigma is None:
                self.problem((*path, "sigma"), "required: the process's standard deviation")
            center = self.number(item, path, "center", None, None)
            if center is None:
                self.problem((*path, "center"), "required: the process's centre line")
            rule = RunRules(
                **common,
                value=self.value_name(item, path),
                center=center or 0.0,
                sigma=sigma or 1.0,
                tests=tuple(str(t) for t in tests),
            )
        else:
            lower = self.number(item, path, "lower", None, None)
            upper = self.number(item, path, "upper", None, None)
            if lower is not None and upper is not None and lower >= upper:
                self.problem((*path, "upper"), "must be above lower")
            rule = Cpk(
                **common,
                value=self.value_name(item, path),
                parts=self.integer(item, path, "parts", 30, 2),
                min=self.number(item, path, "min", 1.33, 0.0) or 1.33,
                lower=lower,
                upper=upper,
            )
        return rule if len(self.problems) == before else None

    def where(self, value: Any, path: Path_) -> Where:
        if value is None:
            return Where()
        if not isinstance(value, dict):
            self.problem(path, "expected a mapping of station, line, product, lot")
            return Where()
        for extra in sorted(set(value) - {"station", "line", "product", "lot"}):
            self.problem((*path, extra), "unknown key (station, line, product, lot)")
        texts: dict[str, str | None] = {}
        for key in ("station", "line", "product", "lot"):
            got = value.get(key)
            if got is not None and (not isinstance(got, str | int) or isinstance(got, bool)):
                self.problem((*path, key), "expected a text")
                got = None
            texts[key] = None if got is None else str(got)
        return Where(**texts)

    def url(self, item: dict[str, Any], path: Path_) -> str | None:
        value = item.get(str(path[-1]))
        if value is None:
            return None
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            self.problem(path, "expected an http:// or https:// URL")
            return None
        return value

    def value_name(self, item: dict[str, Any], path: Path_) -> str:
        value = item.get("value")
        if not isinstance(value, str) or not value:
            self.problem((*path, "value"), "required: the part record's value name")
            return ""
        return value

    def integer(self, item: dict[str, Any], path: Path_, key: str, default: int, low: int) -> int:
        value = item.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self.problem((*path, key), f"expected a whole number of at least {low}")
            return default
        return value

    def number(
        self,
        item: dict[str, Any],
        path: Path_,
        key: str,
        default: float | None,
        above: float | None,
    ) -> float | None:
        value = item.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem((*path, key), "expected a number")
            return default
        if above is not None and value <= above:
            self.problem((*path, key), f"must be above {above:g}")
            return default
        return float(value)

    def fraction(self, item: dict[str, Any], path: Path_, key: str) -> float:
        value = item.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            self.problem(
                (*path, key), "required: a fraction from 0 up to (not including) 1, e.g. 0.05"
            )
            return 0.5
        return float(value)


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out
