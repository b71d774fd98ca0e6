"""Journals replaced in every way a plant meets, through a real Mosquitto and the real trace
store (SQLite, and PostgreSQL where the store tests run it): a deleted journal, one restored
from an older backup, the same config on two PCs at once, a damaged journal and its salvage,
agents and journals of the previous format. In each, every record of every journal ends up in
the store, once, and none is taken for another (docs/delivery.md, "The journal's identity").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from buffer.files import SIDE_FILES
from buffer.journal import LEGACY_EPOCH
from buffer.salvage import salvage
from buffer.sqlite import SqliteBuffer
from kernel.alarms import Alarms
from kernel.model import RecordDraft, RecordKind
from sync.config import MqttConfig
from sync.mqtt import MqttSync
from tests.journal_helpers import corrupt_a_leaf
from tests.mqtt_helpers import Mosquitto
from tests.store_helpers import (
    Publisher,
    StoreFactory,
    envelope,
    topic,
)
from tests.waiting import wait_until
from trace_store.service import TraceStore
from trace_store.storage import open_storage

AGENT = "line3-pc1"
SITE = "plant-a"
LINE = "line-3"
STATIONS = ("op10", "op20")
WAIT = 20.0


@dataclass
class Agent:
    journal: SqliteBuffer
    sync: MqttSync | None
    alarms: Alarms

    def append(self, tag: str, n: int) -> None:
        """``n`` records, each marked ``<tag>-<i>``: what the store must hold once each."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.journal.append(
            [
                RecordDraft(
                    STATIONS[i % 2],
                    RecordKind.READINGS if i % 5 else RecordKind.CONTEXT,
                    {
                        "kind": "readings" if i % 5 else "context",
                        "station": STATIONS[i % 2],
                        "ts": now,
                        "ctx": {"serial": None},
                        "mark": f"{tag}-{i}",
                    },
                )
                for i in range(n)
            ]
        )

    async def drained(self, timeout: float = WAIT) -> None:  # noqa: ASYNC109 - an assertion
        """Every record committed is confirmed by the store and gone from the journal."""
        journal, sync = self.journal, self.sync
        assert sync is not None
        await journal.flush()
        await wait_until(
            lambda: journal.depth == 0 and sync.status.store_watermark >= journal.committed_seq,
            timeout,
            "journal confirmed and emptied",
        )


@asynccontextmanager
async def running(path: Path, port: int, **mqtt: Any) -> AsyncIterator[Agent]:
    """An agent's journal and uplink (``confirm: store``) in this loop."""
    alarms = Alarms()
    journal = SqliteBuffer(path, synchronous="NORMAL", alarms=alarms)
    await journal.start()
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "confirm": "store",
        "backoff_initial": 0.02,
        "backoff_max": 0.3,
        "connect_timeout": 2.0,
        "batch_max_records": 50,
        "confirm_timeout": 5.0,
    }
    values.update(mqtt)
    sync = MqttSync(
        MqttConfig(**values), agent_id=AGENT, site=SITE, line=LINE, buffer=journal, alarms=alarms
    )
    task = asyncio.create_task(sync.run(), name="agent-sync")
    try:
        yield Agent(journal, sync, alarms)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await journal.stop()


async def offline(path: Path, tag: str, n: int) -> list[dict[str, Any]]:
    """Append to the journal at ``path`` with no uplink (the PC off the network); returns
    the rows it holds then, as their bodies."""
    journal = SqliteBuffer(path, synchronous="NORMAL")
    await journal.start()
    try:
        Agent(journal, None, Alarms()).append(tag, n)
        await journal.flush()
        return [json.loads(r.body) for r in await journal.read_batch(0, 100_000)]
    finally:
        await journal.stop()


def make_format_1(path: Path) -> None:
    """Turn a journal into one of the previous version: no id, no epochs."""
    db = sqlite3.connect(path)
    try:
        db.execute("DROP TABLE epochs")
        db.execute("DELETE FROM meta WHERE key IN ('format', 'journal_id')")
        db.commit()
    finally:
        db.close()


def vacuum(path: Path) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute("VACUUM")
    finally:
        db.close()


def marks_in_store(db: str) -> Counter[str]:
    """How many times each record mark is stored (anywhere: records and conflicts)."""
    with open_storage(db) as storage, storage._transaction():
        rows = storage._execute("SELECT body FROM records WHERE agent = ?", (AGENT,))
    return Counter(json.loads(body).get("mark") for (body,) in rows)


def expected(*tagged: tuple[str, int]) -> Counter[str]:
    return Counter(f"{tag}-{i}" for tag, n in tagged for i in range(n))


