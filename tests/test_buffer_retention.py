"""Retention classes: telemetry is bounded (rows, bytes, age) and gives way oldest first,
counted and reported; trace records never leave except by delivery."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from buffer.policy import DiskWatermarks, TelemetryBounds
from buffer.sqlite import EVICT_CHUNK, SqliteBuffer
from edge_agent.config import BufferConfig
from kernel.alarms import Alarms
from kernel.model import TELEMETRY_KINDS, RecordDraft, RecordKind
from tests.waiting import wait_until

TRACE_KINDS = [k for k in RecordKind if k not in TELEMETRY_KINDS]
TELE = {k.value for k in TELEMETRY_KINDS}


def reading(i: int) -> RecordDraft:
    """Telemetry: mostly ``readings``, every third one a ``reading`` an older version left."""
    if i % 3 == 0:
        return RecordDraft("ST10", RecordKind.READING, {"point": "p", "value": i})
    return RecordDraft("ST10", RecordKind.READINGS, {"values": {"p": i}})


def trace(i: int, kind: RecordKind = RecordKind.CONTEXT) -> RecordDraft:
    return RecordDraft("ST10", kind, {"key": "serial", "value": f"SN{i}"})


def mixed(n: int, every: int = 10) -> list[RecordDraft]:
    """``n`` records, one trace record (cycling through every trace kind) per ``every``."""
    return [
        trace(i, TRACE_KINDS[(i // every) % len(TRACE_KINDS)]) if i % every == 0 else reading(i)
        for i in range(n)
    ]


def rows(path: Path) -> list[tuple[int, str, int]]:
    """(seq, kind, size) of every row, read beside the journal's own connection (WAL)."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT seq, kind, size FROM records ORDER BY seq").fetchall()
    finally:
        db.close()


def quiet_disk(_: str) -> object:
    class Usage:
        free = 1 << 50

    return Usage()


def journal(path: Path, **kwargs: object) -> SqliteBuffer:
    kwargs.setdefault("disk_usage", quiet_disk)
    return SqliteBuffer(path, synchronous="NORMAL", **kwargs)  # type: ignore[arg-type]


def assert_totals_match(b: SqliteBuffer) -> None:
    """The running totals (kept in memory) agree with the table."""
    tele = [r for r in rows(b.path) if r[1] in TELE]
    assert b.telemetry_rows == len(tele)
    assert b.telemetry_bytes == sum(r[2] for r in tele)


async def test_row_bound_evicts_oldest_telemetry_and_never_trace(tmp_path: Path) -> None:
    b = journal(tmp_path / "j.db", telemetry=TelemetryBounds(max_rows=100))
    await b.start()
    try:
        drafts = mixed(600)
        b.append(drafts)
        await b.flush()
        await b.maintain()
        kept = rows(b.path)
        trace_seqs = [i + 1 for i, d in enumerate(drafts) if d.kind not in TELEMETRY_KINDS]
        assert [s for s, k, _ in kept if k not in TELE] == trace_seqs
        tele = [s for s, k, _ in kept if k in TELE]
        # Down to 1% under the bound, and the newest are the ones kept.
        assert 99 <= len(tele) <= 100
        all_readings = [i + 1 for i, d in enumerate(drafts) if d.kind in TELEMETRY_KINDS]
        assert tele == all_readings[-len(tele) :]
        assert b.evicted_rows == len(all_readings) - len(tele)
        assert b.evicted_first_seq == all_readings[0]
        assert b.evicted_last_seq == all_readings[-len(tele) - 1]
        assert b.depth == len(kept) == await b.count()
        assert_totals_match(b)
        stats = b.stats()
        assert stats["evicted_rows"] == b.evicted_rows
        assert stats["telemetry_rows"] == len(tele)
        assert stats["evicted_bytes"] == b.evicted_bytes > 0
    finally:
        await b.stop()


async def test_byte_bound_counts_body_bytes(tmp_path: Path) -> None:
    b = journal(tmp_path / "j.db", telemetry=TelemetryBounds(max_rows=None, max_bytes=5_000))
    await b.start()
    try:
        b.append([reading(i) for i in range(1000)])
        await b.flush()
        await b.maintain()
        assert 4_950 - 60 <= b.telemetry_bytes <= 5_000
        assert_totals_match(b)
        assert b.evicted_bytes + b.telemetry_bytes == sum(
            len(json.dumps({"seq": i + 1, **reading(i).body}, separators=(",", ":")))
            for i in range(1000)
        )
    finally:
        await b.stop()


