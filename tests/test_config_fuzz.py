"""Property tests of the config loader: whatever a file says, ``parse_config`` answers with an
AgentConfig or a ConfigError whose every issue names the file and says something, never
another exception, and quickly.

Inputs: arbitrary text, arbitrary YAML documents, the example configs mutated (as data and
as text), and anchor/alias constructs up to "billion laughs" bombs. Runs are derandomized
(the same examples on every run, no example database) so CI is reproducible; a failure
prints the shrunk input to paste into a regression test.
"""

from __future__ import annotations

import copy
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import yamlsrc
from edge_agent.config import AgentConfig, parse_config
from kernel.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {p.name: p.read_text(encoding="utf-8") for p in sorted(ROOT.glob("config/**/*.yaml"))}
EXAMPLE_DATA = {name: yaml.safe_load(text) for name, text in EXAMPLES.items()}

FILE = "fuzz.yaml"
DEADLINE = 2.0
"""Seconds one parse may take, whatever the input (a real config takes milliseconds)."""
ENV = {"PLC_GATEWAY": "10.1.3.50", "MQTT_PASSWORD": "s3cret", "EMPTY": ""}
"""The environment ``${VAR}`` reads: fixed, so the machine's own cannot change a result."""

FUZZ = settings(
    derandomize=True, database=None, deadline=timedelta(seconds=DEADLINE), print_blob=False
)
"""Reproducible: the same examples on every run and machine, nothing stored between runs.
Every strategy passes Hypothesis's health checks as is, so none is suppressed."""


def check(text: str) -> AgentConfig | ConfigError:
    """The property: an AgentConfig, or a ConfigError with located, non-empty issues, in time.
    Any other exception propagates and fails the test."""
    start = time.monotonic()
    try:
        result: AgentConfig | ConfigError = parse_config(text, FILE, env=ENV)
    except ConfigError as exc:
        result = exc
    elapsed = time.monotonic() - start
    assert elapsed < DEADLINE, f"parse took {elapsed:.2f} s"
    if isinstance(result, ConfigError):
        assert result.issues, "a ConfigError without issues"
        for issue in result.issues:
            assert issue.file == FILE, issue
            assert isinstance(issue.message, str), issue
            assert issue.message.strip(), issue
            assert issue.line is None or issue.line >= 1, issue
            assert issue.column is None or issue.column >= 1, issue
        assert str(result)
    else:
        assert isinstance(result, AgentConfig)
    return result


# ---- building blocks ---------------------------------------------------------------------

YAML_CHARS = [
    *":-?,[]{}#&*!|>'\"%@`\\ \t\n\r",
    *"\x00\x07\x1b\x85\xa0\u2028\ufeff\U0001f600",
    "\ud800",  # lone surrogates: a str can hold them, a file cannot
    "\udfff",
]
TOKENS = [
    "agent:", "stations:", "devices:", "mqtt:", "buffer:", "templates:", "points:",
    "name: ", "type: ", "modbus_tcp", "host: ", "address: ", "template: ", "device: ",
    "- ", ": ", "\n", "\n  ", "\n    ", "  ", "\t", "{", "}", "[", "]", ", ", "#",
    "&a ", "*a", "&b ", "*b", "<<: ", "<<: *a", "? ", "!!int ", "!!str ", "!!binary ",
    "!!python/object:os.system ", "!custom ", "---\n", "...\n", "%YAML 1.1\n", "|\n", ">-\n",
    "'", '"', "${PLC_GATEWAY}", "${UNSET}", "${EMPTY:-x}", "$${", "${", "~", "null",
    "yes", "on", "0x1F", "0o17", "1e400", ".nan", "-.inf", "2024-05-01", "9" * 5000,
    "ST10", "press10", "\u00e9", "\u2028",
]  # fmt: skip
REAL_KEYS = sorted(
    {
        "agent", "site", "line", "id", "stations", "name", "device", "context", "serial",
        "lot", "scans", "sources", "rules", "regex", "gs1", "require", "set", "consume",
        "part", "trigger", "point", "edge", "snapshot", "points", "counter", "result", "ok",
        "nok", "limits", "min", "max", "cycle_time", "handshake", "taken", "devices", "type",
        "host", "port", "unit_id", "station", "timeout", "poll_interval", "address",
        "table", "count", "bit", "word_order", "scale", "offset", "unit", "report",
        "buffer", "path", "synchronous", "mqtt", "username", "password", "password_file",
        "control", "socket", "templates", "template", "<<",
    }
)  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            *("modbus_tcp", "holding", "coil", "float32", "string", "CDAB", "FULL", "rising"),
            *("${PLC_GATEWAY}", "${UNSET}", "${", "$${x}", "${EMPTY:-d}", "ST10", "press10"),
            *("/dev/zero", "/nonexistent/secret", "", " ", "yes", "0012", "2024-05-01"),
        ]
    ),
)
keys = st.one_of(st.sampled_from(REAL_KEYS), st.text(max_size=12))


