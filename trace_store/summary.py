"""The trace store's periodic summary line: what it stored since the last line, what it
refused and why, and how far behind each agent's confirmation is, so the log of a healthy
store is not empty between "started" and "stopped".

``summary: 5m: 12,345 records stored (3 duplicates dropped) from 2 agents, 0 messages
rejected, 0 held; lag: line3-pc1 0, line4-pc1 12 (last record 0.4 s ago)``

It runs in its own thread (the store itself is threads around paho) and only reads the
store's counters, under the store's lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from trace_store.service import AgentView

log = logging.getLogger("trace_store.summary")

DEFAULT_INTERVAL = 300.0
COUNTED = ("records", "inserted", "duplicates", "messages", "rejected", "held_dropped")


class _Store(Protocol):
    def stats(self) -> dict[str, Any]: ...

    def agent_stats(self) -> dict[str, AgentView]: ...


def span(seconds: float) -> str:
    """``5m``, ``30s``, ``1h``: the interval as people write it."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def line(
    interval: float,
    before: Mapping[str, Any],
    now: Mapping[str, Any],
    agents: Mapping[str, AgentView],
    at: float,
) -> tuple[str, dict[str, Any]]:
    """The message and its ``summary`` field (counts over the interval, totals, lags)."""
    counts = {k: int(now.get(k, 0)) - int(before.get(k, 0)) for k in COUNTED}
    reasons_now: Mapping[str, int] = now.get("by_reason", {})
    reasons_before: Mapping[str, int] = before.get("by_reason", {})
    rejected_by = {
        r: n - reasons_before.get(r, 0)
        for r, n in sorted(reasons_now.items())
        if n - reasons_before.get(r, 0)
    }
    lags = {a: v.received_seq - v.watermark for a, v in sorted(agents.items())}
    held = int(now.get("held_records", 0))
    why = f" ({', '.join(f'{r} {n:,}' for r, n in rejected_by.items())})" if rejected_by else ""
    lag_text = ", ".join(
        f"{a} {lag:,}" + _age(agents[a].last_arrival, at) for a, lag in lags.items()
    )
    message = (
        f"summary: {span(interval)}: {counts['inserted']:,} records stored "
        f"({counts['duplicates']:,} duplicates dropped) from {len(agents)} agent(s), "
        f"{counts['rejected']:,} messages rejected{why}, {held:,} held"
        + (f"; lag: {lag_text}" if lag_text else "")
    )
    summary = {
        "interval": interval,
        **counts,
        "rejected_by_reason": rejected_by,
        "held_records": held,
        "lag": lags,
        "totals": {k: int(now.get(k, 0)) for k in COUNTED},
    }
    return message, summary


def _age(last: float | None, at: float) -> str:
    return "" if last is None else f" (last record {max(0.0, at - last):.1f} s ago)"


class StoreSummary:
    """Logs :func:`line` every ``interval`` seconds until stopped."""

    def __init__(self, store: _Store, interval: float = DEFAULT_INTERVAL) -> None:
        if interval <= 0:
            raise ValueError("the summary interval must be positive")
        self.store = store
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trace-store-summary", daemon=True)
        self._last: dict[str, Any] = {}

    def start(self) -> None:
        self._last = self.store.stats()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def log_once(self) -> dict[str, Any]:
        now = self.store.stats()
        message, summary = line(
            self.interval, self._last, now, self.store.agent_stats(), time.time()
        )
        self._last = now
        log.info(message, extra={"summary": summary})
        return summary

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.log_once()
            except Exception:  # a summary must never take the store down
                log.exception("summary line failed")
