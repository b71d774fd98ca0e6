"""The store's quality thread (``trace-store-quality``): publishes the blocked set, answers
route questions and evaluates the rules on the part records the writer committed
(docs/quality.md; contract sections 1 to 3).

It has a database connection of its own, so neither job waits behind the writer's batches.
The blocks are written by other processes (the ``quality`` command, the workbench): the
thread reads the change counter every ``POLL`` seconds (one indexed row) and publishes the
whole set, retained, when it moved, and again on every new connection (a broker that lost
its retained messages gets it back at once). A publish that could not go out (no
connection) is tried again at the next poll. Each rule's latest alert state is published,
retained, when it changes and again on every new connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable

from kernel.backoff import backoff_delay
from trace_store.config import StoreConfig
from trace_store.envelope import Row
from trace_store.link import Inbound, Link
from trace_store.quality import alerts, blocks
from trace_store.quality.route import answer, answer_topic
from trace_store.quality.ruleconf import RuleSet
from trace_store.quality.rules import Engine, Transition, part_of
from trace_store.storage import Storage, StorageError, open_storage
from trace_store.throttle import Throttle

log = logging.getLogger("trace_store.quality")

POLL = 0.2  # seconds between two reads of the change counter
JOIN_TIMEOUT = 15.0


def blocked_topic(config: StoreConfig) -> str:
    return f"{config.topic_prefix}/blocked"


def alert_topic(config: StoreConfig, rule: str) -> str:
    return f"{config.topic_prefix}/alerts/{rule}"


class _Rows(list[Row]):
    """Part rows the writer committed."""


class QualityPublisher:
    """``connected(link)`` from the link keeper, ``ask(inbound)`` from paho's thread;
    ``counters`` (any thread) says what it did."""

    def __init__(
        self,
        config: StoreConfig,
        current: Callable[[], Link | None],
        rules: RuleSet | None = None,
    ) -> None:
        self.config = config
        self._current = current
        self._rules = rules
        self._engine = Engine(rules.rules) if rules is not None else None
        self._states: dict[str, dict[str, object]] = {}  # rule -> its latest alert payload
        self._unsent: set[str] = set()  # rules whose state the broker has not been given
        self._loaded = False
        self._webhooks = alerts.Webhooks()
        self._inbox: queue.SimpleQueue[Inbound | Link | _Rows | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Condition()
        self.counters = {
            "blocked_published": 0,
            "route_answers": 0,
            "route_errors": 0,
            "alerts": 0,
            "alerts_published": 0,
        }
        self.published_version = -1  # the version the broker was last given
        self._log = Throttle()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="trace-store-quality", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT)
            self._thread = None
        self._webhooks.stop()

    @property
    def webhook_counters(self) -> dict[str, int]:
        return dict(self._webhooks.counters)

    def records(self, rows: list[Row]) -> None:
        """Writer: these rows are committed (the rules see part records only)."""
        if self._engine is not None:
            parts = _Rows(r for r in rows if r.kind == "part")
            if parts:
                self._inbox.put(parts)

    def connected(self, link: Link) -> None:
        self._inbox.put(link)

    def ask(self, inbound: Inbound) -> None:
        self._inbox.put(inbound)

    def wait_published(self, version: int, timeout: float) -> bool:
        """Until the set of ``version`` (or a newer one) was handed to the broker."""
        with self._lock:
            return self._lock.wait_for(lambda: self.published_version >= version, timeout)

    # ---- the thread ----------------------------------------------------------------------

    def _main(self) -> None:
        storage: Storage | None = None
        attempt = 0
        due = True  # publish at start, whatever the counter says
        try:
            while not self._stop.is_set():
                if storage is None:
                    try:
                        storage = open_storage(self.config.db)
                        attempt = 0
                    except StorageError as exc:
                        self._warn("open", "quality: cannot open the database: %s", exc)
                        self._stop.wait(backoff_delay(attempt, 0.2, 5.0))
                        attempt += 1
                        continue
                try:
                    due = self._round(storage, due)
                except StorageError as exc:
                    self._warn("db", "quality: database error, reopening: %s", exc)
                    with contextlib.suppress(Exception):
                        storage.close()
                    storage = None
                except Exception:  # a bug: one bad question must not stop the gate's answers
                    log.exception("quality thread: unexpected error")
                    self._stop.wait(POLL)
        finally:
            if storage is not None:
                with contextlib.suppress(Exception):
                    storage.close()

    def _round(self, storage: Storage, due: bool) -> bool:
        """One wait for work (at most ``POLL``), then the work; returns whether the set is
        still to be published."""
        if not self._loaded and self._engine is not None:
            self._states = alerts.latest(storage, self._engine)
            self._unsent = set(self._states)
            self._loaded = True
        items: list[Inbound | Link | _Rows | None] = []
        with contextlib.suppress(queue.Empty):
            items.append(self._inbox.get(timeout=POLL))
            while True:
                items.append(self._inbox.get_nowait())
        for item in items:
            if isinstance(item, Link):
                due = True
                self._unsent = set(self._states)
            elif isinstance(item, Inbound):
                self._answer(storage, item)
            elif isinstance(item, _Rows):
                self._evaluate(storage, item)
        if self._stop.is_set():
            return due
        if self._unsent:
            self._publish_alerts()
        current = blocks.version(storage)
        if due or current != self.published_version:
            return not self._publish(storage)
        return False

    def _publish(self, storage: Storage) -> bool:
        link = self._current()
        if link is None or not link.usable:
            return False
        payload = blocks.blocked_set(storage)
        data = json.dumps(payload, separators=(",", ":")).encode()
        if not link.publish(blocked_topic(self.config), data, retain=True):
            return False
        with self._lock:
            self.counters["blocked_published"] += 1
            self.published_version = int(payload["version"])
            self._lock.notify_all()
        log.info(
            "blocked set version %d published: %d lot(s), %d serial(s), %d product(s)",
            payload["version"],
            len(payload["lots"]),
            len(payload["serials"]),
            len(payload["products"]),
        )
        return True

    def _evaluate(self, storage: Storage, rows: _Rows) -> None:
        assert self._engine is not None
        assert self._rules is not None
        transitions: list[Transition] = []
        for row in rows:
            part = part_of(row)
            if part is not None:
                transitions.extend(self._engine.feed(part))
        if not transitions:
            return
        alerts.record(storage, transitions)  # first: the workbench shows it whatever follows
        with self._lock:
            self.counters["alerts"] += len(transitions)
        for t in transitions:
            payload = t.payload()
            self._states[t.rule.id] = payload
            self._unsent.add(t.rule.id)
            url = t.rule.webhook or self._rules.webhook
            if url is not None:
                self._webhooks.post(url, payload)
            log.log(
                logging.WARNING if t.state == "firing" else logging.INFO,
                "alert %s %s: %s",
                t.rule.id,
                t.state,
                t.message,
            )

    def _publish_alerts(self) -> None:
        link = self._current()
        if link is None or not link.usable:
            return
        for rule in sorted(self._unsent):
            data = json.dumps(self._states[rule], separators=(",", ":")).encode()
            if not link.publish(alert_topic(self.config, rule), data, retain=True):
                return
            self._unsent.discard(rule)
            with self._lock:
                self.counters["alerts_published"] += 1
                self._lock.notify_all()

    def _answer(self, storage: Storage, inbound: Inbound) -> None:
        reply = answer(storage, inbound.topic, inbound.payload, self.config.topic_prefix)
        data = json.dumps(reply, separators=(",", ":")).encode()
        # Counted before it goes out, so whoever has the answer sees it counted.
        with self._lock:
            self.counters["route_errors" if "error" in reply else "route_answers"] += 1
            self._lock.notify_all()
        # On the link the question came from: a later one is as good, a dead one drops it and
        # the agent's timeout decides.
        sent = inbound.link.publish(answer_topic(inbound.topic), data, retain=False)
        if "error" in reply:
            self._warn("ask", "malformed route question on %s: %s", inbound.topic, reply["error"])
        elif not sent:
            log.debug("route answer on %s not sent: connection gone", inbound.topic)

    def _warn(self, kind: str, text: str, *args: object) -> None:
        quiet = self._log(kind)
        if quiet is not None:
            log.warning(text + (f" (+{quiet} more not logged)" if quiet else ""), *args)
