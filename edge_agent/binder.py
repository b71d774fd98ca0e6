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

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from edge_agent.scan import ScanRule, classify
from kernel.model import Observation, Quality, RecordDraft, RecordKind, Value, iso_utc

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig, PartConfig

Context = Mapping[str, Value]
"""One station's context. Never mutated: a change makes a new mapping, so records may keep a
reference to the context they were bound to without copying it."""

PointKey = tuple[str, str]  # (device, point)

READINGS = RecordKind.READINGS.value
GOOD = Quality.GOOD

UNASSIGNED = "_unassigned"
MAX_SERIALS = 100_000
"""Serials per station remembered for repeat (rework) marking; older ones are forgotten
first. The trace store sees every part record and can still tell older repeats."""

_EMPTY: Context = MappingProxyType({})


class _Unseen(Enum):
    UNSEEN = "unseen"


UNSEEN = _Unseen.UNSEEN
"""The trigger's previous value when there is none (after start or an outage)."""


class Handshake(Enum):
    IDLE = "idle"  # waiting for data ready
    CAPTURING = "capturing"  # snapshot being read and committed
    TAKEN = "taken"  # data taken written; waiting for the PLC to drop data ready


@dataclass
class StationState:
    """What the binder knows of one station between observations."""

    ctx: Context
    counter: int | None = None  # PLC part counter of the last part record
    trigger: Value | _Unseen = UNSEEN
    last_trigger_ts: float | None = None
    handshake: Handshake = Handshake.IDLE
    parts: dict[str, int] = field(default_factory=dict)  # serial -> part records here

    def durable(self) -> dict[str, Any]:
        """The part of the state that must survive a restart (kept with each record)."""
        return {"ctx": dict(self.ctx), "counter": self.counter}


State = dict[str, StationState]


@dataclass(frozen=True, slots=True)
class Capture:
    """Action: read the snapshot of ``station``'s part now, then call ``Binder.complete``."""

    station: str
    device: str
    points: tuple[str, ...]
    trigger: Observation
    ctx: Context  # the context when the trigger fired: the part's
    since_previous: float | None  # seconds since the previous trigger
    handshake: bool


@dataclass(frozen=True, slots=True)
class WriteTaken:
    """Action: write the handshake's "data taken" bit. Only ever after the part record it
    confirms is committed (the daemon flushes the journal first)."""

    station: str
    device: str
    point: str
    value: bool


Action = Capture | WriteTaken


@dataclass
class Step:
    """What one call to the binder produced, in order."""

    drafts: list[RecordDraft] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)


@dataclass(frozen=True)
class BindingRules:
    """What the YAML says about binding, indexed for the hot path."""

    station_of: Mapping[PointKey, str]
    context_of: Mapping[PointKey, tuple[tuple[str, str], ...]]  # -> ((station, key), ...)
    station_keys: Mapping[str, tuple[str, ...]]
    scans_of: Mapping[tuple[str, str | None], tuple[str, ...]] = field(default_factory=dict)
    scan_rules: Mapping[str, tuple[ScanRule, ...]] = field(default_factory=dict)
    trigger_of: Mapping[PointKey, tuple[str, ...]] = field(default_factory=dict)
    parts: Mapping[str, PartConfig] = field(default_factory=dict)
    max_serials: int = MAX_SERIALS

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> BindingRules:
        station_of = {
            (dev.name, p): cfg.station_of(dev, p) for dev in cfg.devices for p in dev.point_names()
        }
        context_of: dict[PointKey, list[tuple[str, str]]] = {}
        scans_of: dict[tuple[str, str | None], list[str]] = {}
        trigger_of: dict[PointKey, list[str]] = {}
        for st in cfg.stations:
            for key, src in st.context.items():
                if src is not None:
                    context_of.setdefault((src.device, src.point), []).append((st.name, key))
            if st.scans is not None:
                for scan_src in st.scans.sources:
                    scans_of.setdefault((scan_src.device, scan_src.point), []).append(st.name)
            if st.part is not None:
                trig = st.part.trigger
                trigger_of.setdefault((trig.device, trig.point), []).append(st.name)
        return cls(
            station_of=station_of,
            context_of={k: tuple(v) for k, v in context_of.items()},
            station_keys={st.name: st.context_keys() for st in cfg.stations},
            scans_of={k: tuple(v) for k, v in scans_of.items()},
            scan_rules={
                st.name: tuple(st.scans.rules) for st in cfg.stations if st.scans is not None
            },
            trigger_of={k: tuple(v) for k, v in trigger_of.items()},
            parts={st.name: st.part for st in cfg.stations if st.part is not None},
        )

    def empty_contexts(self) -> dict[str, Context]:
        """Every station with every configured key unset (``None``)."""
        return {st: MappingProxyType(dict.fromkeys(keys)) for st, keys in self.station_keys.items()}

    def initial_state(self) -> State:
        return {st: StationState(ctx) for st, ctx in self.empty_contexts().items()}

    def scan_stations(self, obs: Observation) -> tuple[str, ...]:
        return self.scans_of.get((obs.device, obs.point)) or self.scans_of.get(
            (obs.device, None), ()
        )


