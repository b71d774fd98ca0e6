"""The trace store's tests' shared helpers: building messages as the agent does, a QoS 1
publisher, reading retained messages, writing to storage, a small genealogy, and waits on a
running store. Fixtures built on them are in ``tests.store_fixtures`` (loaded by conftest).

Envelopes are built like ``sync/mqtt.py``'s ``_envelope``: record bodies are JSON text,
concatenated into the message, with the ``range`` after the records.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from trace_store.envelope import Accepted, parse
from trace_store.service import TraceStore
from trace_store.storage import Batch, Storage, open_storage

AGENT = "line3-pc1"
STREAM = (AGENT, "")  # its legacy epoch: what a message without an epoch belongs to
SITE = "plant-a"
LINE = "line-3"
PREFIX = "trace"
WAIT = 10.0  # seconds any single wait may take before the test fails
CONFIRMED = f"{PREFIX}/{SITE}/{LINE}/{AGENT}/confirmed"
STORE_IN_ORDER = {"confirm": "store", "order": "in_order"}

StoreFactory = Callable[..., TraceStore]
"""The ``stores`` fixture: start a trace store on the test's broker (``db``, overrides)."""


# ---- building messages -----------------------------------------------------------------------


def body(seq: int, kind: str = "readings", station: str = "op10", **fields: Any) -> dict[str, Any]:
    """A record body; ``ctx`` defaults to no serial."""
    out: dict[str, Any] = {
        "seq": seq,
        "kind": kind,
        "station": station,
        "ts": f"2026-11-21T10:{seq // 60 % 60:02d}:{seq % 60:02d}.000000Z",
    }
    if kind == "readings":
        out.update(device="press10", values={"force": 20.5, "stroke": 41}, units={"force": "kN"})
    elif kind == "reading":  # one value per record, as a v1 agent journaled it
        out.update(device="press10", point="force", value=20.5, quality="good", unit="kN")
    out.update(fields)
    out.setdefault("ctx", {"serial": None, "lot": None})
    return out


def envelope(
    records: list[Any],
    *,
    agent: str = AGENT,
    site: str = SITE,
    line: str = LINE,
    station: str | None = None,
    rng: tuple[int, int, int] | None = None,
    confirm: str | None = None,
    order: str | None = None,
    **overrides: Any,
) -> bytes:
    """The message bytes, concatenated like the agent does (``overrides`` replace head fields,
    for malformed cases; a value of ``...`` drops the field). ``confirm``/``order`` go after
    the range, as the agent sends them; None leaves them out (an agent older than them)."""
    station = station if station is not None else records[0]["station"]
    seqs = [r["seq"] for r in records if isinstance(r, dict)]
    head: dict[str, Any] = {
        "schema": "edge-agent.records",
        "v": 2,
        "agent": agent,
        "site": site,
        "line": line,
        "station": station,
        "first_seq": seqs[0] if seqs else 1,
        "last_seq": seqs[-1] if seqs else 1,
        "count": len(records),
    }
    head.update(overrides)
    fields = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in head.items() if v is not ...]
    bodies = ",".join(json.dumps(r, separators=(",", ":")) for r in records)
    fields.append(f'"records":[{bodies}]')
    if rng is not None:
        after, last, count = rng
        fields.append(f'"range":{{"after":{after},"last":{last},"count":{count}}}')
    if confirm is not None:
        fields.append(f'"confirm":{json.dumps(confirm)}')
    if order is not None:
        fields.append(f'"order":{json.dumps(order)}')
    return ("{" + ",".join(fields) + "}").encode()


def topic(station: str = "op10", site: str = SITE, line: str = LINE) -> str:
    return f"{PREFIX}/{site}/{line}/{station}/records"


def salvaged_copy(seq: int, original: int, journal: str, **fields: Any) -> dict[str, Any]:
    """Record ``original`` as ``edge-agent buffer salvage`` copies it: the same body under a
    new seq, marked with where it came from."""
    return {
        **body(original),
        "seq": seq,
        "salvaged": {"seq": original, "journal": journal, **fields},
    }


def readings(seqs: Any, station: str = "op10") -> list[dict[str, Any]]:
    return [body(s, station=station) for s in seqs]


# ---- MQTT helpers ------------------------------------------------------------------------------

_client_ids = itertools.count(1)


