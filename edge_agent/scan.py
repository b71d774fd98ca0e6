"""Scan classification: what one barcode (or other identification) read means for a station.

``classify(raw, rules)`` is pure and cheap; it runs in the event loop for every scan.

Input handling
  * Only trailing CR and LF are stripped (scanners end a read with them); everything else is
    kept exactly, including spaces, so a code that really contains them still matches.
  * An empty scan, or one containing a control character other than GS (ASCII 29, the GS1
    separator), is ``rejected`` with the reason (``"empty scan"``, ``"control character 0x07
    at position 5"``; positions count from 0 in the text). A garbled read is data to record,
    never an exception. (This also rejects the RS/EOT of ISO/IEC 15434 envelopes ``[)>``,
    which would need support of their own.)
  * An AIM symbology identifier (``]`` + symbology letter + modifier, e.g. ``]d2``) at the
    start is split off into ``aim``/``symbology``; rules see the rest (``data``). An unknown
    identifier is kept in ``aim`` with ``symbology`` None. An identifier with nothing after
    it is an empty scan.

GS1
  * Data *claims GS1* when its AIM identifier is a GS1 one (``]d2`` ``]C1`` ``]Q3`` ``]e0``
    ``]J1``) or it starts with GS. GS1 element strings are parsed by biip (never by hand),
    and check digits (GTIN in AI 01/02/03, SSCC in 00, GLN in 41x) and dates (11, 17, ...)
    must be valid; the same AI twice with different values is invalid too.
  * A ``gs1: true`` rule matches when the data is a valid GS1 message holding every
    ``require``d AI. When data that claims GS1 is not valid GS1, the first ``gs1`` rule tried
    rejects the scan with biip's reason (rule = that rule, no context, no consumption): the
    symbol says it is GS1, so a bad check digit is a misprint or misread, not another code.
  * Data that does not claim GS1 (scanners often drop the AIM identifier; DPM markers often
    omit FNC1) is still tried against ``gs1`` rules, but there a failure only means "this rule
    does not match". Digit strings easily parse as some AI, so such rules should ``require``
    the AIs they need.
  * ``Scan.gs1`` holds AI -> value when the data claims GS1 and is valid, or when a ``gs1``
    rule accepted it; an operator badge that happens to parse as GS1 does not get one.

Rules are tried in order; the first that matches wins (``accepted``). A ``regex`` rule matches
when the pattern matches the whole data (``re.fullmatch``) and every required named group is
non-empty; its fields are the named groups that matched non-empty text. If no rule matches the
scan is ``unclassified`` (rule and error None): it is recorded, never dropped.

Output of an accepted scan
  * ``context``: ``rule.set`` resolved, context key -> field value. A reference that resolves
    to nothing (an optional group that did not match, an absent AI) leaves its key out: no
    value is ever invented.
  * ``consume``: ``rule.consume`` resolved to the keys component, lot, product, quantity, unit
    that have a value. None when none of component/lot/product resolves (nothing identifiable
    was consumed). ``unit`` is only given together with a quantity.
  * A quantity read from a field must be a non-negative decimal number (``"0012"`` -> 12.0);
    GS1 measures with implied decimals (AI 310n ...) use biip's decimal value, so
    ``3103`` ``001234`` is 1.234. Anything else rejects the scan with the reason (rule = the
    rule, no context, no consumption; ``fields`` are kept for diagnosis), because binding a
    half-understood scan is worse than asking the operator to scan again.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Literal

from biip import ParseConfig, ParseError
from biip.gs1_application_identifiers import GS1ApplicationIdentifier
from biip.gs1_messages import GS1Message
from pydantic import BaseModel, ConfigDict, Field

from kernel.names import Issue, Name

__all__ = ["Consume", "Scan", "ScanRule", "ScanStatus", "classify", "symbology_name"]

ScanStatus = Literal["accepted", "unclassified", "rejected"]

GS = "\x1d"

SYMBOLOGIES: dict[str, str] = {
    "]A0": "Code 39",
    "]C0": "Code 128",
    "]C1": "GS1-128",
    "]E0": "EAN-13/UPC-A",
    "]E4": "EAN-8",
    "]I0": "Interleaved 2 of 5",
    "]I1": "ITF-14",
    "]J1": "GS1 DotCode",
    "]L0": "PDF417",
    "]Q1": "QR Code",
    "]Q3": "GS1 QR Code",
    "]d1": "Data Matrix",
    "]d2": "GS1 DataMatrix",
    "]e0": "GS1 DataBar",
    "]z0": "Aztec Code",
}
"""AIM identifier (ISO/IEC 15424) -> human name, for the identifiers seen on lines."""

GS1_AIMS = frozenset({"]d2", "]C1", "]Q3", "]e0", "]J1"})
"""Identifiers whose symbol carries FNC1 in first position, i.e. GS1 element strings."""

_AIM = re.compile(r"\][A-Za-z][0-9A-Za-z]")
# C0 controls except GS, DEL and C1 controls: never part of a code a scanner should send.
_CONTROL = re.compile(r"[\x00-\x1c\x1e\x1f\x7f-\x9f]")
_AI_SYNTAX = re.compile(r"\d{2,4}")
_QUANTITY = re.compile(r"\d+(?:\.\d+)?")
# Pinned, not biip's defaults, so an upgrade cannot quietly loosen date checks. (GS1Message.parse
# is called rather than biip.parse(), which would also try GTIN/UPC/SSCC/Digital Link.)
_BIIP_CONFIG = ParseConfig(gs1_element_strings_verify_date=True, separator_chars=(GS,))

# Words people write instead of an AI number; used only for "did you mean".
_AI_HINTS: dict[str, str] = {
    "sscc": "00",
    "gtin": "01",
    "product": "01",
    "content": "02",
    "batch": "10",
    "lot": "10",
    "production_date": "11",
    "prod_date": "11",
    "best_before": "15",
    "expiry": "17",
    "expiry_date": "17",
    "variant": "20",
    "serial": "21",
    "quantity": "30",
    "qty": "30",
    "count": "37",
    "giai": "8004",
}


def symbology_name(aim: str | None) -> str | None:
    """Human name of an AIM symbology identifier such as ``]d2``, or None if unknown."""
    return SYMBOLOGIES.get(aim) if aim is not None else None


def _known_ai(ai: str) -> GS1ApplicationIdentifier | None:
    # biip has no public AI table; extract() finds the AI a string starts with, so an exact
    # round trip means the AI itself is defined.
    try:
        found = GS1ApplicationIdentifier.extract(ai)
    except ParseError:
        return None
    return found if found.ai == ai else None


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str] | re.error:
    # Cached by pattern text rather than stored on the (frozen) model so that model_copy()
    # and re-validation can never leave a stale pattern behind.
    try:
        return re.compile(pattern)
    except re.error as exc:
        return exc


def _regex_error(exc: re.error) -> str:
    where = f" at position {exc.pos}" if exc.pos is not None else ""
    return f"invalid regex: {exc.msg}{where}"


class Consume(BaseModel):
    """Genealogy: what a matching scan says was consumed into the current serial."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    component: str | None = Field(
        default=None,
        description="Field giving the serial of a component built into the part.",
        examples=["21", "serial"],
    )
    lot: str | None = Field(
        default=None,
        description="Field giving the material lot or batch consumed.",
        examples=["10", "lot"],
    )
    product: str | None = Field(
        default=None,
        description="Field giving the product (GTIN or part number) consumed.",
        examples=["01", "part_no"],
    )
    quantity: Annotated[float, Field(strict=True)] | str | None = Field(
        default=None,
        description="Amount consumed per part: a number (constant), or a field holding a "
        "non-negative decimal (e.g. GS1 AI 30). Omitted: no quantity is recorded.",
        examples=[1, "30", "qty"],
    )
    unit: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="Unit of quantity.",
        examples=["pcs", "kg"],
    )

    def references(self) -> dict[str, str]:
        """Consume key -> field it reads (the quantity only when it is a field)."""
        refs = {
            k: v
            for k, v in (
                ("component", self.component),
                ("lot", self.lot),
                ("product", self.product),
            )
            if v is not None
        }
        if isinstance(self.quantity, str):
            refs["quantity"] = self.quantity
        return refs


