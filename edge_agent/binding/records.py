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
    BindingRules,
    PointKey,
    State,
    StationState,
    Step,
    TriggerRead,
    context_value,
    station_state,
)
from edge_agent.scan import classify
from kernel.model import Observation, Quality, RecordDraft, RecordKind, Value, iso_utc


def bind(state: State, batch: Sequence[Observation], rules: BindingRules) -> Step:
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
            _bind_response(state, batch[start:i], rules, step)
            start = i
    return step



def _bind_response(
    state: State, response: Sequence[Observation], rules: BindingRules, step: Step
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
                for station in scan_stations:
                    scanned = station_state(state, station)
                    accepted &= _scan(scanned, station, obs, rules, step) == "accepted"
                if (obs.device, obs.point) in rules.acknowledged:
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


def _scan(
    st: StationState, station: str, obs: Observation, rules: BindingRules, step: Step
) -> str:
    """A scan is always recorded (accepted, unclassified or rejected); an accepted one may
    then set context keys and record a consumption. Returns the scan's status."""
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
    quality = {"accepted": Quality.GOOD, "unclassified": Quality.UNCERTAIN}.get(
        scan.status, Quality.BAD
    )
    body.update(
        text=scan.text,
        status=scan.status,
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
    if scan.error is not None:
        body["error"] = scan.error
    if obs.detail is not None:
        body["detail"] = dict(obs.detail)
    step.drafts.append(RecordDraft(station, RecordKind.SCAN, body))
    if scan.status != "accepted":
        return scan.status
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
        step.drafts.append(RecordDraft(station, RecordKind.CONSUMPTION, cons))
    return scan.status


