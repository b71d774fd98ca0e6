"""docs/operator.md has an entry for every alarm the agent can raise, and none it cannot.

The codes are read from the source with ``ast``: the first argument of every call that
raises or clears an alarm (``alarms.raise_("disk_low", ...)``, ``outbox.alarm(...)``,
``clear_alarm(...)``), and the ``(code, message)`` pairs a function about alarms returns (the
journal's ``buffer_damaged``, raised at start). A new alarm without its entry fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernel", "buffer", "sync", "drivers", "edge_agent", "trace_store")
CODE = re.compile(r"^[a-z][a-z0-9_]*$")
"""An alarm code: lower case, words joined by ``_`` (``disk_low``, ``confirm_ahead``)."""
RAISE_OR_CLEAR = frozenset({"raise_", "clear"})


def _called(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _code(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and CODE.match(node.value):
        return node.value
    return None


def alarm_codes() -> dict[str, list[str]]:
    """Alarm code -> where the code raises or clears it (``file:line``)."""
    found: dict[str, list[str]] = {}

    def add(code: str | None, path: Path, line: int) -> None:
        if code is not None:
            found.setdefault(code, []).append(f"{path.relative_to(ROOT)}:{line}")

    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and node.args:
                    name = _called(node)
                    if "alarm" in name or name in RAISE_OR_CLEAR:
                        add(_code(node.args[0]), path, node.lineno)
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    if "alarm" not in node.name:
                        continue
                    for ret in ast.walk(node):
                        if not isinstance(ret, ast.Return) or ret.value is None:
                            continue
                        for pair in ast.walk(ret.value):
                            if isinstance(pair, ast.Tuple) and len(pair.elts) == 2:
                                add(_code(pair.elts[0]), path, pair.lineno)
    return found


def documented_codes() -> set[str]:
    text = (ROOT / "docs" / "operator.md").read_text(encoding="utf-8")
    section = text.split("\n## Alarms\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^### `([a-z0-9_]+)`$", section, flags=re.MULTILINE))


def test_the_scan_finds_the_alarms() -> None:
    codes = alarm_codes()
    # One of each way they are raised: the journal's thread, its start, the uplink.
    assert {"disk_low", "buffer_damaged", "confirm_ahead", "publish_refused"} <= set(codes)


def test_every_alarm_has_its_entry_in_the_operators_page() -> None:
    codes = alarm_codes()
    missing = {code: where for code, where in codes.items() if code not in documented_codes()}
    assert missing == {}, "add a '### `code`' entry under '## Alarms' in docs/operator.md"


def test_every_entry_is_an_alarm_the_agent_raises() -> None:
    assert documented_codes() - set(alarm_codes()) == set()
