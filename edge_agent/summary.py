"""The periodic summary line in the agent's log (``agent.summary_interval``):

``summary: 5m: 150 parts (3 NOK), 45,000 readings, 12 scans (1 rejected), journal 12 waiting,
oldest unconfirmed 0.8 s, uplink connected``

Counts are over the interval; the record carries them and the totals since start as the
extra field ``summary`` (for log shippers and tests). So a journal read a week later says
how the line ran, hour by hour, without a metrics server.

"Oldest unconfirmed" is the age of the oldest record still in the journal (not yet confirmed
by the broker or the store, as ``mqtt.confirm`` says): the journal's first row, read once per
line, its ``ts`` against the clock. Reading it from the journal rather than remembering
append times in the agent also counts rows left from before a restart, which are the ones
most worth noticing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from edge_agent.stats import AgentStats

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0
"""Seconds the oldest row may take to read; a journal busy longer than that says "unknown"."""
COUNTS = ("parts", "nok", "readings", "scans", "rejected_scans", "gaps", "unobserved")


class _Row(Protocol):
    @property
    def body(self) -> str: ...


class Journal(Protocol):
    """What the summary reads of the journal."""

    @property
    def depth(self) -> int: ...

    async def read_batch(self, after_seq: int, max_records: int) -> Sequence[_Row]: ...


class Uplink(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...


@dataclass(frozen=True)
class Totals:
    counts: dict[str, int]

    @classmethod
    def of(cls, stats: AgentStats) -> Totals:
        return cls({name: int(getattr(stats, name)) for name in COUNTS})

    def minus(self, before: Totals) -> dict[str, int]:
        return {k: v - before.counts.get(k, 0) for k, v in self.counts.items()}


def span(seconds: float) -> str:
    """``300`` -> ``5m``, ``30`` -> ``30s``, ``5400`` -> ``1.5h``."""
    if seconds < 120:
        return f"{seconds:g}s"
    if seconds < 7200:
        return f"{round(seconds / 60, 1):g}m"
    return f"{round(seconds / 3600, 1):g}h"


def age(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class SummaryLog:
    """Logs one summary line every ``interval`` seconds (fixed rate, monotonic clock)."""

    def __init__(
        self,
        interval: float,
        stats: AgentStats,
        journal: Journal,
        uplink: Callable[[], Uplink],
    ) -> None:
        self.interval = interval
        self._stats = stats
        self._journal = journal
        self._uplink = uplink  # the current sync's status (a reload may replace sync)
        self._last = Totals.of(stats)

    async def run(self) -> None:
        """Until cancelled; returns at once when the interval is 0 (off)."""
        if self.interval <= 0:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + self.interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            # A slow line (a busy journal) skips slots instead of logging twice in a row.
            due += self.interval * max(1, int((loop.time() - due) // self.interval) + 1)
            await self.log_once()

    async def oldest_unconfirmed(self) -> float | None:
        """Seconds since the oldest record still in the journal was taken (None: none, or
        the journal could not say in time)."""
        if self._journal.depth <= 0:
            return None
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                rows = await self._journal.read_batch(0, 1)
            ts = json.loads(rows[0].body)["ts"] if rows else None
            taken = datetime.fromisoformat(ts).timestamp() if isinstance(ts, str) else None
        except Exception as exc:  # a summary must never take the agent down
            log.debug("summary: oldest record not read: %s", exc)
            return None
        return None if taken is None else max(0.0, time.time() - taken)

    async def log_once(self) -> dict[str, Any]:
        """Log the line for the interval that ends now; returns its ``summary`` field."""
        # The journal's answer first: the counts below are taken with no await after them, so
        # they are the stats at the instant the line is logged.
        oldest = await self.oldest_unconfirmed()
        now = Totals.of(self._stats)
        counts = now.minus(self._last)
        self._last = now
        depth = self._journal.depth
        up = self._uplink()
        uplink = "connected" if up.connected else f"down ({up.last_error or 'connecting'})"
        scans = f"{counts['scans']:,} scans ({counts['rejected_scans']:,} rejected)"
        gaps = f", {counts['gaps']:,} gaps" if counts["gaps"] else ""
        message = (
            f"summary: {span(self.interval)}: {counts['parts']:,} parts ({counts['nok']:,} NOK), "
            f"{counts['readings']:,} readings, {scans}{gaps}, journal {depth:,} waiting, "
            f"oldest unconfirmed {'-' if oldest is None else age(oldest)}, uplink {uplink}"
        )
        summary: dict[str, Any] = {
            "interval": self.interval,
            **counts,
            "journal_depth": depth,
            "oldest_unconfirmed": None if oldest is None else round(oldest, 3),
            "uplink": "connected" if up.connected else "down",
            "totals": dict(now.counts),
        }
        log.info(message, extra={"summary": summary})
        return summary
