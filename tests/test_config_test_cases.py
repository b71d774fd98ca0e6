"""``edge-agent test``: integrators' config test cases run through the real agent, the
simulators and a broker. The repository's own examples (ci/) pass when run by the commands
their pipeline files give; a case that fails on purpose reports its diff word for word; an
expectation that cannot be met fails at its deadline; bad case files are file:line errors;
the matchers and the assignment of records to expectations are tables."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.testing import schema as case_schema
from edge_agent.testing.command import run_cases
from edge_agent.testing.junit import junit_xml
from edge_agent.testing.load import (
    CaseRef,
    LoadedCase,
    find_cases,
    load_case,
    parse_case,
    select,
)
from edge_agent.testing.matching import Tally, misses
from edge_agent.testing.model import Expectation, Match
from kernel.errors import ConfigError

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / "ci"
CASES = ROOT / "tests" / "config_test_cases"
SCHEMA_PATH = ROOT / "config" / "testcase.schema.json"
DOC = ROOT / "docs" / "testing-configs.md"
DOCUMENTED = [
    "edge-agent validate ci/lines/*.yaml",
    "edge-agent test ci/tests --junit-xml report.xml",
]
"""The commands docs/testing-configs.md and ci/README.md give a pipeline."""


def cli(*args: str, cwd: Path = ROOT, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def runnable(ref: CaseRef) -> LoadedCase:
    """A case that runs (not one that expects its config refused)."""
    case = load_case(ref)
    assert isinstance(case, LoadedCase)
    return case


def normalized(text: str) -> str:
    """Seqs depend on how the stations' records interleave: the rest does not."""
    return re.sub(r"seq \d+", "seq N", text)


# ---- the repository's examples, as their pipeline runs them ----------------------------------


def pipeline_commands() -> dict[str, list[str]]:
    """The edge-agent commands of each pipeline file in ci/, in order."""
    github = yaml.safe_load((CI / "github-actions.yml").read_text())
    steps = github["jobs"]["config-tests"]["steps"]
    gh = [line for s in steps for line in str(s.get("run", "")).splitlines()]
    gitlab = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    gl = list(gitlab["edge-agent-config-tests"]["script"])
    return {
        name: [c.strip() for c in lines if c.strip().startswith("edge-agent ")]
        for name, lines in (("github-actions.yml", gh), ("gitlab-ci.yml", gl))
    }


def test_pipeline_files_run_the_documented_commands() -> None:
    assert pipeline_commands() == {"github-actions.yml": DOCUMENTED, "gitlab-ci.yml": DOCUMENTED}
    for doc in (DOC, CI / "README.md"):
        text = doc.read_text()
        for command in DOCUMENTED:
            assert command in text, f"{doc.name} does not show {command!r}"
    assert "edge-agent test ci/tests --junit-xml report.xml" in (ROOT / "README.md").read_text()


def test_the_examples_pass_when_run_as_the_pipeline_runs_them(tmp_path: Path) -> None:
    """Each command of the pipeline, in a checkout of the integrator's layout (ci/ copied),
    the glob expanded by a shell as on the CI runner; then the JUnit XML as a pipeline's
    test view reads it. The ten-station line takes seconds."""
    shutil.copytree(CI, tmp_path / "ci")
    for command in DOCUMENTED:
        argv = shlex.split(command)
        assert argv[0] == "edge-agent"
        script = f"{shlex.quote(sys.executable)} -m edge_agent.cli {' '.join(argv[1:])}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=200,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    report = ET.parse(tmp_path / "report.xml").getroot()
    assert report.tag == "testsuites"
    assert (report.get("tests"), report.get("failures"), report.get("errors")) == ("6", "0", "0")
    cases = {str(c.get("name")): c for c in report.iter("testcase")}
    expected = sorted(p.name for p in (CI / "tests").iterdir() if (p / "case.yaml").is_file())
    assert sorted(cases) == expected
    for name, case in cases.items():
        assert case.get("file") == f"ci/tests/{name}/case.yaml"
        assert case.find("failure") is None
        assert case.find("error") is None
        assert "agent line" in (case.findtext("system-out") or "")  # the agent's own log
    ten = float(cases["line5-ten-stations"].get("time") or 0)
    print(f"ten-station case: {ten:.1f} s")
    assert ten < 15, f"the ten-station case took {ten:.1f} s"


