"""The workbench's access (a users file and its login, a path prefix behind a reverse proxy,
a trusted proxy's user header) and its command line (options, users file lines, hash-password,
a taken port), against a store filled by the real agent chain (``tests.workbench_chain``)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("xlsxwriter")

from starlette.testclient import TestClient

from tests.workbench_chain import query
from trace_store.web.app import WorkbenchConfig, create_app
from trace_store.web.auth import Access, hash_password

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


def test_every_link_asset_and_redirect_works_under_a_path_prefix(chain_db: str) -> None:
    """``--root-path /quality`` behind a proxy that passes the prefix on (or strips it)."""
    access = Access(users={"anna": hash_password("correct horse", n=2**10)})
    app = create_app(WorkbenchConfig(chain_db, access=access, root_path="/quality"))
    with TestClient(app, follow_redirects=False) as c:
        response = c.get("/quality/lot?id=LA00001")
        assert response.status_code == 303
        assert response.headers["location"] == "/quality/login?next=%2Flot%3Fid%3DLA00001"
        login = c.get(response.headers["location"])
        assert 'action="/quality/login"' in login.text
        response = c.post(
            "/quality/login", data={"name": "anna", "password": "correct horse", "next": "/lines"}
        )
        assert response.headers["location"] == "/quality/lines"
        assert "path=/quality" in response.headers["set-cookie"].lower()
        [(lot,)] = query(chain_db, "SELECT child FROM genealogy WHERE child_kind = 'lot' LIMIT 1")
        pages = ["/quality/", "/quality/lines", f"/quality/lot?id={lot}", "/quality/dashboard",
                 "/quality/window?station=ST20"]  # fmt: skip
        seen: set[str] = set()
        while pages:
            url = pages.pop()
            if url in seen or len(seen) > 40:
                continue
            seen.add(url)
            response = c.get(url)
            # A form's target without its fields may be a 400; never a page that is not there.
            assert response.status_code in (200, 400), (url, response.status_code)
            html = response.text
            targets = re.findall(r'(?:href|src|action)="([^"#]*)"', html)
            assert targets
            for target in targets:
                assert target.startswith("/quality/"), (url, target)
                if not any(skip in target for skip in ("export", "logout", "/static/")):
                    pages.append(target.replace("&amp;", "&"))
        assert c.get("/quality/static/workbench.css").status_code == 200
        response = c.get(f"/quality/search?q={lot}")
        assert response.headers["location"].startswith("/quality/lot?id=")
        # A proxy that strips the prefix (the browser's cookie comes along): the same links.
        session = f"workbench_session={c.cookies.get('workbench_session')}"
        stripped = c.get("/lines", headers={"Cookie": session})
        assert stripped.status_code == 200
        assert 'href="/quality/lines"' in stripped.text


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
        (["--shifts", "a=06:00,a=14:00"], "--shifts: two shifts have the same name"),
        (["--time-zone", "Mars/Olympus"], "--time-zone: unknown time zone 'Mars/Olympus'"),
        (["--root-path", "/a b"], "--root-path '/a b': expected a path such as /quality"),
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
