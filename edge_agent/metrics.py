"""The agent's Prometheus endpoint: GET /metrics, built at scrape time from the live state.

Served by ``asyncio.start_server`` in the agent's event loop, not by prometheus_client's
thread server: every number read here (device status, binder contexts, journal gauges, sync
status, station counters) is owned by the loop, so a scrape reads it without locks and never
sees half an update. Nothing is counted for metrics on the hot path beyond what the agent
counts anyway; the read latency histogram is a list of bucket counts in each device's status,
turned into a histogram here. The one question only the journal can answer (the age of its
oldest row) goes through the journal's own thread, bounded by a timeout.

Every family is named in docs/metrics.md (a test checks it against a real scrape).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from drivers.base import PolledDriver
from drivers.state import READ_BUCKETS
from kernel.errors import BufferError_, StartupError
from kernel.model import DeviceState
from kernel.net import format_listen

if TYPE_CHECKING:
    from edge_agent.config.models import MetricsConfig
    from edge_agent.daemon import Agent

log = logging.getLogger(__name__)

PATH = "/metrics"
REQUEST_TIMEOUT = 10.0
"""Seconds a client gets to send its request head (a stuck client must not hold a task)."""
MAX_REQUEST_HEAD = 16 * 1024
JOURNAL_TIMEOUT = 2.0
"""Seconds a scrape waits for the journal's thread for the oldest row's age; a journal stuck in
a commit leaves the gauge out of that scrape rather than hanging the scraper."""
STATION_INFO_KEYS = ("serial", "lot", "work_order", "product")
"""Context keys shown by ``edge_agent_station_info`` (the operator's name is left out)."""
DISK_STATES = ("ok", "low", "critical")
TEXT = "text/plain; charset=utf-8"


def _version() -> str:
    try:
        return metadata.version("edge-agent")
    except metadata.PackageNotFoundError:
        return "unknown"


def _label(value: object) -> str:
    return "" if value is None else str(value)


def _iso_seconds(text: object) -> float | None:
    """Unix seconds of a record's ISO 8601 ``ts``, or None if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


class AgentCollector(Collector):
    """Builds every ``edge_agent_*`` family from one agent's state, when collected.

    ``oldest_record_ts`` is set by the server before each collection (the journal is asked
    asynchronously; ``collect`` itself must stay synchronous and in the loop)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._version = _version()
        self.oldest_record_ts: float | None = None
        self.journal_answered = False

    def collect(self) -> Iterator[Metric]:
        agent_id = self._agent.cfg.agent.id
        yield from self._process(agent_id)
        yield from self._devices(agent_id)
        yield from self._journal(agent_id)
        yield from self._uplink(agent_id)
        yield from self._stations(agent_id)
        yield from self._alarms(agent_id)
        yield from self._gate(agent_id)

    def _process(self, agent_id: str) -> Iterable[Metric]:
        a = self._agent
        ident = a.cfg.agent
        info = InfoMetricFamily(
            "edge_agent", "The agent's identity and version.", labels=("agent",)
        )
        info.add_metric(
            [agent_id], {"site": ident.site, "line": ident.line, "version": self._version}
        )
        started = GaugeMetricFamily(
            "edge_agent_start_time_seconds",
            "When the agent started (unix time).",
            labels=("agent",),
        )
        started.add_metric([agent_id], a.stats.started)
        observations = CounterMetricFamily(
            "edge_agent_observations",
            "Values handed to the binder by every device.",
            labels=("agent",),
        )
        observations.add_metric([agent_id], a.stats.observations)
        records = CounterMetricFamily(
            "edge_agent_records",
            "Records queued for the journal (every kind).",
            labels=("agent",),
        )
        records.add_metric([agent_id], a.stats.records)
        return (info, started, observations, records)

    def _devices(self, agent_id: str) -> Iterable[Metric]:
        labels = ("agent", "device")
        up = GaugeMetricFamily(
            "edge_agent_device_up",
            "1 while the device answers (up or degraded), else 0.",
            labels=labels,
        )
        state = GaugeMetricFamily(
            "edge_agent_device_state",
            "1 for the device's current state, 0 for the others.",
            labels=(*labels, "state"),
        )
        reads = CounterMetricFamily(
            "edge_agent_device_reads",
            "Reads by result: ok (a poll answered, or a message from a streaming device), "
            "failed (a read or connection attempt that failed as a whole).",
            labels=(*labels, "result"),
        )
        reconnects = CounterMetricFamily(
            "edge_agent_device_reconnects",
            "Times the device's connection was closed and retried after a failure.",
            labels=labels,
        )
        dropped = CounterMetricFamily(
            "edge_agent_device_dropped_frames",
            "Camera frames replaced by a newer one before they were decoded.",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "edge_agent_device_read_duration_seconds",
            "Time from sending a poll to its answer (polled devices).",
            labels=labels,
        )
        bounds = [f"{b:g}" for b in READ_BUCKETS] + ["+Inf"]
        for driver in self._agent.drivers:
            s = driver.status
            key = [agent_id, driver.name]
            up.add_metric(key, float(s.state in (DeviceState.UP, DeviceState.DEGRADED)))
            for st in DeviceState:
                state.add_metric([*key, st.value], float(s.state is st))
            reads.add_metric([*key, "ok"], s.reads_ok)
            reads.add_metric([*key, "failed"], s.reads_failed)
            reconnects.add_metric(key, s.reconnects)
            dropped.add_metric(key, s.dropped)
            if isinstance(driver, PolledDriver):
                cumulative, total = [], 0
                for bound, n in zip(bounds, s.read_counts, strict=True):
                    total += n
                    cumulative.append((bound, float(total)))
                latency.add_metric(key, cumulative, s.read_seconds)
        return (up, state, reads, reconnects, dropped, latency)

    def _journal(self, agent_id: str) -> Iterable[Metric]:
        b = self._agent.buffer.stats()
        key = [agent_id]
        out: list[Metric] = []

        def gauge(name: str, doc: str, value: float) -> None:
            g = GaugeMetricFamily(name, doc, labels=("agent",))
            g.add_metric(key, value)
            out.append(g)

        def counter(name: str, doc: str, value: float) -> None:
            c = CounterMetricFamily(name, doc, labels=("agent",))
            c.add_metric(key, value)
            out.append(c)

        gauge(
            "edge_agent_journal_depth_records",
            "Committed records not yet confirmed delivered.",
            b["depth"],
        )
        gauge(
            "edge_agent_journal_queued_records",
            "Records appended, waiting for the next commit.",
            b["queued"],
        )
        gauge(
            "edge_agent_journal_committed_seq",
            "Highest seq committed to the journal.",
            b["committed_seq"],
        )
        counter("edge_agent_journal_committed_records", "Records committed.", b["committed_total"])
        if self.journal_answered:
            age = 0.0
            if self.oldest_record_ts is not None:
                age = max(0.0, time.time() - self.oldest_record_ts)
            gauge(
                "edge_agent_journal_oldest_record_age_seconds",
                "Age of the oldest record "
                "not yet confirmed delivered (0 when the journal is empty).",
                age,
            )
        gauge(
            "edge_agent_journal_telemetry_bytes",
            "Bytes of telemetry rows in the journal (what gives way first when storage runs low).",
            b["telemetry_bytes"],
        )
        counter(
            "edge_agent_journal_evicted_records",
            "Telemetry records evicted, oldest first, to keep the journal within its bounds.",
            b["evicted_rows"],
        )
        counter(
            "edge_agent_journal_evicted_bytes", "Bytes of evicted telemetry.", b["evicted_bytes"]
        )
        counter(
            "edge_agent_journal_refused_readings",
            "Readings refused at append while "
            "storage was critical or full (trace records are never refused).",
            b["dropped_readings"],
        )
        gauge(
            "edge_agent_journal_full",
            "1 while a trace record waits for room.",
            float(bool(b["full"])),
        )
        if b["disk_free_bytes"] is not None:
            gauge(
                "edge_agent_journal_disk_free_bytes",
                "Free bytes on the journal's file system, as last checked.",
                b["disk_free_bytes"],
            )
        disk = GaugeMetricFamily(
            "edge_agent_journal_disk_state",
            "1 for the journal disk's state (ok, low, critical), 0 for the others.",
            labels=("agent", "state"),
        )
        for st in DISK_STATES:
            disk.add_metric([agent_id, st], float(b["disk_state"] == st))
        out.append(disk)
        return out

    def _uplink(self, agent_id: str) -> Iterable[Metric]:
        a = self._agent
        s = a.sync.status
        key = [agent_id]
        # What the journal may drop: the store's watermark (confirm: store) or the highest
        # seq the broker acknowledged (confirm: puback).
        confirmed = s.store_watermark if a.cfg.mqtt.confirm == "store" else s.last_confirmed_seq
        out: list[Metric] = []
        for name, doc, value in (
            ("edge_agent_uplink_connected", "1 while connected to the broker.", float(s.connected)),
            (
                "edge_agent_uplink_confirmed_seq",
                "Confirmed watermark: the store's (confirm: "
                "store) or the highest seq the broker acknowledged (confirm: puback).",
                confirmed,
            ),
            (
                "edge_agent_uplink_lag_records",
                "Committed seq minus the confirmed watermark.",
                max(0, a.buffer.committed_seq - confirmed),
            ),
            (
                "edge_agent_uplink_inflight_messages",
                "Messages waiting for their PUBACK.",
                s.inflight,
            ),
        ):
            g = GaugeMetricFamily(name, doc, labels=("agent",))
            g.add_metric(key, value)
            out.append(g)
        for name, doc, value in (
            (
                "edge_agent_uplink_published_messages",
                "Messages handed to the broker connection.",
                s.published_messages,
            ),
            (
                "edge_agent_uplink_confirmed_records",
                "Records confirmed and deleted from the journal.",
                s.confirmed_records,
            ),
            (
                "edge_agent_uplink_resends",
                "Times the journal was sent again from the store's "
                "watermark for lack of progress (confirm: store).",
                s.resends,
            ),
            (
                "edge_agent_uplink_reconnects",
                "Connection attempts that failed or connections that were lost.",
                s.reconnects,
            ),
            (
                "edge_agent_uplink_refused_messages",
                "Messages the broker refused with a reason code (MQTT 5).",
                s.refused_messages,
            ),
        ):
            c = CounterMetricFamily(name, doc, labels=("agent",))
            c.add_metric(key, value)
            out.append(c)
        return out

    def _stations(self, agent_id: str) -> Iterable[Metric]:
        a = self._agent
        labels = ("agent", "station")
        counters = {
            field: CounterMetricFamily(f"edge_agent_station_{name}", doc, labels=labels)
            for field, name, doc in (
                ("parts", "parts", "Part records."),
                ("nok", "nok_parts", "Part records with result nok."),
                (
                    "unknown",
                    "unknown_result_parts",
                    "Part records whose result could not be told (result null).",
                ),
                ("gaps", "gaps", "Gap records: the PLC's part counter jumped."),
                (
                    "missed_parts",
                    "missed_parts",
                    "Parts the counter says were made without a part record.",
                ),
                ("scans", "scans", "Scan records."),
                ("rejected_scans", "rejected_scans", "Scan records with status rejected."),
                ("readings", "readings_records", "Telemetry records (one per device response)."),
                ("unobserved", "unobserved", "Windows in which a device's changes may be missing."),
            )
        }
        last_part = GaugeMetricFamily(
            "edge_agent_station_last_part_timestamp_seconds",
            "When the station's last part record was triggered (unix time).",
            labels=labels,
        )
        info = InfoMetricFamily(
            "edge_agent_station",
            "The station's current context (1; the values are labels).",
            labels=labels,
        )
        names = [st.name for st in a.cfg.stations]
        names += [n for n in a.stats.stations if n not in names]
        contexts = a.binder.contexts
        for name in names:
            st = a.stats.stations.get(name)
            key = [agent_id, name]
            for field, family in counters.items():
                family.add_metric(key, getattr(st, field) if st is not None else 0)
            ts = _iso_seconds(st.last_part.ts) if st is not None and st.last_part else None
            if ts is not None:
                last_part.add_metric(key, ts)
            ctx = contexts.get(name, {})
            info.add_metric(key, {k: _label(ctx.get(k)) for k in STATION_INFO_KEYS})
        return (*counters.values(), last_part, info)

    def _alarms(self, agent_id: str) -> Iterable[Metric]:
        alarm = GaugeMetricFamily(
            "edge_agent_alarm",
            "1 per active alarm (docs/metrics.md lists the codes).",
            labels=("agent", "code"),
        )
        for a in self._agent.alarms.active():
            alarm.add_metric([agent_id, a.code], 1.0)
        return (alarm,)


    def _gate(self, agent_id: str) -> Iterable[Metric]:
        """The station gate's blocked set and route questions; only with a gate configured."""
        agent = self._agent
        gate = agent.binder.gate
        if not gate.configs:
            return ()
        held, keeper, asker = gate.blocked, agent.keeper, agent.asker
        version = GaugeMetricFamily(
            "edge_agent_gate_blocked_version",
            "Version of the blocked set the station gates decide with (0: none received yet).",
            labels=("agent",),
        )
        version.add_metric([agent_id], float(held.version))
        keys = GaugeMetricFamily(
            "edge_agent_gate_blocked_keys",
            "Keys in the blocked set held, by kind.",
            labels=("agent", "kind"),
        )
        for kind, listed in (
            ("lot", held.lots),
            ("serial", held.serials),
            ("product", held.products),
        ):
            keys.add_metric([agent_id, kind], float(len(listed)))
        ignored = CounterMetricFamily(
            "edge_agent_gate_sets_ignored",
            "Blocked-set messages ignored: garbled (did not parse) or older than the one held.",
            labels=("agent", "reason"),
        )
        ignored.add_metric([agent_id, "garbled"], float(keeper.garbled))
        ignored.add_metric([agent_id, "older"], float(keeper.older))
        questions = CounterMetricFamily(
            "edge_agent_gate_route_questions",
            "Route questions asked of the trace store, by outcome (unanswered: the station's "
            "on_unreachable policy decided).",
            labels=("agent", "outcome"),
        )
        questions.add_metric([agent_id, "answered"], float(asker.answered))
        questions.add_metric([agent_id, "unanswered"], float(asker.unanswered))
        return (version, keys, ignored, questions)


class MetricsServer:
    """GET /metrics for one agent, served in its event loop until stopped."""

    def __init__(self, agent: Agent, config: MetricsConfig) -> None:
        self.host, self.port = config.address()
        self.listen = format_listen(self.host, self.port)
        self._agent = agent
        self._collector = AgentCollector(agent)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)
        # CPU, memory and file descriptors of this process (Linux /proc): the agent's own cost.
        ProcessCollector(registry=self._registry)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self.scrapes = 0

    async def start(self) -> None:
        """Listen; raises StartupError when the address cannot be used (port in use)."""
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=MAX_REQUEST_HEAD
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"metrics: {self.listen} is already in use (another agent? set metrics.listen)"
                ) from None
            reason = exc.strerror or str(exc)
            raise StartupError(f"metrics: cannot listen on {self.listen}: {reason}") from None
        log.info("metrics at http://%s%s", self.listen, PATH)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        await server.wait_closed()

    async def render(self) -> bytes:
        """The exposition text of this instant."""
        await self._ask_journal()
        return generate_latest(self._registry)

    async def _ask_journal(self) -> None:
        """The oldest row's ``ts``: a cheap indexed read (the lowest seq) on the journal's
        thread; skipped while nothing waits."""
        c = self._collector
        buffer = self._agent.buffer
        c.journal_answered, c.oldest_record_ts = True, None
        if buffer.depth <= 0:
            return
        try:
            async with asyncio.timeout(JOURNAL_TIMEOUT):
                rows = await buffer.read_batch(0, 1)
        except (TimeoutError, BufferError_):
            c.journal_answered = False
            return
        if rows:
            c.oldest_record_ts = _iso_seconds(json.loads(rows[0].body).get("ts"))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            request = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            method, target = (request[0], request[1]) if len(request) >= 2 else ("", "")
            status, body, ctype = await self._answer(method, target)
            out = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(out if method == "HEAD" else out + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that sent no complete request gets no answer
        except ConnectionError:
            pass  # the scraper left
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(self, method: str, target: str) -> tuple[str, bytes, str]:
        """(status line, body, content type) for one request."""
        if target.split("?", 1)[0] != PATH:
            return "404 Not Found", b"not found: the metrics are at /metrics\n", TEXT
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"GET /metrics\n", TEXT
        try:
            body = await self.render()
        except Exception:  # a bug in a collector must not end the endpoint, nor the agent
            log.exception("metrics scrape failed")
            return "500 Internal Server Error", b"scrape failed; see the agent's log\n", TEXT
        self.scrapes += 1
        return "200 OK", body, CONTENT_TYPE_PLAIN_0_0_4
