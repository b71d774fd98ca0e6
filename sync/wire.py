"""The wire format as the agent writes it (docs/wire-format.md): topics, the records
envelope (concatenated: record bodies are already wire JSON and are not parsed again), and the
status message."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from buffer.journal import LEGACY_EPOCH, Epoch, StoredRecord
from sync.config import MqttConfig

SCHEMA = "edge-agent.records"
SCHEMA_VERSION = 2
"""2: readings travel as ``kind: readings``, one record per device response. A v1 receiver
would skip that unknown kind silently (the v1 rule for new kinds); raising ``v`` makes it set
the messages aside instead. Rows a v1 agent journaled (``kind: reading``) still go out, in v2.
The journal identity (``journal``, ``epoch``, ``epoch_first``) is an addition, not a new
version: a receiver of the previous version stores by (agent, seq) as it did (docs/wire-format.md,
"Versions")."""
STATUS_SCHEMA = "edge-agent.status"


def topic_for(config: MqttConfig, site: str, line: str, station: str) -> str:
    """The topic one station's records are published to."""
    return f"{config.topic_prefix}/{site}/{line}/{station}/records"


def agent_topic(config: MqttConfig, site: str, line: str, agent: str, leaf: str) -> str:
    """An agent's own topics: ``status`` (published by the agent), ``confirmed`` (by the store)."""
    return f"{config.topic_prefix}/{site}/{line}/{agent}/{leaf}"


def blocked_topic(config: MqttConfig) -> str:
    """Where the trace store publishes the blocked set (retained) every station gate keeps."""
    return f"{config.topic_prefix}/blocked"


def status_payload(agent: str, state: str, **extra: Any) -> bytes:
    body = {"schema": STATUS_SCHEMA, "v": 1, "agent": agent, "state": state, "ts": _now(), **extra}
    return json.dumps(body, separators=(",", ":")).encode()


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def envelope_head(
    agent: str, journal: str, epoch: Epoch, site: str, line: str, station: str
) -> str:
    """The envelope's fields before ``first_seq``, the same for every message of one epoch
    and station. The legacy epoch goes out as the previous version sent it: without one."""
    epoch_fields = (
        f'"epoch":"{epoch.id}","epoch_first":{epoch.first},' if epoch.id != LEGACY_EPOCH else ""
    )
    return (
        f'{{"schema":"{SCHEMA}","v":{SCHEMA_VERSION},"agent":{json.dumps(agent)},'
        f'"journal":"{journal}",{epoch_fields}'
        f'"site":{json.dumps(site)},"line":{json.dumps(line)},'
        f'"station":{json.dumps(station)},'
    )


def by_station(batch: Sequence[StoredRecord]) -> dict[str, list[StoredRecord]]:
    """Group records by station, keeping seq order inside each group."""
    groups: dict[str, list[StoredRecord]] = {}
    for record in batch:
        groups.setdefault(record.station, []).append(record)
    return groups


def envelope(head: str, records: Sequence[StoredRecord], span: str) -> bytes:
    """The message JSON, concatenated: bodies are already wire JSON and are not re-parsed."""
    return (
        f'{head}"first_seq":{records[0].seq},"last_seq":{records[-1].seq},'
        f'"count":{len(records)},"records":[{",".join(r.body for r in records)}],{span}}}'
    ).encode()
