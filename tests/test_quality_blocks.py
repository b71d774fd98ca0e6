"""Blocks, releases, the audit trail and recall reports on both backends (issue 20, store
side), and the ``edge-agent quality`` commands."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from tests.store_helpers import accepted, genealogy, write
from trace_store import cli as store_cli
from trace_store.quality import blocks as q
from trace_store.storage import Storage, open_storage


@pytest.fixture
def filled(storage: Storage) -> Storage:
    """The store of ``genealogy()``: lot L-STEEL -> SA-1, SA-2, SA-3 -> FG-1, FG-2."""
    write(storage, *(accepted(p, t) for t, p in genealogy()))
    return storage


def test_blocking_a_lot_keeps_its_recall_scope_and_publishes_a_new_version(
    filled: Storage,
) -> None:
    assert q.version(filled) == 0
    done = q.block(filled, "lot", "L-STEEL", "failed incoming inspection", "qe.meier")
    assert done.changed
    assert done.known
    assert done.version == 1
    assert done.message == (
        f"lot L-STEEL blocked (version 1); recall report {done.report}: 5 serial(s) affected"
    )
    report = q.report(filled, done.report or 0)
    assert report is not None
    by_serial = {r.serial: r for r in report.rows}
    assert {s: r.depth for s, r in by_serial.items()} == {
        "SA-1": 1,
        "SA-2": 1,
        "SA-3": 1,
        "FG-1": 2,
        "FG-2": 2,
    }
    # Where each one was last seen: its part record, the edge that reached it, or where it was
    # consumed as a component, whichever is newest.
    # (SA-1: its part record at op10, then consumed into FG-1 at op30.)
    assert (by_serial["SA-1"].last_station, by_serial["SA-1"].consumed_into) == ("op30", ("FG-1",))
    assert by_serial["SA-3"].last_station == "op20"
    assert by_serial["SA-1"].result == "ok"
    assert by_serial["FG-1"].via == "SA-1"
    assert report.made_by == "qe.meier"
    assert report.signed_by is None
    payload = q.blocked_set(filled)
    assert payload["v"] == 1
    assert payload["version"] == 1
    assert payload["lots"] == [
        {
            "key": "L-STEEL",
            "reason": "failed incoming inspection",
            "since": done.since,
            "by": "qe.meier",
        },
    ]
    assert payload["serials"] == []
    assert payload["products"] == []
    assert payload["at"].endswith("Z")
    assert len(payload["at"]) == len("2026-12-03T21:00:00.000Z")


def test_a_block_of_an_unknown_lot_is_allowed_and_says_so(filled: Storage) -> None:
    done = q.block(filled, "lot", "L0042", "supplier recall", "qe")
    assert done.changed
    assert not done.known
    assert done.message == "lot L0042 is not in the store yet: blocked anyway (version 1)"
    [entry] = q.audit(filled)
    assert entry.detail == "lot not in the store yet: blocked anyway"
    assert [b.key for b in q.blocks(filled)] == ["L0042"]


def test_every_change_is_audited_and_the_version_only_grows(filled: Storage) -> None:
    q.block(filled, "serial", "SA-2", "scratched", "ann")
    again = q.block(filled, "serial", "SA-2", "twice", "bob")
    assert not again.changed
    assert again.version == 1
    assert again.message.startswith("serial SA-2 is blocked already (since ")
    q.block(filled, "product", "SUB-A", "drawing change", "ann")
    released = q.release(filled, "serial", "SA-2", "rework checked OK", "carl")
    assert released.changed
    assert released.version == 3
    nothing = q.release(filled, "serial", "SA-2", "again", "carl")
    assert not nothing.changed
    assert nothing.message == "serial SA-2 is not blocked: nothing released"
    trail = [(e.version, e.action, e.kind, e.key, e.by, e.reason) for e in q.audit(filled)]
    assert trail == [
        (3, "release", "serial", "SA-2", "carl", "rework checked OK"),
        (2, "block", "product", "SUB-A", "ann", "drawing change"),
        (1, "block", "serial", "SA-2", "ann", "scratched"),
    ]
    assert q.blocked_set(filled)["products"][0]["key"] == "SUB-A"
    assert q.version(filled) == 3  # the refused changes drew no number


def test_a_serial_block_lists_the_serial_and_what_it_went_into(filled: Storage) -> None:
    done = q.block(filled, "serial", "SA-1", "cracked", "qe")
    report = q.report(filled, done.report or 0)
    assert report is not None
    assert [(r.serial, r.depth) for r in report.rows] == [("SA-1", 0), ("FG-1", 1)]


def test_sign_off_once_and_audited(filled: Storage) -> None:
    done = q.block(filled, "lot", "L-STEEL", "bad", "qe")
    signed = q.sign_off(filled, done.report or 0, "boss", "scope checked")
    assert signed.signed_by == "boss"
    assert signed.sign_note == "scope checked"
    with pytest.raises(q.QualityError, match="signed off already by boss"):
        q.sign_off(filled, done.report or 0, "other")
    with pytest.raises(q.QualityError, match="no recall report 99"):
        q.sign_off(filled, 99, "boss")
    assert q.audit(filled)[0].action == "sign-off"
    assert q.version(filled) == 1  # a sign-off changes no block


def test_bad_input_is_refused_naming_it(filled: Storage) -> None:
    with pytest.raises(q.QualityError, match="a reason is required"):
        q.block(filled, "lot", "L1", " ", "qe")
    with pytest.raises(q.QualityError, match="kind 'batch'"):
        q.block(filled, "batch", "L1", "r", "qe")
    with pytest.raises(q.QualityError, match="a user is required"):
        q.release(filled, "lot", "L1", "r", "")


def test_two_writers_never_draw_the_same_version(db: str) -> None:
    open_storage(db).close()
    errors: list[BaseException] = []

    def blocker(name: str) -> None:
        try:
            with open_storage(db) as s:
                for n in range(10):
                    q.block(s, "lot", f"{name}-{n}", "r", name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=blocker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with open_storage(db) as s:
        assert sorted(b.version for b in q.blocks(s)) == list(range(1, 21))


def test_a_database_of_the_previous_version_gets_the_tables(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    with open_storage(path) as s:
        write(s, *(accepted(p, t) for t, p in genealogy()))
    old = sqlite3.connect(path)
    for table in ("quality_counter", "quality_blocks", "quality_audit", "quality_reports"):
        old.execute(f"DROP TABLE {table}")
    old.commit()
    old.close()
    with open_storage(path, read_only=True) as s:
        assert not q.has_tables(s)
    with open_storage(path) as s:  # what the store does at start
        assert q.version(s) == 0
        assert q.block(s, "lot", "L-STEEL", "r", "qe").known
        assert s.count_records() > 0


# ---- the commands ----------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="edge-agent")
    store_cli.register(parser.add_subparsers(dest="command", required=True))
    code = store_cli.dispatch(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trace_db(tmp_path: Path) -> str:
    path = str(tmp_path / "trace.db")
    with open_storage(path) as storage:
        write(storage, *(accepted(p, t) for t, p in genealogy()))
    return path


def test_the_commands_block_list_release_and_audit(
    trace_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--db", trace_db)
    code, out, _ = run(
        capsys,
        "quality",
        "block",
        *db,
        "--lot",
        "L0042",
        "--reason",
        "failed incoming inspection",
        "--user",
        "qe.meier",
    )
    assert (code, out) == (0, "lot L0042 is not in the store yet: blocked anyway (version 1)\n")
    code, out, _ = run(
        capsys, "quality", "block", *db, "--lot", "L-STEEL", "--reason", "r", "--user", "qe"
    )
    assert code == 0
    assert "recall report 2: 5 serial(s) affected" in out
    code, out, _ = run(capsys, "quality", "blocks", *db, "--format", "json")
    assert [(b["key"], b["known"]) for b in json.loads(out)] == [
        ("L0042", False),
        ("L-STEEL", True),
    ]
    code, out, _ = run(
        capsys, "quality", "release", *db, "--lot", "L0042", "--reason", "ok", "--user", "qe"
    )
    assert (code, out) == (0, "lot L0042 released (version 3)\n")
    code, out, _ = run(capsys, "quality", "release", *db, "--lot", "L0042", "--reason", "ok")
    assert code == 1
    assert "not blocked" in out
    code, out, _ = run(capsys, "quality", "audit", *db)
    assert code == 0
    assert [line.split()[2] for line in out.splitlines()[1:]] == ["release", "block", "block"]


def test_the_report_exports_and_signs_off(
    trace_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ("--db", trace_db)
    run(capsys, "quality", "block", *db, "--lot", "L-STEEL", "--reason", "r", "--user", "qe")
    code, out, _ = run(capsys, "quality", "report", *db, "--lot", "L-STEEL", "--format", "csv")
    assert code == 0
    assert out.startswith("\ufeffserial,depth,")
    rows = list(csv.DictReader(io.StringIO(out.lstrip("\ufeff"))))
    assert {r["serial"] for r in rows} == {"SA-1", "SA-2", "SA-3", "FG-1", "FG-2"}
    xlsx = tmp_path / "recall.xlsx"
    code, _, _ = run(capsys, "quality", "report", *db, "1", "--format", "xlsx", "-o", str(xlsx))
    assert code == 0
    assert xlsx.read_bytes()[:2] == b"PK"
    code, out, _ = run(capsys, "quality", "sign-off", *db, "1", "--user", "boss")
    assert code == 0
    assert out.startswith("recall report 1 signed off by boss at ")
    code, _, err = run(capsys, "quality", "sign-off", *db, "1", "--user", "boss")
    assert code == 2
    assert "signed off already" in err
    code, out, _ = run(capsys, "quality", "report", *db, "1")
    assert "signed off by boss" in out.splitlines()[0]
    code, _, err = run(
        capsys,
        "quality",
        "block",
        "--db",
        str(tmp_path / "nope.db"),
        "--lot",
        "X",
        "--reason",
        "r",
        "--user",
        "u",
    )
    assert code == 2
    assert "no such database" in err


def test_alerts_are_kept_with_their_evidence(storage: Storage) -> None:
    from trace_store.quality import alerts
    from trace_store.quality.rules import ConsecutiveNok, Engine, Part

    engine = Engine([ConsecutiveNok("two", count=2)])
    fired = []
    for n in (1, 2):
        p = Part(
            "pc1",
            "e1",
            n,
            "L3",
            "ST10",
            f"2026-12-03T10:00:0{n}.000000Z",
            f"SN{n}",
            "nok",
            None,
            None,
            {},
            {},
        )
        fired += engine.feed(p)
    alerts.record(storage, fired)
    [kept] = alerts.alerts(storage)
    assert (kept.rule, kept.key, kept.state, kept.since) == (
        "two",
        "L3/ST10",
        "firing",
        "2026-12-03T10:00:02.000000Z",
    )
    assert [(e["epoch"], e["seq"]) for e in kept.evidence] == [("e1", 1), ("e1", 2)]
    again = Engine([ConsecutiveNok("two", count=2)])
    assert set(alerts.latest(storage, again)) == {"two"}
    assert again.firing("two") == {"L3/ST10"}
