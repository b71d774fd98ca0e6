"""``edge-agent demo``: simulated PLCs -> agent -> broker -> a collector, with a live view.

Everything runs on loopback on free ports, with a fresh buffer in a temporary directory, so
the demo can be started on any machine after ``pip install`` and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from edge_agent.config import agent_model
from edge_agent.daemon import Agent
from simulators.broker import pick_broker
from simulators.consumer import RecordCollector
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config
from simulators.station import StationModel

if TYPE_CHECKING:
    from trace_store.service import TraceStore


async def run_demo(
    *,
    duration: float = 30.0,
    stations: int = 3,
    cycle_time: float = 2.0,
    poll_interval: float = 0.1,
    broker: str = "auto",
    out: TextIO = sys.stdout,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    models = [
        StationModel(unit_id=i + 1, serial_prefix=f"S{i + 1}-", cycle_time=cycle_time)
        for i in range(stations)
    ]
    mqtt_broker = pick_broker(broker)
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp:
        async with ModbusStationServer(models) as plc:
            await mqtt_broker.start()
            try:
                raw = demo_config(
                    modbus_port=plc.port,
                    mqtt_port=mqtt_broker.port,
                    buffer_path=str(Path(tmp) / "buffer.db"),
                    stations=stations,
                    poll_interval=poll_interval,
                )
                # With Mosquitto the whole chain runs: the reference trace store confirms
                # what it committed and the journal releases rows only then. (The embedded
                # fallback broker lacks the persistent sessions the store relies on.)
                store = (
                    _trace_store(mqtt_broker.port, Path(tmp) / "trace.db")
                    if mqtt_broker.name == "mosquitto"
                    else None
                )
                if store is not None:
                    raw["mqtt"]["confirm"] = "store"
                cfg = agent_model().model_validate(raw)
                collector = RecordCollector(mqtt_broker.host, mqtt_broker.port)
                await asyncio.to_thread(collector.start)
                if store is not None:
                    await asyncio.to_thread(store.start)
                    await asyncio.to_thread(store.wait_ready, 10.0)
                try:
                    print(
                        f"demo: {stations} simulated station(s) on Modbus 127.0.0.1:{plc.port}, "
                        f"broker {mqtt_broker.name} on 127.0.0.1:{mqtt_broker.port}, "
                        f"buffer {cfg.buffer.path}"
                        + (", trace store (SQLite) confirming end to end" if store else ""),
                        file=out,
                    )
                    print(
                        "Ctrl-C to stop."
                        if duration <= 0
                        else f"running {duration:.0f}s (Ctrl-C stops early).",
                        file=out,
                        flush=True,
                    )
                    agent = Agent(cfg)
                    agent_task = asyncio.create_task(agent.run(stop), name="agent")
                    view = asyncio.create_task(
                        _live_view(agent, collector, out, store), name="view"
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
                    status = _summary(agent, collector, out)
                    if store is not None:
                        await asyncio.to_thread(_recall, store, out)
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


def _trace_store(port: int, db: Path) -> TraceStore:
    from trace_store.config import StoreConfig
    from trace_store.service import TraceStore

    return TraceStore(
        StoreConfig(host="127.0.0.1", port=port, db=str(db), store_id="demo", confirm_interval=0.1)
    )


def _recall(store: TraceStore, out: TextIO, lot: str = "L00001") -> None:
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


RECALL_LINES = 12


async def _live_view(
    agent: Agent, collector: RecordCollector, out: TextIO, store: TraceStore | None = None
) -> None:
    await agent.started.wait()
    t0 = time.monotonic()
    last_records, last_values, last_t = 0, 0, t0
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        s = agent.snapshot()
        rate = (s["records"] - last_records) / (now - last_t)
        values = (s["observations"] - last_values) / (now - last_t)
        last_records, last_values, last_t = s["records"], s["observations"], now
        with collector.lock:
            delivered = len(collector.data.records)
            dups = collector.data.duplicates
        print(
            f"\n[{now - t0:5.1f}s] {values:6.0f} values/s in {rate:4.0f} records/s | "
            f"committed seq {s['committed_seq']} | "
            f"buffer depth {s['buffer_depth']} | at broker consumer {delivered} "
            f"(+{dups} duplicates dropped) | broker {'up' if s['sync']['connected'] else 'DOWN'}",
            file=out,
        )
        print(
            f"    part records {s['parts']} | gaps {s['gaps']} | rejected scans "
            f"{s['rejected_scans']}",
            file=out,
        )
        if store is not None:
            print(
                f"    trace store: committed up to seq {store.watermark(agent.cfg.agent.id)} "
                f"({store.stats()['records']} records stored)",
                file=out,
            )
        for station, ctx in s["stations"].items():
            mine = [d.name for d in agent.cfg.devices if d.station == station]
            devs = ", ".join(f"{name}:{s['devices'][name]}" for name in mine)
            print(
                f"    {station:<6} serial {ctx.get('serial')!s:<14} lot {ctx.get('lot')!s:<8} "
                f"[{devs}]",
                file=out,
            )
        out.flush()


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
