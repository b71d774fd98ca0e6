"""The workbench's pages over HTTP (Starlette's test client, no browser), against a store
filled by the real agent chain (``tests.workbench_chain``), and on both backends against the
small genealogy of ``tests.test_trace_store``."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("xlsxwriter")

from starlette.testclient import TestClient

from tests.test_trace_store import (
    accepted,
    body,
    envelope,
    genealogy,
    postgres,  # noqa: F401 - the fixture, for ``db``
    readings,
    topic,
    write,
)
from tests.test_trace_store import db as db
from tests.workbench_chain import AGENT, fill_store
from trace_store.storage import AgentState, Batch, open_storage
from trace_store.web.app import WorkbenchConfig, create_app
from trace_store.web.auth import Access, hash_password

TRACEBACK = re.compile(r"Traceback|File \"|sqlite3\.|psycopg", re.IGNORECASE)


@pytest.fixture(scope="session")
def chain_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store the real chain filled (once per test session, shared by the browser tests)."""
    folder = tmp_path_factory.getbasetemp() / "workbench-chain"
    db = folder / "trace.db"
    if not db.exists():
        asyncio.run(fill_store(folder, parts=36))
    return str(db)


def query(db: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def client(chain_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(WorkbenchConfig(chain_db, page_size=10))) as c:
        yield c


def ok_page(client: TestClient, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, (url, response.text[-500:])
    assert not TRACEBACK.search(response.text)
    return response.text


def rows_of(table_id: str, html: str) -> list[str]:
    section = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr[ >].*?</tr>", section, re.S)[1:]  # without the header


# ---- pages on the chain's data -------------------------------------------------------------------


def test_a_serial_shows_its_visit_values_readings_and_genealogy_both_ways(
    client: TestClient, chain_db: str
) -> None:
    [(serial, component)] = query(
        chain_db,
        "SELECT parent, child FROM genealogy WHERE child_kind = 'component' "
        "AND parent IN (SELECT serial FROM records WHERE kind = 'part' "
        'AND body LIKE \'%"result":"nok"%\') LIMIT 1',
    )
    html = ok_page(client, f"/serial?id={serial}")
    assert (
        f'<span class="id" id="serial">{serial}</span> <span class="badge nok">NOK</span>' in html
    )
    assert "final_force" in html
    assert '<tr class="out">' in html  # the failed value marked
    assert '<details class="readings"' in html
    assert '<svg class="spark"' in html
    assert f'href="/serial?id={component}"' in html  # built from
    html = ok_page(client, f"/serial?id={component}")
    assert f'href="/serial?id={serial}"' in rows_of("went-into", html)[0]  # went into
    # Readings listed on request
    html = ok_page(client, f"/serial?id={serial}&kind=part&kind=readings")
    assert "press2: cycle_counter=" in html
    assert "serial = " not in html


def test_the_recall_list_goes_through_sub_assemblies_and_exports_every_row(
    client: TestClient, chain_db: str
) -> None:
    direct = {s for (s,) in query(chain_db, "SELECT parent FROM genealogy WHERE child = 'LA00001'")}
    assert 1 <= len(direct) <= 6  # six parts per lot; the first may start before the agent
    finished = {
        s
        for (s,) in query(
            chain_db,
            "SELECT parent FROM genealogy WHERE child_kind = 'component' AND child IN "
            f"({','.join('?' * len(direct))})",
            *sorted(direct),
        )
    }
    assert finished
    html = ok_page(client, "/lot?id=LA00001")
    assert f"<strong>{len(direct | finished)}</strong> serial(s) affected" in html
    assert len(rows_of("recall", html)) == min(10, len(direct | finished))  # paged by 10
    assert ("page=2" in html) == (len(direct | finished) > 10)

    response = client.get("/lot/export?id=LA00001&format=csv")
    assert response.headers["content-type"].startswith("text/csv")
    assert response.content.startswith("\ufeff".encode())
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert {r["serial"] for r in rows} == direct | finished
    assert {r["depth"] for r in rows if r["serial"] in finished} == {"2"}
    # From the station context (a part read before the first label scan has none).
    assert {r["product"] for r in rows} - {""} == {"09501101020917"}
    assert all(r["result"] in ("ok", "nok") for r in rows)

    openpyxl = pytest.importorskip("openpyxl")
    response = client.get("/lot/export?id=LA00001&format=xlsx")
    sheet = openpyxl.load_workbook(io.BytesIO(response.content), read_only=True).active
    table = list(sheet.iter_rows(values_only=True))
    header = list(table[0])
    assert {r[0] for r in table[1:]} == direct | finished
    assert isinstance(table[1][header.index("depth")], int)  # numbers as numbers


def test_a_window_lists_the_parts_of_a_station_paged_and_filtered(
    client: TestClient, chain_db: str
) -> None:
    parts = query(chain_db, "SELECT serial FROM records WHERE station='ST20' AND kind='part'")
    nok = {
        s
        for (s,) in query(
            chain_db,
            "SELECT serial FROM records WHERE station='ST20' AND kind='part' "
            'AND body LIKE \'%"result":"nok"%\'',
        )
    }
    assert nok
    seen: list[str] = []
    url = "/window?station=ST20&from=2000-01-01T00:00&to=2100-01-01T00:00"
    while url:
        html = ok_page(client, url)
        seen += re.findall(r"<td><a href=\"/serial\?id=([^\"]+)\"", html)
        after = re.search(r'href="(/window\?[^"]*after=[^"]+)" rel="next"', html)
        url = after.group(1).replace("&amp;", "&") if after else ""
    assert sorted(seen) == sorted(s for (s,) in parts)

    html = ok_page(client, "/window?station=ST20&result=nok")
    assert set(re.findall(r"<td><a href=\"/serial\?id=([^\"]+)\"", html)) == nok
    html = ok_page(client, "/window?station=ST20&value=final_force&max=22.5")
    assert set(re.findall(r"<td><a href=\"/serial\?id=([^\"]+)\"", html)) == nok
    html = ok_page(client, "/window?station=ST20&value=final_force")  # its own limits
    assert set(re.findall(r"<td><a href=\"/serial\?id=([^\"]+)\"", html)) == nok

    text = client.get("/window/export?station=ST20&result=nok&format=csv").content
    rows = list(csv.DictReader(io.StringIO(text.decode("utf-8-sig"))))
    assert {r["serial"] for r in rows} == nok
    assert all(float(r["final_force [kN]"]) > 22.5 for r in rows)


def test_dashboard_and_lines(client: TestClient, chain_db: str) -> None:
    [(count,)] = query(
        chain_db, "SELECT count(*) FROM records WHERE station='ST20' AND kind='part'"
    )
    html = ok_page(client, "/dashboard?station=ST20&value=final_force")
    assert f"<li><strong>{count}</strong> parts</li>" in html
    assert '<svg class="control"' in html
    assert "Cpk" in html
    assert '<svg class="pareto"' in html
    # Cpk of the individuals chart, computed here from the stored values
    # (a part whose snapshot read failed, on a loaded machine, has no value: not a point)
    values = [
        v
        for (b,) in query(
            chain_db, "SELECT body FROM records WHERE station='ST20' AND kind='part' ORDER BY ts"
        )
        if (v := json.loads(b)["values"]["final_force"]["value"]) is not None
    ]
    mean = sum(values) / len(values)
    sigma = sum(abs(b - a) for a, b in itertools.pairwise(values)) / (len(values) - 1) / 1.128
    cpk = min(22.5 - mean, mean - 18.0) / (3 * sigma)
    assert f"<strong>{cpk:.2f}</strong> Cpk final_force" in html

    [(last,)] = query(chain_db, "SELECT max(seq) FROM records WHERE agent = ?", AGENT)
    html = ok_page(client, "/lines")
    [row] = rows_of("agents", html)
    assert AGENT in row
    assert f'<td class="n">{last}</td>' in row
    assert '<meta http-equiv="refresh" content="30">' in html


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "status", "words"),
    [
        ("/serial?id=NOPE-1", 404, "No records for serial 'NOPE-1'"),
        ("/lot?id=L-NOPE", 404, "No serial consumed lot 'L-NOPE'"),
        ("/search?q=nothing-here", 404, "Nothing is recorded for"),
        ("/serial", 400, "parameter 'id': missing"),
        ("/serial?id=" + "x" * 300, 400, "parameter 'id': longer than 256"),
        ("/serial?id=A-1&kind=bogus", 400, "parameter 'kind'"),
        ("/lot?id=LA00001&page=0", 400, "parameter 'page'"),
        ("/lot?id=LA00001&page=999", 400, "past the last page"),
        ("/lot/export?id=LA00001&format=pdf", 400, "parameter 'format'"),
        ("/window?station=ST20&from=yesterday", 400, "parameter 'from'"),
        ("/window?station=ST20&from=2026-01-02&to=2026-01-01", 400, "must be before"),
        ("/window?station=ST20&value=final_force&min=abc", 400, "parameter 'min'"),
        ("/window?station=ST20&min=1", 400, "parameter 'value'"),
        ("/window?station=ST20&after=garbage", 400, "parameter 'after'"),
        ("/window?station=ST99", 404, "No part records at station 'ST99'"),
        ("/dashboard?station=ST20&from=2026-13-45", 400, "parameter 'from'"),
        ("/serial?id=%27%20OR%201%3D1%3B%20DROP%20TABLE%20records%3B--", 404, "No records"),
        ("/lot?id=x%27)%20UNION%20SELECT%20*%20FROM%20agents--", 404, "No serial consumed"),
        ("/serial?id=%00%01", 400, "control characters"),
        ("/no/such/page", 404, "No page at /no/such/page"),
    ],
)
def test_bad_input_gets_a_clear_message_and_status(
    client: TestClient, chain_db: str, url: str, status: int, words: str
) -> None:
    before = query(chain_db, "SELECT count(*) FROM records")
    response = client.get(url)
    assert response.status_code == status, response.text[-400:]
    assert words.replace("'", "&#39;") in response.text
    assert not TRACEBACK.search(response.text)
    assert query(chain_db, "SELECT count(*) FROM records") == before
    assert client.post("/serial?id=A-00000001").status_code == 405