def trees(max_leaves: int = 25) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=5), st.dictionaries(keys, children, max_size=5)
        ),
        max_leaves=max_leaves,
    )


def nested_junk(depth: int, leaf: Any) -> Any:
    """``depth`` levels of alternating lists and mappings around ``leaf``."""
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"junk": leaf}
    return leaf


def dump(data: Any, flow: bool | None) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=flow)


def all_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``node``, the root included."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += all_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += all_paths(v, (*prefix, i))
    return out


def at(node: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def swapped(value: Any) -> Any:
    """The value as another YAML type: the mistakes people make (quoted numbers, a scalar for
    a list, a list for a mapping, ...)."""
    if isinstance(value, bool):
        return "yes" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return [value] if not value.isdigit() else int(value)
    if isinstance(value, list):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, dict):
        return list(value.values())
    return ""


MUTATIONS = ["delete", "replace", "rename", "duplicate", "swap", "junk"]


@st.composite
def mutated_examples(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(sorted(EXAMPLE_DATA)))
    doc: Any = copy.deepcopy(EXAMPLE_DATA[name])
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(all_paths(doc)))
        op = draw(st.sampled_from(MUTATIONS))
        if not path:
            if op in ("replace", "swap", "junk"):
                doc = draw(trees()) if op == "replace" else swapped(doc)
            continue
        parent, key = at(doc, path[:-1]), path[-1]
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(trees(10))
        elif op == "rename" and isinstance(parent, dict):
            new = draw(keys)
            items = [(new if k == key else k, v) for k, v in parent.items()]
            parent.clear()
            parent.update(items)
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif op == "swap":
            parent[key] = swapped(parent[key])
        elif op == "junk":
            parent[key] = nested_junk(draw(st.integers(5, 120)), draw(scalars))
    return dump(doc, draw(st.sampled_from([None, False, True])))


TEXT_MUTATIONS = ["delete", "insert", "replace", "drop_line", "copy_line", "swap_lines", "indent"]


@st.composite
def mutated_example_texts(draw: st.DrawFn) -> str:
    text = EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))]
    for _ in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(TEXT_MUTATIONS))
        lines = text.split("\n")
        i = draw(st.integers(0, max(0, len(text) - 1)))
        n = draw(st.integers(0, len(lines) - 1))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 40)) :]
        elif op == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS + YAML_CHARS)) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(st.sampled_from(YAML_CHARS)) + text[i + 1 :]
        elif op == "drop_line":
            text = "\n".join(lines[:n] + lines[n + 1 :])
        elif op == "copy_line":
            text = "\n".join(lines[: n + 1] + lines[n:])
        elif op == "swap_lines":
            m = draw(st.integers(0, len(lines) - 1))
            lines[n], lines[m] = lines[m], lines[n]
            text = "\n".join(lines)
        else:
            shift = draw(st.integers(-4, 4))
            line = lines[n]
            lines[n] = " " * shift + line if shift >= 0 else line[min(-shift, len(line)) :]
            text = "\n".join(lines)
    return text


