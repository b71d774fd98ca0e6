"""``edge-agent simulate --config FILE [--scenario FILE] [--write-config FILE]``: every
device of an agent config simulated (``simulators.devicemap``), the overrides that point the
agent at them printed, optionally written into a copy of the config.

Everything printed on stdout is YAML: the overrides as data, the rest as comments, so a
script can read the output (``yaml.safe_load`` of everything up to the first blank line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from edge_agent.config import AgentConfig, load_config
from edge_agent.signals import stop_on_signals
from kernel.errors import ConfigError

if TYPE_CHECKING:  # imported when used: `edge-agent --help` need not load the simulators
    from simulators.devicemap import Happened, LoadedScenario, Simulation

EXIT_USAGE = 2
EXIT_STARTUP = 75
"""As the CLI's: the simulators could not start (a port in use, a folder not writable)."""


def simulate_map(args: argparse.Namespace) -> int:
    from simulators.devicemap import load_scenario

    refused = [
        o
        for o, given in (
            ("--rtu", args.rtu),
            ("--opcua", args.opcua),
            ("--print-config", args.print_config),
            ("--handshake", args.handshake),
        )
        if given
    ]
    if refused:
        print(
            f"simulate: {', '.join(refused)} is for the built-in stations, not --config",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        config = load_config(args.config)
        scenario: LoadedScenario | None = None
        if args.scenario:
            scenario = load_scenario(args.scenario, config)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return EXIT_USAGE
    # pymodbus' servers log every dropped connection; the devices' faults are what we show.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    pty_dir = Path(args.pty_dir) if args.pty_dir else Path(tempfile.mkdtemp(prefix="edge-sim-"))
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(_serve(args, config, scenario, pty_dir))
        return 0
    finally:
        if not args.pty_dir:
            shutil.rmtree(pty_dir, ignore_errors=True)


async def _serve(
    args: argparse.Namespace, config: AgentConfig, scenario: LoadedScenario | None, pty_dir: Path
) -> int:
    from simulators.devicemap import Simulation, write_config

    sim = Simulation(config, scenario, pty_dir=pty_dir, host=args.host, on_step=_print_step)
    try:
        await sim.start()
    except OSError as exc:
        print(f"simulate: cannot start the simulators: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    try:
        stop = asyncio.Event()
        stop_on_signals(stop)
        if args.write_config:
            try:
                write_config(args.config, sim.overrides, args.write_config)
            except (OSError, ConfigError) as exc:
                print(f"simulate: cannot write {args.write_config}: {exc}", file=sys.stderr)
                return EXIT_USAGE
        print(header(args, config, sim, scenario), end="", flush=True)
        waiters: list[asyncio.Task[Any]] = [
            asyncio.create_task(stop.wait(), name="simulate: signal")
        ]
        if scenario is not None:
            waiters.append(asyncio.create_task(sim.wait(), name="simulate: scenario end"))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        ended = "scenario finished" if sim.finished.is_set() else "stopped"
        print(f"# {ended} after {sim.world.now():.1f} s", flush=True)
        return 0
    finally:
        await sim.stop()


def _print_step(step: Happened) -> None:
    failed = f" FAILED: {step.error}" if step.error else ""
    print(f"# {step.t:8.3f} s  {step.device}: {step.what}{failed}", flush=True)


def header(
    args: argparse.Namespace,
    config: AgentConfig,
    sim: Simulation,
    scenario: LoadedScenario | None,
) -> str:
    """What runs where (as comments), then the overrides (as YAML data)."""
    served = len(config.devices) - len(sim.unsupported)
    until = "until Ctrl-C"
    if scenario is not None:
        until = f"for {scenario.scenario.duration:g} s (scenario {scenario.file})"
    lines = [
        f"# edge-agent simulate: {served} of {len(config.devices)} device(s) of "
        f"{args.config}, {until}"
    ]
    lines += [f"#   {line}" for line in sim.describe()]
    if args.write_config:
        lines.append(
            f"# the config pointed at them: {args.write_config} "
            f"(edge-agent run {args.write_config})"
        )
    lines.append("# the agent reaches the simulators with these keys per device:")
    body = yaml.safe_dump(
        {"overrides": sim.overrides}, default_flow_style=None, sort_keys=False, width=1000
    )
    return "\n".join(lines) + "\n" + body + "\n"
