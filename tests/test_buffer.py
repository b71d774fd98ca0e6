"""The journal: ordered, durable, seq forever increasing, rows leave only by delete."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from buffer.sqlite import SqliteBuffer
from kernel.errors import BufferError_
from kernel.model import RecordDraft, RecordKind


def drafts(n: int, station: str = "ST10") -> list[RecordDraft]:
    return [RecordDraft(station, RecordKind.READING, {"i": i}) for i in range(n)]


async def test_seq_keeps_increasing_across_restarts_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    b = SqliteBuffer(path)
    await b.start()
    assert b.append(drafts(5)) == 5
    await b.flush()
    batch = await b.read_batch(0, 100)
    assert [r.seq for r in batch] == [1, 2, 3, 4, 5]
    assert await b.delete([r.seq for r in batch]) == 5
    assert b.depth == 0
    await b.stop()
    # Every row was delivered and deleted: the next number must still be 6, not 1.
    b = SqliteBuffer(path)
    await b.start()
    assert b.append(drafts(2)) == 7
    await b.stop()
    b = SqliteBuffer(path)
    await b.start()
    assert b.depth == 2
    assert b.committed_seq == 7
    assert [r.seq for r in await b.read_batch(0, 10)] == [6, 7]
    await b.stop()


async def test_stop_commits_everything_appended(tmp_path: Path) -> None:
    b = SqliteBuffer(tmp_path / "j.db")
    await b.start()
    for _ in range(50):
        b.append(drafts(100))
    await b.stop()
    b = SqliteBuffer(tmp_path / "j.db")
    await b.start()
    assert await b.count() == 5000
    bodies = await b.read_batch(0, 3)
    assert bodies[0].body == '{"seq":1,"i":0}'
    await b.stop()


async def test_read_batch_bounds(tmp_path: Path) -> None:
    b = SqliteBuffer(tmp_path / "j.db")
    await b.start()
    b.append(drafts(10))
    await b.flush()
    assert len(await b.read_batch(0, 4)) == 4
    assert [r.seq for r in await b.read_batch(7, 100)] == [8, 9, 10]
    one = len((await b.read_batch(0, 1))[0].body)
    assert len(await b.read_batch(0, 100, max_bytes=3 * one)) == 3
    # A record larger than max_bytes still goes, alone: nothing can wedge the queue.
    assert len(await b.read_batch(0, 100, max_bytes=1)) == 1
    await b.stop()


async def test_wait_empty_wakes_every_waiter(tmp_path: Path) -> None:
    b = SqliteBuffer(tmp_path / "j.db")
    await b.start()
    b.append(drafts(3))
    await b.flush()
    waiters = [asyncio.create_task(b.wait_empty()) for _ in range(3)]
    await b.delete([1])
    assert not any(w.done() for w in waiters)
    await b.delete([2, 3])
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    await b.stop()


async def test_cancelled_reader_does_not_kill_the_journal(tmp_path: Path) -> None:
    b = SqliteBuffer(tmp_path / "j.db")
    await b.start()
    b.append(drafts(1000))
    reads = [asyncio.create_task(b.read_batch(0, 1000)) for _ in range(20)]
    await asyncio.sleep(0)
    for r in reads:
        r.cancel()
    await asyncio.gather(*reads, return_exceptions=True)
    b.append(drafts(1))
    assert await b.flush() == 1001
    assert b.failure is None
    await b.stop()


async def test_append_before_start_is_an_error(tmp_path: Path) -> None:
    b = SqliteBuffer(tmp_path / "j.db")
    with pytest.raises(BufferError_, match="not running"):
        b.append(drafts(1))


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
