"""Messages set aside until the seqs below them are in (docs/trace-store.md, "In seq order").

An agent in ``confirm: store`` + ``in_order`` mode sends its journal in seq order and keeps
every row until the store's watermark ``W`` covers it. A message of such an agent whose range
starts above ``W`` (the message before it was lost, e.g. by a killed broker) is not committed:
the store keeps it here, parsed, and acknowledges it to the broker at once, so the broker's
in-flight window never fills with messages waiting for the resend that will fill the gap.
When ``W`` moves, the messages that became contiguous (``after <= W``) are committed in order
of ``after``. Losing them (a store restart, a bound reached) costs nothing but time: the agent
still has the rows and resends from ``W`` after its confirm timeout.

Owned by one thread (the store's writer). Nothing changes until the commit that releases
messages has succeeded: ``pending`` gives a read-only, ordered view, ``remove_first`` drops
what a commit released.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from trace_store.envelope import Accepted, Range, Stream

HeldKey = tuple[Range, tuple[str, int]]
"""A held message's identity: its range and its identity in it (station, first_seq). A
redelivery or a resend of the same read has the same key, so it is held only once."""


@dataclass(frozen=True, slots=True)
class Held:
    message: Accepted
    arrival: int  # ties in ``after`` keep arrival order

    @property
    def range(self) -> Range:
        rng = self.message.range
        assert rng is not None  # only messages with a range are held
        return rng

    @property
    def key(self) -> HeldKey:
        return (self.range, self.message.message_id)

    @property
    def records(self) -> int:
        return len(self.message.rows)

    def order(self) -> tuple[int, int]:
        return (self.range.after, self.arrival)


@dataclass(slots=True)
class _Agent:
    items: list[Held] = field(default_factory=list)  # sorted by (after, arrival)
    keys: set[HeldKey] = field(default_factory=set)
    records: int = 0


class HeldMessages:
    """Per stream (agent, epoch: the unit with its own seqs and watermark), the held messages
    in order of ``after``, at most ``max_records`` records."""

    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self._agents: dict[Stream, _Agent] = {}
        self._arrivals = 0
        self.records = 0  # over every agent

    def __contains__(self, agent: Stream) -> bool:
        return agent in self._agents

    def agents(self) -> Iterator[Stream]:
        return iter(self._agents)

    def holds(self, agent: Stream, key: HeldKey) -> bool:
        state = self._agents.get(agent)
        return state is not None and key in state.keys

    def records_of(self, agent: Stream) -> int:
        state = self._agents.get(agent)
        return state.records if state is not None else 0

    def pending(self, agent: Stream) -> Sequence[Held]:
        """The agent's held messages in order of ``after``; do not change it."""
        state = self._agents.get(agent)
        return state.items if state is not None else ()

    def wrap(self, message: Accepted) -> Held:
        """``message`` numbered in arrival order, ready to be sorted among held ones."""
        self._arrivals += 1
        return Held(message, self._arrivals)

    def add(self, held: Held) -> bool:
        """Hold ``held``; False (and nothing held) if its agent would exceed the bound. A
        message already held is not held twice (True: it is held)."""
        agent = held.message.stream
        state = self._agents.get(agent)
        if state is not None and held.key in state.keys:
            return True
        if (state.records if state is not None else 0) + held.records > self.max_records:
            return False
        if state is None:
            state = self._agents[agent] = _Agent()
        insort(state.items, held, key=Held.order)
        state.keys.add(held.key)
        state.records += held.records
        self.records += held.records
        return True

    def remove_first(self, agent: Stream, n: int) -> list[Held]:
        """Drop (and return) the agent's first ``n`` held messages: a commit released them,
        or they are below the watermark."""
        state = self._agents.get(agent)
        if state is None or n <= 0:
            return []
        gone = state.items[:n]
        del state.items[:n]
        for held in gone:
            state.keys.discard(held.key)
            state.records -= held.records
            self.records -= held.records
        if not state.items:
            del self._agents[agent]
        return gone
