"""What the gate keeps in the journal: the newest blocked set, and each serial's latest part
result per station; a journal from before the gate opens and gains both."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from buffer import SqliteBuffer
from kernel.model import RecordDraft, RecordKind


def part(station: str, serial: str, result: str | None) -> RecordDraft:
    body = {"kind": "part", "station": station, "ts": "t", "serial": serial, "result": result}
    return RecordDraft(station, RecordKind.PART, body, state={"ctx": {}, "counter": None})


async def test_the_newest_blocked_set_is_kept_and_an_older_one_never_replaces_it(
    tmp_path: Path,
) -> None:
    journal = SqliteBuffer(tmp_path / "j.db")
    await journal.start()
    try:
        assert await journal.load_blocked() is None
        assert await journal.save_blocked(3, '{"version": 3}')
        assert not await journal.save_blocked(2, '{"version": 2}')  # saves may land late
        assert not await journal.save_blocked(3, '{"again": 3}')
        assert await journal.save_blocked(5, '{"version": 5}')
    finally:
        await journal.stop()
    journal = SqliteBuffer(tmp_path / "j.db")
    await journal.start()
    try:
        assert await journal.load_blocked() == (5, '{"version": 5}')
    finally:
        await journal.stop()


async def test_latest_part_results_survive_the_records_being_delivered(tmp_path: Path) -> None:
    journal = SqliteBuffer(tmp_path / "j.db")
    await journal.start()
    try:
        journal.append([part("ST10", "A", "ok"), part("ST10", "B", "nok")])
        journal.append([part("ST10", "A", "nok"), part("ST10", "B", "ok"), part("ST30", "C", "ok")])
        last = await journal.flush()
        await journal.delete_through(last)  # delivered: the records are gone
        assert await journal.count() == 0
        got = await journal.load_route_results(["ST10", "ST20"])
    finally:
        await journal.stop()
    assert got == {"ST10": {"A": "nok", "B": "ok"}, "ST20": {}}


async def test_a_journal_from_before_the_gate_opens_and_gains_its_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    journal = SqliteBuffer(path)
    await journal.start()
    journal.append([part("ST10", "OLD", "ok")])
    await journal.flush()
    await journal.stop()
    # Make it what the previous version left: no blocked_set table, no result column.
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("DROP TABLE blocked_set")
        db.execute("ALTER TABLE part_serials DROP COLUMN result")
        db.commit()
    journal = SqliteBuffer(path)
    await journal.start()
    try:
        # A serial recorded before the upgrade has no known result: a route rule refuses it.
        assert await journal.load_route_results(["ST10"]) == {"ST10": {"OLD": None}}
        assert await journal.load_blocked() is None
        assert await journal.save_blocked(1, "{}")
        journal.append([part("ST10", "OLD", "ok")])
        await journal.flush()
        assert await journal.load_route_results(["ST10"]) == {"ST10": {"OLD": "ok"}}
    finally:
        await journal.stop()
