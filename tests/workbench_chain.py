"""A trace store filled by the real agent chain, for the workbench's tests and screenshots:
simulated PLCs (Modbus) -> ``edge_agent`` (in-process, ``confirm: store``) -> Mosquitto ->
``TraceStore`` on SQLite.

Two stations, each holding every finished part until the agent has taken its data (the data
ready / data taken handshake): every part has its part record and its serial and lot, however
loaded the machine is, so what the tests count does not depend on timing.

- ST10 makes sub-assemblies ``A-…`` from material lots ``LA…`` (the station's context lot,
  six parts per lot: ``part ctx.lot`` genealogy);
- ST20 makes finished units ``B-…`` from lots ``LB…`` and consumes a sub-assembly as a
  component: a third PLC unit (the camera at ST20's infeed, on the clock) shows the labels
  ST10's parts carry, and a scan rule ``consume: {component, product}`` records the one read
  while a finished unit is current. Which ``A-`` goes into which ``B-`` depends on timing;
  the tests only rely on every edge pointing at a recorded serial.

Every 17th part of a station is NOK (final_force above its limit), so the recall list, the
Pareto and the control chart have something to show.

``python -m tests.workbench_chain DIR`` leaves ``DIR/trace.db`` (for
``python -m trace_store.web.screenshots``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

import yaml

from edge_agent.config import load_config
from edge_agent.daemon import Agent
from simulators.broker import MosquittoBroker, free_port
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config
from simulators.station import StationModel
from tests.waiting import wait_until
from trace_store.config import StoreConfig
from trace_store.service import TraceStore

AGENT = "wb-pc1"
CYCLE = 0.4
POLL = 0.025
COMPONENT_RULE = {
    "name": "sub_assembly",
    # The infeed camera reads the sub-assembly's GS1 label: GTIN, lot, serial A-...
    "regex": r"01(?P<gtin>\d{14})10(?P<lot>[^\x1d]*)\x1d21(?P<serial>A-\d+)",
    "consume": {"component": "serial", "product": "gtin"},
}


def query(db: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Rows of ``sql`` on the chain's store, read-only (the tests check pages against it)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def chain_config(modbus_port: int, mqtt_port: int, buffer: Path) -> dict[str, Any]:
    cfg = demo_config(
        modbus_port=modbus_port,
        mqtt_port=mqtt_port,
        buffer_path=str(buffer),
        stations=2,
        poll_interval=POLL,
        agent_id=AGENT,
        handshake=True,
    )
    cfg["agent"].update(site="plant-a", line="line-3")
    cfg["mqtt"].update(confirm="store", confirm_timeout=2.0, backoff_initial=0.05)
    feeder = {
        "name": "infeed20",
        "type": "modbus_tcp",
        "host": "127.0.0.1",
        "port": modbus_port,
        "unit_id": 3,
        "station": "ST20",
        "timeout": POLL,
        "poll_interval": POLL,
        "points": [p for p in cfg["devices"][0]["points"] if p["name"] == "part_label"],
    }
    cfg["devices"].append(feeder)
    st20 = cfg["stations"][1]
    st20["scans"]["sources"].append({"device": "infeed20", "point": "part_label"})
    st20["scans"]["rules"].insert(0, COMPONENT_RULE)
    return cfg


async def fill_store(folder: Path, parts: int = 36, within: float = 120.0) -> Path:
    """Run the chain until ST20 has recorded ``parts`` part records and the store confirmed
    everything; returns the store's database."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    db = folder / "trace.db"
    models = [
        # Handshake: each finished part waits for the agent's "data taken", so every part
        # has its record however loaded the machine is (no part missed between two polls).
        StationModel(
            unit_id=1, serial_prefix="A-", lot_prefix="LA", parts_per_lot=6, cycle_time=CYCLE,
            handshake=True,
        ),
        StationModel(
            unit_id=2, serial_prefix="B-", lot_prefix="LB", parts_per_lot=12, cycle_time=CYCLE,
            handshake=True,
        ),
        # ST20's infeed: ST10's serials one cycle late (first_serial 0, not 1).
        StationModel(
            unit_id=3, serial_prefix="A-", first_serial=0, lot_prefix="LA", parts_per_lot=6,
            cycle_time=CYCLE,
        ),
    ]  # fmt: skip
    broker = MosquittoBroker(port=free_port(), workdir=folder / "broker")
    (folder / "broker").mkdir(exist_ok=True)
    async with ModbusStationServer(models) as plc:
        await broker.start()
        try:
            path = folder / "agent.yaml"
            cfg_raw = chain_config(plc.port, broker.port, folder / "buffer.db")
            path.write_text(yaml.safe_dump(cfg_raw, sort_keys=False))
            cfg = await asyncio.to_thread(load_config, path)
            store = TraceStore(
                StoreConfig(
                    host="127.0.0.1", port=broker.port, db=str(db), store_id="wb",
                    confirm_interval=0.05,
                )
            )  # fmt: skip
            await asyncio.to_thread(store.start)
            try:
                await asyncio.to_thread(store.wait_ready, 10.0)
                stop = asyncio.Event()
                agent = Agent(cfg, config_path=path)
                task = asyncio.create_task(agent.run(stop), name="agent")
                try:
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + within
                    while _parts(agent, "ST20") < parts:
                        if task.done() or loop.time() > deadline:
                            raise RuntimeError(f"chain made {_parts(agent, 'ST20')} parts")
                        await asyncio.sleep(0.1)
                finally:
                    stop.set()
                    await task
                last = agent.buffer.committed_seq
                ok = await asyncio.to_thread(store.wait_watermark, AGENT, last, 30.0)
                if not ok:
                    raise RuntimeError(f"store did not confirm seq {last}")
                # The agent's "offline (stopped)" comes on its status topic, apart from the
                # records: the watermark does not say the store has written it yet.
                await wait_until(
                    lambda: query(str(db), "SELECT state FROM agent_status") == [("offline",)],
                    30,
                    "the store to write the agent's offline status",
                )
            finally:
                await asyncio.to_thread(store.stop)
        finally:
            await broker.stop()
            broker.close()
    return db


def _parts(agent: Agent, station: str) -> int:
    stats = agent.stats.stations.get(station)
    return stats.parts if stats is not None else 0


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "workbench-data")
    print(asyncio.run(fill_store(out, parts=int(sys.argv[2]) if len(sys.argv) > 2 else 36)))
