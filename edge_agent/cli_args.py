"""``edge-agent``'s argument parser: every command, option and help text.

Habits the parser keeps for people who script it:
- global options (``--log-level``, ``--log-format``) work before or after the command;
- every command that reads a config file takes it as ``-c/--config FILE`` (or positionally,
  as before), else from ``$EDGE_AGENT_CONFIG``;
- every option has a help text (a test walks the parser to keep it so).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from typing import Any

from edge_agent.logs import FORMATS, LEVELS
from edge_agent.remote import CONFIG_ENV, socket_options

CONFIG_HELP = f"the agent's config file (default: ${CONFIG_ENV})"
GLOBAL_DEFAULTS = {"log_level": "INFO", "log_format": "auto"}


def _level(text: str) -> str:
    level = text.upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(LEVELS)}")
    return level


def _global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes. Below the top they default to SUPPRESS, so a value
    given after the command overrides the top's default and one given before survives."""

    def default(name: str) -> Any:
        return GLOBAL_DEFAULTS[name] if top else argparse.SUPPRESS

    p.add_argument(
        "--log-level",
        type=_level,
        default=default("log_level"),
        metavar="LEVEL",
        help=f"{', '.join(LEVELS)} (default INFO)",
    )
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default=default("log_format"),
        help="auto (default): journal under systemd, else text; text: UTC time with "
        "milliseconds; journal: syslog priority prefixes, no time; json: one object per line",
    )


def config_arguments(p: argparse.ArgumentParser, *, many: bool = False) -> None:
    """``-c/--config FILE`` and the positional form; ``many`` for ``validate``."""
    if many:
        p.add_argument(
            "-c",
            "--config",
            action="append",
            dest="config_opt",
            metavar="FILE",
            help=f"a config file to check (repeatable; default: ${CONFIG_ENV})",
        )
        p.add_argument("config", nargs="*", metavar="FILE", help="config files to check")
    else:
        p.add_argument("-c", "--config", dest="config_opt", metavar="FILE", help=CONFIG_HELP)
        p.add_argument(
            "config", nargs="?", metavar="FILE", help="the config file (same as -c FILE)"
        )


