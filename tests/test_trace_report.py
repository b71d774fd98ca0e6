"""One-line summaries of stored records, as the trace store's reports print them."""

from __future__ import annotations

from typing import Any

from trace_store.report import summary
from trace_store.storage import StoredRecord


def stored(kind: str, **body: Any) -> StoredRecord:
    return StoredRecord(
        "pc1", 7, "site", "line", "ST10", kind, "2026-12-03T10:00:00.000000Z", None,
        {"seq": 7, "kind": kind, "station": "ST10", **body}, "2026-12-03T10:00:01.000000Z",
    )  # fmt: skip


def test_an_unobserved_window_says_which_points_from_when_to_when_and_why() -> None:
    record = stored(
        "unobserved",
        device="press1",
        since="2026-12-03T09:59:50.000000Z",
        until="2026-12-03T10:00:00.000000Z",
        points=["part_serial", "cycle_counter"],
        reason="subscription rebuilt (server restarted)",
    )
    assert summary(record) == (
        "press1: changes of part_serial, cycle_counter from 2026-12-03T09:59:50.000000Z to "
        "2026-12-03T10:00:00.000000Z may be missing (subscription rebuilt (server restarted))"
    )


def test_a_queue_overflow_window_starts_at_the_previous_value() -> None:
    record = stored(
        "unobserved", device="press1", since=None, until="2026-12-03T10:00:00.000000Z",
        points=["force"], reason="queue overflowed",
    )  # fmt: skip
    assert "changes of force from the previous value to" in summary(record)


def test_a_kind_this_version_does_not_know_is_shown_whole() -> None:
    assert summary(stored("future_kind", answer=42)) == '{"answer":42}'
