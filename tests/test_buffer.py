"""The journal's contract: ordered, durable, seq forever increasing, rows leave only by delete
(or, telemetry only, by eviction, counted), station state kept with its records.

Every test here runs against every implementation of ``buffer.journal.Journal``, through the
protocol only: a new implementation is one more entry in ``IMPLEMENTATIONS`` (a function that
makes an unstarted journal at a path; a journal made again at the same path must find what was
committed there). What is particular to ``SqliteBuffer`` is at the end of the file and in
test_buffer_retention.py, test_buffer_disk.py and test_buffer_corruption.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from buffer.journal import STATS_KEYS, Journal
from buffer.policy import TelemetryBounds
from buffer.sqlite import SqliteBuffer
from kernel.errors import BufferError_
from kernel.model import TELEMETRY_KINDS, RecordDraft, RecordKind
from tests.modbus_helpers import wait_until

Make = Callable[..., Journal]
"""(path, *, telemetry: TelemetryBounds = TelemetryBounds()) -> an unstarted journal."""


class RoomyDisk:
    """Free space that never runs short: the contract is tested without storage pressure."""

    free = 1 << 50

    def __call__(self, _: str) -> RoomyDisk:
        return self


def sqlite_journal(path: Path, *, telemetry: TelemetryBounds = TelemetryBounds()) -> Journal:  # noqa: B008
    return SqliteBuffer(path, telemetry=telemetry, disk_usage=RoomyDisk())


IMPLEMENTATIONS = [pytest.param(sqlite_journal, id="sqlite")]


class Journals:
    """Makes one test's journals (under its tmp_path) and stops those still running."""

    def __init__(self, make: Make, folder: Path) -> None:
        self._make = make
        self.folder = folder
        self._running: list[Journal] = []

    def made(self, name: str = "j.db", **options: Any) -> Journal:
        return self._make(self.folder / name, **options)

    async def open(self, name: str = "j.db", **options: Any) -> Journal:
        journal = self.made(name, **options)
        await journal.start()
        self._running.append(journal)
        return journal

    async def reopen(self, journal: Journal, name: str = "j.db", **options: Any) -> Journal:
        await self.stop(journal)
        return await self.open(name, **options)

    async def stop(self, journal: Journal) -> None:
        self._running.remove(journal)
        await journal.stop()

    async def stop_all(self) -> None:
        while self._running:
            await self._running.pop().stop()


@pytest.fixture(params=IMPLEMENTATIONS)
async def journals(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journals]:
    made = Journals(request.param, tmp_path)
    try:
        yield made
    finally:
        await made.stop_all()


@pytest.fixture
async def journal(journals: Journals) -> Journal:
    """A started journal of each implementation, stopped after the test."""
    return await journals.open()


def drafts(n: int, station: str = "ST10") -> list[RecordDraft]:
    return [RecordDraft(station, RecordKind.READING, {"i": i}) for i in range(n)]


def mixed(n: int, every: int = 10) -> list[RecordDraft]:
    """``n`` records, one trace record (a context change) per ``every``, the rest readings."""
    return [
        RecordDraft("ST10", RecordKind.CONTEXT, {"key": "serial", "value": f"SN{i}"})
        if i % every == 0
        else RecordDraft("ST10", RecordKind.READINGS, {"values": {"p": i}})
        for i in range(n)
    ]


async def everything(journal: Journal) -> list[int]:
    return [r.seq for r in await journal.read_batch(0, 1_000_000)]


# ---- appending and committing --------------------------------------------------------


async def test_append_gives_seqs_in_call_order_and_flush_commits_them(journal: Journal) -> None:
    assert journal.last_assigned_seq == 0
    assert journal.append(drafts(3)) == 3
    assert journal.append(drafts(2, station="ST20")) == 5
    assert journal.last_assigned_seq == 5
    assert await journal.flush() == 5
    assert journal.committed_seq == 5
    assert journal.depth == 5
    assert journal.new_data.is_set()
    batch = await journal.read_batch(0, 100)
    assert [(r.seq, r.station) for r in batch] == [(s, "ST10") for s in (1, 2, 3)] + [
        (4, "ST20"),
        (5, "ST20"),
    ]
    # The body is the record as it goes on the wire, its seq included.
    assert [json.loads(r.body) for r in batch[:2]] == [{"seq": 1, "i": 0}, {"seq": 2, "i": 1}]
    assert {r.kind for r in batch} == {"reading"}


