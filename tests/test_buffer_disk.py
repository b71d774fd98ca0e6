"""Storage pressure: disk watermarks, and a journal that cannot grow (SQLITE_FULL).

Free space is simulated (an injected ``disk_usage``) and "full" is SQLite's own page limit
(``max_bytes``), so nothing here fills a real disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from buffer.policy import DiskWatermarks, TelemetryBounds
from buffer.sqlite import SqliteBuffer
from kernel.alarms import Alarms
from kernel.errors import BufferError_
from kernel.model import RecordDraft, RecordKind
from tests.waiting import wait_until

KiB = 1024


@dataclass
class Disk:
    """A filesystem whose free space the test sets."""

    free: int = 1 << 40

    def usage(self, _: str) -> Disk:
        return self


def reading(i: int) -> RecordDraft:
    return RecordDraft("ST10", RecordKind.READING, {"point": "p", "value": i, "pad": "r" * 150})


def part(i: int) -> RecordDraft:
    return RecordDraft("ST10", RecordKind.CONTEXT, {"key": "serial", "n": i, "pad": "t" * 150})


def freelist_bytes(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        pages = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * int(db.execute("PRAGMA page_size").fetchone()[0])
    finally:
        db.close()


WATERMARKS = DiskWatermarks(warn_free_bytes=1000 * KiB, critical_free_bytes=100 * KiB)


async def test_watermarks_raise_and_clear_alarms_with_hysteresis(tmp_path: Path) -> None:
    disk, alarms = Disk(), Alarms()
    b = SqliteBuffer(
        tmp_path / "j.db", disk=WATERMARKS, disk_usage=disk.usage, alarms=alarms,
        synchronous="NORMAL",
    )  # fmt: skip
    await b.start()
    try:
        assert (await b.maintain())["disk_state"] == "ok"
        disk.free = 900 * KiB
        assert (await b.maintain())["disk_state"] == "low"
        assert [a.code for a in alarms.active()] == ["disk_low"]
        b.append([reading(1), part(1)])
        assert await b.flush() == 2  # below the warning only: nothing refused
        b.append([part(2)])  # (no telemetry left for the critical state to evict)
        await b.delete([1])
        disk.free = 99 * KiB
        await b.maintain()
        assert {a.code for a in alarms.active()} == {"disk_low", "disk_critical"}
        disk.free = 101 * KiB  # above the watermark, within its 5%: stays critical
        assert (await b.maintain())["disk_state"] == "critical"
        disk.free = 106 * KiB
        assert (await b.maintain())["disk_state"] == "low"
        assert [a.code for a in alarms.active()] == ["disk_low"]
        disk.free = 1020 * KiB
        assert (await b.maintain())["disk_state"] == "low"
        disk.free = 1100 * KiB
        stats = await b.maintain()
        assert stats["disk_state"] == "ok"
        assert stats["disk_free_bytes"] == 1100 * KiB
        assert alarms.active() == []
    finally:
        await b.stop()


async def test_critical_refuses_readings_without_a_seq_and_keeps_room_for_trace(
    tmp_path: Path,
) -> None:
    disk, alarms = Disk(), Alarms()
    path = tmp_path / "j.db"
    b = SqliteBuffer(
        path, disk=WATERMARKS, disk_usage=disk.usage, alarms=alarms, synchronous="NORMAL",
        telemetry=TelemetryBounds(max_rows=None, max_bytes=None, max_age=None),
    )  # fmt: skip
    await b.start()
    try:
        b.append([reading(i) for i in range(2000)])
        await b.flush()
        disk.free = 50 * KiB
        await b.maintain()
        await wait_until(
            lambda: not b.stats()["queued"] and b._writer.more is False,
            what="reserve evictions done",
        )
        await b.maintain()
        assert freelist_bytes(path) >= WATERMARKS.critical_free_bytes
        assert 0 < b.evicted_rows < 2000, "evicted for the reserve, not everything"
        # Readings are refused at append and take no seq: trace seqs stay contiguous.
        assert b.append([reading(1), part(1), reading(2), part(2)]) == 2002
        assert b.append([reading(3)]) == 2002
        assert b.dropped_readings == 3
        assert await b.flush() == 2002
        kinds = [r.kind for r in await b.read_batch(2000, 10)]
        assert kinds == ["context", "context"]
        disk.free = 2000 * KiB
        await b.maintain()
        assert b.append([reading(4)]) == 2003
        assert alarms.active() == [] or [a.code for a in alarms.active()] == ["telemetry_evicted"]
    finally:
        await b.stop()


def journal_full(tmp_path: Path, alarms: Alarms) -> SqliteBuffer:
    # About 60 pages of room: a few hundred records.
    return SqliteBuffer(
        tmp_path / "j.db", max_bytes=256 * KiB, alarms=alarms, disk_usage=Disk().usage,
        synchronous="NORMAL", max_batch=50,
    )  # fmt: skip


async def fill_with_trace(b: SqliteBuffer, appended: list[int]) -> asyncio.Task[int]:
    """Trace records until the journal holds them back; returns the pending flush."""
    assert b.alarms is not None
    full = asyncio.Event()
    b.alarms.subscribe(
        lambda: full.set() if b.alarms and b.alarms.is_active("buffer_full") else None
    )
    n = len(appended)
    for _ in range(10_000):
        first = b.last_assigned_seq + 1
        last = b.append([part(n + i) for i in range(10)])
        appended.extend(range(first, last + 1))
        n += 10
        flush = asyncio.create_task(b.flush())
        held = asyncio.create_task(full.wait())
        await asyncio.wait({flush, held}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        held.cancel()
        if full.is_set():
            assert b.stats()["full"]
            return flush
        assert flush.done(), "neither committed nor held"
    raise AssertionError("the journal never filled up")


async def test_full_journal_evicts_telemetry_then_holds_trace_until_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alarms = Alarms()
    b = journal_full(tmp_path, alarms)
    await b.start()
    appended: list[int] = []
    try:
        # Telemetry alone never fills it: the oldest gives way to the newest.
        for i in range(0, 3000, 100):
            b.append([reading(j) for j in range(i, i + 100)])
            assert await b.flush() == i + 100
        assert b.evicted_rows > 1000
        assert not alarms.is_active("buffer_full")
        readings_left = b.telemetry_rows
        assert readings_left > 0

        held = await fill_with_trace(b, appended)
        assert b.telemetry_rows == 0, "every reading went before trace was held back"
        assert alarms.is_active("buffer_full")
        assert "trace record(s) wait in memory" in alarms.active()[-1].message
        assert not held.done()
        # Held: readings are refused (no seq), trace keeps queueing, in order.
        before = b.last_assigned_seq
        assert b.append([reading(1)]) == before
        assert b.dropped_readings == 1
        more = b.append([part(-1), part(-2)])
        appended.extend([more - 1, more])
        assert not held.done()

        # Delivery frees room, as sync's deletes would: the held records go in at once.
        delivered = await b.read_batch(0, 120)
        assert all(r.kind == "context" for r in delivered)
        assert await b.delete([r.seq for r in delivered]) == 120
        assert await asyncio.wait_for(held, 10) >= appended[-5]
        assert await asyncio.wait_for(b.flush(), 10) == more
        assert not alarms.is_active("buffer_full")
        assert b.failure is None

        # Exact accounting: every trace record appended is committed exactly once, in order.
        rest = await b.read_batch(0, 100_000)
        assert [r.kind for r in rest] == ["context"] * len(rest)
        got = [r.seq for r in delivered] + [r.seq for r in rest]
        assert got == appended
        bodies = [json.loads(r.body) for r in delivered + rest]
        assert [x["seq"] for x in bodies] == appended
        assert [x["n"] for x in bodies] == [*range(len(appended) - 2), -1, -2]
    finally:
        await b.stop()


async def test_a_trace_record_that_does_not_fit_is_never_reported_committed(
    tmp_path: Path,
) -> None:
    """Full, no telemetry left in the file, and one batch of a reading and a trace record
    that cannot fit: the reading is dropped to make room, and that must not release a flush
    waiting for the trace record (a PLC "taken" or a reader's good-read would then be sent
    for a record that is only in memory)."""
    alarms = Alarms()
    b = journal_full(tmp_path, alarms)
    await b.start()
    appended: list[int] = []
    try:
        held = await fill_with_trace(b, appended)
        delivered = await b.read_batch(0, 100_000)
        await b.delete([r.seq for r in delivered])
        await asyncio.wait_for(held, 10)
        assert not alarms.is_active("buffer_full")
        huge = RecordDraft("ST10", RecordKind.CONTEXT, {"n": -1, "pad": "t" * 400_000})
        last = b.append([reading(0), huge])
        flush = asyncio.create_task(b.flush())
        # The hold's alarm is posted to the loop after whatever the drop posted: once it is
        # raised here, a wrongly settled seq would already have released the flush.
        await wait_until(lambda: alarms.is_active("buffer_full"), what="the trace record held")
        await asyncio.sleep(0)
        assert not flush.done(), f"flush returned {flush.result()} for seq {last} in memory"
        assert last not in [r.seq for r in await b.read_batch(last - 1, 10)]
    finally:
        with pytest.raises(BufferError_, match="never committed nor acknowledged"):
            await asyncio.wait_for(b.stop(), 20)
    with pytest.raises(BufferError_):
        await flush


async def test_stop_with_a_full_journal_gives_up_loudly_instead_of_hanging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alarms = Alarms()
    b = journal_full(tmp_path, alarms)
    await b.start()
    appended: list[int] = []
    held = await fill_with_trace(b, appended)
    with (
        caplog.at_level(logging.CRITICAL, logger="buffer.sqlite"),
        pytest.raises(BufferError_, match="never committed nor acknowledged"),
    ):
        await asyncio.wait_for(b.stop(), 20)
    with pytest.raises(BufferError_):
        await held
    assert any("full at shutdown" in r.getMessage() for r in caplog.records)
    # What was committed is intact and the seqs go on from there.
    b = SqliteBuffer(tmp_path / "j.db", disk_usage=Disk().usage)
    await b.start()
    try:
        seqs = [r.seq for r in await b.read_batch(0, 100_000)]
        assert seqs == [s for s in appended if s <= seqs[-1]]
        assert b.append([part(0)]) > seqs[-1]
    finally:
        await b.stop()


async def test_a_real_sqlite_full_error_rolls_back_and_keeps_the_journal_usable(
    tmp_path: Path,
) -> None:
    """No telemetry and no queue: the single record that does not fit waits, nothing breaks."""
    alarms = Alarms()
    b = journal_full(tmp_path, alarms)
    await b.start()
    try:
        appended: list[int] = []
        held = await fill_with_trace(b, appended)
        committed = await b.count()
        assert b.depth == committed
        assert await b.delete_through(appended[30]) == 31
        await asyncio.wait_for(held, 10)
        assert await b.count() == len(appended) - 31
        db = sqlite3.connect(b.path)
        try:
            assert db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        finally:
            db.close()
    finally:
        await b.stop()


async def test_held_records_are_retried_without_a_delete(tmp_path: Path) -> None:
    """Room may come back by other means than our own deletes: the retry timer finds it."""
    alarms = Alarms()
    b = journal_full(tmp_path, alarms)
    await b.start()
    try:
        appended: list[int] = []
        held = await fill_with_trace(b, appended)
        db = sqlite3.connect(b.path, timeout=10)
        try:
            with db:
                db.execute("DELETE FROM records WHERE seq <= ?", (appended[100],))
        finally:
            db.close()
        assert await asyncio.wait_for(held, 10) >= appended[-1]
        assert not alarms.is_active("buffer_full")
    finally:
        await b.stop()
