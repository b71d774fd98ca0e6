"""The test case file of ``edge-agent test``: a device map (the integrator's own file), a
scenario, and the records the agent must send.

Typed models like the agent's config: unknown keys are errors (a typo in an expectation would
otherwise match nothing or everything), every field has a description (the JSON Schema an
editor shows, :mod:`edge_agent.testing.schema`). What a model cannot see alone (a station the
config does not have, a field a record kind does not carry) is checked by
:mod:`edge_agent.testing.load` against the loaded config.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kernel.model import RecordKind

Scalar = bool | int | float | str
"""A value a record field holds: true/false, a number or text."""

MATCH_KEYS = frozenset({"value", "tolerance", "min", "max", "pattern", "contains"})
"""A mapping with only these keys is a matcher; any other mapping matches field by field."""

COMMON_FIELDS = ("station", "ctx")
RECORD_FIELDS: dict[str, tuple[str, ...]] = {
    "readings": ("device", "values", "quality", "errors", "units", "details"),
    "reading": ("device", "point", "value", "quality", "error", "unit"),
    "context": ("key", "value", "previous", "source", "repeat"),
    "context_restored": ("counter",),
    "scan": (
        "device",
        "point",
        "text",
        "status",
        "rule",
        "quality",
        "error",
        "aim",
        "symbology",
        "fields",
        "gs1",
        "detail",
    ),
    "consumption": (
        "serial",
        "component",
        "lot",
        "product",
        "quantity",
        "unit",
        "rule",
        "quality",
        "error",
    ),
    "part": (
        "serial",
        "result",
        "quality",
        "error",
        "counter",
        "cycle_time",
        "values",
        "trigger",
        "repeat",
    ),
    "gap": ("previous", "counter", "missed"),
    "unobserved": ("device", "points", "reason"),
    "gate": (
        "device",
        "point",
        "text",
        "serial",
        "decision",
        "check",
        "reason",
        "requires",
        "source",
        "lot",
        "product",
    ),
}
"""The fields of each record kind an expectation may name (docs/wire-format.md; seq and the
timestamps vary from run to run, so they are not matched). A kind missing here (a new one)
takes the common fields only; the tests check every kind is listed."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Match(_Model):
    """What one field of a record must be. Written as a plain value (equal: a number as
    the device gives it, see below), `{value: V, tolerance: T}`, `{min: A, max: B}` (either
    bound alone is fine), `{pattern: REGEX}` (the whole text matches), `{contains: TEXT}`, a
    list (the record's
    list holds every item) or a mapping of keys to any of these (the record's mapping holds
    each key so matched; other keys are not looked at)."""

    value: Scalar | None = Field(
        default=None,
        description="Equal to this (with `tolerance`: within it). A number matches a "
        "float32 point's reading too (20.3 is 20.299999237060547 on the wire).",
        examples=[20.5, "SN000001", True],
    )
    tolerance: float | None = Field(
        default=None, ge=0, description="With a numeric `value`: how far off it may be."
    )
    min: float | None = Field(default=None, description="Lowest accepted number (included).")
    max: float | None = Field(default=None, description="Highest accepted number (included).")
    pattern: str | None = Field(
        default=None,
        description="A regular expression the whole text matches (Python syntax).",
        examples=[r"SN\d{6}"],
    )
    contains: str | None = Field(
        default=None,
        description="Text the record's text holds somewhere.",
        examples=["no response"],
    )
    items: list[Scalar] | None = Field(
        default=None, description="A list: the record's list holds every one of these."
    )
    fields: dict[str, Match] | None = Field(
        default=None, description="A mapping: the record's mapping holds each key so matched."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if data is None or isinstance(data, bool | int | float | str):
            return {"value": data}
        if isinstance(data, list):
            return {"items": data}
        if isinstance(data, dict) and not (data and set(data) <= MATCH_KEYS):
            return {"fields": data}
        return data

    @property
    def equal(self) -> bool:
        """Whether `value` was given (a `null` value is then a matcher for null)."""
        return "value" in self.model_fields_set

    @field_validator("pattern")
    @classmethod
    def _regex(cls, text: str | None) -> str | None:
        if text is not None:
            try:
                re.compile(text)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return text

    @model_validator(mode="after")
    def _one_form(self) -> Match:
        if self.tolerance is not None and (
            not self.equal
            or isinstance(self.value, bool)
            or not isinstance(self.value, int | float)
        ):
            raise ValueError("tolerance goes with a numeric value: {value: 12.3, tolerance: 0.1}")
        given = [
            k
            for k, on in (
                ("value", self.equal),
                ("min/max", self.min is not None or self.max is not None),
                ("pattern", self.pattern is not None),
                ("contains", self.contains is not None),
            )
            if on
        ]
        if len(given) > 1:
            raise ValueError(
                f"give one of value, min/max, pattern or contains; found {', '.join(given)}"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        for bound in (self.value, self.tolerance, self.min, self.max):
            if isinstance(bound, float) and not math.isfinite(bound):
                raise ValueError("a number to match must be finite")
        return self


class Count(_Model):
    """How many records match: a number (exactly), or `{min: N}`, `{max: N}`, both."""

    min: int | None = Field(default=None, ge=0, description="At least this many.")
    max: int | None = Field(default=None, ge=0, description="At most this many.")

    @model_validator(mode="before")
    @classmethod
    def _exact(cls, data: Any) -> Any:
        if isinstance(data, int) and not isinstance(data, bool):
            return {"min": data, "max": data}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> Count:
        if self.min is None and self.max is None:
            raise ValueError("give min, max, or a number")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def holds(self, n: int) -> bool:
        return (self.min is None or n >= self.min) and (self.max is None or n <= self.max)

    def text(self) -> str:
        if self.min == self.max:
            return "no" if self.min == 0 else f"exactly {self.min}"
        if self.max is None:
            return f"at least {self.min}"
        if self.min is None or self.min == 0:
            return f"at most {self.max}"
        return f"{self.min} to {self.max}"


def _field(description: str, *examples: Any) -> Any:
    return Field(default=None, description=description, examples=list(examples) or None)


class Expectation(_Model):
    """Records the agent must send. Without `count`: at least one record matches, each such
    expectation by a record of its own. With `count`: how many records match (0: none)."""

    name: str | None = Field(
        default=None, description="What this checks, shown in the report.", examples=["lot set"]
    )
    kind: RecordKind | None = Field(
        default=None, description="The record's kind (docs/wire-format.md).", examples=["part"]
    )
    count: Count | None = Field(
        default=None,
        description="How many records match: a number, or {min: N} / {max: N}; "
        "default: at least one (a record of its own).",
        examples=[10, 0, {"min": 3}],
    )
    within: float | None = Field(
        default=None,
        gt=0,
        description="Seconds from the scenario's start by which the record(s) must have been "
        "made (their ts): later ones do not count for this expectation; default: the case's "
        "window.",
        examples=[2.0],
    )
    station: Match | None = _field("The station.", "ST10")
    device: Match | None = _field("readings, scan, unobserved: the device.", "press10")
    point: Match | None = _field("scan: the scanner's point.")
    serial: Match | None = _field(
        "part, consumption: the part's serial.", "SN000001", {"pattern": r"SN\d{6}"}
    )
    result: Match | None = _field("part: ok, nok, or null (could not be told).", "ok")
    status: Match | None = _field("scan: accepted, unclassified or rejected.", "rejected")
    quality: Match | None = _field(
        "part, scan, consumption: good, uncertain or bad; readings: point -> quality.",
        "good",
        {"temperature": "bad"},
    )
    error: Match | None = _field("Why quality is not good.", {"pattern": ".*no response.*"})
    errors: Match | None = _field("readings: point -> why its quality is not good.")
    rule: Match | None = _field("scan, consumption: the scan rule.", "lot")
    text: Match | None = _field("scan: what the scanner sent.", "L0042")
    fields: Match | None = _field("scan: what the rule extracted (group -> text).")
    gs1: Match | None = _field("scan: GS1 element strings (AI -> value).")
    aim: Match | None = _field("scan: the AIM symbology identifier.")
    symbology: Match | None = _field("scan: the symbology's name.")
    detail: Match | None = _field("scan: what the reader said beyond the text.")
    key: Match | None = _field("context: the context key that changed.", "lot")
    value: Match | None = _field("context: its new value; reading: the value.", "0042")
    previous: Match | None = _field(
        "context: the value before; gap: the counter of the last part record."
    )
    source: Match | None = _field(
        "context: what set it; gate: local, store or unreachable.", {"device": "scanner10"}
    )
    repeat: Match | None = _field("part, context: part records this serial had before.")
    counter: Match | None = _field("part: the PLC's counter; gap: the counter after it.")
    missed: Match | None = _field("gap: parts without a record.", 2)
    cycle_time: Match | None = _field("part: seconds.", {"max": 3.0})
    values: Match | None = _field(
        "part: snapshot point -> value; readings: point -> value.",
        {"final_force": {"value": 20.5, "tolerance": 0.5}},
    )
    units: Match | None = _field("readings: point -> unit.")
    details: Match | None = _field("readings: point -> what the device said beyond the value.")
    trigger: Match | None = _field("part: {device, point, value}.")
    component: Match | None = _field("consumption: the component's serial.")
    lot: Match | None = _field("consumption: the material lot.")
    product: Match | None = _field("consumption: the product.")
    quantity: Match | None = _field("consumption: how much.")
    unit: Match | None = _field("consumption: the unit; reading: the point's unit.")
    decision: Match | None = _field("gate: allowed, flagged or refused.", "refused")
    check: Match | None = _field("gate: the check that decided: blocked or route.", "route")
    requires: Match | None = _field("gate: the station a route rule requires.", "ST10")
    points: Match | None = _field("unobserved: the points (the list holds these).")
    reason: Match | None = _field("unobserved, gate: why.")
    ctx: Match | None = _field(
        "The station context: key -> value.", {"lot": "0042", "serial": {"pattern": "SN.*"}}
    )

    def matchers(self) -> dict[str, Match]:
        """The record fields this expectation looks at, in the order they were written."""
        skip = {"name", "kind", "count", "within"}
        return {
            k: m
            for k in type(self).model_fields
            if k not in skip and (m := getattr(self, k)) is not None
        }


Order = Literal["any", "seq"]


class TestCase(_Model):
    """One test case: the agent runs `config` against simulators playing `scenario`, and the
    records it sends through an MQTT broker must meet `expect` within `within` seconds."""

    __test__ = False  # not a pytest class, whatever its name

    description: str | None = Field(
        default=None, description="What the case shows, for the report.", examples=["lot scan"]
    )
    config: str = Field(
        min_length=1,
        description="The agent config (device map) under test, relative to this file, so "
        "the real file is tested.",
        examples=["../../lines/line3.yaml"],
    )
    scenario: str | dict[str, Any] | None = Field(
        default=None,
        description="What the devices do: a scenario file (relative to this file) or the "
        "scenario itself (docs/simulate.md). Required unless expect_refused.",
        examples=["../../scenarios/shift-start.yaml"],
    )
    within: float | None = Field(
        default=None,
        gt=0,
        description="Seconds from the scenario's start by which every expectation must be "
        "met; default (and at most): the scenario's duration. The case ends earlier once "
        "every expectation is settled.",
        examples=[10.0],
    )
    order: Order = Field(
        default="any",
        description="any: expectations without count may match records in any order; seq: "
        "they match records in the order written (by seq).",
    )
    expect: list[Expectation] | None = Field(
        default=None,
        min_length=1,
        description="The records the agent must send (and counts of them). Required unless "
        "expect_refused.",
    )
    expect_refused: str | list[str] | None = Field(
        default=None,
        min_length=1,
        description="Instead of running: the config must be refused as `edge-agent validate` "
        "refuses it, with a problem matching each of these regular expressions (searched in "
        "each `file:line:col: key.path: message` line). A text is one pattern.",
        examples=[["poll_interval .* is shorter than timeout"]],
    )

    @field_validator("expect_refused")
    @classmethod
    def _patterns(cls, patterns: str | list[str] | None) -> str | list[str] | None:
        for text in [patterns] if isinstance(patterns, str) else patterns or []:
            try:
                re.compile(text)
            except re.error as exc:
                raise ValueError(f"{text!r} is not a regular expression: {exc}") from None
        return patterns

    @model_validator(mode="after")
    def _run_or_refuse(self) -> TestCase:
        if self.expect_refused is not None:
            given = [k for k in ("scenario", "expect", "within") if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"a case with expect_refused runs nothing: leave out {', '.join(given)}"
                )
        else:
            missing = [k for k in ("scenario", "expect") if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"give {' and '.join(missing)} (or expect_refused: the config must be refused)"
                )
        return self

    @property
    def refusal_patterns(self) -> list[str]:
        """``expect_refused`` as a list (a text is one pattern)."""
        given = self.expect_refused
        return [given] if isinstance(given, str) else list(given or [])

    @property
    def expectations(self) -> list[Expectation]:
        """``expect``, or none for a case that expects the config refused."""
        return self.expect or []