def remove_journal(path: Path) -> None:
    for p in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)):
        p.unlink(missing_ok=True)


def no_conflicts(store: TraceStore) -> bool:
    return bool(store.stats()["conflicts"] == 0)


def damaged_journals(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.iterdir()
        if p.name.startswith("buffer.db.damaged-") and not p.name.endswith(SIDE_FILES)
    ]


# ---- the scenarios ---------------------------------------------------------------------------


async def test_a_deleted_journal_starts_over_and_the_store_keeps_both(
    stores: StoreFactory, mosquitto: Mosquitto, db: str, tmp_path: Path
) -> None:
    """A re-imaged PC, a deleted buffer.db: the new journal numbers from 1 again. Before
    journals had an identity the store dropped its first records as copies of the old one's."""
    store = stores(db)
    path = tmp_path / "buffer.db"
    async with running(path, mosquitto.port) as old:
        old.append("old", 40)
        await old.drained()
        first = old.journal.identity
    remove_journal(path)
    async with running(path, mosquitto.port) as new:
        assert new.journal.identity.journal != first.journal
        new.append("new", 25)  # seqs 1..25 again
        assert new.journal.committed_seq <= 25
        await new.drained()
        assert not new.alarms.active(), [a.code for a in new.alarms.active()]
    assert marks_in_store(db) == expected(("old", 40), ("new", 25))
    assert no_conflicts(store)
    assert store.epochs(AGENT).keys() == {first.epoch.id, new.journal.identity.epoch.id}


async def test_a_journal_restored_from_an_older_backup_loses_nothing(
    stores: StoreFactory, mosquitto: Mosquitto, db: str, tmp_path: Path
) -> None:
    """The backup has seqs the store also holds from after the backup: those rows are the
    same records (same epoch), the ones appended after the restore are new records."""
    store = stores(db)
    path = tmp_path / "buffer.db"
    backup = tmp_path / "backup.db"
    await offline(path, "early", 20)  # seqs 1..20
    shutil.copy(path, backup)  # the nightly backup, of a stopped journal
    async with running(path, mosquitto.port) as a:
        a.append("later", 20)  # seqs 21..40: delivered, then lost with the disk
        await a.drained()
    remove_journal(path)
    shutil.copy(backup, path)
    async with running(path, mosquitto.port) as restored:
        assert restored.journal.committed_seq == 20
        restored.append("restored", 25)  # seqs 21..45 once more, other records
        await restored.drained()
        assert not restored.alarms.active(), [a.code for a in restored.alarms.active()]
    assert marks_in_store(db) == expected(("early", 20), ("later", 20), ("restored", 25))
    assert no_conflicts(store)


async def test_the_same_config_on_two_pcs_at_once(
    stores: StoreFactory, mosquitto: Mosquitto, db: str, tmp_path: Path
) -> None:
    """Same agent id, same client id: both raise ``duplicate_agent`` within seconds, both
    deliver, the store keeps the records of both apart and says so in its log and counters."""
    store = stores(db)
    async with (
        running(tmp_path / "pc1.db", mosquitto.port) as one,
        running(tmp_path / "pc2.db", mosquitto.port) as two,
    ):
        started = time.monotonic()
        sent = 0

        def both() -> bool:
            return one.alarms.is_active("duplicate_agent") and two.alarms.is_active(
                "duplicate_agent"
            )

        while not both() and time.monotonic() - started < 15:
            one.append(f"one{sent}", 3)
            two.append(f"two{sent}", 3)
            sent += 1
            await asyncio.sleep(0.1)  # the line's pace: a few records a second
        detected = time.monotonic() - started
        assert both(), "both PCs raise duplicate_agent"
        assert detected < 10, f"detected after {detected:.1f} s"
        alarm = {a.code: a.message for a in one.alarms.active()}["duplicate_agent"]
        assert two.journal.identity.journal in alarm
        # Keep both writing past the store's overlap window, then let both drain.
        while time.monotonic() - started < detected + 7:
            one.append(f"one{sent}", 3)
            two.append(f"two{sent}", 3)
            sent += 1
            await asyncio.sleep(0.1)
        await one.drained(30)
        await two.drained(30)
    assert store.wait_stats(lambda s: s["clashes"] >= 1, WAIT), store.stats()
    assert store.agent_stats()[AGENT].clash is not None
    want = expected(*((f"one{k}", 3) for k in range(sent)), *((f"two{k}", 3) for k in range(sent)))
    assert marks_in_store(db) == want
    assert no_conflicts(store)


