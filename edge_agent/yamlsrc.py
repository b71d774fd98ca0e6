"""YAML loading that remembers where every value came from.

PyYAML's composer gives nodes with line marks; we build the plain Python data and, beside
it, a map from key path to (line, column), so any later error (pydantic's or our own
cross-field checks) can name ``file:line:col`` and the key path the integrator will look for.

What a person can type is refused with a located issue, never a traceback: duplicate keys
(PyYAML would silently keep the last one), tags other than plain YAML types (the loader is
safe, so ``!!python/object`` is an error, not an object), tabs, numbers too long to convert,
documents that expand without bound through aliases, unset environment variables.

Environment variables are substituted in string values after parsing (``${VAR}``,
``${VAR:-default}``, ``$${`` for a literal ``${``), so line numbers stay right and a
variable's value can never inject YAML syntax.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kernel.errors import ConfigIssue

Path = tuple[str | int, ...]

MAX_VALUES = 1_000_000
"""Values (scalars, lists, mappings) one document may expand to, aliases included."""
MAX_DEPTH = 64
"""Nesting depth of lists and mappings; a config needs a handful."""

_YAML = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_YAML + t for t in ("null", "bool", "int", "float", "str", "timestamp"))
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class SourceMap:
    """Positions (1-based line and column) of every key and item in one YAML document.

    ``links`` maps values that were not written where their path says to where they were:
    the keys a device took from a template, the station device a reference defaulted to. A
    lookup under a linked path follows the link, and an issue there names its note.
    ``plain`` keeps the text of unquoted scalars YAML read as something other than a string
    (``on`` -> true, ``0012`` -> 10), so a message can show what was typed. ``reported``
    holds values already reported while loading (an unset variable, a refused tag), whose
    consequences later checks should not report again.
    """

    file: str
    positions: dict[Path, tuple[int, int]] = field(default_factory=dict)
    links: dict[Path, tuple[Path, str | None]] = field(default_factory=dict)
    plain: dict[Path, str] = field(default_factory=dict)
    reported: set[Path] = field(default_factory=set)

    def link(self, path: Path, source: Path, note: str | None) -> None:
        """The value at ``path`` was written at ``source`` (and ``note`` says why)."""
        self.links[tuple(path)] = (tuple(source), note)

    def source(self, path: Path) -> Path:
        """Where the value at ``path`` was written, following links (at most a few)."""
        p = tuple(path)
        for _ in range(8):
            for n in range(len(p), 0, -1):
                hit = self.links.get(p[:n])
                if hit is not None:
                    p = hit[0] + p[n:]
                    break
            else:
                return p
        return p

    def locate(self, path: Path) -> tuple[int | None, int | None]:
        """Position of ``path``, or of its nearest ancestor that exists in the file
        (a missing key is reported on the mapping that should hold it)."""
        p = tuple(path)
        while True:
            pos = self.positions.get(self.source(p))
            if pos is not None:
                return pos
            if not p:
                return None, None
            p = p[:-1]

    def note(self, path: Path) -> str | None:
        """Why the value at ``path`` (or an ancestor) was not written there, if it was not."""
        for n in range(len(path), 0, -1):
            hit = self.links.get(tuple(path[:n]))
            if hit is not None and hit[1] is not None:
                return hit[1]
        return None

    def raw(self, path: Path) -> str | None:
        """The text of ``path`` if it was an unquoted non-string scalar."""
        return self.plain.get(self.source(path))

    def issue(self, path: Path, message: str) -> ConfigIssue:
        line, col = self.locate(path)
        shown = format_path(path)
        note = self.note(path)
        if note is not None:
            shown = f"{shown} ({note})"
        return ConfigIssue(self.file, line, col, shown, message)

    def is_reported(self, path: Path) -> bool:
        """Whether ``path`` or an ancestor was reported while loading."""
        for p in (tuple(path), self.source(path)):
            if any(p[:n] in self.reported for n in range(len(p) + 1)):
                return True
        return False


def format_path(path: Path) -> str:
    """``("devices", 0, "points", 4, "address")`` -> ``devices[0].points[4].address``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def position_in(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of character ``index`` of ``text``."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def decode(raw: bytes, file: str) -> tuple[str | None, list[ConfigIssue]]:
    """Config bytes as text; a byte that is not UTF-8 is an issue at its line and column."""
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = raw[exc.start : exc.start + 1].hex()
        msg = f"not UTF-8 text (byte 0x{byte}); save the file as UTF-8"
        return None, [ConfigIssue(file, line, col, "", msg)]


class _Loader(yaml.SafeLoader):
    """SafeLoader: no arbitrary Python objects from a config file."""


def load_yaml(
    text: str, file: str, env: Mapping[str, str] | None = None
) -> tuple[Any, SourceMap, list[ConfigIssue]]:
    """Parse one YAML document. Returns (data, source map, issues); data is None when the
    text cannot be used at all. ``env`` (default: ``os.environ``) is what ``${VAR}`` reads."""
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
        return None, smap, [ConfigIssue(file, line, col, "", _syntax_message(exc))]
    except yaml.reader.ReaderError as exc:  # a control character, e.g. NUL
        line, col = position_in(text, exc.position)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        what = f"control character U+{code:04X} is not allowed in YAML"
        return None, smap, [ConfigIssue(file, line, col, "", what)]
    except yaml.YAMLError as exc:
        return None, smap, [ConfigIssue(file, 1, 1, "", f"YAML syntax: {exc}")]
    except RecursionError:
        return None, smap, [ConfigIssue(file, 1, 1, "", "YAML nested too deeply")]
    if node is None:
        return None, smap, [ConfigIssue(file, 1, 1, "", "the file is empty")]
    if expanded_size(node, MAX_VALUES) > MAX_VALUES:
        what = f"the document expands to more than {MAX_VALUES} values through its aliases"
        return None, smap, [ConfigIssue(file, 1, 1, "", what)]
    builder = _Builder(smap, os.environ if env is None else env)
    data = builder.build(node, ())
    if data is None and not builder.issues:
        return None, smap, [ConfigIssue(file, 1, 1, "", "the file is empty")]
    return data, smap, builder.issues


def expanded_size(root: yaml.Node, limit: int) -> int:
    """How many values ``root`` stands for once every alias is expanded (at most limit + 1).

    Counted on the node graph, where an alias is one shared node, so a billion laughs costs
    a few hundred steps, not a billion. Iterative: nesting depth cannot overflow the stack.
    An alias back into its own ancestor counts once (the builder reports it).
    """
    size: dict[int, int] = {}
    expanding: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            size[key] = 1
            continue
        children = [v for _, v in node.value] if isinstance(node, yaml.MappingNode) else node.value
        if done:
            total = 1
            for child in children:
                total = min(limit + 1, total + size.get(id(child), 1))
            size[key] = total
            expanding.discard(key)
        elif key not in size and key not in expanding:
            expanding.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children)
    return size[id(root)]


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    what = " ".join(s for s in (exc.context, exc.problem) if s) or "invalid YAML"
    if "'\\t'" in what:
        return "YAML syntax: a tab character; YAML indents (and separates) with spaces only"
    if "mapping values are not allowed here" in what:
        what += " (check this line's indentation, or quote a value that contains ': ')"
    return f"YAML syntax: {what}"


