"""``edge-agent workbench``: the quality engineer's web pages on a trace store database, and
``edge-agent workbench hash-password NAME`` for its users file (docs/workbench.md).

A process of its own beside the ingest, reading the database read-only. It refuses to listen
on anything but loopback unless someone must log in (``--users``) or a trusted reverse proxy
names the user (``--proxy-user-header`` with ``--trusted-proxy``).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("trace_store.web")

EXIT_OK, EXIT_USAGE, EXIT_STARTUP = 0, 2, 75
DEFAULT_LISTEN = "127.0.0.1:8080"
ENV_DB = "TRACE_STORE_DB"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "workbench",
        help="web pages for quality engineers on a trace store database: serial, lot recall "
        "list, time window, dashboards, line freshness, CSV/XLSX exports",
        description="Serve the trace workbench (docs/workbench.md): read-only pages on the "
        "trace store's database, beside the running store. Listens on 127.0.0.1:8080 unless "
        "--listen says otherwise; any other address needs --users or --proxy-user-header. "
        "'edge-agent workbench hash-password NAME' prints a users-file line for NAME, reading "
        "the password from the terminal (twice) or from standard input.",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=("serve", "hash-password"),
        default="serve",
        help="serve (default): run the web server; hash-password: print 'NAME:HASH' for "
        "the users file",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="the user to hash a password for")
    p.add_argument(
        "--db",
        default=os.environ.get(ENV_DB, "trace.db"),
        help=f"SQLite file or postgresql:// URL of the trace store (default: ${ENV_DB}, else "
        "trace.db); opened read-only",
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to serve on (default {DEFAULT_LISTEN}; [::1]:8080 for IPv6; port 0 "
        "picks a free one)",
    )
    p.add_argument(
        "--users",
        metavar="FILE",
        help="users file, one NAME:HASH per line (hash-password makes them): a login is "
        "required; NAME:HASH:quality lets that user block and release (docs/quality.md)",
    )
    p.add_argument(
        "--proxy-user-header",
        metavar="HEADER",
        help="take the user from this header (e.g. X-Remote-User), set by the plant's "
        "reverse proxy after its own login; honoured only from --trusted-proxy addresses",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="address or network of the reverse proxy (repeat the option), e.g. 127.0.0.1",
    )
    p.add_argument(
        "--refresh",
        type=int,
        default=30,
        metavar="SECONDS",
        help="the Lines and live Dashboard pages reload themselves this often (default 30; "
        "0 never)",
    )
    p.add_argument(
        "--root-path",
        default="",
        metavar="PATH",
        help="serve under this path prefix behind a reverse proxy, e.g. /quality: links, "
        "assets and redirects carry it (the proxy may pass it on or strip it)",
    )
    p.add_argument(
        "--time-zone",
        default="UTC",
        metavar="ZONE",
        help="the plant's time zone, e.g. Europe/Berlin: pages show and read times in it, "
        "hours and shifts are counted in it (default UTC)",
    )
    p.add_argument(
        "--shifts",
        default="06:00,14:00,22:00",
        metavar="[NAME=]HH:MM,...",
        help="shift start times in the plant's time zone, named S1, S2 ... in time order or "
        "as given (early=06:00,late=14:00,night=22:00); for the per-shift figures and the "
        "Window page's shift filter (default 06:00,14:00,22:00)",
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "hash-password":
        return _hash_password(args.name)
    if args.name is not None:
        print(f"workbench: unexpected argument {args.name!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        host, port = parse_listen(args.listen)
        config = config_from_args(args, host)
    except ValueError as exc:
        print(f"workbench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return _serve(config, host, port)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``; ValueError names the problem."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        number = rest.removeprefix(":") if sep and rest.startswith(":") else ""
    else:
        host, _, number = text.rpartition(":")
    if not host or not number.isdigit() or not 0 <= int(number) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host, int(number)


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_from_args(args: argparse.Namespace, host: str) -> Any:
    from trace_store.web.app import WorkbenchConfig
    from trace_store.web.auth import Access, load_roles, load_users, parse_networks
    from trace_store.web.plant_time import PlantTime, parse_shifts, parse_zone
    from trace_store.web.prefix import parse_root_path

    users = load_users(args.users) if args.users else {}
    header = args.proxy_user_header
    if header is not None and not args.trusted_proxy:
        raise ValueError("--proxy-user-header needs --trusted-proxy (the proxy's address)")
    if args.trusted_proxy and header is None:
        raise ValueError("--trusted-proxy without --proxy-user-header has no effect")
    if not loopback(host) and not users and header is None:
        raise ValueError(
            f"--listen {host} is reachable from the network: give --users FILE or "
            "--proxy-user-header with --trusted-proxy, or listen on 127.0.0.1"
        )
    if args.refresh < 0:
        raise ValueError("--refresh must be 0 or more seconds")
    try:
        shifts = parse_shifts(args.shifts)
    except ValueError as exc:
        raise ValueError(f"--shifts: {exc}") from exc
    try:
        zone = parse_zone(args.time_zone)
    except ValueError as exc:
        raise ValueError(f"--time-zone: {exc}") from exc
    roles = load_roles(args.users) if args.users else {}
    access = Access(users, header, parse_networks(args.trusted_proxy), roles=roles)
    try:
        root_path = parse_root_path(args.root_path)
    except ValueError as exc:
        raise ValueError(f"--root-path {exc}") from exc
    plant = PlantTime(zone, shifts)
    return WorkbenchConfig(args.db, access, args.refresh, plant=plant, root_path=root_path)


def _serve(config: Any, host: str, port: int) -> int:
    try:
        import uvicorn

        from trace_store.web.app import create_app
        from trace_store.web.db import Pool
    except ImportError as exc:
        print(f"workbench: {exc.name} is missing: pip install 'edge-agent[web]'", file=sys.stderr)
        return EXIT_USAGE
    from trace_store.storage import StorageError

    server_class = _server_class()
    pool = Pool(config.db)
    try:
        location = pool.check()
    except StorageError as exc:
        print(f"workbench: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)  # connections wait in the backlog until the server accepts
    except OSError as exc:
        pool.close()
        print(f"workbench: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return EXIT_STARTUP
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:
        print(
            f"workbench: serving {location} on http://{shown}:{bound}/", file=sys.stderr, flush=True
        )

    server = server_class(
        uvicorn.Config(
            create_app(config, pool, on_ready=ready),
            log_level="warning",
            access_log=False,
            # The client address is the TCP peer: a forwarded-for header is not believed.
            proxy_headers=False,
            server_header=False,
            lifespan="on",
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        pool.close()
    return EXIT_OK


def _server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises a captured SIGTERM once it has shut down, so the process would
        die of the signal; here SIGTERM and SIGINT stop it and the command exits 0, as
        ``trace-store`` does."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            def stop(*_: object) -> None:
                self.should_exit = True

            saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                yield
            finally:
                for sig, handler in saved.items():
                    signal.signal(sig, handler)

    return Server


def _hash_password(name: str | None) -> int:
    from trace_store.web.auth import hash_password, valid_name

    if name is None or not valid_name(name):
        print("workbench: hash-password needs a NAME (letters, digits, . _ @ -)", file=sys.stderr)
        return EXIT_USAGE
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            print("workbench: the two passwords differ", file=sys.stderr)
            return EXIT_USAGE
    else:
        password = sys.stdin.readline().removesuffix("\n")
    if len(password) < 8:
        print("workbench: a password needs at least 8 characters", file=sys.stderr)
        return EXIT_USAGE
    print(f"{name}:{hash_password(password)}")
    return EXIT_OK
