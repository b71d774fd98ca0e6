"""Power-cut soak: cut the power of the line PC, the central server or both, 500 times at
random moments under load, on a FUSE filesystem that loses what was not synced
(simulators/powercut/), and check after every restart that nothing acknowledged was lost
(simulators/powercut/line.py says what is checked). The same run as
tests/test_powercut_line.py, longer.

    python -m benchmarks.powercut_soak                 # 500 cuts, 20-50 min on 2 cores
    python -m benchmarks.powercut_soak --cuts 50 --seed 7 --broker-kill-every 10

Prints a JSON summary: cuts, violations (must be 0), time per cut, what was cut how; exit
status 0 when no violation was found. Where FUSE cannot be mounted it reports
``skipped: cannot mount FUSE (reason)`` and exits 0. ``--keep`` keeps the directory (logs,
both disks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulators.powercut.control import unavailable
from simulators.powercut.line import PowerCutLine
from simulators.rig import StoreView


async def soak(
    workdir: Path,
    *,
    cuts: int,
    seed: int,
    stations: int,
    poll: float,
    max_records: int,
    broker_kill_every: int,
    progress: bool,
) -> dict[str, Any]:
    rng = random.Random(seed)
    line = PowerCutLine(
        workdir, stations=stations, poll_interval=poll, broker_kill_every=broker_kill_every
    )
    started = time.monotonic()
    view: StoreView | None = None
    try:
        await line.start()
        for n in range(1, cuts + 1):
            await line.run_for(rng, max_records)
            known = len(line.tally.violations)
            await line.cut(rng)
            if progress:
                for text in line.tally.violations[known:]:
                    print(f"VIOLATION {text}", file=sys.stderr, flush=True)
            if progress and n % 50 == 0:
                print(
                    f"{n} cuts, {len(line.tally.violations)} violations, "
                    f"{line.rig.store_count()} records stored",
                    file=sys.stderr,
                    flush=True,
                )
        view = await line.finish()
    except TimeoutError as exc:  # the line stalled after a cut: a finding, with the count
        line.violation(f"the run stopped after {line.tally.cuts} cuts: {exc}")
    finally:
        await line.close()
    t = line.tally
    per_cut = sorted(t.cut_seconds)
    seconds = time.monotonic() - started
    return {
        "cuts": t.cuts,
        "violations": len(t.violations),
        "violation_texts": t.violations[:20],
        "seed": seed,
        "seconds": round(seconds, 1),
        "seconds_per_cut": round(seconds / max(1, t.cuts), 2),
        "cut_restart_check_s": {
            "mean": round(statistics.fmean(per_cut), 2) if per_cut else None,
            "p50": round(per_cut[len(per_cut) // 2], 2) if per_cut else None,
            "max": round(per_cut[-1], 2) if per_cut else None,
        },
        "by_target": t.by_target,
        "by_mode": t.by_mode,
        "by_moment": t.by_moment,
        "torn_writes": t.torn,
        "unsynced_pages_lost": t.lost_pages,
        "damaged_journals": t.damaged_journals,
        "salvaged": t.salvaged,
        "broker_kills": t.broker_kills,
        "records": len(view.seqs) if view else None,
        "parts": sum(len(c) for c in view.parts.values()) if view else None,
    }


def run(
    cuts: int = 500,
    seed: int = 1,
    stations: int = 2,
    poll: float = 0.01,
    max_records: int = 300,
    broker_kill_every: int = 100,
    keep: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """The soak as a section of ``benchmarks.run``: ``{"skipped": reason}`` without FUSE."""
    tmp = Path(tempfile.mkdtemp(prefix="powercut-soak-"))
    try:
        reason = unavailable(tmp)
        if reason:
            return {"skipped": reason}
        result = asyncio.run(
            soak(
                tmp / "line",
                cuts=cuts,
                seed=seed,
                stations=stations,
                poll=poll,
                max_records=max_records,
                broker_kill_every=broker_kill_every,
                progress=progress,
            )
        )
        if keep:
            result["dir"] = str(tmp)
        return result
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def table(r: dict[str, Any]) -> str:
    lines = [
        "| cuts | violations | s per cut (with load) | cut + restart + checks mean / max s "
        "| targets | modes | moments | torn writes | records stored | parts |",
        "| ---: | ---: | ---: | --- | --- | --- | --- | ---: | ---: | ---: |",
        f"| {r['cuts']:,} | {r['violations']} | {r['seconds_per_cut']} "
        f"| {r['cut_restart_check_s']['mean']} / {r['cut_restart_check_s']['max']} "
        f"| {_counts(r['by_target'])} | {_counts(r['by_mode'])} | {_counts(r['by_moment'])} "
        f"| {r['torn_writes']:,} | {r['records'] or 0:,} | {r['parts'] or 0:,} |",
    ]
    if r["violations"]:
        lines += ["", *(f"- {v}" for v in r["violation_texts"])]
    return "\n".join(lines)


def _counts(table: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(table.items()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cuts", type=int, default=500)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stations", type=int, default=2)
    p.add_argument("--poll", type=float, default=0.01, help="PLC poll interval, s")
    p.add_argument("--max-records", type=int, default=300, help="most records between cuts")
    p.add_argument(
        "--broker-kill-every", type=int, default=100, help="kill the broker too every N cuts"
    )
    p.add_argument("--keep", action="store_true", help="keep the directory (logs, disks)")
    args = p.parse_args()
    # The simulated PLC logs every connection a killed agent drops; that is the test's doing.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    result = run(
        cuts=args.cuts,
        seed=args.seed,
        stations=args.stations,
        poll=args.poll,
        max_records=args.max_records,
        broker_kill_every=args.broker_kill_every,
        keep=args.keep,
        progress=True,
    )
    print(json.dumps(result))
    if "skipped" in result:
        print(f"skipped: {result['skipped']}", file=sys.stderr)
        return 0
    return 0 if result["violations"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
