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
- **the link keeper** (``trace-store-mqtt``) connects, notices a lost connection and connects
  again with jittered backoff. Like ``sync/mqtt.py`` every attempt gets a fresh paho client:
  a dead connection's outbox (stale confirmations) is never replayed after a newer one, and a
  PUBACK can only go to the connection its message came from, never match another message that
  reuses the id on a new connection.

The session is persistent (fixed client id, ``clean_session=False``, QoS 1 subscription):
the broker queues records while the store is down, and redelivers, on the next connection,
every message the store had not acknowledged. A message is acknowledged only after its records
are committed, so a store killed at any instant loses nothing; what it committed but had not
acknowledged arrives again and is dropped as a duplicate.

If the database becomes unavailable the writer keeps nothing in memory it has not committed,
except held messages (their agents resend them anyway): it reopens the database with backoff,
then asks the link keeper for a fresh connection so the broker redelivers everything not
acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from kernel.backoff import backoff_delay
from trace_store.config import StoreConfig
from trace_store.envelope import Accepted, Reason, Rejection, parse, reason_class
from trace_store.held import Held, HeldKey, HeldMessages
from trace_store.ranges import Draft, Plan, RangeEntry, RangeTracker
from trace_store.storage import (
    AgentState,
    Batch,
    RejectedMessage,
    Storage,
    StorageError,
    StorageUnavailable,
    open_storage,
    utc_now,
)

log = logging.getLogger(__name__)

CONFIRM_SCHEMA = "edge-agent.confirm"
CONFIRM_VERSION = 1
MAX_BATCH_MESSAGES = 512
MAX_BATCH_BYTES = 32 * 1024 * 1024
EXCERPT_BYTES = 512  # of a rejected payload, kept readable in the rejected table
REJECT_LOG_INTERVAL = 10.0  # seconds: at most one log line per rejection reason per interval
CLOSE_GRACE = 2.0  # seconds a clean DISCONNECT may take
JOIN_TIMEOUT = 15.0  # seconds to wait for our own threads on stop (> a blocking connect)
PAHO_JOIN_TIMEOUT = 5.0  # seconds for paho's thread once its socket is closed (it ends at once)


class LinkError(Exception):
    """A connection attempt failed; the message says why."""


@dataclass(frozen=True, slots=True)
class _Inbound:
    link: _Link
    mid: int
    qos: int
    topic: str
    payload: bytes


@dataclass(slots=True)
class AgentIngest:
    """What the store has seen of one agent (guarded by the store's lock)."""

    received_seq: int = 0  # highest seq of an accepted message (or the stored watermark)
    last_arrival: float | None = None  # wall clock of its last accepted message, this run
    held: int = 0  # records held now, waiting for a gap below them


@dataclass(frozen=True, slots=True)
class AgentView:
    """One agent as ``agent_stats`` shows it."""

    received_seq: int
    watermark: int  # committed in the database
    confirmed: int  # acknowledged by the broker as the retained confirmation
    held_records: int
    last_arrival: float | None


@dataclass(frozen=True, slots=True)
class _Up:
    link: _Link


_STOP = object()


def _tls_context(config: StoreConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.tls_ca)
    if config.tls_cert is not None:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


