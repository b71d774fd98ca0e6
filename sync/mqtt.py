"""The MQTT uplink: publishes the journal, deletes rows once their delivery is confirmed.

Delivery is at-least-once (invariant 2). A row leaves the journal only after its confirmation:
the broker's PUBACK for the message that carried it (``confirm: puback``), or the trace store's
watermark reaching its seq (``confirm: store``, end to end). Whatever was unconfirmed when a
connection dies counts as not delivered and is read again from the journal on the next
connection; in store mode it is also sent again when the watermark stalls, and at once when the
store says it lost its broker session. Receivers therefore see duplicates and dedupe by
(agent, epoch, seq); see docs/wire-format.md.

Every message names the journal and the epoch its records were made in (``streams.py``):
with the seq, the record's key, unique forever whatever happens to the journal file. The agent
says online/offline on its own status topic and watches it for another agent with its id
(``presence.py``, ``duplicates.py``).

Threads and ownership
---------------------
Every connection attempt gets a fresh paho client (``link.Link``), so paho's in-memory outbox
of a dead connection is dropped with it and never replayed behind our back; the journal is the
only outbox. All state of this module is owned by the event loop. paho's automatic reconnect
is off: ``MqttSync.run`` reconnects with full-jitter backoff, probing a broker it cannot reach
so that one coming back is used at once (``link.wait_to_retry``).

Sync only reads the journal and deletes confirmed rows, so acquisition never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from buffer.journal import LEGACY_EPOCH, Epoch, Journal
from kernel.alarms import Alarms
from kernel.errors import BufferError_, SyncError
from sync.config import MqttConfig, invalid_topic_level
from sync.confirm import Confirmation, parse_confirmation
from sync.duplicates import HEARTBEAT
from sync.link import Link, Unreachable, wait_to_retry
from sync.pending import Deleter, Session
from sync.presence import Presence
from sync.status import Outage, SyncStatus
from sync.streams import Streams
from sync.wire import (
    SCHEMA,
    SCHEMA_VERSION,
    agent_topic,
    by_station,
    envelope,
    envelope_head,
    topic_for,
)

# Where the benchmarks and older code found them.
_envelope = envelope
__all__ = ["SCHEMA", "SCHEMA_VERSION", "MqttSync", "SyncStatus", "agent_topic", "topic_for"]

log = logging.getLogger(__name__)

RESEND_BACKOFF_MAX = 16
"""The longest wait between two resends without progress, in units of confirm_timeout."""


class MqttSync:
    """Forwards the journal to an MQTT broker until cancelled.

    Records are read in journal batches (in seq order, or live records first with the backlog
    beside them), cut by journal epoch, grouped by station (order inside a station kept) and
    published as one envelope per group to ``<prefix>/<site>/<line>/<station>/records`` with
    QoS 1. At most ``max_inflight`` messages wait for a PUBACK. Rows are deleted on PUBACK, or
    in ``confirm: store`` mode once the trace store's watermarks cover them.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        agent_id: str,
        site: str,
        line: str,
        buffer: Journal,
        alarms: Alarms | None = None,
    ) -> None:
        problems = [
            f"{name}: {why}"
            for name, value in (("agent_id", agent_id), ("site", site), ("line", line))
            if (why := invalid_topic_level(value))
        ]
        if problems:
            raise ValueError("; ".join(problems))
        self.config = config
        self.agent_id = agent_id
        self.site = site
        self.line = line
        self.client_id = config.client_id or f"edge-agent-{agent_id}"
        self.status = SyncStatus()
        self.alarms = alarms if alarms is not None else Alarms()
        self.status_topic = agent_topic(config, site, line, agent_id, "status")
        self.confirm_topic = agent_topic(config, site, line, agent_id, "confirmed")
        self._buffer = buffer
        self._deleter = Deleter(buffer, self.status)
        self._session: Session | None = None
        self._link: Link | None = None
        self._refused_first: int | None = None  # first seq of the last refused message
        # (epoch id, station) -> (topic, envelope head)
        self._stations: dict[tuple[str, str], tuple[str, str]] = {}
        self._outage = Outage(config, self.status, self.client_id)
        # Made in ``run`` from the journal's identity (the journal is open by then).
        self._streams: Streams | None = None
        self._presence = Presence(
            config, agent_id, self.status_topic, buffer, self.alarms, lambda: self._link
        )
        # confirm: store. Where the confirmed prefix ends, the highest seq published since
        # the last (re)start of publishing, and when the confirmation last moved (loop time).
        self._confirmed_through = 0
        self._published_high = 0
        self._progress_at = 0.0
        self._progress = asyncio.Event()
        self._stalls = 0  # resends in a row without progress of the watermark
        self._resend_now = asyncio.Event()  # send again from the watermark without waiting
        self._resend_reason = ""
        self._sessions: dict[str, str] = {}  # trace store id -> its broker session, last seen
        self._rekeying = False
        self._foreign_through = 0  # highest seq of rows another agent id wrote here
        # Topics others publish to this agent (the blocked set, route answers): subscribed on
        # every connection, each message handed to its callback on the event loop.
        self.listeners: dict[str, Callable[[bytes, bool], None]] = {}

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff; returns only by cancellation (or by a
        journal failure, which is raised). Cancelling says "offline" (status), closes the
        connection and joins paho's thread before this returns."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        identity = self._buffer.identity
        self._streams = Streams(identity)
        self._foreign(await self._buffer.claim(self.agent_id))
        attempt = 0
        will = self._presence.will()
        self._progress = asyncio.Event()  # of the running loop
        self._resend_now = asyncio.Event()
        self._presence.start()
        heartbeat = asyncio.create_task(self._heartbeat(), name="mqtt-sync-heartbeat")
        try:
            while True:
                session = Session(cfg.max_inflight, self._acked, self._refused)
                up_at: float | None = None
                link: Link | None = None
                unreachable = False
                try:
                    link = Link(
                        cfg,
                        self._client_id(),
                        loop,
                        session.acked,
                        will=will,
                        on_message=self._on_message,
                    )
                    await link.open()
                    up_at = loop.time()
                    self._outage.went_up()
                    self._session = session
                    self._link = link
                    reason = await self._pump(link, session)
                except SyncError as exc:
                    reason = str(exc)
                    unreachable = isinstance(exc, Unreachable)
                except asyncio.CancelledError:
                    if link is not None and self._link is link and cfg.status:
                        await self._presence.say_offline(link)
                    raise
                finally:
                    self._session = None
                    self._link = None
                    self.status.inflight = 0
                    if link is not None:
                        await link.close()
                # A connection that held for a while resets the backoff; one that keeps
                # dropping at once (e.g. a second agent with our client id) does not.
                if up_at is not None and loop.time() - up_at >= cfg.backoff_max:
                    attempt = 0
                self._outage.went_down(reason, self._buffer.depth)
                await wait_to_retry(cfg, attempt, unreachable)
                attempt += 1
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self._presence.stop()
            self.status.connected = False
            await self._deleter.wait()

    def _client_id(self) -> str:
        """Ours, or, once another agent with our id was seen, one of our own: two agents
        with one client id take each other's connection over endlessly."""
        dups = self._presence.dups
        if dups is not None and dups.seen_once and not self.config.client_id:
            return f"{self.client_id}-{self._buffer.identity.journal[:8]}"
        return self.client_id

    # ---- one connection -------------------------------------------------------------------

    async def _pump(self, link: Link, session: Session) -> str:
        """Publish until the connection is lost; returns the reason."""
        cfg = self.config
        # Let deletes confirmed on the previous connection land first, so the re-read below
        # does not send them again.
        await self._deleter.wait()
        assert self._presence.dups is not None
        self._presence.dups.connected()
        if cfg.confirm == "store":
            link.subscribe(self.confirm_topic)  # the retained watermark arrives at once
        for topic in self.listeners:
            link.subscribe(topic)
        if cfg.status:
            # Before our own status goes out: the retained one we get is the last word of
            # whoever published before us (duplicates.py).
            link.subscribe(self.status_topic)
            self._presence.publish(link)
        while True:
            self._resend_now.clear()
            publisher = asyncio.create_task(self._publish(link, session), name="mqtt-sync-publish")
            watchdog = (
                asyncio.create_task(self._stalled(), name="mqtt-sync-watchdog")
                if cfg.confirm == "store"
                else None
            )
            try:
                either: set[asyncio.Future[Any]] = {publisher, link.lost}
                if watchdog is not None:
                    either.add(watchdog)
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if link.lost.done():
                    return link.lost.result()
                if publisher.done():  # it only ends by raising
                    error = publisher.exception()
                    # A publish refused because the connection just died: report why it died.
                    if not (isinstance(error, SyncError) and link.lost.done()):
                        publisher.result()
                    return link.lost.result()
            finally:
                for task in (publisher, watchdog):
                    if task is not None:
                        task.cancel()
                        await asyncio.wait({task})
                        if not task.cancelled():
                            task.exception()  # retrieved: raised above or superseded
            self.status.resends += 1
            if self._resend_now.is_set():
                log.warning(
                    "%s: sending the journal again from seq %d",
                    self._resend_reason,
                    self._confirmed_through + 1,
                )
                continue
            log.warning(
                "trace store confirmed nothing new for %.0f s (watermark %d, published up to "
                "%d): sending the journal again from seq %d",
                cfg.confirm_timeout * min(2**self._stalls, RESEND_BACKOFF_MAX),
                self._confirmed_through,
                self._published_high,
                self._confirmed_through + 1,
            )
            self._stalls += 1

    async def _publish(self, link: Link, session: Session) -> None:
        """Publish the journal: everything unconfirmed on the last connection counts as not
        delivered, so start from the store's watermark (store mode) or the lowest seq left."""
        cfg = self.config
        start = self._confirmed_through if cfg.confirm == "store" else 0
        self._published_high = start
        self._progress_at = asyncio.get_running_loop().time()
        if cfg.order == "in_order":
            await self._stream(link, session, start, None, None)
            return
        # live_first: new records from the tail as they come; the backlog below the tail
        # beside them at drain_rate. Both read contiguous ranges, so each range's claim holds.
        tail = self._buffer.committed_seq
        tasks = {
            asyncio.create_task(self._stream(link, session, tail, None, None), name="live"),
            asyncio.create_task(
                self._stream(link, session, start, tail, cfg.drain_rate), name="backlog"
            ),
        }
        try:
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _stream(
        self,
        link: Link,
        session: Session,
        after: int,
        until: int | None,
        rate: float | None,
    ) -> None:
        """Publish journal batches with seq > ``after`` (up to ``until`` if given, then return;
        else forever), at most ``rate`` records/s if given."""
        buffer = self._buffer
        cfg = self.config
        streams = self._streams
        assert streams is not None
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while until is None or after < until:
            buffer.new_data.clear()
            committed = buffer.committed_seq
            batch = await buffer.read_batch(
                after, cfg.batch_max_records, cfg.batch_max_bytes, until_seq=until
            )
            if cfg.confirm == "store":
                # Nothing waits between ``after`` and the first row read: the confirmed prefix
                # may pass voids (evicted telemetry, an epoch's unused tail) without the store.
                upto = committed if until is None else min(committed, until)
                streams.settle(after, batch[0].seq if batch else None, upto)
                self._advanced()
            if not batch:
                if until is not None:
                    return  # the rest of the backlog was confirmed or evicted meanwhile
                await buffer.new_data.wait()
                continue
            last = batch[-1].seq
            for part in streams.split(batch, after):
                span = (
                    f'"range":{{"after":{part.after},"last":{part.last},'
                    f'"count":{len(part.records)}}},'
                    f'"confirm":"{cfg.confirm}","order":"{cfg.order}"'
                )
                for station, records in by_station(part.records).items():
                    topic, head = self._station(part.epoch, station)
                    await session.window.acquire()
                    mid = link.publish(topic, envelope(head, records, span))
                    session.inflight[mid] = [r.seq for r in records]
                    self.status.published_messages += 1
                    self.status.published_records += len(records)
                    self.status.inflight = len(session.inflight)
            if self._published_high <= self._confirmed_through:
                # Nothing was waiting for the store: its confirmation clock starts now.
                self._progress_at = loop.time()
            self._published_high = max(self._published_high, last)
            self._progress.set()
            after = last
            if rate is not None:
                next_at = max(next_at, loop.time() - 1.0) + len(batch) / rate
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the backlog, not waiting for a state

    async def _stalled(self) -> None:
        """Return once the store's watermark has not moved for ``confirm_timeout`` while
        published records wait for it (store mode), or at once when told to resend."""
        loop = asyncio.get_running_loop()
        # A store that stays down would otherwise get the whole journal every confirm_timeout:
        # each resend without progress doubles the wait, up to RESEND_BACKOFF_MAX times.
        while not self._resend_now.is_set():
            timeout = self.config.confirm_timeout * min(2**self._stalls, RESEND_BACKOFF_MAX)
            self._progress.clear()
            if self._published_high <= self._confirmed_through:
                await self._progress.wait()  # set by every publish progress or confirmation
                continue
            remaining = self._progress_at + timeout - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._progress.wait()

    def _resend(self, reason: str) -> None:
        """Send again from the watermark now (store mode): the watchdog returns at once."""
        if self.config.confirm != "store":
            return
        self._resend_reason = reason
        self._resend_now.set()
        self._progress.set()

    # ---- confirmations ------------------------------------------------------------------

    def _acked(self, seqs: list[int]) -> None:
        if self._refused_first is not None and self._refused_first in seqs:
            # The message the broker refused went through this time (ACL fixed).
            self._refused_first = None
            self.alarms.clear("publish_refused", "the broker accepts the refused records now")
        if self._session is not None:
            self.status.inflight = len(self._session.inflight)
        if self.config.confirm == "puback":
            self._deleter.add(seqs)
        else:
            self._progress.set()  # the watchdog re-evaluates now that something went out

    def _refused(self, seqs: list[int], reason: str) -> None:
        """MQTT 5: the broker refused a message (e.g. not authorized). Its rows stay; the
        connection is dropped so everything is sent again after the backoff."""
        self.status.refused_messages += 1
        self._refused_first = seqs[0]
        self.alarms.raise_(
            "publish_refused",
            f"broker refused records {seqs[0]}..{seqs[-1]}: {reason}; they stay in the journal",
        )
        link = self._link
        if link is not None:
            link._set_lost(f"broker refused a message: {reason}")

    def send(self, topic: str, payload: bytes) -> bool:
        """Publish a message that is not a record (QoS 1, not retained) if connected now;
        False if not (the caller decides what no uplink means)."""
        link = self._link
        if link is None or not link.connected.done() or link.lost.done():
            return False
        try:
            link.publish_control(topic, payload, retain=False).add_done_callback(_quiet)
        except SyncError:
            return False
        return True

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        listener = self.listeners.get(topic)
        if listener is not None:
            listener(payload, retained)
            return
        if topic == self.status_topic:
            with contextlib.suppress(ValueError):
                self._presence.heard(json.loads(payload), retained)
            return
        if topic != self.confirm_topic or self.config.confirm != "store":
            return
        try:
            confirmation = parse_confirmation(payload, self.agent_id)
        except ValueError as exc:
            log.warning("ignoring message on %s: %s", topic, exc)
            return
        self._session_seen(confirmation, retained)
        if confirmation.epochs is None:
            self._confirm_all(confirmation.seq)
        else:
            self._confirm_epochs(confirmation)

    def _session_seen(self, confirmation: Confirmation, retained: bool) -> None:
        """A store that lost its broker session missed what was published meanwhile. If it
        says so while we are connected, send again now; a confirmation found retained when
        we subscribed needs nothing: this connection started from the watermark after it."""
        session = confirmation.session
        if session is None:
            return
        before = self._sessions.get(confirmation.store)
        self._sessions[confirmation.store] = session
        if before is not None and before != session and not retained:
            self._resend(
                f"trace store {confirmation.store!r} lost its broker session (a broker restart?) "
                "and missed what was published meanwhile"
            )

    def _confirm_all(self, seq: int) -> None:
        """A store of the previous version: one watermark over the whole journal."""
        assert self._streams is not None
        committed = self._buffer.committed_seq
        if seq > committed:
            self._ahead(seq, committed)
            return
        self.alarms.clear("confirm_ahead")
        self._streams.confirm_all(seq)
        self._advanced()

    def _confirm_epochs(self, confirmation: Confirmation) -> None:
        streams = self._streams
        assert streams is not None
        assert confirmation.epochs is not None
        identity = streams.identity
        committed = self._buffer.committed_seq
        ahead = False
        for epoch in identity.epochs:
            if epoch.id == LEGACY_EPOCH:
                seq: int | None = confirmation.seq
            else:
                seq = confirmation.epochs.get(epoch.id)
            if seq is None:
                continue
            end = identity.end_of(epoch)
            if end is None and seq > committed:
                # This opening's epoch is ours alone: a store ahead of it has another
                # journal's records under our epoch id. Never release on it.
                ahead = True
                self._ahead(seq, committed)
                continue
            legacy_end = streams.legacy_end()
            if epoch.id == LEGACY_EPOCH and legacy_end is not None and seq > legacy_end:
                if self._confirmed_through < legacy_end:
                    self._rekey_legacy(seq, legacy_end)
                continue
            streams.confirm(epoch.id, seq)
        if not ahead:
            self.alarms.clear("confirm_ahead")
        self._advanced()

    def _ahead(self, seq: int, committed: int) -> None:
        self.alarms.raise_(
            "confirm_ahead",
            f"trace store confirms seq {seq} but this journal's last seq is {committed}: "
            f"do two agents share the id {self.agent_id!r} (with a store of the previous "
            "version, also: was the journal replaced)? Nothing is released on it",
        )

    def _rekey_legacy(self, seq: int, end: int) -> None:
        """The store holds records without an epoch (from before journals had an identity)
        up to ``seq``, above this journal's own (``end``): another journal's, under our
        agent id. Our rows of that time cannot be told apart from those by their keys: send
        them again as new records under an epoch of their own."""
        if self._rekeying:
            return
        self._rekeying = True

        async def rekey() -> None:
            try:
                identity = await self._buffer.rekey(LEGACY_EPOCH)
            except BufferError_ as exc:
                log.error("cannot rename the journal's legacy epoch: %s", exc)
                return
            finally:
                self._rekeying = False
            assert self._streams is not None
            self._streams.identity = identity
            self._streams.forget(LEGACY_EPOCH)
            log.warning(
                "the trace store holds records of agent %r without an epoch up to seq %d, "
                "above this journal's own (up to %d): another journal's. This journal's rows "
                "of that time are sent again as new records (epoch %s), never taken for those",
                self.agent_id,
                seq,
                end,
                identity.epochs[0].id,
            )
            self._resend("the legacy rows got an epoch of their own")

        asyncio.get_running_loop().create_task(rekey(), name="mqtt-sync-rekey")

    def _advanced(self) -> None:
        """Recompute the confirmed prefix; delete it and restart the confirmation clock if it
        moved."""
        streams = self._streams
        assert streams is not None
        through = streams.resume()
        self.status.store_watermark = max(self.status.store_watermark, through)
        if through <= self._confirmed_through:
            return
        self._confirmed_through = through
        self._stalls = 0
        self._progress_at = asyncio.get_running_loop().time()
        self._progress.set()
        self._deleter.add_through(through)

    def _foreign(self, others: dict[str, tuple[int, int]]) -> None:
        """Rows another agent id wrote are in this journal (a file copied from another PC, or
        a renamed agent): they go out under our id, kept apart by their epochs."""
        if not others:
            return
        rows = sum(n for n, _ in others.values())
        self._foreign_through = max(top for _, top in others.values())
        self.alarms.raise_(
            "journal_foreign",
            f"this journal holds {rows} record(s) made by agent(s) "
            f"{', '.join(repr(a) for a in sorted(others))} (up to seq {self._foreign_through}): "
            f"they are sent as agent {self.agent_id!r}'s, kept apart from that agent's own by "
            "their journal epochs. Nothing is lost. If this journal was copied from another PC "
            "by mistake: stop the agent, move the journal aside, start it again, and send the "
            "copy's records from the PC they belong to",
            level=logging.WARNING,
        )

    async def _heartbeat(self) -> None:
        """While another agent with our id is about: keep telling it we are here, and notice
        when it is gone. And notice when the rows of another agent id are all delivered."""
        while True:
            await asyncio.sleep(HEARTBEAT)
            self._presence.beat()
            if self.alarms.is_active("journal_foreign"):
                with contextlib.suppress(BufferError_):
                    left = await self._buffer.read_batch(0, 1, until_seq=self._foreign_through)
                    if not left:
                        self.alarms.clear(
                            "journal_foreign", "the other agent's records are all delivered"
                        )

    def _station(self, epoch: Epoch, station: str) -> tuple[str, str]:
        known = self._stations.get((epoch.id, station))
        if known is None:
            why = invalid_topic_level(station)
            if why:  # station names are validated by the config; this is a bug upstream
                raise SyncError(f"station name unusable as a topic level: {why}")
            journal = self._buffer.identity.journal
            head = envelope_head(self.agent_id, journal, epoch, self.site, self.line, station)
            known = (topic_for(self.config, self.site, self.line, station), head)
            self._stations[(epoch.id, station)] = known
        return known


def _quiet(done: asyncio.Future[None]) -> None:
    """A question's PUBACK is not waited for: its answer (or none) is what counts."""
    if not done.cancelled():
        done.exception()
