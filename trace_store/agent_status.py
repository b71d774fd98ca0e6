"""What each agent says about itself on its retained status topic (docs/wire-format.md,
"Agent status topic"), kept by the trace store for the workbench's Lines page: online or
offline (and why), its active alarms, and how many records its journal still holds (``held``:
committed there, not yet confirmed delivered), as of the status's time.

The store subscribes to ``<prefix>/+/+/+/status`` at QoS 0: a status is the latest word, not
a record. A lost one is replaced by the next (an online agent says it every minute) and the
broker hands over the retained one at each subscription. A status that is not one (bad JSON,
another schema, an agent that is not the topic's or not allowed) is left out and counted.

One row per agent in ``agent_status``, replaced by each status in the order they arrive (the
broker keeps a topic's order; a retained one is the newest there is). A status without
``held`` (the Last Will, made when the agent connected) keeps the count said before, with
the time it was said (``held_ts``).

Functions on a ``Storage``: ``write`` inside the store's writer thread, ``read`` by readers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trace_store.model import utc_now
from trace_store.parts import storable

if TYPE_CHECKING:
    from trace_store.storage import Storage

SCHEMA = "edge-agent.status"
SUFFIX = "/status"
TABLE = "agent_status"
STATES = ("online", "offline")
MAX_BYTES = 64 * 1024  # a status with its alarms is well under 1 KiB


@dataclass(frozen=True, slots=True)
class AgentStatus:
    agent: str
    site: str  # from the topic
    line: str
    state: str  # online or offline
    reason: str | None  # why offline: stopped, connection lost
    ts: str  # when the agent said it (the Last Will: when it connected)
    held: int | None  # records in its journal not yet confirmed; None: not said
    held_ts: str | None  # when the agent said ``held``
    alarms: tuple[str, ...]  # codes of its active alarms
    host: str | None
    received_at: str = ""


def status_filter(prefix: str) -> str:
    return f"{prefix}/+/+/+{SUFFIX}"


def parse(
    topic: str, payload: bytes, prefix: str, allowed: frozenset[str] | None = None
) -> AgentStatus | None:
    """The status in a message on ``status_filter(prefix)``; None when it is not one."""
    parts = topic[len(prefix) + 1 :].split("/") if topic.startswith(prefix + "/") else []
    if len(parts) != 4 or parts[3] != SUFFIX[1:] or len(payload) > MAX_BYTES:
        return None
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("schema") != SCHEMA:
        return None
    agent, state, ts = body.get("agent"), body.get("state"), _text(body.get("ts"))
    if agent != parts[2] or state not in STATES or ts is None:
        return None
    if allowed is not None and agent not in allowed:
        return None
    held = body.get("held")
    count = held if isinstance(held, int) and not isinstance(held, bool) and held >= 0 else None
    alarms = body.get("alarms")
    return AgentStatus(
        agent,
        parts[0],
        parts[1],
        state,
        _text(body.get("reason")),
        ts,
        count,
        None if count is None else ts,
        tuple(_codes(alarms)) if isinstance(alarms, list) else (),
        _text(body.get("host")),
        utc_now(),
    )


def _codes(alarms: list[Any]) -> list[str]:
    return [str(a["code"]) for a in alarms if isinstance(a, dict) and a.get("code")]


def _text(value: Any) -> str | None:
    """A non-empty text the database can hold (``parts.storable``), else None."""
    return value if isinstance(value, str) and value and storable(value) else None


def ddl(integer: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
            agent TEXT PRIMARY KEY,
            site TEXT NOT NULL,
            line TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT,
            ts TEXT NOT NULL,
            held {integer},
            held_ts TEXT,
            alarms TEXT NOT NULL,
            host TEXT,
            received_at TEXT NOT NULL)"""
    ]


def write(storage: Storage, statuses: Sequence[AgentStatus]) -> None:
    """The statuses, in the order they arrived, in one transaction."""
    newest = {s.agent: s for s in statuses}  # the last of each agent
    with storage._transaction():
        storage._executemany(
            f"INSERT INTO {TABLE} (agent, site, line, state, reason, ts, held, held_ts, "
            "alarms, host, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (agent) DO UPDATE SET site = excluded.site, line = excluded.line, "
            "state = excluded.state, reason = excluded.reason, ts = excluded.ts, "
            f"held = COALESCE(excluded.held, {TABLE}.held), "
            f"held_ts = COALESCE(excluded.held_ts, {TABLE}.held_ts), "
            "alarms = excluded.alarms, host = excluded.host, received_at = excluded.received_at",
            [
                (s.agent, s.site, s.line, s.state, s.reason, s.ts, s.held, s.held_ts,
                 json.dumps(s.alarms), s.host, s.received_at)
                for s in newest.values()
            ],
        )  # fmt: skip


def read(storage: Storage) -> dict[str, AgentStatus]:
    """Every agent's last status (none from a database whose store predates them)."""
    with storage._transaction():
        if not storage._has_table(TABLE):
            return {}
        rows = storage._execute(
            f"SELECT agent, site, line, state, reason, ts, held, held_ts, alarms, host, "
            f"received_at FROM {TABLE}"
        )
    out = {}
    for agent, site, line, state, reason, ts, held, held_ts, alarms, host, received_at in rows:
        codes = json.loads(alarms)
        out[agent] = AgentStatus(
            agent,
            site,
            line,
            state,
            reason,
            ts,
            None if held is None else int(held),
            held_ts,
            tuple(str(c) for c in codes) if isinstance(codes, list) else (),
            host,
            received_at,
        )
    return out