class _Link:
    """One connection: a fresh paho client and its network thread.

    Callbacks run in paho's thread and only set events or hand messages to ``deliver``.
    """

    def __init__(
        self,
        config: StoreConfig,
        tls: ssl.SSLContext | None,
        deliver: Callable[[_Inbound], None],
        changed: Callable[[], None],
        confirmed: Callable[[str, int], None],
    ) -> None:
        self._config = config
        self._deliver = deliver
        self._notify = changed
        self._confirmed = confirmed
        # Confirmations waiting for their PUBACK: mid -> (agent, watermark). paho calls
        # on_publish holding its own mutex, so this lock is never held while calling paho.
        self._confirm_lock = threading.Lock()
        self._confirm_pending: dict[int, tuple[str, int]] = {}
        self._acked_early: set[int] = set()  # PUBACKs that beat publish() returning
        self._changed = threading.Event()
        self.subscribed = threading.Event()
        self.lost = threading.Event()
        self.reason = ""
        self.session_present = False
        self.closed = False  # set first thing in close(); read by the writer
        self._aborted = False
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=False,  # the broker queues for us while we are down
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,  # the link keeper reconnects, with a fresh client
            manual_ack=True,  # PUBACK only after the commit
        )
        client.connect_timeout = config.connect_timeout
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        if tls is not None:
            client.tls_set_context(tls)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client

    @property
    def usable(self) -> bool:
        return self.subscribed.is_set() and not self.lost.is_set() and not self.closed

    def open(self) -> None:
        """Connect, subscribe, and return once the SUBACK is in. Raises LinkError."""
        cfg = self._config
        try:
            self.client.connect(cfg.host, cfg.port, cfg.keepalive)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise LinkError(f"cannot connect to {cfg.host}:{cfg.port}: {exc}") from exc
        self.client.loop_start()
        self._started = True
        # paho keeps its thread in a private attribute; None if it already ended.
        self._thread = self.client._thread
        deadline = time.monotonic() + cfg.connect_timeout
        while not self.subscribed.is_set():
            if self.lost.is_set():
                raise LinkError(self.reason)
            if self._aborted:
                raise LinkError("stopping")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkError(
                    f"no CONNACK/SUBACK from {cfg.host}:{cfg.port} within {cfg.connect_timeout:g} s"
                )
            self._changed.wait(remaining)
            self._changed.clear()

    def abort(self) -> None:
        """Make a pending ``open`` give up (the store is stopping)."""
        self._aborted = True
        self._changed.set()

    def ack(self, mid: int, qos: int) -> None:
        # On a dead link this queues into a client nobody runs: harmless, the broker
        # redelivers the message on the next connection.
        if qos > 0:
            self.client.ack(mid, qos)

    def publish_confirmation(self, topic: str, payload: bytes, agent: str, seq: int) -> bool:
        """Publish retained, QoS 1; ``confirmed(agent, seq)`` is called on its PUBACK."""
        info = self.client.publish(topic, payload, qos=1, retain=True)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        with self._confirm_lock:
            early = info.mid in self._acked_early
            if early:
                self._acked_early.discard(info.mid)
            else:
                self._confirm_pending[info.mid] = (agent, seq)
        if early:
            self._confirmed(agent, seq)
        return True

    def close(self) -> None:
        """Disconnect and join paho's thread. Safe in any state."""
        self.closed = True
        if self._started:
            if not self.lost.is_set():
                self.client.disconnect()  # queued behind our last PUBACKs and confirmations
                if not self.lost.wait(CLOSE_GRACE):
                    # The broker does not read (frozen?): a shut-down socket ends paho's loop.
                    sock = self._sock
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
            # Once disconnected paho's loop ends by itself (reconnect_on_failure is off).
            thread = self._thread
            if thread is not None:
                thread.join(PAHO_JOIN_TIMEOUT)
                if thread.is_alive():
                    log.error("paho network thread %s did not end", thread.name)
        else:
            with contextlib.suppress(Exception):
                self.client.disconnect()  # closes a socket left by a failed connect
        # Break the client <-> link cycle so the client goes now, not at the next GC.
        self.client.on_socket_open = None
        self.client.on_connect = None
        self.client.on_subscribe = None
        self.client.on_message = None
        self.client.on_disconnect = None
        self.client.on_publish = None

    # ---- paho thread ------------------------------------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):  # also true for an ssl.SSLSocket
            # Without it Nagle holds small PUBACKs back ~40 ms, and the broker's in-flight
            # window (20 messages by default) with them.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._set_lost(f"broker refused the connection: {reason_code}")
            return
        self.session_present = bool(flags.session_present)
        # Again on every connection: harmless when the session kept it, needed when the
        # broker lost its persistence.
        client.subscribe(self._config.subscription, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if any(code.is_failure for code in reason_codes):
            self._set_lost(f"broker refused the subscription to {self._config.subscription}")
            client.disconnect()
            return
        self.subscribed.set()
        self._changed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # brokers refuse such topics; be safe anyway
            topic = bytes(getattr(msg, "_topic", b"")).decode("utf-8", "replace")
        self._deliver(_Inbound(self, msg.mid, msg.qos, topic, bytes(msg.payload)))

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._confirm_lock:
            entry = self._confirm_pending.pop(mid, None)
            if entry is None:
                self._acked_early.add(mid)
        if entry is not None:
            self._confirmed(*entry)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._set_lost(f"connection ended ({reason_code})")

    def _set_lost(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()
        self._changed.set()
        self._notify()


class _Throttle:
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


class _RejectLog:
    """One WARNING per reason per interval, with how many were not logged in between."""

    def __init__(self, interval: float = REJECT_LOG_INTERVAL) -> None:
        self._throttle = _Throttle(interval)

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


@dataclass(slots=True)
class _Selection:
    """What one batch will do, decided before anything is written or changed (``_select``):
    a failed commit leaves the tracker and the held messages as they were."""

    batch: Batch = field(default_factory=Batch)
    plan: Plan | None = None
    touched: dict[str, tuple[str, str]] = field(default_factory=dict)  # agent -> site, line
    records: int = 0  # records of the batch's accepted messages, as they arrived
    written: int = 0  # records in this transaction (some may be duplicates in the database)
    skipped: int = 0  # records not written because they are stored (or held) already
    released: dict[str, int] = field(default_factory=dict)  # agent -> held messages it ends
    released_written: int = 0  # of those, messages whose records are in this transaction
    hold: list[Held] = field(default_factory=list)  # the batch's messages to set aside

    def take(self, message: Accepted, draft: Draft) -> None:
        self.batch.rows.extend(message.rows)
        self.batch.edges.extend(message.edges)
        self.written += len(message.rows)
        self.touched[message.agent] = (message.site, message.line)
        if message.range is not None:
            draft.add(
                RangeEntry(message.agent, message.range, message.message_id, len(message.rows))
            )


class TraceStore:
    """Subscribes to every agent's records, stores them idempotently, confirms watermarks.

    In-process::

        store = TraceStore(StoreConfig(host="127.0.0.1", port=1883, db="trace.db"))
        store.start()            # opens the database (raises StorageError), starts threads
        store.wait_ready(10)     # subscribed (optional)
        ...
        store.stop()             # flushes confirmations, disconnects, joins every thread

    or ``with TraceStore(config) as store: ...``; ``run(stop_event)`` for a daemon.
    """

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._storage: Storage | None = None
        self._tracker = RangeTracker({})
        self._sites: dict[str, tuple[str, str]] = {}  # agent -> (site, line), last seen
        self._pending: set[str] = set()  # agents whose watermark waits to be published
        self._last_sent: dict[str, float] = {}  # agent -> monotonic time of last publish
        self._up_link: _Link | None = None  # the link confirmations go to (writer's view)
        self._reject_log = _RejectLog()
        self._held = HeldMessages(config.max_held_records)  # the writer's
        self._held_log = _Throttle()
        # Shared with other threads: guarded by _lock (stats, watermarks) or events.
        self._lock = threading.Condition()
        self._committed: dict[str, int] = {}
        self._published: dict[str, int] = {}
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "messages",
                "accepted",
                "rejected",
                "records",
                "inserted",
                "duplicates",
                "batches",
                "confirmations",
                "storage_failures",
                "connections",
                "disconnects",
                "held_records",
                "held_dropped",
            ),
            0,
        )
        self._rejected: dict[str, int] = {}
        self._kinds: dict[str, int] = {}  # records of accepted messages by kind, on arrival
        self._agents: dict[str, AgentIngest] = {}
        self._ready = threading.Event()
        self._stop_writer = threading.Event()
        self._stop_link = threading.Event()
        self._cycle = threading.Event()
        self._wake = threading.Event()  # the link keeper's doorbell
        self._failed: BaseException | None = None
        self._failed_event = threading.Event()
        self._current: _Link | None = None
        self._tls: ssl.SSLContext | None = None
        self._threads: list[threading.Thread] = []
        self._started = False

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Open the database and start the threads. Raises StorageError if the database
        cannot be used, before anything connects."""
        if self._started:
            raise RuntimeError("a TraceStore runs once: make a new one to start again")
        self._started = True
        if self.config.use_tls:
            try:
                self._tls = _tls_context(self.config)
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
            len(self._sites),
            self.config.host,
            self.config.port,
            self.config.subscription,
        )
        self._threads = [
            threading.Thread(target=self._writer_main, name="trace-store-writer", daemon=True),
            threading.Thread(target=self._link_main, name="trace-store-mqtt", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

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
        self._stop_link.set()
        current = self._current
        if current is not None:
            current.abort()
        self._wake.set()
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
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def watermark(self, agent: str) -> int:
        """The agent's watermark as committed in the database."""
        with self._lock:
            return self._committed.get(agent, 0)

    def confirmed(self, agent: str) -> int:
        """The highest watermark of the agent the broker has acknowledged (PUBACK) from us:
        it holds it as the retained confirmation."""
        with self._lock:
            return self._published.get(agent, 0)

    def wait_watermark(
        self, agent: str, seq: int, timeout: float, *, published: bool = False
    ) -> bool:
        """Wait until the agent's watermark reaches ``seq``: committed in the database, or
        with ``published``, acknowledged by the broker as the retained confirmation."""
        source = self._published if published else self._committed
        with self._lock:
            return self._lock.wait_for(lambda: source.get(agent, 0) >= seq, timeout)

    def wait_stats(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        """Wait until ``predicate(stats())`` holds; re-checked after every commit."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self._stats()), timeout)

    def stats(self) -> dict[str, Any]:
        """Counters since start: messages (acknowledged, held ones included), accepted,
        rejected (total and ``by_reason``), records (of accepted messages, on arrival;
        ``by_kind``), inserted, duplicates (records stored already: conflicts, held copies,
        records the watermark had passed), batches (transactions), confirmations
        (acknowledged by the broker), storage_failures, connections (successful), disconnects
        (failed attempts and lost connections), held_dropped (messages that would have exceeded
        ``max_held_records``, or released by a batch the database refused). And one gauge:
        held_records (records held now, every agent)."""
        with self._lock:
            return self._stats()

    def _stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self._counters)
        out["by_reason"] = dict(self._rejected)
        out["by_kind"] = dict(self._kinds)
        return out

    def agent_stats(self) -> dict[str, AgentView]:
        """Per agent known to this store: what arrived and what is confirmed (metrics)."""
        with self._lock:
            return {
                agent: AgentView(
                    received_seq=seen.received_seq,
                    watermark=self._committed.get(agent, 0),
                    confirmed=self._published.get(agent, 0),
                    held_records=seen.held,
                    last_arrival=seen.last_arrival,
                )
                for agent, seen in self._agents.items()
            }

    @property
    def failed(self) -> BaseException | None:
        """What ended the writer, if something did (a bug: the store must be restarted)."""
        return self._failed

    # ---- link keeper thread ---------------------------------------------------------------

    def _link_main(self) -> None:
        try:
            self._link_loop()
        except BaseException as exc:  # a bug: make it visible and let run() end the process
            log.critical("trace store MQTT link failed", exc_info=True)
            self._failed = exc
            self._failed_event.set()

    def _link_loop(self) -> None:
        cfg = self.config
        attempt = 0
        down_since: float | None = None
        failures = 0
        while not self._stop_link.is_set():
            link = _Link(cfg, self._tls, self._inbox.put, self._wake.set, self._broker_has)
            self._current = link
            up_at: float | None = None
            try:
                link.open()
                up_at = time.monotonic()
                if down_since is None:
                    log.info(
                        "connected to MQTT broker %s:%d as %s (%s session)",
                        cfg.host,
                        cfg.port,
                        cfg.client_id,
                        "resumed" if link.session_present else "new",
                    )
                else:
                    log.info(
                        "MQTT broker %s:%d reachable again after %.1f s (%d failed attempts)",
                        cfg.host,
                        cfg.port,
                        time.monotonic() - down_since,
                        failures,
                    )
                    down_since, failures = None, 0
                with self._lock:
                    self._counters["connections"] += 1
                    self._lock.notify_all()
                self._inbox.put(_Up(link))
                self._ready.set()
                while not (link.lost.is_set() or self._stop_link.is_set() or self._cycle.is_set()):
                    self._wake.wait()
                    self._wake.clear()
                reason = link.reason or "closed"
            except LinkError as exc:
                reason = str(exc)
            finally:
                self._ready.clear()
                link.close()
                self._current = None
            if self._stop_link.is_set():
                break
            if self._cycle.is_set():
                self._cycle.clear()
                log.info("reconnecting so that the broker redelivers unacknowledged messages")
                attempt = 0
                continue
            # A connection that held a while resets the backoff; one dropped at once (a second
            # store with our client id) does not.
            if up_at is not None and time.monotonic() - up_at >= cfg.backoff_max:
                attempt = 0
            failures += 1
            with self._lock:
                self._counters["disconnects"] += 1
                self._lock.notify_all()
            if down_since is None:
                down_since = time.monotonic()
                log.error(
                    "MQTT broker %s:%d %s: %s; retrying with backoff",
                    cfg.host,
                    cfg.port,
                    "lost" if up_at is not None else "unreachable",
                    reason,
                )
            else:
                log.debug("MQTT broker %s:%d still unreachable: %s", cfg.host, cfg.port, reason)
            self._stop_link.wait(backoff_delay(attempt, cfg.backoff_initial, cfg.backoff_max))
            attempt += 1

    def _request_cycle(self) -> None:
        self._cycle.set()
        self._wake.set()

    # ---- writer thread -----------------------------------------------------------------------

    def _load(self, storage: Storage) -> None:
        agents = storage.agents()
        self._storage = storage
        self._tracker = RangeTracker({a.agent: a.watermark for a in agents.values()})
        self._sites = {a.agent: (a.site, a.line) for a in agents.values()}
        with self._lock:
            for a in agents.values():
                self._committed[a.agent] = max(self._committed.get(a.agent, 0), a.watermark)
                seen = self._agents.setdefault(a.agent, AgentIngest())
                seen.received_seq = max(seen.received_seq, a.watermark)
            self._lock.notify_all()

    def _writer_main(self) -> None:
        try:
            stopping = False
            while not stopping:
                items = self._next_items()
                inbound: list[_Inbound] = []
                ups: list[_Link] = []
                for item in items:
                    if item is _STOP:
                        stopping = True
                    elif isinstance(item, _Up):
                        ups.append(item.link)
                    elif isinstance(item, _Inbound):
                        inbound.append(item)
                if inbound:
                    self._handle(inbound)
                for link in ups:
                    self._publish_all(link)
                self._flush_confirmations(force=stopping)
        except BaseException as exc:  # a bug: make it visible and let run() end the process
            log.critical("trace store writer failed", exc_info=True)
            self._failed = exc
            self._failed_event.set()
        finally:
            if self._storage is not None:
                with contextlib.suppress(Exception):
                    self._storage.close()
                self._storage = None

    def _next_items(self) -> list[object]:
        """Every item waiting, at least one (or none when a confirmation falls due)."""
        try:
            first = self._inbox.get(timeout=self._confirm_wait())
        except queue.Empty:
            return []
        items = [first]
        size = len(first.payload) if isinstance(first, _Inbound) else 0
        while len(items) < MAX_BATCH_MESSAGES and size < MAX_BATCH_BYTES:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            items.append(item)
            if isinstance(item, _Inbound):
                size += len(item.payload)
        return items

    def _handle(self, inbound: list[_Inbound]) -> None:
        # Messages of a closed connection are not acknowledged anyway: the broker sends them
        # again on the current one.
        live = [m for m in inbound if not m.link.closed]
        if not live or self._storage is None:
            return
        cfg = self.config
        checked: list[tuple[_Inbound, Accepted | Rejection]] = [
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

    def _commit_isolating(self, checked: list[tuple[_Inbound, Accepted | Rejection]]) -> None:
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

    def _select(self, checked: list[tuple[_Inbound, Accepted | Rejection]]) -> _Selection:
        """Decide what the batch commits, what it sets aside and which held messages it
        releases; changes nothing.

        A message of an agent that allows it (``Accepted.holdable``) whose range starts above
        the agent's watermark ``W`` is held: committing it would put records in the database
        whose predecessors are not, and a recall query could see a part without its context.
        Everything else is committed as it comes. Then, per agent, held messages (and this
        batch's holdable ones) are taken in order of ``after`` while ``after <= W``, ``W``
        moving with every one taken: a resend that fills a gap commits the gap and everything
        held above it in this one transaction.
        """
        tracker = self._tracker
        held = self._held
        draft = tracker.draft()
        selection = _Selection()
        waiting: dict[str, list[Held]] = {}
        now = utc_now()
        for message, result in checked:
            if isinstance(result, Rejection):
                selection.batch.rejected.append(_rejected_row(message, result, now))
                continue
            selection.records += len(result.rows)
            rng = result.range
            if result.holdable and rng is not None and rng.after > tracker.watermark(result.agent):
                waiting.setdefault(result.agent, []).append(held.wrap(result))
            else:
                selection.take(result, draft)
        agents = set(waiting)
        for agent in held.agents():
            first = held.pending(agent)[0]
            if first.range.after <= draft.watermark(agent):
                agents.add(agent)  # W moved (or was already) up to its first held message
        for agent in sorted(agents):
            self._release(agent, sorted(waiting.get(agent, ()), key=Held.order), draft, selection)
        selection.hold.sort(key=lambda h: h.arrival)  # the bound drops the latest first
        selection.plan = draft.plan()
        for agent, (site, line) in selection.touched.items():
            w = selection.plan.watermark(agent, tracker.watermark(agent))
            selection.batch.agents[agent] = AgentState(agent, site, line, w)
        return selection

    def _release(self, agent: str, new: list[Held], draft: Draft, selection: _Selection) -> None:
        """Take the agent's held messages and its new holdable ones (both sorted by ``after``)
        while they are contiguous; set the rest of the new ones aside."""
        pool = self._held.pending(agent)
        seen: set[HeldKey] = set()
        i = j = 0
        while True:
            if i < len(pool) and (j == len(new) or pool[i].order() <= new[j].order()):
                candidate, from_pool = pool[i], True
            elif j < len(new):
                candidate, from_pool = new[j], False
            else:
                break
            w = draft.watermark(agent)
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
            selection.released[agent] = i
        for candidate in new[j:]:
            if candidate.key in seen or self._held.holds(agent, candidate.key):
                selection.skipped += candidate.records  # a redelivery of a held message
                continue
            seen.add(candidate.key)
            selection.hold.append(candidate)

    def _commit(
        self, checked: list[tuple[_Inbound, Accepted | Rejection]], selection: _Selection
    ) -> None:
        storage = self._storage
        assert storage is not None
        assert selection.plan is not None
        tracker = self._tracker
        batch, plan = selection.batch, selection.plan
        written = bool(batch.rows or batch.rejected or batch.agents)
        # The one commit. A batch of held messages only has nothing to write.
        inserted = storage.write(batch) if written else 0
        tracker.apply(plan)
        involved = selection.released.keys() | {h.message.agent for h in selection.hold}
        had = {a: self._held.records_of(a) for a in involved}
        for agent, n in selection.released.items():
            self._held.remove_first(agent, n)
        dropped = [h for h in selection.hold if not self._held.add(h)]
        for message, _ in checked:  # in arrival order, as MQTT requires
            message.link.ack(message.mid, message.qos)
        self._sites.update(selection.touched)
        self._pending.update(plan.watermarks)
        accepted = len(checked) - len(batch.rejected)
        kinds, arrived = _arrivals(checked)
        now = time.time()
        with self._lock:
            c = self._counters
            c["batches"] += written
            c["messages"] += len(checked)
            c["accepted"] += accepted
            c["rejected"] += len(batch.rejected)
            c["records"] += selection.records
            c["inserted"] += inserted
            c["duplicates"] += selection.written - inserted + selection.skipped
            c["held_records"] = self._held.records
            c["held_dropped"] += len(dropped)
            for row in batch.rejected:
                self._rejected[row.reason] = self._rejected.get(row.reason, 0) + 1
            for kind, n in kinds.items():
                self._kinds[kind] = self._kinds.get(kind, 0) + n
            for agent, last in arrived.items():
                seen = self._agents.setdefault(agent, AgentIngest())
                seen.received_seq = max(seen.received_seq, last)
                seen.last_arrival = now
            for agent in involved:
                self._agents.setdefault(agent, AgentIngest()).held = self._held.records_of(agent)
            for agent, w in plan.watermarks.items():
                self._committed[agent] = w
            self._lock.notify_all()
        for message, result in checked:
            if isinstance(result, Rejection):
                self._reject_log(result, message.topic, len(message.payload))
        self._log_holding(had, dropped)

    def _drop_released(self, selection: _Selection, exc: Exception) -> None:
        """Forget the held messages a failed commit would have released."""
        dropped = selection.released_written  # the others were stored already
        for agent, n in selection.released.items():
            self._held.remove_first(agent, n)
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
            for agent in selection.released:
                self._agents.setdefault(agent, AgentIngest()).held = self._held.records_of(agent)
            self._lock.notify_all()

    def _log_holding(self, had: dict[str, int], dropped: list[Held]) -> None:
        """A gap opening or closing (INFO), the bound reached (WARNING); each at most once per
        agent per interval. ``had``: the records held before the commit, per agent involved."""
        held = self._held
        for agent, before in sorted(had.items()):
            now = held.records_of(agent)
            if before == 0 and now:
                kind, text = "gap", "holding messages above the gap after watermark %d"
            elif before and now == 0:
                kind, text = "closed", "gap closed, held messages released; watermark %d"
            else:
                continue
            quiet = self._held_log((kind, agent))
            if quiet is not None:
                log.info(
                    "agent %s: " + text + " (%d records held before, %d now)%s",
                    agent,
                    self._tracker.watermark(agent),
                    before,
                    now,
                    f" (+{quiet} more not logged)" if quiet else "",
                )
        for h in dropped:
            agent = h.message.agent
            quiet = self._held_log(("dropped", agent))
            if quiet is not None:
                log.warning(
                    "agent %s: dropped a message of range (%d, %d] instead of holding it: "
                    "%d records held already, at most %d (--max-held-records); the agent "
                    "resends it%s",
                    agent,
                    h.range.after,
                    h.range.last,
                    held.records_of(agent),
                    held.max_records,
                    f" (+{quiet} more not logged)" if quiet else "",
                )

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

    def _confirm_wait(self) -> float | None:
        """Seconds until the next coalesced confirmation is due (None: nothing pending)."""
        if not self._pending:
            return None
        now = time.monotonic()
        interval = self.config.confirm_interval
        due = min(self._last_sent.get(agent, -interval) + interval for agent in self._pending)
        return max(0.0, due - now)

    def _flush_confirmations(self, force: bool) -> None:
        if not self._pending:
            return
        link = self._up_link
        if link is None or not link.usable:
            # Nobody to tell now; the next connection republishes every watermark.
            self._pending.clear()
            return
        now = time.monotonic()
        interval = self.config.confirm_interval
        for agent in sorted(self._pending):
            if force or now - self._last_sent.get(agent, -interval) >= interval:
                self._pending.discard(agent)
                self._publish(link, agent, now)

    def _publish_all(self, link: _Link) -> None:
        """A new connection: (re)publish every known watermark, so the retained message is
        right even if the broker lost it, and nothing coalesced is left behind."""
        self._up_link = link
        self._pending.clear()
        now = time.monotonic()
        for agent, w in sorted(self._tracker.watermarks().items()):
            if w > 0:
                self._publish(link, agent, now)

    def _publish(self, link: _Link, agent: str, now: float) -> None:
        site_line = self._sites.get(agent)
        if site_line is None:
            return
        w = self._tracker.watermark(agent)
        payload = json.dumps(
            {
                "schema": CONFIRM_SCHEMA,
                "v": CONFIRM_VERSION,
                "agent": agent,
                "seq": w,
                "store": self.config.store_id,
                "ts": utc_now(),
            },
            separators=(",", ":"),
        ).encode()
        self._last_sent[agent] = now
        # If the link just died this goes nowhere; the next connection republishes.
        link.publish_confirmation(self.config.confirm_topic(*site_line, agent), payload, agent, w)

    def _broker_has(self, agent: str, seq: int) -> None:
        """paho thread: the broker acknowledged a confirmation (it holds it, retained)."""
        with self._lock:
            self._counters["confirmations"] += 1
            self._published[agent] = max(self._published.get(agent, 0), seq)
            self._lock.notify_all()


def _arrivals(
    checked: list[tuple[_Inbound, Accepted | Rejection]],
) -> tuple[dict[str, int], dict[str, int]]:
    """Records by kind and the highest seq per agent, of a batch's accepted messages."""
    kinds: dict[str, int] = {}
    last: dict[str, int] = {}
    for _, result in checked:
        if isinstance(result, Accepted):
            for row in result.rows:
                kinds[row.kind] = kinds.get(row.kind, 0) + 1
            last[result.agent] = max(last.get(result.agent, 0), result.last_seq)
    return kinds, last


def _rejected_row(message: _Inbound, rejection: Rejection, now: str) -> RejectedMessage:
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
