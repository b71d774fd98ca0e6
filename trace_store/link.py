"""The trace store's MQTT connection: one paho client per attempt, and the wait between
attempts.

Callbacks run in paho's thread and only set events or hand messages on (``deliver``); the
store's writer owns everything else (``service.py``). A fresh client per attempt means a dead
connection's outbox (stale confirmations) is never replayed after a newer one, and a PUBACK
can only go to the connection its message came from.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from kernel.backoff import backoff_delay
from kernel.net import without_nagle
from trace_store import agent_status
from trace_store.config import StoreConfig
from trace_store.envelope import Stream

log = logging.getLogger("trace_store.service")

CLOSE_GRACE = 2.0  # seconds a clean DISCONNECT may take
PAHO_JOIN_TIMEOUT = 5.0  # seconds for paho's thread once its socket is closed (it ends at once)
PROBE_EVERY = 1.0
"""Seconds between two TCP probes of a broker that could not be reached (jittered 0.5-1x):
a broker that comes back is used within about this, whatever the backoff has grown to."""
PROBE_TIMEOUT = 1.0

ASK_SUFFIX = "/route/ask"

Marks = dict[Stream, int]
"""The watermarks a confirmation carried, per (agent, epoch)."""


class LinkError(Exception):
    """A connection attempt failed; the message says why. ``unreachable``: nothing answered
    at the broker's address (the TCP connect failed), as opposed to a broker that answered
    and refused or did not finish the handshake."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True, slots=True)
class Inbound:
    link: Link
    mid: int
    qos: int
    topic: str
    payload: bytes


def ask_filter(config: StoreConfig) -> str:
    """The route questions of every agent: ``<prefix>/<site>/<line>/<agent>/route/ask``."""
    return f"{config.topic_prefix}/+/+/+{ASK_SUFFIX}"


def tls_context(config: StoreConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.tls_ca)
    if config.tls_cert is not None:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


class Link:
    """One connection: a fresh paho client and its network thread.

    Callbacks run in paho's thread and only set events or hand messages to ``deliver``.
    """

    def __init__(
        self,
        config: StoreConfig,
        tls: ssl.SSLContext | None,
        deliver: Callable[[Inbound], None],
        changed: Callable[[], None],
        confirmed: Callable[[str, Marks], None],
        asks: Callable[[Inbound], None] | None = None,
        statuses: Callable[[Inbound], None] | None = None,
    ) -> None:
        self._config = config
        self._deliver = deliver
        # Route questions (docs/quality.md): answered by the quality publisher, not the writer.
        self._asks = asks
        self._asks_mid: int | None = None
        # Agents' status messages (``agent_status.py``): kept for the Lines page.
        self._statuses = statuses
        self._statuses_mid: int | None = None
        self._notify = changed
        self._confirmed = confirmed
        # Confirmations waiting for their PUBACK: mid -> (agent, its watermarks). paho calls
        # on_publish holding its own mutex, so this lock is never held while calling paho.
        self._confirm_lock = threading.Lock()
        self._confirm_pending: dict[int, tuple[str, Marks]] = {}
        self._acked_early: set[int] = set()  # PUBACKs that beat publish() returning
        self._other_pending: set[int] = set()  # ``publish`` messages waiting for their PUBACK
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
        except ssl.SSLError as exc:
            raise LinkError(f"TLS to {cfg.host}:{cfg.port} failed: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise LinkError(
                f"cannot connect to {cfg.host}:{cfg.port}: {exc}",
                unreachable=isinstance(exc, OSError),
            ) from exc
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

    def publish_confirmation(self, topic: str, payload: bytes, agent: str, marks: Marks) -> bool:
        """Publish retained, QoS 1; ``confirmed(agent, marks)`` is called on its PUBACK."""
        info = self.client.publish(topic, payload, qos=1, retain=True)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        with self._confirm_lock:
            early = info.mid in self._acked_early
            if early:
                self._acked_early.discard(info.mid)
            else:
                self._confirm_pending[info.mid] = (agent, marks)
        if early:
            self._confirmed(agent, marks)
        return True

    def publish(self, topic: str, payload: bytes, *, retain: bool) -> bool:
        """Publish QoS 1 (the blocked set, route answers, alerts); False if paho refused it
        (not connected). Its PUBACK is only kept apart from the confirmations' so that a
        reused message id never passes for a confirmation's."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        with self._confirm_lock:
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
            else:
                self._other_pending.add(info.mid)
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
        opened = without_nagle(sock)
        if opened is not None:
            self._sock = opened

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
        # broker lost its persistence. Route questions first, so that the records' SUBACK
        # (which makes the link usable) means both are in place. QoS 0 for them: a question
        # the store missed while down is stale anyway (the agent has applied its policy), and
        # it needs no PUBACK among the records' ordered ones.
        if self._asks is not None:
            self._asks_mid = client.subscribe(ask_filter(self._config), qos=0)[1]
        if self._statuses is not None:
            # QoS 0 as well: a status is the latest word, replaced by the next.
            self._statuses_mid = client.subscribe(self._status_filter(), qos=0)[1]
        client.subscribe(self._config.subscription, qos=1)

    def _status_filter(self) -> str:
        return agent_status.status_filter(self._config.topic_prefix)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        if mid == self._asks_mid:
            if any(code.is_failure for code in reason_codes):
                log.warning(
                    "broker refused the subscription to %s: route questions go unanswered "
                    "(docs/plant-it.md lists the ACL lines)",
                    ask_filter(self._config),
                )
            return
        if mid == self._statuses_mid:
            if any(code.is_failure for code in reason_codes):
                log.warning(
                    "broker refused the subscription to %s: the Lines page shows no agent "
                    "status (docs/plant-it.md lists the ACL lines)",
                    self._status_filter(),
                )
            return
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
        inbound = Inbound(self, msg.mid, msg.qos, topic, bytes(msg.payload))
        if self._asks is not None and topic.endswith(ASK_SUFFIX):
            self._asks(inbound)
            return
        if self._statuses is not None and topic.endswith(agent_status.SUFFIX):
            if msg.qos:  # also matched by a wide records subscription: nothing to keep
                self.ack(msg.mid, msg.qos)
            self._statuses(inbound)
            return
        self._deliver(inbound)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._confirm_lock:
            if mid in self._other_pending:
                self._other_pending.discard(mid)
                return
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


def wait_to_retry(
    config: StoreConfig, attempt: int, unreachable: bool, stop: threading.Event
) -> None:
    """Sleep the backoff before attempt ``attempt + 1`` (or until ``stop``). After a broker
    that could not be reached, probe its port meanwhile and end the wait as soon as it
    accepts: the backoff is there to spare a broker that answers and refuses (bad password),
    not to keep the store away from one that has just restarted (its agents' records reach
    nobody until the store has subscribed again)."""
    delay = backoff_delay(attempt, config.backoff_initial, config.backoff_max)
    if not unreachable:
        stop.wait(delay)
        return
    deadline = time.monotonic() + delay
    while (left := deadline - time.monotonic()) > 0:
        if stop.wait(min(left, PROBE_EVERY * (0.5 + random.random() / 2))):
            return
        if port_open(config.host, config.port):
            return


def port_open(host: str, port: int) -> bool:
    """Does anything accept a TCP connection there now?"""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False
