"""The workbench's Quality pages over HTTP (Starlette's test client): blocks, the block and
release forms for users with the quality role only, the audit trail, the recall report with
its export and sign-off, and ``gate`` records on the serial page."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient

from tests.store_helpers import accepted, body, envelope, genealogy, topic, write
from trace_store.quality import blocks as q
from trace_store.storage import open_storage
from trace_store.web.app import WorkbenchConfig, create_app
from trace_store.web.auth import (
    Access,
    UsersFileError,
    hash_password,
    load_roles,
    load_users,
    parse_networks,
)

PROXY = ("127.0.0.1", 40000)


@pytest.fixture
def trace_db(tmp_path: Path) -> str:
    path = str(tmp_path / "trace.db")
    gate = body(
        20,
        "gate",
        station="op30",
        decision="refused",
        check="blocked",
        lot="L-STEEL",
        serial="FG-1",
        reason="lot L-STEEL is blocked",
        version=1,
        ctx={"serial": "FG-1", "lot": None},
    )
    with open_storage(path) as storage:
        write(storage, *(accepted(p, t) for t, p in genealogy()))
        write(storage, accepted(envelope([gate]), topic("op30")))
    return path


@pytest.fixture
def client(trace_db: str) -> Iterator[TestClient]:
    access = Access(
        proxy_header="X-Remote-User",
        trusted=parse_networks(["127.0.0.1"]),
        roles={"qe.anna": frozenset({"quality"})},
    )
    app = create_app(WorkbenchConfig(trace_db, access=access))
    with TestClient(app, client=PROXY, follow_redirects=False) as c:
        yield c


def as_user(name: str) -> dict[str, str]:
    return {"X-Remote-User": name}


def test_a_quality_user_blocks_a_lot_and_gets_its_recall_report(
    client: TestClient, trace_db: str
) -> None:
    anna = as_user("qe.anna")
    page = client.get("/quality", headers=anna)
    assert page.status_code == 200
    assert 'id="block-form"' in page.text
    assert "Nothing is blocked." in page.text
    response = client.post(
        "/quality/block",
        data={"kind": "lot", "key": "L-STEEL", "reason": "failed incoming inspection"},
        headers=anna,
    )
    assert response.status_code == 303
    target = response.headers["location"]
    assert target.startswith("/quality/report?id=1&done=")
    report = client.get(target, headers=anna)
    assert report.status_code == 200
    assert "lot L-STEEL blocked (version 1)" in report.text
    scope = report.text.split('id="scope"', 1)[1]
    for serial in ("SA-1", "SA-2", "SA-3", "FG-1", "FG-2"):
        assert f">{serial}</a>" in scope
    export = client.get("/quality/report/export?id=1&format=csv", headers=anna)
    assert export.status_code == 200
    rows = list(csv.DictReader(io.StringIO(export.text.lstrip("\ufeff"))))
    assert len(rows) == 5
    signed = client.post("/quality/sign-off", data={"id": "1", "note": "checked"}, headers=anna)
    assert signed.status_code == 303
    assert (
        "Signed off by <strong>qe.anna</strong>"
        in client.get(signed.headers["location"], headers=anna).text
    )
    overview = client.get("/quality", headers=anna).text
    blocks = overview.split('id="blocks"', 1)[1].split("</table>", 1)[0]
    assert "L-STEEL" in blocks
    assert "failed incoming inspection" in blocks
    audit = overview.split('id="audit"', 1)[1].split("</table>", 1)[0]
    assert audit.count("<tr>") == 3  # header, sign-off, block
    released = client.post(
        "/quality/release",
        data={"kind": "lot", "key": "L-STEEL", "reason": "re-inspected OK"},
        headers=anna,
    )
    assert released.status_code == 303
    assert "lot+L-STEEL+released" in released.headers["location"]
    with open_storage(trace_db, read_only=True) as s:
        assert q.blocks(s) == []
        assert [e.action for e in q.audit(s)] == ["release", "sign-off", "block"]
        assert q.audit(s)[0].by == "qe.anna"


def test_a_user_without_the_role_reads_only(client: TestClient, trace_db: str) -> None:
    with open_storage(trace_db) as s:
        q.block(s, "serial", "SA-2", "scratched", "qe.anna")
    bert = as_user("bert")
    page = client.get("/quality", headers=bert)
    assert page.status_code == 200
    assert 'id="read-only"' in page.text
    assert "Release</button>" not in page.text
    assert "SA-2" in page.text
    refused = client.post(
        "/quality/release", data={"kind": "serial", "key": "SA-2", "reason": "x"}, headers=bert
    )
    assert refused.status_code == 403
    assert "quality role" in refused.text
    with open_storage(trace_db, read_only=True) as s:
        assert [b.key for b in q.blocks(s)] == ["SA-2"]


def test_an_unknown_lot_is_blocked_and_said_so_and_bad_forms_are_400(
    client: TestClient,
) -> None:
    anna = as_user("qe.anna")
    response = client.post(
        "/quality/block",
        data={"kind": "lot", "key": "L0042", "reason": "supplier recall"},
        headers=anna,
    )
    assert response.status_code == 303
    page = client.get(response.headers["location"], headers=anna)
    assert "lot L0042 is not in the store yet: blocked anyway" in page.text
    no_reason = client.post(
        "/quality/block", data={"kind": "lot", "key": "L1", "reason": ""}, headers=anna
    )
    assert no_reason.status_code == 400
    assert "a reason is required" in no_reason.text
    assert client.get("/quality/report?id=99", headers=anna).status_code == 404


def test_gate_records_show_on_the_serial_page(client: TestClient) -> None:
    page = client.get("/serial?id=FG-1", headers=as_user("bert"))
    assert page.status_code == 200
    assert "gate refused (blocked) lot L-STEEL serial FG-1: lot L-STEEL is blocked" in page.text


def test_roles_in_the_users_file_and_files_without_them(tmp_path: Path) -> None:
    hashed = hash_password("pw", n=2**10)
    old = tmp_path / "users"
    old.write_text(f"anna:{hashed}\n")
    assert load_users(old) == {"anna": hashed}
    assert load_roles(old) == {}
    new = tmp_path / "users-roles"
    new.write_text(f"anna:{hashed}:quality\nbert:{hashed}\n")
    assert load_users(new) == {"anna": hashed, "bert": hashed}
    assert load_roles(new) == {"anna": frozenset({"quality"})}
    bad = tmp_path / "users-bad"
    bad.write_text(f"anna:{hashed}:admin\n")
    with pytest.raises(UsersFileError, match=r"users-bad:1: unknown role admin"):
        load_users(bad)


def test_alerts_show_with_their_evidence(client: TestClient, trace_db: str) -> None:
    from trace_store.quality.alerts import record
    from trace_store.quality.rules import ConsecutiveNok, Engine, Part

    engine = Engine([ConsecutiveNok("op10-two", count=2)])
    transitions = []
    for n, serial in ((1, "SA-1"), (2, "SA-2")):
        p = Part(
            "pc1",
            "",
            n,
            "line-3",
            "op10",
            f"2026-11-21T10:00:0{n}.000000Z",
            serial,
            "nok",
            None,
            None,
            {},
            {},
        )
        transitions += engine.feed(p)
    with open_storage(trace_db) as s:
        record(s, transitions)
    page = client.get("/quality", headers=as_user("bert")).text
    section = page.split('id="alerts"', 1)[1].split("</table>", 1)[0]
    assert "op10-two" in section
    assert "2 NOK parts in a row at line-3/op10" in section
    assert '<a href="/serial?id=SA-1">SA-1</a>' in section
