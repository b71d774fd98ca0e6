"""The commands that talk to a running agent over its control socket: ``status``, ``reload``,
``context`` and ``device command``, and how they find that socket (``--socket``, ``-c``, the
environment, the default), even from a config file that does not validate."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import datetime
from typing import Any

from kernel.errors import ConfigError

EXIT_CONFIG = 2
EXIT_ALARM = 3
CONFIG_ENV = "EDGE_AGENT_CONFIG"
"""The config file of commands that take one, when none is given on the command line."""
SOCKET_ENV = "EDGE_AGENT_SOCKET"
DEFAULT_SOCKET = "data/control.sock"


def socket_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "-c",
        "--config",
        help="the agent's config, to find its socket (a file with problems is read for "
        "control.socket only, with a warning)",
    )
    where.add_argument(
        "--socket",
        help=f"the agent's control socket (default: ${SOCKET_ENV}, else the socket of "
        f"${CONFIG_ENV}, else {DEFAULT_SOCKET}, the config's default)",
    )


def _socket(args: argparse.Namespace) -> str:
    """The control socket named by --socket, --config, the environment or the default."""
    if args.socket:
        return str(args.socket)
    config = args.config or (None if os.environ.get(SOCKET_ENV) else os.environ.get(CONFIG_ENV))
    if not config:
        return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    from edge_agent.config import control_socket, load_config

    try:
        return load_config(config).control.socket
    except ConfigError as exc:
        socket = control_socket(config)
        more = len(exc.issues) - 1
        also = f" (and {more} more)" if more else ""
        print(
            f"warning: {config} does not validate: {exc.issues[0]}{also}; "
            f"using its control socket {socket}",
            file=sys.stderr,
        )
        return socket


def _ask(socket: str, message: dict[str, Any]) -> dict[str, Any] | None:
    from edge_agent.control import ControlError, request

    try:
        return asyncio.run(request(socket, message))
    except ControlError as exc:
        print(exc, file=sys.stderr)
        return None


def reload_command(args: argparse.Namespace) -> int:
    reply = _ask(_socket(args), {"op": "reload"})
    if reply is None:
        return 1
    if not reply.get("ok"):
        for error in reply.get("errors") or [reply.get("error")]:
            print(error, file=sys.stderr)
        print("reload rejected; the agent keeps running with its current config", file=sys.stderr)
        return EXIT_CONFIG
    print(
        f"reloaded: restarted {reply['restarted']}, added {reply['added']}, "
        f"removed {reply['removed']}" + ("; sync restarted" if reply["sync_restarted"] else "")
    )
    return 0


def device_command(args: argparse.Namespace) -> int:
    socket = _socket(args)
    reply = _ask(socket, {"op": "device.command", "device": args.device, "command": args.name})
    if reply is None:
        return 1
    if not reply.get("ok"):
        print(reply.get("error", "refused"), file=sys.stderr)
        return 1
    print(f"{args.device}: {reply['answer']}")
    return 0


def gate_command(args: argparse.Namespace) -> int:
    """``gate release``: lower a station's interlock by hand (docs/gate.md)."""
    import getpass

    message = {"op": "gate.release", "station": args.station, "user": getpass.getuser()}
    reply = _ask(_socket(args), message)
    if reply is None:
        return 1
    if not reply.get("ok"):
        print(reply.get("error", "refused"), file=sys.stderr)
        return 1
    print(f"{args.station}: interlock released (committed, seq {reply['seq']})")
    return 0


def context_command(args: argparse.Namespace) -> int:
    import getpass
    import json

    socket = _socket(args)
    message: dict[str, Any]
    if args.context_command == "set":
        values: dict[str, str | None] = {}
        for item in args.assignments:
            key, sep, value = item.partition("=")
            if not sep or not key:
                print(f"expected KEY=VALUE, got {item!r}", file=sys.stderr)
                return EXIT_CONFIG
            values[key] = value or None
        message = {
            "op": "context.set",
            "station": args.station,
            "values": values,
            "user": getpass.getuser(),
        }
    else:
        message = {"op": "status"}
    reply = _ask(socket, message)
    if reply is None:
        return 1
    if not reply.get("ok"):
        print(reply.get("error", "refused"), file=sys.stderr)
        return 1
    if args.context_command == "set":
        print(f"{args.station}: {json.dumps(reply['ctx'])} (committed, seq {reply['seq']})")
    else:
        for station, ctx in reply["status"]["stations"].items():
            print(f"{station}: {json.dumps(ctx)}")
    return 0


