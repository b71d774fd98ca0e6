"""The rules of the config file as a whole, as test cases beside the checks.

``edge_agent/config/testcases/<case>/`` holds, like each kind's ``drivers/<kind>/testcases/``,
a ``config.yaml``, an ``expected.txt`` (``OK`` or the exact lines ``edge-agent validate``
prints for a file named ``config.yaml``) and a ``rule.txt`` (the rule in words).
docs/configuration.md shows every case as a rule, so what it says ``validate`` prints is
what this test sees it print.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers import registry
from edge_agent.config import parse_config
from edge_agent.docgen import CORE_CASES, render, rule_cases
from kernel.errors import ConfigError

CASES = sorted(CORE_CASES.glob("*/"))


def test_there_are_core_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Path) -> None:
    expected = (case / "expected.txt").read_text().strip().splitlines()
    text = (case / "config.yaml").read_text()
    if expected == ["OK"]:
        parse_config(text, "config.yaml", env={})
        return
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "config.yaml", env={})
    assert [str(i) for i in caught.value.issues] == expected


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_core_case_says_its_rule_in_words(case: Path) -> None:
    words = (case / "rule.txt").read_text().strip()
    assert words.endswith("."), "a rule is a sentence"


def test_every_failing_case_is_a_rule_in_the_reference() -> None:
    doc = render()
    rules = doc.split("## Rules `validate` enforces beyond the types\n", 1)[1]
    folders = [folder for _, folder in rule_cases()]
    assert CORE_CASES in folders
    assert {k.folder / "testcases" for k in registry.kinds()} <= set(folders)
    for folder in folders:
        for case in folder.glob("*/"):
            expected = (case / "expected.txt").read_text().strip().splitlines()
            if expected == ["OK"]:
                continue
            for line in expected:
                message = line.split(": ", 1)[1]  # validate's line after config.yaml:L:C
                assert f"  {message}\n" in rules, f"{case}: {line}"
