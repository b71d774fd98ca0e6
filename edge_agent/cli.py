"""``edge-agent`` command line: the entry point, and the commands that run in this process
(run, validate, config, buffer salvage). The parser is ``edge_agent.cli_args``; the commands
that talk to a running agent are ``edge_agent.remote`` and ``edge_agent.tail_cli``;
``simulate`` is ``edge_agent.simulate_cmd``.

Errors a person must act on are one line on stderr and an exit status systemd's restart
policy can use, never a traceback: 2 for a config or usage error (restarting cannot help;
the units say ``RestartPreventExitStatus=2``), 75 (EX_TEMPFAIL) when the agent cannot start
now (a port or journal in use, a path it cannot write): systemd retries.
"""

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

from edge_agent.cli_args import build_parser, merge_config
from edge_agent.logs import setup_logging
from edge_agent.remote import (
    CONFIG_ENV,
    EXIT_CONFIG,
    context_command,
    device_command,
    gate_command,
    reload_command,
    status_command,
)
from edge_agent.signals import stop_on_signals
from kernel.errors import BufferError_, ConfigError, StartupError

log = logging.getLogger("edge_agent")

EXIT_STARTUP = 75
"""The agent cannot start now (sysexits' EX_TEMPFAIL): systemd's Restart=on-failure retries."""

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
    parser = build_parser(_Version)
    args = parser.parse_args(argv)
    merge_config(args, parser)
    _config_from_env(args, parser)
    setup_logging(args.log_level, args.log_format)
    try:
        return _dispatch(args, parser)
    except StartupError as exc:
        print(f"edge-agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command == "buffer":
        return _salvage(args.config, args.damaged)
    from trace_store import cli as trace_store_cli

    if args.command in trace_store_cli.COMMANDS:
        return trace_store_cli.dispatch(args)
    if args.command == "context":
        return context_command(args)
    if args.command == "device":
        return device_command(args)
    if args.command == "gate":
        return gate_command(args)
    if args.command == "status":
        return status_command(args)
    if args.command == "tail":
        from edge_agent.tail_cli import tail_command

        return tail_command(args)
    if args.command == "reload":
        return reload_command(args)
    if args.command == "config":
        return _config(args)
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "run":
        return _run(args.config)
    if args.command == "simulate":
        from edge_agent.simulate_cmd import simulate_command

        return simulate_command(args)
    if args.command == "test":
        from edge_agent.testing.command import test_command

        return test_command(args)
    if args.command == "demo":
        from edge_agent.demo import run_demo

        return asyncio.run(
            run_demo(
                duration=args.duration,
                stations=args.stations,
                cycle_time=args.cycle_time,
                poll_interval=args.poll_interval,
                broker=args.broker,
                dir=args.dir,
            )
        )
    parser.error(f"unknown command {args.command}")
    return EXIT_CONFIG


def _config_from_env(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A command that needs a config file and was given none takes $EDGE_AGENT_CONFIG.
    (The control commands only look for their socket: :func:`edge_agent.remote._socket`.)"""
    takes = args.command in ("run", "validate", "buffer") or (
        args.command == "config" and args.config_command not in ("schema", "init")
    )
    if not takes or args.config:
        return
    path = os.environ.get(CONFIG_ENV)
    if not path:
        parser.error(f"give a config file (-c FILE), or set {CONFIG_ENV}")
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
    if args.config_command == "init":
        return _init(args)
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


def _run(path: str) -> int:
    from edge_agent.config import load_config
    from edge_agent.daemon import Agent

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        _print_issues(exc)
        return EXIT_CONFIG

    outcome: list[bool] = []  # whether the agent got as far as running

    async def main() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        agent = Agent(cfg, config_path=path)
        reloads: set[asyncio.Task[object]] = set()

        def reload() -> None:
            task: asyncio.Task[object] = asyncio.create_task(agent.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
        try:
            await agent.run(stop)
        finally:
            outcome.append(agent.started.is_set())

    from edge_agent.control import ControlError

    try:
        asyncio.run(main())
    except (ControlError, StartupError) as exc:
        # Another agent on the same socket or journal, a port in use: one line, and a status
        # that makes systemd try again later.
        print(f"edge-agent: cannot start: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except BufferError_ as exc:
        if not any(outcome):
            print(
                f"edge-agent: cannot start: {exc} (buffer.path must be writable by this user)",
                file=sys.stderr,
            )
            return EXIT_STARTUP
        # The journal failed while running (already logged as CRITICAL with its cause); what
        # was committed is safe, and a restart reopens it.
        print(f"edge-agent: stopped: the journal failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _init(args: argparse.Namespace) -> int:
    """``edge-agent config init``: the starter config, printed or written with its schema."""
    from edge_agent.schema import schema_text
    from edge_agent.starter import SCHEMA_FILE, host_agent_id, init_text

    text = init_text(
        agent_id=args.id or host_agent_id(),
        site=args.site,
        line=args.line,
        service=args.service,
    )
    if not args.output:
        sys.stdout.write(text)
        return 0
    target = Path(args.output)
    if target.exists() and not args.force:
        print(f"{target} exists; give --force to overwrite it", file=sys.stderr)
        return 1
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        (target.parent / SCHEMA_FILE).write_text(schema_text())
    except OSError as exc:
        print(f"cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {target} and {target.parent / SCHEMA_FILE}")
    print(f"check it: edge-agent validate {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
