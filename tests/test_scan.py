"""Scan classification: GS1 via biip, regex rules, rejection of garbled reads, rule checks."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from pydantic import ValidationError

from edge_agent.scan import Consume, Scan, ScanRule, classify

GS = "\x1d"
# GS1 example data with valid check digits (verified with biip): GTIN-14 of the GS1 Global
# Office, the GS1 General Specifications' SSCC example, and a GLN.
GTIN = "09501101020917"
BAD_GTIN = "09501101020918"
SSCC = "106141412345678908"
GLN = "9501101020917"
PART_DM = f"]d201{GTIN}1719050810ABCD1234{GS}2110"

PART = ScanRule(
    name="part",
    gs1=True,
    require=["01", "21"],
    set={"serial": "21", "lot": "10", "product": "01"},
)
PALLET = ScanRule(name="pallet", gs1=True, require=["00"], set={"pallet": "00"})
OPERATOR = ScanRule(name="operator", regex=r"OP(?P<operator>\d{4})", set={"operator": "operator"})
MATERIAL = ScanRule(
    name="material",
    regex=r"MAT-(?P<lot>[A-Z0-9]+)(?:-(?P<qty>[^-]+))?",
    consume=Consume(lot="lot", quantity="qty", unit="pcs"),
)
GS1_LOT = ScanRule(
    name="gs1_lot",
    gs1=True,
    require=["10"],
    consume=Consume(product="01", lot="10", quantity="30", unit="pcs"),
)
WEIGHED = ScanRule(
    name="weighed",
    gs1=True,
    require=["3103"],
    consume=Consume(lot="10", quantity="3103", unit="kg"),
)
RULES = [PART, PALLET, OPERATOR, MATERIAL, WEIGHED, GS1_LOT]


def brief(scan: Scan) -> dict[str, Any]:
    """The fields a table row states; an omitted expectation means 'empty'."""
    return {
        "status": scan.status,
        "rule": scan.rule,
        "fields": dict(scan.fields),
        "context": dict(scan.context),
        "consume": None if scan.consume is None else dict(scan.consume),
        "error": scan.error,
    }


def expect(status: str, rule: str | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "status": status,
        "rule": rule,
        "fields": kw.get("fields", {}),
        "context": kw.get("context", {}),
        "consume": kw.get("consume"),
        "error": kw.get("error"),
    }


PART_FIELDS = {"01": GTIN, "17": "190508", "10": "ABCD1234", "21": "10"}
PART_CONTEXT = {"serial": "10", "lot": "ABCD1234", "product": GTIN}

ACCEPTED = [
    pytest.param(
        PART_DM,
        expect("accepted", "part", fields=PART_FIELDS, context=PART_CONTEXT),
        id="gs1-datamatrix-aim-and-gs",
    ),
    pytest.param(
        PART_DM + "\r\n",
        expect("accepted", "part", fields=PART_FIELDS, context=PART_CONTEXT),
        id="trailing-crlf-stripped",
    ),
    pytest.param(
        f"]C101{GTIN}21SN-0042",
        expect(
            "accepted",
            "part",
            fields={"01": GTIN, "21": "SN-0042"},
            context={"serial": "SN-0042", "product": GTIN},
        ),
        id="gs1-128-lot-key-left-out",
    ),
    pytest.param(
        f"]Q301{GTIN}{GS}21A7",
        expect(
            "accepted",
            "part",
            fields={"01": GTIN, "21": "A7"},
            context={"serial": "A7", "product": GTIN},
        ),
        id="gs1-qr",
    ),
    pytest.param(
        f"{GS}01{GTIN}21X9{GS}",
        expect(
            "accepted",
            "part",
            fields={"01": GTIN, "21": "X9"},
            context={"serial": "X9", "product": GTIN},
        ),
        id="gs1-leading-gs-no-aim",
    ),
    pytest.param(
        f"01{GTIN}21X9",
        expect(
            "accepted",
            "part",
            fields={"01": GTIN, "21": "X9"},
            context={"serial": "X9", "product": GTIN},
        ),
        id="gs1-aim-stripped-by-scanner",
    ),
    pytest.param(
        f"]C100{SSCC}",
        expect("accepted", "pallet", fields={"00": SSCC}, context={"pallet": SSCC}),
        id="sscc",
    ),
    pytest.param(
        "OP1234",
        expect("accepted", "operator", fields={"operator": "1234"}, context={"operator": "1234"}),
        id="operator-badge",
    ),
    pytest.param(
        "]C0OP1234",
        expect("accepted", "operator", fields={"operator": "1234"}, context={"operator": "1234"}),
        id="regex-sees-data-without-aim",
    ),
    pytest.param(
        "MAT-L42-25",
        expect(
            "accepted",
            "material",
            fields={"lot": "L42", "qty": "25"},
            consume={"lot": "L42", "quantity": 25.0, "unit": "pcs"},
        ),
        id="material-with-quantity",
    ),
    pytest.param(
        "MAT-L42-0.5",
        expect(
            "accepted",
            "material",
            fields={"lot": "L42", "qty": "0.5"},
            consume={"lot": "L42", "quantity": 0.5, "unit": "pcs"},
        ),
        id="material-decimal-quantity",
    ),
    pytest.param(
        "MAT-L42",
        expect("accepted", "material", fields={"lot": "L42"}, consume={"lot": "L42"}),
        id="material-optional-quantity-absent",
    ),
    pytest.param(
        f"]C101{GTIN}10LOT7{GS}300012",
        expect(
            "accepted",
            "gs1_lot",
            fields={"01": GTIN, "10": "LOT7", "30": "0012"},
            consume={"product": GTIN, "lot": "LOT7", "quantity": 12.0, "unit": "pcs"},
        ),
        id="gs1-quantity-ai-30",
    ),
    pytest.param(
        f"]C101{GTIN}3103001234{GS}10B1",
        expect(
            "accepted",
            "weighed",
            fields={"01": GTIN, "3103": "001234", "10": "B1"},
            consume={"lot": "B1", "quantity": 1.234, "unit": "kg"},
        ),
        id="gs1-implied-decimals-ai-3103",
    ),
    pytest.param(
        f"]C1410{GLN}",
        expect("unclassified"),
        id="gs1-valid-but-no-rule-requires-it",
    ),
    pytest.param("hello", expect("unclassified"), id="no-rule-matches"),
    pytest.param("OP1234 ", expect("unclassified"), id="trailing-space-kept-exact"),
    pytest.param("OP12345", expect("unclassified"), id="regex-is-fullmatch"),
    pytest.param(
        f"01{BAD_GTIN}21X9",
        expect("unclassified"),
        id="not-claiming-gs1-bad-check-digit-just-no-match",
    ),
]


@pytest.mark.parametrize(("raw", "want"), ACCEPTED)
def test_classify(raw: str, want: dict[str, Any]) -> None:
    assert brief(classify(raw, RULES)) == want


REJECTED = [
    pytest.param("", None, "empty scan", id="empty"),
    pytest.param("\r\n", None, "empty scan", id="crlf-only"),
    pytest.param("\n\r\n", None, "empty scan", id="newlines-only"),
    pytest.param("]d2", None, "empty scan (only the AIM identifier ]d2)", id="aim-only"),
    pytest.param("OP12\x0734", None, "control character 0x07 at position 4", id="bel"),
    pytest.param("\rOP1234", None, "control character 0x0D at position 0", id="leading-cr"),
    pytest.param("OP1234\tx", None, "control character 0x09 at position 6", id="tab"),
    pytest.param("OP\x001234", None, "control character 0x00 at position 2", id="nul"),
    pytest.param("OP1234\x7f", None, "control character 0x7F at position 6", id="del"),
    pytest.param("[)>\x1e06", None, "control character 0x1E at position 3", id="rs"),
    pytest.param("OP\x851234", None, "control character 0x85 at position 2", id="c1"),
    pytest.param(
        PART_DM.replace(GTIN, BAD_GTIN),
        "part",
        "not valid GS1: AI (01): Invalid GTIN check digit for '09501101020918': Expected 7, got 8.",
        id="gtin-check-digit",
    ),
    pytest.param(
        "]C100106141412345678909",
        "part",
        "not valid GS1: AI (00): Invalid SSCC check digit for '106141412345678909': "
        "Expected 8, got 9.",
        id="sscc-check-digit",
    ),
    pytest.param(
        "]C14109501101020918",
        "part",
        "not valid GS1: AI (410): Invalid GLN check digit for '9501101020918': Expected 7, got 8.",
        id="gln-check-digit",
    ),
    pytest.param(
        f"]d201{GTIN}1719023110ABCD{GS}2110",
        "part",
        "not valid GS1: Failed to parse GS1 AI (17) date/time from '190231'.",
        id="expiry-february-31",
    ),
    pytest.param(
        f"]d201{GTIN}1119130110ABCD",
        "part",
        "not valid GS1: Failed to match '1119130110ABCD' with GS1 AI (11) pattern "
        "'^11(\\d{2}(?:0\\d|1[0-2])(?:[0-2]\\d|3[01]))$'.",
        id="production-date-month-13",
    ),
    pytest.param(
        "]d20109501101020",
        "part",
        "not valid GS1: Failed to match '0109501101020' with GS1 AI (01) pattern '^01(\\d{14})$'.",
        id="truncated",
    ),
    pytest.param(
        "]d22399",
        "part",
        "not valid GS1: Failed to get GS1 Application Identifier from '2399'.",
        id="unknown-ai",
    ),
    pytest.param(
        f"]d210A{GS}10B",
        "part",
        "not valid GS1: AI (10) appears twice: 'A' and 'B'",
        id="conflicting-duplicate-ai",
    ),
    pytest.param(
        f"{GS}{GS}",
        "part",
        "not valid GS1: no GS1 element strings in the data",
        id="separators-only",
    ),
    pytest.param(
        "MAT-L42-x5",
        "material",
        "quantity field 'qty' is not a non-negative decimal number: 'x5'",
        id="quantity-not-numeric",
    ),
    pytest.param(
        "MAT-L42-1e3",
        "material",
        "quantity field 'qty' is not a non-negative decimal number: '1e3'",
        id="quantity-exponent-not-accepted",
    ),
]


@pytest.mark.parametrize(("raw", "rule", "error"), REJECTED)
def test_rejected(raw: str, rule: str | None, error: str) -> None:
    scan = classify(raw, RULES)
    assert (scan.status, scan.rule, scan.error) == ("rejected", rule, error)
    # A rejected scan binds nothing.
    assert scan.context == {}
    assert scan.consume is None


def test_check_digit_error_names_the_check_digit() -> None:
    scan = classify(PART_DM.replace(GTIN, BAD_GTIN), RULES)
    assert scan.error is not None
    assert "check digit" in scan.error
    assert scan.gs1 is None
    assert scan.fields == {}


def test_gs1_datamatrix_scan_record() -> None:
    scan = classify(PART_DM + "\r\n", RULES)
    assert scan.text == PART_DM
    assert scan.data == PART_DM[3:]
    assert (scan.aim, scan.symbology) == ("]d2", "GS1 DataMatrix")
    assert scan.gs1 == PART_FIELDS
    assert scan.fields["17"] == "190508"  # kept although no rule sets it
    assert scan.error is None


def test_quantity_rejection_keeps_fields_for_diagnosis() -> None:
    scan = classify("MAT-L42-x5", RULES)
    assert scan.fields == {"lot": "L42", "qty": "x5"}


@pytest.mark.parametrize(
    ("rules", "raw", "rule"),
    [
        pytest.param([OPERATOR, MATERIAL], "OP1234", "operator", id="first-of-two"),
        pytest.param(
            [ScanRule(name="any", regex=r".*"), OPERATOR], "OP1234", "any", id="catch-all-first"
        ),
        pytest.param(
            [OPERATOR, ScanRule(name="any", regex=r".*")], "OP1234", "operator", id="specific-first"
        ),
        pytest.param(
            [ScanRule(name="serial_only", gs1=True, require=["21"]), PART],
            PART_DM,
            "serial_only",
            id="gs1-first-match",
        ),
        pytest.param(
            [ScanRule(name="needs_lot", gs1=True, require=["10"]), PART],
            f"]C101{GTIN}21X",
            "part",
            id="gs1-require-missing-falls-through",
        ),
        pytest.param(
            [ScanRule(name="raw_dm", regex=r"01\d{14}.*", set={}), PART],
            PART_DM,
            "raw_dm",
            id="regex-before-gs1-wins",
        ),
        pytest.param(
            [ScanRule(name="optional", regex=r"A(?P<x>\d*)", require=["x"]), OPERATOR],
            "A",
            None,
            id="required-group-empty-no-match",
        ),
    ],
)
def test_first_match_wins(rules: list[ScanRule], raw: str, rule: str | None) -> None:
    assert classify(raw, rules).rule == rule


def test_gs1_claimed_bad_data_rejected_only_when_a_gs1_rule_is_tried() -> None:
    bad = PART_DM.replace(GTIN, BAD_GTIN)
    assert classify(bad, [OPERATOR]).status == "unclassified"
    catch_all = ScanRule(name="any", regex=r".*")
    assert classify(bad, [catch_all, PART]).status == "accepted"
    assert classify(bad, [OPERATOR, PART]).rule == "part"


@pytest.mark.parametrize(
    ("raw", "rules", "gs1"),
    [
        pytest.param(PART_DM, [], PART_FIELDS, id="claimed-unclassified"),
        pytest.param(PART_DM, [ScanRule(name="any", regex=".*")], PART_FIELDS, id="claimed-regex"),
        pytest.param(f"01{GTIN}21X", [PART], {"01": GTIN, "21": "X"}, id="unclaimed-gs1-rule"),
        pytest.param(f"01{GTIN}21X", [], None, id="unclaimed-unclassified"),
        pytest.param("3712", [ScanRule(name="n", regex=r"\d+")], None, id="digits-not-gs1"),
        pytest.param(PART_DM.replace(GTIN, BAD_GTIN), [], None, id="claimed-invalid"),
    ],
)
def test_gs1_mapping(raw: str, rules: list[ScanRule], gs1: dict[str, str] | None) -> None:
    assert classify(raw, rules).gs1 == gs1


@pytest.mark.parametrize(
    ("raw", "aim", "symbology", "data"),
    [
        ("]d2010950110102091721X", "]d2", "GS1 DataMatrix", "010950110102091721X"),
        ("]d1ABC", "]d1", "Data Matrix", "ABC"),
        ("]C1" + f"00{SSCC}", "]C1", "GS1-128", f"00{SSCC}"),
        ("]C0ABC", "]C0", "Code 128", "ABC"),
        ("]Q3" + f"01{GTIN}", "]Q3", "GS1 QR Code", f"01{GTIN}"),
        ("]Q1https://x.example/1", "]Q1", "QR Code", "https://x.example/1"),
        ("]e0" + f"01{GTIN}", "]e0", "GS1 DataBar", f"01{GTIN}"),
        ("]E05901234123457", "]E0", "EAN-13/UPC-A", "5901234123457"),
        ("]A0CODE39", "]A0", "Code 39", "CODE39"),
        ("]X9ABC", "]X9", None, "ABC"),
        ("ABC", None, None, "ABC"),
        ("]]ABC", None, None, "]]ABC"),
        ("]d", None, None, "]d"),
    ],
)
def test_aim_identifier(raw: str, aim: str | None, symbology: str | None, data: str) -> None:
    scan = classify(raw, [])
    assert (scan.aim, scan.symbology, scan.data, scan.text) == (aim, symbology, data, raw)


def test_scan_is_immutable() -> None:
    scan = classify("OP1234", RULES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        scan.status = "rejected"  # type: ignore[misc]


def test_broken_rule_never_breaks_classification() -> None:
    broken = ScanRule(name="broken", regex="(unclosed")
    assert classify("OP1234", [broken, OPERATOR]).rule == "operator"


def test_garbage_never_raises() -> None:
    # Misreads are mostly near-misses of real codes: mutate valid scans, plus random noise.
    rng = random.Random(1234)
    seeds = [PART_DM, f"]C100{SSCC}", "OP1234", "MAT-L42-25", f"]C101{GTIN}3103001234{GS}10B1"]
    noise = "0123456789ABCabc]dC-() \x1d\x07\r\n\x85é"
    statuses: set[str] = set()
    for _ in range(3000):
        chars = list(rng.choice(seeds))
        for _ in range(rng.randint(0, 3)):
            i = rng.randrange(len(chars) + 1)
            op = rng.random()
            if op < 0.4:
                chars.insert(i, rng.choice(noise))
            elif op < 0.7 and i < len(chars):
                chars[i] = rng.choice(noise)
            else:
                del chars[i:]
        scan = classify("".join(chars), RULES)
        assert scan.status == "accepted" or not scan.context
        statuses.add(scan.status)
    assert statuses == {"accepted", "unclassified", "rejected"}


# ---- rule config ------------------------------------------------------------------------

ISSUES = [
    pytest.param({"regex": "A", "gs1": True}, [(("regex",), "give either regex or gs1: true, not both")], id="both"),
    pytest.param({}, [((), "a rule needs regex (a pattern) or gs1: true")], id="neither"),
    pytest.param({"regex": "OP(?P<op>\\d{4}"}, [(("regex",), "invalid regex: missing ), unterminated subpattern at position 2")], id="bad-regex-position"),
    pytest.param({"regex": "A[", "set": {"x": "nope"}}, [(("regex",), "invalid regex: unterminated character set at position 1")], id="bad-regex-only-issue"),
    pytest.param({"regex": "(?P<operator>\\d+)", "set": {"operator": "operater"}}, [(("set", "operator"), "the regex has no named group 'operater'; did you mean 'operator'?")], id="did-you-mean-group"),
    pytest.param({"regex": "(?P<a>\\d)(?P<b>\\d)", "require": ["zzz"]}, [(("require", 0), "the regex has no named group 'zzz' (groups: a, b)")], id="unknown-group-lists-groups"),
    pytest.param({"regex": "\\d+", "set": {"serial": "serial"}}, [(("set", "serial"), "the regex has no named group 'serial'; name one with (?P<name>...)")], id="no-groups-at-all"),
    pytest.param({"gs1": True, "set": {"serial": "1A"}}, [(("set", "serial"), "'1A' is not a GS1 AI (2 to 4 digits, e.g. '21' for the serial)")], id="malformed-ai"),
    pytest.param({"gs1": True, "set": {"serial": "serial"}}, [(("set", "serial"), "'serial' is not a GS1 AI (2 to 4 digits, e.g. '21' for the serial); did you mean '21' (SERIAL)?")], id="ai-by-name-did-you-mean"),
    pytest.param({"gs1": True, "require": ["01", "Lot"]}, [(("require", 1), "'Lot' is not a GS1 AI (2 to 4 digits, e.g. '21' for the serial); did you mean '10' (BATCH/LOT)?")], id="require-ai"),
    pytest.param({"gs1": True, "require": ["23", "12345"]}, [(("require", 0), "unknown GS1 AI '23'"), (("require", 1), "'12345' is not a GS1 AI (2 to 4 digits, e.g. '21' for the serial)")], id="unknown-and-too-long-ai"),
    pytest.param({"gs1": True, "require": ["00", "01", "10", "11", "17", "21", "30", "37", "3103", "8004"]}, [], id="known-ais"),
    pytest.param({"regex": "MAT-(?P<lot>\\w+)", "consume": {"lot": "lot", "quantity": "5"}}, [(("consume", "quantity"), "the regex has no named group '5' (groups: lot); for a constant quantity write the number unquoted")], id="quoted-constant-quantity"),
    pytest.param({"regex": "MAT-(?P<lot>\\w+)", "consume": {"lot": "lot", "quantity": 5, "unit": "pcs"}}, [], id="constant-quantity"),
    pytest.param({"regex": "MAT-(?P<lot>\\w+)", "consume": {"lot": "lott"}}, [(("consume", "lot"), "the regex has no named group 'lott'; did you mean 'lot'?")], id="consume-unknown-group"),
    pytest.param({"gs1": True, "consume": {"quantity": -1}}, [(("consume",), "consume needs at least one of component, lot, product"), (("consume", "quantity"), "quantity must be a finite number >= 0, not -1.0")], id="consume-nothing-negative"),
    pytest.param({"gs1": True, "consume": {"lot": "10", "unit": "kg"}}, [(("consume", "unit"), "unit without quantity")], id="unit-without-quantity"),
    pytest.param({"gs1": True, "consume": {"component": "21", "quantity": "3O"}}, [(("consume", "quantity"), "'3O' is not a GS1 AI (2 to 4 digits, e.g. '21' for the serial)")], id="gs1-quantity-field"),
    pytest.param({"regex": "OP(?P<operator>\\d{4})"}, [], id="classify-only-rule-ok"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "issues"), ISSUES)
def test_rule_issues(extra: dict[str, Any], issues: list[tuple[Any, str]]) -> None:
    rule = ScanRule.model_validate({"name": "r", **extra})
    assert rule.issues() == issues


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"name": "r", "regex": "x", "colour": "red"}, id="extra-key"),
        pytest.param({"name": "bad name", "regex": "x"}, id="bad-name"),
        pytest.param({"name": "r", "regex": "x", "set": {"bad key": "x"}}, id="bad-context-key"),
        pytest.param({"name": "r", "gs1": True, "consume": {"lot": "10", "quantity": True}}, id="bool-quantity"),
        pytest.param({"name": "r", "gs1": True, "consume": {"lot": "10", "batch": "10"}}, id="consume-extra"),
    ],
)  # fmt: skip
def test_rule_schema_rejects(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ScanRule.model_validate(data)


def test_fields_used() -> None:
    assert MATERIAL.fields_used() == {"lot", "qty"}
    assert PART.fields_used() == {"01", "10", "21"}
    assert GS1_LOT.fields_used() == {"01", "10", "30"}


def test_every_example_rule_is_clean() -> None:
    for rule in RULES:
        assert rule.issues() == [], rule.name
