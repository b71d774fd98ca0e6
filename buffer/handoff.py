"""Everything that crosses between the event loop and the journal's thread, in one place.

- ``Inbox`` (loop -> thread): appended records with their seqs, jobs (queries, deletes),
  "someone waits" and "closing". Every field is guarded by ``Inbox.lock``; the thread sleeps
  on ``Inbox.wake`` and the loop notifies it.
- ``Outbox`` (thread -> loop): what the thread learnt (a commit, rows gone, an alarm, a
  failure) is posted to the loop with ``call_soon_threadsafe`` and applied there, so the loop's
  own state (``committed_seq``, ``depth``, waiters) is only ever touched by the loop.

Besides these, the thread's counters (telemetry totals, evictions, free space) are plain
values the loop may read at any time (``stats()``): written by one thread, torn reads are
impossible under the GIL and a value one commit old is fine for a gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from buffer.policy import TELEMETRY
from kernel.model import RecordDraft

Item = tuple[int, RecordDraft]
"""A record with its seq, on its way to the file."""
Job = Callable[[sqlite3.Connection], Any]
"""Work run on the journal's thread with its connection (a query, a delete)."""


class Inbox:
    """Loop -> thread. Hold ``lock`` for every field, on either side."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.pending: deque[Item] = deque()
        self.pending_since = 0.0  # when the oldest pending record was appended
        self.urgent = False  # pending holds a trace record, or someone waits in flush()
        self.jobs: deque[tuple[Job, Future[Any]]] = deque()
        self.closing = False
        self.next_seq = 1
        self.appended = 0
        # Readings are refused at append while this names why (set by the thread).
        self.refuse: str | None = None
        # new seq -> (damaged journal, old seq) of salvaged records not committed yet.
        self.salvage_keys: dict[int, tuple[str, int]] = {}

    # ---- called on the loop ----------------------------------------------------------

    def put(
        self, drafts: Sequence[RecordDraft], origins: Sequence[tuple[str, int]] | None
    ) -> tuple[int, int, str | None]:
        """Give ``drafts`` their seqs and queue them. Returns (the next seq to give out,
        readings refused, why they were refused)."""
        dropped = 0
        urgent = any(d.kind not in TELEMETRY for d in drafts)
        with self.lock:
            seq = self.next_seq
            reason = self.refuse
            # The writer needs waking only for the first record or a trace record: telemetry
            # joining a waiting batch is picked up when the linger ends.
            wake = urgent or not self.pending
            if not self.pending:
                self.pending_since = time.monotonic()
            self.urgent = self.urgent or urgent
            if reason is None and origins is None:  # the hot path: every record, a seq each
                self.pending.extend(zip(range(seq, seq + len(drafts)), drafts, strict=True))
                seq += len(drafts)
            else:
                for i, d in enumerate(drafts):
                    if reason is not None and d.kind in TELEMETRY:
                        dropped += 1
                        continue
                    self.pending.append((seq, d))
                    if origins is not None:
                        # Registered under the lock, before the writer can take this seq.
                        self.salvage_keys[seq] = origins[i]
                    seq += 1
            self.next_seq = seq
            self.appended += len(drafts) - dropped
            if wake:
                self.wake.notify()
        return seq, dropped, reason

    def submit(self, job: Job, fut: Future[Any]) -> None:
        with self.lock:
            self.jobs.append((job, fut))
            self.wake.notify()

    def urge(self) -> None:
        """Somebody waits for a commit: no lingering."""
        with self.lock:
            self.urgent = True
            self.wake.notify()

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.wake.notify()

    # ---- called on the journal's thread ------------------------------------------------

    def requeue(self, items: list[Item]) -> None:
        with self.lock:
            self.pending.extendleft(reversed(items))

    def settled_seq(self) -> int:
        """Every seq up to this is committed or (a reading) given up: what flush waits for."""
        with self.lock:
            return self.pending[0][0] - 1 if self.pending else self.next_seq - 1

    def set_refusal(self, reason: str | None) -> None:
        with self.lock:
            self.refuse = reason

    def take_telemetry(self) -> tuple[list[Item], int]:
        """Take the queued readings out (the journal is full); returns them and how many
        records (trace) are left waiting."""
        with self.lock:
            queued = [item for item in self.pending if item[1].kind in TELEMETRY]
            if queued:
                self.pending = deque(i for i in self.pending if i[1].kind not in TELEMETRY)
            return queued, len(self.pending)

    def take_all(self) -> list[Item]:
        with self.lock:
            items = list(self.pending)
            self.pending.clear()
        return items

    def take_jobs(self) -> list[tuple[Job, Future[Any]]]:
        with self.lock:
            jobs = list(self.jobs)
            self.jobs.clear()
        return jobs

    def salvaged_in(self, batch: list[Item]) -> list[tuple[str, int, int]]:
        """(damaged journal, old seq, new seq) of the salvaged records in ``batch``."""
        if not self.salvage_keys:
            return []
        # Appended under the lock before this batch was taken: no race on these seqs.
        with self.lock:
            keys = self.salvage_keys
            return [(*keys[s], s) for s, _ in batch if s in keys]

    def forget_salvaged(self, seqs: Sequence[int]) -> None:
        """Committed (or, dropped: a later salvage run tries again)."""
        with self.lock:
            for seq in seqs:
                self.salvage_keys.pop(seq, None)


class Outbox:
    """Thread -> loop. Calls are posted to the loop and run there, in order; once the loop
    is closed they are dropped (nobody is left to wait for them)."""

    def __init__(
        self,
        *,
        committed: Callable[[int, int], None],
        removed: Callable[[int], None],
        failed: Callable[[BaseException], None],
        raise_alarm: Callable[[str, str, int], None],
        drop_alarm: Callable[[str, str], None],
    ) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start(), before the thread
        self._committed = committed
        self._removed = removed
        self._failed = failed
        self._raise_alarm = raise_alarm
        self._drop_alarm = drop_alarm
        self.raised: set[str] = set()  # alarms this thread raised and has not cleared: thread's

    def post(self, fn: Callable[[], None]) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            # The loop may close between the check and the call.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn)

    def committed(self, settled: int, n: int) -> None:
        """Every seq up to ``settled`` is settled, ``n`` rows were added."""
        self.post(functools.partial(self._committed, settled, n))

    def removed(self, n: int) -> None:
        self.post(functools.partial(self._removed, n))

    def failed(self, exc: BaseException) -> None:
        self.post(functools.partial(self._failed, exc))

    def alarm(self, code: str, message: str, level: int) -> None:
        self.raised.add(code)
        self.post(functools.partial(self._raise_alarm, code, message, level))

    def clear_alarm(self, code: str, message: str) -> None:
        if code in self.raised:
            self.raised.discard(code)
            self.post(functools.partial(self._drop_alarm, code, message))
