"""``edge-agent simulate``: with ``--config``, every device of an agent config's device map
(``simulators.devicemap``, docs/simulate.md); otherwise simulated station PLCs (Modbus TCP,
Modbus RTU on a pty pair, OPC UA) serving the register map of ``simulators.station``, or with
``--print-config`` the agent config that reads them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

from edge_agent.signals import stop_on_signals


async def _report_updates(server: Any, every: float) -> None:
    """The changes the OPC UA simulator has made so far, with the time: the OPC UA benchmark
    counts what was offered in a window against what arrived with source times in it."""
    import time

    while True:
        print(f"updates {time.time():.6f} {server.updates}", flush=True)
        await asyncio.sleep(every)


EXIT_USAGE = 2
"""A usage or config error (as ``edge-agent validate``)."""

RTU_AGENT_END = "ttyAGENT"
"""The agent's end of ``simulate --rtu DIR``'s simulated line."""
RTU_SIMULATED_PARITY = "N"
"""Linux ptys drop the parity bit and refuse to be set again with one, so the simulated line
runs 8N1; a real RS-485 adapter runs the Modbus default 8E1."""


def simulate_command(args: argparse.Namespace) -> int:
    if getattr(args, "config", None):
        from edge_agent.simulate_map import simulate_map

        return simulate_map(args)
    if args.scenario or args.write_config or args.pty_dir:
        print(
            "simulate: --scenario, --write-config and --pty-dir go with --config FILE",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from simulators.modbus_server import ModbusStationServer
    from simulators.scenario import station_name
    from simulators.station import REGISTER_MAP, StationModel

    if args.print_config:
        print(print_config(args), end="")
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
        stop_on_signals(stop)
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


def print_config(args: argparse.Namespace) -> str:
    """The agent config that reads ``simulate``'s stations with these options: what the
    stations share as templates, the default control socket, an id from the host name."""
    from edge_agent.starter import dump, host_agent_id, templated
    from simulators.scenario import demo_config

    cfg = demo_config(
        modbus_port=args.port,
        modbus_host=args.host,
        mqtt_port=1883,
        buffer_path="data/buffer.db",
        stations=args.stations,
        handshake=args.handshake,
        rtu_port=None if args.rtu is None else str(Path(args.rtu) / RTU_AGENT_END),
        opcua_endpoint=f"opc.tcp://{args.host}:{args.port}/" if args.opcua else None,
        agent_id=host_agent_id(),
    )
    del cfg["control"]  # demo_config puts it beside the buffer; a person keeps the default
    for device in cfg["devices"]:
        if args.rtu is not None:
            device["parity"] = RTU_SIMULATED_PARITY
    hs = " --handshake" if args.handshake else ""
    where = f"--rtu {args.rtu}" if args.rtu is not None else f"--port {args.port}"
    where += " --opcua" if args.opcua else ""
    header = (
        f"Agent config for `edge-agent simulate {where} --stations {args.stations}{hs}`.\n"
        "Check it: edge-agent validate FILE; run it: edge-agent run FILE.\n"
        "The schema line needs `edge-agent config schema > edge-agent.schema.json` beside it."
    )
    return dump(templated(cfg), header)