async def test_age_bound_uses_commit_time(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    b = journal(
        tmp_path / "j.db",
        telemetry=TelemetryBounds(max_age=3600),
        clock=lambda: now[0],
    )
    await b.start()
    try:
        b.append(mixed(100))
        await b.flush()
        now[0] += 1800
        b.append([reading(i) for i in range(10)])
        await b.flush()
        await b.maintain()
        assert b.evicted_rows == 0
        now[0] += 1801  # the first 100 are past max_age, the 10 are not
        await b.maintain()
        kept = rows(b.path)
        assert [s for s, k, _ in kept if k in TELE] == list(range(101, 111))
        assert len([k for _, k, _ in kept if k not in TELE]) == 10  # trace does not age out
        assert b.evicted_rows == 90
        assert_totals_match(b)
    finally:
        await b.stop()


async def test_eviction_is_reported_by_alarm_and_a_rate_limited_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alarms = Alarms()
    b = journal(tmp_path / "j.db", telemetry=TelemetryBounds(max_rows=50), alarms=alarms)
    await b.start()
    try:
        with caplog.at_level(logging.WARNING, logger="buffer.sqlite"):
            for i in range(40):
                b.append([reading(j) for j in range(i * 20, i * 20 + 20)])
                await b.flush()
                await b.maintain()
        assert b.evicted_rows >= 700
        lines = [
            r for r in caplog.records if r.name == "buffer.sqlite" and "evicted" in r.getMessage()
        ]
        assert len(lines) == 1, "one line per report period, not one per eviction"
        assert alarms.is_active("telemetry_evicted")
        (alarm,) = alarms.active()
        assert "max_rows" in alarm.message
        b.telemetry_alarm_quiet = 0.0
        await b.maintain()
        assert not alarms.is_active("telemetry_evicted")
    finally:
        await b.stop()


async def test_totals_follow_delete_and_delete_through(tmp_path: Path) -> None:
    b = journal(tmp_path / "j.db")
    await b.start()
    try:
        b.append(mixed(300, every=3))
        await b.flush()
        assert_totals_match(b)
        assert await b.delete([1, 2, 5, 7, 9, 11, 13, 15, 17, 19, 21, 40]) == 12
        assert_totals_match(b)
        assert await b.delete_through(100) == 100 - 12
        assert_totals_match(b)
        assert b.depth == 200 == await b.count()
        assert await b.delete_through(100) == 0
        assert await b.delete_through(10**12) == 200
        assert b.telemetry_rows == b.telemetry_bytes == b.depth == 0
    finally:
        await b.stop()


async def test_read_batch_until_seq_is_an_inclusive_upper_bound(tmp_path: Path) -> None:
    b = journal(tmp_path / "j.db")
    await b.start()
    try:
        b.append(mixed(20))
        await b.flush()
        assert [r.seq for r in await b.read_batch(3, 100, until_seq=7)] == [4, 5, 6, 7]
        assert [r.seq for r in await b.read_batch(3, 2, until_seq=7)] == [4, 5]
        assert await b.read_batch(7, 100, until_seq=7) == []
        assert len(await b.read_batch(0, 100, until_seq=None)) == 20
    finally:
        await b.stop()


async def test_a_lowered_bound_is_enforced_in_chunks_while_commits_go_on(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    b = journal(path, telemetry=TelemetryBounds(max_rows=None))
    await b.start()
    b.append([reading(i) for i in range(3 * EVICT_CHUNK)])
    await b.stop()
    b = journal(path, telemetry=TelemetryBounds(max_rows=1000))
    await b.start()
    try:
        assert b.telemetry_rows == 3 * EVICT_CHUNK  # computed once at open
        b.append([trace(1)])
        await b.flush()
        await wait_until(lambda: b.telemetry_rows <= 1000, what="telemetry down to the bound")
        assert b.evicted_rows == 3 * EVICT_CHUNK - b.telemetry_rows
        assert_totals_match(b)
        assert [k for _, k, _ in rows(path)].count("context") == 1
    finally:
        await b.stop()


OLD_SCHEMA = """
CREATE TABLE records (seq INTEGER PRIMARY KEY, station TEXT NOT NULL, kind TEXT NOT NULL,
                      body TEXT NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


async def test_journal_from_before_retention_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    with db:
        db.executemany(
            "INSERT INTO records VALUES (?, 'ST10', ?, ?)",
            [(i, "reading" if i % 2 else "context", f'{{"seq":{i}}}') for i in range(1, 11)],
        )
        db.execute("INSERT INTO meta VALUES ('last_seq', '12')")
    db.close()
    now = [2_000_000_000.0]
    b = journal(path, telemetry=TelemetryBounds(max_age=60), clock=lambda: now[0])
    await b.start()
    try:
        assert b.committed_seq == 12
        assert b.telemetry_rows == 5
        assert b.telemetry_bytes == sum(len(f'{{"seq":{i}}}') for i in range(1, 11, 2))
        assert b.append([reading(0)]) == 13
        await b.flush()
        await b.maintain()
        assert b.evicted_rows == 0, "migrated rows count as committed at the upgrade"
        assert_totals_match(b)
        assert [r.seq for r in await b.read_batch(0, 100)] == [*range(1, 11), 13]
    finally:
        await b.stop()


def test_defaults_agree_with_the_config() -> None:
    cfg = BufferConfig()
    b = SqliteBuffer.from_config(cfg)
    assert b.telemetry == TelemetryBounds()
    assert b.disk == DiskWatermarks()
    assert b.max_bytes is None
    assert cfg.telemetry.max_rows == TelemetryBounds().max_rows
    assert cfg.telemetry.max_bytes == TelemetryBounds().max_bytes
    assert cfg.telemetry.max_age == TelemetryBounds().max_age
    assert cfg.disk.warn_free_bytes == DiskWatermarks().warn_free_bytes
    assert cfg.disk.critical_free_bytes == DiskWatermarks().critical_free_bytes
    assert cfg.disk.check_interval == DiskWatermarks().check_interval
    custom = BufferConfig.model_validate(
        {
            "max_bytes": 1 << 24,
            "telemetry": {"max_rows": 10, "max_bytes": None, "max_age": 60},
            "disk": {"warn_free_bytes": 100, "critical_free_bytes": 10, "check_interval": 1},
        }
    )
    b = SqliteBuffer.from_config(custom)
    assert b.max_bytes == 1 << 24
    assert b.telemetry == TelemetryBounds(max_rows=10, max_bytes=None, max_age=60)
    assert b.disk == DiskWatermarks(100, 10, 1)


def test_config_refuses_critical_above_warning() -> None:
    with pytest.raises(ValueError, match="critical_free_bytes"):
        BufferConfig.model_validate({"disk": {"warn_free_bytes": 10, "critical_free_bytes": 20}})
