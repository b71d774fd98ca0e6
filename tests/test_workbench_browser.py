"""The workbench in a real browser: Debian's Chromium (``/usr/bin/chromium``) driven by
Playwright, against ``edge-agent workbench`` running as its own process on a store the real
agent chain filled (``tests.workbench_chain``, shared with ``test_workbench.py``)."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must have Debian's chromium (scripts/test.sh installs it)")
    pytest.skip("no /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")

from trace_store.web.screenshots import CHROMIUM_ARGS  # noqa: E402

CLI = [sys.executable, "-m", "edge_agent.cli"]


class Workbench:
    """``edge-agent workbench`` on a free loopback port, until ``stop()``."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "workbench", "--listen", "127.0.0.1:0", "--refresh", "0", *args],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # the process says where it serves, then serves
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
        if found is None:
            self.stop()
            raise AssertionError(f"workbench did not start: {line}")
        self.url = found.group(1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(20)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(chain_db: str) -> Iterator[Workbench]:
    wb = Workbench("--db", chain_db)
    try:
        yield wb
    finally:
        assert wb.stop() == 0


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True)
    try:
        yield context.new_page()
    finally:
        context.close()


def one(db: str, sql: str) -> Any:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchone()
    finally:
        conn.close()


def test_search_a_serial_and_open_its_genealogy(
    page: Any, server: Workbench, chain_db: str
) -> None:
    finished, component = one(
        chain_db, "SELECT parent, child FROM genealogy WHERE child_kind = 'component' LIMIT 1"
    )
    page.goto(server.url + "/")
    page.fill("input[name=q]", finished)
    page.click("form.search button")
    page.wait_for_url(re.compile(r"/serial\?id="))
    assert page.inner_text("#serial") == finished
    assert page.locator("section.visit").count() >= 1
    page.click("a[href='#genealogy']")
    materials = page.locator("#materials")
    assert component in materials.inner_text()
    materials.locator(f"a:text-is('{component}')").first.click()
    page.wait_for_url(re.compile(rf"id={component}$"))
    assert finished in page.locator("#went-into").inner_text()
    page.click(f"#went-into a:text-is('{finished}')")
    assert page.inner_text("#serial") == finished


def test_export_a_recall_list_and_check_its_rows(
    page: Any, server: Workbench, chain_db: str
) -> None:
    page.goto(server.url + "/lot?id=LA00001")
    summary = page.inner_text("#summary")
    affected = int(summary.split()[0])
    with page.expect_download() as info:
        page.click("a.export-csv")
    text = Path(info.value.path()).read_bytes().decode("utf-8")
    assert text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text[1:])))
    assert len(rows) == affected
    on_page = page.locator("#recall tbody tr td:nth-child(2)").all_inner_texts()
    assert on_page == [r["serial"] for r in rows][: len(on_page)]

    openpyxl = pytest.importorskip("openpyxl")
    with page.expect_download() as info:
        page.click("a.export-xlsx")
    assert info.value.suggested_filename == "lot-LA00001.xlsx"
    sheet = openpyxl.load_workbook(io.BytesIO(Path(info.value.path()).read_bytes())).active
    table = list(sheet.iter_rows(values_only=True))
    assert [r[0] for r in table[1:]] == [r["serial"] for r in rows]


def test_a_window_and_a_dashboard_from_the_forms(page: Any, server: Workbench) -> None:
    page.goto(server.url + "/window")
    page.select_option("select[name=station]", "ST20")
    page.select_option("select[name=result]", "nok")
    page.click("form.window button")
    assert "ST20" in page.inner_text("#summary")
    assert page.locator("#window-parts tbody tr").count() >= 1
    page.goto(server.url + "/dashboard?station=ST20")
    assert page.locator("svg.control").count() == 1
    assert "first-pass yield" in page.inner_text("#kpis")


def test_a_login_is_required_with_a_users_file(page: Any, chain_db: str, tmp_path: Path) -> None:
    users = tmp_path / "users"
    made = subprocess.run(
        [*CLI, "workbench", "hash-password", "qe.anna"],
        input="long enough secret\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    users.write_text("# quality engineers\n" + made.stdout)
    wb = Workbench("--db", chain_db, "--users", str(users))
    try:
        page.goto(wb.url + "/lot?id=LA00001")
        assert page.url.startswith(wb.url + "/login")
        page.fill("input[name=name]", "qe.anna")
        page.fill("input[name=password]", "wrong")
        page.click("form.login button")
        assert "wrong password" in page.inner_text("#message")
        page.fill("input[name=name]", "qe.anna")
        page.fill("input[name=password]", "long enough secret")
        page.click("form.login button")
        page.wait_for_url(wb.url + "/lot?id=LA00001")
        assert page.inner_text("#lot") == "LA00001"
        assert "qe.anna" in page.inner_text("form.who")
    finally:
        assert wb.stop() == 0