async def test_flush_with_nothing_appended_returns_at_once(journal: Journal) -> None:
    assert await asyncio.wait_for(journal.flush(), 5) == 0
    journal.append(drafts(1))
    await journal.flush()
    assert await asyncio.wait_for(journal.flush(), 5) == 1


async def test_seq_keeps_increasing_across_restarts_and_deletes(journals: Journals) -> None:
    b = await journals.open()
    assert b.append(drafts(5)) == 5
    await b.flush()
    batch = await b.read_batch(0, 100)
    assert [r.seq for r in batch] == [1, 2, 3, 4, 5]
    assert await b.delete([r.seq for r in batch]) == 5
    assert b.depth == 0
    # Every row was delivered and deleted: the next number must still be 6, not 1.
    b = await journals.reopen(b)
    assert b.append(drafts(2)) == 7
    b = await journals.reopen(b)
    assert b.depth == 2
    assert b.committed_seq == 7
    assert await everything(b) == [6, 7]


async def test_stop_commits_everything_appended(journals: Journals) -> None:
    b = await journals.open()
    for _ in range(50):
        b.append(drafts(100))
    b = await journals.reopen(b)
    assert b.depth == 5000
    assert await everything(b) == list(range(1, 5001))
    await journals.stop(b)
    await b.stop()  # idempotent


async def test_append_before_start_is_an_error(journals: Journals) -> None:
    with pytest.raises(BufferError_, match="not running"):
        journals.made().append(drafts(1))


async def test_stats_hold_every_key_status_reads(journal: Journal) -> None:
    journal.append(drafts(4))
    await journal.flush()
    stats = journal.stats()
    assert set(stats) >= STATS_KEYS
    assert stats["depth"] == 4
    assert stats["committed_seq"] == 4
    assert stats["appended"] == stats["committed_total"] == 4
    assert stats["telemetry_rows"] == 4
    assert stats["evicted_rows"] == stats["dropped_readings"] == 0
    assert stats["full"] is False
    assert stats["disk_state"] == "ok"


async def test_probe_answers(journal: Journal) -> None:
    await asyncio.wait_for(journal.probe(), 5)


# ---- reading -------------------------------------------------------------------------


async def test_read_batch_bounds(journal: Journal) -> None:
    journal.append(drafts(10))
    await journal.flush()
    assert len(await journal.read_batch(0, 4)) == 4
    assert [r.seq for r in await journal.read_batch(7, 100)] == [8, 9, 10]
    one = len((await journal.read_batch(0, 1))[0].body)
    assert len(await journal.read_batch(0, 100, max_bytes=3 * one)) == 3
    # A record larger than max_bytes still goes, alone: nothing can wedge the queue.
    assert len(await journal.read_batch(0, 100, max_bytes=1)) == 1
    assert [r.seq for r in await journal.read_batch(3, 100, until_seq=7)] == [4, 5, 6, 7]
    assert [r.seq for r in await journal.read_batch(3, 2, until_seq=7)] == [4, 5]
    assert await journal.read_batch(7, 100, until_seq=7) == []


async def test_cancelled_reader_does_not_kill_the_journal(journal: Journal) -> None:
    journal.append(drafts(1000))
    reads = [asyncio.create_task(journal.read_batch(0, 1000)) for _ in range(20)]
    await asyncio.sleep(0)
    for r in reads:
        r.cancel()
    await asyncio.gather(*reads, return_exceptions=True)
    journal.append(drafts(1))
    assert await journal.flush() == 1001
    assert len(await journal.read_batch(0, 2000)) == 1001


# ---- deleting after confirmation -----------------------------------------------------


