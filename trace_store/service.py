"""The trace store: MQTT in, database out, confirmations back.

Threads and ownership
---------------------
- **paho's network thread** (one per connection) only turns each PUBLISH into an item on
  ``_inbox``. ``manual_ack=True``: paho never acknowledges a message by itself.
- **the writer** (``trace-store-writer``) owns the database, the range tracker, the held
  messages and the confirmations. It takes every message waiting in ``_inbox`` as one batch,
  checks each, commits them in ONE transaction (records, genealogy, rejected rows and the new
  watermarks together), and only then PUBACKs them, in the order they arrived (MQTT requires
  that order). Then it publishes the moved watermarks, coalesced per agent.
- **Order.** A message of a ``confirm: store`` + ``in_order`` agent whose range starts above
  the agent's watermark is not committed but held in memory (``held.py``) and PUBACKed with
  its batch; it is committed, in seq order, by the batch that moves the watermark up to it.
  So an agent's records in the database are always a prefix of its journal (see ``_select``).
- **Keys.** Records are keyed by (agent, epoch, seq), and each (agent, epoch) is a *stream*
  with its own ranges, held messages and watermark (docs/delivery.md, "The journal's
  identity"); messages without an epoch (agents of the previous version) are the legacy
  epoch ``''``. Two epochs of one agent writing at once (two PCs with one agent id) are logged
  (``writers.py``); both are kept.
- **the link keeper** (``trace-store-mqtt``, ``keeper.py``) connects, notices a lost
  connection and connects again with jittered backoff, probing a broker it could not reach so
  that one coming back is used at once (``link.py``). Like ``sync/mqtt.py`` every attempt
  gets a fresh paho client.
- **the quality thread** (``trace-store-quality``, ``quality/publisher.py``) has its own
  database connection: it publishes the blocked set (on each connection and when the blocks'
  change counter moves) and answers the agents' route questions (docs/quality.md).
- Counters and watermarks other threads read are in ``observe.py``; log lines in
  ``ingest_log.py``.

The session is persistent (fixed client id, ``clean_session=False``, QoS 1 subscription):
the broker queues records while the store is down, and redelivers, on the next connection,
every message the store had not acknowledged. A message is acknowledged only after its records
are committed, so a store killed at any instant loses nothing; what it committed but had not
acknowledged arrives again and is dropped as a duplicate. A connection without the session
(a broker that crashed before saving it) means records published meanwhile reached nobody: the
confirmation's ``session`` value changes (``confirm.py``) and the agents send again at once.

If the database becomes unavailable the writer keeps nothing in memory it has not committed,
except held messages (their agents resend them anyway): it reopens the database with backoff,
then asks the link keeper for a fresh connection so the broker redelivers everything not
acknowledged.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import threading
import time
from dataclasses import dataclass
from types import TracebackType

from kernel.backoff import backoff_delay
from trace_store import agent_status
from trace_store.agent_status import AgentStatus
from trace_store.config import StoreConfig
from trace_store.confirm import SESSION_KEY, Confirmations, new_session
from trace_store.envelope import (
    Accepted,
    Reason,
    Rejection,
    Stream,
    parse,
)
from trace_store.held import HeldMessages
from trace_store.ingest_log import arrivals, log_holding, log_identity
from trace_store.keeper import LinkKeeper
from trace_store.link import Inbound, Link, Marks, tls_context
from trace_store.observe import AgentIngest, StoreView
from trace_store.observe import AgentView as AgentView  # re-exported: metrics, summary
from trace_store.quality.publisher import QualityPublisher
from trace_store.quality.ruleconf import RuleSet
from trace_store.ranges import RangeTracker
from trace_store.select import Selection, journal_of, select
from trace_store.storage import (
    Storage,
    StorageError,
    StorageUnavailable,
    open_storage,
)
from trace_store.throttle import RejectLog, Throttle
from trace_store.writers import Clash, LiveWriters

log = logging.getLogger(__name__)

MAX_BATCH_MESSAGES = 512
MAX_BATCH_BYTES = 32 * 1024 * 1024
JOIN_TIMEOUT = 15.0  # seconds to wait for our own threads on stop (> a blocking connect)
CLASH_LOG_INTERVAL = 60.0  # seconds: at most one log line per agent with two live journals


@dataclass(frozen=True, slots=True)
class _Up:
    link: Link


_STOP = object()


class TraceStore(StoreView):
    """Subscribes to every agent's records, stores them idempotently, confirms watermarks.

    In-process::

        store = TraceStore(StoreConfig(host="127.0.0.1", port=1883, db="trace.db"))
        store.start()            # opens the database (raises StorageError), starts threads
        store.wait_ready(10)     # subscribed (optional)
        ...
        store.stop()             # flushes confirmations, disconnects, joins every thread

    or ``with TraceStore(config) as store: ...``; ``run(stop_event)`` for a daemon.
    """

    def __init__(self, config: StoreConfig, rules: RuleSet | None = None) -> None:
        self.config = config
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._storage: Storage | None = None
        # ---- the writer's ----
        self._tracker = RangeTracker({})
        self._confirms = Confirmations(config)
        self._writers = LiveWriters()
        self._journals: dict[Stream, str | None] = {}  # the journal of each known epoch
        self._epoch_of: dict[str, str] = {}  # agent -> its current epoch
        self._reject_log = RejectLog()
        self._held = HeldMessages(config.max_held_records)
        self._held_log = Throttle()
        self._clash_log = Throttle(CLASH_LOG_INTERVAL)
        StoreView.__init__(self)
        self._stop_writer = threading.Event()
        self._failed: BaseException | None = None
        self._failed_event = threading.Event()
        self._keeper: LinkKeeper | None = None
        self.quality = QualityPublisher(config, self._current_link, rules)
        self._threads: list[threading.Thread] = []
        self._started = False

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Open the database and start the threads. Raises StorageError if the database
        cannot be used, before anything connects."""
        if self._started:
            raise RuntimeError("a TraceStore runs once: make a new one to start again")
        self._started = True
        tls: ssl.SSLContext | None = None
        if self.config.use_tls:
            try:
                tls = tls_context(self.config)
            except (OSError, ValueError) as exc:  # a missing file, a bad certificate
                raise ValueError(f"TLS settings: {exc}") from exc
        storage = open_storage(self.config.db)
        try:
            self._load(storage)
        except BaseException:
            storage.close()
            raise
        log.info(
            "trace store %s: database %s, %d agent(s) known; broker %s:%d, subscribing to %s",
            self.config.store_id,
            storage.location,
            len(self._confirms.sites),
            self.config.host,
            self.config.port,
            self.config.subscription,
        )
        self._keeper = LinkKeeper(
            self.config,
            tls,
            self._inbox.put,
            self._broker_has,
            self._link_up,
            self._count,
            self.quality.ask,
            self._status_heard,
        )
        self._threads = [
            threading.Thread(target=self._writer_main, name="trace-store-writer", daemon=True),
            threading.Thread(target=self._link_main, name="trace-store-mqtt", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self.quality.start()

    def stop(self) -> None:
        """Process what already arrived, publish pending confirmations, disconnect, and join
        every thread. Messages not yet committed stay unacknowledged: the broker redelivers
        them to the next run."""
        if not self._threads:
            return
        writer, keeper = self._threads
        self._stop_writer.set()
        self._inbox.put(_STOP)
        writer.join(JOIN_TIMEOUT)
        if self._held.records and not writer.is_alive():
            # Fine: they were only held because their agents keep them until W covers them.
            log.info(
                "%d held records dropped at stop; their agents resend them", self._held.records
            )
        self.quality.stop()
        if self._keeper is not None:
            self._keeper.stop()
        keeper.join(JOIN_TIMEOUT)
        alive = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        if alive:
            log.error("trace store threads did not end: %s", ", ".join(alive))

    def run(self, stop: threading.Event) -> None:
        """Start, run until ``stop`` is set, stop. Re-raises what made the writer fail."""
        self.start()
        try:
            while not stop.wait(0.5) and not self._failed_event.is_set():
                pass
        finally:
            self.stop()
        if self._failed is not None:
            raise self._failed

    def __enter__(self) -> TraceStore:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- observing (any thread) -------------------------------------------------------------

    def wait_ready(self, timeout: float) -> bool:
        """True once connected and subscribed (messages published from now on reach us)."""
        return self._keeper is not None and self._keeper.ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._keeper is not None and self._keeper.ready.is_set()

    @property
    def failed(self) -> BaseException | None:
        """What ended the writer, if something did (a bug: the store must be restarted)."""
        return self._failed

    # ---- link keeper thread ---------------------------------------------------------------

    def _link_main(self) -> None:
        try:
            assert self._keeper is not None
            self._keeper.run()
        except BaseException as exc:  # a bug: make it visible and let run() end the process
            log.critical("trace store MQTT link failed", exc_info=True)
            self._failed = exc
            self._failed_event.set()

    def _link_up(self, link: Link) -> None:
        """Link keeper: a connection is up. The writer republishes the confirmations, the
        quality thread the blocked set."""
        self._inbox.put(_Up(link))
        self.quality.connected(link)

    def _current_link(self) -> Link | None:
        return self._keeper.current if self._keeper is not None else None

    def _request_cycle(self) -> None:
        if self._keeper is not None:
            self._keeper.request_cycle()

    # ---- writer thread -----------------------------------------------------------------------

    def _load(self, storage: Storage) -> None:
        streams = storage.streams()  # oldest first: the last one of an agent is its current
        session = storage.meta(SESSION_KEY)
        self._storage = storage
        self._tracker = RangeTracker({s.stream: s.watermark for s in streams})
        self._journals = {s.stream: s.journal for s in streams}
        self._epoch_of = {s.agent: s.epoch for s in streams}
        self._confirms.load(streams)
        if session is not None:
            self._confirms.session = session
        with self._lock:
            for s in streams:
                self._committed[s.stream] = max(self._committed.get(s.stream, 0), s.watermark)
                seen = self._agents.setdefault(s.agent, AgentIngest())
                if seen.epoch != s.epoch:
                    seen.epoch, seen.received_seq = s.epoch, 0
                seen.received_seq = max(seen.received_seq, s.watermark)
            self._lock.notify_all()

    def _writer_main(self) -> None:
        try:
            stopping = False
            while not stopping:
                items = self._next_items()
                inbound: list[Inbound] = []
                ups: list[Link] = []
                statuses: list[AgentStatus] = []
                for item in items:
                    if item is _STOP:
                        stopping = True
                    elif isinstance(item, _Up):
                        ups.append(item.link)
                    elif isinstance(item, Inbound):
                        inbound.append(item)
                    elif isinstance(item, AgentStatus):
                        statuses.append(item)
                if inbound:
                    self._handle(inbound)
                if statuses:
                    self._write_statuses(statuses)
                for link in ups:
                    self._connected(link)
                self._confirms.flush(self._tracker, force=stopping)
        except BaseException as exc:  # a bug: make it visible and let run() end the process
            log.critical("trace store writer failed", exc_info=True)
            self._failed = exc
            self._failed_event.set()
        finally:
            if self._storage is not None:
                with contextlib.suppress(Exception):
                    self._storage.close()
                self._storage = None

    def _status_heard(self, inbound: Inbound) -> None:
        """An agent's status message (paho's thread): to the writer, if it is one."""
        cfg = self.config
        status = agent_status.parse(inbound.topic, inbound.payload, cfg.topic_prefix, cfg.agents)
        if status is None:
            log.debug("not an agent status on %s: ignored", inbound.topic)
            self._count("statuses_ignored")
            return
        self._inbox.put(status)

    def _write_statuses(self, statuses: list[AgentStatus]) -> None:
        if self._storage is None:
            return  # the database is away: the agents say it again within a minute
        try:
            agent_status.write(self._storage, statuses)
        except StorageUnavailable as exc:
            self._recover(exc)
            return
        except Exception as exc:  # a status is information, never a reason to stop ingesting
            log.warning("agent statuses not stored: %s: %s", type(exc).__name__, exc)
            return
        with self._lock:
            self._counters["statuses"] += len(statuses)
            self._lock.notify_all()

    def _next_items(self) -> list[object]:
        """Every item waiting, at least one (or none when a confirmation falls due)."""
        try:
            first = self._inbox.get(timeout=self._confirms.due_in())
        except queue.Empty:
            return []
        items = [first]
        size = len(first.payload) if isinstance(first, Inbound) else 0
        while len(items) < MAX_BATCH_MESSAGES and size < MAX_BATCH_BYTES:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            items.append(item)
            if isinstance(item, Inbound):
                size += len(item.payload)
        return items

    def _handle(self, inbound: list[Inbound]) -> None:
        # Messages of a closed connection are not acknowledged anyway: the broker sends them
        # again on the current one.
        live = [m for m in inbound if not m.link.closed]
        if not live or self._storage is None:
            return
        cfg = self.config
        checked: list[tuple[Inbound, Accepted | Rejection]] = [
            (
                m,
                parse(
                    m.topic,
                    m.payload,
                    prefix=cfg.topic_prefix,
                    max_bytes=cfg.max_message_bytes,
                    allowed_agents=cfg.agents,
                ),
            )
            for m in live
        ]
        self._commit_isolating(checked)

    def _commit_isolating(self, checked: list[tuple[Inbound, Accepted | Rejection]]) -> None:
        """Commit a batch; if the database refuses it for its content, find the message it
        refuses by committing them one by one, and keep that one aside as rejected."""
        selection = self._select(checked)
        try:
            self._commit(checked, selection)
        except StorageUnavailable as exc:
            self._recover(exc)
        except Exception as exc:
            if selection.released_written:
                # A held message may be the one refused, and isolating needs messages of the
                # batch. It was acknowledged long ago, but the agent still has its rows: forget
                # the released ones, and the resend brings them as ordinary messages.
                self._drop_released(selection, exc)
                self._commit_isolating(checked)
                return
            if len(checked) > 1:
                for one in checked:
                    if self._storage is None or one[0].link.closed:
                        return
                    self._commit_isolating([one])
                return
            message, result = checked[0]
            if isinstance(result, Rejection) and result.reason is Reason.STORE_ERROR:
                # Not even the rejection can be stored: leave the message unacknowledged; it
                # comes back on the next connection.
                log.critical("cannot store message on %s, even as rejected", message.topic)
                return
            log.error("database refused the message on %s", message.topic, exc_info=True)
            detail = f"{type(exc).__name__}: {exc}"[:500]
            self._commit_isolating([(message, Rejection(Reason.STORE_ERROR, detail, result.agent))])

    def _select(self, checked: list[tuple[Inbound, Accepted | Rejection]]) -> Selection:
        return select(checked, self._tracker, self._held, self._journals, self._epoch_of)

    def _commit(
        self, checked: list[tuple[Inbound, Accepted | Rejection]], selection: Selection
    ) -> None:
        storage = self._storage
        assert storage is not None
        assert selection.plan is not None
        tracker = self._tracker
        batch, plan = selection.batch, selection.plan
        written = bool(batch.rows or batch.rejected or batch.agents or batch.streams)
        # The one commit. A batch of held messages only has nothing to write.
        inserted = storage.write(batch) if written else 0
        tracker.apply(plan)
        self.quality.records(batch.rows)  # committed: the rules may see them
        involved = selection.released.keys() | {h.message.stream for h in selection.hold}
        had = {stream: self._held.records_of(stream) for stream in involved}
        for stream, n in selection.released.items():
            self._held.remove_first(stream, n)
        dropped = [h for h in selection.hold if not self._held.add(h)]
        for message, _ in checked:  # in arrival order, as MQTT requires
            message.link.ack(message.mid, message.qos)
        confirms = self._confirms
        for stream in batch.streams:
            self._journals[stream] = journal_of(stream, selection, self._journals)
        self._epoch_of.update(selection.fresh)
        confirms.sites.update(selection.touched)
        confirms.pending.update(agent for agent, _ in plan.watermarks)
        confirms.pending.update(selection.reconfirm)
        clock = time.monotonic()
        clashes: dict[str, Clash] = {}
        for stream in selection.streams:
            if confirms.touch(*stream):
                confirms.pending.add(stream[0])  # an epoch its confirmation did not list
        for _, result in checked:
            if isinstance(result, Accepted):
                clash = self._writers.observe(result, clock)
                if clash is not None:
                    clashes[clash.agent] = clash
        accepted = len(checked) - len(batch.rejected)
        kinds, arrived = arrivals(checked)
        now = time.time()
        logged = [c for c in clashes.values() if self._clash_log(c.agent) is not None]
        with self._lock:
            c = self._counters
            c["batches"] += written
            c["messages"] += len(checked)
            c["accepted"] += accepted
            c["rejected"] += len(batch.rejected)
            c["records"] += selection.records
            c["inserted"] += inserted
            c["conflicts"] += len(batch.conflicts)
            c["duplicates"] += (
                selection.written - inserted - len(batch.conflicts) + selection.skipped
            )
            c["held_records"] = self._held.records
            c["held_dropped"] += len(dropped)
            c["clashes"] += len(logged)
            for row in batch.rejected:
                self._rejected[row.reason] = self._rejected.get(row.reason, 0) + 1
            for kind, n in kinds.items():
                self._kinds[kind] = self._kinds.get(kind, 0) + n
            for agent, epoch in selection.fresh.items():
                seen = self._agents.setdefault(agent, AgentIngest())
                if seen.epoch != epoch:
                    seen.epoch, seen.received_seq = epoch, tracker.watermark((agent, epoch))
            for (agent, epoch), last in arrived.items():
                seen = self._agents.setdefault(agent, AgentIngest())
                seen.last_arrival = now
                if epoch == seen.epoch:
                    seen.received_seq = max(seen.received_seq, last)
            for agent in {stream[0] for stream in involved}:
                self._agents.setdefault(agent, AgentIngest()).held = self._held_of(agent)
            for agent, clash in clashes.items():
                self._agents.setdefault(agent, AgentIngest()).clash = clash
            for stream, w in plan.watermarks.items():
                self._committed[stream] = w
            self._lock.notify_all()
        for message, result in checked:
            if isinstance(result, Rejection):
                self._reject_log(result, message.topic, len(message.payload))
        log_holding(self._held, self._tracker, self._held_log, had, dropped)
        log_identity(batch, logged)

    def _held_of(self, agent: str) -> int:
        return sum(self._held.records_of(s) for s in self._held.agents() if s[0] == agent)

    def _drop_released(self, selection: Selection, exc: Exception) -> None:
        """Forget the held messages a failed commit would have released."""
        dropped = selection.released_written  # the others were stored already
        for stream, n in selection.released.items():
            self._held.remove_first(stream, n)
        log.error(
            "database refused a batch with %d held message(s) (%s: %s); dropped them, "
            "the agents resend them",
            dropped,
            type(exc).__name__,
            exc,
        )
        with self._lock:
            self._counters["held_records"] = self._held.records
            self._counters["held_dropped"] += dropped
            for agent in {stream[0] for stream in selection.released}:
                self._agents.setdefault(agent, AgentIngest()).held = self._held_of(agent)
            self._lock.notify_all()

    def _recover(self, exc: StorageUnavailable) -> None:
        """The database failed: nothing of the batch is committed or acknowledged. Reopen it,
        reload the watermarks, and reconnect so the broker redelivers."""
        with self._lock:
            self._counters["storage_failures"] += 1
            self._lock.notify_all()
        log.error("database unavailable: %s; nothing acknowledged, reopening", exc)
        if self._storage is not None:
            with contextlib.suppress(Exception):
                self._storage.close()
            self._storage = None
        attempt = 0
        while not self._stop_writer.is_set():
            try:
                storage = open_storage(self.config.db)
            except StorageError as again:
                log.debug("database still unavailable: %s", again)
            else:
                try:
                    self._load(storage)
                except StorageError as again:
                    storage.close()
                    log.debug("database still unavailable: %s", again)
                else:
                    log.info("database %s available again", storage.location)
                    self._request_cycle()
                    return
            cfg = self.config
            self._stop_writer.wait(backoff_delay(attempt, cfg.backoff_initial, cfg.backoff_max))
            attempt += 1

    # ---- confirmations ------------------------------------------------------------------------

    def _connected(self, link: Link) -> None:
        """A connection is up: republish every confirmation. Without our session the broker
        routed records published meanwhile to nobody: a new ``session`` value tells the
        agents to send again from their watermark at once (``confirm.py``)."""
        confirms = self._confirms
        if not link.session_present or not confirms.session:
            before = confirms.session
            confirms.session = new_session()
            if before:
                log.warning(
                    "the broker had no session for this store (lost in a crash, or expired): "
                    "records published while it had none reached nobody; the agents are told "
                    "to send again from their watermarks (session %s -> %s)",
                    before,
                    confirms.session,
                )
            if self._storage is not None:
                try:
                    self._storage.set_meta(SESSION_KEY, confirms.session)
                except StorageError as exc:  # kept in memory; a restart makes a new one
                    log.warning("cannot save the session value: %s", exc)
        confirms.publish_all(link, self._tracker)

    def _broker_has(self, agent: str, marks: Marks) -> None:
        """paho thread: the broker acknowledged a confirmation (it holds it, retained)."""
        with self._lock:
            self._counters["confirmations"] += 1
            for stream, seq in marks.items():
                self._published[stream] = max(self._published.get(stream, 0), seq)
            self._lock.notify_all()