# ---- (a) arbitrary text --------------------------------------------------------------------


@settings(FUZZ, max_examples=300)
@given(st.text(alphabet=st.one_of(st.sampled_from(YAML_CHARS), st.characters()), max_size=200))
def test_arbitrary_text(text: str) -> None:
    check(text)


@settings(FUZZ, max_examples=300)
@given(st.lists(st.sampled_from(TOKENS + YAML_CHARS), max_size=60).map("".join))
def test_yaml_token_soup(text: str) -> None:
    check(text)


# ---- (b) arbitrary YAML documents ----------------------------------------------------------


@settings(FUZZ, max_examples=200)
@given(
    st.one_of(trees(40), st.dictionaries(st.sampled_from(REAL_KEYS), trees(), max_size=8)),
    st.sampled_from([None, False, True]),
)
def test_arbitrary_yaml_documents(data: Any, flow: bool | None) -> None:
    check(dump(data, flow))


# ---- (c) the examples, mutated ------------------------------------------------------------


def test_examples_load() -> None:
    assert EXAMPLES
    for text in EXAMPLES.values():
        assert isinstance(check(text), AgentConfig)


@settings(FUZZ, max_examples=200)
@given(mutated_examples())
def test_mutated_examples(text: str) -> None:
    check(text)


@settings(FUZZ, max_examples=200)
@given(mutated_example_texts())
def test_mutated_example_texts(text: str) -> None:
    check(text)


# ---- (d) anchors, aliases and bombs -------------------------------------------------------

ALIAS_TRICKS = [
    "loop: &loop [*loop]",
    "loop_map: &lm {k: *lm}",
    "loop_merge: &mm {<<: *mm}",
    "scalar: &s x\nuses: [*s, *s, *s]",
    "base: &base {a: 1}\nmerged: {<<: [*base, *base], b: 2}",
    "bad_merge: {<<: [1, 2]}",
    "alias_key: {*s : v}",
    "undefined: *nowhere",
    "anchored_key: {&k key: v, other: *k}",
    "empty_anchor: &e\nuse: *e",
    "stations: &st [{name: ST10}]\nagain: *st",
]


@st.composite
def alias_documents(draw: st.DrawFn) -> str:
    """A chain of anchors, each level ``width`` aliases of the one below (at most ~50k values
    here: the big bombs are the explicit tests below), used under a real key, plus tricks."""
    depth, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    as_map = draw(st.booleans())
    lines = ["x-base: &l0 " + ("{v: x}" if as_map else "[x]")]
    for i in range(1, depth + 1):
        refs = [f"*l{i - 1}"] * width
        body = ", ".join(f"k{j}: {r}" for j, r in enumerate(refs)) if as_map else ", ".join(refs)
        lines.append(f"x-l{i}: &l{i} " + ("{" + body + "}" if as_map else "[" + body + "]"))
    target = draw(
        st.sampled_from(
            [
                "stations: *l{d}",
                "devices: *l{d}",
                "agent: *l{d}",
                "mqtt: {{password: *l{d}}}",
                "templates: {{devices: {{t: *l{d}}}}}",
                "stations: [{{name: ST10, context: *l{d}}}]",
            ]
        )
    )
    lines.append(target.format(d=depth))
    lines += draw(st.lists(st.sampled_from(ALIAS_TRICKS), max_size=3, unique=True))
    return "\n".join(lines) + "\n"


@settings(FUZZ, max_examples=60)
@given(alias_documents())
def test_anchors_and_aliases(text: str) -> None:
    check(text)


def laughs(depth: int, width: int = 9, mapping: bool = False, indent: str = "") -> str:
    """Billion laughs: level i is ``width`` aliases of level i-1, so the last expands to
    width**depth values from a few hundred bytes of text."""
    first = "{" + ", ".join(f"k{j}: lol" for j in range(width)) + "}" if mapping else "[lol]"
    lines = [f"{indent}l0: &l0 {first}"]
    for i in range(1, depth):
        refs = [f"*l{i - 1}"] * width
        body = ", ".join(f"k{j}: {r}" for j, r in enumerate(refs)) if mapping else ", ".join(refs)
        lines.append(f"{indent}l{i}: &l{i} " + ("{" + body + "}" if mapping else f"[{body}]"))
    return "\n".join(lines) + "\n"