def subparsers_of(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below ``p``, depth first."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield child
                yield from subparsers_of(child)


def build_parser(version_action: type[argparse.Action]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Line-side traceability agent: PLC values bound to serials and lots, "
        "buffered in SQLite, forwarded over MQTT.",
        epilog=f"Commands that take a config file read ${CONFIG_ENV} when none is given. "
        "Relative paths in a config file are taken from the file's folder. Exit status: 0 ok, "
        "1 failure, 2 usage or config error, 3 an alarm is active (status), 75 the agent "
        "could not start (port or journal in use, path not writable).",
    )
    parser.add_argument(
        "--version",
        action=version_action,
        default=argparse.SUPPRESS,
        help="print the version, Python's and the optional modules installed, and exit",
    )
    _global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the agent with a config file")
    config_arguments(p)

    p = sub.add_parser("validate", help="check config files; exit 2 listing every problem")
    config_arguments(p, many=True)

    _simulate(sub)
    _test(sub)
    _demo(sub)
    _device(sub)
    _context(sub)
    _gate(sub)

    p = sub.add_parser(
        "status",
        help="a running agent's state: stations, devices, journal, uplink, alarms "
        "(exit 3 while an alarm is active)",
    )
    socket_options(p)
    p.add_argument("--json", action="store_true", help="the whole status as JSON")

    from edge_agent.tail_cli import add_tail_arguments

    p = sub.add_parser(
        "tail", help="follow a running agent's records as they are committed (Ctrl-C stops)"
    )
    add_tail_arguments(p)

    p = sub.add_parser(
        "reload",
        help="make a running agent re-read its config file (same as SIGHUP); "
        "an invalid file is rejected and the running config kept",
    )
    socket_options(p)

    _config(sub)

    from trace_store import cli as trace_store_cli  # the central store: trace-store, trace

    trace_store_cli.register(sub)

    p = sub.add_parser("buffer", help="journal tools (the agent must be stopped)")
    bsub = p.add_subparsers(dest="buffer_command", required=True, metavar="COMMAND")
    bp = bsub.add_parser(
        "salvage",
        help="copy the readable records of a damaged journal (set aside at start) into the "
        "live journal as new records; safe to run twice",
    )
    bp.add_argument("-c", "--config", dest="config_opt", metavar="FILE", help=CONFIG_HELP)
    bp.add_argument("damaged", help="the damaged journal, e.g. data/buffer.db.damaged-<time>")
    bp.set_defaults(config=None)

    for child in subparsers_of(parser):
        _global_options(child, top=False)
    return parser


def _simulate(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="run simulated devices: every device of a config's device map (--config, "
        "docs/simulate.md), or the built-in station PLCs (Modbus TCP; Modbus RTU with --rtu; "
        "OPC UA with --opcua)",
    )
    p.add_argument(
        "-c",
        "--config",
        dest="config_opt",
        metavar="FILE",
        help="simulate every device this agent config reads, at its addresses, types and word "
        "orders (TCP servers on --host with free ports, serial ports as pty pairs); prints the "
        "overrides (host, port, port path per device) that point the agent at them",
    )
    p.add_argument(
        "--scenario",
        metavar="FILE",
        help="with --config: what the devices show and do (values, part cycles, faults, scans, "
        "loads at given moments); simulate ends after its duration. Without one the devices "
        "hold zeros (and what the agent writes) until Ctrl-C",
    )
    p.add_argument(
        "--write-config",
        metavar="FILE",
        help="with --config: also write the config with the overrides applied to FILE, so "
        "`edge-agent run FILE` connects to the simulators",
    )
    p.add_argument(
        "--pty-dir",
        metavar="DIR",
        help="with --config: folder for the simulated serial ports (default: a new temporary "
        "folder, removed at the end)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5020, help="TCP port to listen on (default 5020)")
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
    p.add_argument("--stations", type=int, default=1, help="stations = unit ids 1..N (default 1)")
    p.add_argument(
        "--cycle-time", type=float, default=2.0, help="seconds per part (default 2.0)"
    )
    p.add_argument(
        "--handshake",
        action="store_true",
        help="hold each finished part until the agent writes data_taken (coil 3)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print a matching agent config (YAML, with templates) and exit",
    )


def _test(sub: Any) -> None:
    p = sub.add_parser(
        "test",
        help="run config test cases: each case's device map against simulated devices, the "
        "real agent and a broker, its expected records checked (docs/testing-configs.md); "
        "exit 0 all passed, 1 a case failed, 2 a case file has mistakes",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="case folders (holding case.yaml), *.case.yaml files, or folders searched for them",
    )
    p.add_argument(
        "-k",
        dest="keyword",
        action="append",
        metavar="TEXT",
        help="run only the cases whose name holds TEXT (repeatable: any of them)",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        metavar="N",
        help="cases run at the same time (default: the number of CPUs); each has its own "
        "ports, serial ports, journal and topics",
    )
    p.add_argument(
        "--junit-xml",
        metavar="FILE",
        help="also write the results as JUnit XML, for the pipeline's test view",
    )
    p.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        default="auto",
        help="the MQTT broker the agents publish to: auto (default) Mosquitto if installed, "
        "else the embedded amqtt broker (pip install 'edge-agent[demo]')",
    )
    p.add_argument("--list", action="store_true", help="list the cases found and exit")
    p.add_argument(
        "--schema",
        nargs="?",
        const="case",
        choices=("case", "scenario"),
        metavar="KIND",
        help="print the JSON Schema of case files (KIND case, the default) or of scenario "
        "files (KIND scenario), for editors, and exit",
    )


def _demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="simulator + agent + broker, with a live view of what flows")
    p.add_argument(
        "--duration", type=float, default=30.0, help="seconds (default 30); 0 runs until Ctrl-C"
    )
    p.add_argument("--stations", type=int, default=3, help="simulated stations (default 3)")
    p.add_argument(
        "--cycle-time", type=float, default=2.0, help="seconds per part (default 2.0)"
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=0.1,
        help="seconds between two reads of a PLC (default 0.1)",
    )
    p.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        default="auto",
        help="auto: Mosquitto if installed, else the embedded amqtt broker",
    )
    p.add_argument(
        "--dir",
        metavar="DIR",
        help="keep the demo's journal, trace store and config here (default "
        "./edge-agent-demo-<UTC time>)",
    )


def _device(sub: Any) -> None:
    p = sub.add_parser("device", help="commands to a running agent's devices")
    dsub = p.add_subparsers(dest="device_command", required=True, metavar="COMMAND")
    dp = dsub.add_parser(
        "command",
        help="send a device an operator command: a scale's zero or tare, a reader's trigger",
    )
    socket_options(dp)
    dp.add_argument("--device", required=True, help="device name from the config")
    dp.add_argument("name", metavar="COMMAND", help="zero, tare, trigger, ... (what it takes)")


