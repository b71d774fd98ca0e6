"""What the rest of the plant was told, recorded beside the broker: every record the broker
accepted from the agent (so PUBACKed to it) and every watermark the trace store confirmed.

A power cut may lose only what nobody was told. The witness is how the power-cut run knows
what was told, without trusting either database: a record seen here was acknowledged by the
broker; a watermark seen here was acknowledged by the store. It also catches a seq that comes
back with different content, which is what a journal that went back in time would send.

Reads only the wire format (docs/wire-format.md): ``<prefix>/.../records`` envelopes and the
store's retained ``<prefix>/<site>/<line>/<agent>/confirmed``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass
class Seen:
    """Read under :attr:`Witness.lock`."""

    digests: dict[int, str] = field(default_factory=dict)  # seq -> digest of its record
    new: list[int] = field(default_factory=list)  # first arrivals not yet taken by a check
    parts: dict[tuple[str, int], int] = field(default_factory=dict)  # (station, counter) -> seq
    max_seq: int = 0
    # What the store confirmed, per journal epoch ("" for the legacy ``seq`` watermark).
    watermarks: dict[str, int] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)  # violations: one seq, two contents
    regressed: list[str] = field(default_factory=list)  # violations: a watermark went back


class Witness:
    """A QoS 1 subscriber with a persistent session (fixed client id), in paho's thread."""

    def __init__(self, port: int, agent: str, client_id: str = "powercut-witness") -> None:
        self.agent = agent
        self.port = port
        self.lock = threading.Lock()
        self.seen = Seen()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> None:
        self._client.connect_async("127.0.0.1", self.port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"witness could not subscribe on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def take_new(self) -> list[int]:
        """Seqs first seen since the last call."""
        with self.lock:
            new, self.seen.new = self.seen.new, []
        return new

    def marks(self) -> tuple[int, dict[str, int]]:
        """(highest seq seen on the wire, the watermark the store confirmed per epoch)."""
        with self.lock:
            return self.seen.max_seq, dict(self.seen.watermarks)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe("#", qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(doc, dict) or doc.get("agent") != self.agent:
            return
        if msg.topic.endswith("/confirmed"):
            # A store of the previous protocol sends ``seq`` alone; the current one adds the
            # watermark of each journal epoch (docs/wire-format.md, confirmation protocol).
            marks = {
                "": int(doc.get("seq") or 0),
                **{str(k): int(v) for k, v in (doc.get("epochs") or {}).items()},
            }
            with self.lock:
                for epoch, mark in marks.items():
                    known = self.seen.watermarks.get(epoch, 0)
                    if mark < known:
                        self.seen.regressed.append(
                            f"the store confirmed watermark {mark} for epoch {epoch or '(legacy)'}"
                            f" after having confirmed {known}"
                        )
                    elif mark > 0:
                        self.seen.watermarks[epoch] = mark
        elif msg.topic.endswith("/records"):
            with self.lock:
                for record in doc["records"]:
                    self._record(record)

    def _record(self, record: dict[str, Any]) -> None:
        seen = self.seen
        seq = int(record["seq"])
        digest = hashlib.blake2b(
            json.dumps(record, sort_keys=True).encode(), digest_size=16
        ).hexdigest()
        known = seen.digests.get(seq)
        if known is None:
            seen.digests[seq] = digest
            seen.new.append(seq)
            seen.max_seq = max(seen.max_seq, seq)
            if record.get("kind") == "part" and isinstance(record.get("counter"), int):
                seen.parts[(str(record.get("station")), record["counter"])] = seq
        elif known != digest:
            seen.reused.append(
                f"seq {seq} published again with different content (kind "
                f"{record.get('kind')}, station {record.get('station')}): seqs went backwards"
            )
