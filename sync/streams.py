"""The journal's epochs on the wire: which epoch each row is sent under, the ranges of each
message, and how far the trace store has confirmed (docs/wire-format.md, "Journal identity"
and "Confirmation protocol").

Each epoch is its own stream at the store: its own key space and its own watermark. Rows are
read from the journal in seq order across epochs; a read is cut where the epoch changes, and
each part carries its own range:

- the first part keeps the read's ``after``; a part that follows another starts where the
  epoch does (``epoch.first - 1``), and a part followed by another ends where its epoch ends.
  The parts of a read therefore still chain up without a hole, so a store of the previous
  version (which ignores epochs and keys by (agent, seq)) sees the ranges it always saw;
- a store of this version keeps one watermark per epoch, and the agent deletes, in seq order,
  every row up to the point below which everything is confirmed (``resume``).

Owned by the event loop.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from buffer.journal import LEGACY_EPOCH, Epoch, JournalIdentity, StoredRecord


@dataclass(frozen=True, slots=True)
class Segment:
    """The rows of one read that belong to one epoch, and the range they state."""

    epoch: Epoch
    records: list[StoredRecord]
    after: int
    last: int


class Streams:
    """The journal's epochs and the store's confirmations of them."""

    def __init__(self, identity: JournalIdentity) -> None:
        self.identity = identity
        self._acked: dict[str, int] = {}  # epoch id -> the store's watermark for it
        self._all: int | None = None  # a store of the previous version: one watermark
        self._settled = 0  # every seq up to this holds no row that waits for the store

    # ---- sending ------------------------------------------------------------------------

    def split(self, batch: Sequence[StoredRecord], after: int) -> list[Segment]:
        """Cut one read (every committed row in ``(after, batch[-1].seq]``) by epoch."""
        epochs = self.identity.epochs
        firsts = [e.first for e in epochs]
        i = max(bisect.bisect_right(firsts, batch[0].seq) - 1, 0)
        parts: list[tuple[Epoch, list[StoredRecord]]] = []
        start_at = 0
        while True:
            # Rows are in seq order: each epoch's share is one slice, found by bisection.
            end_at = len(batch)
            if i + 1 < len(epochs):
                end_at = bisect.bisect_left(batch, firsts[i + 1], start_at, key=_seq)
            if end_at > start_at:
                parts.append((epochs[i], list(batch[start_at:end_at])))
            if end_at >= len(batch):
                break
            start_at = end_at
            i += 1
        out: list[Segment] = []
        start = after
        for i, (epoch, records) in enumerate(parts):
            last = records[-1].seq
            if i + 1 < len(parts):
                last = parts[i + 1][0].first - 1  # this epoch ends there: claim it whole
            first = start if i == 0 else epoch.first - 1
            out.append(Segment(epoch, records, first, last))
            start = last
        return out

    # ---- confirmations --------------------------------------------------------------------

    def confirm(self, epoch: str, seq: int) -> None:
        """The store (this version) confirms ``epoch`` up to ``seq``."""
        self._all = None
        self._acked[epoch] = max(self._acked.get(epoch, 0), seq)

    def confirm_all(self, seq: int) -> None:
        """A store of the previous version confirms the whole journal up to ``seq``."""
        self._all = seq if self._all is None else max(self._all, seq)

    def settle(self, after: int, first_row: int | None, committed: int) -> None:
        """A read from ``after`` found its first row at ``first_row`` (None: none up to
        ``committed``): nothing waits in between. Only a read that starts at or below
        ``resume()`` says so about everything below it."""
        if after <= self.resume():
            self._settled = max(self._settled, (first_row - 1) if first_row else committed)

    def forget(self, epoch: str) -> None:
        """``epoch`` was renamed (its rows got a new id): its confirmations no longer apply."""
        self._acked.pop(epoch, None)

    def acked(self, epoch: str) -> int:
        return self._acked.get(epoch, 0)

    def resume(self) -> int:
        """The seq below which every row is confirmed (or gone): where publishing starts
        again, and what may be deleted."""
        if self._all is not None:
            return max(self._all, self._settled)
        epochs = self.identity.epochs
        g = self._settled
        for i, epoch in enumerate(epochs):
            end = epochs[i + 1].first - 1 if i + 1 < len(epochs) else None
            if end is not None and end <= g:
                continue
            done = max(g, epoch.first - 1, self._acked.get(epoch.id, 0))
            if end is None or done < end:
                return done
            g = end
        return g

    def legacy_end(self) -> int | None:
        """The last seq of the legacy epoch, if this journal still has one."""
        epochs = self.identity.epochs
        if len(epochs) > 1 and epochs[0].id == LEGACY_EPOCH:
            return epochs[1].first - 1
        return None


def _seq(record: StoredRecord) -> int:
    return record.seq
