"""Per-stream watermarks from the ranges messages carry (docs/wire-format.md, "Ranges" and
"Confirmation protocol"). A stream is (agent, epoch): each epoch of a journal numbers its own
records, so each has its own ranges and watermark (the legacy epoch ``''`` is what an agent of
the previous version sends).

A range ``(after, last, count)`` says: the agent holds exactly ``count`` records with seqs in
``(after, last]``. The store has the whole range once distinct messages carrying it (message
identity: station + first_seq) add up to ``count`` records. The watermark ``W`` of a stream
then moves to ``last`` whenever a complete range has ``after <= W < last``: every seq up to
``W`` is committed or void, and the agent may delete it.

Ranges are keyed by ``(after, last, count)``, not only ``(after, last)``: two journal reads
over the same interval may return different counts (telemetry evicted in between); each read
is a complete statement on its own, and mixing the messages of both could add up to a count
neither read stated.

Two-phase on purpose: ``plan`` computes what a batch would do without changing anything, the
caller writes the new watermarks in the same transaction as the records, and ``apply`` makes
it real once that transaction committed. A failed commit so leaves the tracker as it was, and
``W`` can never claim a seq that is not in the database. A ``Draft`` builds a plan entry by
entry and knows the watermark after each: the store uses it to release held messages as the
batch it is building moves ``W`` (``held.py``).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from trace_store.envelope import Range, Stream

log = logging.getLogger(__name__)

MAX_RANGES_PER_AGENT = 4096
"""Incomplete ranges remembered per stream. Beyond, the oldest are forgotten: that only delays
the watermark (the agent resends after its confirm timeout), it never moves it wrongly."""


@dataclass(frozen=True, slots=True)
class RangeEntry:
    """One message carrying a range, as committed (or about to be)."""

    stream: Stream
    range: Range
    message_id: tuple[str, int]
    records: int


@dataclass(slots=True)
class _Progress:
    messages: dict[tuple[str, int], int] = field(default_factory=dict)  # message id -> records
    received: int = 0


@dataclass(slots=True)
class _Agent:
    watermark: int
    ranges: dict[Range, _Progress] = field(default_factory=dict)  # insertion order = age
    complete: set[Range] = field(default_factory=set)  # complete, waiting for a gap below


@dataclass(slots=True)
class Plan:
    """What a batch changes: new messages per range, and the watermarks that move."""

    additions: dict[Stream, dict[Range, dict[tuple[str, int], int]]]
    watermarks: dict[Stream, int]  # only the streams whose watermark moves

    def watermark(self, stream: Stream, current: int) -> int:
        return self.watermarks.get(stream, current)


class RangeTracker:
    """Ranges and watermarks of every stream. Owned by one thread (the store's writer)."""

    def __init__(
        self, watermarks: Mapping[Stream, int], max_ranges: int = MAX_RANGES_PER_AGENT
    ) -> None:
        self._agents = {stream: _Agent(w) for stream, w in watermarks.items()}
        self._max_ranges = max_ranges

    def watermark(self, stream: Stream) -> int:
        known = self._agents.get(stream)
        return known.watermark if known is not None else 0

    def watermarks(self) -> dict[Stream, int]:
        return {stream: state.watermark for stream, state in self._agents.items()}

    def known(self, stream: Stream) -> bool:
        return stream in self._agents

    def pending(self, stream: Stream) -> int:
        """Ranges of ``stream`` still held in memory (incomplete, or complete above a gap)."""
        known = self._agents.get(stream)
        return len(known.ranges) if known is not None else 0

    def plan(self, entries: Iterable[RangeEntry]) -> Plan:
        """What committing ``entries`` would do; changes nothing."""
        draft = self.draft()
        for entry in entries:
            draft.add(entry)
        return draft.plan()

    def draft(self) -> Draft:
        """An empty plan to add entries to one at a time, knowing after each where the
        watermark would be (the store releases held messages as it moves)."""
        return Draft(self)

    def apply(self, plan: Plan) -> None:
        """Make ``plan`` real: call only once the records it counts are committed."""
        for stream, ranges in plan.additions.items():
            state = self._agents.setdefault(stream, _Agent(0))
            for rng, messages in ranges.items():
                progress = state.ranges.setdefault(rng, _Progress())
                for message_id, records in messages.items():
                    if message_id not in progress.messages:
                        progress.messages[message_id] = records
                        progress.received += records
                if progress.received == rng.count:
                    state.complete.add(rng)
                elif progress.received > rng.count:
                    # Distinct messages claim more records than the range holds: the agent
                    # contradicts itself. Never complete such a range.
                    log.error(
                        "agent %s epoch %r: range (%d, %d] of %d records received %d; ignored",
                        *stream,
                        rng.after,
                        rng.last,
                        rng.count,
                        progress.received,
                    )
                    state.complete.discard(rng)
        for stream, w in plan.watermarks.items():
            state = self._agents.setdefault(stream, _Agent(0))
            state.watermark = max(state.watermark, w)
        for stream in plan.additions.keys() | plan.watermarks.keys():
            self._prune(self._agents[stream])

    def _prune(self, state: _Agent) -> None:
        w = state.watermark
        for rng in [r for r in state.ranges if r.last <= w]:
            del state.ranges[rng]
            state.complete.discard(rng)
        excess = len(state.ranges) - self._max_ranges
        if excess > 0:
            log.warning("forgetting %d incomplete ranges (more than %d)", excess, self._max_ranges)
            for rng in list(state.ranges)[:excess]:
                del state.ranges[rng]
                state.complete.discard(rng)


@dataclass(slots=True)
class _Running:
    """One stream in a draft: the watermark so far, and the complete ranges above it."""

    watermark: int
    above: list[tuple[int, int, int]]  # heap of complete ranges (after, last, count)
    received: dict[Range, int] = field(default_factory=dict)  # ranges the draft added to


class Draft:
    """A plan being built entry by entry. ``watermark(stream)`` is where the entries added so
    far would move it, kept up to date in O(log n) per entry: the store asks it after every
    held message it releases, so recomputing from scratch would be quadratic in a batch.

    The tracker is not changed; ``plan()`` gives the ``Plan`` to write and ``apply``.
    """

    def __init__(self, tracker: RangeTracker) -> None:
        self._tracker = tracker
        self._additions: dict[Stream, dict[Range, dict[tuple[str, int], int]]] = {}
        self._running: dict[Stream, _Running] = {}
        self._floors: dict[Stream, int] = {}

    def start(self, stream: Stream, floor: int) -> None:
        """Every seq up to ``floor`` is not of this stream (an epoch begins above it): its
        watermark starts there. A fact the agent states, kept with the batch's plan."""
        running = self._agent(stream)
        if floor > running.watermark:
            running.watermark = floor
            self._floors[stream] = floor
            self._advance(running)

    def watermark(self, stream: Stream) -> int:
        running = self._running.get(stream)
        return running.watermark if running is not None else self._tracker.watermark(stream)

    def add(self, entry: RangeEntry) -> None:
        stream, rng = entry.stream, entry.range
        running = self._agent(stream)
        if rng.last <= running.watermark:
            return  # a resend of something already covered
        known = self._tracker._agents.get(stream)
        progress = known.ranges.get(rng) if known is not None else None
        if progress is not None and entry.message_id in progress.messages:
            return  # a duplicate of a committed message
        new = self._additions.setdefault(stream, {}).setdefault(rng, {})
        if entry.message_id in new:
            return  # a duplicate within the batch
        new[entry.message_id] = entry.records
        received = running.received.get(rng, progress.received if progress is not None else 0)
        running.received[rng] = received + entry.records
        if received + entry.records == rng.count:
            heapq.heappush(running.above, (rng.after, rng.last, rng.count))
            self._advance(running)

    def plan(self) -> Plan:
        """The batch's effect, recomputed from the final counts: a range whose messages add
        up to more than its count (an agent contradicting itself) never moves ``W``, even if
        it looked complete while the draft was being built."""
        watermarks: dict[Stream, int] = {}
        for stream in self._additions.keys() | self._floors.keys():
            known = self._tracker._agents.get(stream)
            w = known.watermark if known is not None else 0
            complete = set(known.complete) if known is not None else set()
            received = self._running[stream].received
            for rng in self._additions.get(stream, {}):
                if received[rng] == rng.count:
                    complete.add(rng)
                else:
                    complete.discard(rng)
            moved = _advance(max(w, self._floors.get(stream, 0)), complete)
            if moved > w:
                watermarks[stream] = moved
        return Plan(self._additions, watermarks)

    def _agent(self, stream: Stream) -> _Running:
        running = self._running.get(stream)
        if running is None:
            known = self._tracker._agents.get(stream)
            if known is None:
                running = _Running(0, [])
            else:
                above = [(r.after, r.last, r.count) for r in known.complete]
                heapq.heapify(above)
                running = _Running(known.watermark, above)
            self._running[stream] = running
        return running

    def _advance(self, running: _Running) -> None:
        above = running.above
        while above and above[0][0] <= running.watermark:
            after, last, count = heapq.heappop(above)
            rng = Range(after, last, count)
            if running.received.get(rng, count) == count:  # not over-filled since
                running.watermark = max(running.watermark, last)


def _advance(w: int, complete: set[Range]) -> int:
    """Move ``w`` while a complete range has ``after <= w < last``. In order of ``after``:
    ``w`` only grows, so once a range starts too high every later one does too."""
    for rng in sorted(complete, key=lambda r: r.after):
        if rng.after > w:
            break
        w = max(w, rng.last)
    return w