async def test_delete_removes_only_what_was_confirmed(journal: Journal) -> None:
    journal.append(drafts(30))
    await journal.flush()
    assert await journal.delete([1, 2, 5, 7, 9]) == 5
    assert await journal.delete([1, 2]) == 0, "already gone"
    assert journal.depth == 25
    assert await journal.delete_through(10) == 5
    assert journal.depth == 20
    assert await everything(journal) == list(range(11, 31))
    # Interleaved stations make many short runs: the same, however they are spread.
    assert await journal.delete(list(range(11, 31, 2))) == 10
    assert await everything(journal) == list(range(12, 31, 2))
    assert await journal.delete_through(10**12) == 10
    assert journal.depth == 0
    assert journal.stats()["telemetry_rows"] == 0


async def test_wait_empty_wakes_every_waiter(journal: Journal) -> None:
    journal.append(drafts(3))
    await journal.flush()
    waiters = [asyncio.create_task(journal.wait_empty()) for _ in range(3)]
    await journal.delete([1])
    assert not any(w.done() for w in waiters)
    await journal.delete([2, 3])
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    await asyncio.wait_for(journal.wait_empty(), 5)


# ---- eviction ------------------------------------------------------------------------


async def test_telemetry_over_its_bound_gives_way_oldest_first_and_trace_stays(
    journals: Journals,
) -> None:
    b = await journals.open(telemetry=TelemetryBounds(max_rows=100))
    records = mixed(600)
    b.append(records)
    await b.flush()
    await wait_until(lambda: b.stats()["telemetry_rows"] <= 100, 10, "telemetry down to the bound")
    kept = await b.read_batch(0, 1000)
    trace = [i + 1 for i, d in enumerate(records) if d.kind not in TELEMETRY_KINDS]
    readings = [i + 1 for i, d in enumerate(records) if d.kind in TELEMETRY_KINDS]
    assert [r.seq for r in kept if r.kind == "context"] == trace
    tele = [r.seq for r in kept if r.kind != "context"]
    assert tele == readings[-len(tele) :], "the newest are the ones kept"
    stats = b.stats()
    assert stats["evicted_rows"] == len(readings) - len(tele) > 0
    assert stats["evicted_first_seq"] == readings[0]
    assert stats["evicted_last_seq"] == readings[-len(tele) - 1]
    assert stats["telemetry_rows"] == len(tele)
    assert b.depth == len(kept)


# ---- station state -------------------------------------------------------------------


def part(serial: str, counter: int, station: str = "ST10") -> RecordDraft:
    state = {"context": {"serial": serial}, "counter": counter}
    return RecordDraft(station, RecordKind.PART, {"serial": serial, "n": counter}, state=state)


async def test_station_state_and_part_serials_survive_a_restart(journals: Journals) -> None:
    b = await journals.open()
    assert await b.load_state() == ({}, {})
    b.append([part("SN1", 1), part("SN2", 2), part("SN1", 3), part("A7", 1, station="ST20")])
    b.append(drafts(2))  # readings carry no state: the last state stays
    await b.flush()
    b = await journals.reopen(b)
    states, parts = await b.load_state()
    assert states == {
        "ST10": {"context": {"serial": "SN1"}, "counter": 3},
        "ST20": {"context": {"serial": "A7"}, "counter": 1},
    }
    assert parts == {"ST10": {"SN2": 1, "SN1": 2}, "ST20": {"A7": 1}}
    assert list(parts["ST10"]) == ["SN2", "SN1"], "oldest first"


# ---- SqliteBuffer only ---------------------------------------------------------------


async def test_sqlite_body_is_compact_json(tmp_path: Path) -> None:
    b = SqliteBuffer(tmp_path / "j.db")
    await b.start()
    try:
        b.append(drafts(1))
        await b.flush()
        assert (await b.read_batch(0, 1))[0].body == '{"seq":1,"i":0}'
        assert await b.count() == 1
    finally:
        await b.stop()


async def test_unopenable_path_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    b = SqliteBuffer(tmp_path / "dir.db")
    with pytest.raises(BufferError_, match="cannot open buffer"):
        await b.start()


async def test_journal_directory_is_created(tmp_path: Path) -> None:
    b = SqliteBuffer(tmp_path / "data" / "sub" / "j.db")
    await b.start()
    try:
        assert b.append(drafts(1)) == 1
        assert await b.flush() == 1
    finally:
        await b.stop()
