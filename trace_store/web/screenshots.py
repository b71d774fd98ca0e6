"""Screenshots of every workbench page, for docs/workbench.md:
``python -m trace_store.web.screenshots --db trace.db --out docs/workbench``.

Serves the workbench on a free loopback port in this process and drives Debian's Chromium
(``/usr/bin/chromium``) with Playwright's Python package (``pip install playwright``; its own
browser download is not needed). The examples are picked from the database: the first lot,
a NOK serial that has genealogy both ways, the station with the most parts.
"""

from __future__ import annotations

import argparse
import socket
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class ServerThread:
    """The workbench on 127.0.0.1:<free port> in a thread (uvicorn), until ``stop()``."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        from trace_store.web.app import create_app

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(config), log_level="warning", proxy_headers=False)
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="workbench-server"
        )

    def start(self) -> str:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self.url
            self.thread.join(0.01)
        raise RuntimeError("the workbench did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def examples(db: str) -> dict[str, str]:
    """Page paths worth showing, found in the (SQLite) database."""
    conn = sqlite3.connect(f"file:{Path(db).resolve()}?mode=ro", uri=True)
    try:
        # A lot whose serials went on into others: the recall goes through sub-assemblies.
        lot = (
            conn.execute(
                "SELECT g.child FROM genealogy g JOIN genealogy c ON c.child_kind = 'component' "
                "AND c.child = g.parent WHERE g.child_kind = 'lot' ORDER BY g.ts LIMIT 1"
            ).fetchone()
            or conn.execute(
                "SELECT child FROM genealogy WHERE child_kind = 'lot' ORDER BY ts LIMIT 1"
            ).fetchone()
        )
        serial = (
            conn.execute(
                "SELECT r.serial FROM records r JOIN genealogy g ON g.parent = r.serial "
                "AND g.child_kind = 'component' WHERE r.kind = 'part' "
                'AND r.body LIKE \'%"result":"nok"%\' ORDER BY r.ts LIMIT 1'
            ).fetchone()
            or conn.execute(
                "SELECT parent FROM genealogy WHERE child_kind = 'component' LIMIT 1"
            ).fetchone()
        )
        station = conn.execute(
            "SELECT station FROM records WHERE kind = 'part' GROUP BY station "
            "ORDER BY count(*) DESC, station DESC LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    pages = {"lines": "/lines", "start": "/"}
    if lot:
        pages["lot"] = f"/lot?id={quote(lot[0])}"
    if serial:
        pages["serial"] = f"/serial?id={quote(serial[0])}"
    if station:
        pages["window"] = f"/window?station={quote(station[0])}&result=nok"
        pages["dashboard"] = f"/dashboard?station={quote(station[0])}&value=final_force"
    return pages


def take(db: str, out: Path, width: int = 1280) -> list[Path]:
    from playwright.sync_api import sync_playwright

    from trace_store.web.app import WorkbenchConfig

    out.mkdir(parents=True, exist_ok=True)
    server = ServerThread(WorkbenchConfig(db, refresh=0))
    url = server.start()
    shots = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": width, "height": 900})
                for name, path in examples(db).items():
                    page.goto(url + path)
                    if name == "serial":
                        for details in page.query_selector_all("details.readings"):
                            details.evaluate("d => d.open = true")
                    target = out / f"{name}.png"
                    page.screenshot(path=str(target), full_page=True)
                    shots.append(target)
            finally:
                browser.close()
    finally:
        server.stop()
    return shots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="a SQLite trace store database")
    parser.add_argument("--out", default="docs/workbench", help="folder for the PNG files")
    args = parser.parse_args(argv)
    for path in take(args.db, Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
