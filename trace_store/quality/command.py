"""``edge-agent quality ...``: block and release lots, serials and products, list the blocks
and the audit trail, show, export and sign off recall reports (docs/quality.md).

The commands write the store's database directly (SQLite file or PostgreSQL URL, as
``--db``); the running trace store notices the change within about 0.2 s and publishes the
new blocked set to the agents. Exit status: 0 done (or nothing to do for a key blocked
already), 1 nothing found or nothing released, 2 usage or database errors.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_USAGE = 2
ENV_DB = "TRACE_STORE_DB"


def register(sub: Any) -> None:
    q = sub.add_parser(
        "quality",
        help="block and release lots, serials and products; audit trail and recall reports",
        description="Quality actions on a trace store database (docs/quality.md). A block "
        "is published to every agent's station gate by the running trace store.",
    )
    qsub = q.add_subparsers(dest="quality_command", required=True)
    for name, help_ in (
        ("block", "block a lot, serial or product (computes and keeps its recall report)"),
        ("release", "release a blocked lot, serial or product"),
    ):
        p = qsub.add_parser(name, help=help_)
        _db(p)
        _key(p, required=True)
        p.add_argument("--reason", required=True, help="why (kept in the audit trail)")
        p.add_argument("--user", default=_login(), help="who (default: the login name)")
    p = qsub.add_parser("blocks", help="what is blocked now")
    _db(p)
    _format(p, ("table", "json"))
    p = qsub.add_parser("audit", help="every block, release and sign-off, newest first")
    _db(p)
    _format(p, ("table", "json"))
    p.add_argument("--limit", type=int, default=None, help="at most this many entries")
    p = qsub.add_parser(
        "report", help="a recall report: by number, or the newest of a blocked key; or the list"
    )
    _db(p)
    p.add_argument("id", nargs="?", type=int, help="the report's number")
    _key(p, required=False)
    _format(p, ("table", "json", "csv", "xlsx"))
    p.add_argument("-o", "--output", metavar="FILE", help="write there (required for xlsx)")
    p = qsub.add_parser("sign-off", help="sign a recall report off (once)")
    _db(p)
    p.add_argument("id", type=int, help="the report's number")
    p.add_argument("--user", default=_login(), help="who (default: the login name)")
    p.add_argument("--note", default="", help="a remark kept with the sign-off")


def run(args: argparse.Namespace) -> int:
    from trace_store.storage import StorageError, open_storage

    command = args.quality_command
    writes = command in ("block", "release", "sign-off")
    if writes and "://" not in args.db and not Path(args.db).is_file():
        return _fail(f"{args.db}: no such database (start the trace store on it first)")
    if command == "report" and args.format == "xlsx" and not args.output:
        return _fail("--format xlsx writes a file: give it with -o FILE")
    try:
        storage = open_storage(args.db, read_only=not writes)
    except StorageError as exc:
        return _fail(str(exc))
    try:
        return _run(storage, args)
    except StorageError as exc:
        return _fail(str(exc))
    finally:
        storage.close()


def _run(storage: Any, args: argparse.Namespace) -> int:
    from trace_store.quality import blocks as q

    command = args.quality_command
    if command not in ("block", "release", "sign-off") and not q.has_tables(storage):
        print("quality: no blocks yet (this database has no quality tables)", file=sys.stderr)
        return EXIT_NOTHING
    try:
        if command in ("block", "release"):
            kind, key = _chosen(args)
            act = q.block if command == "block" else q.release
            outcome = act(storage, kind, key, args.reason, args.user)
            print(outcome.message)
            return EXIT_NOTHING if command == "release" and not outcome.changed else EXIT_OK
        if command == "sign-off":
            report = q.sign_off(storage, args.id, args.user, args.note)
            print(
                f"recall report {report.id} signed off by {report.signed_by} at {report.signed_at}"
            )
            return EXIT_OK
    except q.QualityError as exc:
        return _fail(str(exc))
    if command == "blocks":
        return _blocks(q.blocks(storage), args.format)
    if command == "audit":
        return _audit(q.audit(storage, args.limit), args.format)
    return _report(storage, args)


def _blocks(found: list[Any], fmt: str) -> int:
    if fmt == "json":
        print(json.dumps([_fields(b) for b in found], indent=2))
    else:
        _table(
            ("kind", "key", "since", "by", "version", "known", "reason"),
            [
                (b.kind, b.key, b.since, b.by, b.version, "yes" if b.known else "no", b.reason)
                for b in found
            ],
        )
    return EXIT_OK if found else EXIT_NOTHING


def _audit(entries: list[Any], fmt: str) -> int:
    if fmt == "json":
        print(json.dumps([_fields(e) for e in entries], indent=2))
    else:
        _table(
            ("at", "version", "action", "kind", "key", "by", "reason", "detail"),
            [(e.at, e.version, e.action, e.kind, e.key, e.by, e.reason, e.detail) for e in entries],
        )
    return EXIT_OK if entries else EXIT_NOTHING


def _report(storage: Any, args: argparse.Namespace) -> int:
    from trace_store import export
    from trace_store.quality import blocks as q
    from trace_store.quality.recall import table

    chosen = _chosen(args, required=False)
    if args.id is not None:
        found = q.report(storage, args.id)
        if found is None:
            return _fail(f"no recall report {args.id}", EXIT_NOTHING)
    elif chosen is not None:
        every = q.reports(storage, *chosen)
        if not every:
            return _fail(f"no recall report for {chosen[0]} {chosen[1]}", EXIT_NOTHING)
        found = every[0]
    else:
        listed = q.reports(storage)
        _table(
            ("report", "version", "kind", "key", "made_at", "by", "serials", "signed_off"),
            [
                (
                    r.id,
                    r.version,
                    r.kind,
                    r.key,
                    r.made_at,
                    r.made_by,
                    r.serials,
                    f"{r.signed_by} {r.signed_at}" if r.signed_by else "-",
                )
                for r in listed
            ],
        )
        return EXIT_OK if listed else EXIT_NOTHING
    name = f"recall-{found.kind}-{found.key}"
    if args.format in ("csv", "xlsx"):
        sheet = table(found.rows, name)
        if args.format == "xlsx":
            export.write_xlsx(sheet, args.output)
        elif args.output:
            with open(args.output, "w", encoding="utf-8", newline="") as f:
                export.write_csv(sheet, f)
        else:
            export.write_csv(sheet, sys.stdout)
        return EXIT_OK
    if args.format == "json":
        doc = {k: v for k, v in _fields(found).items() if k != "rows"}
        doc["serials"] = [r.as_json() for r in found.rows]
        text = json.dumps(doc, indent=2) + "\n"
    else:
        signed = (
            f"signed off by {found.signed_by} at {found.signed_at}"
            if found.signed_by
            else "not signed off"
        )
        text = (
            f"recall report {found.id}: {found.kind} {found.key} blocked at {found.made_at} by "
            f"{found.made_by} ({found.reason}); {found.serials} serial(s); {signed}\n"
        )
        text += _table_text(
            (
                "serial",
                "depth",
                "via",
                "how",
                "result",
                "last_station",
                "last_line",
                "last_ts",
                "consumed_into",
            ),
            [
                (
                    r.serial,
                    r.depth,
                    r.via,
                    r.how,
                    r.result or "-",
                    r.last_station,
                    r.last_line,
                    r.last_ts,
                    " ".join(r.consumed_into),
                )
                for r in found.rows
            ],
        )
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _chosen(args: argparse.Namespace, *, required: bool = True) -> Any:
    for kind in ("lot", "serial", "product"):
        value = getattr(args, kind, None)
        if value is not None:
            return kind, value
    if required:
        raise AssertionError("argparse requires one of --lot, --serial, --product")
    return None


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    sys.stdout.write(_table_text(headers, rows))


def _table_text(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    cells = [list(headers), *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in cells
    )


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=os.environ.get(ENV_DB, "trace.db"),
        help=f"SQLite file or postgresql:// URL (default: ${ENV_DB}, else trace.db)",
    )


def _key(p: argparse.ArgumentParser, *, required: bool) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--lot", help="a lot, as scans and consumption records carry it")
    group.add_argument("--serial", help="a serial")
    group.add_argument("--product", help="a product (GTIN or part number, ctx.product)")


def _format(p: argparse.ArgumentParser, choices: tuple[str, ...]) -> None:
    p.add_argument("--format", choices=choices, default="table", help="output format")


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a container: --user is then required
        return ""


def _fail(message: str, status: int = EXIT_USAGE) -> int:
    print(f"quality: {message}", file=sys.stderr)
    return status
