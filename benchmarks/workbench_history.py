"""A plant-scale history for the workbench benchmark (``benchmarks.workbench_scale``), written
straight into the trace store's tables: no MQTT, no envelope checks, so a year of a line
(25 million records) loads in minutes rather than days.

The line: 10 stations, one agent each (``line1-st01`` ...), a unit every ``CYCLE_S`` seconds
at every station, around the clock. Genealogy two levels deep:

- ST01..ST04 make the sub-assembly ``SA<n>``; ST01 runs with material lot ``LA<k>`` in its
  station context (``part ctx.lot`` edges), a new lot every ``LOT_A_UNITS`` units;
- ST05 scans the final unit's label ``FG<n>`` and consumes ``SA<n>`` as a component;
  ST06 consumes material lot ``LB<k>`` (a new one every ``LOT_B_UNITS`` units); ST07..ST10
  finish ``FG<n>``.

So a recall of an ``LA`` lot lists ``LOT_A_UNITS`` sub-assemblies and as many finished units
(10,000 serials), one of an ``LB`` lot ``LOT_B_UNITS`` finished units. Per unit and station:
one ``readings`` record (a device poll during the cycle, serial from the context) and one
``part`` record with two values and their limits; ST01 and ST05 add a ``scan``, ST05 and ST06
a ``consumption``: 24 records per unit. About 2 % of parts are NOK (a value outside its
limits) and are reworked: a second part record, ``repeat`` 1, ten seconds later.

The schema is the store's own (``open_storage`` creates it); rows go in through its column
lists (``RECORD_COLUMNS``; the part facts table's rows, ``parts.COLUMNS``, as the store's
ingest would write them) with ``executemany`` (SQLite) or ``COPY`` (PostgreSQL). The
secondary indexes are dropped for the load and built again by opening the database with the
store (what its first start after an upgrade does on a large database): that time is
measured and reported.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from trace_store import parts
from trace_store.storage import (
    RECORD_COLUMNS,
    AgentState,
    Batch,
    StreamState,
    ddl,
    open_storage,
)

SITE, LINE = "plant-a", "line-1"
STATIONS = tuple(f"ST{n:02d}" for n in range(1, 11))
CYCLE_S = 30
LOT_A_UNITS = 5000
LOT_B_UNITS = 2000
NOK_SHARE = 0.02
START = datetime(2025, 1, 1, tzinfo=UTC)
EDGE_COLUMNS = (
    "agent, seq, parent, child_kind, child, how, site, line, station, ts, product, quantity, "
    "unit, epoch"
)
CHUNK_ROWS = 50_000
_INDEX = re.compile(r"CREATE INDEX IF NOT EXISTS (\w+) ON (records|genealogy|parts)")


def agent_of(station: str) -> str:
    return f"line1-{station.lower()}"


def epoch_of(station: str) -> str:
    return f"{STATIONS.index(station) + 1:032x}"


@dataclass(frozen=True)
class History:
    """What was built, for picking random keys."""

    days: float
    units: int
    records: int
    edges: int
    start: str
    end: str
    load_s: float
    index_build_s: float

    @property
    def lots_a(self) -> int:
        return -(-self.units // LOT_A_UNITS)

    @property
    def lots_b(self) -> int:
        return -(-self.units // LOT_B_UNITS)


def wire(seconds: float) -> str:
    return (START + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Clock:
    """Wire timestamps for offsets in whole milliseconds, the date part cached per day."""

    def __init__(self) -> None:
        self._days: dict[int, str] = {}

    def __call__(self, ms: int) -> str:
        day, rest = divmod(ms, 86_400_000)
        prefix = self._days.get(day)
        if prefix is None:
            prefix = self._days[day] = (START + timedelta(days=day)).strftime("%Y-%m-%dT")
        s, milli = divmod(rest, 1000)
        h, s = divmod(s, 3600)
        m, s = divmod(s, 60)
        return f"{prefix}{h:02d}:{m:02d}:{s:02d}.{milli:03d}000Z"


Rows = list[tuple[Any, ...]]


def generate(units: int, seed: int = 1) -> Iterator[tuple[Rows, Rows, Rows]]:
    """(record rows, edge rows, part facts rows) in chunks, unit by unit (each station's seqs
    in time order)."""
    rng = random.Random(seed)
    clock = _Clock()
    seqs = dict.fromkeys(STATIONS, 0)
    agents = {s: agent_of(s) for s in STATIONS}
    epochs = {s: epoch_of(s) for s in STATIONS}
    rows: list[tuple[Any, ...]] = []
    edges: list[tuple[Any, ...]] = []
    facts: list[tuple[Any, ...]] = []

    def record(station: str, kind: str, ms: int, serial: str, body: str) -> tuple[int, str]:
        seqs[station] += 1
        seq = seqs[station]
        ts = clock(ms)
        text = f'{{"seq":{seq},"kind":"{kind}","station":"{station}","ts":"{ts}",{body}}}'
        rows.append(
            (agents[station], seq, SITE, LINE, station, kind, ts, serial, text, ts, epochs[station])
        )
        return seq, ts

    def edge(station: str, seq: int, ts: str, parent: str, kind: str, child: str, how: str,
             product: str | None, qty: float | None, unit: str | None) -> None:  # fmt: skip
        edges.append(
            (agents[station], seq, parent, kind, child, how, SITE, LINE, station, ts, product,
             qty, unit, epochs[station])
        )  # fmt: skip

    for u in range(units):
        sa, fg = f"SA{u:08d}", f"FG{u:08d}"
        lot_a, lot_b = f"LA{u // LOT_A_UNITS:05d}", f"LB{u // LOT_B_UNITS:05d}"
        base = u * CYCLE_S * 1000
        operator = f"op{(base // 28_800_000) % 3 + 1}"  # three shifts of 8 h
        order = f"WO-{u // 1000:05d}"
        for k, station in enumerate(STATIONS):
            serial = sa if k < 4 else fg
            product = "SUB-A" if k < 4 else "FIN-X"
            t = base + k * CYCLE_S * 1000 + rng.randrange(0, 2000)
            lot = f'"{lot_a}"' if k == 0 else "null"
            ctx = (
                f'"ctx":{{"serial":"{serial}","lot":{lot},"work_order":"{order}",'
                f'"product":"{product}","operator":"{operator}"}}'
            )
            if k in (0, 4):
                record(station, "scan", t - 4000, serial,
                       f'"device":"scanner{k + 1}","point":"code","code":"{serial}",'
                       f'"rule":"serial",{ctx}')  # fmt: skip
            if k == 4:
                seq, ts = record(station, "consumption", t - 3000, serial,
                                 f'"serial":"{serial}","component":"{sa}","product":"SUB-A",'
                                 f'"quantity":1,"unit":"pcs",{ctx}')  # fmt: skip
                edge(station, seq, ts, serial, "component", sa, "consumption", "SUB-A", 1.0, "pcs")
            if k == 5:
                seq, ts = record(station, "consumption", t - 3000, serial,
                                 f'"serial":"{serial}","lot":"{lot_b}","product":"M2",'
                                 f'"quantity":3.0,"unit":"g",{ctx}')  # fmt: skip
                edge(station, seq, ts, serial, "lot", lot_b, "consumption", "M2", 3.0, "g")
            force = rng.gauss(20.25, 0.6)
            torque = rng.gauss(5.0, 0.25)
            record(station, "readings", t - 1500, serial,
                   f'"device":"press{k + 1}","values":{{"temperature":{rng.gauss(180, 2):.2f},'
                   f'"pressure":{rng.gauss(4, 0.05):.3f},"force":{force * 0.98:.3f}}},'
                   f'"units":{{"temperature":"degC","pressure":"bar","force":"kN"}},'
                   f'{ctx}')  # fmt: skip
            nok = rng.random() < NOK_SHARE
            if nok:
                force = 22.5 + abs(rng.gauss(0.4, 0.3))
            for repeat in (0, 1) if nok else (0,):
                ok = not nok or repeat == 1
                if repeat:
                    force = rng.gauss(20.25, 0.6)
                force_ok, torque_ok = 18.0 <= force <= 22.5, 4.0 <= torque <= 6.0
                # As the store's ``parts.nok_causes`` makes them, for the causes column.
                failed = [n for n, good in (("force", force_ok), ("torque", torque_ok)) if not good]
                causes = None if ok else json.dumps(failed or ["result from the PLC"])
                body = (
                    f'"serial":"{serial}","result":"{"ok" if ok else "nok"}","quality":"good",'
                    f'"counter":{u + 1},"cycle_time":{CYCLE_S}.0,"values":{{'
                    f'"force":{{"value":{force:.3f},"unit":"kN","quality":"good","min":18.0,'
                    f'"max":22.5,"ok":{"true" if force_ok else "false"}}},'
                    f'"torque":{{"value":{torque:.3f},"unit":"Nm","quality":"good","min":4.0,'
                    f'"max":6.0,"ok":{"true" if torque_ok else "false"}}}}},'
                    f'"repeat":{repeat},{ctx}'
                )
                seq, ts = record(station, "part", t + repeat * 10_000, serial, body)
                facts.append(
                    (agents[station], epochs[station], seq, serial, LINE, station, ts,
                     "ok" if ok else "nok", repeat, product, order, 0, causes)
                )  # fmt: skip
                if k == 0:
                    edge(station, seq, ts, serial, "lot", lot_a, "part", None, None, None)
        if len(rows) >= CHUNK_ROWS:
            yield rows, edges, facts
            rows, edges, facts = [], [], []
    if rows:
        yield rows, edges, facts


def secondary_indexes() -> list[tuple[str, str]]:
    """(index, table) of the store's secondary indexes on records, genealogy and parts."""
    every = ddl(integer="INTEGER", blob="BLOB", identity="INTEGER", real="REAL")
    return [(m.group(1), m.group(2)) for s in every if (m := _INDEX.match(s))]


