"""A damaged journal at start: set aside (never deleted), replaced, alarmed; its records
salvaged into the live journal; and the lock that keeps a journal to one owner."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from buffer.files import lock_path
from buffer.salvage import DamagedJournal, salvage
from buffer.sqlite import SqliteBuffer
from edge_agent.cli import _salvage as salvage_main
from kernel.alarms import Alarms
from kernel.errors import BufferError_
from kernel.model import RecordDraft, RecordKind
from simulators.scenario import demo_config
from tests.journal_helpers import LEAF_TABLE_PAGE, PAGE, corrupt_a_leaf

ROOT = Path(__file__).resolve().parent.parent


def record(i: int) -> RecordDraft:
    kind = RecordKind.READING if i % 3 else RecordKind.PART
    return RecordDraft("ST10", kind, {"n": i, "pad": "x" * 200})


async def write_journal(path: Path, n: int) -> None:
    b = SqliteBuffer(path, synchronous="NORMAL")
    await b.start()
    b.append([record(i) for i in range(n)])
    await b.stop()  # closing the last connection checkpoints the WAL into the file


def damaged_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if ".damaged-" in p.name)


async def test_damaged_journal_is_set_aside_and_replaced_above_every_old_seq(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "buffer.db"
    await write_journal(path, 3000)
    corrupt_a_leaf(path)
    alarms = Alarms()
    started = time.time_ns() // 1000
    b = SqliteBuffer(path, alarms=alarms, config_path="/etc/edge-agent/line3.yaml")
    with caplog.at_level(logging.CRITICAL):
        await b.start()
    try:
        (moved,) = [p for p in damaged_files(tmp_path) if not p.name.endswith(("-wal", "-shm"))]
        assert moved.stat().st_size > 3000 * 200, "moved whole, not truncated or deleted"
        # The new journal starts above anything the old one could have handed out.
        assert b.committed_seq >= started > 3000
        first = b.append([record(0)])
        assert first == b.committed_seq + 1
        (alarm,) = alarms.active()
        assert alarm.code == "buffer_damaged"
        assert str(moved) in alarm.message
        assert f"edge-agent buffer salvage -c /etc/edge-agent/line3.yaml {moved}" in alarm.message
        assert any(r.levelno == logging.CRITICAL for r in caplog.records)
    finally:
        await b.stop()
    # The starting point is in the new journal: a restart keeps counting from it, and the
    # alarm comes back until the damaged file has been salvaged.
    alarms = Alarms()
    b = SqliteBuffer(path, alarms=alarms)
    await b.start()
    try:
        assert b.committed_seq == first
        assert b.append([record(1)]) == first + 1
        assert [a.code for a in alarms.active()] == ["buffer_damaged"]
    finally:
        await b.stop()


async def test_a_file_that_is_not_a_database_is_set_aside_too(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    path.write_bytes(b"this is not sqlite at all" * 1000)
    b = SqliteBuffer(path)
    await b.start()
    try:
        assert b.committed_seq > 10**15  # clock in microseconds: nothing was readable
        assert b.append([record(1)]) == b.committed_seq + 1
    finally:
        await b.stop()
    (moved,) = damaged_files(tmp_path)
    assert moved.read_bytes().startswith(b"this is not sqlite")


async def test_salvage_copies_every_readable_record_once(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    await write_journal(path, 3000)
    corrupt_a_leaf(path)
    alarms = Alarms()
    b = SqliteBuffer(path, alarms=alarms)
    await b.start()
    (moved,) = [p for p in damaged_files(tmp_path) if not p.name.endswith(("-wal", "-shm"))]
    try:
        floor = b.committed_seq + 1
        report = await salvage(moved, b)
        # One page lost: a few consecutive seqs, reported as such; everything else is back.
        ((lo, hi),) = _merged(report.skipped)
        assert report.unusable == []
        lost = set(range(lo, hi + 1))
        assert 1 <= len(lost) <= 30
        assert report.read == 3000 - len(lost)
        assert report.appended == report.read
        assert report.unreadable_seqs == len(lost)
        copied = await b.read_batch(0, 10_000)
        assert [r.seq for r in copied] == list(range(floor, floor + report.read))
        originals = [s for s in range(1, 3001) if s not in lost]
        # The epoch the records were made in is the other half of their key: with it a
        # receiver recognizes the ones it has (docs/wire-format.md, "Salvaged records").
        epoch = json.loads(copied[0].body)["salvaged"]["epoch"]
        assert len(epoch) == 32
        assert epoch != b.identity.epoch.id
        for r, old in zip(copied, originals, strict=True):
            body = json.loads(r.body)
            assert body["salvaged"] == {"seq": old, "journal": moved.name, "epoch": epoch}
            assert body["seq"] == r.seq
            assert body["n"] == old - 1
            assert r.kind == record(old - 1).kind.value
        assert "could not read at most" in report.summary()

        again = await salvage(moved, b)
        assert again.appended == 0
        assert again.already == report.read
        assert await b.count() == report.read
    finally:
        await b.stop()
    alarms = Alarms()
    b = SqliteBuffer(path, alarms=alarms)
    await b.start()
    try:
        assert alarms.active() == [], "salvaged: the alarm is not raised again"
    finally:
        await b.stop()


def _merged(ranges: list[tuple[int, int | None]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        assert hi is not None
        if out and lo == out[-1][1] + 1:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


async def test_reader_reports_what_it_could_not_reach_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    await write_journal(path, 500)
    data = bytearray(path.read_bytes())
    leaves = [p for p in range(1, len(data) // PAGE) if data[p * PAGE] == LEAF_TABLE_PAGE]
    last = max(leaves)  # the rightmost leaf holds the highest seqs
    data[last * PAGE : (last + 1) * PAGE] = b"\xff" * PAGE
    path.write_bytes(bytes(data))
    reader = DamagedJournal(path)
    try:
        seqs = [row[0] for chunk in reader.rows(100) for row in chunk]
    finally:
        reader.close()
    assert seqs == list(range(1, seqs[-1] + 1))
    (lo, hi), *_ = reader.skipped
    assert lo == seqs[-1] + 1
    assert hi == 500, "bounded by the journal's last_seq mark"


async def test_a_second_opener_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    a = SqliteBuffer(path)
    await a.start()
    try:
        b = SqliteBuffer(path)
        with pytest.raises(BufferError_, match=f"{path} is in use by process {os.getpid()}"):
            await b.start()
        assert lock_path(path).exists()
    finally:
        await a.stop()
    b = SqliteBuffer(path)
    await b.start()
    await b.stop()


def write_config(tmp_path: Path) -> Path:
    cfg = demo_config(
        modbus_port=5020,
        modbus_host="127.0.0.1",
        mqtt_port=1883,
        buffer_path=str(tmp_path / "buffer.db"),
        stations=1,
        handshake=False,
    )
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_salvage_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    journal = tmp_path / "buffer.db"
    asyncio.run(write_journal(journal, 1000))
    corrupt_a_leaf(journal)

    async def replace() -> None:
        b = SqliteBuffer(journal)
        await b.start()
        await b.stop()

    asyncio.run(replace())
    (moved,) = [p for p in damaged_files(tmp_path) if not p.name.endswith(("-wal", "-shm"))]

    # The real command line once (its own process: the CLI sets up logging for itself).
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "buffer",
            "salvage",
            "-c",
            str(config),
            str(moved),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"salvage of {moved} into {journal}" in proc.stdout
    assert "record(s) read" in proc.stdout
    usage = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "buffer", "salvage", str(moved)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert usage.returncode == 2
    assert "give a config file (-c FILE)" in usage.stderr

    assert salvage_main(str(config), str(moved)) == 0
    assert ", 0 appended, " in capsys.readouterr().out
    assert salvage_main(str(config), str(tmp_path / "nope")) == 2
    assert salvage_main(str(config), str(journal)) == 2
    assert salvage_main(str(tmp_path / "missing.yaml"), str(moved)) == 2

    async def while_running() -> int:
        b = SqliteBuffer(journal)
        await b.start()
        try:
            return await asyncio.to_thread(salvage_main, str(config), str(moved))
        finally:
            await b.stop()

    capsys.readouterr()
    assert asyncio.run(while_running()) == 1
    assert "is in use" in capsys.readouterr().err


async def test_salvage_of_a_file_with_nothing_readable_says_so(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    path.write_bytes(b"\x00garbage" * 4096)
    b = SqliteBuffer(path)
    await b.start()
    (moved,) = damaged_files(tmp_path)
    try:
        report = await salvage(moved, b)
    finally:
        await b.stop()
    assert report.read == report.appended == 0
    assert report.error is not None
    assert report.unreadable_seqs is None
    assert "nothing readable through SQLite" in report.summary()