def status_command(args: argparse.Namespace) -> int:
    import json

    socket = _socket(args)
    reply = _ask(socket, {"op": "status"})
    if reply is None:
        return 1
    status = reply["status"]
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        buf, sync = status["buffer"], status["sync"]
        print(f"agent {status['agent']}: last seq {status['committed_seq']}")
        if status.get("identity"):  # an agent from before the journal's identity has none
            print(identity_line(status["identity"]))
        if "device_stations" in status:
            for line in station_lines(status, time.time()):
                print(line)
        else:  # an agent from before per-station status
            print("devices: " + ", ".join(f"{d} {s}" for d, s in status["devices"].items()))
        if status.get("dropped"):
            dropped = ", ".join(f"{d} {n}" for d, n in status["dropped"].items())
            print(f"frames dropped (decoding slower than the camera): {dropped}")
        print(
            f"records: {status['parts']} part(s), {status['gaps']} gap(s), "
            f"{status['scans']} scan(s) of which {status['rejected_scans']} rejected, "
            f"{status['unobserved']} unobserved window(s)"
        )
        print(
            f"journal: {buf['depth']} record(s) waiting, {buf['telemetry_rows']} of them "
            f"telemetry; evicted {buf['evicted_rows']}, readings refused "
            f"{buf['dropped_readings']}; disk {buf['disk_state']}"
        )
        uplink = "connected" if sync["connected"] else f"down ({sync['last_error']})"
        confirm = (
            f", store watermark {sync['store_watermark']}, resends {sync['resends']}"
            if sync["confirm"] == "store"
            else ""
        )
        print(f"uplink: {uplink}; confirm {sync['confirm']}{confirm}")
        if status.get("gate"):
            print(gate_line(status["gate"]))
        for alarm in status["alarms"]:
            print(f"ALARM {alarm['code']}: {alarm['message']}")
    return EXIT_ALARM if status["alarms"] else 0


def identity_line(identity: dict[str, Any]) -> str:
    """The journal's id and this opening's epoch: with the seq, a new record's key at the store."""
    return (
        f"identity: journal {identity['journal']}, epoch {identity['epoch']} "
        f"(from seq {identity['epoch_first']})"
    )


def gate_line(gate: dict[str, Any]) -> str:
    """The blocked set the station gates decide with, and what was ignored (docs/gate.md)."""
    held = gate["blocked"]
    version = gate["blocked_version"]
    text = (
        f"gate ({', '.join(gate['stations'])}): blocked set version {version}"
        + (f" of {gate['blocked_at']}" if gate["blocked_at"] else "")
        + f", {held['lots']} lot(s), {held['serials']} serial(s), {held['products']} product(s)"
        if version
        else f"gate ({', '.join(gate['stations'])}): no blocked set received yet"
    )
    ignored = gate["sets_garbled"] + gate["sets_older"]
    if ignored:
        text += f"; ignored {gate['sets_garbled']} garbled, {gate['sets_older']} older"
    if gate["route_unanswered"]:
        text += f"; route questions unanswered {gate['route_unanswered']}/{gate['route_asked']}"
    return text


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(0, round(seconds))} s ago"
    if seconds < 7200:
        return f"{round(seconds / 60)} min ago"
    if seconds < 172800:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} d ago"


def _last_part(last: dict[str, Any] | None, now: float) -> str:
    if last is None:
        return "last part -"
    try:
        when = _ago(now - datetime.fromisoformat(last["ts"]).timestamp())
    except (TypeError, ValueError):
        when = str(last["ts"])
    result = (last["result"] or "unknown").upper()
    quality = "" if last["quality"] == "good" else f" {last['quality']}"
    why = f": {last['error']}" if last.get("error") and last["quality"] == "bad" else ""
    return f"last part {result}{quality} ({last['serial'] or 'no serial'}, {when}){why}"


def station_lines(status: dict[str, Any], now: float) -> list[str]:
    """Per station: its context, last part and counts, then its devices with their state:

    ``ST10  serial S1-0042  lot L00001  last part OK (S1-0041, 12 s ago)  parts 41, NOK 2,
    rejected scans 0`` (one line), then ``      devices: press1 up, scanner1 down``."""
    per_device: dict[str, list[str]] = {}
    for device, stations in status["device_stations"].items():
        for st in stations:
            per_device.setdefault(st, []).append(device)
    stats = status.get("station_stats", {})
    width = max((len(st) for st in status["stations"]), default=0)
    out = []
    for st, ctx in status["stations"].items():
        counts = stats.get(st) or {}
        others = "".join(
            f"  {k} {v}" for k, v in ctx.items() if k not in ("serial", "lot") and v is not None
        )
        line = (
            f"{st:<{width}}  serial {ctx.get('serial') or '-'}  lot {ctx.get('lot') or '-'}"
            f"{others}  {_last_part(counts.get('last_part'), now)}  "
            f"parts {counts.get('parts', 0)}, NOK {counts.get('nok', 0)}, "
            f"rejected scans {counts.get('rejected_scans', 0)}"
        )
        if counts.get("gaps"):
            line += f", gaps {counts['gaps']} ({counts.get('missed_parts', 0)} parts missed)"
        out.append(line)
        devices = per_device.get(st, [])
        if devices:
            states = ", ".join(f"{d} {status['devices'].get(d, '?')}" for d in devices)
            out.append(f"{'':<{width}}  devices: {states}")
    return out
