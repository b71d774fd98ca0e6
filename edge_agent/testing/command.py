"""``edge-agent test PATH...``: find the cases, check them all, run the good ones side by side
against one broker, print a line per case as it ends and the diff of each failure, write
JUnit XML; exit 0 when every case passed, 1 when one failed or could not run, 2 when a case
file (or its config or scenario) has mistakes, 75 when the broker cannot start."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from edge_agent.testing.load import LoadedCase, RefusalCase, find_cases, load_case, select
from edge_agent.testing.logcapture import routed
from edge_agent.testing.refusal import judge_refusal
from edge_agent.testing.run import CaseResult, run_case
from kernel.errors import ConfigError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STARTUP = 75
RULE = "_"


def test_command(args: argparse.Namespace) -> int:
    if args.schema:
        return _print_schema(args.schema)
    if not args.paths:
        print("test: give the cases to run (folders or case files)", file=sys.stderr)
        return EXIT_BAD_INPUT
    began = time.monotonic()
    refs, missing = find_cases(args.paths)
    for issue in missing:
        print(issue, file=sys.stderr)
    refs = select(refs, args.keyword)
    if not refs:
        what = f" matching -k {' '.join(args.keyword)}" if args.keyword and not missing else ""
        print(f"test: no test case found{what}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.list:
        for ref in refs:
            print(f"{ref.name}  ({ref.file})")
        return EXIT_BAD_INPUT if missing else 0
    loaded: list[LoadedCase] = []
    refusals: list[RefusalCase] = []
    results: list[CaseResult] = []
    bad_input = bool(missing)
    for ref in refs:
        try:
            one = load_case(ref)
        except ConfigError as exc:
            bad_input = True
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            print(
                f"{ref.file}: {len(exc.issues)} problem(s); case {ref.name} not run",
                file=sys.stderr,
            )
            results.append(
                CaseResult(
                    ref,
                    "error",
                    message=f"{len(exc.issues)} problem(s) in the case, its config or scenario",
                    details=[str(i) for i in exc.issues],
                    bad_input=True,
                )
            )
        else:
            if isinstance(one, RefusalCase):
                refusals.append(one)
            else:
                loaded.append(one)
    jobs = max(1, args.jobs or os.cpu_count() or 1)
    out = sys.stdout
    status = 0
    if loaded or refusals:
        print(
            f"edge-agent test: {len(loaded) + len(refusals)} case(s), up to {jobs} at a time",
            file=out,
            flush=True,
        )
    for refusal in refusals:  # no broker, no simulator: judged at once
        results.append(judge_refusal(refusal))
        _line(results[-1], out)
    if loaded:
        try:
            results += asyncio.run(run_cases(loaded, jobs, args.broker, lambda r: _line(r, out)))
        except _BrokerError as exc:
            print(f"test: cannot start a broker: {exc}", file=sys.stderr)
            return EXIT_STARTUP
    order = {r.name: i for i, r in enumerate(refs)}
    results.sort(key=lambda r: order.get(r.ref.name, 0))
    seconds = time.monotonic() - began
    _details(results, out)
    _summary(results, seconds, out)
    if args.junit_xml:
        from edge_agent.testing.junit import write_junit

        try:
            write_junit(args.junit_xml, results, seconds)
        except OSError as exc:
            print(f"test: cannot write {args.junit_xml}: {exc}", file=sys.stderr)
            status = EXIT_FAILED
    if bad_input:
        return EXIT_BAD_INPUT
    if any(r.status != "passed" for r in results):
        return EXIT_FAILED
    return status


class _BrokerError(Exception):
    pass


async def run_cases(
    cases: Sequence[LoadedCase],
    jobs: int,
    broker_kind: str = "auto",
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Run ``cases``, ``jobs`` at a time, against one broker the run starts (each case on
    topics of its own); ``on_result`` hears of each as it ends."""
    from simulators.broker import EmbeddedBroker, MosquittoBroker, pick_broker

    # pymodbus' servers log every connection the agent drops; the cases' reports say more.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    with routed():  # the broker's chatter, and each case's log into its report
        broker = pick_broker(broker_kind)
        try:
            await broker.start()
        except (OSError, RuntimeError, TimeoutError) as exc:
            if isinstance(broker, MosquittoBroker):
                broker.close()
            raise _BrokerError(str(exc)) from None
        gate = asyncio.Semaphore(jobs)
        # amqtt speaks MQTT 3.1.1 only; what a case tests is the agent, not the plant's broker.
        keys = {"protocol": "3.1.1"} if isinstance(broker, EmbeddedBroker) else {}

        async def one(case: LoadedCase) -> CaseResult:
            async with gate:
                result = await run_case(case, broker.host, broker.port, mqtt=keys)
            if on_result is not None:
                on_result(result)
            return result

        try:
            return list(await asyncio.gather(*(one(c) for c in cases)))
        finally:
            await broker.stop()
            if isinstance(broker, MosquittoBroker):
                broker.close()


def _line(r: CaseResult, out: TextIO) -> None:
    tail = f": {r.message}" if r.message else ""
    if r.status == "passed" and r.notes:
        tail += f" ({'; '.join(r.notes)})"
    print(f"{r.status.upper():<7}{r.ref.name} ({r.seconds:.1f} s){tail}", file=out, flush=True)


def _details(results: Sequence[CaseResult], out: TextIO) -> None:
    for r in results:
        if r.status == "passed" or r.bad_input:  # mistakes were listed as found
            continue
        title = f" {r.ref.name} ({r.status}) "
        print(f"\n{title.center(78, RULE)}", file=out)
        print(r.message, file=out)
        for block in r.details:
            print(f"\n{block}", file=out)
        if r.notes:
            print("\nnotes:", file=out)
            for note in r.notes:
                print(f"  {note}", file=out)
        if r.warnings:
            print("\nthe agent's warnings and errors:", file=out)
            for w in r.warnings[-20:]:
                print(f"  {w}", file=out)


def _summary(results: Sequence[CaseResult], seconds: float, out: TextIO) -> None:
    counts = {s: sum(r.status == s for r in results) for s in ("passed", "failed", "error")}
    parts = [f"{n} {s}" for s, n in counts.items() if n or s == "passed"]
    print(f"\n{' ' + ', '.join(parts) + f' in {seconds:.1f} s ':=^78}", file=out, flush=True)


def _print_schema(which: str) -> int:
    if which == "scenario":
        from simulators.devicemap.schema import schema_text
    else:
        from edge_agent.testing.schema import schema_text
    sys.stdout.write(schema_text())
    return 0
