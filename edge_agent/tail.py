"""Following records as they are committed: the agent's side of ``edge-agent tail`` (and of
the demo's live view).

The agent tells the hub every batch it appends to the journal (with the seqs the journal gave
out) and every commit (the journal's ``on_commit``). A subscriber gets a record only once its
seq is committed, so what a person sees on the PC is what survives a power cut, in seq order.

A subscriber never slows acquisition: records are queued for it by reference (the drafts the
journal holds anyway), at most ``limit`` of them. When its client does not keep up (a paused
terminal, a stuck pipe), the records that do not fit are not queued but counted, and the
client gets one ``{"kind": "tail.overflow", "skipped": N, "first_seq", "last_seq"}`` line in
their place, then the records that came after: it stays connected and its memory bounded.

Values are shown as precise as their source is, by ``kernel.precision`` (the rule the trace
store's reports use too): a float32 point's 6.019999980926514 is sent as 6.02, a float64's or
a scaled integer's 4.0200000000000005 as 4.02. The config says which point is which
(``DeviceConfig.value_digits``); a float whose point's type is not known (an OPC UA ``Float``
or ``Double``) is shown as a float32 if it is exactly one, else to 15 digits. Everything else
is the record as it goes on the wire.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent.control import Stream
from kernel import precision
from kernel.model import TELEMETRY_KINDS, RecordDraft, RecordKind

if TYPE_CHECKING:
    from edge_agent.config import AgentConfig

log = logging.getLogger(__name__)

QUEUE_RECORDS = 2000
"""Records queued per subscriber (committed or not) before it skips. A readings record of
64 values is ~3 KB in memory: a stuck client costs at most ~6 MB. A client that reads (a
terminal, a pipe into jq) empties it in milliseconds."""
CHUNK = 64
"""Records encoded per turn of the event loop: a backlog never holds the loop for long."""
OVERFLOW = "tail.overflow"
KINDS = tuple(k.value for k in RecordKind)


# ---- precision ----------------------------------------------------------------------------


# The rule is kernel.precision's, shared with the trace store's reports and workbench.
shown = precision.shown


class Precision:
    """Significant digits of each point's numbers, as the config tells them."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.points: dict[tuple[str, str], int] = {}
        for dev in cfg.devices:
            for point in dev.point_names():
                digits = dev.value_digits(point)
                if digits is not None:
                    self.points[(dev.name, point)] = digits
        # A part record's values are keyed by point name: the snapshot's device or an `also`.
        self.parts: dict[str, dict[str, int]] = {}
        for st in cfg.stations:
            if st.part is None:
                continue
            snap = st.part.snapshot
            sources = [(snap.device, snap.points), *((a.device, a.points) for a in snap.also)]
            self.parts[st.name] = {
                p: self.points[(device, p)]
                for device, points in sources
                for p in points
                if (device, p) in self.points
            }

    def wire(self, seq: int, draft: RecordDraft) -> dict[str, Any]:
        """The record as on the wire, its values rounded to their precision."""
        rec = {"seq": seq, **draft.body}
        kind = draft.kind
        if kind is RecordKind.READINGS:
            dev = rec["device"]
            rec["values"] = {
                p: shown(v, self.points.get((dev, p))) for p, v in rec["values"].items()
            }
        elif kind is RecordKind.READING:
            rec["value"] = shown(rec["value"], self.points.get((rec["device"], rec["point"])))
        elif kind is RecordKind.PART:
            digits = self.parts.get(draft.station, {})
            rec["values"] = {
                name: (
                    {**entry, "value": shown(entry["value"], digits.get(name))}
                    if type(entry.get("value")) is float
                    else entry
                )
                for name, entry in rec["values"].items()
            }
        return rec


# ---- subscribers --------------------------------------------------------------------------


@dataclass
class _Skipped:
    """Records a subscriber had no room for, in place of them in its queue."""

    count: int
    first: int
    last: int

    def line(self) -> dict[str, Any]:
        return {
            "kind": OVERFLOW,
            "skipped": self.count,
            "first_seq": self.first,
            "last_seq": self.last,
        }


_Item = tuple[int, RecordDraft] | _Skipped


