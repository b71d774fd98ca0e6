"""Two journals writing at once under one agent id: a config copied to a second PC without a
new ``agent.id``, a disk image cloned from a running line PC (docs/operator.md,
``duplicate_agent``).

The store keeps the records of both (each journal epoch is its own key), so nothing is lost;
but the records of one agent id now come from two places, and someone must give one PC its own
id. Both agents raise the alarm themselves (their retained status topic); this is the store's
own view, for the store's log and counters.

The sign: two epochs of one agent whose records were *made* in overlapping time. An agent's
epochs follow each other (an epoch ends when the journal is closed, the next begins when it is
opened again), and a replaced journal starts after the old one stopped; so however their
messages interleave on arrival (a backlog sent after a restart, a store catching up after an
outage), their record times do not overlap. Two running journals do, continuously. Record
times are agent clocks: ``OVERLAP`` absorbs a clock set back a little at a reboot.

Owned by the store's writer thread.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from trace_store.envelope import Accepted

WINDOW = 30.0
"""Seconds of arrival over which each epoch's record times are gathered."""
OVERLAP = 5.0
"""Seconds of record time two epochs must share before they count as written at once."""


@dataclass(frozen=True, slots=True)
class Writer:
    epoch: str
    journal: str | None


@dataclass(frozen=True, slots=True)
class Clash:
    """Two epochs of ``agent`` wrote records in the same time span."""

    agent: str
    one: Writer
    other: Writer
    overlap: float  # seconds of record time both cover


@dataclass(slots=True)
class _Span:
    writer: Writer
    seen: deque[tuple[float, float, float]] = field(default_factory=deque)  # arrival, lo, hi

    def bounds(self) -> tuple[float, float]:
        return min(s[1] for s in self.seen), max(s[2] for s in self.seen)


class LiveWriters:
    """Per agent, the record times of each epoch over the last ``WINDOW`` seconds."""

    def __init__(self, window: float = WINDOW, overlap: float = OVERLAP) -> None:
        self._window = window
        self._overlap = overlap
        self._agents: dict[str, dict[str, _Span]] = {}

    def observe(self, message: Accepted, now: float) -> Clash | None:
        """Take one accepted message (arrived at monotonic ``now``); a clash it shows."""
        # The wire format's timestamps sort as text: two parses per message, not one per row.
        stamps = [row.ts for row in message.rows]
        first, last = _seconds(min(stamps)), _seconds(max(stamps))
        if first is None or last is None:
            return None
        spans = self._agents.setdefault(message.agent, {})
        span = spans.get(message.epoch)
        if span is None:
            span = spans[message.epoch] = _Span(Writer(message.epoch, message.journal))
        span.seen.append((now, first, last))
        clash = None
        for epoch, other in list(spans.items()):
            while other.seen and other.seen[0][0] < now - self._window:
                other.seen.popleft()
            if not other.seen:
                del spans[epoch]
                continue
            if other is span or clash is not None:
                continue
            lo, hi = span.bounds()
            olo, ohi = other.bounds()
            shared = min(hi, ohi) - max(lo, olo)
            if shared >= self._overlap:
                clash = Clash(message.agent, span.writer, other.writer, shared)
        return clash


def _seconds(ts: str) -> float | None:
    try:
        return datetime.fromisoformat(ts).timestamp()
    except ValueError:
        return None
