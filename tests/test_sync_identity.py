"""The uplink's side of the journal identity, as tables: reads cut by epoch with ranges that
still chain up, the confirmed prefix over several epochs, the confirmation parser, and when a
status on the agent's own topic proves another agent runs with its id."""

from __future__ import annotations

import json

import pytest

from buffer.journal import LEGACY_EPOCH, Epoch, JournalIdentity, StoredRecord
from kernel.alarms import Alarms
from sync.confirm import parse_confirmation
from sync.duplicates import QUIET, DuplicateWatch
from sync.streams import Streams

E0, E1, E2 = Epoch("0" * 32, 1), Epoch("1" * 32, 101), Epoch("2" * 32, 201)
IDENTITY = JournalIdentity("j" * 32, (E0, E1, E2))


def rows(*seqs: int) -> list[StoredRecord]:
    return [StoredRecord(s, "op10", "readings", f'{{"seq":{s}}}') for s in seqs]


@pytest.mark.parametrize(
    ("after", "seqs", "parts"),
    [
        # One epoch: the read's own range.
        (40, [50, 60], [(E0, [50, 60], 40, 60)]),
        # Across two boundaries: each part ends where its epoch ends, the next begins there.
        (
            40,
            [50, 60, 150, 250],
            [(E0, [50, 60], 40, 100), (E1, [150], 100, 200), (E2, [250], 200, 250)],
        ),
        # The read starts below an epoch whose rows are gone: its own after, still a chain.
        (60, [205, 210], [(E2, [205, 210], 60, 210)]),
        (100, [101], [(E1, [101], 100, 101)]),
    ],
)
def test_a_read_is_cut_by_epoch_into_ranges_that_chain_up(
    after: int, seqs: list[int], parts: list[tuple[Epoch, list[int], int, int]]
) -> None:
    got = Streams(IDENTITY).split(rows(*seqs), after)
    assert [(p.epoch, [r.seq for r in p.records], p.after, p.last) for p in got] == parts


def test_the_confirmed_prefix_goes_through_epochs_in_order() -> None:
    streams = Streams(IDENTITY)
    assert streams.resume() == 0
    streams.confirm(E1.id, 200)  # a later epoch first: nothing below it moves
    assert streams.resume() == 0
    streams.confirm(E0.id, 60)
    assert streams.resume() == 60
    streams.confirm(E0.id, 100)  # E0 done; E1 done too; E2 begins at 201
    assert streams.resume() == 200
    streams.confirm(E2.id, 230)
    assert streams.resume() == 230


def test_an_old_epoch_confirmed_past_its_end_is_done() -> None:
    """A journal restored from a backup: the store has the old epoch further than this file
    (the lost original went on with it). Its rows here are all known."""
    streams = Streams(IDENTITY)
    streams.confirm(E0.id, 5000)
    assert streams.resume() == 100


def test_a_read_that_finds_nothing_below_settles_the_prefix() -> None:
    streams = Streams(IDENTITY)
    streams.confirm(E0.id, 60)
    streams.settle(60, 150, committed=300)  # rows 61..149 are gone (evicted, or never were)
    assert streams.resume() == 149
    streams.settle(200, 250, committed=300)  # from above the prefix: says nothing below it
    assert streams.resume() == 149
    streams.settle(120, 230, committed=300)  # from below it: nothing between it and 230
    assert streams.resume() == 229
    streams.settle(229, None, committed=260)
    assert streams.resume() == 260


def test_a_store_of_the_previous_version_confirms_the_whole_journal() -> None:
    streams = Streams(IDENTITY)
    streams.confirm_all(150)
    assert streams.resume() == 150
    streams.confirm(E2.id, 210)  # a store of this version again
    assert streams.resume() == 0


def test_the_legacy_epoch_end_is_known() -> None:
    legacy = JournalIdentity("j" * 32, (Epoch(LEGACY_EPOCH, 1), E1))
    assert Streams(legacy).legacy_end() == 100
    assert Streams(IDENTITY).legacy_end() is None


# ---- confirmations ---------------------------------------------------------------------------


def test_confirmations_of_both_versions_parse() -> None:
    new = parse_confirmation(
        json.dumps(
            {
                "schema": "edge-agent.confirm",
                "v": 1,
                "agent": "a",
                "seq": 3,
                "epochs": {E1.id: 150},
                "session": "s1",
                "store": "central",
            }
        ).encode(),
        "a",
    )
    assert (new.seq, new.epochs, new.session, new.store) == (3, {E1.id: 150}, "s1", "central")
    old = parse_confirmation(b'{"schema":"edge-agent.confirm","agent":"a","seq":7}', "a")
    assert (old.seq, old.epochs, old.session) == (7, None, None)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1]",
        b'{"schema":"edge-agent.confirm","agent":"b","seq":7}',
        b'{"schema":"edge-agent.confirm","agent":"a","seq":-1}',
        b'{"schema":"edge-agent.confirm","agent":"a","seq":true}',
        b'{"schema":"edge-agent.confirm","agent":"a","seq":1,"epochs":[1]}',
        b'{"schema":"edge-agent.confirm","agent":"a","seq":1,"epochs":{"x":"9"}}',
    ],
)
def test_anything_else_is_not_a_confirmation(payload: bytes) -> None:
    with pytest.raises(ValueError, match=r"not|bad"):
        parse_confirmation(payload, "a")


# ---- another agent with our id ------------------------------------------------------------------


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def status(epoch: str | None, state: str = "online") -> dict[str, object]:
    body: dict[str, object] = {"agent": "a", "state": state, "journal": "j2", "host": "pc2"}
    if epoch is not None:
        body["epoch"] = epoch
    return body


def watch(clock: Clock | None = None) -> DuplicateWatch:
    return DuplicateWatch("a", "j1", E1.id, Alarms(), clock=clock or Clock())


def test_a_status_published_while_we_run_is_proof() -> None:
    dups = watch()
    dups.connected()
    dups.status(status(E1.id), retained=False)  # our own echo
    dups.status(status(E2.id, "offline"), retained=False)  # one going away: nothing
    assert not dups.active
    dups.status(status(E2.id), retained=False)
    assert dups.active
    assert dups.seen_once
    (alarm,) = dups.alarms.active()
    assert "epoch " + E2.id in alarm.message
    assert "'pc2'" in alarm.message


def test_a_retained_status_proves_it_only_after_we_spoke_and_twice() -> None:
    """A stale status (a re-imaged PC's previous journal, our own previous run) is found
    once; two PCs sharing the client id find each other's on every connection."""
    dups = watch()
    dups.connected()
    dups.status(status(E2.id, "offline"), retained=True)  # before we said anything
    dups.acknowledged()
    dups.connected()
    dups.status(status(E2.id, "offline"), retained=True)  # once after: could be stale
    assert not dups.active
    dups.status(status(E2.id, "offline"), retained=True)  # same connection: still once
    assert not dups.active
    dups.connected()
    dups.status(status(E2.id, "offline"), retained=True)
    assert dups.active


def test_an_agent_of_the_previous_version_counts_too() -> None:
    dups = watch()
    dups.status(status(None), retained=False)
    assert dups.active
    assert "previous version" in dups.alarms.active()[0].message


def test_the_alarm_clears_once_the_other_is_quiet() -> None:
    clock = Clock()
    dups = watch(clock)
    dups.status(status(E2.id), retained=False)
    clock.now += QUIET - 1
    dups.expire()
    assert dups.active
    clock.now += 2
    dups.expire()
    assert not dups.active
    assert dups.seen_once, "the client id of its own stays"
