"""Part triggers, snapshots and the PLC handshake: a trigger's edge becomes a Capture action,
its snapshot (or the reason there is none) the part record, then "data taken"."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from edge_agent.binding.rules import (
    UNSEEN,
    BindingRules,
    Capture,
    Handshake,
    State,
    StationState,
    Step,
    WriteTaken,
    context_value,
    station_state,
)
from kernel.model import Observation, Quality, RecordDraft, RecordKind, iso_utc

if TYPE_CHECKING:
    from edge_agent.config import PartConfig


def trigger(
    st: StationState, station: str, obs: Observation, part: PartConfig, step: Step
) -> None:
    if obs.quality is not Quality.GOOD:
        st.trigger = UNSEEN  # an outage: nothing is known about the level any more
        return
    previous, st.trigger = st.trigger, obs.value
    if part.handshake is not None:
        ready = bool(obs.value)
        if ready and st.handshake is Handshake.IDLE:
            st.handshake = Handshake.CAPTURING
            _capture(st, station, obs, part, step, handshake=True)
        elif not ready and (st.handshake is Handshake.TAKEN or previous is UNSEEN):
            # After a start or an outage the agent cannot know whether it left "taken" set
            # (killed between the write and the PLC's reply): the PLC would wait for the
            # reset forever. Resetting it while "ready" is low is always safe.
            st.handshake = Handshake.IDLE
            if part.handshake.reset:
                step.actions.append(
                    WriteTaken(station, part.trigger.device, part.handshake.taken, False)
                )
        return
    edge = part.trigger.edge
    now = bool(obs.value)
    if previous is UNSEEN:
        # The level at start (or after an outage) may be an edge we never saw, or one we
        # already recorded. Only a counter can tell, and completion checks it; without a
        # counter, not capturing is the choice that never invents a part.
        fire = part.counter is not None and edge != "change" and now == (edge == "rising")
    elif edge == "rising":
        fire = now and not bool(previous)
    elif edge == "falling":
        fire = not now and bool(previous)
    else:
        fire = obs.value != previous
    if fire:
        _capture(st, station, obs, part, step, handshake=False)


def _capture(
    st: StationState,
    station: str,
    obs: Observation,
    part: PartConfig,
    step: Step,
    *,
    handshake: bool,
) -> None:
    since = None if st.last_trigger_ts is None else obs.ts - st.last_trigger_ts
    st.last_trigger_ts = obs.ts
    step.actions.append(
        Capture(
            station,
            part.snapshot.device,
            tuple(part.snapshot.points),
            obs,
            st.ctx,
            since,
            handshake,
            tuple((a.device, tuple(a.points)) for a in part.snapshot.also),
        )
    )


def complete(
    state: State,
    capture: Capture,
    snapshot: Sequence[Observation] | None,
    error: str | None,
    rules: BindingRules,
) -> Step:
    """Turn a snapshot (or the reason there is none) into the part record.

    The part's context is the one at the trigger, corrected by any context source read in
    the snapshot itself (the PLC's serial register read in the same request is the most
    consistent evidence there is). The station's current context is not changed by it: by
    now a scan may already have moved the station on to the next part.
    """
    step = Step()
    station = capture.station
    st = station_state(state, station)
    part = rules.parts[station]
    if error is not None and capture.handshake:
        # The PLC keeps its data until it is taken: the next poll that still sees "data
        # ready" captures again. Nothing is lost, so there is no part record to write.
        st.handshake = Handshake.IDLE
        return step
    values = {o.point: o for o in snapshot or ()}
    ctx = dict(capture.ctx)
    for o in snapshot or ():
        if o.quality is Quality.GOOD:
            for target, key in rules.context_of.get((o.device, o.point), ()):
                if target == station:
                    ctx[key] = context_value(o.value)
    counter = _counter(values, part.counter)
    if counter is not None and st.counter is not None:
        if counter == st.counter:
            # The same part seen twice (a restart, a reconnect, a re-raised data ready):
            # it already has its part record.
            if capture.handshake:
                _taken(st, station, part, step)
            return step
        if counter != st.counter + 1:
            _gap(st, station, capture, counter, step)
    if counter is not None:
        st.counter = counter
    serial = ctx.get("serial")
    problems: list[str] = []
    if error is not None:
        problems.append(f"snapshot read failed: {error}")
    record_values: dict[str, Any] = {}
    for name in capture.all_points():
        got = values.get(name)
        entry: dict[str, Any] = {"value": None if got is None else got.value}
        if got is not None and got.unit is not None:
            entry["unit"] = got.unit
        entry["quality"] = Quality.BAD.value if got is None else got.quality.value
        if got is not None and got.quality is not Quality.GOOD:
            entry["error"] = got.error
            if error is None:
                problems.append(f"{name}: {got.error}")
        lim = part.limits.get(name)
        if lim is not None:
            if lim.min is not None:
                entry["min"] = lim.min
            if lim.max is not None:
                entry["max"] = lim.max
            entry["ok"] = (
                _within(entry["value"], lim.min, lim.max)
                if entry["quality"] == Quality.GOOD.value
                else None  # unknown, not failed: an unread value is no evidence of a bad part
            )
        record_values[name] = entry
    result, why = _result(part, record_values)
    if why:
        problems.append(why)
    quality = Quality.BAD if problems else Quality.GOOD
    if not problems and serial is None:
        quality = Quality.UNCERTAIN
        problems.append("no serial current at the trigger")
    body: dict[str, Any] = {
        "kind": RecordKind.PART.value,
        "station": station,
        "ts": iso_utc(capture.trigger.ts),
        "serial": serial,
        "result": result,
        "quality": quality.value,
        "counter": counter,
        "cycle_time": _cycle_time(values, part.cycle_time, capture.since_previous),
        "values": record_values,
        "trigger": {
            "device": capture.trigger.device,
            "point": capture.trigger.point,
            "value": capture.trigger.value,
        },
        "ctx": MappingProxyType(ctx),
    }
    if snapshot:
        body["snapshot_ts"] = iso_utc(snapshot[0].ts)
    if problems:
        body["error"] = "; ".join(problems)
    if isinstance(serial, str):
        n = st.parts.pop(serial, 0)
        body["repeat"] = n
        st.parts[serial] = n + 1  # re-inserted: the dict's order is recency
        if len(st.parts) > rules.max_serials:
            del st.parts[next(iter(st.parts))]
    step.drafts.append(RecordDraft(station, RecordKind.PART, body, state=st.durable()))
    if capture.handshake:
        _taken(st, station, part, step)
    return step


def _taken(st: StationState, station: str, part: PartConfig, step: Step) -> None:
    assert part.handshake is not None
    st.handshake = Handshake.TAKEN
    step.actions.append(WriteTaken(station, part.trigger.device, part.handshake.taken, True))


def _counter(values: Mapping[str, Observation], point: str | None) -> int | None:
    if point is None:
        return None
    o = values.get(point)
    if o is None or o.quality is not Quality.GOOD or isinstance(o.value, bool):
        return None
    if isinstance(o.value, int | float):
        return int(o.value)
    return None


def _gap(st: StationState, station: str, capture: Capture, counter: int, step: Step) -> None:
    previous = st.counter
    assert previous is not None
    body: dict[str, Any] = {
        "kind": RecordKind.GAP.value,
        "station": station,
        "ts": iso_utc(capture.trigger.ts),
        "previous": previous,
        "counter": counter,
        # A counter that went back was reset (or wrapped): how many parts passed is unknown.
        "missed": counter - previous - 1 if counter > previous else None,
        "ctx": capture.ctx,
    }
    step.drafts.append(RecordDraft(station, RecordKind.GAP, body))


def _within(value: Any, lo: float | None, hi: float | None) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _result(part: PartConfig, values: Mapping[str, Mapping[str, Any]]) -> tuple[str | None, str]:
    """OK/NOK from the PLC's result point and the limits: NOK if either says NOK; OK only if
    every configured judge says OK; None (with the reason) when it cannot be told."""
    verdicts: list[bool] = []
    why = ""
    if part.result is not None:
        v = values[part.result.point]["value"]
        if v is None:
            why = f"result point {part.result.point!r} unreadable"
        elif v in part.result.nok:
            verdicts.append(False)
        elif v in part.result.ok:
            verdicts.append(True)
        else:
            why = f"result {v!r} is neither ok {part.result.ok} nor nok {part.result.nok}"
    checks = [values[name].get("ok") for name in part.limits]
    if False in checks:
        verdicts.append(False)
    elif None in checks:
        why = why or "a value with limits could not be read"
    elif checks:
        verdicts.append(True)
    if False in verdicts:
        return "nok", why
    if why or not verdicts:
        return None, why
    return "ok", ""


def _cycle_time(
    values: Mapping[str, Observation], point: str | None, measured: float | None
) -> float | None:
    if point is None:
        return None if measured is None else round(measured, 6)
    o = values.get(point)
    if o is None or o.quality is not Quality.GOOD or not isinstance(o.value, int | float):
        return None
    return float(o.value) / 1000.0 if o.unit == "ms" else float(o.value)


