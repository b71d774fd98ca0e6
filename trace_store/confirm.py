"""What the store tells each agent: its retained confirmation (docs/wire-format.md,
"Confirmation protocol").

One retained message per agent id, on ``<prefix>/<site>/<line>/<agent>/confirmed``:

- ``seq``: the watermark of the legacy epoch (what agents of the previous version read);
- ``epochs``: the watermark of each of the agent's recent epochs (``MAX_EPOCHS``, the most
  recently active first). Several journals under one agent id (two PCs) each find theirs;
- ``session``: changes whenever the store's broker session was lost (the broker crashed and
  came back without it, or forgot it): records an agent published while the store had no
  session reached nobody, and an agent that sees the value change sends again from its
  watermark at once instead of after ``confirm_timeout``.

Owned by the store's writer thread, like the range tracker it reads.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable

from trace_store.config import StoreConfig
from trace_store.envelope import LEGACY_EPOCH, Stream
from trace_store.link import Link, Marks
from trace_store.ranges import RangeTracker
from trace_store.storage import StreamState, utc_now

CONFIRM_SCHEMA = "edge-agent.confirm"
CONFIRM_VERSION = 1
MAX_EPOCHS = 64
"""Epochs per confirmation: far more than an agent has rows in (usually one or two). An older
epoch whose records arrive again (a journal restored from a backup) is active again and in."""
SESSION_KEY = "broker_session"
"""The ``meta`` key the session value is kept under, so a store restart whose broker session
survived keeps it (nothing was lost, nobody needs to resend)."""


def new_session() -> str:
    return secrets.token_hex(8)


class Confirmations:
    """Per agent: where it is (site, line), its recently active epochs, when its confirmation
    was last published, and whether a new one is due."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.sites: dict[str, tuple[str, str]] = {}  # agent -> (site, line), last seen
        self.pending: set[str] = set()  # agents whose confirmation waits to be published
        self.session = ""
        self.link: Link | None = None  # where confirmations go (the current connection)
        self._last_sent: dict[str, float] = {}  # agent -> monotonic time of the last publish
        self._active: dict[str, dict[str, int]] = {}  # agent -> epoch -> activity tick
        self._tick = 0

    def load(self, streams: Iterable[StreamState]) -> None:
        """What the database knows: every agent's place and its epochs, by recent activity."""
        self.sites = {}
        self._active = {}
        for s in sorted(streams, key=lambda s: s.updated_at):
            self.sites[s.agent] = (s.site, s.line)
            if s.epoch != LEGACY_EPOCH:
                self.touch(s.agent, s.epoch)

    def touch(self, agent: str, epoch: str) -> bool:
        """An epoch of ``agent`` was active; True if it was not in its confirmation before."""
        if epoch == LEGACY_EPOCH:
            return False
        self._tick += 1
        active = self._active.setdefault(agent, {})
        new = epoch not in active
        active[epoch] = self._tick
        if len(active) > MAX_EPOCHS:
            del active[min(active, key=active.__getitem__)]
        return new

    def due_in(self) -> float | None:
        """Seconds until the next coalesced confirmation is due (None: nothing pending)."""
        if not self.pending:
            return None
        interval = self.config.confirm_interval
        due = min(self._last_sent.get(agent, -interval) + interval for agent in self.pending)
        return max(0.0, due - time.monotonic())

    def flush(self, tracker: RangeTracker, force: bool) -> None:
        """Publish the confirmations that are due (all pending ones with ``force``)."""
        if not self.pending:
            return
        link = self.link
        if link is None or not link.usable:
            # Nobody to tell now; the next connection republishes every watermark.
            self.pending.clear()
            return
        now = time.monotonic()
        interval = self.config.confirm_interval
        for agent in sorted(self.pending):
            if force or now - self._last_sent.get(agent, -interval) >= interval:
                self.pending.discard(agent)
                self.publish(link, agent, tracker, now)

    def publish_all(self, link: Link, tracker: RangeTracker) -> None:
        """A new connection: (re)publish every agent's confirmation, so the retained message is
        right even if the broker lost it, and nothing coalesced is left behind."""
        self.link = link
        self.pending.clear()
        now = time.monotonic()
        agents = {agent for (agent, _), w in tracker.watermarks().items() if w > 0}
        for agent in sorted(agents):
            self.publish(link, agent, tracker, now)

    def publish(self, link: Link, agent: str, tracker: RangeTracker, now: float) -> None:
        site_line = self.sites.get(agent)
        if site_line is None:
            return
        payload, marks = self.payload(agent, tracker)
        self._last_sent[agent] = now
        # If the link just died this goes nowhere; the next connection republishes.
        topic = self.config.confirm_topic(*site_line, agent)
        link.publish_confirmation(topic, payload, agent, marks)

    def payload(self, agent: str, tracker: RangeTracker) -> tuple[bytes, Marks]:
        legacy: Stream = (agent, LEGACY_EPOCH)
        marks: Marks = {legacy: tracker.watermark(legacy)}
        active = self._active.get(agent, {})
        epochs: dict[str, int] = {}
        for epoch in sorted(active, key=active.__getitem__, reverse=True):
            epochs[epoch] = marks[(agent, epoch)] = tracker.watermark((agent, epoch))
        body = {
            "schema": CONFIRM_SCHEMA,
            "v": CONFIRM_VERSION,
            "agent": agent,
            "seq": marks[legacy],
            "epochs": epochs,
            "session": self.session,
            "store": self.config.store_id,
            "ts": utc_now(),
        }
        return json.dumps(body, separators=(",", ":")).encode(), marks
