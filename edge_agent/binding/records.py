"""Observations -> records: context changes, scans, readings and unobserved windows, each
stamped with the context that was true when the value was taken."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from edge_agent.binding.parts import trigger
from edge_agent.binding.rules import (
    _EMPTY,
    GOOD,
    READINGS,
    UNASSIGNED,
    UNSEEN,
    Acknowledge,
    AskRoute,
    BindingRules,
    PointKey,
    State,
    StationState,
    Step,
    TriggerRead,
    WriteInterlock,
    context_value,
    station_state,
)
from edge_agent.gate.decide import Gate, RouteAnswer, Verdict
from edge_agent.scan import classify
from kernel.model import Observation, Quality, RecordDraft, RecordKind, Value, iso_utc


def bind(
    state: State, batch: Sequence[Observation], rules: BindingRules, gate: Gate | None = None
) -> Step:
    """Bind a batch of observations, in order, updating ``state``.

    A batch may hold several device responses (one poll of a group spanning several
    requests); a response is a run of consecutive observations with the same ``ts``. Within
    one response, context sources and scans are applied before the readings: they were read
    in the same instant, so those readings belong to the new part. Across responses, order
    decides. A context source that reads BAD leaves the context as it was (the part mid-cycle
    keeps its serial) and is recorded as a BAD reading, so the gap is visible. Triggers are
    evaluated last, so a part captured by a trigger has the context of its response.
    """
    step = Step()
    start = 0
    for i in range(1, len(batch) + 1):
        if i == len(batch) or batch[i].ts != batch[start].ts:
            _bind_response(state, batch[start:i], rules, step, gate)
            start = i
    return step



def _bind_response(
    state: State,
    response: Sequence[Observation],
    rules: BindingRules,
    step: Step,
    gate: Gate | None = None,
) -> None:
    context_of = rules.context_of
    if any(obs.unobserved is not None for obs in response):
        _unobserved(state, response, rules, step)
    consumed: set[int] = set()  # indexes that became context or scan records
    if context_of or rules.scans_of:
        for i, obs in enumerate(response):
            pk = (obs.device, obs.point)
            targets = context_of.get(pk)
            if targets and obs.quality is Quality.GOOD:
                consumed.add(i)
                value = context_value(obs.value)
                source = {"device": obs.device, "point": obs.point}
                for station, key in targets:
                    set_context(
                        station_state(state, station), station, key, value, obs.ts, source, step
                    )
            scan_stations = rules.scan_stations(obs) if rules.scans_of else ()
            if scan_stations:
                consumed.add(i)
                accepted = True
                held = False
                for station in scan_stations:
                    scanned = station_state(state, station)
                    status = _scan(scanned, station, obs, rules, step, gate)
                    accepted &= status == "accepted"
                    held |= status == "held"
                if (obs.device, obs.point) in rules.acknowledged and not held:
                    # One answer per scan, whatever number of stations it fed.
                    step.actions.append(
                        Acknowledge(scan_stations[0], obs.device, obs.point, accepted)
                    )
    station_of = rules.station_of
    # One record per station per response: the values read in one instant share one context
    # and one ts, so writing them once is exact, and the per-record cost (journal row,
    # encoding, publish, delete) is paid once per response instead of once per value.
    ts = iso_utc(response[0].ts) if response else ""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    for i, obs in enumerate(response):
        if i in consumed:
            continue
        station = station_of.get((obs.device, obs.point), UNASSIGNED)
        # Keyed by device too: a response is one device's, but nothing here relies on that.
        body = groups.get((station, obs.device))
        if body is not None and obs.point in body["values"]:
            # A point twice in one batch (a subscription's queue delivering two changes at
            # once): a record holds one value per point, so the second starts a new record
            # rather than overwriting the first.
            done.append(body)
            body = None
        if body is None:
            st = state.get(station)
            body = groups[(station, obs.device)] = {
                "kind": READINGS,
                "station": station,
                "ts": ts,
                "device": obs.device,
                "ctx": st.ctx if st is not None else _EMPTY,
                "values": {},
            }
        point = obs.point
        body["values"][point] = obs.value
        if obs.quality is not GOOD:
            body.setdefault("quality", {})[point] = obs.quality.value
        if obs.error is not None:
            body.setdefault("errors", {})[point] = obs.error
        if obs.unit is not None:
            body.setdefault("units", {})[point] = obs.unit
        if obs.source_ts is not None:
            body.setdefault("source_ts", {})[point] = iso_utc(obs.source_ts)
        if obs.server_ts is not None:
            body.setdefault("server_ts", {})[point] = iso_utc(obs.server_ts)
        if obs.detail is not None:
            body.setdefault("details", {})[point] = dict(obs.detail)
    for body in (*done, *groups.values()):
        step.drafts.append(RecordDraft(body["station"], RecordKind.READINGS, body))
    if rules.trigger_of:
        for obs in response:
            for station in rules.trigger_of.get((obs.device, obs.point), ()):
                trigger(station_state(state, station), station, obs, rules.parts[station], step)
    if rules.read_triggers:
        for obs in response:
            pk = (obs.device, obs.point)
            for station, reader in rules.read_triggers.get(pk, ()):
                _read_trigger(station_state(state, station), station, reader, pk, obs, step)


def _read_trigger(
    st: StationState, station: str, reader: str, pk: PointKey, obs: Observation, step: Step
) -> None:
    """A reader is triggered on its point's rising edge. After a start or an outage the
    previous level is unknown, and a level already high is not an edge: the part may have
    been read before (the operator can trigger by hand with ``edge-agent device command``)."""
    if obs.quality is not Quality.GOOD:
        st.levels[pk] = UNSEEN
        return
    previous, st.levels[pk] = st.levels.get(pk, UNSEEN), obs.value
    if previous is not UNSEEN and not previous and obs.value:
        step.actions.append(TriggerRead(station, reader))


def _unobserved(
    state: State, response: Sequence[Observation], rules: BindingRules, step: Step
) -> None:
    """One ``unobserved`` record per station, device and window, before anything else of the
    response: the points whose changes between ``since`` and this response may not have
    reached the agent (a context source or a trigger among them too)."""
    windows: dict[tuple[str, str, float | None, str], dict[str, Any]] = {}
    for obs in response:
        window = obs.unobserved
        if window is None:
            continue
        pk = (obs.device, obs.point)
        stations = dict.fromkeys(
            (
                *((rules.station_of[pk],) if pk in rules.station_of else ()),
                *(station for station, _ in rules.context_of.get(pk, ())),
                *(rules.scan_stations(obs) if rules.scans_of else ()),
                *rules.trigger_of.get(pk, ()),
            )
        ) or {UNASSIGNED: None}
        for station in stations:
            key = (station, obs.device, window.since, window.reason)
            body = windows.get(key)
            if body is None:
                st = state.get(station)
                body = windows[key] = {
                    "kind": RecordKind.UNOBSERVED.value,
                    "station": station,
                    "ts": iso_utc(obs.ts),
                    "device": obs.device,
                    "since": None if window.since is None else iso_utc(window.since),
                    "until": iso_utc(obs.ts),
                    "points": [],
                    "reason": window.reason,
                    "ctx": st.ctx if st is not None else _EMPTY,
                }
            body["points"].append(obs.point)
    for body in windows.values():
        step.drafts.append(RecordDraft(body["station"], RecordKind.UNOBSERVED, body))


def set_context(
    st: StationState,
    station: str,
    key: str,
    value: Value,
    ts: float,
    source: Mapping[str, Any],
    step: Step,
) -> None:
    previous = st.ctx.get(key)
    if previous == value and key in st.ctx:
        return
    st.ctx = MappingProxyType({**st.ctx, key: value})
    body: dict[str, Any] = {
        "kind": RecordKind.CONTEXT.value,
        "station": station,
        "ts": iso_utc(ts),
        "key": key,
        "value": value,
        "previous": previous,
        "source": source,
        "ctx": st.ctx,
    }
    if key == "serial" and isinstance(value, str) and value in st.parts:
        # The serial already has a part record here: rework, or a label scanned twice.
        body["repeat"] = st.parts[value]
    step.drafts.append(RecordDraft(station, RecordKind.CONTEXT, body, state=st.durable()))


def answered(
    state: State,
    station: str,
    answers: Mapping[int, RouteAnswer | None],
    rules: BindingRules,
    gate: Gate,
) -> Step:
    """The trace store answered (or did not, in time) the route question of the station's
    first held scan: bind it with the answers, then the scans held behind it, in order (one of
    them may ask again and hold the rest)."""
    step = Step()
    st = station_state(state, station)
    held, st.held = st.held, []
    for i, obs in enumerate(held):
        if st.held:
            st.held.append(obs)
            continue
        status = _scan(st, station, obs, rules, step, gate, answers if i == 0 else None)
        if status != "held" and (obs.device, obs.point) in rules.acknowledged:
            step.actions.append(Acknowledge(station, obs.device, obs.point, status == "accepted"))
    return step


def _scan(
    st: StationState,
    station: str,
    obs: Observation,
    rules: BindingRules,
    step: Step,
    gate: Gate | None = None,
    answers: Mapping[int, RouteAnswer | None] | None = None,
) -> str:
    """A scan is always recorded (accepted, unclassified, rejected, or refused by the gate);
    an accepted one may then set context keys and record a consumption. Returns the scan's
    status, or "held" while the gate waits for the trace store (recorded once answered)."""
    if st.held and answers is None:
        st.held.append(obs)  # behind a scan waiting for the store: keep their order
        return "held"
    body: dict[str, Any] = {
        "kind": RecordKind.SCAN.value,
        "station": station,
        "ts": iso_utc(obs.ts),
        "device": obs.device,
        "point": obs.point,
    }
    if obs.quality is not Quality.GOOD or obs.value is None:
        body.update(
            text=None,
            status="rejected",
            rule=None,
            quality=Quality.BAD.value,
            error=obs.error or "no data",
            ctx=st.ctx,
        )
        if obs.detail is not None:
            body["detail"] = dict(obs.detail)
        step.drafts.append(RecordDraft(station, RecordKind.SCAN, body))
        return "rejected"
    scan = classify(str(obs.value), rules.scan_rules.get(station, ()))
    verdict: Verdict | None = None
    if scan.status == "accepted" and gate is not None and station in gate.configs:
        verdict = gate.check(station, st.ctx, scan, answers)
        if verdict.ask:
            st.held.insert(0, obs)
            step.actions.append(AskRoute(station, str(scan.context["serial"]), verdict.ask))
            return "held"
    status: str = scan.status
    error = scan.error
    if verdict is not None and verdict.refused:
        status, error = "refused", _refusal(verdict)
    quality = {"accepted": Quality.GOOD, "unclassified": Quality.UNCERTAIN}.get(
        status, Quality.BAD
    )
    body.update(
        text=scan.text,
        status=status,
        rule=scan.rule,
        quality=quality.value,
        ctx=st.ctx,
    )
    if scan.aim is not None:
        body["aim"] = scan.aim
        body["symbology"] = scan.symbology
    if scan.fields:
        body["fields"] = dict(scan.fields)
    if scan.gs1 is not None:
        body["gs1"] = dict(scan.gs1)
    if error is not None:
        body["error"] = error
    if obs.detail is not None:
        body["detail"] = dict(obs.detail)
    if verdict is not None:
        body["gate"] = {
            "decision": _overall(verdict),
            "version": gate.blocked.version if gate is not None else 0,
        }
        if verdict.refused and scan.consume:
            # What it would have consumed: no consumption record is written for a refused
            # scan, since receivers take every consumption record as a genealogy edge.
            body["consume"] = dict(scan.consume)
    step.drafts.append(RecordDraft(station, RecordKind.SCAN, body))
    if verdict is not None:
        _gate_records(st, station, obs, verdict, rules, step)
    if status != "accepted":
        return status
    source = {"device": obs.device, "point": obs.point, "rule": scan.rule}
    for key, value in scan.context.items():
        set_context(st, station, key, context_value(value), obs.ts, source, step)
    if scan.consume:
        serial = st.ctx.get("serial")
        cons: dict[str, Any] = {
            "kind": RecordKind.CONSUMPTION.value,
            "station": station,
            "ts": iso_utc(obs.ts),
            "serial": serial,
            **scan.consume,
            "rule": scan.rule,
            "quality": Quality.GOOD.value if serial is not None else Quality.UNCERTAIN.value,
            "ctx": st.ctx,
        }
        if serial is None:
            cons["error"] = "no serial current: consumption not bound to a part"
        if verdict is not None and _overall(verdict) == "flagged":
            cons["gate"] = "flagged"  # let through, but see the gate record
        step.drafts.append(RecordDraft(station, RecordKind.CONSUMPTION, cons))
    return status


def _overall(verdict: Verdict) -> str:
    decisions = {d["decision"] for d in verdict.decisions}
    for decision in ("refused", "flagged"):
        if decision in decisions:
            return decision
    return "allowed"


def _refusal(verdict: Verdict) -> str:
    first = verdict.first_refusal()
    return f"refused by the gate: {first['reason']}" if first is not None else "refused"


def _gate_records(
    st: StationState,
    station: str,
    obs: Observation,
    verdict: Verdict,
    rules: BindingRules,
    step: Step,
) -> None:
    """One ``gate`` record per decision, then the interlock: raised by a refusal, released by
    the next scan the gate lets through."""
    ts = iso_utc(obs.ts)
    text = str(obs.value)
    for decision in verdict.decisions:
        body: dict[str, Any] = {
            "kind": RecordKind.GATE.value,
            "station": station,
            "ts": ts,
            "device": obs.device,
            "point": obs.point,
            "text": text,
            **decision,
            "ctx": st.ctx,
        }
        # The part the decision concerns: the scanned serial, else the one at the station.
        body.setdefault("serial", st.ctx.get("serial"))
        step.drafts.append(RecordDraft(station, RecordKind.GATE, body))
    cfg = rules.gates[station]
    lock = cfg.interlock
    if lock is None:
        return
    if verdict.refused:
        st.interlock = True
        step.actions.append(WriteInterlock(station, lock.device, lock.point, lock.value))
    elif st.interlock is not False:
        st.interlock = False
        step.actions.append(WriteInterlock(station, lock.device, lock.point, lock.release))
