"""The trace store's Prometheus endpoint (``trace-store --metrics HOST:PORT``).

The store runs in threads (paho's, the writer, the link keeper), so the endpoint is
prometheus_client's own HTTP server thread; the collector reads the store's counters through
``stats()`` and ``agent_stats()``, which take the store's lock for a consistent copy.
Families are named in docs/metrics.md.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kernel.errors import StartupError
from kernel.net import format_listen, parse_listen
from trace_store.envelope import Reason

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from trace_store.service import AgentView, TraceStore

log = logging.getLogger(__name__)

COUNTERS = (
    ("messages", "trace_store_messages", "MQTT messages handled and acknowledged."),
    ("accepted", "trace_store_messages_accepted", "Messages whose records were taken."),
    ("inserted", "trace_store_records_inserted", "Records written to the database."),
    (
        "duplicates",
        "trace_store_records_duplicate",
        "Records that were stored already (resends, redeliveries).",
    ),
    ("batches", "trace_store_batches", "Database transactions."),
    ("confirmations", "trace_store_confirmations", "Watermarks acknowledged by the broker."),
    ("storage_failures", "trace_store_storage_failures", "Times the database became unusable."),
    ("connections", "trace_store_broker_connections", "Successful broker connections."),
    (
        "disconnects",
        "trace_store_broker_disconnects",
        "Failed connection attempts and lost connections.",
    ),
    ("statuses", "trace_store_agent_statuses", "Agent status messages stored (Lines page)."),
    (
        "statuses_ignored",
        "trace_store_agent_statuses_ignored",
        "Messages on an agent status topic that were not a status of an allowed agent.",
    ),
    (
        "held_dropped",
        "trace_store_held_dropped_messages",
        "Messages not held for lack of room (--max-held-records); their agents resend them.",
    ),
)


class StoreCollector(Collector):
    """Every ``trace_store_*`` family of one store, built when collected."""

    def __init__(self, store: TraceStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        store = self._store
        stats = store.stats()
        agents = store.agent_stats()
        connected = GaugeMetricFamily(
            "trace_store_broker_connected", "1 while connected and subscribed to the broker."
        )
        connected.add_metric([], float(store.ready))
        yield connected
        for key, name, doc in COUNTERS:
            yield CounterMetricFamily(name, doc, value=stats[key])
        received = CounterMetricFamily(
            "trace_store_records_received",
            "Records of accepted messages as they arrive (duplicates included), by kind.",
            labels=("kind",),
        )
        for kind, n in sorted(stats["by_kind"].items()):
            received.add_metric([kind], n)
        yield received
        rejected = CounterMetricFamily(
            "trace_store_messages_rejected",
            "Messages set aside in the rejected table, by reason.",
            labels=("reason",),
        )
        by_reason = stats["by_reason"]
        # Every reason from the start, so a rate() over one that never happened yet is 0.
        for reason in [r.value for r in Reason] + sorted(set(by_reason) - set(Reason)):
            rejected.add_metric([reason], by_reason.get(reason, 0))
        yield rejected
        held = GaugeMetricFamily(
            "trace_store_held_records",
            "Records held in memory above a gap, waiting for the records below it.",
        )
        held.add_metric([], stats["held_records"])
        yield held
        yield from self._agents(agents)

    def _agents(self, agents: dict[str, AgentView]) -> Iterator[Metric]:
        labels = ("agent",)
        received = GaugeMetricFamily(
            "trace_store_agent_received_seq",
            "Highest seq received from the agent (its stored watermark until it sends).",
            labels=labels,
        )
        watermark = GaugeMetricFamily(
            "trace_store_agent_watermark_seq",
            "The agent's watermark committed in the database: every seq up to it is stored.",
            labels=labels,
        )
        confirmed = GaugeMetricFamily(
            "trace_store_agent_confirmed_seq",
            "The agent's watermark as the broker holds it (retained confirmation).",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "trace_store_agent_lag_records",
            "Received seq minus watermark: records in, but not confirmable yet (a gap below).",
            labels=labels,
        )
        held = GaugeMetricFamily(
            "trace_store_agent_held_records",
            "Records of the agent held above a gap.",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "trace_store_agent_last_record_age_seconds",
            "Seconds since the agent's last accepted message (agents heard from since start).",
            labels=labels,
        )
        now = time.time()
        for agent, v in sorted(agents.items()):
            key = [agent]
            received.add_metric(key, v.received_seq)
            watermark.add_metric(key, v.watermark)
            confirmed.add_metric(key, v.confirmed)
            lag.add_metric(key, max(0, v.received_seq - v.watermark))
            held.add_metric(key, v.held_records)
            if v.last_arrival is not None:
                age.add_metric(key, max(0.0, now - v.last_arrival))
        yield from (received, watermark, confirmed, lag, held, age)


class MetricsServer:
    """The store's /metrics in a thread of its own, from ``start`` until ``stop``."""

    def __init__(self, store: TraceStore, listen: str) -> None:
        self.host, self.port = parse_listen(listen)  # ValueError: the option is wrong
        self.listen = format_listen(self.host, self.port)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(store))
        ProcessCollector(registry=self.registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen; raises StartupError when the address cannot be used (port in use)."""
        try:
            self._server, self._thread = start_http_server(
                self.port, self.host, registry=self.registry
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"metrics: {self.listen} is already in use (another trace store? "
                    "choose another --metrics)"
                ) from None
            reason = exc.strerror or str(exc)
            raise StartupError(f"metrics: cannot listen on {self.listen}: {reason}") from None
        log.info("metrics at http://%s/metrics", self.listen)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()
