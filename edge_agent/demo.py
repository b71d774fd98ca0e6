"""``edge-agent demo``: simulated PLCs -> agent -> broker -> trace store, with a live view.

Everything runs on loopback on free ports. The demo's files stay in a folder of their own
(``--dir``, default ``./edge-agent-demo-<UTC time>``): the config it ran (``demo.yaml``), the
agent's journal and, with Mosquitto, the trace store's database. So the commands it prints at
the end (``edge-agent trace lot ... --db``, ``edge-agent validate``) can be run afterwards,
and ``edge-agent status`` / ``edge-agent tail -c <dir>/demo.yaml`` while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from edge_agent.config import load_config
from edge_agent.daemon import Agent
from edge_agent.demo_view import LiveState
from simulators.broker import pick_broker
from simulators.consumer import RecordCollector
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config
from simulators.station import StationModel

if TYPE_CHECKING:
    from trace_store.service import TraceStore

CONFIG_NAME = "demo.yaml"
FIRST_LOT = "L00001"
RECALL_LINES = 12
REDRAW_EVERY = 0.5  # seconds, on a terminal
LINE_EVERY = 5.0  # seconds, elsewhere
SOCKET_PATH_MAX = 100  # AF_UNIX paths end at 107 bytes


def default_dir() -> Path:
    return Path(f"edge-agent-demo-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")


def _shown(path: Path) -> str:
    """A path as a command line should hold it: relative to here when below here."""
    try:
        text = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        text = str(path.resolve())
    return shlex.quote(text)


async def run_demo(
    *,
    duration: float = 30.0,
    stations: int = 3,
    cycle_time: float = 2.0,
    poll_interval: float = 0.1,
    broker: str = "auto",
    out: TextIO = sys.stdout,
    dir: str | Path | None = None,  # named as the CLI option --dir
) -> int:
    folder = Path(dir) if dir is not None else default_dir()
    if folder.exists() and any(folder.iterdir()):
        print(f"demo: {folder} is not empty; give --dir a new or empty folder", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _run(stop, folder, duration, stations, cycle_time, poll_interval, broker, out)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if not any(folder.iterdir()):  # it failed before writing anything: nothing to keep
            folder.rmdir()


async def _run(
    stop: asyncio.Event,
    folder: Path,
    duration: float,
    stations: int,
    cycle_time: float,
    poll_interval: float,
    broker: str,
    out: TextIO,
) -> int:
    models = [
        StationModel(unit_id=i + 1, serial_prefix=f"S{i + 1}-", cycle_time=cycle_time)
        for i in range(stations)
    ]
    mqtt_broker = pick_broker(broker)
    async with ModbusStationServer(models) as plc:
        await mqtt_broker.start()
        try:
            # With Mosquitto the whole chain runs: the reference trace store confirms what it
            # committed and the journal releases rows only then. (The embedded fallback broker
            # lacks the persistent sessions the store relies on.)
            with_store = mqtt_broker.name == "mosquitto"
            config = _write_config(
                folder,
                demo_config(
                    modbus_port=plc.port,
                    mqtt_port=mqtt_broker.port,
                    buffer_path="buffer.db",  # relative: from the config file's folder
                    stations=stations,
                    poll_interval=poll_interval,
                ),
                with_store,
            )
            cfg = await asyncio.to_thread(load_config, config)  # exactly what the file says
            store = _trace_store(mqtt_broker.port, folder / "trace.db") if with_store else None
            collector = RecordCollector(mqtt_broker.host, mqtt_broker.port)
            await asyncio.to_thread(collector.start)
            if store is not None:
                await asyncio.to_thread(store.start)
                await asyncio.to_thread(store.wait_ready, 10.0)
            try:
                _intro(out, stations, plc.port, mqtt_broker, store, folder, config, duration)
                agent = Agent(cfg, config_path=config)
                agent_task = asyncio.create_task(agent.run(stop), name="agent")
                state = LiveState(cfg.agent.id, with_store=store is not None)
                view = asyncio.create_task(
                    _live_view(agent, state, collector, store, out), name="view"
                )
                if duration > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), duration)
                else:
                    await stop.wait()
                stop.set()
                await agent_task
                view.cancel()
                await asyncio.gather(view, return_exceptions=True)
                # Whatever was committed and delivered must be at the collector.
                await asyncio.to_thread(
                    collector.wait_for,
                    lambda d: (
                        d.max_seq.get(cfg.agent.id, 0)
                        >= agent.buffer.committed_seq - agent.buffer.depth
                    ),
                    5.0,
                )
                if not out.isatty():  # a terminal still shows the table
                    _update(state, agent, collector, store)
                    state.uplink = "stopped"
                    print(state.compact(), file=out)
                status = _summary(agent, collector, out)
                if store is not None:
                    await asyncio.to_thread(_recall, store, out)
                _afterwards(out, agent, folder, config, store is not None)
                return status
            finally:
                await asyncio.to_thread(collector.stop)
                if store is not None:
                    await asyncio.to_thread(store.stop)
        finally:
            await mqtt_broker.stop()
            close = getattr(mqtt_broker, "close", None)
            if close is not None:
                close()


def _write_config(folder: Path, raw: dict[str, Any], with_store: bool) -> Path:
    """Write the demo's config into its folder and return the file."""
    if with_store:
        raw["mqtt"]["confirm"] = "store"
    socket = Path(os.path.abspath(folder)) / "control.sock"
    if len(str(socket)) > SOCKET_PATH_MAX:  # a deep folder: the socket goes to the temp dir
        socket = Path(tempfile.gettempdir()) / f"{folder.name[:60]}.sock"
        raw["control"]["socket"] = str(socket)
    else:
        raw["control"]["socket"] = "control.sock"
    path = folder / CONFIG_NAME
    header = (
        "# The config `edge-agent demo` ran. Its simulator and broker ports were free only\n"
        "# while the demo ran; `edge-agent validate` still checks it.\n"
    )
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    return path


