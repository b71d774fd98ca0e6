"""What the YAML says about binding, indexed for the hot path, and what each station knows
between two calls (its context, trigger level, handshake stage, part counter)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from edge_agent.gate.config import GateConfig
from edge_agent.gate.decide import Remote
from edge_agent.scan import ScanRule
from kernel.model import Observation, Quality, RecordDraft, RecordKind, Value

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
    # Last level of each point that triggers a reader of this station (part present).
    levels: dict[PointKey, Value | _Unseen] = field(default_factory=dict)
    # The gate: scans waiting for the trace store's route answer (the first one asked), in
    # arrival order, and whether the interlock is up (None: unknown, after a start).
    held: list[Observation] = field(default_factory=list)
    interlock: bool | None = None

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
    # More devices read at the same trigger, (device, points) each (a scale's weight).
    also: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def all_points(self) -> tuple[str, ...]:
        """Every point of the part record: the snapshot's, then those of ``also``."""
        return (*self.points, *(p for _, points in self.also for p in points))


@dataclass(frozen=True, slots=True)
class WriteTaken:
    """Action: write the handshake's "data taken" bit. Only ever after the part record it
    confirms is committed (the daemon flushes the journal first)."""

    station: str
    device: str
    point: str
    value: bool


@dataclass(frozen=True, slots=True)
class Acknowledge:
    """Action: tell the reader of a scan whether it was accepted (good read) or not (bad
    read). Only ever after the scan's record is committed (the daemon flushes the journal
    first): the operator's beep then means "recorded"."""

    station: str
    device: str
    point: str
    accepted: bool


@dataclass(frozen=True, slots=True)
class TriggerRead:
    """Action: ask ``device`` (a fixed-mount reader) to read now; the point it was asked for
    by rose."""

    station: str
    device: str


@dataclass(frozen=True, slots=True)
class WriteInterlock:
    """Action: write the gate's interlock point (``value``: refused, or released)."""

    station: str
    device: str
    point: str
    value: bool | int


@dataclass(frozen=True, slots=True)
class AskRoute:
    """Action: ask the trace store about ``serial`` at each of ``checks``' stations, then
    call ``Binder.answered``; the station's scans wait (``StationState.held``) until then."""

    station: str
    serial: str
    checks: tuple[Remote, ...]


Action = Capture | WriteTaken | Acknowledge | TriggerRead | WriteInterlock | AskRoute


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
    acknowledged: frozenset[PointKey] = frozenset()  # scans whose reader wants an answer
    # trigger point -> ((station, reader device), ...) read on its rising edge
    read_triggers: Mapping[PointKey, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    max_serials: int = MAX_SERIALS
    gates: Mapping[str, GateConfig] = field(default_factory=dict)
    line: str = ""

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> BindingRules:
        station_of = {
            (dev.name, p): cfg.station_of(dev, p) for dev in cfg.devices for p in dev.point_names()
        }
        context_of: dict[PointKey, list[tuple[str, str]]] = {}
        scans_of: dict[tuple[str, str | None], list[str]] = {}
        trigger_of: dict[PointKey, list[str]] = {}
        read_triggers: dict[PointKey, list[tuple[str, str]]] = {}
        acknowledged: set[PointKey] = set()
        for dev in cfg.devices:
            for p in dev.point_names():
                if dev.acknowledges(p):
                    acknowledged.add((dev.name, p))
            reads_on = dev.read_trigger()
            if reads_on is not None:
                _, by_device, by_point = reads_on
                station = dev.station or UNASSIGNED
                read_triggers.setdefault((by_device, by_point), []).append((station, dev.name))
        for st in cfg.stations:
            for key, src in st.context.items():
                if src is not None:
                    context_of.setdefault((src.device, src.point), []).append((st.name, key))
            if st.scans is not None:
                for scan_src in st.scans.sources:
                    # A whole identification device means its scan points: an RFID reader's
                    # departures are readings, never scans that would set the serial again.
                    dev_cfg = next((d for d in cfg.devices if d.name == scan_src.device), None)
                    whole = scan_src.point is None and dev_cfg is not None
                    points: list[str | None] = (
                        list(dev_cfg.scan_points()) if whole and dev_cfg else []
                    )
                    for point in points or [scan_src.point]:
                        scans_of.setdefault((scan_src.device, point), []).append(st.name)
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
            acknowledged=frozenset(acknowledged),
            read_triggers={k: tuple(v) for k, v in read_triggers.items()},
            gates={st.name: st.gate for st in cfg.stations if st.gate is not None},
            line=cfg.agent.line,
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


def station_state(state: State, name: str) -> StationState:
    st = state.get(name)
    if st is None:
        st = state[name] = StationState(_EMPTY)
    return st

