"""What happens to a rule's transition (``rules.Transition``): a row in ``quality_alerts``,
the rule's retained state on ``<prefix>/alerts/<rule id>`` (contract section 3), and an HTTP
POST of the same JSON to the rule's webhook (or the file's). The database row comes first:
the workbench shows it even if the broker or the webhook is down.

Webhooks are posted by a thread of their own (``trace-store-webhook``) so a slow receiver
never delays the gate's route answers; each post is tried ``ATTEMPTS`` times with a growing
pause, then logged as lost (the alert stays in the table and on MQTT).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from trace_store.quality.blocks import utc_ms
from trace_store.quality.rules import Engine, Transition
from trace_store.storage import Storage

log = logging.getLogger("trace_store.quality")

ATTEMPTS = 3
TIMEOUT = 5.0  # seconds per POST
JOIN_TIMEOUT = 3 * TIMEOUT


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    rule: str
    key: str
    state: str
    since: str
    at: str
    message: str
    evidence: list[dict[str, Any]]


def record(storage: Storage, transitions: list[Transition]) -> None:
    """Store the transitions, in one transaction."""
    now = utc_ms()
    with storage._transaction():
        for t in transitions:
            storage._execute(
                "INSERT INTO quality_alerts (rule, key, state, since, at, message, evidence) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    t.rule.id,
                    t.key,
                    t.state,
                    t.since,
                    now,
                    t.message,
                    json.dumps(t.payload()["evidence"]),
                ),
            )


def alerts(storage: Storage, limit: int = 200, rule: str | None = None) -> list[Alert]:
    """The newest transitions first."""
    sql = "SELECT id, rule, key, state, since, at, message, evidence FROM quality_alerts"
    params: list[Any] = []
    if rule is not None:
        sql += " WHERE rule = ?"
        params.append(rule)
    with storage._transaction():
        rows = storage._execute(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
    return [Alert(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7])) for r in rows]


def latest(storage: Storage, engine: Engine) -> dict[str, dict[str, Any]]:
    """Each rule's last state as the store left it (its retained payload), and the engine
    told which rules were firing for which key."""
    out: dict[str, dict[str, Any]] = {}
    for rule in engine.rules:
        last = alerts(storage, 1, rule.id)
        if not last:
            continue
        a = last[0]
        if a.state == "firing":
            engine.seed(a.rule, a.key)
        out[a.rule] = {
            "v": 1,
            "rule": a.rule,
            "state": a.state,
            "since": a.since,
            "key": a.key,
            "message": a.message,
            "evidence": a.evidence,
        }
    return out


class Webhooks:
    """POSTs in a thread of their own; ``counters`` says how it went."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counters = {"webhook_posted": 0, "webhook_failed": 0}

    def post(self, url: str, payload: dict[str, Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._main, name="trace-store-webhook", daemon=True
            )
            self._thread.start()
        self._queue.put((url, json.dumps(payload).encode()))

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT)
            self._thread = None

    def _main(self) -> None:
        while (item := self._queue.get()) is not None:
            url, data = item
            for attempt in range(ATTEMPTS):
                try:
                    request = urllib.request.Request(
                        url, data, {"Content-Type": "application/json"}, method="POST"
                    )
                    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                        response.read()
                    self.counters["webhook_posted"] += 1
                    break
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    if attempt + 1 == ATTEMPTS or self._stop.wait(0.5 * 2**attempt):
                        self.counters["webhook_failed"] += 1
                        log.warning("alert webhook %s failed: %s", url, exc)
                        break
