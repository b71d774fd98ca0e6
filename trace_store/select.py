"""What one batch of messages will do, decided before anything is written or changed: which
messages it commits, which it sets aside (held) and which held ones it releases, and what it
writes besides the records (watermarks per stream, the agents' rows, rejected messages).

Pure decisions on the store writer's state (the range tracker, the held messages, the known
epochs and each agent's current epoch), which they read and never change: a failed commit
leaves everything as it was (``service.py`` applies a selection only once it is committed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trace_store.envelope import LEGACY_EPOCH, Accepted, Reason, Rejection, Stream
from trace_store.held import Held, HeldKey, HeldMessages
from trace_store.link import Inbound
from trace_store.ranges import Draft, Plan, RangeEntry, RangeTracker
from trace_store.storage import AgentState, Batch, RejectedMessage, StreamState, utc_now

EXCERPT_BYTES = 512  # of a rejected payload, kept readable in the rejected table


@dataclass(slots=True)
class Selection:
    """What one batch will do, decided before anything is written or changed (``_select``):
    a failed commit leaves the tracker and the held messages as they were."""

    batch: Batch = field(default_factory=Batch)
    plan: Plan | None = None
    touched: dict[str, tuple[str, str]] = field(default_factory=dict)  # agent -> site, line
    streams: dict[Stream, Accepted] = field(default_factory=dict)  # -> a message of it
    fresh: dict[str, str] = field(default_factory=dict)  # agent -> epoch it began, this batch
    reconfirm: set[str] = field(default_factory=set)  # agents sent what W covers already
    records: int = 0  # records of the batch's accepted messages, as they arrived
    written: int = 0  # records in this transaction (some may be duplicates in the database)
    skipped: int = 0  # records not written because they are stored (or held) already
    released: dict[Stream, int] = field(default_factory=dict)  # -> held messages it ends
    released_written: int = 0  # of those, messages whose records are in this transaction
    hold: list[Held] = field(default_factory=list)  # the batch's messages to set aside

    def take(self, message: Accepted, draft: Draft) -> None:
        self.batch.rows.extend(message.rows)
        self.batch.edges.extend(message.edges)
        self.written += len(message.rows)
        self.touched[message.agent] = (message.site, message.line)
        self.streams[message.stream] = message
        if message.range is not None:
            draft.add(
                RangeEntry(message.stream, message.range, message.message_id, len(message.rows))
            )


def select(
    checked: list[tuple[Inbound, Accepted | Rejection]],
    tracker: RangeTracker,
    held: HeldMessages,
    journals: dict[Stream, str | None],
    epoch_of: dict[str, str],
) -> Selection:
    """Decide what the batch commits, what it sets aside and which held messages it
    releases; changes nothing.

    Everything here is per stream (agent, epoch). A message of an agent that allows it
    (``Accepted.holdable``) whose range starts above its stream's watermark ``W`` is held:
    committing it would put records in the database whose predecessors are not, and a
    recall query could see a part without its context. Everything else is committed as it
    comes. Then, per stream, held messages (and this batch's holdable ones) are taken in
    order of ``after`` while ``after <= W``, ``W`` moving with every one taken: a resend
    that fills a gap commits the gap and everything held above it in this one transaction.
    An epoch's ``W`` starts below its first seq (``Accepted.floor``).
    """
    draft = tracker.draft()
    selection = Selection()
    waiting: dict[Stream, list[Held]] = {}
    now = utc_now()
    for message, result in checked:
        if isinstance(result, Rejection):
            selection.batch.rejected.append(rejected_row(message, result, now))
            continue
        selection.records += len(result.rows)
        stream = result.stream
        if stream not in journals:
            selection.fresh[result.agent] = result.epoch  # an epoch it has just begun
        selection.streams[stream] = result
        draft.start(stream, result.floor)
        base = max(tracker.watermark(stream), result.floor)
        rng = result.range
        if rng is not None and rng.last <= base:
            # All of it confirmed already: the agent has not heard (a retained message
            # the broker lost, an old epoch's rows from a restored backup). Tell it again.
            selection.reconfirm.add(result.agent)
        if result.holdable and rng is not None and rng.after > base:
            waiting.setdefault(stream, []).append(held.wrap(result))
        else:
            selection.take(result, draft)
    streams = set(waiting)
    for stream in held.agents():
        first = held.pending(stream)[0]
        if first.range.after <= draft.watermark(stream):
            streams.add(stream)  # W moved (or was already) up to its first held message
    for stream in sorted(streams):
        _release(stream, sorted(waiting.get(stream, ()), key=Held.order), draft, selection, held)
    selection.hold.sort(key=lambda h: h.arrival)  # the bound drops the latest first
    plan = selection.plan = draft.plan()
    batch = selection.batch
    for stream, one in selection.streams.items():  # each written: its activity too
        w = plan.watermark(stream, tracker.watermark(stream))
        batch.streams[stream] = StreamState(
            *stream, one.site, one.line, w, one.epoch_first, one.journal
        )
    for agent, (site, line) in selection.touched.items():
        epoch = selection.fresh.get(agent, epoch_of.get(agent, LEGACY_EPOCH))
        current = (agent, epoch)
        w = plan.watermark(current, tracker.watermark(current))
        journal = journal_of(current, selection, journals)
        batch.agents[agent] = AgentState(agent, site, line, w, current[1], journal)
    return selection


def journal_of(
    stream: Stream, selection: Selection, journals: dict[Stream, str | None]
) -> str | None:
    """The journal a stream belongs to: as this batch says, else as known."""
    message = selection.streams.get(stream)
    if message is not None and message.journal is not None:
        return message.journal
    return journals.get(stream)


def _release(
    stream: Stream, new: list[Held], draft: Draft, selection: Selection, held: HeldMessages
) -> None:
    """Take the stream's held messages and its new holdable ones (both sorted by ``after``)
    while they are contiguous; set the rest of the new ones aside."""
    pool = held.pending(stream)
    seen: set[HeldKey] = set()
    i = j = 0
    while True:
        if i < len(pool) and (j == len(new) or pool[i].order() <= new[j].order()):
            candidate, from_pool = pool[i], True
        elif j < len(new):
            candidate, from_pool = new[j], False
        else:
            break
        w = draft.watermark(stream)
        if candidate.range.after > w:
            break  # still a gap below it, and below everything after it
        if from_pool:
            i += 1
        else:
            j += 1
        if candidate.key in seen or candidate.range.last <= w:
            # A copy of a message taken just before (equal keys sort together), or
            # records W has passed: every one of them is stored already.
            selection.skipped += candidate.records
            continue
        seen.add(candidate.key)
        selection.take(candidate.message, draft)
        if from_pool:
            selection.released_written += 1
    if i:
        selection.released[stream] = i
    for candidate in new[j:]:
        if candidate.key in seen or held.holds(stream, candidate.key):
            selection.skipped += candidate.records  # a redelivery of a held message
            continue
        seen.add(candidate.key)
        selection.hold.append(candidate)


def rejected_row(message: Inbound, rejection: Rejection, now: str) -> RejectedMessage:
    payload = message.payload
    excerpt = payload[:EXCERPT_BYTES].decode("utf-8", "replace").replace("\0", "\ufffd")
    return RejectedMessage(
        received_at=now,
        reason=rejection.reason.value,
        detail=_clean_text(rejection.detail),
        topic=_clean_text(message.topic),
        size=len(payload),
        agent=rejection.agent,
        excerpt=excerpt,
        # Kept whole (it is at most max_message_bytes) so it can be replayed once the cause is
        # fixed: the agent deleted these records when the broker acknowledged them.
        payload=None if rejection.reason is Reason.OVERSIZED else payload,
    )


def _clean_text(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8").replace("\0", "\ufffd")
