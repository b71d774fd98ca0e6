"""Quality rules, evaluated on part records as they arrive (docs/quality.md, "Rules").

Pure: ``Engine.feed(part)`` returns the alerts' transitions that part caused, nothing else
happens here (``alerts.py`` stores, publishes and posts them). Each rule keeps its state per
*key*: the lot, station or product a NOK rate is counted for, the station (line/station) of
the other kinds. A rule is **firing** while at least one of its keys is; the transitions are
"a key starts firing" (the alert, with the records that made it fire as evidence) and "the
last firing key is fine again" (``ok``).

Records of one station arrive in seq order (the wire format's promise); records of different
stations in no particular order, which is why every key is one station's or is counted
without an order (a rate). A record that arrives twice (a resend) is counted once.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from trace_store.envelope import Row

SEEN_KEYS = 200_000  # part records remembered to drop copies of (resends)
MAX_EVIDENCE = 100


@dataclass(frozen=True, slots=True)
class Part:
    """What the rules read of a part record."""

    agent: str
    epoch: str
    seq: int
    line: str
    station: str
    ts: str
    serial: str | None
    result: str | None
    lot: str | None
    product: str | None
    values: dict[str, float]
    limits: dict[str, tuple[float | None, float | None]]

    def evidence(self) -> dict[str, Any]:
        return {
            "agent": self.agent,
            "epoch": self.epoch,
            "seq": self.seq,
            "station": self.station,
            "serial": self.serial,
            "ts": self.ts,
            "result": self.result,
        }


def part_of(row: Row) -> Part | None:
    """The ``Part`` of a stored part row; None for other kinds and unreadable bodies."""
    if row.kind != "part":
        return None
    try:
        body = json.loads(row.body)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    found = body.get("ctx")
    ctx: dict[str, Any] = found if isinstance(found, dict) else {}
    values: dict[str, float] = {}
    limits: dict[str, tuple[float | None, float | None]] = {}
    raw = body.get("values")
    for name, v in raw.items() if isinstance(raw, dict) else ():
        if not isinstance(v, dict):
            continue
        value = _float(v.get("value"))
        if value is not None and v.get("quality", "good") == "good":
            values[str(name)] = value
        limits[str(name)] = (_float(v.get("min")), _float(v.get("max")))
    result = body.get("result")
    return Part(
        row.agent,
        row.epoch,
        row.seq,
        row.line,
        row.station,
        row.ts,
        row.serial,
        result if result in ("ok", "nok") else None,
        _text(ctx.get("lot")),
        _text(ctx.get("product")),
        values,
        limits,
    )


@dataclass(frozen=True, slots=True)
class Where:
    """Which parts a rule looks at (every part when all are None)."""

    station: str | None = None
    line: str | None = None
    product: str | None = None
    lot: str | None = None

    def matches(self, p: Part) -> bool:
        return all(
            want is None or want == got
            for want, got in (
                (self.station, p.station),
                (self.line, p.line),
                (self.product, p.product),
                (self.lot, p.lot),
            )
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    firing: bool
    message: str = ""
    evidence: tuple[Part, ...] = ()


@dataclass(frozen=True)
class Rule:
    id: str
    where: Where = field(default_factory=Where)
    webhook: str | None = None

    def key(self, p: Part) -> str | None:
        return f"{p.line}/{p.station}"

    def new_state(self) -> Any:
        return deque()

    def judge(self, state: Any, p: Part) -> Verdict | None:
        """Add ``p`` to ``state``; the key's verdict now, None when ``p`` says nothing to
        this rule (no result, no value)."""
        raise NotImplementedError


@dataclass(frozen=True)
class NokRate(Rule):
    per: str = "station"  # lot | station | product
    threshold: float = 0.1  # fires when the rate is ABOVE it
    window_parts: int = 50
    window_minutes: float | None = None
    min_parts: int = 10

    def key(self, p: Part) -> str | None:
        if self.per == "lot":
            return p.lot
        if self.per == "product":
            return p.product
        return f"{p.line}/{p.station}"

    def judge(self, state: deque[Part], p: Part) -> Verdict | None:
        if p.result is None:
            return None
        state.append(p)
        while len(state) > self.window_parts:
            state.popleft()
        if self.window_minutes is not None:
            newest = max(_moment(q.ts) for q in state)
            while (
                state and (newest - _moment(state[0].ts)).total_seconds() > 60 * self.window_minutes
            ):
                state.popleft()
        nok = [q for q in state if q.result == "nok"]
        rate = len(nok) / len(state) if state else 0.0
        if len(state) < self.min_parts or rate <= self.threshold:
            return Verdict(False)
        return Verdict(
            True,
            f"NOK rate of {self.per} {self.key(p)}: {len(nok)} of the last {len(state)} parts "
            f"({rate:.1%}) is above {self.threshold:.1%}",
            tuple(nok),
        )


@dataclass(frozen=True)
class ConsecutiveNok(Rule):
    count: int = 3

    def judge(self, state: deque[Part], p: Part) -> Verdict | None:
        if p.result is None:
            return None
        if p.result == "ok":
            state.clear()
            return Verdict(False)
        state.append(p)
        while len(state) > self.count:
            state.popleft()
        if len(state) < self.count:
            return Verdict(False)
        return Verdict(True, f"{self.count} NOK parts in a row at {self.key(p)}", tuple(state))


RUN_TESTS: dict[str, tuple[int, str]] = {
    "we1": (1, "a point beyond 3 sigma"),
    "we2": (3, "2 of 3 points beyond 2 sigma on one side"),
    "we3": (5, "4 of 5 points beyond 1 sigma on one side"),
    "we4": (8, "8 points in a row on one side of the centre"),
    "nelson1": (1, "a point beyond 3 sigma"),
    "nelson2": (9, "9 points in a row on one side of the centre"),
    "nelson3": (6, "6 points in a row steadily increasing or decreasing"),
    "nelson4": (14, "14 points in a row alternating up and down"),
    "nelson5": (3, "2 of 3 points beyond 2 sigma on one side"),
    "nelson6": (5, "4 of 5 points beyond 1 sigma on one side"),
    "nelson7": (15, "15 points in a row within 1 sigma"),
    "nelson8": (8, "8 points in a row beyond 1 sigma, on both sides"),
}
"""Western Electric's four rules and Nelson's eight: test -> (points it looks at, what)."""


@dataclass(frozen=True)
class RunRules(Rule):
    value: str = ""
    center: float = 0.0
    sigma: float = 1.0
    tests: tuple[str, ...] = ("we1", "we2", "we3", "we4")

    def judge(self, state: deque[tuple[float, Part]], p: Part) -> Verdict | None:
        if self.value not in p.values:
            return None
        state.append(((p.values[self.value] - self.center) / self.sigma, p))
        while len(state) > 15:
            state.popleft()
        points = list(state)
        for test in self.tests:
            n = RUN_TESTS[test][0]
            if len(points) >= n and _run_test(test, [z for z, _ in points[-n:]]):
                return Verdict(
                    True,
                    f"{self.value} at {self.key(p)}: {RUN_TESTS[test][1]} ({test})",
                    tuple(q for _, q in points[-n:]),
                )
        return Verdict(False)


def _run_test(test: str, z: Sequence[float]) -> bool:
    """Does the run ``z`` (in sigmas from the centre, oldest first; exactly as many points as
    the test looks at) break ``test``?"""
    number = int(test[-1])
    if test.startswith("we"):
        number = {1: 1, 2: 5, 3: 6, 4: 0}[number]  # as Nelson's; 0: 8 on one side
        if number == 0:
            return all(v > 0 for v in z) or all(v < 0 for v in z)
    if number == 1:
        return abs(z[-1]) > 3
    if number == 2:
        return all(v > 0 for v in z) or all(v < 0 for v in z)
    if number == 3:
        steps = [b - a for a, b in itertools.pairwise(z)]
        return all(s > 0 for s in steps) or all(s < 0 for s in steps)
    if number == 4:
        steps = [b - a for a, b in itertools.pairwise(z)]
        return all(s != 0 for s in steps) and all(
            (a > 0) != (b > 0) for a, b in itertools.pairwise(steps)
        )
    if number == 5:
        return sum(v > 2 for v in z) >= 2 or sum(v < -2 for v in z) >= 2
    if number == 6:
        return sum(v > 1 for v in z) >= 4 or sum(v < -1 for v in z) >= 4
    if number == 7:
        return all(abs(v) < 1 for v in z)
    return all(abs(v) > 1 for v in z) and any(v > 0 for v in z) and any(v < 0 for v in z)


@dataclass(frozen=True)
class Cpk(Rule):
    value: str = ""
    parts: int = 30
    min: float = 1.33  # fires when Cpk is BELOW it
    lower: float | None = None  # the specification limits; default: the part record's
    upper: float | None = None

    def judge(self, state: deque[Part], p: Part) -> Verdict | None:
        if self.value not in p.values:
            return None
        state.append(p)
        while len(state) > self.parts:
            state.popleft()
        if len(state) < self.parts:
            return Verdict(False)
        lower, upper = self.lower, self.upper
        if lower is None and upper is None:
            lower, upper = p.limits.get(self.value, (None, None))
        if lower is None and upper is None:
            return None  # no limits: no capability to speak of
        xs = [q.values[self.value] for q in state]
        mean, sd = statistics.fmean(xs), statistics.stdev(xs)
        sides = [
            s
            for s in (
                (upper - mean) if upper is not None else None,
                (mean - lower) if lower is not None else None,
            )
            if s is not None
        ]
        cpk = min(sides) / (3 * sd) if sd > 0 else (math.inf if min(sides) > 0 else -math.inf)
        if cpk >= self.min:
            return Verdict(False)
        return Verdict(
            True,
            f"Cpk of {self.value} at {self.key(p)} over the last {self.parts} parts is "
            f"{cpk:.2f}, below {self.min:g}",
            tuple(state),
        )


@dataclass(frozen=True, slots=True)
class Transition:
    rule: Rule
    key: str
    state: str  # firing | ok
    since: str  # the ts of the record that caused it
    message: str
    evidence: tuple[Part, ...]

    def payload(self) -> dict[str, Any]:
        """The alert as published (contract section 3) and posted to the webhook."""
        return {
            "v": 1,
            "rule": self.rule.id,
            "state": self.state,
            "since": self.since,
            "key": self.key,
            "message": self.message,
            "evidence": [p.evidence() for p in self.evidence[-MAX_EVIDENCE:]],
        }


class Engine:
    """Every rule's state; ``feed`` parts in, transitions out."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self._states: dict[tuple[str, str], Any] = {}
        self._firing: dict[str, set[str]] = {r.id: set() for r in rules}
        self._seen: OrderedDict[tuple[str, str, int], None] = OrderedDict()

    def seed(self, rule: str, key: str) -> None:
        """The rule was firing for ``key`` when the store last stopped."""
        if rule in self._firing:
            self._firing[rule].add(key)

    def feed(self, p: Part) -> list[Transition]:
        marker = (p.agent, p.epoch, p.seq)
        if marker in self._seen:
            return []
        self._seen[marker] = None
        if len(self._seen) > SEEN_KEYS:
            self._seen.popitem(last=False)
        out: list[Transition] = []
        for rule in self.rules:
            key = rule.key(p) if rule.where.matches(p) else None
            if key is None:
                continue
            state = self._states.get((rule.id, key))
            if state is None:
                state = self._states[(rule.id, key)] = rule.new_state()
            verdict = rule.judge(state, p)
            if verdict is None:
                continue
            firing = self._firing[rule.id]
            if verdict.firing and key not in firing:
                firing.add(key)
                out.append(Transition(rule, key, "firing", p.ts, verdict.message, verdict.evidence))
            elif not verdict.firing and key in firing:
                firing.discard(key)
                if not firing:
                    out.append(
                        Transition(rule, key, "ok", p.ts, f"{rule.id}: {key} is fine again", (p,))
                    )
        return out

    def firing(self, rule: str) -> frozenset[str]:
        return frozenset(self._firing.get(rule, ()))


RuleFactory = Callable[..., Rule]
KINDS: dict[str, type[Rule]] = {
    "nok_rate": NokRate,
    "consecutive_nok": ConsecutiveNok,
    "run_rules": RunRules,
    "cpk": Cpk,
}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _float(value: Any) -> float | None:
    return float(value) if _number(value) else None


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _moment(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))
