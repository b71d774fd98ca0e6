"""A whole line on one machine, for fault tests and the kill soak: simulated PLCs (Modbus, in
this process), a Mosquitto broker, the trace store and the agent as child processes, so that
each of them can be killed (SIGKILL) and restarted independently.

Everything is real: the agent runs ``edge-agent run`` with ``confirm: store``, the store runs
``edge-agent trace-store`` on SQLite. The checks read the two databases directly (read-only),
which both allow while they run (WAL).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simulators.broker import MosquittoBroker, free_port
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config, station_name
from simulators.station import StationModel

AGENT = "rig-pc1"
TRACE_KINDS = frozenset(
    {"context", "context_restored", "scan", "consumption", "part", "gap", "unobserved"}
)


@dataclass
class StoreView:
    """What the trace store holds for one agent, read from its database."""

    seqs: set[int] = field(default_factory=set)
    # Per station, the seqs of its trace records in the order the store first committed them.
    trace_order: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    parts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # counters
    watermark: int = 0


class LineRig:
    """PLC simulators + broker + trace store + agent, each startable and killable."""

    def __init__(
        self,
        workdir: Path,
        *,
        stations: int = 2,
        poll_interval: float = 0.02,
        cycle_time: float = 0.2,
        mqtt: dict[str, Any] | None = None,
        buffer: dict[str, Any] | None = None,
        log_level: str = "WARNING",
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.stations = stations
        self.models = [
            StationModel(
                unit_id=i + 1,
                serial_prefix=f"{chr(65 + i)}-",
                cycle_time=cycle_time,
                parts_per_lot=5,
                handshake=True,
            )
            for i in range(stations)
        ]
        self.plc = ModbusStationServer(self.models)
        self.broker = MosquittoBroker(port=free_port(), workdir=workdir / "broker")
        (workdir / "broker").mkdir(exist_ok=True)
        self.journal = workdir / "agent" / "buffer.db"
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self.store_db = workdir / "store" / "trace.db"
        self.store_db.parent.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "agent.yaml"
        self.poll_interval = poll_interval
        self._readings_counted = (0, 0)  # (last seq counted, values up to it): readings_committed
        self.mqtt_overrides = {
            "confirm": "store",
            "confirm_timeout": 2.0,
            "backoff_initial": 0.05,
            "backoff_max": 0.5,
            "connect_timeout": 2.0,
            **(mqtt or {}),
        }
        self.buffer_overrides = buffer or {}
        self.log_level = log_level
        self.agent: subprocess.Popen[bytes] | None = None
        self.store: subprocess.Popen[bytes] | None = None
        self.agent_kills = 0
        self.store_kills = 0
        self.broker_kills = 0
        self._logs: list[Any] = []

    # ---- lifecycle ------------------------------------------------------------------------

    async def start_plc(self) -> None:
        await self.plc.start()
        cfg = demo_config(
            modbus_port=self.plc.port,
            mqtt_port=self.broker.port,
            buffer_path=str(self.journal),
            stations=self.stations,
            poll_interval=self.poll_interval,
            agent_id=AGENT,
            handshake=True,
        )
        cfg["mqtt"].update(self.mqtt_overrides)
        cfg["buffer"].update(self.buffer_overrides)
        self.config_path.write_text(yaml.safe_dump(cfg))

    async def stop_plc(self) -> None:
        await self.plc.stop()

    async def start_broker(self) -> None:
        await self.broker.start()

    def kill_broker(self) -> None:
        self.broker.kill_sync()
        self.broker_kills += 1

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        self._logs.append(log)
        cmd = [sys.executable, "-m", "edge_agent.cli", "--log-level", self.log_level, *args]
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )

    def start_agent(self) -> None:
        assert self.agent is None, "agent already running"
        self.agent = self._spawn(["run", str(self.config_path)], "agent")

    def start_store(self) -> None:
        assert self.store is None, "store already running"
        self.store = self._spawn(
            [
                "trace-store",
                "--broker",
                f"127.0.0.1:{self.broker.port}",
                "--db",
                str(self.store_db),
                "--store-id",
                "rig",
                "--confirm-interval",
                "0.05",
            ],
            "store",
        )

    async def kill_agent(self) -> None:
        await _kill(self.agent)
        self.agent = None
        self.agent_kills += 1

    async def kill_store(self) -> None:
        await _kill(self.store)
        self.store = None
        self.store_kills += 1

    async def stop_agent(self, wait: float = 30.0) -> int:
        """SIGTERM and wait up to ``wait`` s; returns the exit status."""
        proc, self.agent = self.agent, None
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(proc.wait, wait)

    async def settle(self, within: float = 120.0) -> None:
        """Stop the PLCs, wait until the store has confirmed everything the agent committed
        (its journal empty, the watermark at its last seq), then stop the agent cleanly."""
        await self.stop_plc()
        await wait_until(
            lambda: (
                self.journal_state()[1] == 0 and self.store_watermark() >= self.journal_state()[0]
            ),
            within,
            "store confirms everything the agent committed",
        )
        assert await self.stop_agent() == 0, self.log_tail("agent")

    async def close(self) -> None:
        for proc in (self.agent, self.store):
            if proc is not None and proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        self.agent = self.store = None
        self.broker.close()
        await self.plc.stop()
        for log in self._logs:
            log.close()

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return f"(no {name} log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # ---- what the databases say -------------------------------------------------------------

    def journal_state(self) -> tuple[int, int]:
        """(last seq ever committed, rows still waiting) of the agent's journal."""
        if not self.journal.exists():
            return 0, 0
        try:
            with _readonly(self.journal) as db:
                row = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
                left = db.execute("SELECT count(*) FROM records").fetchone()[0]
        except sqlite3.OperationalError:  # the agent is creating it right now
            return 0, 0
        return (int(row[0]) if row else 0), int(left)

    def readings_committed(self) -> int:
        """Values (not records: a ``readings`` record holds a response) the agent's journal
        has taken so far, counted incrementally by seq, so polling this stays cheap as the
        journal grows; rows deleted after they were counted stay counted."""
        if not self.journal.exists():
            return 0
        after, total = self._readings_counted
        try:
            with _readonly(self.journal) as db:
                row = db.execute(
                    "SELECT max(seq), count(v.key) FROM records, json_each(records.body, "
                    "'$.values') AS v WHERE records.kind = 'readings' AND records.seq > ?",
                    (after,),
                ).fetchone()
        except sqlite3.OperationalError:  # the agent is creating it right now
            return total
        if row[0] is not None:
            self._readings_counted = (int(row[0]), total + int(row[1]))
        return self._readings_counted[1]

    def store_count(self) -> int:
        if not self.store_db.exists():
            return 0
        try:
            with _readonly(self.store_db) as db:
                return int(
                    db.execute("SELECT count(*) FROM records WHERE agent = ?", (AGENT,)).fetchone()[
                        0
                    ]
                )
        except sqlite3.OperationalError:  # the store has not created its tables yet
            return 0

    def store_watermark(self) -> int:
        if not self.store_db.exists():
            return 0
        try:
            with _readonly(self.store_db) as db:
                row = db.execute(
                    "SELECT watermark FROM agents WHERE agent = ?", (AGENT,)
                ).fetchone()
        except sqlite3.OperationalError:
            return 0
        return int(row[0]) if row else 0

    def store_view(self) -> StoreView:
        view = StoreView(watermark=self.store_watermark())
        with _readonly(self.store_db) as db:
            rows = db.execute(
                "SELECT seq, station, kind, body FROM records WHERE agent = ? ORDER BY rowid",
                (AGENT,),
            )
            for seq, station, kind, body in rows:
                view.seqs.add(int(seq))
                if kind in TRACE_KINDS:
                    view.trace_order[station].append(int(seq))
                if kind == "part":
                    view.parts[station].append(json.loads(body)["counter"])
        return view

    def station_names(self) -> list[str]:
        return [station_name(i) for i in range(self.stations)]


