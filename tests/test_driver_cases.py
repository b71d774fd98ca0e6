"""Every driver kind's own sample config and test cases, found through the registry.

A kind ships ``drivers/<kind>/sample.yaml`` (a complete config that validates) and
``drivers/<kind>/testcases/<case>/`` folders, each a ``config.yaml`` and an ``expected.txt``
holding either ``OK`` or the exact problems ``edge-agent validate`` prints, one a line (the
file named ``config.yaml``). A new case costs a folder, not code (Telegraf's testcases).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers import registry
from edge_agent.config import load_config, parse_config
from kernel.errors import ConfigError

KINDS = registry.kinds()
SAMPLES = [k.folder / "sample.yaml" for k in KINDS]
CASES = sorted(case for k in KINDS for case in (k.folder / "testcases").glob("*/"))


def test_every_kind_ships_a_sample_and_test_cases() -> None:
    for kind in KINDS:
        assert (kind.folder / "sample.yaml").is_file(), kind.type
        assert list((kind.folder / "testcases").glob("*/config.yaml")), kind.type


@pytest.mark.parametrize("path", SAMPLES, ids=[k.type for k in KINDS])
def test_sample_config_is_valid_and_uses_its_kind(path: Path) -> None:
    cfg = load_config(path)
    kind = path.parent.name
    folders = {k.type: k.folder.name for k in KINDS}
    assert kind in {folders[d.type] for d in cfg.devices}


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.parent.name}/{c.name}" for c in CASES])
def test_case(case: Path) -> None:
    expected = (case / "expected.txt").read_text().strip().splitlines()
    text = (case / "config.yaml").read_text()
    if expected == ["OK"]:
        parse_config(text, "config.yaml")
        return
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "config.yaml")
    assert [str(i) for i in caught.value.issues] == expected
