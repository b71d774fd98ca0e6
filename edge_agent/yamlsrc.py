"""YAML loading that remembers where every value came from.

PyYAML's composer gives nodes with line marks; we build the plain Python data and, beside
it, a map from key path to (line, column), so any later error (pydantic's or our own
cross-field checks) can name ``file:line`` and the key path the integrator will look for.
Duplicate keys are an error here: PyYAML would silently keep the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from edge_agent.errors import ConfigIssue

Path = tuple[str | int, ...]


@dataclass
class SourceMap:
    """Positions (1-based line and column) of every key and item in one YAML document."""

    file: str
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path) -> tuple[int | None, int | None]:
        """Position of ``path``, or of its nearest ancestor that exists in the file
        (a missing key is reported on the mapping that should hold it)."""
        p = tuple(path)
        while True:
            if p in self.positions:
                return self.positions[p]
            if not p:
                return None, None
            p = p[:-1]

    def issue(self, path: Path, message: str) -> ConfigIssue:
        line, col = self.locate(path)
        return ConfigIssue(self.file, line, col, format_path(path), message)


def format_path(path: Path) -> str:
    """``("devices", 0, "points", 4, "address")`` -> ``devices[0].points[4].address``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Loader(yaml.SafeLoader):
    """SafeLoader: no arbitrary Python objects from a config file."""


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap, list[ConfigIssue]]:
    """Parse one YAML document. Returns (data, source map, issues); data is None when the
    text cannot be parsed at all."""
    smap = SourceMap(file)
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        what = " ".join(s for s in (exc.context, exc.problem) if s) or "invalid YAML"
        return None, smap, [ConfigIssue(file, line, col, "", f"YAML syntax: {what}")]
    except yaml.YAMLError as exc:  # e.g. a second document in the stream
        return None, smap, [ConfigIssue(file, None, None, "", f"YAML syntax: {exc}")]
    if node is None:
        return None, smap, [ConfigIssue(file, 1, 1, "", "the file is empty")]
    issues: list[ConfigIssue] = []
    data = _build(node, (), smap, issues, _Loader(""))
    return data, smap, issues


def _build(
    node: yaml.Node, path: Path, smap: SourceMap, issues: list[ConfigIssue], ctor: _Loader
) -> Any:
    smap.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        ctor.flatten_mapping(node)  # resolves YAML merge keys (<<: *anchor)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = ctor.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                issues.append(
                    ConfigIssue(
                        smap.file,
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                        format_path(path),
                        f"keys must be plain words, not {type(key).__name__}",
                    )
                )
                continue
            if not isinstance(key, str):
                key = str(key)
            child = (*path, key)
            if key in out:
                first = smap.positions.get(child, (None, None))[0]
                issues.append(
                    ConfigIssue(
                        smap.file,
                        key_node.start_mark.line + 1,
                        key_node.start_mark.column + 1,
                        format_path(child),
                        f"duplicate key (first given on line {first})",
                    )
                )
                continue
            smap.positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _build(value_node, child, smap, issues, ctor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), smap, issues, ctor) for i, item in enumerate(node.value)]
    return ctor.construct_object(node, deep=True)
