"""The diff of a failed case, as pytest shows a failed assert: per expectation not met, where
it is written, what it asked for, and the record that came closest with each field that
differs (expected, got); for a count, the records it found."""

from __future__ import annotations

from collections.abc import Sequence

from edge_agent.testing.load import LoadedCase
from edge_agent.testing.matching import Outcome, Tally, describe, nearest, summary
from edge_agent.testing.model import Expectation

SHOWN = 5
"""Records listed for a count that is off."""


def expectation_text(e: Expectation) -> str:
    """``part at ST10: serial 'SN000002', result 'nok'``."""
    head = e.kind.value if e.kind is not None else "any record"
    fields = e.matchers()
    station = fields.pop("station", None)
    if station is not None:
        plain = station.equal and isinstance(station.value, str)
        head += f" at {station.value if plain else describe(station)}"
    if not fields:
        return head
    return f"{head}: " + ", ".join(f"{k} {describe(m)}" for k, m in fields.items())


def failures(case: LoadedCase, tally: Tally, outcomes: Sequence[Outcome]) -> list[str]:
    """One block of lines per expectation not met."""
    taken: dict[int, int] = {}  # id(record) -> the expectation it is assigned to
    for o in outcomes:
        if o.met and tally.expect[o.index].count is None:
            taken.update((id(r), o.index) for r in o.matched)
    blocks = []
    for o in outcomes:
        if o.met:
            continue
        e = tally.expect[o.index]
        where = f"{case.ref.file}:{case.lines.get(o.index, 0)}: expect[{o.index}]"
        if e.name:
            where += f" ({e.name})"
        lines = []
        by = f" within {e.within:g} s" if e.within is not None else ""
        if e.count is None:
            lines.append(f"{where}: no record matches{by}")
            lines.append(f"  expected: {expectation_text(e)}")
            lines += _nearest(e, tally, taken, case)
        else:
            n = len(o.matched)
            lines.append(f"{where}: expected {e.count.text()} matching record(s){by}, found {n}")
            lines.append(f"  expected: {expectation_text(e)}")
            for i, r in enumerate(o.matched[:SHOWN]):
                lines.append(f"  {'found:   ' if i == 0 else '         '} {summary(r)}")
            if n > SHOWN:
                lines.append(f"            ... and {n - SHOWN} more")
            if n == 0:
                lines += _nearest(e, tally, {}, case)
        blocks.append("\n".join(lines))
    return blocks


def _nearest(e: Expectation, pool: Tally, taken: dict[int, int], case: LoadedCase) -> list[str]:
    best = nearest(e, pool.records)
    if best is None:
        return ["  nearest:  none (no record came from the agent)"]
    record, misses = best
    t = pool.time_of(record)
    if not misses and e.within is not None and (t is None or t > e.within):
        when = "at an unknown time" if t is None else f"{t:.2f} s after the start"
        return [
            f"  nearest:  {summary(record)}",
            f"    matches, but it was made {when}, past its within ({e.within:g} s)",
        ]
    if not misses:
        other = taken.get(id(record))
        if other is None:  # order: seq, and it comes too early
            why = "comes before the record of the expectation written before it (order: seq)"
        else:
            why = (
                f"is taken by expect[{other}] (line {case.lines.get(other, 0)}): each "
                "expectation without count needs a record of its own"
            )
        return [f"  nearest:  {summary(record)}", f"    matches, but {why}"]
    width = max(len(m.path) for m in misses) + 1
    lines = [f"  nearest:  {summary(record)}"]
    lines += [
        f"    {(m.path + ':').ljust(width)} expected {m.expected}, got {m.got}" for m in misses
    ]
    return lines
