"""A stand-in for the central trace store: subscribes to the agents' record topics, dedupes
by (agent, seq) as any receiver must, and keeps what arrived for the demo and the tests."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass
class Received:
    """Everything a collector has seen; read under ``RecordCollector.lock``."""

    messages: int = 0
    wire_records: int = 0  # including duplicates
    duplicates: int = 0
    out_of_order: int = 0  # a new (not duplicate) seq below the highest seen for its station
    bad_messages: int = 0
    records: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    order: list[tuple[str, int]] = field(default_factory=list)  # first arrivals, in order
    max_seq: dict[str, int] = field(default_factory=dict)
    max_station_seq: dict[tuple[str, str], int] = field(default_factory=dict)


class RecordCollector:
    """Paho subscriber in its own thread. ``clean_session=False`` with a fixed client id and
    QoS 1, so records queued for it survive its own reconnects and a broker restart."""

    def __init__(
        self, host: str, port: int, topic: str = "trace/+/+/+/records", client_id: str | None = None
    ) -> None:
        self.host, self.port, self.topic = host, port, topic
        self.lock = threading.Lock()
        self.data = Received()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"collector-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    def start(self, timeout: float = 10.0) -> None:
        self._client.connect_async(self.host, self.port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"collector could not subscribe on {self.host}:{self.port}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> RecordCollector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
            agent = doc["agent"]
            records = doc["records"]
        except (ValueError, KeyError, TypeError):
            with self.lock:
                self.data.bad_messages += 1
            return
        with self.lock:
            d = self.data
            d.messages += 1
            for rec in records:
                d.wire_records += 1
                key = (agent, int(rec["seq"]))
                if key in d.records:
                    d.duplicates += 1
                    continue
                # Order is promised per station (one message holds one station's records).
                skey = (agent, str(rec.get("station")))
                if key[1] < d.max_station_seq.get(skey, 0):
                    d.out_of_order += 1
                d.max_station_seq[skey] = max(d.max_station_seq.get(skey, 0), key[1])
                d.records[key] = rec
                d.order.append(key)
                d.max_seq[agent] = max(d.max_seq.get(agent, 0), key[1])

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float) -> bool:
        """Poll ``predicate`` (under the lock) until true or the deadline passes."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if predicate(self.data):
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def seqs(self, agent: str) -> list[int]:
        with self.lock:
            return sorted(s for a, s in self.data.records if a == agent)
