"""The MQTT uplink: publishes the journal in seq order, deletes rows once the broker has them.

Delivery is at-least-once (invariant 2). A row leaves the journal only after the broker's
PUBACK for the message that carried it; whatever was unacknowledged when a connection dies
counts as not delivered and is read again from the journal on the next connection. Receivers
therefore see duplicates and dedupe by (agent, seq); see docs/wire-format.md.

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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from buffer.sqlite import SqliteBuffer, StoredRecord
from drivers.base import backoff_delay
from edge_agent.errors import SyncError
from sync.config import MqttConfig, invalid_topic_level

log = logging.getLogger(__name__)

SCHEMA = "edge-agent.records"
SCHEMA_VERSION = 1

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


def topic_for(config: MqttConfig, site: str, line: str, station: str) -> str:
    """The topic one station's records are published to."""
    return f"{config.topic_prefix}/{site}/{line}/{station}/records"


def _new_client(config: MqttConfig, client_id: str) -> mqtt.Client:
    """A fresh paho client for one connection attempt.

    The one place that turns config into paho settings: TLS (``tls_set``) and MQTT 5
    (``protocol``, ``clean_start`` on connect) go here when they arrive.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,  # our outbox is the journal; the broker keeps nothing for us
        protocol=mqtt.MQTTv311,
        reconnect_on_failure=False,  # MqttSync.run reconnects, with a fresh client
    )
    client.connect_timeout = config.connect_timeout
    # Our window and paho's agree, so paho never queues a message behind our back.
    client.max_inflight_messages_set(config.max_inflight)
    client.max_queued_messages_set(0)
    if config.username is not None:
        password = config.password.get_secret_value() if config.password is not None else None
        client.username_pw_set(config.username, password)
    return client


class _Link:
    """One connection attempt: a fresh paho client and the thread running its network loop.

    Paho callbacks run in paho's thread and only post to the event loop. ``lost`` resolves
    (with a reason) when the connection ends for any reason, ``on_ack(mid)`` is called on the
    event loop for every PUBACK.
    """

    def __init__(
        self,
        config: MqttConfig,
        client_id: str,
        loop: asyncio.AbstractEventLoop,
        on_ack: Callable[[int], None],
    ) -> None:
        self._config = config
        self._loop = loop
        self._on_ack = on_ack
        self.connected: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()
        self._lock = threading.Lock()  # guards _socket_open/_abandoned across the connect thread
        self._socket_open = False
        self._abandoned = False
        self._sock: socket.socket | None = None
        self._connect_job: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._seen_thread: threading.Thread | None = None
        self.client = _new_client(config, client_id)
        self.client.on_socket_open = self._on_socket_open
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

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
            self.client.connect(cfg.host, cfg.port, cfg.keepalive)
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
        self._post(self._on_ack, mid)


class _Session:
    """Messages of one connection waiting for their PUBACK, keyed by paho message id.

    A fresh client restarts message ids at 1, so each connection has its own table: a late
    PUBACK of an old connection can never be matched to a message of a new one.
    """

    def __init__(self, max_inflight: int, on_confirmed: Callable[[list[int]], None]) -> None:
        self.inflight: dict[int, list[int]] = {}
        self.window = asyncio.Semaphore(max_inflight)
        self._on_confirmed = on_confirmed

    def acked(self, mid: int) -> None:
        seqs = self.inflight.pop(mid, None)
        if seqs is None:
            log.warning("PUBACK for unknown message id %d", mid)
            return
        self.window.release()
        self._on_confirmed(seqs)


class _Deleter:
    """Deletes confirmed rows, one journal job at a time, coalescing PUBACKs that arrive
    while a delete runs. A delete is never cancelled half-way: the buffer adjusts ``depth``
    after the job returns."""

    def __init__(self, buffer: SqliteBuffer, status: SyncStatus) -> None:
        self._buffer = buffer
        self._status = status
        self._pending: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, seqs: list[int]) -> None:
        self._pending.extend(seqs)
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="mqtt-sync-delete")

    async def wait(self) -> None:
        """Until every confirmation received so far is deleted."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        try:
            while self._pending:
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


