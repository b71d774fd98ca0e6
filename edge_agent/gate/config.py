"""The ``gate:`` section of a station: what a scan must not be (a blocked lot, serial or
product) and what must have happened before it (an OK part record at an earlier station), and
the PLC point told when a scan is refused. See docs/gate.md."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kernel.names import Issue, Name

GateKey = Literal["lot", "serial", "product"]
InterlockValue = bool | int


class InterlockConfig(BaseModel):
    """A writable PLC point (Modbus coil or int16/uint16 holding register, OPC UA node) the
    agent sets when the gate refuses a scan, so the PLC can stop the part. It is set back to
    ``release`` by the next scan the gate lets through at the station."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name = Field(description="Device holding the point.", examples=["plc20"])
    point: Name = Field(description="Writable point on that device.", examples=["gate_refused"])
    value: InterlockValue = Field(
        default=True,
        description="Written when a scan is refused (true, or a number such as a reason code).",
        examples=[True, 1],
    )
    release: InterlockValue = Field(
        default=False,
        description="Written when the next scan the gate lets through at this station is "
        "recorded (the operator scanned something good).",
        examples=[False, 0],
    )


class RouteRule(BaseModel):
    """ "The serial must have an OK part record at ``requires`` before this station." Checked
    when a scan sets the station's serial."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requires: Name = Field(
        description="Station whose latest part record for the serial must be OK.",
        examples=["ST10"],
    )
    line: Name | None = Field(
        default=None,
        description="Line of that station; default: this agent's line. A station of this "
        "agent (same line) is checked locally, from the journal; any other is asked of the "
        "trace store over MQTT.",
        examples=["line3"],
    )
    on_unreachable: Literal["refuse", "allow_flag"] = Field(
        default="refuse",
        description="When the trace store does not answer within `timeout` (or the uplink is "
        "down): refuse the scan, or let it through with a `flagged` gate record.",
    )
    timeout: float = Field(
        default=0.5,
        gt=0,
        le=10,
        description="Seconds to wait for the trace store's answer.",
        examples=[0.5],
    )


def _all_keys() -> list[GateKey]:
    return ["lot", "serial", "product"]


class GateConfig(BaseModel):
    """The gate at a station: scans are checked before they change the context or record a
    consumption."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    blocked: Literal["refuse", "flag", "off"] = Field(
        default="refuse",
        description="A scan of a lot, serial or product in the trace store's blocked set: "
        "refuse it, let it through with a `flagged` gate record, or do not check.",
    )
    keys: list[GateKey] = Field(
        default_factory=_all_keys,
        min_length=1,
        description="Which scanned keys are checked against the blocked set: `lot` and "
        "`serial` as the scan sets or consumes them (a component's serial too), `product` as "
        "the station's context would be after the scan.",
    )
    interlock: InterlockConfig | None = Field(
        default=None, description="PLC point written when a scan is refused."
    )
    route: list[RouteRule] = Field(
        default_factory=list,
        description="Stations the serial must have passed OK before this one (all must hold).",
    )

    def issues(self) -> list[Issue]:
        out: list[Issue] = []
        seen: dict[tuple[str, str | None], int] = {}
        for i, rule in enumerate(self.route):
            key = (rule.requires, rule.line)
            if key in seen:
                out.append((("route", i, "requires"), f"same rule as route[{seen[key]}]"))
            seen.setdefault(key, i)
        if len(set(self.keys)) != len(self.keys):
            out.append((("keys",), "a key is listed twice"))
        return out
