"""The workbench's pages over HTTP (Starlette's test client, no browser), against a store
filled by the real agent chain (``tests.workbench_chain``), and on both backends against the
small genealogy of ``tests.store_helpers``."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

pytest.importorskip("starlette")
pytest.importorskip("xlsxwriter")

from starlette.testclient import TestClient

from tests.store_helpers import (
    accepted,
    body,
    envelope,
    genealogy,
    readings,
    topic,
    write,
)
from tests.workbench_chain import AGENT, query
from trace_store.envelope import Row
from trace_store.storage import AgentState, Batch, open_storage, page_key
from trace_store.web.app import WorkbenchConfig, create_app
from trace_store.web.plant_time import PlantTime, parse_shifts, parse_zone

TRACEBACK = re.compile(r"Traceback|File \"|sqlite3\.|psycopg", re.IGNORECASE)


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
    assert "narrow the window" not in html  # every value is charted
    assert "The chart draws the newest" not in html

    [(last,)] = query(chain_db, "SELECT max(seq) FROM records WHERE agent = ?", AGENT)
    html = ok_page(client, "/lines")
    [row] = rows_of("agents", html)
    assert AGENT in row
    assert f'<td class="n">{last}</td>' in row
    # The agent's own word: stopped cleanly once the chain was built, with the records its
    # journal still held then (the store confirmed them afterwards).
    assert "offline (stopped)" in row
    assert re.search(r'<td class="n">\d+<br><small>', row), row
    assert '<meta http-equiv="refresh" content="30">' in html


def test_a_long_window_charts_its_newest_values_and_says_so(
    client: TestClient, chain_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trace_store.web import stats, svg

    monkeypatch.setattr(stats, "SERIES", 3)
    html = ok_page(client, "/dashboard?station=ST20&value=final_force")
    assert "These are the window's newest 3 values: narrow the window" in html
    assert '<th>values</th><td class="n">3</td>' in html, "3 values in the chart and Cpk"
    assert "The chart draws the newest" not in html

    monkeypatch.setattr(stats, "SERIES", 2000)
    monkeypatch.setattr(svg, "MAX_POINTS", 5)
    html = ok_page(client, "/dashboard?station=ST20&value=final_force")
    assert re.search(r"The chart draws the newest 5 of these \d+ values", html)
    [chart] = re.findall(r'<svg class="control".*?</svg>', html, re.S)
    assert chart.count("<circle") == 5, "only the newest 5 drawn"


def test_the_dashboard_and_lines_tables_export(client: TestClient, chain_db: str) -> None:
    [(count, nok)] = query(
        chain_db,
        'SELECT count(*), sum(body LIKE \'%"result":"nok"%\') FROM records '
        "WHERE station='ST20' AND kind='part'",
    )
    html = ok_page(client, "/dashboard?station=ST20")
    link = re.search(r'href="(/dashboard/export\?[^"]*table=hours[^"]*)"', html)
    assert link is not None
    assert "format=csv" in link.group(1)

    def table(url: str) -> list[dict[str, str]]:
        response = client.get(url.replace("&amp;", "&"))
        assert response.status_code == 200, response.text[-300:]
        assert response.content.startswith(b"\xef\xbb\xbf")  # the BOM, for Excel
        return list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))

    hours = table(link.group(1))
    assert sum(int(r["parts"]) for r in hours) == count
    assert sum(int(r["nok"]) for r in hours) == nok
    shifts = table(link.group(1).replace("table=hours", "table=shifts"))
    assert sum(int(r["parts"]) for r in shifts) == count
    causes = table(link.group(1).replace("table=hours", "table=causes"))
    assert sum(int(r["nok_parts"]) for r in causes) >= nok
    xlsx = client.get(link.group(1).replace("&amp;", "&").replace("format=csv", "format=xlsx"))
    assert xlsx.content.startswith(b"PK")

    assert 'href="/lines/export?format=csv"' in ok_page(client, "/lines")
    [row] = table("/lines/export?format=csv")
    assert row["agent"] == AGENT
    [(last,)] = query(chain_db, "SELECT max(seq) FROM records WHERE agent = ?", AGENT)
    assert int(row["last_seq"]) == last


@pytest.mark.parametrize(
    ("text", "shifts"),
    [
        ("06:00,14:00,22:00", [("S1", "06:00"), ("S2", "14:00"), ("S3", "22:00")]),
        ("22:00, 6:00", [("S1", "06:00"), ("S2", "22:00")]),
        ("night=22:00,early=06:00", [("early", "06:00"), ("night", "22:00")]),
    ],
)
def test_shifts_are_named_in_time_order(text: str, shifts: list[tuple[str, str]]) -> None:
    assert [(s.name, s.start) for s in parse_shifts(text)] == shifts


@pytest.mark.parametrize(
    ("ts", "label"),
    [
        ("2026-11-21T05:30:00.000000Z", "2026-11-21 S1 (06:00)"),  # 06:30 in Berlin (CET)
        ("2026-11-21T04:59:59.000000Z", "2026-11-20 S3 (22:00)"),  # 05:59: last night's
        ("2026-11-21T21:00:00.000000Z", "2026-11-21 S3 (22:00)"),
        ("2026-07-01T04:30:00.000000Z", "2026-07-01 S1 (06:00)"),  # 06:30 in summer (CEST)
        ("2026-03-29T03:59:00.000000Z", "2026-03-28 S3 (22:00)"),  # 05:59 the day DST began
    ],
)
def test_shifts_follow_the_plants_time_zone(ts: str, label: str) -> None:
    plant = PlantTime(parse_zone("Europe/Berlin"), parse_shifts("06:00,14:00,22:00"))
    assert plant.shift_label(ts) == label


def test_pages_show_the_plants_time_and_filter_by_shift(chain_db: str) -> None:
    zone = ZoneInfo("America/New_York")
    parts = [
        datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(zone)
        for (ts,) in query(
            chain_db, "SELECT ts FROM records WHERE station='ST20' AND kind='part' ORDER BY ts"
        )
    ]
    # Two shifts: "late" from the minute after the last part (so, in New York, every part is
    # "early"; read as UTC, the boundary would fall elsewhere).
    boundary = (parts[-1] + timedelta(minutes=1)).replace(second=0, microsecond=0)
    other = "00:00" if boundary.strftime("%H:%M") != "00:00" else "12:00"
    plant = PlantTime(zone, parse_shifts(f"late={boundary:%H:%M},early={other}"))
    names = [plant.shift_of(p.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))[1].name
             for p in parts]  # fmt: skip
    with TestClient(create_app(WorkbenchConfig(chain_db, page_size=500, plant=plant))) as c:
        html = ok_page(c, "/window?station=ST20")
        assert "Times are America/New_York" in html
        assert f"{parts[-1]:%Y-%m-%d %H:%M:%S}" in html  # shown in the plant's zone
        for shift in ("late", "early"):
            html = ok_page(c, f"/window?station=ST20&shift={shift}")
            assert f'value="{shift}" selected' in html
            assert listed(html) == names.count(shift)
        html = ok_page(c, "/dashboard?station=ST20")
        assert f"early ({other})" in html
        # A typed time is the plant's: from the boundary on, nothing.
        later = boundary + timedelta(hours=1)
        url = f"/window?station=ST20&from={boundary:%Y-%m-%dT%H:%M}&to={later:%Y-%m-%dT%H:%M}"
        assert listed(ok_page(c, url)) == 0
        since = parts[0].replace(second=0, microsecond=0)
        assert listed(ok_page(c, f"/window?station=ST20&from={since:%Y-%m-%dT%H:%M}")) == len(parts)
        assert c.get("/window?station=ST20&shift=S9").status_code == 400


def listed(html: str) -> int:
    return len(rows_of("window-parts", html)) if 'id="window-parts"' in html else 0


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


# ---- both backends -------------------------------------------------------------------------------


def test_window_pages_tell_apart_two_epochs_of_one_agent_at_the_same_time(db: str) -> None:
    """Records are keyed by (agent, epoch, seq): two journals of one agent (a copied PC) can
    make records with the same ts and seq. Paging one record at a time must list each."""
    ts = "2026-11-21T10:00:00.000000Z"
    rows = [
        Row(
            "pc1",
            seq,
            "plant-a",
            "line-3",
            "op10",
            "part",
            ts,
            f"S-{epoch}{seq}",
            json.dumps({"seq": seq, "kind": "part", "result": "ok", "serial": f"S-{epoch}{seq}"}),
            epoch,
        )
        for epoch, seq in (("b" * 32, 7), ("a" * 32, 7), ("a" * 32, 8), ("b" * 32, 6))
    ]
    with open_storage(db) as storage:
        storage.write(Batch(rows=rows))
    seen = []
    with open_storage(db, read_only=True) as reader:
        after = None
        while page := reader.records_at("op10", "part", "2000", "2100", after=after, limit=1):
            seen.append((page[0].epoch[0], page[0].seq))
            after = page_key(page[0])
    assert seen == [("a", 7), ("a", 8), ("b", 6), ("b", 7)]


def test_a_body_the_database_cannot_read_as_json_still_counts(db: str) -> None:
    """PostgreSQL's jsonb refuses \\u0000 (a garbled scan in the context): such part records
    are decoded in Python, and count like any other."""
    from trace_store import facts
    from trace_store.facts import part_summaries

    ts = "2026-11-21T10:00:0{}.000000Z"
    bodies = [
        {"kind": "part", "serial": "S-1", "result": "nok", "repeat": 0,
         "values": {"force": {"value": 30.0, "max": 22.5, "ok": False}},
         "ctx": {"product": "P\u0000X", "work_order": "WO-1"}},
        {"kind": "part", "serial": "S-2", "result": "ok", "repeat": 1,
         "values": {"force": {"value": 20.0, "max": 22.5, "ok": True}}, "ctx": {}},
    ]  # fmt: skip
    rows = [
        Row(
            "pc1",
            n,
            "plant-a",
            "line-3",
            "op10",
            "part",
            ts.format(n),
            b["serial"],
            json.dumps(b).replace("\\\\u0000", "\\u0000"),
            "e" * 32,
        )
        for n, b in enumerate(bodies, start=1)
    ]
    assert "\\u0000" in rows[0].body
    with open_storage(db) as storage:
        storage.write(Batch(rows=rows))
    with open_storage(db, read_only=True) as reader:
        summary = part_summaries(reader, ["S-1", "S-2"])
        assert (summary["S-1"].result, summary["S-1"].product) == ("nok", "P\x00X")
        assert (summary["S-2"].result, summary["S-2"].work_order) == ("ok", None)
        [tally] = facts.minute_tallies(reader, "op10", "2000", "2100")
        assert (tally.ok, tally.nok, tally.first, tally.first_ok) == (1, 1, 1, 0)
        assert list(facts.nok_causes_in(reader, "op10", "2000", "2100")) == [["force"]]
        [(_, force), _] = facts.newest_values(reader, "op10", "2000", "2100", "force", 10)
        assert force["value"] == 30.0


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
        after = page_key(page[0])
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
