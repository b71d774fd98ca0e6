"""The trace store's ranges and watermarks (pure): when a range completes, gaps, overlaps,
voids, plans and drafts, and the held messages' order, dedupe and bound."""

from __future__ import annotations

import random

from tests.store_helpers import (
    AGENT,
    accepted,
    envelope,
    readings,
    topic,
)
from trace_store.envelope import Accepted, Range
from trace_store.held import HeldMessages
from trace_store.ranges import RangeEntry, RangeTracker

STREAM = (AGENT, "")  # its legacy epoch: what a message without an epoch belongs to


# ---- ranges and watermarks (pure) ----------------------------------------------------------------


def entry(after: int, last: int, count: int, station: str, first: int, n: int) -> RangeEntry:
    return RangeEntry(STREAM, Range(after, last, count), (station, first), n)


def commit(tracker: RangeTracker, *entries: RangeEntry) -> int:
    tracker.apply(tracker.plan(entries))
    return tracker.watermark(STREAM)


def test_a_range_completes_when_its_messages_add_up() -> None:
    t = RangeTracker({})
    assert commit(t, entry(0, 10, 10, "op10", 1, 6)) == 0
    assert commit(t, entry(0, 10, 10, "op10", 1, 6)) == 0  # the same message again
    assert commit(t, entry(0, 10, 10, "op20", 2, 4)) == 10
    assert t.pending(STREAM) == 0  # forgotten once at or below W


def test_out_of_order_ranges_wait_for_the_gap() -> None:
    t = RangeTracker({})
    assert commit(t, entry(20, 30, 10, "op10", 21, 10)) == 0  # live-first: the newest first
    assert commit(t, entry(10, 20, 10, "op10", 11, 10)) == 0  # still the gap (0, 10]
    assert commit(t, entry(0, 10, 10, "op10", 1, 10)) == 30  # the gap closes: all at once


def test_overlapping_ranges_each_count_on_their_own() -> None:
    t = RangeTracker({})
    assert commit(t, entry(0, 10, 10, "op10", 1, 5)) == 0  # half of (0, 10]
    # A resend reads from 0 again, further: (0, 15] with 15 records in two messages.
    assert commit(t, entry(0, 15, 15, "op10", 1, 8)) == 0
    assert commit(t, entry(0, 15, 15, "op20", 2, 7)) == 15
    assert commit(t, entry(0, 10, 10, "op20", 2, 5)) == 15  # the old read completes: stays
    assert commit(t, entry(12, 20, 8, "op10", 13, 8)) == 20  # overlaps W from below


def test_void_seqs_count_as_covered() -> None:
    t = RangeTracker({})
    # (0, 10] holds 7 records: 3 seqs were evicted and will never come.
    assert commit(t, entry(0, 10, 7, "op10", 1, 7)) == 10


def test_same_interval_with_another_count_is_another_read() -> None:
    t = RangeTracker({})
    assert commit(t, entry(0, 10, 10, "op10", 1, 6)) == 0
    # Telemetry evicted between two reads: (0, 10] now holds 8. Mixing the two reads would
    # reach 6 + 4 = 10 without the 4 records of op20 the first read had.
    assert commit(t, entry(0, 10, 8, "op20", 2, 2)) == 0
    assert commit(t, entry(0, 10, 8, "op10", 1, 6)) == 10


def test_plan_changes_nothing_until_applied() -> None:
    t = RangeTracker({STREAM: 5})
    plan = t.plan([entry(5, 9, 4, "op10", 6, 4)])
    assert plan.watermarks == {STREAM: 9}
    assert t.watermark(STREAM) == 5
    assert t.pending(STREAM) == 0
    t.apply(plan)
    assert t.watermark(STREAM) == 9


def test_within_one_batch_a_message_counts_once() -> None:
    t = RangeTracker({})
    e = entry(0, 4, 4, "op10", 1, 2)
    assert commit(t, e, e) == 0


def test_a_draft_knows_the_watermark_after_every_entry() -> None:
    """The incremental watermark the store releases held messages by is the one ``plan``
    computes for the same entries, for any order, overlap, duplicate and void."""
    rnd = random.Random(7)
    for _ in range(300):
        start = rnd.randrange(0, 5)
        tracker = RangeTracker({STREAM: start})
        if rnd.random() < 0.5:  # some progress committed already
            tracker.apply(tracker.plan([entry(12, 20, 8, "op10", 13, 8)]))
        entries: list[RangeEntry] = []
        for _ in range(rnd.randrange(1, 12)):
            after = rnd.randrange(0, 20)
            last = after + rnd.randrange(1, 6)
            count = rnd.randrange(1, last - after + 1)
            first = rnd.randrange(1, count + 1)  # one or two messages per read
            parts = [first, count - first] if first < count else [count]
            for n, station in zip(parts, ("op10", "op20"), strict=False):
                entries.append(entry(after, last, count, station, after + 1, n))
        rnd.shuffle(entries)
        draft = tracker.draft()
        for k, e in enumerate(entries, 1):
            draft.add(e)
            assert draft.watermark(STREAM) == tracker.plan(entries[:k]).watermark(
                STREAM, tracker.watermark(STREAM)
            ), entries[:k]
        assert draft.plan().watermarks == tracker.plan(entries).watermarks


def test_held_messages_sort_by_range_dedupe_and_respect_the_bound() -> None:
    def message(after: int, seqs: list[int], station: str = "op10") -> Accepted:
        payload = envelope(readings(seqs, station), rng=(after, seqs[-1], len(seqs)))
        return accepted(payload, topic(station))

    held = HeldMessages(max_records=5)
    assert held.add(held.wrap(message(6, [7, 8])))
    assert held.add(held.wrap(message(3, [4, 5, 6])))
    assert held.add(held.wrap(message(3, [4, 5, 6])))  # the same read again: held once
    assert (held.records_of(STREAM), held.records) == (5, 5)
    assert not held.add(held.wrap(message(8, [9])))  # a 6th record: over the bound
    assert [h.range.after for h in held.pending(STREAM)] == [3, 6]
    assert [h.range.after for h in held.remove_first(STREAM, 1)] == [3]
    assert held.records == 2
    held.remove_first(STREAM, 1)
    assert STREAM not in held
    assert held.records == 0
