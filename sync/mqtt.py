"""The MQTT uplink: publishes the journal, deletes rows once their delivery is confirmed.

Delivery is at-least-once (invariant 2). A row leaves the journal only after its confirmation:
the broker's PUBACK for the message that carried it (``confirm: puback``), or the trace store's
watermark reaching its seq (``confirm: store``, end to end). Whatever was unconfirmed when a
connection dies counts as not delivered and is read again from the journal on the next
connection; in store mode it is also sent again when the watermark stalls. Receivers therefore
see duplicates and dedupe by (agent, seq); see docs/wire-format.md.

Threads and ownership
---------------------
Every connection attempt gets a fresh paho client (``_Link``), so paho's in-memory outbox of
a dead connection is dropped with it and never replayed behind our back; the journal is the
only outbox. The blocking TCP connect runs in a worker thread (``asyncio.to_thread``), the
network loop in paho's own thread (``loop_start``); paho callbacks only hand events to the
event loop with ``call_soon_threadsafe``. All state of this module is owned by the event loop.
paho's automatic reconnect is off: ``MqttSync.run`` reconnects with full-jitter backoff.

Sync only reads the journal and deletes confirmed rows, so acquisition never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from buffer.journal import Journal, StoredRecord
from kernel.alarms import Alarms
from kernel.backoff import backoff_delay
from kernel.errors import SyncError
from sync.config import MqttConfig, invalid_topic_level

log = logging.getLogger(__name__)

SCHEMA = "edge-agent.records"
SCHEMA_VERSION = 2
"""2: readings travel as ``kind: readings``, one record per device response. A v1 receiver
would skip that unknown kind silently (the v1 rule for new kinds); raising ``v`` makes it set
the messages aside instead. Rows a v1 agent journaled (``kind: reading``) still go out, in v2."""
CONFIRM_SCHEMA = "edge-agent.confirm"
STATUS_SCHEMA = "edge-agent.status"
DELETE_EVERY = 0.25
"""Seconds between two deletes of delivered rows (confirmations in between are gathered)."""
RESEND_BACKOFF_MAX = 16
"""The longest wait between two resends without progress, in units of confirm_timeout."""
CONTROL_SLOTS = 4
"""paho in-flight slots beyond our window, for status messages (they are not records)."""

CLOSE_GRACE = 2.0
"""Seconds a clean DISCONNECT may take before the socket is shut down under paho's feet."""
JOIN_TIMEOUT = 5.0
"""Seconds to wait for paho's network thread once its socket is closed (it exits at once)."""


@dataclass
class SyncStatus:
    """Live state of the uplink, for logs, metrics and the demo. Owned by the event loop."""

    connected: bool = False
    since: float = field(default_factory=time.time)  # wall clock of the last up/down change
    published_messages: int = 0  # messages handed to the broker connection
    confirmed_records: int = 0  # records acknowledged by the broker and deleted locally
    last_confirmed_seq: int = 0  # highest seq acknowledged and deleted
    last_error: str | None = None  # why the last connection failed or ended
    reconnects: int = 0  # connection attempts that failed or connections that were lost
    inflight: int = 0  # messages of the current connection waiting for their PUBACK
    store_watermark: int = 0  # confirm: store: the store's last confirmed seq
    resends: int = 0  # confirm: store: times the journal was sent again for lack of progress
    refused_messages: int = 0  # MQTT 5: messages the broker refused with a reason code


def topic_for(config: MqttConfig, site: str, line: str, station: str) -> str:
    """The topic one station's records are published to."""
    return f"{config.topic_prefix}/{site}/{line}/{station}/records"


def agent_topic(config: MqttConfig, site: str, line: str, agent: str, leaf: str) -> str:
    """An agent's own topics: ``status`` (published by the agent), ``confirmed`` (by the store)."""
    return f"{config.topic_prefix}/{site}/{line}/{agent}/{leaf}"


def status_payload(agent: str, state: str, **extra: Any) -> bytes:
    body = {"schema": STATUS_SCHEMA, "v": 1, "agent": agent, "state": state, "ts": _now(), **extra}
    return json.dumps(body, separators=(",", ":")).encode()


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def _tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    """The TLS context for ``config.tls``, or None for plain TCP. Raises SyncError naming the
    file at fault, so a missing or unreadable CA, certificate or key says so at once."""
    tls = config.tls
    if tls is None:
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SyncError(f"mqtt.tls.ca_file {tls.ca_file!r} unusable: {exc}") from exc
    ctx.check_hostname = tls.verify_hostname
    if tls.cert_file is not None:
        password = tls.key_password.get_secret_value() if tls.key_password else None
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file, password=password)
        except (OSError, ssl.SSLError) as exc:
            raise SyncError(
                f"mqtt.tls.cert_file {tls.cert_file!r} / key_file {tls.key_file!r} unusable: {exc}"
            ) from exc
    return ctx