class Publisher:
    """A QoS 1 publisher: ``publish`` returns once the broker acknowledged (PUBACK)."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-pub-{next(_client_ids)}",
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(100)
        # paho's hints say int; fractions keep a broker-restart test fast.
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"no PUBACK for {topic}"

    def publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        """Many at once (in order, on one connection), then wait for every PUBACK."""
        infos = [self.client.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(WAIT)
            assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def read_retained(port: int, topic_filter: str, expect: int = 1) -> dict[str, dict[str, Any]]:
    """The retained messages matching ``topic_filter`` (topic -> JSON), with a clean session:
    what an agent connecting now would get."""
    got: dict[str, dict[str, Any]] = {}
    done = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"test-retained-{next(_client_ids)}",
        protocol=mqtt.MQTTv311,
    )

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe(topic_filter, qos=1)

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got[msg.topic] = json.loads(msg.payload)
            if len(got) >= expect:
                done.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert done.wait(WAIT), f"only {len(got)} retained message(s) on {topic_filter}"
    finally:
        client.disconnect()
        client.loop_stop()
    return got


# ---- waits on a running store ---------------------------------------------------------------


def wait_messages(store: TraceStore, n: int) -> None:
    """Until the store has committed or held, and acknowledged, ``n`` messages in all."""
    assert store.wait_stats(lambda s: s["messages"] >= n, WAIT), (
        f"store handled {store.stats()['messages']} of {n} messages"
    )


def wait_w(store: TraceStore, seq: int, agent: str = AGENT) -> None:
    assert store.wait_watermark(agent, seq, WAIT), (
        f"watermark {store.watermark(agent)}, expected {seq}"
    )


def stored_seqs(db: str) -> list[int]:
    with open_storage(db) as s:
        return s.seqs(AGENT)


def wait_held(store: TraceStore, records: int, messages: int) -> None:
    """Until the store has handled (and acknowledged) ``messages`` in all and holds
    ``records`` records."""
    assert store.wait_stats(
        lambda s: s["messages"] >= messages and s["held_records"] == records, WAIT
    ), store.stats()


# ---- storage ---------------------------------------------------------------------------------


def accepted(payload: bytes, where: str | None = None) -> Accepted:
    result = parse(where or topic(), payload, prefix=PREFIX, max_bytes=1 << 24)
    assert isinstance(result, Accepted), result
    return result


def write(storage: Storage, *messages: Accepted) -> int:
    batch = Batch()
    for m in messages:
        batch.rows.extend(m.rows)
        batch.edges.extend(m.edges)
    return storage.write(batch)


def genealogy() -> list[tuple[str, bytes]]:
    """lot L-STEEL -> sub-assemblies SA-1, SA-2 (part records while the lot was loaded at op10)
    and SA-3 (consumed at op20) -> finished goods FG-1, FG-2 (consumed SA-1/SA-2 at op30)."""
    steel = {"serial": None, "lot": "L-STEEL"}
    op10 = [
        body(1, "context", key="lot", value="L-STEEL", previous=None, ctx=steel),
        body(
            2, "context", key="serial", value="SA-1", previous=None, ctx={**steel, "serial": "SA-1"}
        ),
        body(
            3,
            "readings",
            ctx={**steel, "serial": "SA-1"},
            values={"force": 20.5, "stroke": None},
            quality={"stroke": "bad"},
            errors={"stroke": "no response within 1.0s"},
        ),
        body(
            4,
            "part",
            serial="SA-1",
            result="ok",
            quality="good",
            counter=1,
            cycle_time=2.0,
            values={
                "force": {
                    "value": 20.6,
                    "unit": "kN",
                    "quality": "good",
                    "min": 18,
                    "max": 22.5,
                    "ok": True,
                }
            },
            ctx={**steel, "serial": "SA-1"},
        ),
        body(
            5,
            "context",
            key="serial",
            value="SA-2",
            previous="SA-1",
            ctx={**steel, "serial": "SA-2"},
        ),
        body(
            6,
            "part",
            serial="SA-2",
            result="nok",
            quality="good",
            counter=2,
            values={
                "force": {
                    "value": 23.1,
                    "unit": "kN",
                    "quality": "good",
                    "min": 18,
                    "max": 22.5,
                    "ok": False,
                }
            },
            ctx={**steel, "serial": "SA-2"},
        ),
    ]
    op20 = [
        body(
            7,
            "consumption",
            station="op20",
            serial="SA-3",
            lot="L-STEEL",
            quantity=1.5,
            unit="kg",
            rule="lot",
            quality="good",
            ctx={"serial": "SA-3"},
        ),
        body(
            8,
            "consumption",
            station="op20",
            serial="SA-9",
            lot="L-OTHER",
            rule="lot",
            quality="good",
            ctx={"serial": "SA-9"},
        ),
    ]
    op30 = [
        body(
            9,
            "consumption",
            station="op30",
            serial="FG-1",
            component="SA-1",
            product="SUB-A",
            quantity=1,
            unit="pcs",
            rule="sub",
            quality="good",
            ctx={"serial": "FG-1"},
        ),
        body(
            10,
            "consumption",
            station="op30",
            serial="FG-1",
            lot="L-GLUE",
            quantity=3,
            unit="g",
            rule="glue",
            quality="good",
            ctx={"serial": "FG-1"},
        ),
        body(
            11,
            "part",
            station="op30",
            serial="FG-1",
            result="ok",
            quality="good",
            values={},
            ctx={"serial": "FG-1"},
        ),
        body(
            12,
            "consumption",
            station="op30",
            serial="FG-2",
            component="SA-2",
            product="SUB-A",
            quantity=1,
            unit="pcs",
            rule="sub",
            quality="good",
            ctx={"serial": "FG-2"},
        ),
    ]
    rng = (0, 12, 12)
    return [
        (topic("op10"), envelope(op10, rng=rng)),
        (topic("op20"), envelope(op20, rng=rng)),
        (topic("op30"), envelope(op30, rng=rng)),
    ]
