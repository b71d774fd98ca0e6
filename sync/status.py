"""The uplink's live state (``SyncStatus``) and its connection transitions, logged once each
(``Outage``): one ERROR when the broker is lost, one INFO when it is back, DEBUG between."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sync.config import MqttConfig

log = logging.getLogger("sync.mqtt")  # the uplink's one logger, whichever module writes


@dataclass
class SyncStatus:
    """Live state of the uplink, for logs, metrics and the demo. Owned by the event loop."""

    connected: bool = False
    since: float = field(default_factory=time.time)  # wall clock of the last up/down change
    published_messages: int = 0  # messages handed to the broker connection
    published_records: int = 0  # record copies in them (a record sent twice counts twice)
    confirmed_records: int = 0  # records acknowledged by the broker and deleted locally
    last_confirmed_seq: int = 0  # highest seq acknowledged and deleted
    last_error: str | None = None  # why the last connection failed or ended
    reconnects: int = 0  # connection attempts that failed or connections that were lost
    inflight: int = 0  # messages of the current connection waiting for their PUBACK
    store_watermark: int = 0  # confirm: store: every seq up to it is confirmed by the store
    resends: int = 0  # confirm: store: times the journal was sent again (stalled, or told to)
    refused_messages: int = 0  # MQTT 5: messages the broker refused with a reason code


class Outage:
    """Up/down transitions of the uplink, for the status and the log. Owned by the event loop."""

    def __init__(self, config: MqttConfig, status: SyncStatus, client_id: str) -> None:
        self.config = config
        self.status = status
        self.client_id = client_id
        self._down_since: float | None = None  # monotonic; set once the outage is logged
        self._down_failures = 0  # failed attempts in the current outage

    def went_up(self) -> None:
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

    def went_down(self, reason: str, waiting: int) -> None:
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
                waiting,
            )
        else:
            log.debug("MQTT broker %s:%d still unreachable: %s", cfg.host, cfg.port, reason)
