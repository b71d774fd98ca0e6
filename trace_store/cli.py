"""``edge-agent trace-store`` (the daemon) and ``edge-agent trace ...`` (recall queries).

``register`` adds both to ``edge-agent``'s sub-commands; ``dispatch`` runs them. Nothing heavy
is imported until a command runs, so the agent's own commands do not pay for paho or psycopg.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from trace_store.config import DEFAULT_MAX_HELD_RECORDS, DEFAULT_MAX_MESSAGE_BYTES

log = logging.getLogger("trace_store")

COMMANDS = frozenset({"trace-store", "trace", "workbench", "quality"})
TRACE_FORMATS = ("table", "json", "csv", "xlsx")
RECORD_KINDS = (
    "readings", "reading", "context", "context_restored", "scan", "consumption", "part", "gap",
    "unobserved", "gate",
)  # fmt: skip
"""The kinds of docs/wire-format.md (``kernel.model.RecordKind``)."""
EXIT_FOUND = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_STARTUP = 75
"""The store cannot start now (sysexits' EX_TEMPFAIL, as the agent): a port in use;
systemd's Restart=on-failure retries."""

ENV_DB = "TRACE_STORE_DB"
ENV_USERNAME = "TRACE_STORE_MQTT_USERNAME"
ENV_PASSWORD = "TRACE_STORE_MQTT_PASSWORD"


def register(sub: Any) -> None:
    """Add ``trace-store`` and ``trace`` to an argparse sub-parsers object."""
    p = sub.add_parser(
        "trace-store",
        help="run the central trace store: records from MQTT into SQLite/PostgreSQL, "
        "confirmations back to the agents",
        description="Subscribe to <prefix>/+/+/+/records with a persistent session, store every "
        "record once by (agent, epoch, seq), and publish each agent's confirmed watermark "
        "(retained) to <prefix>/<site>/<line>/<agent>/confirmed. SIGTERM or Ctrl-C stops it "
        "cleanly.",
    )
    p.add_argument(
        "--broker",
        default="localhost",
        metavar="HOST[:PORT]",
        help="MQTT broker (default localhost:1883, port 8883 with TLS)",
    )
    p.add_argument("--username", help=f"broker user name (default: ${ENV_USERNAME})")
    p.add_argument(
        "--password-file",
        help=f"file holding the broker password (default: the password in ${ENV_PASSWORD})",
    )
    p.add_argument("--tls", action="store_true", help="TLS with the system's trusted CAs")
    p.add_argument("--tls-ca", help="CA certificate file to verify the broker (implies TLS)")
    p.add_argument("--tls-cert", help="client certificate file (with --tls-key)")
    p.add_argument("--tls-key", help="client private key file (with --tls-cert)")
    _db_option(p)
    p.add_argument("--topic-prefix", default="trace", help="first topic level(s) (default trace)")
    p.add_argument(
        "--store-id",
        help="this store's name: client id trace-store-<id>, and 'store' in confirmations "
        "(default: the host name). Keep it stable: the broker queues by it",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help=f"reject larger messages (default {DEFAULT_MAX_MESSAGE_BYTES})",
    )
    p.add_argument(
        "--agent",
        action="append",
        dest="agents",
        metavar="AGENT",
        help="accept only these agent ids (repeat the option); default: every agent",
    )
    p.add_argument(
        "--confirm-interval",
        type=float,
        default=0.15,
        help="seconds between two confirmations of one agent (default 0.15)",
    )
    p.add_argument(
        "--max-held-records",
        type=int,
        default=DEFAULT_MAX_HELD_RECORDS,
        help="per agent, records the store may hold in memory while they wait for a gap "
        "below them to close (confirm: store, in_order agents); beyond, messages are dropped "
        f"and the agent resends them (default {DEFAULT_MAX_HELD_RECORDS})",
    )
    p.add_argument(
        "--summary-interval",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="log a summary line (records stored, rejected by reason, held, each agent's lag) "
        "every SECONDS (default 300; 0: never)",
    )
    p.add_argument(
        "--rules",
        metavar="FILE",
        help="quality rules (YAML, docs/quality.md): NOK rate, consecutive NOK, run rules, Cpk; "
        "alerts go to <prefix>/alerts/<rule id> and the rules' webhooks. Checked at start",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (ingest by kind, rejected "
        "by reason, held records, per-agent lag; docs/metrics.md), e.g. 127.0.0.1:9465",
    )

    t = sub.add_parser("trace", help="recall queries on a trace store database")
    tsub = t.add_subparsers(dest="trace_command", required=True)
    for name, metavar, help_ in (
        ("serial", "SERIAL", "every record of a serial, station by station"),
        ("lot", "LOT", "forward: every serial that consumed the lot, through components too"),
        ("materials", "SERIAL", "backward: every lot and component in a serial, recursively"),
    ):
        q = tsub.add_parser(name, help=help_)
        q.add_argument("id", metavar=metavar, help=f"the {metavar.lower()} to trace")
        _db_option(q)
        q.add_argument(
            "--format",
            choices=TRACE_FORMATS,
            default="table",
            help="table (default) for people, json for other tools, csv or xlsx for "
            "spreadsheets (one row per item, one column per value; xlsx needs -o and "
            "pip install 'edge-agent[web]')",
        )
        q.add_argument(
            "-o",
            "--output",
            metavar="FILE",
            help="write to FILE instead of standard output (required for xlsx)",
        )
        if name == "serial":
            q.add_argument(
                "--kind",
                action="append",
                dest="kinds",
                choices=RECORD_KINDS,
                metavar="KIND",
                help="only records of this kind (repeat the option); readings are listed one "
                "by one only when asked for, otherwise summed up per station visit. Kinds: "
                + ", ".join(RECORD_KINDS),
            )
    from trace_store.web.command import register as register_workbench

    register_workbench(sub)
    from trace_store.quality.command import register as register_quality

    register_quality(sub)


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "trace-store":
        return _run_store(args)
    if args.command == "workbench":
        from trace_store.web.command import run as run_workbench

        return run_workbench(args)
    if args.command == "quality":
        from trace_store.quality.command import run as run_quality

        return run_quality(args)
    return _query(args)


def _db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=os.environ.get(ENV_DB, "trace.db"),
        help=f"SQLite file or postgresql:// URL (default: ${ENV_DB}, else trace.db)",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """A StoreConfig from ``trace-store``'s options. Raises ValueError naming the problem."""
    from trace_store.config import StoreConfig, parse_broker

    use_tls = bool(args.tls or args.tls_ca or args.tls_cert)
    host, port = parse_broker(args.broker, default_port=8883 if use_tls else 1883)
    password: str | None = None
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.read().removesuffix("\n")
        except OSError as exc:
            raise ValueError(f"--password-file: {exc}") from exc
    else:
        password = os.environ.get(ENV_PASSWORD) or None
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "db": args.db,
        "topic_prefix": args.topic_prefix,
        "max_message_bytes": args.max_message_bytes,
        "agents": frozenset(args.agents) if args.agents else None,
        "username": args.username or os.environ.get(ENV_USERNAME) or None,
        "password": password,
        "tls": bool(args.tls),
        "tls_ca": args.tls_ca,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "confirm_interval": args.confirm_interval,
        "max_held_records": args.max_held_records,
    }
    if args.store_id:
        options["store_id"] = args.store_id
    return StoreConfig(**options)


def _run_store(args: argparse.Namespace) -> int:
    from kernel.errors import StartupError
    from trace_store.service import TraceStore
    from trace_store.storage import StorageError

    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"trace-store: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rules = None
    if args.rules is not None:
        from trace_store.quality.ruleconf import RulesError, load_rules

        try:
            rules = load_rules(args.rules)
        except RulesError as exc:
            print(f"trace-store: --rules: {exc}", file=sys.stderr)
            return EXIT_USAGE
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    store = TraceStore(config, rules)
    metrics = None
    if args.metrics is not None:
        from trace_store.metrics import MetricsServer

        try:
            metrics = MetricsServer(store, args.metrics)
            metrics.start()  # before anything connects: a taken port is a start-up error
        except ValueError as exc:
            print(f"trace-store: --metrics: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except StartupError as exc:
            print(f"trace-store: cannot start: {exc}", file=sys.stderr)
            return EXIT_STARTUP
    summary = None
    if args.summary_interval > 0:
        from trace_store.summary import StoreSummary

        summary = StoreSummary(store, args.summary_interval)
        summary.start()
    try:
        store.run(stop)
    except (StorageError, ValueError) as exc:  # at start-up: nothing was connected
        print(f"trace-store: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        log.critical("trace store stopped on an error", exc_info=True)
        return 1
    finally:
        if summary is not None:
            summary.stop()
        if metrics is not None:
            metrics.stop()
    log.info("trace store stopped: %s", store.stats())
    return 0


def _query(args: argparse.Namespace) -> int:
    from trace_store.queries import (
        LotTrace,
        MaterialsTrace,
        SerialTrace,
        trace_lot,
        trace_materials,
        trace_serial,
    )
    from trace_store.report import nothing_found
    from trace_store.storage import StorageError, open_storage

    if args.format == "xlsx" and not args.output:
        print("trace: --format xlsx writes a file: give it with -o FILE", file=sys.stderr)
        return EXIT_USAGE
    kinds = frozenset(getattr(args, "kinds", None) or ()) or None
    try:
        storage = open_storage(args.db, read_only=True)
    except StorageError as exc:
        print(f"trace: {exc}", file=sys.stderr)
        return EXIT_USAGE
    trace: SerialTrace | LotTrace | MaterialsTrace
    try:
        if args.trace_command == "serial":
            trace = trace_serial(storage, args.id)
        elif args.trace_command == "lot":
            trace = trace_lot(storage, args.id, details=True)
        else:
            trace = trace_materials(storage, args.id)
    except StorageError as exc:
        print(f"trace: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        storage.close()
    found = trace.found
    if isinstance(trace, SerialTrace) and kinds:
        found = any(r.kind in kinds for v in trace.visits for r in v.records)
    if not found and args.format == "table":
        print(nothing_found(trace, kinds), file=sys.stderr)
        return EXIT_NOT_FOUND
    try:
        _write(trace, args.format, kinds, args.output)  # an empty document still parses
    except ImportError:
        print("trace: xlsx needs XlsxWriter: pip install 'edge-agent[web]'", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"trace: {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    if not found:
        print(nothing_found(trace, kinds), file=sys.stderr)
        return EXIT_NOT_FOUND
    return EXIT_FOUND


def _write(trace: Any, fmt: str, kinds: frozenset[str] | None, output: str | None) -> None:
    from trace_store import export
    from trace_store.queries import LotTrace, SerialTrace
    from trace_store.report import render

    if fmt in ("table", "json"):
        text = render(trace, fmt, kinds)
    else:
        if isinstance(trace, SerialTrace):
            table = export.serial_table(trace, kinds)
        elif isinstance(trace, LotTrace):
            table = export.lot_table(trace)
        else:
            table = export.materials_table(trace)
        if fmt == "xlsx":
            assert output is not None
            export.write_xlsx(table, output)
            return
        if output is None:
            export.write_csv(table, sys.stdout)
            return
        # newline="": the CSV's own CRLF line ends stay as they are.
        with open(output, "w", encoding="utf-8", newline="") as f:
            export.write_csv(table, f)
        return
    if output is None:
        sys.stdout.write(text)
        return
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