def _context(sub: Any) -> None:
    p = sub.add_parser("context", help="show or set a running agent's station context")
    csub = p.add_subparsers(dest="context_command", required=True, metavar="COMMAND")
    for name, help_ in (
        ("set", "set context keys of a station, e.g. work_order=WO-7 (empty value clears)"),
        ("show", "print every station's current context"),
    ):
        cp = csub.add_parser(name, help=help_)
        socket_options(cp)
        if name == "set":
            cp.add_argument("--station", required=True, help="station name from the config")
            cp.add_argument(
                "assignments",
                nargs="+",
                metavar="KEY=VALUE",
                help="context keys to set (KEY= clears one), committed before the answer",
            )


def _gate(sub: Any) -> None:
    p = sub.add_parser("gate", help="a running agent's station gate (docs/gate.md)")
    gsub = p.add_subparsers(dest="gate_command", required=True, metavar="COMMAND")
    gp = gsub.add_parser(
        "release",
        help="lower a station's interlock now (the refused part is out), recorded as a gate "
        "record with your user name; the next scan the gate lets through does it too",
    )
    socket_options(gp)
    gp.add_argument("--station", required=True, help="station name from the config")


def _config(sub: Any) -> None:
    p = sub.add_parser("config", help="config tools: init, schema, validate, probe, browse")
    gsub = p.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    gp = gsub.add_parser(
        "init",
        help="write a commented starter config (templates, $schema line, an agent id from the "
        "host name) and the JSON Schema beside it",
    )
    gp.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the config here (and edge-agent.schema.json beside it); default: print it",
    )
    gp.add_argument("--id", help="the agent id (default: from the host name)")
    gp.add_argument("--site", default="plant", help="plant or site code (default plant)")
    gp.add_argument("--line", default="line1", help="production line (default line1)")
    gp.add_argument(
        "--service",
        action="store_true",
        help="paths for the systemd unit: journal in /var/lib/edge-agent, socket in "
        "/run/edge-agent, metrics on",
    )
    gp.add_argument("--force", action="store_true", help="overwrite an existing file")
    gsub.add_parser("schema", help="print the JSON Schema of the config file (for editors)")
    gp = gsub.add_parser(
        "probe", help="connect to each device, read every point once, print what came back"
    )
    config_arguments(gp)
    gp.add_argument("--device", help="probe only this device")
    gp.add_argument("--json", action="store_true", help="JSON instead of a table")
    gp = gsub.add_parser("validate", help="same as `edge-agent validate`")
    config_arguments(gp, many=True)
    gp = gsub.add_parser(
        "browse",
        help="list what a device offers to read (OPC UA: the variables below a node), or "
        "print them as points: entries to paste into the config",
    )
    config_arguments(gp)
    gp.add_argument("--device", required=True, help="the device to browse")
    gp.add_argument("--from", dest="start", help="start here (OPC UA: a NodeId, nsu= form)")
    gp.add_argument("--depth", type=int, default=6, help="levels to walk down (default 6)")
    gp.add_argument("--yaml", action="store_true", help="print points: entries for the config")


def merge_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fold ``-c FILE`` and the positional form into ``args.config``: a list for
    ``validate``, one path (or None) otherwise. Both forms naming different files is an
    error, not a silent choice."""
    if not hasattr(args, "config_opt"):
        return
    opt = args.config_opt
    pos = getattr(args, "config", None)
    if isinstance(pos, list) or isinstance(opt, list):
        args.config = [*(pos or []), *(opt or [])]
    elif opt and pos and opt != pos:
        parser.error(f"two config files given: {pos} and -c {opt}")
    else:
        args.config = opt or pos


def help_gaps(parser: argparse.ArgumentParser) -> list[str]:
    """Options and arguments without a help text (for the test that keeps there none)."""
    gaps = []
    for p in [parser, *subparsers_of(parser)]:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not action.help:
                gaps.append(f"{p.prog}: {'/'.join(action.option_strings) or action.dest}")
    return gaps


def commands(parser: argparse.ArgumentParser) -> Sequence[str]:
    """Every command's full name (``config probe``), for tests and docs."""
    return [p.prog.removeprefix("edge-agent ") for p in subparsers_of(parser)]