def build(db: str, days: float, *, seed: int = 1, log: Any = print) -> History:
    """Fill an empty database ``db`` (SQLite path or PostgreSQL URL) with ``days`` of the line."""
    units = int(days * 86_400 // CYCLE_S)
    open_storage(db).close()  # the store's schema, as its first start makes it
    started = time.monotonic()
    records = edges = 0
    seqs = dict.fromkeys(STATIONS, 0)
    if db.startswith(("postgresql://", "postgres://")):
        records, edges = _load_postgres(db, units, seed, seqs, log)
    else:
        records, edges = _load_sqlite(db, units, seed, seqs, log)
    load_s = time.monotonic() - started
    log(f"loaded {records:,} records, {edges:,} edges in {load_s:.0f} s; building indexes")
    started = time.monotonic()
    with open_storage(db) as storage:  # CREATE INDEX IF NOT EXISTS: the first start's cost
        index_s = time.monotonic() - started
        batch = Batch()
        last = wire(units * CYCLE_S + len(STATIONS) * CYCLE_S)
        for station in STATIONS:
            agent, epoch = agent_of(station), epoch_of(station)
            batch.agents[agent] = AgentState(agent, SITE, LINE, seqs[station], epoch, epoch)
            batch.streams[(agent, epoch)] = StreamState(
                agent, epoch, SITE, LINE, seqs[station], 1, epoch, last
            )
        storage.write(batch)
    log(f"indexes built in {index_s:.0f} s")
    return History(
        days, units, records, edges, wire(0), wire(units * CYCLE_S + len(STATIONS) * CYCLE_S),
        load_s, index_s,
    )  # fmt: skip


def _count(rows: list[tuple[Any, ...]], seqs: dict[str, int]) -> None:
    for row in rows[-64:]:  # a unit's rows are at the end: each station's last seq among them
        seqs[row[4]] = max(seqs[row[4]], row[1])


def _load_sqlite(
    path: str, units: int, seed: int, seqs: dict[str, int], log: Any
) -> tuple[int, int]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # a benchmark's load, not the store's writes
        conn.execute("PRAGMA cache_size = -1000000")
        for name, _ in secondary_indexes():
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        marks = ", ".join("?" * len(RECORD_COLUMNS.split(",")))
        emarks = ", ".join("?" * len(EDGE_COLUMNS.split(",")))
        pmarks = ", ".join("?" * len(parts.COLUMNS.split(",")))
        records = edges = 0
        conn.execute("BEGIN")
        for rows, links, facts in generate(units, seed):
            conn.executemany(f"INSERT INTO records ({RECORD_COLUMNS}) VALUES ({marks})", rows)
            conn.executemany(f"INSERT INTO genealogy ({EDGE_COLUMNS}) VALUES ({emarks})", links)
            conn.executemany(f"INSERT INTO parts ({parts.COLUMNS}) VALUES ({pmarks})", facts)
            _count(rows, seqs)
            records += len(rows)
            edges += len(links)
            if records % 1_000_000 < CHUNK_ROWS:
                conn.execute("COMMIT")
                conn.execute("BEGIN")
                log(f"  {records:,} records")
        conn.execute("COMMIT")
        # No ANALYZE: the store never runs it, so the planner works without statistics.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return records, edges
    finally:
        conn.close()


def _load_postgres(
    url: str, units: int, seed: int, seqs: dict[str, int], log: Any
) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        for name, _ in secondary_indexes():
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        records = edges = 0
        for rows, links, facts in generate(units, seed):
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY records ({RECORD_COLUMNS}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                with cur.copy(f"COPY genealogy ({EDGE_COLUMNS}) FROM STDIN") as copy:
                    for link in links:
                        copy.write_row(link)
                with cur.copy(f"COPY parts ({parts.COLUMNS}) FROM STDIN") as copy:
                    for fact in facts:
                        copy.write_row(fact)
            _count(rows, seqs)
            records += len(rows)
            edges += len(links)
            if records % 1_000_000 < CHUNK_ROWS:
                log(f"  {records:,} records")
        conn.execute("ANALYZE")
        # What autovacuum does to a table that grows by inserts (every 20 %): the visibility
        # map that lets a dashboard's count read the index alone (index-only scan).
        conn.execute("VACUUM parts")
        return records, edges