def _tag(tag: str) -> str:
    return "!!" + tag[len(_YAML) :] if tag.startswith(_YAML) else tag


class _Builder:
    """Plain data from a node graph, recording positions and refusing what a config cannot
    hold. Mapping keys are the text written (``on:`` is the key 'on', not True). An alias
    yields the value its anchor built (shared, not copied; nothing changes data in place),
    and the source map links it there."""

    def __init__(self, smap: SourceMap, env: Mapping[str, str]) -> None:
        self.smap = smap
        self.env = env
        self.issues: list[ConfigIssue] = []
        self.ctor = _Loader("")
        self.open: set[int] = set()  # collection nodes being built: an alias back is a loop
        self.built: dict[int, tuple[Path, Any]] = {}  # collection node -> (first path, value)

    def _issue(self, node: yaml.Node, path: Path, message: str) -> None:
        self.smap.reported.add(path)
        mark = node.start_mark
        self.issues.append(
            ConfigIssue(self.smap.file, mark.line + 1, mark.column + 1, format_path(path), message)
        )

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.smap.positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if len(path) > MAX_DEPTH:
            self._issue(node, path, f"nested more than {MAX_DEPTH} levels deep")
            return None
        if id(node) in self.open:
            self._issue(node, path, "an alias that contains itself")
            return None
        if id(node) in self.built:  # an alias: the same value, located where it was written
            first, value = self.built[id(node)]
            self.smap.link(path, first, None)
            return value
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                value = self._mapping(node, path)
            elif node.tag != _YAML + "seq":
                self._issue(node, path, _tag_refused(node.tag))
                value = None
            else:
                value = [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(id(node))
        self.built[id(node)] = (path, value)
        return value

    def _mapping(self, node: yaml.MappingNode, path: Path) -> Any:
        if node.tag != _YAML + "map":
            self._issue(node, path, _tag_refused(node.tag))
            return None
        own = {id(k) for k, _ in node.value if k.tag != _YAML + "merge"}
        try:
            self.ctor.flatten_mapping(node)  # resolves YAML merge keys (<<: *anchor)
        except yaml.MarkedYAMLError as exc:
            self._issue(node, path, f"YAML merge key: {exc.problem}")
            return None
        out: dict[str, Any] = {}
        explicit: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self._issue(key_node, path, "keys must be plain words, not lists or mappings")
                continue
            if key_node.tag not in _SCALAR_TAGS:
                self._issue(key_node, path, _tag_refused(key_node.tag))
                continue
            key = key_node.value
            child = (*path, key)
            mark = key_node.start_mark
            if key in out:
                if id(key_node) in own and key in explicit:
                    first = self.smap.positions.get(child, (None, None))[0]
                    self._issue(key_node, child, f"duplicate key (first given on line {first})")
                    continue
                # A key given beside a merge (<<) overrides the merged one, as YAML says.
                for p in [p for p in self.smap.positions if p[: len(child)] == child]:
                    del self.smap.positions[p]
            if id(key_node) in own:
                explicit.add(key)
            self.smap.positions[child] = (mark.line + 1, mark.column + 1)
            out[key] = self.build(value_node, child)
        return out

    def _scalar(self, node: yaml.ScalarNode, path: Path) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self._issue(node, path, _tag_refused(node.tag))
            return None
        if node.tag == _YAML + "timestamp":
            return node.value  # no dates in a config: keep the text (e.g. a lot '2024-05-01')
        if node.tag == _YAML + "str":
            return self._substitute(node, path)
        try:
            value = self.ctor.construct_object(node, deep=True)
        except Exception:  # e.g. int() refuses > 4300 digits; '!!int ""' is an IndexError
            text: str = node.value
            if len(text) > 1000:
                self._issue(node, path, f"a number with too many digits ({len(text)})")
            else:
                self._issue(node, path, f"cannot read {text!r} as {_tag(node.tag)}")
            return None
        if node.style is None:
            self.smap.plain[path] = node.value
        return value

    def _substitute(self, node: yaml.ScalarNode, path: Path) -> str:
        text: str = node.value
        if "$" not in text:
            return text
        out: list[str] = []
        i = 0
        while True:
            j = text.find("$", i)
            if j < 0:
                out.append(text[i:])
                break
            out.append(text[i:j])
            if text.startswith("$${", j):
                out.append("${")
                i = j + 3
                continue
            if not text.startswith("${", j):
                out.append("$")
                i = j + 1
                continue
            end = text.find("}", j + 2)
            if end < 0:
                self._issue(node, path, "'${' without a closing '}' (write $${ for a literal ${)")
                out.append(text[j:])
                break
            out.append(self._variable(node, path, text[j + 2 : end]))
            i = end + 1
        return "".join(out)

    def _variable(self, node: yaml.ScalarNode, path: Path, body: str) -> str:
        name, sep, default = body.partition(":-")
        if not _ENV_NAME.fullmatch(name):
            self._issue(
                node,
                path,
                f"'${{{body}}}' is not a variable reference: write ${{NAME}} or "
                "${NAME:-default} (or $${ for a literal ${)",
            )
            return ""
        value = self.env.get(name)
        if sep:
            return value if value else default
        if value is None:
            self._issue(
                node,
                path,
                f"environment variable {name!r} is not set "
                f"(use ${{{name}:-default}} for a default)",
            )
            return ""
        return value


def _tag_refused(tag: str) -> str:
    return (
        f"tag {_tag(tag)!r} is not allowed: a config holds plain values (text, numbers, "
        "true/false, lists, mappings)"
    )