def context_value(value: Value) -> Value:
    """Normalise a value that identifies something: strings trimmed, empty means unset
    (PLCs clear the serial register between parts)."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


# ---- observations ------------------------------------------------------------------------


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


def _station(state: State, name: str) -> StationState:
    st = state.get(name)
    if st is None:
        st = state[name] = StationState(_EMPTY)
    return st


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
                    _set_context(
                        _station(state, station), station, key, value, obs.ts, source, step
                    )
            scan_stations = rules.scan_stations(obs) if rules.scans_of else ()
            if scan_stations:
                consumed.add(i)
                for station in scan_stations:
                    _scan(_station(state, station), station, obs, rules, step)
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
    for body in (*done, *groups.values()):
        step.drafts.append(RecordDraft(body["station"], RecordKind.READINGS, body))
    if rules.trigger_of:
        for obs in response:
            for station in rules.trigger_of.get((obs.device, obs.point), ()):
                _trigger(_station(state, station), station, obs, rules.parts[station], step)


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


def _set_context(
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
) -> None:
    """A scan is always recorded (accepted, unclassified or rejected); an accepted one may
    then set context keys and record a consumption."""
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
        step.drafts.append(RecordDraft(station, RecordKind.SCAN, body))
        return
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
    step.drafts.append(RecordDraft(station, RecordKind.SCAN, body))
    if scan.status != "accepted":
        return
    source = {"device": obs.device, "point": obs.point, "rule": scan.rule}
    for key, value in scan.context.items():
        _set_context(st, station, key, context_value(value), obs.ts, source, step)
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


# ---- triggers, snapshots and the handshake -----------------------------------------------


def _trigger(
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
    st = _station(state, station)
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
    for name in capture.points:
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


# ---- manual context and restart ----------------------------------------------------------


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
    st = _station(state, station)
    source: dict[str, Any] = {"manual": True, "user": user}
    for key, value in values.items():
        _set_context(st, station, key, context_value(value), ts, source, step)
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
        st = _station(state, station)
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


class Binder:
    """Owns the stations' state between calls; every call returns records and actions."""

    def __init__(self, rules: BindingRules, state: State | None = None) -> None:
        self.rules = rules
        self.state: State = state if state is not None else rules.initial_state()

    @property
    def contexts(self) -> dict[str, Context]:
        return {name: st.ctx for name, st in self.state.items()}

    def feed(self, batch: Sequence[Observation]) -> Step:
        return bind(self.state, batch, self.rules)

    def complete(
        self, capture: Capture, snapshot: Sequence[Observation] | None, error: str | None
    ) -> Step:
        return complete(self.state, capture, snapshot, error, self.rules)

    def set_context(
        self, station: str, values: Mapping[str, Value], *, ts: float, user: str | None
    ) -> Step:
        return set_manual(self.state, station, values, self.rules, ts=ts, user=user)

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

    def handshake_failed(self, station: str) -> None:
        """A "data taken" write failed: start over, so the next poll that sees data ready
        captures again (and the counter tells it is the part already recorded)."""
        st = self.state.get(station)
        if st is not None:
            st.handshake = Handshake.IDLE
