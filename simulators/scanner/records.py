"""The ground truth a scanner keeps: every scan as meant and as sent, every write, every
answer of the agent's and every trigger it received. Times are ``time.monotonic()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from simulators.scanner.settings import Fault

ScanKind = Literal["part", "material"]
Verdict = Literal["good", "bad", "unknown"]


@dataclass
class ScanRecord:
    """One scan, as the scanner meant it and as it went out. Times are ``time.monotonic()``."""

    seq: int
    kind: ScanKind
    cycle: int
    """The part scanned (for a material, the part at the station when it was scanned)."""
    payload: bytes
    """What the scanner decoded (or the no-read text, or garbage), without framing."""
    frame: bytes
    """``payload`` in its framing: exactly this scan's bytes on the wire."""
    valid: bool
    """Whether it was meant to be a valid code."""
    fault: Fault | None
    due: float
    """When it was meant to go out (cycle start + scan phase, trigger + decode time, ...)."""
    serial: str | None = None
    """The AI 21 value sent (see :func:`gs1_value`); None when the payload carries none."""
    lot: str | None = None
    """The AI 10 value sent, if any."""
    detail: str = ""
    """Why, for no-reads of a triggered reader: ``"timeout"`` or ``"off"``."""
    started_at: float | None = None
    """When its first byte was handed to the transport; None while held back."""
    sent_at: float | None = None
    """When its last byte was handed to the transport; None while held back."""
    delivered: bool | None = None
    """False when no peer was connected (TCP): lost. None while not sent."""
    ack_timeout: bool = False
    """Host ACK mode gave up waiting for an answer to this scan."""

    @property
    def text(self) -> str:
        return self.payload.decode("latin-1")


@dataclass(frozen=True)
class Write:
    """One write to the transport."""

    at: float
    data: bytes
    seqs: tuple[int, ...]
    """The scans whose bytes it (partly) carries."""


@dataclass(frozen=True)
class Feedback:
    """Bytes the agent sent back."""

    at: float
    data: bytes
    verdict: Verdict
    after: int | None
    """Seq of the last scan completely written before these bytes arrived."""
    latency: float | None
    """``at`` minus that scan's ``sent_at``."""


@dataclass
class Trigger:
    """A trigger command a :class:`TriggeredReader` received."""

    at: float
    command: Literal["on", "off"]
    ignored: bool = False
    """``on`` while a read window was open, ``off`` while none was."""
    answer: int | None = None
    """Seq of the scan answering it (for ``on``)."""
