"""Context set by hand (``edge-agent context set``), a gate's interlock released by hand
(``edge-agent gate release``), and the context restored at start."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from edge_agent.binding.records import set_context
from edge_agent.binding.rules import (
    BindingRules,
    State,
    Step,
    WriteInterlock,
    context_value,
    station_state,
)
from kernel.model import RecordDraft, RecordKind, Value, iso_utc


class ContextRejected(ValueError):
    """A manual context change names an unknown station or key."""


def set_manual(
    state: State,
    station: str,
    values: Mapping[str, Value],
    rules: BindingRules,
    *,
    ts: float,
    user: str | None,
) -> Step:
    """``edge-agent context set``: the operator's word, recorded like any other change."""
    keys = rules.station_keys.get(station)
    if keys is None:
        raise ContextRejected(_unknown("station", station, rules.station_keys))
    for key in values:
        if key not in keys:
            raise ContextRejected(_unknown(f"context key of {station}", key, keys))
    step = Step()
    st = station_state(state, station)
    source: dict[str, Any] = {"manual": True, "user": user}
    for key, value in values.items():
        set_context(st, station, key, context_value(value), ts, source, step)
    return step


def release_interlock(
    state: State, station: str, rules: BindingRules, *, ts: float, user: str | None
) -> Step:
    """``edge-agent gate release``: the operator lowers a station's interlock (the refused
    part was taken out, the blocked material put aside) without waiting for the next scan
    the gate lets through; recorded as a gate decision like the refusal that raised it."""
    if station not in rules.station_keys:
        raise ContextRejected(_unknown("station", station, rules.station_keys))
    gate = rules.gates.get(station)
    lock = gate.interlock if gate is not None else None
    if lock is None:
        raise ContextRejected(f"station {station} has no gate interlock to release")
    st = station_state(state, station)
    step = Step()
    body: dict[str, Any] = {
        "kind": RecordKind.GATE.value,
        "station": station,
        "ts": iso_utc(ts),
        "decision": "released",
        "check": "operator",
        "reason": "interlock released by the operator",
        "user": user,
        "ctx": st.ctx,
        "serial": st.ctx.get("serial"),
    }
    step.drafts.append(RecordDraft(station, RecordKind.GATE, body))
    st.interlock = False
    step.actions.append(WriteInterlock(station, lock.device, lock.point, lock.release))
    return step


def restore(
    state: State,
    saved: Mapping[str, Mapping[str, Any]],
    parts: Mapping[str, Mapping[str, int]],
    rules: BindingRules,
    *,
    ts: float,
) -> Step:
    """Bring back what the stations knew when the agent stopped, and record it.

    Keys no longer configured are dropped, new ones start unset: the config may have
    changed while the agent was down.
    """
    step = Step()
    for station, keys in rules.station_keys.items():
        st = station_state(state, station)
        st.parts = dict(parts.get(station, {}))
        durable = saved.get(station)
        if durable is None:
            continue
        old = durable.get("ctx") or {}
        st.ctx = MappingProxyType({k: old.get(k) for k in keys})
        counter = durable.get("counter")
        st.counter = counter if isinstance(counter, int) else None
        body: dict[str, Any] = {
            "kind": RecordKind.CONTEXT_RESTORED.value,
            "station": station,
            "ts": iso_utc(ts),
            "counter": st.counter,
            "ctx": st.ctx,
        }
        step.drafts.append(
            RecordDraft(station, RecordKind.CONTEXT_RESTORED, body, state=st.durable())
        )
    return step


def _unknown(what: str, name: str, known: Any) -> str:
    msg = f"unknown {what} {name!r}"
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f"{msg}; did you mean {close[0]!r}?"
    return f"{msg} (known: {', '.join(sorted(known))})" if known else msg

