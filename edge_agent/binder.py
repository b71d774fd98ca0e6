"""Station binding: every observation becomes a record stamped with the context
(serial, lot, ...) that was true when the value was taken.

The binder is deterministic and does no I/O: ``bind`` takes the stations' state, a batch of
observations and the rules, updates the state and returns records plus *actions* (read a
snapshot, write a handshake bit) for the daemon to carry out. The daemon feeds the outcome of
an action back (``complete``), which is bound the same way. So every rule is tested with tables
of (state, observations) -> records, without a PLC.

All observations of the agent pass through one Binder in arrival order, which is the single
order that decides which serial a reading belongs to (invariant 3); wall-clock time plays no
part in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from edge_agent.binding.manual import ContextRejected, release_interlock, restore, set_manual
from edge_agent.binding.parts import complete
from edge_agent.binding.records import answered, bind
from edge_agent.binding.rules import (
    _EMPTY,
    UNASSIGNED,
    UNSEEN,
    Acknowledge,
    Action,
    AskRoute,
    BindingRules,
    Capture,
    Context,
    Handshake,
    State,
    StationState,
    Step,
    TriggerRead,
    WriteInterlock,
    WriteTaken,
    context_value,
)
from edge_agent.gate.decide import Gate, RouteAnswer
from kernel.model import Observation, RecordKind, Value

__all__ = [
    "UNASSIGNED",
    "Acknowledge",
    "Action",
    "AskRoute",
    "Binder",
    "BindingRules",
    "Capture",
    "Context",
    "ContextRejected",
    "Handshake",
    "StationState",
    "Step",
    "TriggerRead",
    "WriteInterlock",
    "WriteTaken",
    "bind",
    "complete",
    "context_value",
]

class Binder:
    """Owns the stations' state between calls; every call returns records and actions."""

    def __init__(self, rules: BindingRules, state: State | None = None) -> None:
        self.rules = rules
        self.state: State = state if state is not None else rules.initial_state()
        # The stations' gates: the blocked set and part results they decide with.
        self.gate = Gate(
            rules.gates,
            line=rules.line,
            stations=list(rules.station_keys),
            max_serials=rules.max_serials,
        )

    @property
    def contexts(self) -> dict[str, Context]:
        return {name: st.ctx for name, st in self.state.items()}

    def feed(self, batch: Sequence[Observation]) -> Step:
        return bind(self.state, batch, self.rules, self.gate)

    def complete(
        self, capture: Capture, snapshot: Sequence[Observation] | None, error: str | None
    ) -> Step:
        step = complete(self.state, capture, snapshot, error, self.rules)
        if self.gate.tracked:
            for d in step.drafts:
                if d.kind is RecordKind.PART:
                    self.gate.note_part(d.station, d.body.get("serial"), d.body.get("result"))
        return step

    def answered(self, ask: AskRoute, answers: Mapping[int, RouteAnswer | None]) -> Step:
        """The trace store's answers to ``ask`` (None where none came in time)."""
        return answered(self.state, ask.station, answers, self.rules, self.gate)

    def set_context(
        self, station: str, values: Mapping[str, Value], *, ts: float, user: str | None
    ) -> Step:
        return set_manual(self.state, station, values, self.rules, ts=ts, user=user)

    def release_interlock(self, station: str, *, ts: float, user: str | None) -> Step:
        return release_interlock(self.state, station, self.rules, ts=ts, user=user)

    def restore(
        self,
        saved: Mapping[str, Mapping[str, Any]],
        parts: Mapping[str, Mapping[str, int]],
        *,
        ts: float,
    ) -> Step:
        return restore(self.state, saved, parts, self.rules, ts=ts)

    def reconfigure(self, rules: BindingRules) -> None:
        """Take new rules (a reloaded config) without forgetting what the stations know:
        contexts keep their values for keys still configured, new keys start unset, and
        trigger, counter and handshake state carry over."""
        kept: State = {}
        for station, keys in rules.station_keys.items():
            st = self.state.get(station) or StationState(_EMPTY)
            if tuple(st.ctx) != keys:
                st.ctx = MappingProxyType({k: st.ctx.get(k) for k in keys})
            kept[station] = st
        self.state.clear()
        self.state.update(kept)
        self.rules = rules
        self.gate.configure(rules.gates, line=rules.line, stations=list(rules.station_keys))

    def handshake_failed(self, station: str) -> None:
        """A "data taken" write failed: start over, so the next poll that sees data ready
        captures again (and the counter tells it is the part already recorded)."""
        st = self.state.get(station)
        if st is not None:
            st.handshake = Handshake.IDLE

    def awaiting_reset(self, station: str) -> bool:
        """Whether the PLC may still be waiting for "data taken" to fall: the station is idle
        and has not seen data ready rise since (a new part means the PLC moved on)."""
        st = self.state.get(station)
        return (
            st is not None
            and st.handshake is Handshake.IDLE
            and (st.trigger is UNSEEN or not bool(st.trigger))
        )

