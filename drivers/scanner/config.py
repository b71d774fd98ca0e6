"""Config model of a barcode scanner or fixed-mount reader that sends decoded text over a
serial port (USB virtual COM included) or TCP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.device import NamedPoint
from drivers.links.config import LinkDevice, control_bytes
from kernel.names import Issue, Name


def _bytes_text(value: str) -> str:
    control_bytes(value)  # raises ValueError with the bad token, which pydantic reports
    return value


def _optional_bytes_text(value: str | None) -> str | None:
    return None if value is None else _bytes_text(value)


class ScannerFeedback(BaseModel):
    """What the agent sends the reader once a scan's record is committed: the good-read
    answer for an accepted scan, the bad-read answer for any other (rejected, unclassified,
    no read). Honeywell's host ACK mode uses ESC 7 and ESC 8."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    good: str = Field(
        default="<ESC>7",
        description="Bytes for a scan that was accepted and recorded (<ESC>, <CR>... by name).",
    )
    bad: str = Field(
        default="<ESC>8",
        description="Bytes for a scan that was recorded but not accepted (the operator scans "
        "again or gets the supervisor).",
    )

    _check = field_validator("good", "bad")(_bytes_text)


class ScannerTrigger(BaseModel):
    """The agent triggers the reader: on the rising edge of a point (a PLC's part-present
    bit), it sends ``start``; a scan that arrives within ``read_timeout`` is the read, else a
    no-read is recorded and ``stop`` is sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Name = Field(
        description="Device of the point whose rising edge triggers a read.", examples=["press10"]
    )
    point: Name = Field(
        description="That point (a bool: part present, read request).",
        examples=["part_present"],
    )
    start: str = Field(
        description="Command that starts a read, e.g. LON<CR> (Keyence), <SYN>T<CR> (Honeywell "
        "serial trigger), ||>TRIGGER ON<CR><LF> (Cognex DMCC).",
        examples=["LON<CR>", "<SYN>T<CR>"],
    )
    stop: str | None = Field(
        default=None,
        description="Command that ends a read without result, sent after read_timeout, e.g. "
        "LOFF<CR>; null: the reader stops by itself.",
        examples=["LOFF<CR>", "<SYN>U<CR>"],
    )
    read_timeout: float = Field(
        default=1.0,
        gt=0,
        description="Seconds after start within which a scan counts as this read; past it a "
        "no-read is recorded.",
    )

    _check = field_validator("start", "stop")(_optional_bytes_text)


@dataclass(frozen=True, slots=True)
class _Point:
    name: str
    station: str | None


class ScannerDevice(LinkDevice):
    """A barcode scanner or reader: each message it sends is one scan (a serial, a lot label,
    a badge), classified by the station's scan rules."""

    type: Literal["scanner"] = Field(description="Driver: scanner.", examples=["scanner"])
    point: Name = Field(
        default="scan",
        description="Point name of the scans, as scans.sources and records name it.",
    )
    no_read: list[str] = Field(
        default_factory=lambda: ["NOREAD", "NO READ", "ERROR"],
        description="Texts the reader sends when it decoded nothing; each becomes a rejected "
        "scan with reason 'no read' (compared exactly, case-sensitive).",
    )
    feedback: ScannerFeedback | None = Field(
        default=None,
        description="Good-read / bad-read answers sent after the scan's record is committed; "
        "null: none (the reader beeps on its own).",
    )
    trigger: ScannerTrigger | None = Field(
        default=None,
        description="The agent triggers reads; null: the reader reads on its own (handheld, "
        "presentation mode, or its own trigger input).",
    )

    def named_points(self) -> Sequence[NamedPoint]:
        return [_Point(self.point, self.station)]

    def scan_points(self) -> Sequence[str]:
        return [self.point]

    def acknowledges(self, point: str) -> bool:
        return self.feedback is not None and point == self.point

    def read_trigger(self) -> tuple[tuple[str | int, ...], str, str] | None:
        if self.trigger is None:
            return None
        return ("trigger",), self.trigger.device, self.trigger.point

    def commands(self) -> Sequence[str]:
        return ["trigger"] if self.trigger is not None else []

    def issues(self) -> list[Issue]:
        out = super().issues()
        if self.trigger is not None and self.trigger.device == self.name:
            out.append((("trigger", "device"), "a scanner cannot trigger itself"))
        return out
