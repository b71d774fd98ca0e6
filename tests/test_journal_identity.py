"""The journal's identity (buffer/identity.py): an id made with the file, a new random epoch at
every opening, old journals upgraded in place, and bad input that is alarmed, never lost."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from buffer.identity import ID, JournalTooNew
from buffer.journal import LEGACY_EPOCH, Epoch, JournalIdentity
from buffer.sqlite import SqliteBuffer
from kernel.alarms import Alarms
from kernel.errors import StartupError
from kernel.model import RecordDraft, RecordKind


def drafts(n: int, station: str = "ST10") -> list[RecordDraft]:
    return [RecordDraft(station, RecordKind.READINGS, {"values": {"p": i}}) for i in range(n)]


async def opened(path: Path, alarms: Alarms | None = None) -> SqliteBuffer:
    journal = SqliteBuffer(path, synchronous="NORMAL", alarms=alarms)
    await journal.start()
    return journal


async def fill(path: Path, n: int) -> JournalIdentity:
    journal = await opened(path)
    try:
        journal.append(drafts(n))
        await journal.flush()
        return journal.identity
    finally:
        await journal.stop()


def make_format_1(path: Path) -> None:
    """What a journal of the previous version looks like: no id, no epochs, no format."""
    db = sqlite3.connect(path)
    try:
        db.execute("DROP TABLE epochs")
        db.execute("DELETE FROM meta WHERE key IN ('format', 'journal_id')")
        db.commit()
    finally:
        db.close()


async def test_every_opening_draws_a_new_epoch_where_the_last_one_ended(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    first = await fill(path, 10)
    assert ID.match(first.journal)
    assert [e.first for e in first.epochs] == [1]
    journal = await opened(path)
    try:
        again = journal.identity
        assert again.journal == first.journal, "the file keeps its id"
        assert [e.first for e in again.epochs] == [1, 11], "rows keep the epoch they were made in"
        assert again.epochs[0] == first.epoch
        assert ID.match(again.epoch.id)
        assert again.epoch.id != first.epoch.id
        assert again.epoch_of(10) == first.epoch
        assert again.epoch_of(11) == again.epoch
        assert again.end_of(first.epoch) == 10
        assert again.end_of(again.epoch) is None
    finally:
        await journal.stop()


async def test_epochs_without_rows_are_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    await fill(path, 5)
    journal = await opened(path)
    try:
        assert await journal.delete_through(5) == 5
    finally:
        await journal.stop()
    for _ in range(3):  # openings that append nothing
        journal = await opened(path)
        await journal.stop()
    journal = await opened(path)
    try:
        assert [e.first for e in journal.identity.epochs] == [6]
    finally:
        await journal.stop()


async def test_a_copy_of_the_file_numbers_its_new_records_in_an_epoch_of_its_own(
    tmp_path: Path,
) -> None:
    """A restored backup, a disk image on a second PC: the rows it has keep their key, and
    whatever it appends next cannot share a key with what the original appended."""
    original = tmp_path / "j.db"
    await fill(original, 20)
    copy = tmp_path / "copy.db"
    shutil.copy(original, copy)
    a, b = await opened(original), await opened(copy)
    try:
        assert a.identity.journal == b.identity.journal
        assert a.identity.epochs[0] == b.identity.epochs[0]
        assert a.identity.epoch.first == b.identity.epoch.first == 21
        assert a.identity.epoch.id != b.identity.epoch.id
    finally:
        await a.stop()
        await b.stop()


async def test_a_journal_of_the_previous_version_keeps_its_rows_as_the_legacy_epoch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    await fill(path, 30)
    make_format_1(path)
    journal = await opened(path)
    try:
        identity = journal.identity
        assert ID.match(identity.journal)
        assert identity.epochs[0] == Epoch(LEGACY_EPOCH, 1)
        assert identity.epoch.first == 31
        assert [r.seq for r in await journal.read_batch(0, 100)] == list(range(1, 31))
        assert journal.append(drafts(1)) == 31, "seqs go on"
    finally:
        await journal.stop()


async def test_a_journal_from_a_newer_version_is_left_alone_with_a_clear_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    await fill(path, 3)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '9' WHERE key = 'format'")
    db.commit()
    db.close()
    before = path.read_bytes()
    journal = SqliteBuffer(path)
    with pytest.raises(JournalTooNew) as info:
        await journal.start()
    assert isinstance(info.value, StartupError), "the CLI reports it as one line, exit 75"
    text = str(info.value)
    assert "newer edge-agent" in text
    assert "format 9" in text
    assert f"mv {path} {path}.newer" in text
    assert path.read_bytes() == before, "nothing written"


async def test_an_unreadable_identity_is_alarmed_and_its_rows_go_out_under_a_new_epoch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.db"
    await fill(path, 12)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = 'garbage' WHERE key = 'journal_id'")
    db.execute("UPDATE epochs SET epoch = 'not an id'")
    db.commit()
    db.close()
    alarms = Alarms()
    journal = await opened(path, alarms)
    try:
        identity = journal.identity
        assert ID.match(identity.journal)
        (orphan, opening) = identity.epochs
        assert ID.match(orphan.id)
        assert orphan.first == 1
        assert opening.first == 13
        assert await journal.count() == 12, "every row kept"
        (alarm,) = alarms.active()
        assert alarm.code == "journal_identity"
        assert "may keep some of them twice" in alarm.message
        assert "Nothing was deleted" in alarm.message
    finally:
        await journal.stop()
    journal = await opened(path, Alarms())
    try:
        assert journal.identity.epochs[0] == orphan, "repaired once, for good"
    finally:
        await journal.stop()


async def test_claim_names_the_other_agents_whose_rows_are_here(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    journal = await opened(path)
    try:
        assert await journal.claim("line3-pc1") == {}
        journal.append(drafts(7))
        await journal.flush()
    finally:
        await journal.stop()
    journal = await opened(path)
    try:
        journal.append(drafts(2))
        await journal.flush()
        assert await journal.claim("line4-pc1") == {"line3-pc1": (7, 7)}
        await journal.delete_through(7)
        assert await journal.claim("line4-pc1") == {}
    finally:
        await journal.stop()


async def test_rekey_gives_an_epoch_a_new_id_for_good(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    await fill(path, 4)
    make_format_1(path)
    journal = await opened(path)
    try:
        renamed = await journal.rekey(LEGACY_EPOCH)
        assert ID.match(renamed.epochs[0].id)
        assert renamed.epochs[0].first == 1
        assert renamed.epoch == journal.identity.epoch
    finally:
        await journal.stop()
    journal = await opened(path)
    try:
        assert journal.identity.epochs[0] == renamed.epochs[0]
    finally:
        await journal.stop()