HEAD = "agent: {site: plant-lyon, line: line3, id: pc1}\nstations: [{name: ST10}]\n"
BOMBS = {
    "list 9^9": laughs(9),
    "mapping 9^9": laughs(9, mapping=True),
    "wide 1000^3": laughs(3, width=1000),
    "in devices": HEAD
    + "x-bomb:\n"
    + laughs(9, indent="  ")
    + "devices: [{name: plc, type: modbus_tcp, host: h, points: *l8}]\n",
    "in a context": HEAD.replace("[{name: ST10}]", "[{name: ST10, context: *l8}]").replace(
        "stations", "x-bomb:\n" + laughs(9, mapping=True, indent="  ") + "stations", 1
    ),
}


@pytest.mark.parametrize("name", BOMBS)
def test_alias_bomb_is_refused_in_time(name: str) -> None:
    result = check(BOMBS[name])
    assert isinstance(result, ConfigError)


def just_under_the_cap(document: str) -> str:
    """``document`` with ``BIG`` replaced by a list of about 99% of the loader's expansion cap
    in values, so the loader builds all of it: the slowest input aliases allow."""
    per_item = 1 + 2 * 999  # a list of 999 one-element lists
    items = int(yamlsrc.MAX_VALUES * 0.99) // per_item
    big = "[" + ", ".join(["*many"] * items) + "]"
    anchors = "x-one: &one [lol]\nx-many: &many [" + ", ".join(["*one"] * 999) + "]\n"
    return anchors + document.replace("BIG", big)


@pytest.mark.parametrize(
    "document",
    [
        "x-big: BIG\n",
        HEAD.replace("[{name: ST10}]", "BIG"),
        HEAD + "devices: [{name: plc, type: modbus_tcp, host: h, points: BIG}]\n",
    ],
    ids=["unused", "as stations", "as points"],
)
def test_alias_bomb_just_under_the_cap_is_answered_in_time(document: str) -> None:
    assert isinstance(check(just_under_the_cap(document)), ConfigError)


TEMPLATE_BOMB = (
    HEAD
    + "templates:\n  devices:\n    t:\n      type: modbus_tcp\n"
    + laughs(6, indent="      ")
    + "devices:\n"
    + "".join(f"  - {{template: t, name: d{i}, host: h, port: {1000 + i}}}\n" for i in range(20))
)
"""A template holding 9**6 values through aliases, used by 20 entries: expanding templates
copies it 20 times."""


def test_alias_bomb_in_a_template_used_many_times() -> None:
    result = check(TEMPLATE_BOMB)
    assert isinstance(result, ConfigError)


def test_deep_nesting() -> None:
    for text in (
        "a: " + "[" * 5000 + "]" * 5000,
        "a: " + "{a: " * 3000 + "x" + "}" * 3000,
        "a:\n" + "".join(" " * i + "- \n" for i in range(1, 400)),
        HEAD + "devices: " + "[" * 100 + "]" * 100,
    ):
        assert isinstance(check(text), ConfigError)


# ---- found by the properties above: the shortest inputs, kept as regressions --------------

FOUND = {
    "!!int with no digits": "a: !!int\n",
    "!!float with no digits": "a: !!float\n",
    "!!bool that is no bool": "a: !!bool maybe\n",
    "a templated entry missing a required key": HEAD.replace("[{name: ST10}]", "[{}]")
    + "templates:\n  devices:\n    t: {type: modbus_tcp, host: h, points: "
    + "[{name: p, address: 0, type: uint16}]}\n"
    + "devices: [{template: t}]\n",
}


@pytest.mark.parametrize("name", FOUND)
def test_found_by_fuzzing(name: str) -> None:
    assert isinstance(check(FOUND[name]), ConfigError)
