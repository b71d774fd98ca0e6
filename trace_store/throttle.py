"""Log lines that could flood: at most one per key per interval, with how many were held back
(rejected messages per reason, gaps per agent, two journals under one agent id)."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable

from trace_store.envelope import Rejection, reason_class

log = logging.getLogger("trace_store.service")

REJECT_LOG_INTERVAL = 10.0  # seconds: at most one log line per rejection reason per interval


class Throttle:
    """At most one log line per key per interval, counting the lines held back meanwhile."""

    def __init__(self, interval: float = REJECT_LOG_INTERVAL) -> None:
        self._interval = interval
        self._last: dict[Hashable, float] = {}
        self._quiet: dict[Hashable, int] = {}

    def __call__(self, key: Hashable) -> int | None:
        """None: stay quiet now. Else log, mentioning how many lines were not logged."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._quiet.pop(key, 0)


class RejectLog:
    """One WARNING per reason per interval, with how many were not logged in between."""

    def __init__(self, interval: float = REJECT_LOG_INTERVAL) -> None:
        self._throttle = Throttle(interval)

    def __call__(self, rejection: Rejection, topic: str, size: int) -> None:
        quiet = self._throttle(rejection.reason)
        if quiet is None:
            return
        log.warning(
            "rejected %s message on %s (%d bytes, %s): %s%s",
            reason_class(rejection.reason),
            topic,
            size,
            rejection.reason.value,
            rejection.detail,
            f" (+{quiet} more {rejection.reason.value} not logged)" if quiet else "",
        )