# ---- a failing case, a case that cannot be met -------------------------------------------------

FAILING_DIFF = """\
{file}:18: expect[1] (wrong result and force): no record matches
  expected: part at ST20: serial 'SN000002', result 'nok', values {{final_force: 25 ± 0.5, final_depth: 12.25}}
  nearest:  seq N part at ST20: serial 'SN000002', result 'ok'
    result:             expected 'nok', got 'ok'
    values.final_force: expected 25 ± 0.5, got 20.5

{file}:24: expect[2]: no record matches
  expected: context at ST10: key 'lot', value '0043'
  nearest:  seq N context at ST10: lot null -> '0042'
    value: expected '0043', got '0042'

{file}:25: expect[3] (too few parts): expected exactly 5 matching record(s), found 2
  expected: part at ST10
  found:    seq N part at ST10: serial 'SN000001', result 'ok'
            seq N part at ST10: serial 'SN000002', result 'ok'

{file}:26: expect[4] (no scan expected): expected no matching record(s), found 1
  expected: scan
  found:    seq N scan at ST10: status 'accepted', text 'L0042'

{file}:27: expect[5] (a serial that never comes): no record matches
  expected: part at ST20: serial text matching /XX\\d+/
  nearest:  seq N part at ST20: serial 'SN000001', result 'ok'
    serial: expected text matching /XX\\d+/, got 'SN000001'"""


async def test_a_failing_case_reports_each_miss_with_the_nearest_record() -> None:
    refs, missing = find_cases([CASES / "failing"])
    assert missing == []
    case = runnable(refs[0])
    [result] = await run_cases([case], jobs=1)
    assert result.status == "failed"
    # The window is the scenario time that really passed: 2.5 s, more on a loaded machine.
    shown = re.fullmatch(
        r"5 of 6 expectation\(s\) not met in (\d+\.\d) s \((\d+) record\(s\) from the agent\)",
        result.message,
    )
    assert shown is not None, result.message
    assert 2.5 <= float(shown[1]) < 4.0, result.message
    assert int(shown[2]) == result.records
    diff = normalized("\n\n".join(result.details))
    assert diff == FAILING_DIFF.format(file=CASES / "failing" / "case.yaml")
    # The pipeline's test view: one testcase, failed, its message and diff, the agent's log.
    root = ET.fromstring(junit_xml([result], result.seconds))
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("1", "1", "0")
    [element] = root.iter("testcase")
    assert element.get("name") == "failing"
    failure = element.find("failure")
    assert failure is not None
    assert failure.get("message") == result.message
    assert "values.final_force: expected 25 ± 0.5, got 20.5" in (failure.text or "")
    assert " INFO " in (element.findtext("system-out") or "")  # the case's agent log


async def test_an_expectation_that_cannot_be_met_fails_at_its_deadline() -> None:
    """within: 1.5 s of a 6.5 s scenario: the verdict comes at 1.5 s, a failure (not an
    error), with the record that came closest."""
    [ref] = select(find_cases([CASES])[0], ["unmet"])
    case = runnable(ref)
    assert case.window == 1.5
    [result] = await run_cases([case], jobs=1)
    assert result.status == "failed", result.message
    shown = re.match(r"1 of 1 expectation\(s\) not met in (\d+\.\d) s", result.message)
    assert shown is not None, result.message
    assert 1.5 <= float(shown[1]) < 3.0, result.message
    assert result.seconds < 1.5 + 6, f"took {result.seconds:.1f} s"
    [block] = result.details
    assert "serial: expected 'SN999999', got 'SN000001'" in block


async def test_each_expectation_has_its_own_deadline() -> None:
    """within per expectation: a record made after it does not count for it (the report
    says when it was made), a count looks only at the records made before it."""
    [ref] = select(find_cases([CASES])[0], ["deadlines"])
    [result] = await run_cases([runnable(ref)], jobs=1)
    assert result.status == "failed", result.message
    assert result.message.startswith("1 of 4 expectation(s) not met in "), result.message
    [block] = result.details
    head, expected, nearest, why = block.splitlines()
    assert head == f"{ref.file}:14: expect[2] (third part too early): no record matches within 2 s"
    assert expected == "  expected: part at ST10: serial 'SN000003'"
    assert "serial 'SN000003'" in nearest
    made = re.fullmatch(
        r"    matches, but it was made (\d+\.\d\d) s after the start, past its within \(2 s\)",
        why,
    )
    assert made is not None, why
    assert 2.5 < float(made[1]) < 4.5


