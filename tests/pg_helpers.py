"""A throwaway PostgreSQL server for tests, started from the OS packages' binaries.

The cluster lives in a fresh directory under /tmp and listens only on a unix socket in that
directory (the port number only names the socket), so it needs no free TCP port and cannot
collide with a system PostgreSQL. PostgreSQL refuses to run as root: when the tests run as
root the server runs as the ``postgres`` user (``runuser``) and owns its directory. Readiness
is ``pg_ctl -w`` (it polls the server), never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psycopg

from simulators.broker import free_port

POSTGRES_ROOT = Path("/usr/lib/postgresql")


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding a server, or None."""
    if not POSTGRES_ROOT.is_dir():
        return None
    found = [
        d / "bin"
        for d in POSTGRES_ROOT.iterdir()
        if (d / "bin" / "postgres").is_file() and (d / "bin" / "initdb").is_file()
    ]
    return max(found, key=lambda b: _version(b.parent.name), default=None)


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", name)) or (0,)


class PostgresServer:
    """One cluster (``initdb``) and its server process, managed with ``pg_ctl``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="trace-store-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()  # names the socket file; nothing listens on TCP
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.dir, ignore_errors=True)
                raise RuntimeError("running as root and there is no 'postgres' user") from None
            shutil.chown(self.dir, "postgres", "postgres")
        self._databases = itertools.count(1)
        self.running = False
        self._initialised = False

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
                f"{self.log_tail()}"
            )

    def start(
        self, timeout: float = 30.0, *, durable: bool = False, settings: Sequence[str] = ()
    ) -> None:
        """initdb on first use, then start the server and return once it accepts.
        ``durable`` keeps PostgreSQL's fsyncs (for measurements); tests skip them.
        ``settings``: more server settings, each ``name=value`` (``postgres -c``)."""
        if not self._initialised:
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            )
            self._initialised = True
        options = f"-p {self.port} -k {self.dir} -c listen_addresses="
        if not durable:
            # Test data is thrown away: skip the fsyncs.
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        for setting in settings:
            options += f" -c {setting}"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )
        self.running = True

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, the server exits cleanly."""
        if self.running:
            self.running = False
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.dir}&port={self.port}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{next(self._databases)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"
