"""The workbench at plant scale (issue 18, item 3): p95 of its pages over a long history of a
10-station line, on SQLite and PostgreSQL, and what the queries cost the ingest.

The history (``benchmarks.workbench_history``): a unit every 30 s at each of 10 stations,
around the clock, 24 records per unit, genealogy two levels deep; ``--scale`` is ``small``
(10 days, 690,000 records: the default, for ``python -m benchmarks.run``), ``month``,
``year`` (365 days, 25 million records) or a number of days.

Measured through the workbench's own application (Starlette's test client, in process: the
page handler, the queries and the rendering, no network), each over random keys:

- **serial**: ``/serial?id=`` of a random sub-assembly or finished unit;
- **lot**: ``/lot?id=`` of a random material lot (recall list of 2,000 or 10,000 serials);
- **window**: ``/window`` of a random station over a random 8 h; and the same with a value
  bound that (almost) nothing crosses, so the whole window is read and filtered;
- **dashboard**: ``/dashboard`` of a random station over a month (the whole history when
  it is shorter);
- **export**: ``/lot/export?format=csv`` of a random 10,000-serial recall list, streamed,
  rows counted.

Target: p95 < 1 s each (``CEILING_S``); reported as the ratio p95 / ceiling.

**Ingest**: the store's own write path as its writer thread runs it (each message checked by
``envelope.parse``, its rows and edges committed by ``Storage.write`` with the store's
settings: SQLite WAL ``synchronous=FULL``, one transaction per message of ``INGEST_RECORDS``
records), as fast as it goes, for ``--ingest-seconds`` in all in each of three conditions,
interleaved in ``SLICES`` slices: alone; while another process (the workbench is a process of
its own) runs the page mix above back to back; and, as the machine's floor, beside a process
that only spins at the lowest priority Linux has (nice 19, ``SCHED_IDLE``): what any work on
another core costs the ingest, whatever its priority. Target: the rate with queries is at most
10 % below the rate without.

Run: ``python -m benchmarks.workbench_scale [--scale small|month|year|DAYS] [--backend
sqlite|postgresql|both] [--keys 40] [--json out.json] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks import workbench_history as history
from trace_store.envelope import SCHEMA, VERSION, Accepted, parse
from trace_store.storage import AgentState, Batch, StreamState, open_storage

CEILING_S = 1.0
SLOWDOWN_CEILING = 0.10
SLICES = 3  # ingest alone / beside the spinner / beside the pages, interleaved, this often
SCALES = {"small": 10.0, "month": 31.0, "year": 365.0}
INGEST_RECORDS = 50
INGEST_AGENT = "bench-ingest"
INGEST_EPOCH = "f" * 32
QUERY_NICE = 10


def days_of(scale: str) -> float:
    if scale in SCALES:
        return SCALES[scale]
    return float(scale)


# ---- the page mix ------------------------------------------------------------------------------


class Pages:
    """Random requests of each kind against one history."""

    def __init__(self, h: history.History, rng: random.Random) -> None:
        self.h = h
        self.rng = rng
        self.last_day = h.units * history.CYCLE_S / 86_400

    def serial(self) -> str:
        u = self.rng.randrange(self.h.units)
        return f"/serial?id={self.rng.choice(('SA', 'FG'))}{u:08d}"

    def lot(self) -> str:
        if self.rng.random() < 0.5:
            return f"/lot?id=LA{self.rng.randrange(self.h.lots_a):05d}"
        return f"/lot?id=LB{self.rng.randrange(self.h.lots_b):05d}"

    def _span(self, hours: float) -> tuple[str, str]:
        span = min(hours * 3600, self.last_day * 86_400)
        start = self.rng.uniform(0, self.last_day * 86_400 - span)
        return _form(start), _form(start + span)

    def window(self) -> str:
        since, until = self._span(8)
        return f"/window?station={self.rng.choice(history.STATIONS)}&from={since}&to={until}"

    def window_filtered(self) -> str:
        return self.window() + "&value=force&min=10&max=30"

    def dashboard(self) -> str:
        since, until = self._span(30 * 24)
        return f"/dashboard?station={self.rng.choice(history.STATIONS)}&from={since}&to={until}"

    def export(self) -> str:
        full = max(1, self.h.units // history.LOT_A_UNITS)  # lots with all their units
        return f"/lot/export?id=LA{self.rng.randrange(full):05d}&format=csv"

    def kinds(self) -> dict[str, Callable[[], str]]:
        return {
            "serial": self.serial,
            "lot": self.lot,
            "window": self.window,
            "window_filtered": self.window_filtered,
            "dashboard": self.dashboard,
            "export": self.export,
        }


def _form(seconds: float) -> str:
    return history.wire(seconds)[:16]  # the form's minute precision


@contextlib.contextmanager
def _client(db: str) -> Iterator[Any]:
    from starlette.testclient import TestClient

    from trace_store.web.app import WorkbenchConfig, create_app

    with TestClient(create_app(WorkbenchConfig(db))) as client:
        yield client


def _get(client: Any, url: str) -> int:
    """Fetch ``url`` to the end; returns the CSV rows for an export, else 0."""
    with client.stream("GET", url) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}")
        if "export" not in url:
            response.read()
            return 0
        lines: int = sum(chunk.count(b"\r\n") for chunk in response.iter_bytes())
        return lines - 1  # the header


def measure(
    db: str, h: history.History, keys: int, seed: int = 7, rounds: int = 1
) -> dict[str, Any]:
    """p95 (and more) of each page kind over ``keys`` random keys; with ``rounds`` > 1 the
    same keys again, each round's p95 kept and the last round's figures reported (a warm
    cache: what a store that has served these pages before answers)."""
    out: dict[str, Any] = {}
    firsts: dict[str, list[float]] = {}
    for _ in range(rounds):
        out = _measure_round(db, h, keys, seed)
        for name, got in out.items():
            firsts.setdefault(name, []).append(got["p95_s"])
    if rounds > 1:
        for name, p95s in firsts.items():
            out[name]["rounds_p95_s"] = p95s
    return out


def _measure_round(db: str, h: history.History, keys: int, seed: int) -> dict[str, Any]:
    pages = Pages(h, random.Random(seed))
    out: dict[str, Any] = {}
    with _client(db) as client:
        _get(client, pages.serial())  # open the pool's connection; warm nothing else
        for name, make in pages.kinds().items():
            n = max(5, keys // 4) if name in ("export", "dashboard") else keys
            times: list[float] = []
            rows: list[int] = []
            for _ in range(n):
                url = make()
                started = time.perf_counter()
                rows.append(_get(client, url))
                times.append(time.perf_counter() - started)
            out[name] = _summary(times) | ({"rows_min": min(rows)} if name == "export" else {})
    return out


def _summary(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return {
        "n": len(times),
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(p95, 3),
        "max_s": round(ordered[-1], 3),
        "ratio_to_ceiling": round(p95 / CEILING_S, 3),
    }


# ---- ingest --------------------------------------------------------------------------------


def _messages(h: history.History) -> Iterator[tuple[str, bytes]]:
    """Messages of a new agent at ST05: part records (each with a consumption before it)."""
    seq = 0
    t = h.units * history.CYCLE_S + 3600.0
    n = 0
    while True:
        records = []
        for _ in range(INGEST_RECORDS // 2):
            n += 1
            t += 0.05
            serial = f"IN{n:08d}"
            for kind in ("consumption", "part"):
                seq += 1
                record: dict[str, Any] = {
                    "seq": seq, "kind": kind, "station": "ST05", "ts": history.wire(t),
                    "serial": serial, "ctx": {"serial": serial, "lot": "LIN"},
                }  # fmt: skip
                if kind == "consumption":
                    record |= {"lot": "LIN", "quantity": 1, "unit": "pcs"}
                else:
                    record |= {
                        "result": "ok", "repeat": 0,
                        "values": {"force": {"value": 20.1, "unit": "kN", "min": 18.0,
                                             "max": 22.5, "ok": True}},
                    }  # fmt: skip
                records.append(record)
        doc = {
            "schema": SCHEMA, "v": VERSION, "agent": INGEST_AGENT, "site": history.SITE,
            "line": history.LINE, "station": "ST05", "first_seq": records[0]["seq"],
            "last_seq": seq, "count": len(records), "records": records,
            "epoch": INGEST_EPOCH, "epoch_first": 1, "journal": INGEST_EPOCH,
        }  # fmt: skip
        yield f"trace/{history.SITE}/{history.LINE}/ST05/records", json.dumps(doc).encode()


def ingest(db: str, messages: Iterator[tuple[str, bytes]], seconds: float) -> float:
    """Records per second through parse + ``Storage.write``, one message per transaction."""
    with open_storage(db) as storage:
        done = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            topic, payload = next(messages)
            result = parse(topic, payload, prefix="trace", max_bytes=16 << 20)
            assert isinstance(result, Accepted), result
            batch = Batch(rows=list(result.rows), edges=list(result.edges))
            batch.agents[result.agent] = AgentState(
                result.agent, result.site, result.line, result.last_seq, result.epoch,
                result.journal,
            )  # fmt: skip
            batch.streams[result.stream] = StreamState(
                result.agent, result.epoch, result.site, result.line, result.last_seq, 1,
                result.journal,
            )  # fmt: skip
            storage.write(batch)
            done += len(result.rows)
        return done / (time.monotonic() - started)


@dataclasses.dataclass
class Switch:
    """Runs a background process's work only while ``go`` is set; ``idle`` says it has
    finished what it was doing (a page in flight ends before the next slice is measured)."""

    go: Any
    idle: Any
    stop: Any

    @classmethod
    def make(cls, mp: Any) -> Switch:
        return cls(mp.Event(), mp.Event(), mp.Event())

    def paused(self) -> bool:
        """In the worker: True (after saying so) while it must not work."""
        if self.go.is_set():
            return False
        self.idle.set()
        self.go.wait(0.1)
        return True

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        self.idle.clear()
        self.go.set()
        try:
            yield
        finally:
            self.go.clear()
            if not self.idle.wait(120):
                raise RuntimeError("a background process did not pause within 120 s")


def _query_loop(db: str, h: history.History, switch: Switch, count: Any, nice: int) -> None:
    """The workbench's side: the page mix, back to back while switched on, at the
    priorities docs/workbench.md recommends for it (``Nice=10``, ``IOSchedulingPriority=7``:
    its disk reads wait behind the store's writes)."""
    import psutil

    os.nice(nice)
    psutil.Process().ionice(psutil.IOPRIO_CLASS_BE, 7)
    pages = Pages(h, random.Random(11))
    kinds = list(pages.kinds().values())
    with _client(db) as client:
        while not switch.stop.is_set():
            if switch.paused():
                continue
            _get(client, random.choice(kinds)())
            with count.get_lock():
                count.value += 1


def _spin(switch: Switch) -> None:
    """The machine's floor: a process that only spins, while switched on, at the lowest
    priority Linux has (nice 19, ``SCHED_IDLE``): what any work on another core costs the
    ingest, whatever its priority."""
    os.nice(19)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    while not switch.stop.is_set():
        if switch.paused():
            continue
        for _ in range(10_000):
            pass


def ingest_slowdown(
    db: str, h: history.History, seconds: float, nice: int = QUERY_NICE
) -> dict[str, Any]:
    """The ingest alone, beside the spinner and beside the pages, in ``SLICES`` interleaved
    slices of ``seconds / SLICES`` each (the history grows and the machine drifts meanwhile:
    interleaving shares that among the three)."""
    messages = _messages(h)
    ingest(db, messages, 2.0)  # warm up: the agent's first rows, the file's pages
    mp = multiprocessing.get_context("spawn")
    pages, spinner, count = Switch.make(mp), Switch.make(mp), mp.Value("i", 0)
    workers = [
        mp.Process(target=_query_loop, args=(db, h, pages, count, nice), name="workbench-queries"),
        mp.Process(target=_spin, args=(spinner,), name="spinner"),
    ]
    for w in workers:
        w.start()
    alone: list[float] = []
    spun: list[float] = []
    loaded: list[float] = []
    try:
        with pages.on():  # the query process is up and has its pages warm before we measure
            deadline = time.monotonic() + 120
            while count.value < 3 and time.monotonic() < deadline and workers[0].is_alive():
                time.sleep(0.1)
        before = count.value
        part = seconds / SLICES
        for _ in range(SLICES):
            alone.append(ingest(db, messages, part))
            with spinner.on():
                spun.append(ingest(db, messages, part))
            with pages.on():
                loaded.append(ingest(db, messages, part))
        queries = count.value - before
    finally:
        for switch in (pages, spinner):
            switch.stop.set()
            switch.go.set()
        for w in workers:
            w.join(60)
            if w.is_alive():
                w.kill()
                w.join()
    rate = {k: statistics.fmean(v) for k, v in (("a", alone), ("s", spun), ("l", loaded))}
    slowdown = 1 - rate["l"] / rate["a"]
    return {
        "alone_records_per_s": round(rate["a"]),
        "with_queries_records_per_s": round(rate["l"]),
        "beside_spinner_records_per_s": round(rate["s"]),
        "slices": SLICES,
        "queries_meanwhile": queries,
        "query_process_nice": nice,
        "query_process_io": "best-effort, priority 7",
        "slowdown": round(slowdown, 3),
        "spinner_slowdown": round(1 - rate["s"] / rate["a"], 3),
        "ratio_to_ceiling": round(max(slowdown, 0) / SLOWDOWN_CEILING, 3),
    }


# ---- per backend ---------------------------------------------------------------------------


def run_backend(
    db: str,
    days: float,
    keys: int,
    ingest_seconds: float,
    log: Callable[[str], None],
    saved: Path | None = None,
    rounds: int = 1,
) -> dict[str, Any]:
    """Build (or, with ``saved`` present, reuse) the history in ``db`` and measure."""
    upgrade_s = None
    if saved is not None and saved.exists():
        h = history.History(**json.loads(saved.read_text()))
        started = time.monotonic()
        open_storage(db).close()  # an upgraded store's first start: new indexes built here
        upgrade_s = round(time.monotonic() - started, 1)
        log(f"reopened the kept history in {upgrade_s} s")
    else:
        h = history.build(db, days, log=log)
        if saved is not None:
            saved.write_text(json.dumps(dataclasses.asdict(h)))
    log(f"built {h.records:,} records over {h.days:g} days; measuring pages")
    out: dict[str, Any] = {
        "records": h.records, "edges": h.edges, "units": h.units, "days": h.days,
        "load_s": round(h.load_s, 1), "index_build_s": round(h.index_build_s, 1),
        "reopen_s": upgrade_s,
    }  # fmt: skip
    if keys == 0:  # build only (``--keep DIR --keys 0``, then ``--reuse``)
        return out
    out["pages"] = measure(db, h, keys, rounds=rounds)
    log("measuring ingest with and without queries")
    out["ingest"] = ingest_slowdown(db, h, ingest_seconds)
    return out


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(
    scale: str = "small",
    backends: tuple[str, ...] = ("sqlite", "postgresql"),
    keys: int = 40,
    ingest_seconds: float = 10.0,
    keep: Path | None = None,
    reuse: bool = False,
    log: Callable[[str], None] = lambda m: print(m, flush=True),
    rounds: int = 1,
    pg_settings: Sequence[str] = (),
) -> dict[str, Any]:
    days = days_of(scale)
    out: dict[str, Any] = {"scale": scale, "days": days, "keys": keys}
    folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="workbench-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if "sqlite" in backends:
            db = folder / "trace.db"
            saved = folder / "trace.db.json" if keep else None
            if saved is None or not reuse or not saved.exists():
                for suffix in ("", "-wal", "-shm", ".json"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            out["sqlite"] = run_backend(str(db), days, keys, ingest_seconds, log, saved, rounds)
            out["sqlite"]["db_bytes"] = sum(
                Path(f"{db}{s}").stat().st_size for s in ("", "-wal") if Path(f"{db}{s}").exists()
            )
            if not keep:
                db.unlink()
        if "postgresql" in backends:
            out["postgresql"] = _run_postgres(days, keys, ingest_seconds, log, rounds, pg_settings)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return out


def _run_postgres(
    days: float,
    keys: int,
    ingest_seconds: float,
    log: Callable[[str], None],
    rounds: int,
    settings: Sequence[str],
) -> dict[str, Any]:
    from tests.pg_helpers import PostgresServer, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        return {"skipped": "no PostgreSQL server in /usr/lib/postgresql"}
    server = PostgresServer(bindir)
    try:
        # Durable: the store's ingest with fsync, as in production.
        server.start(durable=True, settings=settings)
        url = server.create_database("bench")
        result = run_backend(url, days, keys, ingest_seconds, log, rounds=rounds)
        shown = ", ".join(settings) if settings else "default settings"
        result["server"] = f"PostgreSQL {bindir.parent.name}, {shown}, unix socket"
        result["db_bytes"] = _size(server.data)
        return result
    finally:
        server.close()


def table(out: dict[str, Any]) -> str:
    lines = [
        f"{out['days']:g} days of a 10-station line ({out['scale']}); p95 over random keys, "
        f"target < {CEILING_S:g} s",
        "",
        "| backend | records | serial | lot | window | window filtered | dashboard (month) | "
        "export 10k (CSV) | ingest alone / with queries | slowdown (beside a spinner) | "
        "index build |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for backend in ("sqlite", "postgresql"):
        r = out.get(backend)
        if r is None or ("pages" not in r and "skipped" not in r and "error" not in r):
            continue
        if "skipped" in r or "error" in r:
            lines.append(f"| {backend} | {r.get('skipped') or r.get('error')} |" + " |" * 9)
            continue
        p = r["pages"]
        cells = [f"{p[k]['p95_s']} s" for k in (
            "serial", "lot", "window", "window_filtered", "dashboard", "export")]  # fmt: skip
        cells[-1] += f" ({p['export']['rows_min']:,} rows)"
        i = r["ingest"]
        lines.append(
            f"| {backend} | {r['records']:,} | " + " | ".join(cells)
            + f" | {i['alone_records_per_s']:,} / {i['with_queries_records_per_s']:,} records/s"
            f" | {i['slowdown']:.1%} ({i['spinner_slowdown']:.1%}) | {r['index_build_s']} s |"
        )  # fmt: skip
    return "\n".join(lines)


def targets(out: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows for ``benchmarks.run``'s table of targets."""
    rows = []
    for backend in ("sqlite", "postgresql"):
        r = out.get(backend)
        if not r or "pages" not in r:
            continue
        worst = max(r["pages"].items(), key=lambda kv: kv[1]["p95_s"])
        rows.append(
            (
                f"workbench pages p95 < 1 s ({backend}, {out['days']:g} days, "
                f"{r['records']:,} records)",
                f"worst {worst[0]} {worst[1]['p95_s']} s",
                ", ".join(f"{k} {v['p95_s']}" for k, v in r["pages"].items()),
                "met" if worst[1]["p95_s"] < CEILING_S else "**missed**",
            )
        )
        i = r["ingest"]
        rows.append(
            (
                f"ingest slowdown while the workbench queries < 10 % ({backend})",
                f"{i['slowdown']:.1%}",
                f"{i['alone_records_per_s']:,} records/s alone, "
                f"{i['with_queries_records_per_s']:,} with {i['queries_meanwhile']} pages; "
                f"beside an idle-priority spinner {i['spinner_slowdown']:.1%} (the machine)",
                "met" if i["slowdown"] < SLOWDOWN_CEILING else "**missed**",
            )
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", default="small", help="small, month, year or a number of days")
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--keys", type=int, default=40, help="random keys per page kind (0: build only)")
    p.add_argument("--ingest-seconds", type=float, default=10.0)
    p.add_argument("--keep", type=Path, help="build the databases here and keep them")
    p.add_argument(
        "--reuse", action="store_true", help="with --keep: measure the SQLite history built before"
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="measure the pages this often, report the last"
    )
    p.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL server setting, e.g. shared_buffers=6GB (repeatable)",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    out = run(
        args.scale,
        backends,
        args.keys,
        args.ingest_seconds,
        args.keep,
        args.reuse,
        rounds=args.rounds,
        pg_settings=args.pg_setting,
    )
    out["machine"] = {"cpus": os.cpu_count()}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(table(out))


if __name__ == "__main__":
    main()
