"""``edge-agent tail``: follow a running agent's records as they are committed, on the PC
itself, without an MQTT client.

One line per record, in seq order, only once it is in the journal (what is shown survives a
power cut): a readable line by default, the record as JSON with ``--json`` (as on the wire;
values rounded to the precision of their source, see ``edge_agent.tail``). ``--station`` and
``--kind`` (both repeatable) filter in the agent. A client too slow to keep up gets a
``tail.overflow`` line in place of the records it missed and goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from datetime import datetime
from typing import Any, TextIO

from edge_agent.remote import EXIT_CONFIG, _socket, socket_options
from kernel.model import RecordKind

KINDS = tuple(k.value for k in RecordKind)
OVERFLOW = "tail.overflow"
MAX_LINE = 32 << 20  # as edge_agent.control.MAX_LINE, without importing the server side
ANSWER_WITHIN = 10.0


def add_tail_arguments(p: argparse.ArgumentParser) -> None:
    socket_options(p)
    p.add_argument(
        "--station",
        action="append",
        dest="stations",
        metavar="STATION",
        help="only this station's records (repeat the option for several)",
    )
    p.add_argument(
        "--kind",
        action="append",
        dest="kinds",
        choices=KINDS,
        metavar="KIND",
        help=f"only records of this kind (repeatable): {', '.join(KINDS)}",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line, the record as on the wire (for jq and scripts)",
    )


def tail_command(args: argparse.Namespace) -> int:
    socket = _socket(args)
    try:
        return asyncio.run(follow(socket, args.stations, args.kinds, as_json=args.json))
    except KeyboardInterrupt:
        return 0


async def follow(
    socket: str,
    stations: list[str] | None,
    kinds: list[str] | None,
    *,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the agent's records until it stops (exit 1) or the reader goes away (0)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        reader, writer = await asyncio.open_unix_connection(socket, limit=MAX_LINE)
    except OSError as exc:
        print(
            f"cannot reach the agent at {socket}: {exc.strerror or exc} (is it running?)",
            file=err,
        )
        return 1
    try:
        request = {"op": "tail", "stations": stations, "kinds": kinds}
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        try:
            async with asyncio.timeout(ANSWER_WITHIN):
                first = await reader.readline()
        except TimeoutError:
            print(f"the agent at {socket} did not answer within {ANSWER_WITHIN:g}s", file=err)
            return 1
        head = json.loads(first) if first else {"ok": False, "error": "no answer"}
        if not head.get("ok"):
            print(head.get("error", "refused"), file=err)
            return EXIT_CONFIG
        print(
            f"following records as they are committed (seq after {head.get('committed_seq')}); "
            "Ctrl-C to stop",
            file=err,
            flush=True,
        )
        while line := await reader.readline():
            out.write(line.decode() if as_json else text_line(json.loads(line)) + "\n")
            out.flush()
        print("the agent closed the stream (stopped?)", file=err)
        return 1
    except (BrokenPipeError, ConnectionResetError):
        return 0  # `edge-agent tail | head`, or the agent went away mid-line
    except ValueError as exc:  # a line over MAX_LINE, or not JSON
        print(f"unreadable line from the agent: {exc}", file=err)
        return 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# ---- one readable line per record ---------------------------------------------------------


def _time(ts: Any) -> str:
    """Local wall-clock time of the record, to the millisecond."""
    try:
        return datetime.fromisoformat(ts).astimezone().strftime("%H:%M:%S.%f")[:-3]
    except (TypeError, ValueError):
        return str(ts)


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if v and " " not in v and v.isprintable() else json.dumps(v)
    return str(v)


def _with_unit(v: Any, unit: Any) -> str:
    return f"{_value(v)} {unit}" if unit and v is not None else _value(v)


def _readings(r: dict[str, Any]) -> str:
    units, quality, errors = r.get("units", {}), r.get("quality", {}), r.get("errors", {})
    parts = []
    for point, v in r["values"].items():
        text = f"{point}={_with_unit(v, units.get(point))}"
        if point in quality:
            why = errors.get(point)
            text += f" ({quality[point]}{': ' + why if why else ''})"
        parts.append(text)
    serial = (r.get("ctx") or {}).get("serial")
    return f"{r['device']} {serial or '(no serial)'} {' '.join(parts)}"


def _part(r: dict[str, Any]) -> str:
    result = (r.get("result") or "?").upper()
    shown = [r.get("serial") or "(no serial)", result]
    if r.get("counter") is not None:
        shown.append(f"#{r['counter']}")
    for name, e in r.get("values", {}).items():
        v = e.get("value")
        if e.get("quality") != "good":
            shown.append(f"{name}=? ({e.get('error') or e.get('quality')})")
            continue
        # Identifications (serial, lot) are shown already; the counter too.
        if isinstance(v, str | bool) or (type(v) is int and v == r.get("counter")):
            continue
        text = f"{name}={_with_unit(v, e.get('unit'))}"
        if e.get("ok") is False:
            limits = [f"{k} {e[k]}" for k in ("min", "max") if k in e]
            text += f" (NOK: {', '.join(limits)})"
        shown.append(text)
    if isinstance(r.get("cycle_time"), int | float):
        shown.append(f"cycle {r['cycle_time']:.3g} s")
    if r.get("repeat"):
        shown.append(f"repeat {r['repeat']}")
    if r.get("quality") != "good":
        shown.append(f"[{r.get('quality')}: {r.get('error')}]")
    return " ".join(shown)


def _context(r: dict[str, Any]) -> str:
    src = r.get("source") or {}
    if src.get("manual"):
        origin = f"set by hand ({src.get('user') or 'unknown user'})"
    elif src.get("rule"):
        origin = f"from a scan of {src.get('device')} (rule {src['rule']})"
    else:
        origin = f"from {src.get('device')}.{src.get('point')}"
    return f"{r['key']} {_value(r.get('value'))} (was {_value(r.get('previous'))}) {origin}"


def _scan(r: dict[str, Any]) -> str:
    text = r.get("text")
    line = f"{r['device']}.{r['point']} {r['status']}"
    if r.get("rule"):
        line += f" ({r['rule']})"
    line += f" {text!r}" if text is not None else " (no text)"
    if r.get("error"):
        line += f": {r['error']}"
    return line


def _consumption(r: dict[str, Any]) -> str:
    what = [f"{k} {r[k]}" for k in ("component", "lot", "product") if r.get(k)]
    if r.get("quantity") is not None:
        what.append(_with_unit(r["quantity"], r.get("unit")))
    line = f"{r.get('serial') or '(no serial)'} <- {' '.join(what)} (rule {r.get('rule')})"
    return line if r.get("quality") == "good" else f"{line} [{r.get('error')}]"


def _gap(r: dict[str, Any]) -> str:
    missed = r.get("missed")
    how_many = "an unknown number of" if missed is None else str(missed)
    return f"counter {r['previous']} -> {r['counter']}: {how_many} part(s) without a record"


def _restored(r: dict[str, Any]) -> str:
    ctx = " ".join(f"{k}={_value(v)}" for k, v in (r.get("ctx") or {}).items())
    return f"{ctx} (counter {_value(r.get('counter'))})"


def _unobserved(r: dict[str, Any]) -> str:
    since = _time(r["since"]) if r.get("since") else "their previous value"
    return f"{r['device']} {', '.join(r['points'])} since {since}: {r['reason']}"


def _reading(r: dict[str, Any]) -> str:
    return f"{r['device']} {r['point']}={_with_unit(r.get('value'), r.get('unit'))}"


_FORMATS = {
    "readings": _readings,
    "part": _part,
    "context": _context,
    "context_restored": _restored,
    "scan": _scan,
    "consumption": _consumption,
    "gap": _gap,
    "unobserved": _unobserved,
    "reading": _reading,
}
_COMMON = ("seq", "kind", "station", "ts", "ctx")


def text_line(r: dict[str, Any]) -> str:
    """``10:00:01.234 ST10 part S1-0042 OK #42 final_force=20.64 kN ...``."""
    kind = r.get("kind")
    if kind == OVERFLOW:
        return (
            f"-- {r['skipped']} record(s) skipped (seq {r['first_seq']}..{r['last_seq']}): "
            "this client did not keep up --"
        )
    fmt = _FORMATS.get(str(kind))
    try:
        body = fmt(r) if fmt is not None else None
    except (KeyError, TypeError, AttributeError):  # a field changed shape: show it raw
        body = None
    if body is None:
        rest = {k: v for k, v in r.items() if k not in _COMMON}
        body = json.dumps(rest, separators=(",", ":"))
    return f"{_time(r.get('ts'))} {r.get('station')} {kind} {body}"
