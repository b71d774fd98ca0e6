"""The scenario file of ``edge-agent simulate --config FILE --scenario FILE``: what the
simulated devices show and do, second by second, until ``duration`` ends it.

Typed models, like the agent's config: unknown keys are errors, every field has a description
(the JSON Schema an editor shows, ``python -m simulators.devicemap.schema``). What a model
cannot see alone (a point the config does not have, a value its type cannot hold) is checked
against the agent's config by :mod:`simulators.devicemap.checks`.
"""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kernel.names import Name

ScalarValue = bool | int | float | str
"""A value a point can hold: true/false, a number or text."""

MAX_DURATION = 7 * 86400.0
"""Longest scenario: a week (a CI run wants seconds; a soak test hours)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Ramp(_Model):
    """A value going from `from` to `to` in `period` seconds, then again from `from`
    (a sawtooth), or staying at `to` with `repeat: false`."""

    start: float = Field(alias="from", description="Value at the start of each period.")
    end: float = Field(alias="to", description="Value reached at the end of each period.")
    period: float = Field(gt=0, description="Seconds from `from` to `to`.", examples=[10.0])
    repeat: bool = Field(default=True, description="Start again from `from` after each period.")


class Noise(_Model):
    """A random value around `mean`, drawn anew every `every` seconds; the same seed gives
    the same values in every run."""

    mean: float = Field(description="Mean value.", examples=[21.5])
    stddev: float = Field(ge=0, description="Standard deviation.", examples=[0.2])
    every: float = Field(default=1.0, gt=0, description="Seconds between two draws.")
    seed: int | None = Field(
        default=None, description="Seed of this point's draws; default: the scenario's seed."
    )


class Steps(_Model):
    """Values in turn, each held for `every` seconds."""

    values: list[ScalarValue] = Field(
        min_length=1, description="The values, in order.", examples=[[0, 1, 2], ["A", "B"]]
    )
    every: float = Field(gt=0, description="Seconds each value is held.", examples=[2.0])
    repeat: bool = Field(
        default=True, description="Start again after the last value; false: keep the last one."
    )


class PointScript(_Model):
    """What one point shows: give exactly one of constant, ramp, noise or sequence (a plain
    value is a constant)."""

    constant: ScalarValue | None = Field(
        default=None, description="The same value all along.", examples=[21.5, True, "R-100"]
    )
    ramp: Ramp | None = Field(default=None, description="A linear ramp (a sawtooth).")
    noise: Noise | None = Field(default=None, description="Seeded random values.")
    sequence: Steps | None = Field(default=None, description="Values in turn.")

    @model_validator(mode="before")
    @classmethod
    def _plain_value(cls, data: Any) -> Any:
        if isinstance(data, bool | int | float | str):
            return {"constant": data}
        return data

    @model_validator(mode="after")
    def _one(self) -> PointScript:
        given = [
            k for k in ("constant", "ramp", "noise", "sequence") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"give one of constant, ramp, noise or sequence; found {found}")
        return self

    def values(self) -> list[tuple[tuple[str | int, ...], ScalarValue]]:
        """Every value written in the script, with its key path (for checking the type)."""
        if self.constant is not None:
            return [(("constant",), self.constant)]
        if self.ramp is not None:
            return [(("ramp", "from"), self.ramp.start), (("ramp", "to"), self.ramp.end)]
        if self.noise is not None:
            return [(("noise", "mean"), self.noise.mean)]
        assert self.sequence is not None
        return [(("sequence", "values", i), v) for i, v in enumerate(self.sequence.values)]


class PointRef(_Model):
    """A point of a device."""

    device: Name = Field(description="Device name.", examples=["press10"])
    point: Name = Field(description="Point name on that device.", examples=["part_serial"])


class PartCycle(_Model):
    """Parts made one after the other at a station, as its PLC shows them: at each part's
    start the serial (from `serial`, numbered from `first`) and the counter; at its end the
    result and the trigger. The points default to the station's config: context.serial,
    part.trigger (its edge), part.counter, part.result (its first ok / nok value) and
    part.handshake (then each part waits for the agent's data taken)."""

    period: float = Field(
        gt=0,
        description="Seconds per part (with a handshake: until data "
        "ready; the PLC then waits for the agent).",
        examples=[2.0],
    )
    serial: str = Field(
        default="SN{n:06d}",
        min_length=1,
        description="Serial of part n, a Python format string of n: SN{n:06d} gives SN000001.",
        examples=["SN{n:06d}", "P-{n}"],
    )
    first: int = Field(default=1, ge=0, description="n of the first part.")
    pulse: float = Field(
        default=0.3,
        gt=0,
        description="Seconds the trigger stays active at the end of each part (free-running); "
        "keep it at least two poll intervals so the agent sees it.",
    )
    nok_ratio: float = Field(
        default=0.0, ge=0, le=1, description="Share of NOK parts, drawn with the scenario's seed."
    )
    serial_point: PointRef | None = Field(
        default=None,
        description="Where the serial is shown; default: the station's "
        "context.serial point (none: no serial is written).",
    )
    trigger: PointRef | None = Field(
        default=None, description="Default: the station's part.trigger."
    )
    counter: PointRef | None = Field(
        default=None, description="Part counter (parts started); default: part.counter."
    )
    result: PointRef | None = Field(default=None, description="Default: part.result.point.")
    ok: ScalarValue | None = Field(
        default=None, description="Result of an OK part; default: part.result.ok's first."
    )
    nok: ScalarValue | None = Field(
        default=None, description="Result of a NOK part; default: part.result.nok's first."
    )

    @field_validator("serial")
    @classmethod
    def _pattern(cls, text: str) -> str:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
            text.format(n=1)
        except (ValueError, KeyError, IndexError) as exc:
            raise ValueError(
                f"not a serial pattern ({exc}): write the number as {{n}} or {{n:06d}}"
            ) from None
        if "n" not in [f.split(".")[0].split("[")[0] for f in fields]:
            raise ValueError("the pattern never shows the part number: add {n} (or {n:06d})")
        return text


class StationScript(_Model):
    """What a station does."""

    part_cycle: PartCycle | None = Field(default=None, description="Parts in a cycle.")


FaultName = Literal["silent", "exception", "garbage", "unplug", "restart"]


class Fault(_Model):
    """Something going wrong with a device from `at` for `duration` seconds.

    silent: the device stops answering. exception: Modbus requests are answered with
    exception `code` (only those touching `points`, if given). garbage: bytes that are no
    message on its line (a serial device; Modbus RTU: answers with a broken CRC). unplug:
    its port vanishes (a pty hangs up; a TCP server closes). restart: the server restarts
    (OPC UA), down for `duration`."""

    device: Name = Field(description="Device name.", examples=["press10"])
    fault: FaultName = Field(description="What goes wrong.", examples=["silent"])
    at: float = Field(ge=0, description="Seconds from the start.", examples=[5.0])
    duration: float = Field(
        default=0.0,
        ge=0,
        description="Seconds it lasts; 0 (garbage only): once.",
        examples=[3.0],
    )
    code: int | None = Field(
        default=None,
        description="exception: the Modbus exception code (1-8, 10, 11).",
        examples=[2, 4],
    )
    points: list[Name] | None = Field(
        default=None, description="exception: only requests touching these points fail."
    )
    data: str | None = Field(
        default=None,
        description="garbage: the bytes sent (<CR>, <0xff> by name); default: bytes that are "
        "not text.",
    )


class ScanEvent(_Model):
    """A code read by a scanner at a moment."""

    device: Name = Field(description="The scanner.", examples=["scanner10"])
    at: float = Field(ge=0, description="Seconds from the start.", examples=[1.5])
    data: str = Field(
        min_length=1,
        description="The code as the scanner sends it (without its line end).",
        examples=["SN000042", "]d2010950110102091710L0001"],
    )


class WeightEvent(_Model):
    """A load put on a scale at a moment, in the scale's unit; it stays until the next one.
    The reading ramps to it and settles (is stable) a moment later, as on a scale."""

    device: Name = Field(description="The scale.", examples=["scale10"])
    at: float = Field(ge=0, description="Seconds from the start.", examples=[3.0])
    weight: float = Field(description="The load, in the scale's unit.", examples=[1.25])


class Scenario(_Model):
    """A scenario: values, part cycles, faults and events, for `duration` seconds."""

    duration: float = Field(
        gt=0,
        le=MAX_DURATION,
        description="Seconds the scenario lasts; then `simulate` ends (nothing runs forever).",
        examples=[30.0],
    )
    seed: int = Field(default=0, description="Seed of every random draw (noise, NOK parts).")
    points: dict[Name, dict[Name, PointScript]] = Field(
        default_factory=dict,
        description="Device -> point -> what it shows. A point not named here keeps what the "
        "device holds (zero, or what the agent wrote).",
        examples=[{"press10": {"temperature": {"ramp": {"from": 20, "to": 80, "period": 60}}}}],
    )
    stations: dict[Name, StationScript] = Field(
        default_factory=dict, description="Station -> what it does (a part cycle)."
    )
    faults: list[Fault] = Field(default_factory=list, description="Faults at given moments.")
    scans: list[ScanEvent] = Field(default_factory=list, description="Scans at given moments.")
    weights: list[WeightEvent] = Field(
        default_factory=list, description="Loads on scales at given moments."
    )
