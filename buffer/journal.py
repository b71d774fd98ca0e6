"""What the rest of the agent may ask of a journal: the ``Journal`` protocol.

The daemon appends and waits for commits, restores station state at start and watches the
journal's health; sync reads in seq order and deletes what was confirmed. Both depend on this
protocol, never on a storage engine. ``SqliteBuffer`` (``buffer/sqlite.py``) is today's one
implementation; ``tests/test_journal.py`` is the suite every implementation passes.

Every member is used from the event loop and none may block it. The promises (invariants 1, 2
and 4 of the guide) are the same for any implementation:

- ``append`` gives each record the next seq, in call order, and never blocks; the seq is
  unique forever for this journal (also across restarts and deletes), and with the epoch it
  was appended in (``identity``) unique forever, whatever happens to the file;
- ``flush`` returns only once every record appended before it is durable;
- rows leave by ``delete``/``delete_through`` (after confirmation), or, telemetry only,
  by eviction under storage pressure, counted in ``stats()``.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kernel.model import RecordDraft

LEGACY_EPOCH = ""
"""The epoch of rows journaled by a version without journal identities: they go out without
an epoch, exactly as that version sent them, so a receiver that has them already knows them
by ``(agent, seq)`` (docs/delivery.md, "The journal's identity")."""


@dataclass(frozen=True, slots=True)
class Epoch:
    """One opening of a journal: the records appended from seq ``first`` until the journal
    was next opened. ``id`` is drawn at random when the journal is opened (32 hex digits), so
    ``(agent, epoch, seq)`` is unique forever whatever happens to the file: copied, restored
    from a backup, replaced."""

    id: str
    first: int


@dataclass(frozen=True, slots=True)
class JournalIdentity:
    """Who a journal is: ``journal``, the file's own id (made with the file, kept for its
    life), and its epochs in seq order; the last one is this opening's, where new records go."""

    journal: str
    epochs: tuple[Epoch, ...]

    @property
    def epoch(self) -> Epoch:
        return self.epochs[-1]

    def epoch_of(self, seq: int) -> Epoch:
        """The epoch a committed seq belongs to (the first one for a seq below all of them)."""
        i = bisect.bisect_right([e.first for e in self.epochs], seq) - 1
        return self.epochs[max(i, 0)]

    def end_of(self, epoch: Epoch) -> int | None:
        """The last seq ``epoch`` can hold (None for the open one: it still grows)."""
        later = [e.first for e in self.epochs if e.first > epoch.first]
        return min(later) - 1 if later else None

STATS_KEYS = frozenset(
    {
        "depth",
        "committed_seq",
        "appended",
        "committed_total",
        "queued",
        "telemetry_rows",
        "telemetry_bytes",
        "evicted_rows",
        "evicted_bytes",
        "evicted_first_seq",
        "evicted_last_seq",
        "dropped_readings",
        "full",
        "disk_state",
        "disk_free_bytes",
    }
)
"""Keys every ``Journal.stats()`` holds: the status page, ``edge-agent status`` and the MQTT
status topic read them. An implementation may add its own (``SqliteBuffer`` adds ``path``)."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A committed record as sync reads it. ``body`` is the wire JSON, ``seq`` included."""

    seq: int
    station: str
    kind: str
    body: str


class Journal(Protocol):
    """The durable, ordered journal of records, as the daemon and sync use it."""

    @property
    def committed_seq(self) -> int:
        """Every seq up to this is committed (or, a reading, given up for room)."""
        ...

    @property
    def depth(self) -> int:
        """Committed rows waiting for delivery: a gauge, kept without a query."""
        ...

    @property
    def new_data(self) -> asyncio.Event:
        """Set when a commit adds rows. Made at ``start``: read it anew, do not keep it."""
        ...

    @property
    def last_assigned_seq(self) -> int:
        """The last seq ``append`` gave out (committed or not): what the next append's first
        seq follows, so a caller can tell which seqs its append got."""
        ...

    async def start(self) -> None:
        """Open (or create) the journal; raises ``BufferError_`` if it cannot be used."""
        ...

    async def stop(self) -> None:
        """Commit everything appended so far and close. Idempotent."""
        ...

    def append(self, drafts: Sequence[RecordDraft]) -> int:
        """Queue records for commit, a seq each, in order; never blocks. Returns the last seq
        given out. Readings may be refused under storage pressure (no seq, counted)."""
        ...

    async def flush(self) -> int:
        """Wait until every record appended before this call is committed; returns
        ``committed_seq``. This is what an acknowledgement (PLC handshake) waits for."""
        ...

    async def read_batch(
        self,
        after_seq: int,
        max_records: int,
        max_bytes: int = 1 << 62,
        until_seq: int | None = None,
    ) -> list[StoredRecord]:
        """Committed records with ``after_seq < seq <= until_seq``, in seq order, bounded by
        count and bytes, at least one if any is waiting."""
        ...

    async def delete(self, seqs: Sequence[int]) -> int:
        """Drop delivered records; returns how many rows went."""
        ...

    async def delete_through(self, seq: int) -> int:
        """Drop every record with seq <= ``seq`` (a confirmed watermark); returns how many."""
        ...

    async def wait_empty(self) -> None:
        """Return once every committed record has been delivered and deleted."""
        ...

    async def load_state(
        self,
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, int]]]:
        """What the stations knew at the last commit: {station: state}, and per station the
        most recent serials with their part-record counts (oldest first)."""
        ...

    async def probe(self) -> None:
        """A round trip through whatever does the journal's work: the watchdog's liveness
        check. It does not return while that is stuck."""
        ...

    # ---- the station gate (docs/gate.md) ------------------------------------------------

    async def load_route_results(self, stations: list[str]) -> dict[str, dict[str, str | None]]:
        """Per station, the result of the latest part record of its most recent serials."""
        ...

    async def load_blocked(self) -> tuple[int, str] | None:
        """(version, payload) of the blocked set kept, or None."""
        ...

    async def save_blocked(self, version: int, payload: str) -> bool:
        """Keep this blocked set unless a newer one is kept already; whether it was written."""
        ...

    # ---- identity (docs/delivery.md, "The journal's identity") ---------------------------

    @property
    def identity(self) -> JournalIdentity:
        """The journal's id and epochs, fixed at ``start`` (and by ``rekey``)."""
        ...

    async def claim(self, agent: str) -> dict[str, tuple[int, int]]:
        """Record ``agent`` as the writer of this opening's epoch; returns, for every other
        agent id whose epochs still hold rows here, (rows, highest seq)."""
        ...

    async def rekey(self, epoch: str) -> JournalIdentity:
        """Give the rows of ``epoch`` a new random epoch id (durably): a receiver then takes
        them as records it never had, never as copies of what it holds under the old key."""
        ...

    def stats(self) -> dict[str, Any]:
        """Gauges and counters, at least ``STATS_KEYS``."""
        ...
