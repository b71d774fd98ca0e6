"""The gate's decision at a station: pure, no I/O, called by the binder for every accepted
scan of a gated station. The blocked set and the local part results are held here (in
memory, loaded from the journal at start), so a decision never waits for the network; only a
route rule naming another agent's station asks the trace store, through the daemon."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_agent.gate.blocked import EMPTY, BlockedSet
from edge_agent.gate.config import GateConfig, RouteRule
from edge_agent.scan import Scan
from kernel.model import Value

Decision = Literal["refused", "allowed", "flagged"]
Source = Literal["local", "store", "unreachable"]


@dataclass(frozen=True, slots=True)
class RouteAnswer:
    """The trace store's answer to one route question; ``None`` in place of one means no
    answer came in time."""

    result: str | None
    at: str | None = None
    agent: str | None = None


@dataclass(frozen=True, slots=True)
class Remote:
    """A route rule the trace store must answer: index in ``gate.route``, and the rule."""

    index: int
    rule: RouteRule


@dataclass
class Verdict:
    """What the gate says about one scan: the decision bodies (each becomes a ``gate``
    record), and, when another agent's station must be asked about, the questions instead."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    ask: tuple[Remote, ...] = ()

    @property
    def refused(self) -> bool:
        return any(d["decision"] == "refused" for d in self.decisions)

    def first_refusal(self) -> dict[str, Any] | None:
        return next((d for d in self.decisions if d["decision"] == "refused"), None)


class Gate:
    """The gates of one agent's stations and what they decide with. Owned by the event loop;
    ``blocked`` is replaced whole when a newer set arrives."""

    def __init__(
        self,
        configs: Mapping[str, GateConfig],
        *,
        line: str,
        stations: Sequence[str],
        max_serials: int = 100_000,
    ) -> None:
        self.blocked: BlockedSet = EMPTY
        self.max_serials = max_serials
        self.configure(configs, line=line, stations=stations)
        # station -> serial -> result of its latest part record (oldest first)
        self.results: dict[str, dict[str, str | None]] = {}

    def configure(
        self, configs: Mapping[str, GateConfig], *, line: str, stations: Sequence[str]
    ) -> None:
        self.configs = dict(configs)
        self.line = line
        own = set(stations)
        # Stations whose part results a local route rule reads.
        self.tracked = {
            r.requires
            for cfg in configs.values()
            for r in cfg.route
            if r.line in (None, line) and r.requires in own
        }

    def is_local(self, rule: RouteRule) -> bool:
        return rule.requires in self.tracked and rule.line in (None, self.line)

    def note_part(self, station: str, serial: Value, result: Value) -> None:
        """A part record was appended: the latest result of ``serial`` at ``station``."""
        if station not in self.tracked or not isinstance(serial, str):
            return
        book = self.results.setdefault(station, {})
        book.pop(serial, None)  # re-inserted: the dict's order is recency
        book[serial] = result if isinstance(result, str) else None
        if len(book) > self.max_serials:
            del book[next(iter(book))]

    def check(
        self,
        station: str,
        ctx: Mapping[str, Value],
        scan: Scan,
        answers: Mapping[int, RouteAnswer | None] | None,
    ) -> Verdict:
        """Decide about an accepted ``scan`` at ``station`` (which has a gate). ``answers``
        are the store's, once asked; without them a rule naming another agent's station
        makes a verdict that asks instead of deciding."""
        cfg = self.configs[station]
        verdict = Verdict()
        if cfg.blocked != "off":
            verdict.decisions.extend(self._blocked(cfg, ctx, scan))
            if verdict.refused:
                return verdict  # nothing to ask once refused
        serial = scan.context.get("serial")
        if not cfg.route or not serial:
            return verdict
        remote: list[Remote] = []
        for i, rule in enumerate(cfg.route):
            if self.is_local(rule):
                verdict.decisions.append(self._local(rule, serial))
            elif answers is None:
                remote.append(Remote(i, rule))
            else:
                verdict.decisions.append(self._remote(rule, serial, answers.get(i)))
        if remote and not verdict.refused:
            verdict.ask = tuple(remote)
        return verdict

    def _blocked(
        self, cfg: GateConfig, ctx: Mapping[str, Value], scan: Scan
    ) -> list[dict[str, Any]]:
        blocked = self.blocked
        consume = scan.consume or {}
        candidates: dict[str, list[Any]] = {
            "lot": [scan.context.get("lot"), consume.get("lot")],
            "serial": [scan.context.get("serial"), consume.get("component")],
            "product": [scan.context.get("product", ctx.get("product")), consume.get("product")],
        }
        out: list[dict[str, Any]] = []
        for key in cfg.keys:
            listed = blocked.of(key)
            for value in dict.fromkeys(candidates[key]):
                if not isinstance(value, str) or value not in listed:
                    continue
                entry = listed[value]
                why = entry.get("reason") or "no reason given"
                out.append(
                    {
                        "decision": "refused" if cfg.blocked == "refuse" else "flagged",
                        "check": "blocked",
                        key: value,
                        "reason": f"{key} {value} is blocked: {why}",
                        "version": blocked.version,
                        "blocked": dict(entry),
                    }
                )
        return out

    def _local(self, rule: RouteRule, serial: str) -> dict[str, Any]:
        book = self.results.get(rule.requires, {})
        if serial not in book:
            return _route(rule, serial, "refused", "local", f"no part record at {rule.requires}")
        result = book[serial]
        if result == "ok":
            return _route(rule, serial, "allowed", "local", f"OK at {rule.requires}")
        return _route(
            rule, serial, "refused", "local", f"latest part record at {rule.requires}: {result}"
        )

    def _remote(self, rule: RouteRule, serial: str, answer: RouteAnswer | None) -> dict[str, Any]:
        if answer is None:
            decision: Decision = "refused" if rule.on_unreachable == "refuse" else "flagged"
            why = f"trace store did not answer within {rule.timeout:g} s"
            return _route(rule, serial, decision, "unreachable", why)
        where = f"{rule.requires} (line {rule.line or self.line})"
        if answer.result == "ok":
            body = _route(rule, serial, "allowed", "store", f"OK at {where}")
        elif answer.result is None:
            body = _route(rule, serial, "refused", "store", f"no part record at {where}")
        else:
            body = _route(
                rule, serial, "refused", "store", f"latest part record at {where}: {answer.result}"
            )
        body["found"] = {"result": answer.result, "at": answer.at, "agent": answer.agent}
        return body


def _route(
    rule: RouteRule, serial: str, decision: Decision, source: Source, reason: str
) -> dict[str, Any]:
    return {
        "decision": decision,
        "check": "route",
        "serial": serial,
        "requires": rule.requires,
        "line": rule.line,
        "source": source,
        "reason": reason,
    }