async def test_a_damaged_journal_and_its_salvage_keep_every_key(
    stores: StoreFactory, mosquitto: Mosquitto, db: str, tmp_path: Path
) -> None:
    """The replacement journal has an identity of its own; salvaged records carry the epoch
    they were made in, so the store recognizes those it has and keeps the others."""
    store = stores(db)
    path = tmp_path / "buffer.db"
    copy = tmp_path / "copy.db"
    await offline(path, "delivered", 300)
    shutil.copy(path, copy)
    async with running(path, mosquitto.port) as a:
        await a.drained()  # the store has them; this file's copy still holds them
    remove_journal(path)
    shutil.copy(copy, path)
    await offline(path, "stranded", 300)  # never delivered
    vacuum(path)
    corrupt_a_leaf(path)
    async with running(path, mosquitto.port) as a:
        assert a.alarms.is_active("buffer_damaged")
        assert a.journal.committed_seq > 10**15, "still numbered above the old file"
        a.append("fresh", 10)
        (damaged,) = damaged_journals(tmp_path)
        report = await salvage(damaged, a.journal)
        assert report.appended >= 600 - 60
        await a.drained()
    stored = marks_in_store(db)
    assert max(stored.values()) == 1, "nothing stored twice"
    assert expected(("delivered", 300), ("fresh", 10)) - stored == Counter()
    stranded = sum(1 for m in stored if m.startswith("stranded-"))
    assert stranded >= 300 - 60, "all but the unreadable page of the stranded records"
    assert no_conflicts(store)


async def test_agents_and_journals_of_the_previous_format(
    stores: StoreFactory, mosquitto: Mosquitto, db: str, tmp_path: Path
) -> None:
    """Messages without an identity are the legacy epoch, keyed (agent, seq) as before. A
    journal of that version, upgraded, sends its old rows that way: the ones the store has are
    recognized; its new records get an epoch and share no key with them."""
    store = stores(db)
    path = tmp_path / "buffer.db"
    rows = await offline(path, "legacy", 30)  # seqs 1..30, journaled before the upgrade
    make_format_1(path)
    # The agent of the previous version delivered seqs 1..10 before it was upgraded.
    publisher = Publisher(mosquitto.port)
    try:
        for station in STATIONS:
            mine = [r for r in rows[:10] if r["station"] == station]
            publisher.publish(
                topic(station, SITE, LINE),
                envelope(mine, agent=AGENT, site=SITE, line=LINE, rng=(0, 10, 10)),
            )
    finally:
        publisher.close()
    assert store.wait_watermark(AGENT, 10, WAIT, epoch=LEGACY_EPOCH)
    async with running(path, mosquitto.port) as upgraded:
        assert upgraded.journal.identity.epochs[0].id == LEGACY_EPOCH
        upgraded.append("upgraded", 15)  # seqs 31..45, in a real epoch
        await upgraded.drained()
    assert store.watermark(AGENT, LEGACY_EPOCH) == 30
    assert marks_in_store(db) == expected(("legacy", 30), ("upgraded", 15))
    assert store.stats()["inserted"] == 45
    assert no_conflicts(store)


async def test_a_legacy_journal_the_store_cannot_tell_apart_is_sent_under_an_epoch(
    stores: StoreFactory, mosquitto: Mosquitto, db: str, tmp_path: Path
) -> None:
    """Before identities a replaced journal reused seqs: the store holds records up to seq 50
    of this agent id without an epoch, from another journal. The upgraded journal's own
    legacy rows (seqs 1..20) are other records: they get an epoch of their own and are all
    stored; a copy that met a held key first went to the conflicts table, not to the bin."""
    store = stores(db)
    publisher = Publisher(mosquitto.port)
    try:
        other = [
            {
                "seq": s,
                "kind": "readings",
                "station": "op10",
                "ts": "2026-01-01T00:00:00.000000Z",
                "ctx": {},
                "mark": f"other-{s}",
            }
            for s in range(1, 51)
        ]
        publisher.publish(
            topic("op10", SITE, LINE), envelope(other, site=SITE, line=LINE, rng=(0, 50, 50))
        )
    finally:
        publisher.close()
    assert store.wait_watermark(AGENT, 50, WAIT, epoch=LEGACY_EPOCH)
    path = tmp_path / "buffer.db"
    await offline(path, "mine", 20)
    make_format_1(path)
    async with running(path, mosquitto.port) as upgraded:
        await wait_until(
            lambda: upgraded.journal.identity.epochs[0].id != LEGACY_EPOCH,
            WAIT,
            "the legacy rows renamed",
        )
        await upgraded.drained()
    stored = marks_in_store(db)
    assert stored - Counter({f"other-{s}": 1 for s in range(1, 51)}) == expected(("mine", 20))
