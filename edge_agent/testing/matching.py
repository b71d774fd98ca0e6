"""Records against expectations: which records match which expectation, whether the outcome
can still change (a case ends early once it cannot), and for a miss the record that came
closest and how each of its fields differs.

Matching is a pure function of the records and the case; the runner feeds it the records as
they arrive through the broker, then once more with the final set.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge_agent.testing.model import Expectation, Match, Order

Record = dict[str, Any]


@dataclass(frozen=True)
class Miss:
    """One field of a record that is not what an expectation says."""

    path: str
    expected: str
    got: str


# ---- one value ------------------------------------------------------------------------------


def _f32(x: float) -> float | None:
    try:
        return float(struct.unpack("f", struct.pack("f", x))[0])
    except OverflowError:
        return None


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def same_value(want: Any, got: Any) -> bool:
    """Equal, a number also as the nearest float32 (what a float32 point reads back as) or to
    the last bits of a double (a scaled integer's 4.0200000000000005 is 4.02)."""
    if _is_number(want) and _is_number(got):
        if want == got:
            return True
        if isinstance(got, float) and _f32(float(want)) == got:
            return True
        return math.isclose(float(want), float(got), rel_tol=1e-12, abs_tol=0.0)
    return type(want) is type(got) and bool(want == got)


def describe(m: Match) -> str:
    """A matcher as a person reads it: ``'SN000001'``, ``20.5 ± 0.1``, ``at least 18``."""
    if m.fields is not None:
        inner = ", ".join(f"{k}: {describe(v)}" for k, v in m.fields.items())
        return "{" + inner + "}"
    if m.items is not None:
        return f"a list holding {', '.join(show(i) for i in m.items)}"
    if m.pattern is not None:
        return f"text matching /{m.pattern}/"
    if m.contains is not None:
        return f"text containing {m.contains!r}"
    if m.equal:
        if m.tolerance is not None:
            return f"{show(m.value)} ± {m.tolerance:g}"
        return show(m.value)
    if m.min is not None and m.max is not None:
        return f"between {m.min:g} and {m.max:g}"
    if m.min is not None:
        return f"at least {m.min:g}"
    return f"at most {m.max:g}"


def show(value: Any) -> str:
    """A record's value, short, as YAML would write it (strings quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.9g}"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {show(v)}" for k, v in list(value.items())[:6])
        return "{" + inner + (", ..." if len(value) > 6 else "") + "}"
    if isinstance(value, list):
        inner = ", ".join(show(v) for v in value[:8])
        return "[" + inner + (", ..." if len(value) > 8 else "") + "]"
    return str(value)


_ABSENT = object()


def misses(m: Match, got: Any, path: str) -> list[Miss]:
    """How ``got`` (``_ABSENT``: the record has no such field) differs from ``m``; [] if it
    matches. A snapshot value ``{"value": 20.5, "unit": ...}`` is compared by its value."""
    if got is _ABSENT:
        return [Miss(path, describe(m), "no such field")]
    if m.fields is not None:
        if not isinstance(got, dict):
            return [Miss(path, describe(m), show(got))]
        out: list[Miss] = []
        for key, sub in m.fields.items():
            out += misses(sub, got.get(key, _ABSENT), f"{path}.{key}")
        return out
    if isinstance(got, dict) and "value" in got:
        got = got["value"]
    if m.items is not None:
        if not isinstance(got, list) or any(
            not any(same_value(i, g) for g in got) for i in m.items
        ):
            return [Miss(path, describe(m), show(got))]
        return []
    ok: bool
    if m.pattern is not None:
        ok = isinstance(got, str) and re.fullmatch(m.pattern, got) is not None
    elif m.contains is not None:
        ok = isinstance(got, str) and m.contains in got
    elif m.equal and m.tolerance is not None:
        want = m.value
        assert isinstance(want, int | float)  # the model allows a tolerance with numbers only
        ok = _is_number(got) and abs(float(got) - want) <= m.tolerance + 1e-12
    elif m.equal:
        ok = same_value(m.value, got)
    else:
        ok = _is_number(got) and (m.min is None or got >= m.min) and (m.max is None or got <= m.max)
    return [] if ok else [Miss(path, describe(m), show(got))]


def record_misses(e: Expectation, record: Record) -> list[Miss]:
    """Every field of ``record`` that is not what ``e`` says ([]: it matches)."""
    out: list[Miss] = []
    if e.kind is not None and record.get("kind") != e.kind.value:
        out.append(Miss("kind", e.kind.value, show(record.get("kind"))))
    for key, m in e.matchers().items():
        out += misses(m, record.get(key, _ABSENT), key)
    return out


def matches(e: Expectation, record: Record) -> bool:
    if e.kind is not None and record.get("kind") != e.kind.value:
        return False
    return all(not misses(m, record.get(k, _ABSENT), k) for k, m in e.matchers().items())


# ---- a case's expectations over the records -----------------------------------------------


@dataclass
class Outcome:
    """Where one expectation stands."""

    index: int
    met: bool
    settled: bool
    """True once no further record can change ``met``."""
    matched: list[Record] = field(default_factory=list)
    """With count: every matching record; without: the record assigned to it (if any)."""


SETTLE_MARGIN = 0.5
"""Seconds past an expectation's ``within`` after which it counts as settled while the case
runs: a record made just before it may still be on its way through the broker (the verdict
itself is made from every record delivered, whenever it came)."""


class Tally:
    """The expectations of one case over the records seen so far: records are added as they
    arrive (in any order); each expectation keeps the records it matches. ``start`` is the
    wall-clock time the scenario started, for expectations with ``within`` (a record's time
    is its ``ts``)."""

    def __init__(
        self, expect: Sequence[Expectation], order: Order = "any", start: float | None = None
    ) -> None:
        self.expect = list(expect)
        self.order = order
        self.start = start
        self.records: list[Record] = []
        self._candidates: list[list[Record]] = [[] for _ in self.expect]

    def add(self, records: Iterable[Record]) -> None:
        for r in records:
            self.records.append(r)
            for i, e in enumerate(self.expect):
                if matches(e, r) and self.in_time(e, r):
                    self._candidates[i].append(r)

    def time_of(self, record: Record) -> float | None:
        """Seconds from the scenario's start to the record's ``ts`` (None: not known)."""
        ts = record.get("ts")
        if self.start is None or not isinstance(ts, str):
            return None
        try:
            return datetime.fromisoformat(ts).timestamp() - self.start
        except ValueError:
            return None

    def in_time(self, e: Expectation, record: Record) -> bool:
        if e.within is None:
            return True
        t = self.time_of(record)
        return t is not None and t <= e.within

    def outcomes(self, now: float | None = None) -> list[Outcome]:
        """Where each expectation stands; ``now`` (seconds from the scenario's start) settles
        those whose ``within`` is over."""
        out: list[Outcome | None] = [None] * len(self.expect)
        single = [i for i, e in enumerate(self.expect) if e.count is None]
        assigned = self._assign(single)

        def over(e: Expectation) -> bool:
            return e.within is not None and now is not None and now > e.within + SETTLE_MARGIN

        for i in single:
            rec = assigned.get(i)
            met = rec is not None
            out[i] = Outcome(i, met, met or over(self.expect[i]), [] if rec is None else [rec])
        for i, e in enumerate(self.expect):
            if e.count is None:
                continue
            found = sorted(self._candidates[i], key=_seq)
            n = len(found)
            met = e.count.holds(n)
            above = e.count.max is not None and n > e.count.max
            settled = above or (met and e.count.max is None) or over(e)
            out[i] = Outcome(i, met, settled, found)
        return [o for o in out if o is not None]

    def settled(self, now: float | None = None) -> bool:
        """Whether more records can change nothing: every expectation met for good, or
        broken for good (a count over its max, or its ``within`` over at ``now``)."""
        return all(o.settled for o in self.outcomes(now))

    def _assign(self, indexes: list[int]) -> dict[int, Record]:
        """A record of its own for as many expectations as possible: in written order by
        seq (``seq``), or any one-to-one assignment (``any``, by augmenting paths)."""
        if self.order == "seq":
            out: dict[int, Record] = {}
            after = -1
            for i in indexes:
                rec = next(
                    (r for r in sorted(self._candidates[i], key=_seq) if _seq(r) > after), None
                )
                if rec is None:
                    break
                out[i] = rec
                after = _seq(rec)
            return out
        owner: dict[int, int] = {}  # id(record) -> expectation index

        def place(i: int, seen: set[int]) -> bool:
            for r in sorted(self._candidates[i], key=_seq):
                key = id(r)
                if key in seen:
                    continue
                seen.add(key)
                if key not in owner or place(owner[key], seen):
                    owner[key] = i
                    return True
            return False

        for i in indexes:
            place(i, set())
        by_id = {id(r): r for i in indexes for r in self._candidates[i]}
        return {i: by_id[key] for key, i in owner.items()}


def _seq(r: Record) -> int:
    seq = r.get("seq")
    return seq if isinstance(seq, int) else 0


def nearest(e: Expectation, records: Sequence[Record]) -> tuple[Record, list[Miss]] | None:
    """The record that comes closest to ``e``: of its kind if there is one, the fewest
    differing fields, then the lowest seq."""
    pool = list(records)
    if e.kind is not None:
        same = [r for r in pool if r.get("kind") == e.kind.value]
        pool = same or pool
    best: tuple[int, int, Record, list[Miss]] | None = None
    for r in pool:
        found = record_misses(e, r)
        key = (len(found), _seq(r))
        if best is None or key < best[:2]:
            best = (key[0], key[1], r, found)
    return None if best is None else (best[2], best[3])


def summary(r: Record) -> str:
    """One line naming a record: ``seq 43 part at ST10: serial 'SN000001', result 'ok'``."""
    kind = r.get("kind")
    head = f"seq {r.get('seq')} {kind} at {r.get('station')}"
    fields: list[str] = []
    if kind == "part":
        fields = [f"serial {show(r.get('serial'))}", f"result {show(r.get('result'))}"]
    elif kind == "scan":
        fields = [f"status {show(r.get('status'))}", f"text {show(r.get('text'))}"]
        if r.get("error"):
            fields.append(f"error {show(r.get('error'))}")
    elif kind == "context":
        fields = [f"{r.get('key')} {show(r.get('previous'))} -> {show(r.get('value'))}"]
    elif kind == "gap":
        fields = [
            f"counter {r.get('previous')} -> {r.get('counter')}, missed {show(r.get('missed'))}"
        ]
    elif kind in ("readings", "unobserved", "reading"):
        fields = [f"device {show(r.get('device'))}"]
        quality = r.get("quality")
        if isinstance(quality, dict) and quality:
            fields.append(f"quality {show(quality)}")
    elif kind == "consumption":
        fields = [f"serial {show(r.get('serial'))}", f"lot {show(r.get('lot'))}"]
    return f"{head}: {', '.join(fields)}" if fields else head
