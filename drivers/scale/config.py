"""Config model of a scale on a serial port or TCP: Mettler Toledo MT-SICS, Sartorius SBI, or
a Toledo-style continuous output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from drivers.device import NamedPoint
from drivers.links.config import LinkDevice
from drivers.scale.protocols import UNITS, known_unit, unknown_unit
from kernel.names import Issue, Name

FRAMING_KEYS = ("framing", "suffix", "pattern")
"""LinkDevice keys a scale does not take: its protocol decides how messages are cut."""


@dataclass(frozen=True, slots=True)
class _Point:
    name: str
    station: str | None


class ScaleDevice(LinkDevice):
    """A scale (or weighing terminal): one point, the weight, with its unit and stability."""

    type: Literal["scale"] = Field(description="Driver: scale.", examples=["scale"])
    protocol: Literal["mt_sics", "sbi", "toledo"] = Field(
        default="mt_sics",
        description="mt_sics: Mettler Toledo MT-SICS (the agent asks: SI, S, Z, T); sbi: "
        "Sartorius SBI (the agent sends ESC P, or the balance prints on its own); toledo: "
        "Toledo-style continuous output (STX, status A B C, weight, tare, CR), unasked.",
    )
    point: Name = Field(
        default="weight", description="Point name of the weight, as records and parts name it."
    )
    poll_interval: float | None = Field(
        default=0.2,
        gt=0,
        description="Seconds between two requests for the weight (mt_sics: SI; sbi: ESC P); "
        "null: do not ask (an SBI balance in auto print mode, or weights only in part "
        "snapshots). Ignored with toledo, which streams by itself.",
    )
    report: Literal["on_change", "every"] = Field(
        default="on_change",
        description="on_change: record a weight when its value, unit, stability or error "
        "changes; every: every answer.",
    )
    stable_only: bool = Field(
        default=True,
        description="A part snapshot takes only a stable weight (MT-SICS S: the scale waits "
        "for stability), else it records why there is none; false: the weight of the moment, "
        "stable or not (its quality says which).",
    )
    snapshot_timeout: float = Field(
        default=3.0,
        gt=0,
        description="Seconds a part snapshot waits for a stable weight before recording that "
        "there is none.",
    )
    timeout: float = Field(
        default=1.0, gt=0, description="Seconds the scale has to answer a request."
    )
    unit: str | None = Field(
        default=None,
        description="The unit the scale must weigh in (g, kg, lb...); a weight in another unit "
        "is recorded bad with the reason. null: any unit the agent knows.",
        examples=["g", "kg"],
    )
    checksum: bool = Field(
        default=False,
        description="toledo: each frame ends with a checksum byte after CR, and it is checked.",
    )

    def named_points(self) -> Sequence[NamedPoint]:
        return [_Point(self.point, self.station)]

    def snapshot_issue(self, points: Sequence[str]) -> tuple[tuple[str | int, ...], str] | None:
        if list(points) == [self.point]:
            return None
        return (("points",), f"a scale's snapshot is its weight alone: points: [{self.point}]")

    def commands(self) -> Sequence[str]:
        return [] if self.protocol == "toledo" else ["zero", "tare"]

    def request_timeout(self) -> float:
        return max(self.timeout, self.snapshot_timeout)

    def issues(self) -> list[Issue]:
        out = [i for i in super().issues() if i[0][0] not in FRAMING_KEYS]
        for key in FRAMING_KEYS:
            if key in self.model_fields_set:
                out.append(((key,), f"a scale's protocol ({self.protocol}) decides its framing"))
        if self.unit is not None and known_unit(self.unit) is None:
            out.append((("unit",), f"{unknown_unit(self.unit)}: one of {', '.join(UNITS)}"))
        if self.checksum and self.protocol != "toledo":
            out.append((("checksum",), "checksum is for protocol toledo"))
        return out