def test_pages_work_while_the_ingest_writes(tmp_path: Path) -> None:
    """A SQLite store committing batches (as the store's writer does) while the workbench
    reads: every page answers, none sees a half-written batch as an error."""
    path = str(tmp_path / "trace.db")
    with open_storage(path) as storage:
        write(storage, *(accepted(p, t) for t, p in genealogy()))
    stop = threading.Event()
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            with open_storage(path) as storage:
                seq = 100
                while not stop.is_set() and seq < 100 + 50 * 100:
                    records = [
                        body(s, "part", serial=f"W-{s}", result="ok", values={}, quality="good")
                        for s in range(seq, seq + 50)
                    ]
                    records[0]["ctx"] = {"serial": "W", "lot": "L-STEEL"}
                    storage.write(Batch(rows=list(accepted(envelope(records)).rows)))
                    seq += 50
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer = threading.Thread(target=ingest, name="test-ingest")
    writer.start()
    try:
        with TestClient(create_app(WorkbenchConfig(path))) as c:
            rounds = 0
            while writer.is_alive() or rounds < 3:
                for url in ("/lot?id=L-STEEL", "/serial?id=SA-1", "/window?station=op10",
                            "/dashboard?station=op10", "/lines"):  # fmt: skip
                    assert c.get(url).status_code == 200, url
                rounds += 1
            assert rounds >= 3
    finally:
        stop.set()
        writer.join()
    assert not errors