class Subscription:
    """One follower: its filter and its bounded queue. Registered with the hub while
    :meth:`batches` runs."""

    def __init__(
        self,
        hub: TailHub,
        stations: frozenset[str] | None,
        kinds: frozenset[str] | None,
        limit: int,
    ) -> None:
        self._hub = hub
        self.stations = stations
        self.kinds = kinds
        self.limit = limit
        self._items: deque[_Item] = deque()
        self._held = 0  # records (not skip markers) in _items
        self._ready = asyncio.Event()
        self.skipped = 0

    def wants(self, d: RecordDraft) -> bool:
        return (self.stations is None or d.station in self.stations) and (
            self.kinds is None or d.kind.value in self.kinds
        )

    @property
    def queued(self) -> int:
        """Records waiting for this subscriber (committed or not)."""
        return self._held

    def offer(self, seq: int, d: RecordDraft) -> None:
        if self._held < self.limit:
            self._items.append((seq, d))
            self._held += 1
            return
        self.skipped += 1
        last = self._items[-1] if self._items else None
        if isinstance(last, _Skipped):
            last.count += 1
            last.last = seq
        else:
            self._items.append(_Skipped(1, seq, seq))

    def poke(self, committed: int) -> None:
        """Wake the sender if the head of the queue may go out now."""
        if self._items:
            head = self._items[0]
            if isinstance(head, _Skipped) or head[0] <= committed:
                self._ready.set()

    def _take(self, committed: int) -> list[_Item]:
        out: list[_Item] = []
        items = self._items
        while items and len(out) < CHUNK:
            head = items[0]
            if not isinstance(head, _Skipped):
                if head[0] > committed:
                    break
                self._held -= 1
            out.append(items.popleft())
        return out

    async def batches(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Committed records (as :meth:`Precision.wire` renders them) and overflow markers,
        in seq order, a chunk at a time, until the caller stops iterating."""
        hub = self._hub
        hub.subscribers.add(self)
        try:
            while True:
                items = self._take(hub.committed_seq)
                if not items:
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                precision = hub.precision
                yield [i.line() if isinstance(i, _Skipped) else precision.wire(*i) for i in items]
                await asyncio.sleep(0)  # a backlog goes out a chunk per loop turn
        finally:
            hub.subscribers.discard(self)

    async def lines(self) -> AsyncGenerator[bytes, None]:
        """:meth:`batches` as JSON lines, encoded as the journal encodes records."""
        async for batch in self.batches():
            yield b"".join(
                json.dumps(r, separators=(",", ":"), default=dict).encode() + b"\n" for r in batch
            )


class TailHub:
    """Routes records to subscribers once committed. Lives in the event loop; ``appended``
    and ``committed`` are called there by the agent and the journal."""

    def __init__(self, config: Callable[[], AgentConfig], *, limit: int = QUEUE_RECORDS) -> None:
        self._config = config  # the running config (a reload replaces it)
        self._precision: tuple[AgentConfig, Precision] | None = None
        self.limit = limit
        self.subscribers: set[Subscription] = set()
        self.committed_seq = 0

    @property
    def precision(self) -> Precision:
        cfg = self._config()
        if self._precision is None or self._precision[0] is not cfg:
            self._precision = (cfg, Precision(cfg))
        return self._precision[1]

    def appended(self, drafts: Sequence[RecordDraft], before: int, last: int) -> None:
        """``drafts`` were appended and got the seqs ``before + 1 .. last``."""
        if not self.subscribers or last <= before:
            return
        given = last - before
        kept: Sequence[RecordDraft] = drafts
        if given != len(drafts):
            # Readings refused at append (storage critical) got no seq; the rest did.
            kept = [d for d in drafts if d.kind not in TELEMETRY_KINDS]
        if len(kept) != given:  # not expected: better skip than show a wrong seq
            log.debug("tail: %d seqs for %d records; skipped", given, len(kept))
            return
        subs = list(self.subscribers)
        for seq, d in enumerate(kept, before + 1):
            for sub in subs:
                if sub.wants(d):
                    sub.offer(seq, d)

    def committed(self, seq: int) -> None:
        """The journal's ``on_commit``: every seq up to ``seq`` is settled."""
        self.committed_seq = seq
        for sub in self.subscribers:
            sub.poke(seq)

    def subscribe(
        self, stations: Sequence[str] | None = None, kinds: Sequence[str] | None = None
    ) -> Subscription:
        return Subscription(
            self,
            None if stations is None else frozenset(stations),
            None if kinds is None else frozenset(kinds),
            self.limit,
        )

    def open(self, request: dict[str, Any]) -> dict[str, Any] | Stream:
        """The control socket's ``{"op": "tail", "stations": [...] | null, "kinds": [...] |
        null}``: a stream of JSON lines, or an error reply naming what is wrong."""
        known = [s.name for s in self._config().stations]
        stations, kinds = request.get("stations"), request.get("kinds")
        for name, value, allowed in (("stations", stations, known), ("kinds", kinds, KINDS)):
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return {"ok": False, "error": f"tail: {name} must be a list of names or null"}
            unknown = [v for v in value if v not in allowed]
            if unknown:
                return {
                    "ok": False,
                    "error": f"tail: no such {name[:-1]} {', '.join(map(repr, unknown))} "
                    f"(known: {', '.join(allowed)})",
                }
        sub = self.subscribe(stations, kinds)
        head = {
            "ok": True,
            "stream": "tail",
            "stations": stations,
            "kinds": kinds,
            "committed_seq": self.committed_seq,
        }
        return Stream(head, sub.lines())