class ScanRule(BaseModel):
    """One way of recognising a scan, and what it then sets in the station context."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name = Field(
        description="Rule name, recorded with every scan it classifies.",
        examples=["part_label", "badge", "material"],
    )
    regex: str | None = Field(
        default=None,
        description="Python regular expression that must match the whole data (after the AIM "
        "identifier); its named groups are the fields.",
        examples=[r"OP(?P<operator>\d{4})", r"MAT-(?P<lot>[A-Z0-9]+)(?:-(?P<qty>\d+))?"],
    )
    gs1: bool = Field(
        default=False,
        description="Match GS1 element strings (GS1 DataMatrix, GS1-128, GS1 QR); the fields "
        "are AIs such as '01' (GTIN), '10' (lot), '17' (expiry), '21' (serial).",
        examples=[True],
    )
    require: list[str] = Field(
        default_factory=list,
        description="Fields that must be present for the rule to match (AIs for gs1, group "
        "names for regex).",
        examples=[["01", "21"]],
    )
    set: dict[Name, str] = Field(
        default_factory=dict,
        description="Station context key -> field whose value it takes.",
        examples=[{"serial": "21", "product": "01", "lot": "10"}],
    )
    consume: Consume | None = Field(
        default=None,
        description="Record that the scanned item was consumed into the serial.",
        examples=[{"lot": "lot", "quantity": "qty", "unit": "pcs"}],
    )

    @property
    def pattern(self) -> re.Pattern[str] | None:
        """The compiled regex; None for gs1 rules and for a regex that does not compile."""
        if self.regex is None:
            return None
        compiled = _compile(self.regex)
        return compiled if isinstance(compiled, re.Pattern) else None

    def fields_used(self) -> frozenset[str]:
        """Every field the rule refers to (require, set, consume)."""
        used = [*self.require, *self.set.values()]
        if self.consume is not None:
            used += self.consume.references().values()
        return frozenset(used)

    def issues(self) -> list[Issue]:
        """Cross-field problems, each with the key path (relative to the rule) it belongs to."""
        if self.regex is not None and self.gs1:
            return [(("regex",), "give either regex or gs1: true, not both")]
        groups: list[str] = []
        if self.regex is not None:
            compiled = _compile(self.regex)
            if isinstance(compiled, re.error):
                # Field references cannot be checked against a pattern that does not exist.
                return [(("regex",), _regex_error(compiled))]
            groups = list(compiled.groupindex)
        elif not self.gs1:
            return [((), "a rule needs regex (a pattern) or gs1: true")]
        refs: list[tuple[tuple[str | int, ...], str]] = [
            (("require", i), f) for i, f in enumerate(self.require)
        ]
        refs += [(("set", key), f) for key, f in self.set.items()]
        out: list[Issue] = []
        if self.consume is not None:
            refs += [(("consume", k), f) for k, f in self.consume.references().items()]
        for path, ref in refs:
            msg = _check_ai(ref) if self.gs1 else _check_group(ref, groups)
            if msg is None:
                continue
            if path == ("consume", "quantity") and _QUANTITY.fullmatch(ref):
                msg += "; for a constant quantity write the number unquoted"
            out.append((path, msg))
        if self.consume is not None:
            out.extend((("consume", *p), m) for p, m in _consume_issues(self.consume))
        return out


def _check_group(ref: str, groups: Sequence[str]) -> str | None:
    if ref in groups:
        return None
    msg = f"the regex has no named group {ref!r}"
    close = difflib.get_close_matches(ref, groups, n=1)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    elif groups:
        msg += f" (groups: {', '.join(groups)})"
    else:
        msg += "; name one with (?P<name>...)"
    return msg


def _check_ai(ref: str) -> str | None:
    if _AI_SYNTAX.fullmatch(ref) is None:
        msg = f"{ref!r} is not a GS1 AI (2 to 4 digits, e.g. '21' for the serial)"
        close = difflib.get_close_matches(ref.lower(), list(_AI_HINTS), n=1)
        if close:
            ai = _AI_HINTS[close[0]]
            known = _known_ai(ai)
            title = f" ({known.data_title})" if known is not None else ""
            msg += f"; did you mean {ai!r}{title}?"
        return msg
    if _known_ai(ref) is None:
        return f"unknown GS1 AI {ref!r}"
    return None


def _consume_issues(consume: Consume) -> list[Issue]:
    out: list[Issue] = []
    if consume.component is None and consume.lot is None and consume.product is None:
        out.append(((), "consume needs at least one of component, lot, product"))
    q = consume.quantity
    if isinstance(q, float) and (not math.isfinite(q) or q < 0):
        out.append((("quantity",), f"quantity must be a finite number >= 0, not {q}"))
    if consume.unit is not None and q is None:
        out.append((("unit",), "unit without quantity"))
    return out


@dataclass(frozen=True, slots=True)
class Scan:
    """One classified scan. Mappings are plain dicts so records serialise without fuss."""

    text: str
    """What the device sent, trailing CR/LF stripped, otherwise exact."""
    data: str
    """``text`` without the AIM symbology identifier."""
    aim: str | None
    """AIM symbology identifier, e.g. ``]d2``."""
    symbology: str | None
    """Human name of ``aim``, e.g. ``GS1 DataMatrix``; None when absent or unknown."""
    status: ScanStatus
    rule: str | None
    """Rule that accepted (or rejected) the scan."""
    fields: Mapping[str, str] = field(default_factory=dict)
    """Named groups (regex) or AI -> value as in the element string (gs1)."""
    gs1: Mapping[str, str] | None = None
    """AI -> value when the data is a valid GS1 message (see the module docstring)."""
    context: Mapping[str, str] = field(default_factory=dict)
    """``rule.set`` resolved: context key -> value."""
    consume: Mapping[str, str | float] | None = None
    """``rule.consume`` resolved; only keys that have a value."""
    error: str | None = None
    """Why the scan was rejected."""


@dataclass(frozen=True, slots=True)
class _GS1:
    """A GS1 parse of the data: values, or why it is not valid GS1."""

    values: dict[str, str] | None
    decimals: dict[str, Decimal]
    error: str | None


def _parse_gs1(data: str) -> _GS1:
    try:
        message = GS1Message.parse(data, config=_BIIP_CONFIG)
    except ParseError as exc:
        return _GS1(None, {}, str(exc))
    values: dict[str, str] = {}
    decimals: dict[str, Decimal] = {}
    for es in message.element_strings:
        ai = es.ai.ai
        # biip raises for bad patterns and dates but only records check-digit failures.
        bad = es.gtin_error or es.sscc_error or es.gln_error
        if bad:
            return _GS1(None, {}, f"AI ({ai}): {bad}")
        if values.setdefault(ai, es.value) != es.value:
            return _GS1(None, {}, f"AI ({ai}) appears twice: {values[ai]!r} and {es.value!r}")
        if es.decimal is not None:
            decimals[ai] = es.decimal
    if not values:
        return _GS1(None, {}, "no GS1 element strings in the data")
    return _GS1(values, decimals, None)


def _quantity(
    consume: Consume, fields: Mapping[str, str], decimals: Mapping[str, Decimal]
) -> float | str | None:
    """The quantity as a float, None when absent, or an error message (a str)."""
    q = consume.quantity
    if q is None or isinstance(q, float):
        return q
    if q in decimals:
        return float(decimals[q])
    value = fields.get(q)
    if value is None:
        return None
    if _QUANTITY.fullmatch(value) is None:
        return f"quantity field {q!r} is not a non-negative decimal number: {value!r}"
    return float(value)


def _resolve_consume(
    consume: Consume, fields: Mapping[str, str], decimals: Mapping[str, Decimal]
) -> tuple[dict[str, str | float] | None, str | None]:
    out: dict[str, str | float] = {}
    for key, ref in (
        ("component", consume.component),
        ("lot", consume.lot),
        ("product", consume.product),
    ):
        if ref is not None and ref in fields:
            out[key] = fields[ref]
    if not out:
        return None, None
    q = _quantity(consume, fields, decimals)
    if isinstance(q, str):
        return None, q
    if q is not None:
        out["quantity"] = q
        if consume.unit is not None:
            out["unit"] = consume.unit
    return out, None


def classify(raw: str, rules: Sequence[ScanRule]) -> Scan:
    """Classify one scan against the station's rules (see the module docstring)."""
    text = raw.rstrip("\r\n")
    if not text:
        return _rejected(text, text, None, None, "empty scan")
    aim: str | None = None
    data = text
    m = _AIM.match(text)
    if m is not None:
        aim = m.group()
        data = text[m.end() :]
    bad = _CONTROL.search(text)
    if bad is not None:
        error = f"control character 0x{ord(bad.group()):02X} at position {bad.start()}"
        return _rejected(text, data, aim, None, error)
    if not data:
        return _rejected(text, data, aim, None, f"empty scan (only the AIM identifier {aim})")

    claims_gs1 = aim in GS1_AIMS or data.startswith(GS)
    parsed: _GS1 | None = None
    for rule in rules:
        if rule.gs1:
            if parsed is None:
                parsed = _parse_gs1(data)
            if parsed.values is None:
                if claims_gs1:
                    error = f"not valid GS1: {parsed.error}"
                    return _rejected(text, data, aim, rule.name, error)
                continue
            fields: dict[str, str] = parsed.values
            decimals = parsed.decimals
        else:
            pattern = rule.pattern
            if pattern is None:
                continue  # config validation reports it; one bad rule must not stop the line
            match = pattern.fullmatch(data)
            if match is None:
                continue
            fields = {k: v for k, v in match.groupdict().items() if v}
            decimals = {}
        if not all(f in fields for f in rule.require):
            continue

        if rule.gs1 or claims_gs1:
            parsed = parsed or _parse_gs1(data)
        gs1 = parsed.values if parsed is not None else None
        consume: dict[str, str | float] | None = None
        if rule.consume is not None:
            consume, error_ = _resolve_consume(rule.consume, fields, decimals)
            if error_ is not None:
                return _rejected(text, data, aim, rule.name, error_, dict(fields), gs1)
        return Scan(
            text=text,
            data=data,
            aim=aim,
            symbology=symbology_name(aim),
            status="accepted",
            rule=rule.name,
            fields=dict(fields),
            gs1=gs1,
            context={key: fields[ref] for key, ref in rule.set.items() if ref in fields},
            consume=consume,
        )

    gs1 = None
    if claims_gs1:
        gs1 = (parsed or _parse_gs1(data)).values
    return Scan(
        text=text,
        data=data,
        aim=aim,
        symbology=symbology_name(aim),
        status="unclassified",
        rule=None,
        gs1=gs1,
    )


def _rejected(
    text: str,
    data: str,
    aim: str | None,
    rule: str | None,
    error: str,
    fields: dict[str, str] | None = None,
    gs1: dict[str, str] | None = None,
) -> Scan:
    return Scan(
        text=text,
        data=data,
        aim=aim,
        symbology=symbology_name(aim),
        status="rejected",
        rule=rule,
        fields=fields or {},
        gs1=gs1,
        error=error,
    )