def _intro(
    out: TextIO,
    stations: int,
    plc_port: int,
    mqtt_broker: Any,
    store: TraceStore | None,
    folder: Path,
    config: Path,
    duration: float,
) -> None:
    print(
        f"demo: {stations} simulated station(s) on Modbus 127.0.0.1:{plc_port}, "
        f"broker {mqtt_broker.name} on 127.0.0.1:{mqtt_broker.port}"
        + (", trace store (SQLite) confirming end to end" if store else ""),
        file=out,
    )
    print(f"folder {_shown(folder)} (kept): config, journal, trace store", file=out)
    print("while it runs, in another terminal:", file=out)
    print(f"    edge-agent status -c {_shown(config)}", file=out)
    print(f"    edge-agent tail -c {_shown(config)} --kind part", file=out)
    print(
        "Ctrl-C to stop." if duration <= 0 else f"running {duration:.0f}s (Ctrl-C stops early).",
        file=out,
        flush=True,
    )


def _trace_store(port: int, db: Path) -> TraceStore:
    from trace_store.config import StoreConfig
    from trace_store.service import TraceStore

    return TraceStore(
        StoreConfig(host="127.0.0.1", port=port, db=str(db), store_id="demo", confirm_interval=0.1)
    )


def _recall(store: TraceStore, out: TextIO, lot: str = FIRST_LOT) -> None:
    """What the store answers in a recall: every serial that got the demo's first lot."""
    from trace_store.queries import trace_lot
    from trace_store.report import render
    from trace_store.storage import open_storage

    with open_storage(store.config.db, read_only=True) as storage:
        lines = render(trace_lot(storage, lot), "table").splitlines()
    print(f"\nrecall, as `edge-agent trace lot {lot}` answers it from the trace store:", file=out)
    for line in lines[:RECALL_LINES]:
        print(f"    {line}", file=out)
    if len(lines) > RECALL_LINES:
        print(f"    ... {len(lines) - RECALL_LINES} more line(s)", file=out)
    out.flush()


