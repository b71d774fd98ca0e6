"""docs/trace-store.md lists every reason the trace store can reject a message for, with the
class its log line shows, and no reason the store does not have.

The reasons are read from the code twice: the ``Reason`` enum (what the ``rejected`` table,
the counters and the log can hold) and every ``Reason.X`` the store's modules name (what
they really raise), so a reason added in either place without its row fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from trace_store.envelope import Reason, reason_class

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "trace-store.md"


def rejection_table() -> dict[str, str]:
    """reason -> class, from the table of the doc's "Rejection" section."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Rejection\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| ([a-z_]+) \|", section, flags=re.MULTILINE)
    return dict(rows)


def reasons_named_in_code() -> set[str]:
    named: set[str] = set()
    for path in sorted((ROOT / "trace_store").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "Reason"
            ):
                named.add(Reason[node.attr].value)
    return named


def test_the_code_raises_reasons() -> None:
    named = reasons_named_in_code()
    assert {"oversized", "store_error", "seq_order"} <= named
    assert named <= {r.value for r in Reason}


def test_every_reason_has_its_row_with_its_class() -> None:
    table = rejection_table()
    for reason in Reason:
        assert reason.value in table, f"docs/trace-store.md: no row for {reason.value!r}"
        assert table[reason.value] == reason_class(reason), reason.value


def test_every_documented_reason_exists() -> None:
    assert set(rejection_table()) == {r.value for r in Reason} | reasons_named_in_code()
