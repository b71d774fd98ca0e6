"""One MQTT connection of the uplink: a fresh paho client per attempt and the thread running
its network loop, and the wait before the next attempt.

The blocking TCP connect runs in a worker thread (``asyncio.to_thread``), the network loop in
paho's own thread (``loop_start``); paho callbacks only hand events to the event loop with
``call_soon_threadsafe``. paho's automatic reconnect is off: ``MqttSync.run`` reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from kernel.backoff import backoff_delay
from kernel.errors import SyncError
from kernel.net import without_nagle
from sync.config import MqttConfig

log = logging.getLogger("sync.mqtt")  # the uplink's one logger: operators filter on it

CONTROL_SLOTS = 4
"""paho in-flight slots beyond our window, for status messages (they are not records)."""
CLOSE_GRACE = 2.0
"""Seconds a clean DISCONNECT may take before the socket is shut down under paho's feet."""
JOIN_TIMEOUT = 5.0
"""Seconds to wait for paho's network thread once its socket is closed (it exits at once)."""
PROBE_EVERY = 1.0
"""Seconds between two TCP probes of a broker that could not be reached (jittered 0.5-1x)."""
PROBE_TIMEOUT = 1.0


class Unreachable(SyncError):
    """Nothing accepted a TCP connection at the broker's address."""


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
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


def new_client(
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
    ctx = tls_context(config)
    if ctx is not None:
        client.tls_set_context(ctx)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    return client


class Link:
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
        on_message: Callable[[str, bytes, bool], None] | None = None,
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
        self.client = new_client(config, client_id, will)
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
        return self.publish_control(topic, payload, retain=True)

    def publish_control(self, topic: str, payload: bytes, *, retain: bool) -> asyncio.Future[None]:
        """Publish a QoS 1 message that is not a journal record (status, a route question);
        the future resolves on its PUBACK."""
        done: asyncio.Future[None] = self._loop.create_future()
        info = self.client.publish(topic, payload, qos=1, retain=retain)
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
        except OSError as exc:
            raise Unreachable(f"cannot connect to {cfg.host}:{cfg.port}: {exc}") from exc
        except ValueError as exc:
            raise SyncError(f"cannot connect to {cfg.host}:{cfg.port}: {exc}") from exc
        with self._lock:
            if not self._abandoned:
                self._socket_open = True
                return
        self.client.disconnect()  # abandoned while connecting: close the socket ourselves
        raise SyncError("connection abandoned")

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
            self._post(
                self._on_message_cb, message.topic, bytes(message.payload), bool(message.retain)
            )

    def _acked(self, mid: int, refusal: str | None) -> None:
        done = self._control.pop(mid, None)
        if done is None:
            self._on_ack(mid, refusal)
        elif not done.done():
            if refusal is None:
                done.set_result(None)
            else:
                done.set_exception(SyncError(f"broker refused the status message: {refusal}"))


async def wait_to_retry(config: MqttConfig, attempt: int, unreachable: bool) -> None:
    """Sleep the backoff before the next attempt. After a broker that could not be reached,
    probe its port meanwhile and end the wait as soon as it accepts a connection.

    The backoff grows to ``backoff_max`` (30 s) over a long outage, which spares a broker that
    answers and refuses (a bad password, a taken client id: those attempts still wait it out).
    But a broker that was down and is back should be used at once: while this agent waits,
    its records wait, and after a broker crash every second counts (docs/delivery.md, "A
    broker crash"). A probe is one TCP handshake, about what a failed attempt costs a broker
    that is down; the jitter keeps a plant's agents from probing in step."""
    delay = backoff_delay(attempt, config.backoff_initial, config.backoff_max)
    if not unreachable:
        await asyncio.sleep(delay)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + delay
    while (left := deadline - loop.time()) > 0:
        await asyncio.sleep(min(left, PROBE_EVERY * (0.5 + random.random() / 2)))
        if await port_open(config.host, config.port):
            return


async def port_open(host: str, port: int) -> bool:
    """Does anything accept a TCP connection there now?"""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
