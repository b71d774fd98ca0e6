"""``edge-agent`` command line: run, validate, simulate, demo, buffer salvage."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_agent.logs import setup_logging
from edge_agent.remote import (
    CONFIG_ENV,
    EXIT_CONFIG,
    context_command,
    device_command,
    reload_command,
    socket_options,
    status_command,
)
from kernel.errors import ConfigError

log = logging.getLogger("edge_agent")

CONFIG_HELP = f"the agent's config file (default: ${CONFIG_ENV})"
OPTIONAL_MODULES = ("asyncua", "evdev", "epcpy", "cv2", "zxingcpp")
"""What the extras bring (opcua, keyboard, rfid, camera), as ``--version`` reports them."""


def version_text() -> str:
    """The package's version, Python's, and which optional modules are installed."""
    import importlib.util
    import platform
    from importlib import metadata

    try:
        own = metadata.version("edge-agent")
    except metadata.PackageNotFoundError:
        own = "(version unknown: not installed)"
    dists = metadata.packages_distributions()
    found, missing = [], []
    for module in OPTIONAL_MODULES:
        try:
            present = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            present = False
        if not present:
            missing.append(module)
            continue
        versions = []
        for dist in dists.get(module, []):
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions.append(metadata.version(dist))
        found.append(f"{module} {versions[0]}" if versions else module)
    lines = [f"edge-agent {own}", f"Python {platform.python_version()}"]
    lines.append(f"optional: {', '.join(found) or 'none'}")
    if missing:
        lines.append(f"not installed: {', '.join(missing)}")
    return "\n".join(lines)


class _Version(argparse.Action):
    """``--version``, worked out only when asked (it looks at the installed packages)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.pop("nargs", None)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(version_text())
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Line-side traceability agent: PLC values bound to serials and lots, "
        "buffered in SQLite, forwarded over MQTT.",
        epilog=f"Commands that take a config file read ${CONFIG_ENV} when none is given. "
        "Relative paths in a config file are taken from the file's folder.",
    )
    parser.add_argument(
        "--version",
        action=_Version,
        default=argparse.SUPPRESS,
        help="print the version, Python's and the optional modules installed, and exit",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the agent with a config file")
    p.add_argument("config", nargs="?", help=CONFIG_HELP)

    p = sub.add_parser("validate", help="check config files; exit 2 listing every problem")
    p.add_argument("config", nargs="*", help=CONFIG_HELP)

    p = sub.add_parser(
        "simulate",
        help="run simulated station PLCs (Modbus TCP; Modbus RTU with --rtu; OPC UA with "
        "--opcua)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5020)
    p.add_argument(
        "--rtu",
        metavar="DIR",
        help="serve the stations over Modbus RTU on a simulated RS-485 line instead: a pty "
        "pair whose agent end is DIR/ttyAGENT (19200 baud 8N1: a pty cannot keep a parity bit)",
    )
    p.add_argument(
        "--opcua",
        action="store_true",
        help="serve the stations as variables of an OPC UA server on --host:--port instead "
        "(namespace urn:edge-agent:sim:stations, nodes ns=<i>;s=ST10.part_serial ...; "
        "security None)",
    )
    p.add_argument(
        "--report-updates",
        type=float,
        metavar="SECONDS",
        help=argparse.SUPPRESS,  # for benchmarks.opcua: 'updates <unix time> <count>' lines
    )
    p.add_argument("--stations", type=int, default=1, help="stations = unit ids 1..N")
    p.add_argument("--cycle-time", type=float, default=2.0, help="seconds per part")
    p.add_argument(
        "--handshake",
        action="store_true",
        help="hold each finished part until the agent writes data_taken (coil 3)",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print a matching agent config (YAML) and exit"
    )

    p = sub.add_parser("demo", help="simulator + agent + broker, with a live view of what flows")
    p.add_argument("--duration", type=float, default=30.0, help="seconds; 0 runs until Ctrl-C")
    p.add_argument("--stations", type=int, default=3)
    p.add_argument("--cycle-time", type=float, default=2.0)
    p.add_argument("--poll-interval", type=float, default=0.1)
    p.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        default="auto",
        help="auto: Mosquitto if installed, else the embedded amqtt broker",
    )

    p = sub.add_parser("device", help="commands to a running agent's devices")
    dsub = p.add_subparsers(dest="device_command", required=True)
    dp = dsub.add_parser(
        "command",
        help="send a device an operator command: a scale's zero or tare, a reader's trigger",
    )
    socket_options(dp)
    dp.add_argument("--device", required=True, help="device name from the config")
    dp.add_argument("name", metavar="COMMAND", help="zero, tare, trigger, ... (what it takes)")

    p = sub.add_parser("context", help="show or set a running agent's station context")
    csub = p.add_subparsers(dest="context_command", required=True)
    for name, help_ in (
        ("set", "set context keys of a station, e.g. work_order=WO-7 (empty value clears)"),
        ("show", "print every station's current context"),
    ):
        cp = csub.add_parser(name, help=help_)
        socket_options(cp)
        if name == "set":
            cp.add_argument("--station", required=True)
            cp.add_argument("assignments", nargs="+", metavar="KEY=VALUE")

    p = sub.add_parser(
        "status",
        help="a running agent's state: devices, journal, uplink, alarms "
        "(exit 3 while an alarm is active)",
    )
    socket_options(p)
    p.add_argument("--json", action="store_true", help="the whole status as JSON")

    p = sub.add_parser(
        "reload",
        help="make a running agent re-read its config file (same as SIGHUP); "
        "an invalid file is rejected and the running config kept",
    )
    socket_options(p)

    p = sub.add_parser("config", help="config tools: schema, probe, validate")
    gsub = p.add_subparsers(dest="config_command", required=True)
    gsub.add_parser("schema", help="print the JSON Schema of the config file (for editors)")
    gp = gsub.add_parser(
        "probe", help="connect to each device, read every point once, print what came back"
    )
    gp.add_argument("config", nargs="?", help=CONFIG_HELP)
    gp.add_argument("--device", help="probe only this device")
    gp.add_argument("--json", action="store_true", help="JSON instead of a table")
    gp = gsub.add_parser("validate", help="same as `edge-agent validate`")
    gp.add_argument("config", nargs="*", help=CONFIG_HELP)
    gp = gsub.add_parser(
        "browse",
        help="list what a device offers to read (OPC UA: the variables below a node), or "
        "print them as points: entries to paste into the config",
    )
    gp.add_argument("config", nargs="?", help=CONFIG_HELP)
    gp.add_argument("--device", required=True, help="the device to browse")
    gp.add_argument("--from", dest="start", help="start here (OPC UA: a NodeId, nsu= form)")
    gp.add_argument("--depth", type=int, default=6, help="levels to walk down (default 6)")
    gp.add_argument("--yaml", action="store_true", help="print points: entries for the config")

    from trace_store import cli as trace_store_cli  # the central store: trace-store, trace

    trace_store_cli.register(sub)

    p = sub.add_parser("buffer", help="journal tools (the agent must be stopped)")
    bsub = p.add_subparsers(dest="buffer_command", required=True)
    bp = bsub.add_parser(
        "salvage",
        help="copy the readable records of a damaged journal (set aside at start) into the "
        "live journal as new records; safe to run twice",
    )
    bp.add_argument("-c", "--config", help=CONFIG_HELP)
    bp.add_argument("damaged", help="the damaged journal, e.g. data/buffer.db.damaged-<time>")

    args = parser.parse_args(argv)
    _config_from_env(args, parser)
    setup_logging(args.log_level, args.log_format)
    if args.command == "buffer":
        return _salvage(args.config, args.damaged)
    if args.command in trace_store_cli.COMMANDS:
        return trace_store_cli.dispatch(args)
    if args.command == "context":
        return context_command(args)
    if args.command == "device":
        return device_command(args)
    if args.command == "status":
        return status_command(args)
    if args.command == "reload":
        return reload_command(args)
    if args.command == "config":
        return _config(args)
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "run":
        return _run(args.config)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "demo":
        from edge_agent.demo import run_demo

        return asyncio.run(
            run_demo(
                duration=args.duration,
                stations=args.stations,
                cycle_time=args.cycle_time,
                poll_interval=args.poll_interval,
                broker=args.broker,
            )
        )
    parser.error(f"unknown command {args.command}")
    return EXIT_CONFIG


def _config_from_env(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A command that needs a config file and was given none takes $EDGE_AGENT_CONFIG.
    (The control commands only look for their socket: :func:`_socket`.)"""
    takes = args.command in ("run", "validate", "buffer") or (
        args.command == "config" and args.config_command != "schema"
    )
    if not takes or args.config:
        return
    path = os.environ.get(CONFIG_ENV)
    if not path:
        what = "-c/--config" if args.command == "buffer" else "a config file"
        parser.error(f"give {what}, or set {CONFIG_ENV}")
    args.config = [path] if isinstance(args.config, list) else path


def _print_issues(exc: ConfigError) -> None:
    for issue in exc.issues:
        print(issue, file=sys.stderr)


def _salvage(config_path: str, damaged: str) -> int:
    """``edge-agent buffer salvage -c CONFIG DAMAGED``."""
    from buffer.salvage import EXIT_USAGE
    from buffer.salvage import main as salvage
    from edge_agent.config import load_config

    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_USAGE
    return salvage(cfg.buffer, config_path, damaged)


def _validate(paths: Sequence[str]) -> int:
    from edge_agent.config import load_config

    bad = 0
    for path in paths:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            bad += 1
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            print(f"{path}: {len(exc.issues)} problem(s)", file=sys.stderr)
        else:
            points = sum(len(d.point_names()) for d in cfg.devices)
            print(
                f"{path}: OK ({len(cfg.stations)} station(s), {len(cfg.devices)} device(s), "
                f"{points} point(s))"
            )
    return EXIT_CONFIG if bad else 0


def _config(args: argparse.Namespace) -> int:
    if args.config_command == "schema":
        from edge_agent.schema import schema_text

        sys.stdout.write(schema_text())
        return 0
    if args.config_command == "validate":
        return _validate(args.config)
    import json

    from edge_agent.config import load_config
    from edge_agent.probe import browse, exit_code, format_table, probe, to_json

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        _print_issues(exc)
        return EXIT_CONFIG
    if args.config_command == "browse":
        try:
            return asyncio.run(browse(cfg, args.device, args.start, args.depth, args.yaml))
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
    try:
        probes = asyncio.run(probe(cfg, args.device))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        print(json.dumps(to_json(probes), indent=2))
    else:
        print(format_table(probes))
    return exit_code(probes)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def _run(path: str) -> int:
    from edge_agent.config import load_config
    from edge_agent.daemon import Agent

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        _print_issues(exc)
        return EXIT_CONFIG

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        agent = Agent(cfg, config_path=path)
        reloads: set[asyncio.Task[object]] = set()

        def reload() -> None:
            task: asyncio.Task[object] = asyncio.create_task(agent.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
        await agent.run(stop)

    asyncio.run(main())
    return 0


async def _report_updates(server: Any, every: float) -> None:
    """The changes the OPC UA simulator has made so far, with the time: the OPC UA benchmark
    counts what was offered in a window against what arrived with source times in it."""
    import time

    while True:
        print(f"updates {time.time():.6f} {server.updates}", flush=True)
        await asyncio.sleep(every)


RTU_AGENT_END = "ttyAGENT"
"""The agent's end of ``simulate --rtu DIR``'s simulated line."""
RTU_SIMULATED_PARITY = "N"
"""Linux ptys drop the parity bit and refuse to be set again with one, so the simulated line
runs 8N1; a real RS-485 adapter runs the Modbus default 8E1."""


def _simulate(args: argparse.Namespace) -> int:
    from simulators.modbus_server import ModbusStationServer
    from simulators.scenario import demo_config, station_name
    from simulators.station import REGISTER_MAP, StationModel

    if args.print_config:
        import yaml

        cfg = demo_config(
            modbus_port=args.port,
            modbus_host=args.host,
            mqtt_port=1883,
            buffer_path="data/buffer.db",
            stations=args.stations,
            handshake=args.handshake,
            rtu_port=None if args.rtu is None else str(Path(args.rtu) / RTU_AGENT_END),
            opcua_endpoint=f"opc.tcp://{args.host}:{args.port}/" if args.opcua else None,
        )
        for device in cfg["devices"]:
            if args.rtu is not None:
                device["parity"] = RTU_SIMULATED_PARITY
        hs = " --handshake" if args.handshake else ""
        where = f"--rtu {args.rtu}" if args.rtu is not None else f"--port {args.port}"
        where += " --opcua" if args.opcua else ""
        print(f"# Agent config for `edge-agent simulate {where} --stations {args.stations}{hs}`")
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        return 0

    models = [
        StationModel(
            unit_id=i + 1,
            serial_prefix=f"S{i + 1}-",
            cycle_time=args.cycle_time,
            handshake=args.handshake,
        )
        for i in range(args.stations)
    ]

    if args.rtu is not None:
        Path(args.rtu).mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        async with contextlib.AsyncExitStack() as stack:
            names = ", ".join(station_name(i) for i in range(args.stations))
            if args.opcua:
                from simulators.opcua_server import OpcUaStationServer

                # asyncua's server logs every node and session at INFO.
                logging.getLogger("asyncua").setLevel(logging.WARNING)

                opcua = OpcUaStationServer(models, host=args.host, port=args.port)
                await stack.enter_async_context(opcua)
                if args.report_updates:
                    report = asyncio.create_task(_report_updates(opcua, args.report_updates))
                    stack.callback(report.cancel)
                where = f"on {opcua.endpoint} (ns={opcua.namespace_index}, {opcua.namespace_uri})"
            elif args.rtu is None:
                server = ModbusStationServer(models, host=args.host, port=args.port)
                await stack.enter_async_context(server)
                where = f"on {args.host}:{server.port}"
            else:
                from simulators.modbus_rtu_server import ModbusRtuStationServer
                from simulators.serial_link import NullModem

                line = NullModem(args.rtu, RTU_AGENT_END, "ttyPLC")
                await stack.enter_async_context(line)
                rtu = ModbusRtuStationServer(models, line.b_path, parity=RTU_SIMULATED_PARITY)
                await stack.enter_async_context(rtu)
                where = f"on the RS-485 line {line.a_path} (19200 baud 8N1)"
            print(f"simulated station PLC(s) {where}, unit ids 1..{args.stations} ({names})")
            if args.opcua:
                print(
                    "variables <station>.<point> for every point below, plus the booleans "
                    "running, cycle_complete, data_ready and data_taken (the only writable "
                    "one).  Ctrl-C to stop.",
                    flush=True,
                )
            print("holding registers (input registers mirror them):")
            for name, (addr, kind, order, count, unit, scale) in REGISTER_MAP.items():
                extra = f" x{scale}" if scale != 1.0 else ""
                print(f"  {addr:>3}  {name:<14} {kind:<8} {order} {count} reg {unit or ''}{extra}")
            print(
                "coils: 0 running, 1 cycle_complete, 2 data_ready, 3 data_taken (the only "
                "writable address).  Ctrl-C to stop.",
                flush=True,
            )
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