def _new_client(
    config: MqttConfig, client_id: str, will: tuple[str, bytes] | None = None
) -> mqtt.Client:
    """A fresh paho client for one connection attempt: the one place that turns config into
    paho settings (protocol, TLS, credentials, Last Will)."""
    if config.protocol == "5":
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,  # our outbox is the journal; the broker keeps nothing for us
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,  # MqttSync.run reconnects, with a fresh client
        )
    client.connect_timeout = config.connect_timeout
    # Our window (plus the status messages') and paho's agree, so paho never queues a record
    # message behind our back.
    client.max_inflight_messages_set(config.max_inflight + CONTROL_SLOTS)
    client.max_queued_messages_set(0)
    if config.username is not None:
        password = config.password.get_secret_value() if config.password is not None else None
        client.username_pw_set(config.username, password)
    ctx = _tls_context(config)
    if ctx is not None:
        client.tls_set_context(ctx)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    return client


class _Link:
    """One connection attempt: a fresh paho client and the thread running its network loop.

    Paho callbacks run in paho's thread and only post to the event loop. ``lost`` resolves
    (with a reason) when the connection ends for any reason, ``on_ack(mid, refusal)`` is called
    on the event loop for every PUBACK of a record message (``refusal`` is the MQTT 5 reason
    when the broker refused it, else None), ``on_message(topic, payload)`` for every message
    received on a subscription.
    """

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        loop: asyncio.AbstractEventLoop,
        on_ack: Callable[[int, str | None], None],
        *,
        will: tuple[str, bytes] | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self._config = config
        self._loop = loop
        self._on_ack = on_ack
        self._on_message_cb = on_message
        # Message ids of status messages, acknowledged apart from record messages.
        self._control: dict[int, asyncio.Future[None]] = {}
        self.connected: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()
        self._lock = threading.Lock()  # guards _socket_open/_abandoned across the connect thread
        self._socket_open = False
        self._abandoned = False
        self._sock: socket.socket | None = None
        self._connect_job: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._seen_thread: threading.Thread | None = None
        self.client = _new_client(config, client_id, will)
        self.client.on_socket_open = self._on_socket_open
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        if on_message is not None:
            self.client.on_message = self._on_message

    # ---- event loop side --------------------------------------------------------------

    async def open(self) -> None:
        """Connect and wait for a successful CONNACK. Raises SyncError with the reason."""
        cfg = self._config
        self._connect_job = asyncio.ensure_future(asyncio.to_thread(self._connect_blocking))
        # Shielded: a cancelled open() leaves the connect to finish; close() cleans up.
        await asyncio.shield(self._connect_job)
        self.client.loop_start()
        # paho keeps its thread in a private attribute; if the thread already ended (a refusal
        # can be handled before loop_start returns), its callbacks recorded it.
        self._thread = self.client._thread or self._seen_thread
        try:
            either: set[asyncio.Future[Any]] = {self.connected, self.lost}
            async with asyncio.timeout(cfg.connect_timeout):
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise SyncError(
                f"no CONNACK from {cfg.host}:{cfg.port} within {cfg.connect_timeout:g} s"
            ) from None
        if not self.connected.done():
            raise SyncError(self.lost.result())

    def publish(self, topic: str, payload: bytes) -> int:
        """Hand one QoS 1 message to the network thread; returns its message id."""
        info = self.client.publish(topic, payload, qos=self._config.qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise SyncError(f"publish failed: {mqtt.error_string(info.rc)}")
        return info.mid

    def publish_retained(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """Publish a retained QoS 1 status message; the future resolves on its PUBACK."""
        done: asyncio.Future[None] = self._loop.create_future()
        info = self.client.publish(topic, payload, qos=1, retain=True)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            done.set_exception(SyncError(f"publish failed: {mqtt.error_string(info.rc)}"))
        else:
            # A PUBACK, even one paho sees before publish() returns, reaches _acked through
            # the event loop, so it finds the id registered here.
            self._control[info.mid] = done
        return done

    def subscribe(self, topic: str) -> None:
        rc, _ = self.client.subscribe(topic, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise SyncError(f"subscribe to {topic} failed: {mqtt.error_string(rc)}")

    async def close(self) -> None:
        """Disconnect and join the network thread. Safe in any state, and when cancelled."""
        # A TCP connect still running in its worker is not waited for (it may take the whole
        # connect_timeout): _finish marks the link abandoned and the worker closes its socket.
        try:
            if self._thread is not None and not self.lost.done():
                self.client.disconnect()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_GRACE):
                        await asyncio.shield(self.lost)
        finally:
            self._finish()

    def _finish(self) -> None:
        """Make sure the socket is closed and paho's thread has ended, without awaiting."""
        with self._lock:
            self._abandoned = True  # a connect still running closes its own socket
            socket_open = self._socket_open
        if socket_open:
            thread = self._thread
            if thread is None:  # connected, but the network loop never started
                self.client.disconnect()  # writes DISCONNECT and closes the socket in-line
            else:
                if thread.is_alive() and not self.lost.done():
                    # No clean DISCONNECT in time (peer not reading?): a shut-down socket makes
                    # paho's select return and its loop end.
                    self._shutdown_socket()
                thread.join(JOIN_TIMEOUT)
                if thread.is_alive():
                    log.error("paho network thread %s did not end", thread.name)
        # Break the client <-> link reference cycle so the client (and its socket pair)
        # is released now rather than at the next garbage collection.
        self.client.on_socket_open = None
        self.client.on_connect = None
        self.client.on_disconnect = None
        self.client.on_publish = None
        self.client.on_message = None

    def _shutdown_socket(self) -> None:
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _set_connected(self) -> None:
        if not self.connected.done() and not self.lost.done():
            self.connected.set_result(None)

    def _set_lost(self, reason: str) -> None:
        if not self.lost.done():
            self.lost.set_result(reason)

    # ---- worker / paho thread side ------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            self._loop.call_soon_threadsafe(fn, *args)

    def _connect_blocking(self) -> None:
        cfg = self._config
        try:
            if cfg.protocol == "5":
                self.client.connect(cfg.host, cfg.port, cfg.keepalive, clean_start=True)
            else:
                self.client.connect(cfg.host, cfg.port, cfg.keepalive)
        except ssl.SSLCertVerificationError as exc:
            raise SyncError(
                f"TLS to {cfg.host}:{cfg.port}: the broker's certificate is not trusted "
                f"({exc.verify_message}); check mqtt.tls.ca_file and mqtt.host"
            ) from exc
        except ssl.SSLError as exc:
            raise SyncError(
                f"TLS to {cfg.host}:{cfg.port} failed: {exc.reason or exc} (a broker that "
                "requires a client certificate refuses one it does not trust, or none)"
            ) from exc
        except (OSError, ValueError) as exc:
            raise SyncError(f"cannot connect to {cfg.host}:{cfg.port}: {exc}") from exc
        with self._lock:
            if not self._abandoned:
                self._socket_open = True
                return
        self.client.disconnect()  # abandoned while connecting: close the socket ourselves
        raise SyncError("connection abandoned")

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if isinstance(sock, socket.socket):  # also true for an ssl.SSLSocket
            # paho does not set it; without it Nagle holds small PUBLISHes for ~40 ms.
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
        self._seen_thread = threading.current_thread()
        if reason_code.is_failure:
            self._post(self._set_lost, f"broker refused the connection: {reason_code}")
        else:
            self._post(self._set_connected)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._seen_thread = threading.current_thread()
        if flags.is_disconnect_packet_from_server:  # MQTT 5 only
            self._post(self._set_lost, f"broker disconnected: {reason_code}")
        else:
            self._post(self._set_lost, f"connection ended ({reason_code})")

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        refusal = str(reason_code) if reason_code.is_failure else None
        self._post(self._acked, mid, refusal)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._on_message_cb is not None:
            self._post(self._on_message_cb, message.topic, bytes(message.payload))

    def _acked(self, mid: int, refusal: str | None) -> None:
        done = self._control.pop(mid, None)
        if done is None:
            self._on_ack(mid, refusal)
        elif not done.done():
            if refusal is None:
                done.set_result(None)
            else:
                done.set_exception(SyncError(f"broker refused the status message: {refusal}"))


class _Session:
    """Messages of one connection waiting for their PUBACK, keyed by paho message id.

    A fresh client restarts message ids at 1, so each connection has its own table: a late
    PUBACK of an old connection can never be matched to a message of a new one.
    """

    def __init__(
        self,
        max_inflight: int,
        on_acked: Callable[[list[int]], None],
        on_refused: Callable[[list[int], str], None],
    ) -> None:
        self.inflight: dict[int, list[int]] = {}
        self.window = asyncio.Semaphore(max_inflight)
        self._on_acked = on_acked
        self._on_refused = on_refused

    def acked(self, mid: int, refusal: str | None) -> None:
        seqs = self.inflight.pop(mid, None)
        if seqs is None:
            log.warning("PUBACK for unknown message id %d", mid)
            return
        self.window.release()
        if refusal is None:
            self._on_acked(seqs)
        else:
            self._on_refused(seqs, refusal)


class _Deleter:
    """Deletes confirmed rows, one journal job at a time, coalescing confirmations that arrive
    while a delete runs. A delete is never cancelled half-way: the buffer adjusts ``depth``
    after the job returns."""

    def __init__(self, buffer: Journal, status: SyncStatus) -> None:
        self._buffer = buffer
        self._status = status
        self._pending: list[int] = []
        self._through = 0  # delete every row with seq <= this (confirm: store)
        self._done_through = 0
        self._last_delete = float("-inf")  # loop time the last delete started
        self._task: asyncio.Task[None] | None = None

    def add(self, seqs: list[int]) -> None:
        self._pending.extend(seqs)
        self._kick()

    def add_through(self, seq: int) -> None:
        if seq > self._through:
            self._through = seq
            self._kick()

    def _kick(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="mqtt-sync-delete")

    async def wait(self) -> None:
        """Until every confirmation received so far is deleted."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending or self._through > self._done_through:
                # Each delete is a durable commit of its own; a delivered row can wait a
                # moment, so confirmations are gathered for DELETE_EVERY between two deletes
                # (at 1k records/s this halves the journal's commits).
                pause = self._last_delete + DELETE_EVERY - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                self._last_delete = loop.time()
                if self._through > self._done_through:
                    through = self._through
                    try:
                        removed = await self._buffer.delete_through(through)
                    except Exception as exc:
                        # The rows stay; the next confirmation deletes them (never a loss).
                        log.exception("cannot delete records up to seq %d", through)
                        self._status.last_error = f"delete failed: {exc}"
                        break
                    self._done_through = through
                    self._status.confirmed_records += removed
                    self._status.last_confirmed_seq = max(self._status.last_confirmed_seq, through)
                    continue
                seqs, self._pending = self._pending, []
                try:
                    removed = await self._buffer.delete(seqs)
                except Exception as exc:
                    # The rows stay and go out again: a duplicate, never a loss.
                    log.exception("cannot delete %d delivered records", len(seqs))
                    self._status.last_error = f"delete failed: {exc}"
                    continue
                self._status.confirmed_records += removed
                self._status.last_confirmed_seq = max(self._status.last_confirmed_seq, *seqs)
        finally:
            self._task = None


class _Rewind(Exception):
    """The trace store's watermark stalled: send the journal again from it."""


class MqttSync:
    """Forwards the journal to an MQTT broker until cancelled.

    Records are read in journal batches (in seq order, or live records first with the backlog
    beside them), grouped by station (order inside a station kept) and published as one
    envelope per station group to ``<prefix>/<site>/<line>/<station>/records`` with QoS 1. At
    most ``max_inflight`` messages wait for a PUBACK. Rows are deleted on PUBACK, or in
    ``confirm: store`` mode once the trace store's watermark covers them.
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
        self._deleter = _Deleter(buffer, self.status)
        self._session: _Session | None = None
        self._link: _Link | None = None
        self._refused_first: int | None = None  # first seq of the last refused message
        self._stations: dict[str, tuple[str, str]] = {}  # station -> (topic, envelope head)
        self._down_since: float | None = None  # monotonic; set once the outage is logged
        self._down_failures = 0  # failed attempts in the current outage
        # confirm: store. The store's watermark, the highest seq published since the last
        # (re)start of publishing, and when the watermark last moved (loop time).
        self._watermark = 0
        self._published_high = 0
        self._progress_at = 0.0
        self._progress = asyncio.Event()
        self._stalls = 0  # resends in a row without progress of the watermark

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff; returns only by cancellation (or by a
        journal failure, which is raised). Cancelling says "offline" (status), closes the
        connection and joins paho's thread before this returns."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        attempt = 0
        will = (
            (self.status_topic, status_payload(self.agent_id, "offline", reason="connection lost"))
            if cfg.status
            else None
        )
        on_message = self._on_message if cfg.confirm == "store" else None
        self._progress = asyncio.Event()  # of the running loop
        self.alarms.subscribe(self._alarms_changed)
        try:
            while True:
                session = _Session(cfg.max_inflight, self._acked, self._refused)
                up_at: float | None = None
                link: _Link | None = None
                try:
                    link = _Link(
                        cfg, self.client_id, loop, session.acked, will=will, on_message=on_message
                    )
                    await link.open()
                    up_at = loop.time()
                    self._went_up()
                    self._session = session
                    self._link = link
                    reason = await self._pump(link, session)
                except SyncError as exc:
                    reason = str(exc)
                except asyncio.CancelledError:
                    if link is not None and self._link is link and cfg.status:
                        await self._say_offline(link)
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
                self._went_down(reason)
                await asyncio.sleep(backoff_delay(attempt, cfg.backoff_initial, cfg.backoff_max))
                attempt += 1
        finally:
            self.alarms.unsubscribe(self._alarms_changed)
            self.status.connected = False
            await self._deleter.wait()

    # ---- one connection -------------------------------------------------------------------

    async def _pump(self, link: _Link, session: _Session) -> str:
        """Publish until the connection is lost; returns the reason."""
        cfg = self.config
        # Let deletes confirmed on the previous connection land first, so the re-read below
        # does not send them again.
        await self._deleter.wait()
        if cfg.confirm == "store":
            link.subscribe(self.confirm_topic)  # the retained watermark arrives at once
        if cfg.status:
            self._publish_status(link)
        while True:
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
            log.warning(
                "trace store confirmed nothing new for %.0f s (watermark %d, published up to "
                "%d): sending the journal again from seq %d",
                cfg.confirm_timeout * min(2**self._stalls, RESEND_BACKOFF_MAX),
                self._watermark,
                self._published_high,
                self._watermark + 1,
            )
            self._stalls += 1

    async def _publish(self, link: _Link, session: _Session) -> None:
        """Publish the journal: everything unconfirmed on the last connection counts as not
        delivered, so start from the store's watermark (store mode) or the lowest seq left."""
        cfg = self.config
        start = self._watermark if cfg.confirm == "store" else 0
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
        link: _Link,
        session: _Session,
        after: int,
        until: int | None,
        rate: float | None,
    ) -> None:
        """Publish journal batches with seq > ``after`` (up to ``until`` if given, then return;
        else forever), at most ``rate`` records/s if given."""
        buffer = self._buffer
        cfg = self.config
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while until is None or after < until:
            buffer.new_data.clear()
            batch = await buffer.read_batch(
                after, cfg.batch_max_records, cfg.batch_max_bytes, until_seq=until
            )
            if not batch:
                if until is not None:
                    return  # the rest of the backlog was confirmed or evicted meanwhile
                await buffer.new_data.wait()
                continue
            last = batch[-1].seq
            span = (
                f'"range":{{"after":{after},"last":{last},"count":{len(batch)}}},'
                f'"confirm":"{cfg.confirm}","order":"{cfg.order}"'
            )
            for station, records in _by_station(batch).items():
                topic, head = self._station(station)
                await session.window.acquire()
                mid = link.publish(topic, _envelope(head, records, span))
                session.inflight[mid] = [r.seq for r in records]
                self.status.published_messages += 1
                self.status.inflight = len(session.inflight)
            if self._published_high <= self._watermark:
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
        published records wait for it (store mode)."""
        loop = asyncio.get_running_loop()
        # A store that stays down would otherwise get the whole journal every confirm_timeout:
        # each resend without progress doubles the wait, up to RESEND_BACKOFF_MAX times.
        while True:
            timeout = self.config.confirm_timeout * min(2**self._stalls, RESEND_BACKOFF_MAX)
            self._progress.clear()
            if self._published_high <= self._watermark:
                await self._progress.wait()  # set by every publish progress or confirmation
                continue
            remaining = self._progress_at + timeout - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._progress.wait()

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

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.confirm_topic:
            return
        try:
            body = json.loads(payload)
            if body.get("schema") != CONFIRM_SCHEMA or body.get("agent") != self.agent_id:
                raise ValueError("not a confirmation for this agent")
            seq = body["seq"]
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
                raise ValueError(f"bad seq {seq!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring message on %s: %s", topic, exc)
            return
        self._confirm(seq)

    def _confirm(self, seq: int) -> None:
        committed = self._buffer.committed_seq
        if seq > committed:
            # Never release on it: the store knows a history this journal does not have.
            self.alarms.raise_(
                "confirm_ahead",
                f"trace store confirms seq {seq} but this journal's last seq is {committed}: "
                "was the journal replaced, or do two agents share the id "
                f"{self.agent_id!r}? Nothing is released until this is resolved",
            )
            return
        self.alarms.clear("confirm_ahead")
        self.status.store_watermark = max(self.status.store_watermark, seq)
        if seq <= self._watermark:
            return
        self._watermark = seq
        self._stalls = 0
        self._progress_at = asyncio.get_running_loop().time()
        self._progress.set()
        self._deleter.add_through(seq)

    # ---- status -----------------------------------------------------------------------

    def _publish_status(self, link: _Link) -> None:
        alarms = [a.as_dict() for a in self.alarms.active()]
        done = link.publish_retained(
            self.status_topic, status_payload(self.agent_id, "online", alarms=alarms)
        )
        done.add_done_callback(_log_status_failure)

    def _alarms_changed(self) -> None:
        link = self._link
        if link is not None and self.config.status and link.connected.done():
            with contextlib.suppress(SyncError):
                self._publish_status(link)

    async def _say_offline(self, link: _Link) -> None:
        """Before a clean disconnect (which suppresses the Last Will): say so ourselves."""
        if link.lost.done():
            return
        try:
            done = link.publish_retained(
                self.status_topic, status_payload(self.agent_id, "offline", reason="stopped")
            )
            async with asyncio.timeout(CLOSE_GRACE):
                await done
        except (SyncError, TimeoutError) as exc:
            log.warning("could not publish the offline status: %s", exc)

    def _station(self, station: str) -> tuple[str, str]:
        known = self._stations.get(station)
        if known is None:
            why = invalid_topic_level(station)
            if why:  # station names are validated by the config; this is a bug upstream
                raise SyncError(f"station name unusable as a topic level: {why}")
            head = (
                f'{{"schema":"{SCHEMA}","v":{SCHEMA_VERSION},"agent":{json.dumps(self.agent_id)},'
                f'"site":{json.dumps(self.site)},"line":{json.dumps(self.line)},'
                f'"station":{json.dumps(station)},'
            )
            known = (topic_for(self.config, self.site, self.line, station), head)
            self._stations[station] = known
        return known

    # ---- transitions, logged once each ----------------------------------------------------

    def _went_up(self) -> None:
        cfg = self.config
        self.status.connected = True
        self.status.since = time.time()
        if self._down_since is None:
            log.info("connected to MQTT broker %s:%d as %s", cfg.host, cfg.port, self.client_id)
        else:
            log.info(
                "MQTT broker %s:%d reachable again after %.1f s (%d failed attempts)",
                cfg.host,
                cfg.port,
                time.monotonic() - self._down_since,
                self._down_failures,
            )
            self._down_since = None
            self._down_failures = 0

    def _went_down(self, reason: str) -> None:
        cfg = self.config
        was_up = self.status.connected
        self.status.connected = False
        self.status.last_error = reason
        self.status.reconnects += 1
        self._down_failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.status.since = time.time()
            log.error(
                "MQTT broker %s:%d %s: %s; %d records waiting, retrying with backoff",
                cfg.host,
                cfg.port,
                "lost" if was_up else "unreachable",
                reason,
                self._buffer.depth,
            )
        else:
            log.debug("MQTT broker %s:%d still unreachable: %s", cfg.host, cfg.port, reason)


def _log_status_failure(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.warning("status message not delivered: %s", done.exception())


def _by_station(batch: Sequence[StoredRecord]) -> dict[str, list[StoredRecord]]:
    """Group records by station, keeping seq order inside each group."""
    groups: dict[str, list[StoredRecord]] = {}
    for record in batch:
        groups.setdefault(record.station, []).append(record)
    return groups


def _envelope(head: str, records: Sequence[StoredRecord], span: str) -> bytes:
    """The message JSON, concatenated: bodies are already wire JSON and are not re-parsed."""
    return (
        f'{head}"first_seq":{records[0].seq},"last_seq":{records[-1].seq},'
        f'"count":{len(records)},"records":[{",".join(r.body for r in records)}],{span}}}'
    ).encode()
