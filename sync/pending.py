"""What the uplink waits for: the broker's PUBACKs of one connection (``Session``), and the
deletes of confirmed rows (``Deleter``). Owned by the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from buffer.journal import Journal

if TYPE_CHECKING:
    from sync.mqtt import SyncStatus

log = logging.getLogger("sync.mqtt")

DELETE_EVERY = 0.25
"""Seconds between two deletes of delivered rows (confirmations in between are gathered)."""


class Session:
    """Messages of one connection waiting for their PUBACK, keyed by paho message id.

    A fresh client restarts message ids at 1, so each connection has its own table: a late
    PUBACK of an old connection can never be matched to a message of a new one.
    """

    def __init__(
        self,
        max_inflight: int,
        on_acked: Callable[[list[int]], None],
        on_refused: Callable[[list[int], str], None],
    ) -> None:
        self.inflight: dict[int, list[int]] = {}
        self.window = asyncio.Semaphore(max_inflight)
        self._on_acked = on_acked
        self._on_refused = on_refused

    def acked(self, mid: int, refusal: str | None) -> None:
        seqs = self.inflight.pop(mid, None)
        if seqs is None:
            log.warning("PUBACK for unknown message id %d", mid)
            return
        self.window.release()
        if refusal is None:
            self._on_acked(seqs)
        else:
            self._on_refused(seqs, refusal)


class Deleter:
    """Deletes confirmed rows, one journal job at a time, coalescing confirmations that arrive
    while a delete runs. A delete is never cancelled half-way: the buffer adjusts ``depth``
    after the job returns."""

    def __init__(self, buffer: Journal, status: SyncStatus) -> None:
        self._buffer = buffer
        self._status = status
        self._pending: list[int] = []
        self._through = 0  # delete every row with seq <= this (confirm: store)
        self._done_through = 0
        self._last_delete = float("-inf")  # loop time the last delete started
        self._task: asyncio.Task[None] | None = None

    def add(self, seqs: list[int]) -> None:
        self._pending.extend(seqs)
        self._kick()

    def add_through(self, seq: int) -> None:
        if seq > self._through:
            self._through = seq
            self._kick()

    def _kick(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="mqtt-sync-delete")

    async def wait(self) -> None:
        """Until every confirmation received so far is deleted."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending or self._through > self._done_through:
                # Each delete is a durable commit of its own; a delivered row can wait a
                # moment, so confirmations are gathered for DELETE_EVERY between two deletes
                # (at 1k records/s this halves the journal's commits).
                pause = self._last_delete + DELETE_EVERY - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                self._last_delete = loop.time()
                if self._through > self._done_through:
                    through = self._through
                    try:
                        removed = await self._buffer.delete_through(through)
                    except Exception as exc:
                        # The rows stay; the next confirmation deletes them (never a loss).
                        log.exception("cannot delete records up to seq %d", through)
                        self._status.last_error = f"delete failed: {exc}"
                        break
                    self._done_through = through
                    self._status.confirmed_records += removed
                    self._status.last_confirmed_seq = max(self._status.last_confirmed_seq, through)
                    continue
                seqs, self._pending = self._pending, []
                try:
                    removed = await self._buffer.delete(seqs)
                except Exception as exc:
                    # The rows stay and go out again: a duplicate, never a loss.
                    log.exception("cannot delete %d delivered records", len(seqs))
                    self._status.last_error = f"delete failed: {exc}"
                    continue
                self._status.confirmed_records += removed
                self._status.last_confirmed_seq = max(self._status.last_confirmed_seq, *seqs)
        finally:
            self._task = None