def test_a_count_and_a_deadline_over_records_with_times() -> None:
    """Pure matching: records by their ts from the scenario's start."""
    start = 1_800_000_000.0

    def at(seq: int, t: float, serial: str) -> dict[str, Any]:
        ts = datetime.fromtimestamp(start + t, UTC).isoformat().replace("+00:00", "Z")
        return {**part(seq, "ST10", serial), "ts": ts}

    expect = expectations(
        {"kind": "part", "serial": "SN2", "within": 1.0},
        {"kind": "part", "count": 0, "within": 0.5},
        {"kind": "part", "count": {"min": 2}, "within": 2.5},
    )
    tally = Tally(expect, start=start)
    tally.add([at(1, 0.7, "SN1"), at(2, 1.7, "SN2"), at(3, 2.7, "SN3")])
    assert [(o.met, len(o.matched)) for o in tally.outcomes()] == [(False, 0), (True, 0), (True, 2)]
    assert not tally.settled(now=1.2)  # SN2 may still be on its way (a margin past 1 s)
    assert [o.settled for o in tally.outcomes(now=1.2)] == [False, True, True]
    assert tally.settled(now=2.0)


def test_cases_that_expect_the_config_refused(tmp_path: Path) -> None:
    """expect_refused: the config is loaded as validate loads it, nothing runs. Refused as
    expected passes; a config accepted, or refused for something else, fails with the
    problems shown; the JUnit report has them all."""
    xml = tmp_path / "r.xml"
    done = cli("test", str(CASES), "-k", "refused", "--junit-xml", str(xml), timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    out = done.stdout
    assert "PASSED refused (" in out
    assert "FAILED refused-wrongly (" in out
    assert f"the config {CASES / '../../ci/lines/line3.yaml'} was accepted" in out
    assert f"{CASES / 'refused-wrongly.case.yaml'}:4: expect_refused: expected a problem " \
        "matching /unit_id/; validate found none" in out  # fmt: skip
    assert "FAILED refused-otherwise (" in out
    assert "1 of 2 pattern(s) match none of its 1 problem(s)" in out
    assert "expect_refused: no problem matches /unit_id .* out of range/" in out
    assert "devices[0].poll_interval: poll_interval 0.2 s is shorter than timeout 1.0 s" in out
    report = ET.parse(xml).getroot()
    assert (report.get("tests"), report.get("failures"), report.get("errors")) == ("3", "2", "0")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("config: ../../ci/lines/line3.yaml\nexpect_refused: x\nexpect: [{kind: part}]\n",
         "a case with expect_refused runs nothing: leave out expect"),
        ("config: ../../ci/lines/line3.yaml\nscenario: {duration: 3}\n",
         "give expect (or expect_refused: the config must be refused)"),
        ("config: ../../ci/lines/line3.yaml\nexpect_refused: '(x'\n",
         "'(x' is not a regular expression"),
        ("config: ../../ci/lines/line3.yaml\nscenario: {duration: 3}\nwithin: 2\n"
         "expect: [{kind: part, within: 2.5}]\n",
         "4:23: expect[0].within: 2.5 s is past the case's within (2 s), when the case stops "
         "watching: give at most that"),
    ],
)  # fmt: skip
def test_refusal_and_deadline_mistakes(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_case(text, CaseRef("x", CASES / "x.case.yaml"))
    assert message in str(err.value)


async def test_a_case_that_cannot_start_is_an_error_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Devices not up in time (here: no time at all): the case is an error naming them, its
    simulators and agent stopped, and it is a JUnit error, not a failure."""
    from edge_agent.testing import run

    monkeypatch.setattr(run, "STARTUP_LIMIT", 0.0)
    [ref] = select(find_cases([CASES])[0], ["unmet"])
    [result] = await run_cases([runnable(ref)], jobs=1)
    assert result.status == "error"
    assert result.message.startswith("device(s) not up 0 s after the start: press10 (starting: ")
    root = ET.fromstring(junit_xml([result], result.seconds))
    assert (root.get("failures"), root.get("errors")) == ("0", "1")


# ---- bad input ----------------------------------------------------------------------------------

LINE3 = "../../ci/lines/line3.yaml"
BAD_CASES: dict[str, tuple[str, list[str]]] = {
    "keys-and-values": (
        f"config: {LINE3}\nscenario: {{duration: 3}}\nexpect:\n"
        "  - {kind: prat, serail: x}\n"
        "  - {kind: part, count: -1, values: {final_force: {value: 2, tolerance: -1}}}\n"
        "  - {kind: part, serial: {value: SN1, pattern: 'SN.*'}}\n",
        [
            "4:6: expect[0].kind: unknown value 'prat'; expected one of readings, reading, "
            "context, context_restored, scan, consumption, part, gap, unobserved, gate; did you mean "
            "'part'?",
            "4:18: expect[0].serail: unknown key 'serail'; did you mean 'serial'?",
            "5:18: expect[1].count: expected at least 0, found -1",
            "5:62: expect[1].values.final_force.tolerance: expected at least 0, found -1",
            "6:18: expect[2].serial: give one of value, min/max, pattern or contains; "
            "found value, pattern",
        ],
    ),
    "names-and-fields": (
        f"config: {LINE3}\nscenario: {{duration: 3}}\nwithin: 5\nexpect:\n"
        "  - {kind: gap, station: ST11, result: ok}\n"
        "  - {kind: part, values: {final_forse: 20}}\n",
        [
            "3:1: within: 5 s is past the scenario's end (3 s), when the simulated devices "
            "stop: give at most its duration, or a longer scenario",
            "5:17: expect[0].station: unknown station 'ST11'; did you mean 'ST10'?",
            "5:32: expect[0].result: a gap record has no field 'result' (its fields: station, "
            "ctx, previous, counter, missed)",
            "6:27: expect[1].values.final_forse: unknown point 'final_forse'; did you mean "
            "'final_force'?",
        ],
    ),
    "inline-scenario": (
        f"config: {LINE3}\nscenario:\n  duration: 3\n  points:\n    press10: {{final_forse: 1}}\n"
        "expect: [{kind: part}]\n",
        [
            "5:15: scenario.points.press10.final_forse: unknown point of 'press10' "
            "'final_forse'; did you mean 'final_force'?",
        ],
    ),
    "missing-config": (
        "config: ../lines/line9.yaml\nscenario: {duration: 3}\nexpect: [{kind: part}]\n",
        ["1:1: config: no such file: {dir}/../lines/line9.yaml"],
    ),
}


def test_bad_case_files_are_file_line_errors_exit_2_and_junit_errors(tmp_path: Path) -> None:
    cases = tmp_path / "cases"
    for name, (text, _) in BAD_CASES.items():
        (cases / name).mkdir(parents=True)
        (cases / name / "case.yaml").write_text(text.replace("../../ci", str(CI)))
    bad_config = tmp_path / "cases" / "bad-config"
    bad_config.mkdir()
    (bad_config / "line.yaml").write_text(
        (CI / "lines" / "line5.yaml").read_text().replace("unit_id: 3,", "unit_id: 300,")
    )
    (bad_config / "case.yaml").write_text(
        "config: line.yaml\nscenario: {duration: 3}\nexpect: [{kind: part}]\n"
    )
    done = cli("test", str(cases), "--junit-xml", str(tmp_path / "r.xml"), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    for name, (_, issues) in BAD_CASES.items():
        file = cases / name / "case.yaml"
        expected = [f"{file}:{i.format(dir=file.parent)}" for i in issues]
        expected.append(f"{file}: {len(issues)} problem(s); case {name} not run")
        got = [line for line in lines if line.startswith(str(file))]
        assert got == expected, "\n".join(got)
    # The device map's own mistake, at its own line.
    assert any(
        line.startswith(f"{bad_config / 'line.yaml'}:") and "unit_id" in line for line in lines
    ), done.stderr
    report = ET.parse(tmp_path / "r.xml").getroot()
    assert (report.get("tests"), report.get("errors")) == ("5", "5")


def test_a_case_file_that_is_not_a_mapping_or_not_yaml(tmp_path: Path) -> None:
    for text, message in (
        ("- config: x\n", "1:1: expected a mapping (config, scenario, expect), found a list"),
        ("config: [\n", "2:1: YAML syntax"),
        ("", "1:1: the file is empty"),
    ):
        f = tmp_path / "x.case.yaml"
        f.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_case(CaseRef("x", f))
        assert str(err.value).startswith(f"{f}:{message}"), str(err.value)


def test_finding_and_selecting_cases(tmp_path: Path) -> None:
    for rel in ("a/case.yaml", "b/c/case.yaml", "d.case.yaml", "e.yaml", ".hidden/case.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    refs, missing = find_cases([tmp_path])
    assert [r.name for r in refs] == ["a", "b/c", "d"]
    assert missing == []
    assert [r.name for r in find_cases([tmp_path / "b" / "c"])[0]] == ["c"]
    assert [r.name for r in select(refs, ["B/", "d"])] == ["b/c", "d"]
    _, missing = find_cases([tmp_path / "nowhere", tmp_path / "a" / ".."])
    assert [str(i) for i in missing] == [f"{tmp_path / 'nowhere'}: no such file or folder"]


def test_the_cli_lists_cases_and_says_when_there_are_none(tmp_path: Path) -> None:
    listed = cli("test", "ci/tests", "--list", "-k", "line5")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "line5-ten-stations  (ci/tests/line5-ten-stations/case.yaml)\n"
    none = cli("test", "ci/tests", "-k", "no-such-case")
    assert (none.returncode, none.stderr) == (
        2,
        "test: no test case found matching -k no-such-case\n",
    )
    empty = cli("test", str(tmp_path))
    assert empty.returncode == 2
    assert "no test case here (folders with a case.yaml, or *.case.yaml files)" in empty.stderr


# ---- the schema ----------------------------------------------------------------------------------


def test_committed_schema_is_current_and_the_cli_prints_it() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == case_schema.schema_text(), (
        "run: python -m edge_agent.testing.schema > config/testcase.schema.json"
    )
    done = cli("test", "--schema")
    assert done.stdout == case_schema.schema_text()
    scenario = cli("test", "--schema", "scenario")
    assert json.loads(scenario.stdout)["$id"] == "urn:edge-agent:scenario"


def test_schema_and_loader_agree_on_the_examples_and_on_mistakes() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = case_schema.testcase_schema()
    validators = [jsonschema.Draft202012Validator(schema), jsonschema.Draft7Validator(schema)]
    for v in validators:
        v.check_schema(schema)
    own = [f for f in sorted(CASES.rglob("*.yaml")) if f.name.endswith("case.yaml")]
    files = [*sorted((CI / "tests").glob("*/case.yaml")), *own]
    assert len(files) >= 7
    for f in files:
        assert f.read_text().startswith("# "), f
        load_case(CaseRef(f.parent.name, f))
        data = yaml.safe_load(f.read_text())
        for v in validators:
            assert list(v.iter_errors(data)) == [], f
    for mistake in (
        {"kind": "prat"},
        {"kind": "part", "count": -1},
        {"kind": "part", "serial": {"value": "x", "tolerance": "y"}},
        {"kind": "part", "serail": "x"},
    ):
        data = {"config": LINE3, "scenario": {"duration": 3}, "expect": [mistake]}
        for v in validators:
            assert list(v.iter_errors(data)), mistake
        with pytest.raises(ConfigError):
            parse_case(yaml.safe_dump(data), CaseRef("x", CI / "tests" / "x" / "case.yaml"))


def test_the_examples_name_their_schemas_for_editors() -> None:
    schemas = {"lines": "edge-agent", "scenarios": "scenario", "tests": "testcase"}
    for folder, schema in schemas.items():
        files = sorted((CI / folder).rglob("*.yaml"))
        assert files, folder
        for f in files:
            first = f.read_text(encoding="utf-8").split("\n", 1)[0]
            named = first.removeprefix("# yaml-language-server: $schema=")
            assert named != first, f"{f}: no schema line"
            assert (f.parent / named).resolve() == ROOT / "config" / f"{schema}.schema.json", f


def test_case_files_in_the_docs_load() -> None:
    """docs/testing-configs.md's case examples (``<!-- example: case -->``) load as if they
    were a case of ci/tests/."""
    text = DOC.read_text(encoding="utf-8")
    examples = re.findall(r"<!-- example: case -->\n```yaml\n(.*?)```", text, flags=re.S)
    assert len(examples) >= 2
    for i, example in enumerate(examples):
        parse_case(example, CaseRef(f"doc{i}", CI / "tests" / "parts-ok-nok" / "case.yaml"))


# ---- matching: tables ------------------------------------------------------------------------------

F32_20_3 = 20.299999237060547  # a float32 point holding 20.3, as it goes on the wire


@pytest.mark.parametrize(
    ("written", "got", "matches"),
    [
        ("SN000001", "SN000001", True),
        ("SN000001", "SN000002", False),
        (20.3, F32_20_3, True),  # a plain number matches the float32 the device gives
        (20.3, 20.30001, False),
        (4.02, 4.0200000000000005, True),  # a scaled integer's double
        (1, 1.0, True),
        (1, True, False),  # a boolean is not a number
        (True, 1, False),
        (None, None, True),
        (None, 0, False),
        ("42", 42, False),
        ({"value": 20.5, "tolerance": 0.1}, 20.59, True),
        ({"value": 20.5, "tolerance": 0.1}, 20.61, False),
        ({"value": 20.5, "tolerance": 0.1}, "20.5", False),
        ({"min": 18}, 18, True),
        ({"min": 18, "max": 22.5}, 22.6, False),
        ({"max": 3}, None, False),
        ({"pattern": r"SN\d{6}"}, "SN000042", True),
        ({"pattern": r"SN\d{6}"}, "SN0000421", False),  # the whole text
        ({"contains": "no response"}, "holding 0+2: no response within 0.1s", True),
        ({"contains": "no response"}, None, False),
        (["part_serial", "cycle_counter"], ["cycle_counter", "part_serial", "x"], True),
        (["part_serial"], ["x"], False),
        ({"lot": "0042"}, {"lot": "0042", "serial": "SN1"}, True),  # other keys not looked at
        ({"lot": "0042"}, {"serial": "SN1"}, False),
        ({"final_force": 20.5}, {"final_force": {"value": 20.5, "unit": "kN"}}, True),
        ({"final_force": {"value": 20, "tolerance": 1}}, {"final_force": {"value": 20.5}}, True),
        (
            {"trigger": {"device": "p", "value": True}},
            {"trigger": {"device": "p", "value": True}},
            True,
        ),
        ({}, {"anything": 1}, True),
    ],
)
def test_a_matcher_against_a_value(written: Any, got: Any, matches: bool) -> None:
    m = Match.model_validate(written)
    assert (misses(m, got, "f") == []) is matches


def part(seq: int, station: str, serial: str, result: str = "ok") -> dict[str, Any]:
    return {"seq": seq, "kind": "part", "station": station, "serial": serial, "result": result}


def expectations(*items: dict[str, Any]) -> list[Expectation]:
    return [Expectation.model_validate(i) for i in items]


def test_each_expectation_without_count_gets_a_record_of_its_own() -> None:
    """Any order: a broad expectation written first must not take the one record a narrow
    one needs (a one-to-one assignment, not first come first served)."""
    tally = Tally(expectations({"kind": "part"}, {"kind": "part", "serial": "A"}))
    tally.add([part(1, "ST10", "A")])
    assert [o.met for o in tally.outcomes()] == [True, False]
    tally.add([part(2, "ST10", "B")])
    outcomes = tally.outcomes()
    assert [o.met for o in outcomes] == [True, True]
    assert [o.matched[0]["serial"] for o in outcomes] == ["B", "A"]
    assert tally.settled()


def test_in_seq_order_expectations_match_records_in_the_order_written() -> None:
    tally = Tally(expectations({"serial": "B"}, {"serial": "A"}), order="seq")
    tally.add([part(1, "ST10", "A"), part(2, "ST10", "B")])
    assert [o.met for o in tally.outcomes()] == [True, False]
    tally.add([part(3, "ST10", "A")])
    assert [o.met for o in tally.outcomes()] == [True, True]


def test_counts_settle_only_when_more_records_cannot_change_them() -> None:
    tally = Tally(
        expectations(
            {"kind": "part", "count": {"min": 2}},
            {"kind": "gap", "count": 0},
            {"kind": "part", "result": "nok", "count": {"max": 1}},
        )
    )
    tally.add([part(1, "ST10", "A")])
    assert [(o.met, o.settled) for o in tally.outcomes()] == [
        (False, False),
        (True, False),  # no gap yet: but one may come
        (True, False),
    ]
    tally.add([part(2, "ST10", "B", "nok"), part(3, "ST10", "C", "nok")])
    assert [(o.met, o.settled) for o in tally.outcomes()] == [
        (True, True),  # at least two: for good
        (True, False),
        (False, True),  # over its max: for good
    ]
    assert not tally.settled()