# ---- access ------------------------------------------------------------------------------------


def test_a_users_file_means_a_login(chain_db: str) -> None:
    access = Access(users={"anna": hash_password("correct horse", n=2**10)})
    app = create_app(WorkbenchConfig(chain_db, access=access))
    with TestClient(app, follow_redirects=False) as c:
        response = c.get("/lot?id=LA00001")
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=%2Flot%3Fid%3DLA00001"
        assert c.get("/static/workbench.css").status_code == 200  # assets need no login
        response = c.post("/login", data={"name": "anna", "password": "wrong", "next": "/"})
        assert response.status_code == 401
        assert "wrong password" in response.text
        response = c.post(
            "/login", data={"name": "anna", "password": "correct horse", "next": "//evil.example"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        assert "httponly" in response.headers["set-cookie"].lower()
        assert c.get("/lot?id=LA00001").status_code == 200
        c.cookies.clear()
        c.cookies.set("workbench_session", "anna|99999999999|forged")
        assert c.get("/lines").status_code == 303


def test_the_proxy_header_counts_only_from_a_trusted_proxy(chain_db: str) -> None:
    from trace_store.web.auth import parse_networks

    access = Access(proxy_header="X-Remote-User", trusted=parse_networks(["127.0.0.1"]))
    app = create_app(WorkbenchConfig(chain_db, access=access))
    with TestClient(app, client=("127.0.0.1", 40000)) as proxy:
        response = proxy.get("/lines", headers={"X-Remote-User": "qe.berta"})
        assert response.status_code == 200
        assert "qe.berta" in response.text
        assert proxy.get("/lines").status_code == 403  # the proxy did not name anyone
    with TestClient(app, client=("10.1.2.3", 40000)) as direct:
        response = direct.get("/lines", headers={"X-Remote-User": "qe.berta"})
        assert response.status_code == 403


# ---- both backends -------------------------------------------------------------------------------


def test_the_workbench_queries_on_each_backend(db: str) -> None:
    with open_storage(db) as storage:
        write(storage, *(accepted(p, t) for t, p in genealogy()))
        later = [body(s, station="op10") for s in (13, 14)]
        write(storage, accepted(envelope(later + readings([15]), rng=(12, 15, 3)), topic()))
        storage.write(Batch(agents={"line3-pc1": AgentState("line3-pc1", "plant-a", "line-3", 15)}))
    with open_storage(db, read_only=True) as reader:
        assert reader.stations() == [
            ("op10", "plant-a", "line-3"),
            ("op30", "plant-a", "line-3"),
        ]
        page = reader.records_at("op10", "part", "2000", "2100", limit=1)
        assert [r.seq for r in page] == [4]
        after = (page[0].ts, page[0].agent, page[0].seq)
        assert [r.seq for r in reader.records_at("op10", "part", "2000", "2100", after=after)] == [
            6
        ]
        assert [r.serial for r in reader.parts_of(["SA-2", "FG-1", "NOPE"])] == ["SA-2", "FG-1"]
        [fresh] = reader.freshness()
        assert (fresh.watermark, fresh.last_seq, fresh.ahead) == (15, 15, 0)
        assert reader.last_ts("op30") == "2026-11-21T10:00:11.000000Z"
        assert reader.serial_exists("SA-1")
        assert not reader.serial_exists("SA-0")
    with TestClient(create_app(WorkbenchConfig(db))) as c:
        assert "SA-2" in ok_page(c, "/lot?id=L-STEEL")
        assert c.get("/lot/export?id=L-STEEL&format=csv").text.count("\r\n") == 6
        assert "op10" in ok_page(c, "/dashboard?station=op10&value=force")


# ---- the command -----------------------------------------------------------------------------


def workbench(*argv: str) -> int:
    import argparse

    from trace_store import cli as store_cli

    parser = argparse.ArgumentParser(prog="edge-agent")
    store_cli.register(parser.add_subparsers(dest="command", required=True))
    return store_cli.dispatch(parser.parse_args(["workbench", *argv]))


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--listen", "0.0.0.0:8080"], "reachable from the network: give --users"),
        (["--listen", "nohost"], "expected HOST:PORT"),
        (["--proxy-user-header", "X-Remote-User"], "needs --trusted-proxy"),
        (["--proxy-user-header", "X-U", "--trusted-proxy", "proxy.plant"], "not an IP address"),
        (["--shifts", "6,14"], "--shifts: shift start '6' is not HH:MM"),
        (["--users", "/nonexistent/users"], "/nonexistent/users: No such file"),
        (["--db", "/nonexistent/trace.db"], "no such database"),
    ],
)
def test_bad_options_are_one_line_and_status_2(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert workbench(*argv) == 2
    err = capsys.readouterr().err
    assert words in err
    assert err.count("\n") == 1


def test_users_file_lines_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "users"
    users.write_text("# comment\nanna:plaintext-password\n")
    assert workbench("--users", str(users)) == 2
    assert f"{users}:2: not a hash from 'edge-agent workbench hash-password'" in (
        capsys.readouterr().err
    )


def test_hash_password_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trace_store.web.auth import verify_password

    monkeypatch.setattr("sys.stdin", io.StringIO("a long secret\n"))
    assert workbench("hash-password", "qe.anna") == 0
    line = capsys.readouterr().out
    name, stored = line.strip().split(":", 1)
    assert name == "qe.anna"
    assert verify_password("a long secret", stored)
    assert not verify_password("a long secreT", stored)
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert workbench("hash-password", "qe.anna") == 2
    assert workbench("hash-password") == 2


def test_a_taken_port_is_status_75(chain_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert workbench("--db", chain_db, "--listen", f"127.0.0.1:{port}") == 75
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
