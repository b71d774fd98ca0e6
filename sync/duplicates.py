"""Another agent running with this agent's id: seen on our own retained status topic
(docs/operator.md, ``duplicate_agent``).

Every agent publishes its status (retained, with its Last Will) on
``<prefix>/<site>/<line>/<agent>/status``, naming its journal and epoch; it also subscribes to
that topic. A status from another epoch is proof that another journal runs under our id only
if it was published while we run:

- a status someone publishes while we are subscribed (not the retained copy sent when we
  subscribe) saying ``online``: it is running now;
- the retained status we find when we (re)connect, from another epoch, on two connections
  after the broker had acknowledged our own ``online`` status. Had the other agent been gone,
  ours would have been the last word; another one replaced it since, twice. This is how two
  PCs that share the client id as well are caught: each connection takes the other's over, so
  they are never connected at the same time, and the broker publishes each one's Last Will
  when the other takes over.

A retained status of another epoch from before we ever published (the previous journal of a
re-imaged PC, our own previous run) proves nothing and is ignored.

While the alarm is up the agent republishes its status every ``HEARTBEAT`` seconds, so each of
the two keeps seeing the other, and it connects with a client id of its own (the journal id
appended), so that the two stop taking each other's connection over and both deliver. The
alarm clears ``QUIET`` seconds after the last sign of the other.

Owned by the event loop.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kernel.alarms import Alarms

log = logging.getLogger("sync.mqtt")

HEARTBEAT = 15.0
"""Seconds between two status messages while the alarm is up."""
QUIET = 60.0
"""Seconds without a sign of the other agent before the alarm clears."""


class DuplicateWatch:
    def __init__(
        self, agent: str, journal: str, epoch: str, alarms: Alarms, clock: Any = time.monotonic
    ) -> None:
        self.agent = agent
        self.journal = journal
        self.epoch = epoch
        self.alarms = alarms
        self.seen_once = False  # ever raised in this run: keep our own client id from now on
        self._clock = clock
        self._published = False  # the broker acknowledged our "online" status at least once
        self._connection = 0
        self._sightings: dict[str, set[int]] = {}  # other epoch -> connections it was on
        self._last_sign: float | None = None

    @property
    def active(self) -> bool:
        return self.alarms.is_active("duplicate_agent")

    def connected(self) -> None:
        self._connection += 1

    def acknowledged(self) -> None:
        """The broker has our ``online`` status."""
        self._published = True

    def status(self, body: Any, retained: bool) -> None:
        """A message on our status topic."""
        if not isinstance(body, dict) or body.get("agent") != self.agent:
            return
        epoch = body.get("epoch")
        epoch = epoch if isinstance(epoch, str) else ""  # an agent of the previous version
        if epoch == self.epoch:
            return  # our own (an echo, or our Last Will from an earlier connection)
        if not retained:
            if body.get("state") == "online":
                self._sign(body)
            return
        if not self._published:
            return  # from before we said anything: proves nothing
        seen = self._sightings.setdefault(epoch, set())
        seen.add(self._connection)
        if len(seen) >= 2:
            self._sign(body)

    def expire(self) -> None:
        """Clear the alarm once the other agent has not shown for ``QUIET`` seconds."""
        last = self._last_sign
        if last is not None and self.active and self._clock() - last >= QUIET:
            self._sightings.clear()
            self.alarms.clear(
                "duplicate_agent", f"no other agent seen with the id {self.agent!r} for a while"
            )

    def _sign(self, body: dict[str, Any]) -> None:
        self._last_sign = self._clock()
        self.seen_once = True
        other = body.get("epoch") or "(an agent of the previous version)"
        host = body.get("host")
        self.alarms.raise_(
            "duplicate_agent",
            f"another agent runs with this agent id {self.agent!r}: journal "
            f"{body.get('journal') or '?'} epoch {other}"
            + (f" on host {host!r}" if isinstance(host, str) else "")
            + f" (this one: journal {self.journal} epoch {self.epoch}). The records of both "
            "are kept apart by the trace store, nothing is lost; give one of the PCs its own "
            "agent.id and restart it",
        )
