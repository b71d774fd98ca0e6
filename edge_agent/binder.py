"""Station binding: every observation becomes a record stamped with the context
(serial, lot, ...) that was true when the value was taken.

``bind`` is a pure function of (contexts, observations, rules) so it is tested with tables and
no I/O; ``Binder`` only keeps the current contexts between calls. All observations of the
agent pass through one Binder in arrival order, which is the single order that decides which
serial a reading belongs to (invariant 3); wall-clock time plays no part in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from edge_agent.model import Observation, Quality, RecordDraft, RecordKind, Value, iso_utc

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

Context = Mapping[str, Value]
"""One station's context. Never mutated: a change makes a new mapping, so records may keep a
reference to the context they were bound to without copying it."""

PointKey = tuple[str, str]  # (device, point)


@dataclass(frozen=True)
class BindingRules:
    """What the YAML says about binding, indexed for the hot path."""

    station_of: Mapping[PointKey, str]
    context_of: Mapping[PointKey, tuple[tuple[str, str], ...]]  # -> ((station, key), ...)
    station_keys: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> BindingRules:
        station_of = {
            (dev.name, p.name): cfg.station_of(dev, p.name)
            for dev in cfg.devices
            for p in dev.points
        }
        context_of: dict[PointKey, list[tuple[str, str]]] = {}
        for st in cfg.stations:
            for key, src in st.context.items():
                context_of.setdefault((src.device, src.point), []).append((st.name, key))
        return cls(
            station_of=station_of,
            context_of={k: tuple(v) for k, v in context_of.items()},
            station_keys={st.name: tuple(st.context) for st in cfg.stations},
        )

    def empty_contexts(self) -> dict[str, Context]:
        """Every station with every configured key unset (``None``)."""
        return {st: MappingProxyType(dict.fromkeys(keys)) for st, keys in self.station_keys.items()}


UNASSIGNED = "_unassigned"


def context_value(value: Value) -> Value:
    """Normalise a value that identifies something: strings trimmed, empty means unset
    (PLCs clear the serial register between parts)."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def bind(
    contexts: Mapping[str, Context], batch: Sequence[Observation], rules: BindingRules
) -> tuple[Mapping[str, Context], list[RecordDraft]]:
    """Bind a batch of observations, in order.

    A batch may hold several device responses (one poll of a group spanning several
    requests); a response is a run of consecutive observations with the same ``ts``. Within
    one response, context sources are applied before the readings: they were read in the
    same instant, so those readings belong to the new part. Across responses, order decides.
    A context source that reads BAD leaves the context as it was (the part mid-cycle keeps
    its serial) and is recorded as a BAD reading, so the gap is visible.

    Returns the new contexts (the same object if nothing changed) and the records, in order.
    """
    drafts: list[RecordDraft] = []
    start = 0
    for i in range(1, len(batch) + 1):
        if i == len(batch) or batch[i].ts != batch[start].ts:
            contexts = _bind_response(contexts, batch[start:i], rules, drafts)
            start = i
    return contexts, drafts


def _bind_response(
    contexts: Mapping[str, Context],
    response: Sequence[Observation],
    rules: BindingRules,
    drafts: list[RecordDraft],
) -> Mapping[str, Context]:
    current: dict[str, Context] | None = None  # copied on first change only
    context_of = rules.context_of
    for obs in response:
        targets = context_of.get((obs.device, obs.point))
        if not targets or obs.quality is not Quality.GOOD:
            continue
        value = context_value(obs.value)
        for station, key in targets:
            ctx = (current or contexts).get(station, MappingProxyType({}))
            previous = ctx.get(key)
            if previous == value and key in ctx:
                continue
            new_ctx = MappingProxyType({**ctx, key: value})
            if current is None:
                current = dict(contexts)
            current[station] = new_ctx
            drafts.append(
                RecordDraft(
                    station,
                    RecordKind.CONTEXT,
                    {
                        "kind": RecordKind.CONTEXT.value,
                        "station": station,
                        "ts": iso_utc(obs.ts),
                        "key": key,
                        "value": value,
                        "previous": previous,
                        "source": {"device": obs.device, "point": obs.point},
                        "ctx": new_ctx,
                    },
                )
            )
    now: Mapping[str, Context] = contexts if current is None else current
    station_of = rules.station_of
    for obs in response:
        pk = (obs.device, obs.point)
        if pk in context_of and obs.quality is Quality.GOOD:
            continue  # became a context record above (if it changed anything)
        station = station_of.get(pk, UNASSIGNED)
        body: dict[str, Any] = {
            "kind": RecordKind.READING.value,
            "station": station,
            "ts": iso_utc(obs.ts),
            "device": obs.device,
            "point": obs.point,
            "value": obs.value,
            "quality": obs.quality.value,
            "ctx": now.get(station, MappingProxyType({})),
        }
        if obs.unit is not None:
            body["unit"] = obs.unit
        if obs.source_ts is not None:
            body["source_ts"] = iso_utc(obs.source_ts)
        if obs.error is not None:
            body["error"] = obs.error
        drafts.append(RecordDraft(station, RecordKind.READING, body))
    return now


class Binder:
    """Holds the stations' current contexts between batches."""

    def __init__(self, rules: BindingRules, contexts: Mapping[str, Context] | None = None) -> None:
        self.rules = rules
        self.contexts: Mapping[str, Context] = (
            contexts if contexts is not None else rules.empty_contexts()
        )

    def feed(self, batch: Sequence[Observation]) -> list[RecordDraft]:
        self.contexts, drafts = bind(self.contexts, batch, self.rules)
        return drafts
