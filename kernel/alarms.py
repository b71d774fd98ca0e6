"""Active alarms of one agent: conditions an operator must see (disk low, a damaged journal set
aside, telemetry evicted), raised and cleared by the part of the agent that detects them.

One registry per agent, owned by the event loop. Whoever shows alarms (logs, the control socket's
``status``, the retained MQTT status topic) reads ``active()`` and may subscribe to changes.
Raising an alarm that is already active with the same message changes nothing, so a condition
checked every few seconds does not flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Alarm:
    code: str  # stable identifier, e.g. "disk_low"
    message: str  # for people: what happened and what to do
    since: float  # wall clock when raised

    def as_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "since": self.since}


class Alarms:
    """The agent's active alarms, keyed by code."""

    def __init__(self) -> None:
        self._active: dict[str, Alarm] = {}
        self._listeners: list[Callable[[], None]] = []

    def raise_(self, code: str, message: str, *, level: int = logging.ERROR) -> None:
        """Activate (or update the message of) alarm ``code``; logged when new or changed."""
        current = self._active.get(code)
        if current is not None and current.message == message:
            return
        since = current.since if current is not None else time.time()
        self._active[code] = Alarm(code, message, since)
        log.log(level, "ALARM %s: %s", code, message)
        self._changed()

    def clear(self, code: str, message: str | None = None) -> None:
        """Deactivate alarm ``code`` if active; ``message`` says why it cleared (logged)."""
        if self._active.pop(code, None) is None:
            return
        log.warning("alarm %s cleared%s", code, f": {message}" if message else "")
        self._changed()

    def active(self) -> list[Alarm]:
        return sorted(self._active.values(), key=lambda a: a.since)

    def is_active(self, code: str) -> bool:
        return code in self._active

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the event loop) after every change."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a broken display must not stop the alarm itself
                log.exception("alarm listener failed")
