"""Keeps the newest blocked set: from the journal at start, then from the trace store's
retained MQTT message on every connection. The gate decides from the copy in memory at once;
the journal's copy is written beside it (off the event loop) so that a restart with the
network down decides the same way. Owned by the event loop."""

from __future__ import annotations

import asyncio
import logging

from buffer import Journal
from edge_agent.gate.blocked import BlockedSet, Garbled, parse
from edge_agent.gate.decide import Gate
from kernel.errors import BufferError_

log = logging.getLogger("edge_agent.gate")


class BlockedKeeper:
    """Counts what it receives (metrics, status) and logs each kind of bad message once
    until a good set arrives, so a broken publisher cannot flood the log."""

    def __init__(self, gate: Gate, journal: Journal) -> None:
        self.gate = gate
        self._journal = journal
        self.received = 0
        self.applied = 0  # newer sets taken
        self.garbled = 0  # ignored: did not parse
        self.older = 0  # ignored: older than the one held
        self.since: float | None = None  # loop time when the held set was taken
        self._logged: set[str] = set()
        self._saves: set[asyncio.Task[None]] = set()

    @property
    def held(self) -> BlockedSet:
        return self.gate.blocked

    async def load(self) -> None:
        """Take the set the journal kept (before the devices start)."""
        row = await self._journal.load_blocked()
        if row is None:
            return
        version, payload = row
        try:
            self.gate.blocked = parse(payload)
        except Garbled as exc:  # written by us after parsing: only a damaged file does this
            log.error("blocked set kept in the journal (version %d) unreadable: %s", version, exc)
            return
        log.info(
            "blocked set version %d loaded from the journal (%d key(s))",
            version,
            self.gate.blocked.size(),
        )

    def message(self, payload: bytes, retained: bool) -> None:
        """A message on the blocked-set topic (called by the sync on the event loop)."""
        self.received += 1
        try:
            new = parse(payload)
        except Garbled as exc:
            self.garbled += 1
            self._once("garbled", "ignoring a blocked set that does not parse: %s", exc)
            return
        held = self.gate.blocked
        if new.version == held.version:
            return  # the retained copy of what we hold, on a reconnect
        if new.version < held.version:
            self.older += 1
            self._once(
                "older",
                "ignoring blocked set version %d: older than the one held (%d)",
                new.version,
                held.version,
            )
            return
        self.gate.blocked = new
        self.applied += 1
        self.since = asyncio.get_running_loop().time()
        self._logged.clear()
        log.info(
            "blocked set version %d in force: %d lot(s), %d serial(s), %d product(s)",
            new.version,
            len(new.lots),
            len(new.serials),
            len(new.products),
        )
        task = asyncio.create_task(self._save(new.version, payload), name="gate-save-blocked")
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    async def _save(self, version: int, payload: bytes) -> None:
        try:
            await self._journal.save_blocked(version, payload.decode())
        except BufferError_ as exc:
            # In force in memory all the same; only a restart would fall back to the older.
            log.error("blocked set version %d not kept in the journal: %s", version, exc)

    async def close(self) -> None:
        """Let the saves in flight finish (before the journal stops)."""
        if self._saves:
            await asyncio.gather(*self._saves, return_exceptions=True)

    def _once(self, what: str, message: str, *args: object) -> None:
        level = logging.DEBUG if what in self._logged else logging.WARNING
        self._logged.add(what)
        log.log(level, message, *args)
