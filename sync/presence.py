"""The agent's own retained status topic (docs/wire-format.md, "Agent status topic"): online
with its active alarms and what its journal holds while connected (again every
``STATUS_EVERY``, so the trace store's Lines page sees the journal drain or grow), offline on
a clean stop (the Last Will says so when the connection just dies), and, while another agent
with our id is about, a heartbeat so each notices the other (``duplicates.py``). Owned by the
event loop, like the rest of sync."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from buffer.journal import Journal
from kernel.alarms import Alarms
from kernel.errors import SyncError
from sync.config import MqttConfig
from sync.duplicates import DuplicateWatch
from sync.link import CLOSE_GRACE, Link
from sync.wire import status_payload

log = logging.getLogger("sync.mqtt")

HOST = socket.gethostname()
STATUS_EVERY = 4
"""Heartbeats (``HEARTBEAT``, 15 s) between two online statuses: one a minute."""


class Presence:
    """What this agent says about itself on ``status_topic``, and what it hears there."""

    def __init__(
        self,
        config: MqttConfig,
        agent_id: str,
        status_topic: str,
        buffer: Journal,
        alarms: Alarms,
        current: Callable[[], Link | None],
    ) -> None:
        self.config = config
        self.agent_id = agent_id
        self.topic = status_topic
        self._buffer = buffer
        self._alarms = alarms
        self._current = current  # the connection in use, if any
        self.dups: DuplicateWatch | None = None
        """Made in ``start`` from the journal's identity (the journal is open by then)."""
        self._beats = 0

    def start(self) -> None:
        identity = self._buffer.identity
        self.dups = DuplicateWatch(self.agent_id, identity.journal, identity.epoch.id, self._alarms)
        self._alarms.subscribe(self.alarms_changed)

    def stop(self) -> None:
        self._alarms.unsubscribe(self.alarms_changed)

    def who(self) -> dict[str, str]:
        """What the status says about this journal and PC (the duplicate-agent check)."""
        identity = self._buffer.identity
        return {"journal": identity.journal, "epoch": identity.epoch.id, "host": HOST}

    def will(self) -> tuple[str, bytes] | None:
        """The Last Will: offline, should the connection die without a goodbye."""
        if not self.config.status:
            return None
        payload = status_payload(self.agent_id, "offline", reason="connection lost", **self.who())
        return (self.topic, payload)

    def heard(self, body: Any, retained: bool) -> None:
        """A status message on our topic: ours, or another agent's with our id."""
        if self.dups is not None:
            self.dups.status(body, retained)

    def beat(self) -> None:
        """Every HEARTBEAT: while another agent with our id is about, say we are here; and
        every ``STATUS_EVERY`` beats anyway, with what the journal holds now."""
        dups = self.dups
        assert dups is not None
        dups.expire()
        self._beats += 1
        due = dups.active or self._beats % STATUS_EVERY == 0
        link = self._current()
        if due and link is not None and link.connected.done() and self.config.status:
            with contextlib.suppress(SyncError):
                self.publish(link)

    def publish(self, link: Link) -> None:
        alarms = [a.as_dict() for a in self._alarms.active()]
        payload = status_payload(
            self.agent_id, "online", alarms=alarms, held=self._buffer.depth, **self.who()
        )
        done = link.publish_retained(self.topic, payload)
        done.add_done_callback(self._done)

    def _done(self, done: asyncio.Future[None]) -> None:
        if done.cancelled():
            return
        if done.exception() is not None:
            log.warning("status message not delivered: %s", done.exception())
        elif self.dups is not None:
            self.dups.acknowledged()

    def alarms_changed(self) -> None:
        link = self._current()
        if link is not None and self.config.status and link.connected.done():
            with contextlib.suppress(SyncError):
                self.publish(link)

    async def say_offline(self, link: Link) -> None:
        """Before a clean disconnect (which suppresses the Last Will): say so ourselves."""
        if link.lost.done():
            return
        try:
            done = link.publish_retained(
                self.topic,
                status_payload(
                    self.agent_id,
                    "offline",
                    reason="stopped",
                    held=self._buffer.depth,
                    **self.who(),
                ),
            )
            async with asyncio.timeout(CLOSE_GRACE):
                await done
        except (SyncError, TimeoutError) as exc:
            log.warning("could not publish the offline status: %s", exc)