async def wait_until(
    predicate: Callable[[], bool],
    timeout: float,  # noqa: ASYNC109 - expiry becomes an error naming `what`
    what: str,
) -> None:
    """Poll ``predicate`` (cheap, or a quick read-only query) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:g} s")
        await asyncio.sleep(0.02)


async def wait_until_async(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float,  # noqa: ASYNC109 - expiry becomes an error naming `what`
    what: str,
    interval: float = 0.2,
) -> None:
    """Like ``wait_until`` for a condition that needs a round trip (e.g. the control socket)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout:g} s")
        await asyncio.sleep(interval)


async def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    assert proc is not None, "process was never started"
    assert proc.poll() is None, "process is not running"
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    assert proc.returncode == -signal.SIGKILL


class _readonly:
    """A read-only connection to a live WAL database, closed on exit."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)

    def __enter__(self) -> sqlite3.Connection:
        return self._db

    def __exit__(self, *exc: object) -> None:
        self._db.close()


def check_consistent(rig: LineRig, evicted_ok: bool = False) -> StoreView:
    """The fault tests' final check, after the agent stopped with its journal drained:

    - the store holds exactly the seqs the agent committed (1..last), none lost, and its
      watermark is the last one (every void seq was declared by a range);
    - per station, trace records were stored in seq order;
    - every handshake part is recorded exactly once (counters contiguous, none twice).
    With ``evicted_ok`` only telemetry may be missing (evicted under storage pressure).
    """
    last, left = rig.journal_state()
    view = rig.store_view()
    assert left == 0, f"{left} rows still in the journal"
    assert view.watermark == last, f"store watermark {view.watermark} != agent's last seq {last}"
    missing = set(range(1, last + 1)) - view.seqs
    if not evicted_ok:
        assert not missing, f"{len(missing)} committed records missing, e.g. {sorted(missing)[:5]}"
    assert view.seqs <= set(range(1, last + 1)), "the store holds seqs the agent never committed"
    for station, seqs in view.trace_order.items():
        assert seqs == sorted(seqs), f"trace records of {station} stored out of seq order"
    for station in rig.station_names():
        counters = view.parts.get(station, [])
        assert counters, f"no part records at {station}"
        assert len(counters) == len(set(counters)), f"a part recorded twice at {station}"
        assert sorted(counters) == list(range(min(counters), max(counters) + 1)), (
            f"a part missing at {station}"
        )
    return view
