"""Kill soak: SIGKILL the agent 1,000 times at random moments under load, then check that the
trace store holds exactly what the agent committed (none lost, none twice, trace records in
seq order, every PLC part once). The same rig and check as tests/test_faults.py, run longer.

    python -m benchmarks.kill_soak                    # 1,000 kills, about 30 min
    python -m benchmarks.kill_soak --kills 50 --seed 7 --broker-kill-every 100

Every ``--broker-kill-every`` / ``--store-kill-every`` agent kills, the broker / trace store is
killed and restarted too. Prints a JSON summary; exit status 0 when the final check passes.
The rig's directory (logs, both databases) is kept with ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from simulators.rig import LineRig, check_consistent, wait_until


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    rng = random.Random(args.seed)
    rig = LineRig(workdir, stations=args.stations, poll_interval=args.poll)
    started = time.monotonic()
    try:
        await rig.start_plc()
        await rig.start_broker()
        rig.start_store()
        for n in range(1, args.kills + 1):
            rig.start_agent()
            target = rig.store_count() + rng.randint(0, args.max_records)

            def loaded(t: int = target) -> bool:
                return rig.store_count() >= t

            await wait_until(loaded, 120, f"kill {n}: load")
            await rig.kill_agent()
            if args.broker_kill_every and n % args.broker_kill_every == 0:
                rig.kill_broker()
                await rig.start_broker()
            if args.store_kill_every and n % args.store_kill_every == 0:
                await rig.kill_store()
                rig.start_store()
            if n % 50 == 0:
                print(f"{n} kills, {rig.store_count()} records stored", file=sys.stderr)
        rig.start_agent()
        await rig.settle(within=300)
        view = check_consistent(rig)
        return {
            "ok": True,
            "seed": args.seed,
            "agent_kills": rig.agent_kills,
            "broker_kills": rig.broker_kills,
            "store_kills": rig.store_kills,
            "records": len(view.seqs),
            "parts": sum(len(c) for c in view.parts.values()),
            "seconds": round(time.monotonic() - started, 1),
        }
    finally:
        await rig.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kills", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stations", type=int, default=2)
    p.add_argument("--poll", type=float, default=0.01, help="PLC poll interval, s")
    p.add_argument("--max-records", type=int, default=600, help="most records between kills")
    p.add_argument("--broker-kill-every", type=int, default=100)
    p.add_argument("--store-kill-every", type=int, default=150)
    p.add_argument("--keep", action="store_true", help="keep the rig directory")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="kill-soak-")
    workdir = Path(tmp)
    try:
        result = asyncio.run(soak(args, workdir / "rig"))
    except (AssertionError, TimeoutError) as exc:
        print(json.dumps({"ok": False, "seed": args.seed, "error": str(exc), "dir": tmp}))
        return 1
    if args.keep:
        result["dir"] = tmp
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
