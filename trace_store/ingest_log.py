"""The ingest's log lines beyond rejections (``throttle.py``): two journals writing under one
agent id, records kept as conflicts, gaps held open and closed, the held bound reached."""

from __future__ import annotations

import logging

from trace_store.envelope import Accepted, Rejection, Stream
from trace_store.held import Held, HeldMessages
from trace_store.link import Inbound
from trace_store.ranges import RangeTracker
from trace_store.storage import Batch
from trace_store.throttle import Throttle
from trace_store.writers import Clash

log = logging.getLogger("trace_store.service")


def log_identity(batch: Batch, clashes: list[Clash]) -> None:
    """Two journals under one agent id; records kept aside as conflicts."""
    for clash in clashes:
        log.warning(
            "agent %s: two journals write at once under this agent id (journal %s epoch "
            "%s, and journal %s epoch %s: %.0f s of record time in common); the records of "
            "both are kept apart, by epoch. Give one of the PCs its own agent.id "
            "(docs/operator.md, duplicate_agent)",
            clash.agent,
            clash.one.journal or "?",
            clash.one.epoch or "(legacy)",
            clash.other.journal or "?",
            clash.other.epoch or "(legacy)",
            clash.overlap,
        )
    for row in batch.conflicts[:10]:
        log.error(
            "agent %s: record seq %d (epoch %s) arrived with the key of another record the "
            "store holds; kept in the conflicts table, not dropped (an agent of the "
            "previous version with a replaced journal, or a cloned running PC)",
            row.agent,
            row.seq,
            row.epoch or "(legacy)",
        )


def log_holding(
    held: HeldMessages,
    tracker: RangeTracker,
    throttle: Throttle,
    had: dict[Stream, int],
    dropped: list[Held],
) -> None:
    """A gap opening or closing (INFO), the bound reached (WARNING); each at most once per
    stream per interval. ``had``: the records held before the commit, per stream involved."""
    for stream, before in sorted(had.items()):
        now = held.records_of(stream)
        if before == 0 and now:
            kind, text = "gap", "holding messages above the gap after watermark %d"
        elif before and now == 0:
            kind, text = "closed", "gap closed, held messages released; watermark %d"
        else:
            continue
        quiet = throttle((kind, stream))
        if quiet is not None:
            log.info(
                "agent %s: " + text + " (%d records held before, %d now)%s",
                named(stream),
                tracker.watermark(stream),
                before,
                now,
                f" (+{quiet} more not logged)" if quiet else "",
            )
    for h in dropped:
        stream = h.message.stream
        quiet = throttle(("dropped", stream))
        if quiet is not None:
            log.warning(
                "agent %s: dropped a message of range (%d, %d] instead of holding it: "
                "%d records held already, at most %d (--max-held-records); the agent "
                "resends it%s",
                named(stream),
                h.range.after,
                h.range.last,
                held.records_of(stream),
                held.max_records,
                f" (+{quiet} more not logged)" if quiet else "",
            )


def arrivals(
    checked: list[tuple[Inbound, Accepted | Rejection]],
) -> tuple[dict[str, int], dict[Stream, int]]:
    """Records by kind and the highest seq per stream, of a batch's accepted messages."""
    kinds: dict[str, int] = {}
    last: dict[Stream, int] = {}
    for _, result in checked:
        if isinstance(result, Accepted):
            for row in result.rows:
                kinds[row.kind] = kinds.get(row.kind, 0) + 1
            last[result.stream] = max(last.get(result.stream, 0), result.last_seq)
    return kinds, last


def named(stream: Stream) -> str:
    """An agent, and its epoch when it has one, for the log."""
    agent, epoch = stream
    return f"{agent} (epoch {epoch})" if epoch else agent