class MqttSync:
    """Forwards the journal to an MQTT broker until cancelled.

    Records are read in seq order, grouped by station (order inside a station kept) and
    published as one envelope per station group to ``<prefix>/<site>/<line>/<station>/records``
    with QoS 1. At most ``max_inflight`` messages wait for a PUBACK; a PUBACK deletes the rows
    its message carried.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        agent_id: str,
        site: str,
        line: str,
        buffer: SqliteBuffer,
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
        self._buffer = buffer
        self._deleter = _Deleter(buffer, self.status)
        self._session: _Session | None = None
        self._stations: dict[str, tuple[str, str]] = {}  # station -> (topic, envelope head)
        self._down_since: float | None = None  # monotonic; set once the outage is logged
        self._down_failures = 0  # failed attempts in the current outage

    async def run(self) -> None:
        """Connect, publish, reconnect with backoff; returns only by cancellation (or by a
        journal failure, which is raised). Cancelling closes the connection and joins
        paho's thread before this returns."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        attempt = 0
        try:
            while True:
                session = _Session(cfg.max_inflight, self._confirmed)
                link = _Link(cfg, self.client_id, loop, session.acked)
                up_at: float | None = None
                try:
                    await link.open()
                    up_at = loop.time()
                    self._went_up()
                    self._session = session
                    reason = await self._pump(link, session)
                except SyncError as exc:
                    reason = str(exc)
                finally:
                    self._session = None
                    self.status.inflight = 0
                    await link.close()
                # A connection that held for a while resets the backoff; one that keeps
                # dropping at once (e.g. a second agent with our client id) does not.
                if up_at is not None and loop.time() - up_at >= cfg.backoff_max:
                    attempt = 0
                self._went_down(reason)
                await asyncio.sleep(backoff_delay(attempt, cfg.backoff_initial, cfg.backoff_max))
                attempt += 1
        finally:
            self.status.connected = False
            await self._deleter.wait()

    # ---- one connection -------------------------------------------------------------------

    async def _pump(self, link: _Link, session: _Session) -> str:
        """Publish until the connection is lost; returns the reason."""
        # Let deletes confirmed on the previous connection land first, so the re-read below
        # does not send them again.
        await self._deleter.wait()
        publisher = asyncio.create_task(self._publish(link, session), name="mqtt-sync-publish")
        try:
            either: set[asyncio.Future[Any]] = {publisher, link.lost}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if publisher.done():  # it only ends by raising
                error = publisher.exception()
                # A publish refused because the connection just died: report why it died.
                if not (isinstance(error, SyncError) and link.lost.done()):
                    publisher.result()
            return link.lost.result()
        finally:
            publisher.cancel()
            await asyncio.wait({publisher})
            if not publisher.cancelled():
                publisher.exception()  # mark retrieved: raised above or superseded by `lost`

    async def _publish(self, link: _Link, session: _Session) -> None:
        buffer = self._buffer
        cfg = self.config
        # Everything unacknowledged on the last connection counts as not delivered: start
        # from the lowest seq still in the journal.
        after = 0
        while True:
            buffer.new_data.clear()
            batch = await buffer.read_batch(after, cfg.batch_max_records, cfg.batch_max_bytes)
            if not batch:
                await buffer.new_data.wait()
                continue
            for station, records in _by_station(batch).items():
                topic, head = self._station(station)
                await session.window.acquire()
                mid = link.publish(topic, _envelope(head, records))
                session.inflight[mid] = [r.seq for r in records]
                self.status.published_messages += 1
                self.status.inflight = len(session.inflight)
            after = batch[-1].seq

    def _confirmed(self, seqs: list[int]) -> None:
        if self._session is not None:
            self.status.inflight = len(self._session.inflight)
        self._deleter.add(seqs)

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


def _by_station(batch: Sequence[StoredRecord]) -> dict[str, list[StoredRecord]]:
    """Group records by station, keeping seq order inside each group."""
    groups: dict[str, list[StoredRecord]] = {}
    for record in batch:
        groups.setdefault(record.station, []).append(record)
    return groups


def _envelope(head: str, records: Sequence[StoredRecord]) -> bytes:
    """The message JSON, concatenated: bodies are already wire JSON and are not re-parsed."""
    return (
        f'{head}"first_seq":{records[0].seq},"last_seq":{records[-1].seq},'
        f'"count":{len(records)},"records":[{",".join(r.body for r in records)}]}}'
    ).encode()
