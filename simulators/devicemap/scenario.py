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


class TagEvent(_Model):
    """A tag carried into an RFID reader's field at a moment: read on `antenna` 20 times a
    second for `dwell` seconds, as the reader prints reads in its configured format."""

    device: Name = Field(description="The RFID reader.", examples=["rfid10"])
    at: float = Field(ge=0, description="Seconds from the start.", examples=[2.0])
    epc: str = Field(
        description="The tag's EPC in hex (an even number of digits).",
        examples=["3034257BF7194E4000000001"],
    )
    dwell: float = Field(
        default=0.5, gt=0, description="Seconds the tag stays in the field.", examples=[0.8]
    )
    antenna: int = Field(default=1, ge=0, le=65535, description="Antenna that reads it.")
    rssi: float = Field(default=-50.0, description="Signal strength of its reads, dBm.")

    @field_validator("epc")
    @classmethod
    def _hex(cls, epc: str) -> str:
        digits = epc.replace(" ", "")
        if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise ValueError(f"EPC {epc!r} is not hexadecimal")
        if len(digits) % 2:
            raise ValueError(f"EPC {epc} has an odd number of hex digits ({len(digits)})")
        return digits.upper()


class TriggerReads(_Model):
    """What a triggered reader (a scanner with `trigger:` in the config) answers to each of
    the agent's trigger commands: give codes or pattern. A no-read is silence, or, when the
    config has a stop command, the reader's no-read text in answer to it (its first
    `no_read` text), as a Keyence reader answers LOFF with ERROR."""

    codes: list[str | None] | None = Field(
        default=None,
        min_length=1,
        description="The answers to the first, second, ... trigger: a code as the reader "
        "sends it (without its line end; <GS>, <CR> by name), or null for a no-read.",
        examples=[["L0042", None, "L0043"]],
    )
    pattern: str | None = Field(
        default=None,
        min_length=1,
        description="Instead of codes: the answer to trigger n (from `first`), a Python "
        "format string of n, e.g. SN{n:06d}.",
        examples=["SN{n:06d}"],
    )
    first: int = Field(default=1, ge=0, description="pattern: n of the first trigger.")
    repeat: bool = Field(
        default=False,
        description="codes: after the last, start again from the first; false: every later "
        "trigger is a no-read.",
    )
    delay: float = Field(
        default=0.05,
        ge=0,
        description="Seconds from the trigger command to the answer (the reader decoding); "
        "keep it under the config's read_timeout.",
    )

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, text: str | None) -> str | None:
        if text is None:
            return None
        try:
            text.format(n=1)
        except (ValueError, KeyError, IndexError) as exc:
            raise ValueError(
                f"not a code pattern ({exc}): write the trigger number as {{n}} or {{n:06d}}"
            ) from None
        return text

    @model_validator(mode="after")
    def _one(self) -> TriggerReads:
        if (self.codes is None) == (self.pattern is None):
            found = "both" if self.codes is not None else "neither"
            raise ValueError(f"give one of codes or pattern; found {found}")
        return self

    def answer(self, k: int) -> str | None:
        """The answer to trigger k (0 for the first); None: a no-read."""
        if self.pattern is not None:
            return self.pattern.format(n=self.first + k)
        assert self.codes is not None
        if k >= len(self.codes) and not self.repeat:
            return None
        return self.codes[k % len(self.codes)]


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
    tags: list[TagEvent] = Field(
        default_factory=list, description="RFID tags in a reader's field at given moments."
    )
    reads: dict[Name, TriggerReads] = Field(
        default_factory=dict,
        description="Triggered reader -> what it answers to each trigger command the agent "
        "sends (codes in turn, or no-reads).",
        examples=[{"scanner10": {"codes": ["SN000001", None, "SN000002"]}}],
    )
