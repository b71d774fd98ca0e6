"""What the trace store tells other threads (metrics, the summary line, tests): counters,
watermarks committed and confirmed, and what it has seen of each agent. The writer and the
link keeper update it under ``_lock``; any thread reads it (``TraceStore`` inherits it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trace_store.envelope import LEGACY_EPOCH, Stream
from trace_store.writers import Clash


@dataclass(slots=True)
class AgentIngest:
    """What the store has seen of one agent (guarded by the store's lock). Seqs and
    watermarks are those of its current epoch: the one it began most recently."""

    epoch: str = LEGACY_EPOCH  # its current epoch
    received_seq: int = 0  # highest seq of an accepted message (or the stored watermark)
    last_arrival: float | None = None  # wall clock of its last accepted message, this run
    held: int = 0  # records held now, waiting for a gap below them
    clash: Clash | None = None  # two of its epochs last seen writing at once (this run)


@dataclass(frozen=True, slots=True)
class AgentView:
    """One agent as ``agent_stats`` shows it (its current epoch)."""

    received_seq: int
    watermark: int  # committed in the database
    confirmed: int  # acknowledged by the broker as the retained confirmation
    held_records: int
    last_arrival: float | None
    epoch: str = LEGACY_EPOCH
    clash: Clash | None = None


class StoreView:
    """The shared state and its readers."""

    def __init__(self) -> None:
        # Shared with other threads: guarded by _lock (stats, watermarks) or events.
        self._lock = threading.Condition()
        self._committed: dict[Stream, int] = {}
        self._published: dict[Stream, int] = {}
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "messages",
                "accepted",
                "rejected",
                "records",
                "inserted",
                "duplicates",
                "batches",
                "confirmations",
                "storage_failures",
                "connections",
                "disconnects",
                "held_records",
                "held_dropped",
                "conflicts",
                "clashes",
                "statuses",
                "statuses_ignored",
            ),
            0,
        )
        self._rejected: dict[str, int] = {}
        self._kinds: dict[str, int] = {}  # records of accepted messages by kind, on arrival
        self._agents: dict[str, AgentIngest] = {}

    def watermark(self, agent: str, epoch: str | None = None) -> int:
        """The watermark of the agent's ``epoch`` (by default its current one: the epoch it
        began most recently) as committed in the database."""
        with self._lock:
            return self._committed.get(self._stream(agent, epoch), 0)

    def confirmed(self, agent: str, epoch: str | None = None) -> int:
        """The highest watermark of the agent's ``epoch`` (by default its current one) the
        broker has acknowledged (PUBACK) from us: it holds it as the retained confirmation."""
        with self._lock:
            return self._published.get(self._stream(agent, epoch), 0)

    def epochs(self, agent: str) -> dict[str, int]:
        """Every epoch of ``agent`` the store knows, with its committed watermark."""
        with self._lock:
            return {e: w for (a, e), w in self._committed.items() if a == agent}

    def wait_watermark(
        self,
        agent: str,
        seq: int,
        timeout: float,
        *,
        published: bool = False,
        epoch: str | None = None,
    ) -> bool:
        """Wait until the watermark of the agent's ``epoch`` (by default its current one)
        reaches ``seq``: committed in the database, or with ``published``, acknowledged by the
        broker as the retained confirmation."""
        source = self._published if published else self._committed
        with self._lock:
            return self._lock.wait_for(
                lambda: source.get(self._stream(agent, epoch), 0) >= seq, timeout
            )

    def _stream(self, agent: str, epoch: str | None) -> Stream:
        if epoch is None:
            seen = self._agents.get(agent)
            epoch = seen.epoch if seen is not None else LEGACY_EPOCH
        return (agent, epoch)

    def wait_stats(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Wait until ``predicate(stats())`` holds; re-checked after every commit."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self._stats()), timeout)

    def stats(self) -> dict[str, Any]:
        """Counters since start: messages (acknowledged, held ones included), accepted,
        rejected (total and ``by_reason``), records (of accepted messages, on arrival;
        ``by_kind``), inserted, duplicates (records stored already: conflicts, held copies,
        records the watermark had passed), batches (transactions), confirmations
        (acknowledged by the broker), storage_failures, connections (successful), disconnects
        (failed attempts and lost connections), held_dropped (messages that would have exceeded
        ``max_held_records``, or released by a batch the database refused), conflicts (records
        whose key the database held for another record: kept aside, see ``keys.py``), clashes
        (times two journals were seen writing at once under one agent id, at most one per agent
        a minute). And one gauge: held_records (records held now, every agent)."""
        with self._lock:
            return self._stats()

    def _stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._counters)
        out["by_reason"] = dict(self._rejected)
        out["by_kind"] = dict(self._kinds)
        return out

    def agent_stats(self) -> dict[str, AgentView]:
        """Per agent known to this store: what arrived and what is confirmed (metrics)."""
        with self._lock:
            return {
                agent: AgentView(
                    received_seq=seen.received_seq,
                    watermark=self._committed.get((agent, seen.epoch), 0),
                    confirmed=self._published.get((agent, seen.epoch), 0),
                    held_records=seen.held,
                    last_arrival=seen.last_arrival,
                    epoch=seen.epoch,
                    clash=seen.clash,
                )
                for agent, seen in self._agents.items()
            }

    def _count(self, counter: str) -> None:
        with self._lock:
            self._counters[counter] += 1
            self._lock.notify_all()
