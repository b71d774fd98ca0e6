"""The trace store's link keeper (thread ``trace-store-mqtt``): connects, notices a lost
connection and connects again with jittered backoff, probing a broker it could not reach so
that one coming back is used at once (``link.wait_to_retry``). Like ``sync/mqtt.py`` every
attempt gets a fresh paho client (``link.Link``).

It owns the connection's lifecycle only: what arrives goes to ``deliver`` (the writer's
inbox), ``asks`` (route questions) or ``statuses`` (agents' status messages), each new
connection is announced with ``on_up``, and counters go through ``count``.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable

from trace_store.config import StoreConfig
from trace_store.link import Inbound, Link, LinkError, Marks, wait_to_retry

log = logging.getLogger("trace_store.service")


class LinkKeeper:
    def __init__(
        self,
        config: StoreConfig,
        tls: ssl.SSLContext | None,
        deliver: Callable[[Inbound], None],
        confirmed: Callable[[str, Marks], None],
        on_up: Callable[[Link], None],
        count: Callable[[str], None],
        asks: Callable[[Inbound], None] | None = None,
        statuses: Callable[[Inbound], None] | None = None,
    ) -> None:
        self.config = config
        self._tls = tls
        self._deliver = deliver
        self._confirmed = confirmed
        self._on_up = on_up
        self._count = count
        self._asks = asks
        self._statuses = statuses
        self.ready = threading.Event()  # connected and subscribed
        self.current: Link | None = None
        self._stop = threading.Event()
        self._cycle = threading.Event()
        self._wake = threading.Event()  # the keeper's doorbell

    def request_cycle(self) -> None:
        """Drop the connection and make a fresh one (the broker then redelivers every message
        not acknowledged)."""
        self._cycle.set()
        self._wake.set()

    def stop(self) -> None:
        """Make ``run`` return soon: a pending connect gives up, a live link is closed."""
        self._stop.set()
        current = self.current
        if current is not None:
            current.abort()
        self._wake.set()

    def run(self) -> None:
        cfg = self.config
        attempt = 0
        down_since: float | None = None
        failures = 0
        while not self._stop.is_set():
            link = Link(
                cfg,
                self._tls,
                self._deliver,
                self._wake.set,
                self._confirmed,
                self._asks,
                self._statuses,
            )
            self.current = link
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
                self._count("connections")
                self._on_up(link)
                self.ready.set()
                while not (link.lost.is_set() or self._stop.is_set() or self._cycle.is_set()):
                    self._wake.wait()
                    self._wake.clear()
                reason = link.reason or "closed"
                unreachable = False
            except LinkError as exc:
                reason = str(exc)
                unreachable = exc.unreachable
            finally:
                self.ready.clear()
                link.close()
                self.current = None
            if self._stop.is_set():
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
            self._count("disconnects")
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
            wait_to_retry(cfg, attempt, unreachable, self._stop)
            attempt += 1