def _afterwards(out: TextIO, agent: Agent, folder: Path, config: Path, with_store: bool) -> None:
    """The commands that query what the demo left behind."""
    print(f"\nThe demo's folder is kept: {_shown(folder)}. To query it:", file=out)
    if with_store:
        db = _shown(folder / "trace.db")
        print(f"    edge-agent trace lot {FIRST_LOT} --db {db}", file=out)
        last = next(
            (s.last_part for s in agent.stats.stations.values() if s.last_part is not None), None
        )
        if last is not None and last.serial:
            print(f"    edge-agent trace serial {shlex.quote(last.serial)} --db {db}", file=out)
    else:
        print("    (the trace store runs with Mosquitto only: apt-get install mosquitto)", file=out)
    print(f"    edge-agent validate {_shown(config)}", file=out, flush=True)


def _update(
    state: LiveState, agent: Agent, collector: RecordCollector, store: TraceStore | None
) -> None:
    with collector.lock:
        at_broker = len(collector.data.records)
        broker_seq = collector.data.max_seq.get(agent.cfg.agent.id, 0)
    store_seq = store.watermark(agent.cfg.agent.id) if store is not None else None
    state.refresh(agent.snapshot(), at_broker, broker_seq, store_seq)


async def _follow(agent: Agent, state: LiveState) -> None:
    """Feed the view with the agent's committed readings and parts."""
    async for batch in agent.tail.subscribe(kinds=["readings", "part"]).batches():
        state.feed(batch)


async def _live_view(
    agent: Agent,
    state: LiveState,
    collector: RecordCollector,
    store: TraceStore | None,
    out: TextIO,
) -> None:
    await agent.started.wait()
    follow = asyncio.create_task(_follow(agent, state), name="view-follow")
    try:
        if out.isatty():
            try:
                await _redraw(agent, state, collector, store, out)
                return
            except ImportError:
                print("(pip install rich for a live table; compact lines instead)", file=out)
        while True:
            await asyncio.sleep(LINE_EVERY)
            _update(state, agent, collector, store)
            print(state.compact(), file=out, flush=True)
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)


async def _redraw(
    agent: Agent,
    state: LiveState,
    collector: RecordCollector,
    store: TraceStore | None,
    out: TextIO,
) -> None:
    """The table, redrawn in place; log lines scroll above it."""
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    stderr = sys.stderr
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is stderr
    ]
    _update(state, agent, collector, store)
    with Live(state.table(), console=console, auto_refresh=False, transient=False) as live:
        # Live puts a proxy in sys.stderr that prints above the table; the log goes there too.
        streams = [h.setStream(sys.stderr) for h in handlers]
        try:
            while True:
                await asyncio.sleep(REDRAW_EVERY)
                _update(state, agent, collector, store)
                live.update(state.table(), refresh=True)
        finally:
            for h, stream in zip(handlers, streams, strict=True):
                if stream is not None:
                    h.setStream(stream)


def _summary(agent: Agent, collector: RecordCollector, out: TextIO) -> int:
    agent_id = agent.cfg.agent.id
    seqs = collector.seqs(agent_id)
    delivered_upto = agent.buffer.committed_seq - agent.buffer.depth
    expected = set(range(1, delivered_upto + 1))
    missing = expected - set(seqs)
    print(
        f"\nsummary: {agent.stats.records} records bound and committed "
        f"(seq 1..{agent.buffer.committed_seq}); "
        f"{len(seqs)} unique records at the consumer; {agent.buffer.depth} still buffered; "
        f"{collector.data.duplicates} duplicates dropped; "
        f"{agent.stats.parts} part records; "
        + ("nothing lost." if not missing else f"{len(missing)} MISSING!"),
        file=out,
        flush=True,
    )
    return 0 if not missing else 1
