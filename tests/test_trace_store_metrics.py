"""The trace store's Prometheus endpoint against a real Mosquitto: ingest by kind, rejections by
reason, held records and per-agent lag; then a real agent (confirm: store) and the store
scraped side by side, which is also what the Grafana dashboard is checked against."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import agent_model
from edge_agent.daemon import Agent
from kernel.errors import StartupError
from simulators.broker import free_port
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config
from simulators.station import StationModel
from tests.metrics_helpers import CYCLE, DOCS, scrape, scrape_now
from tests.mqtt_helpers import Mosquitto
from tests.store_helpers import (
    AGENT,
    WAIT,
    Publisher,
    body,
    envelope,
    readings,
    topic,
    wait_messages,
    wait_w,
)
from tests.waiting import bounded, wait_until
from trace_store import cli as store_cli
from trace_store.config import StoreConfig
from trace_store.envelope import Reason
from trace_store.metrics import MetricsServer
from trace_store.service import TraceStore

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "packaging" / "grafana" / "edge-agent-line.json"
METRIC = re.compile(r"\b(?:edge_agent|trace_store|process)_[a-z0-9_]+\b")


@pytest.fixture
def store_with_metrics(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[tuple[TraceStore, int]]:
    """A store on ``mosquitto`` with its endpoint on a free port; both stopped afterwards."""
    port = free_port()
    store = TraceStore(
        StoreConfig(
            host="127.0.0.1",
            port=mosquitto.port,
            db=str(tmp_path / "trace.db"),
            store_id="metrics-test",
            confirm_interval=0.05,
        )
    )
    metrics = MetricsServer(store, f"127.0.0.1:{port}")
    metrics.start()
    try:
        with store:
            assert store.wait_ready(WAIT), "trace store did not subscribe"
            yield store, port
    finally:
        metrics.stop()


def test_ingest_rejections_held_and_lag(
    store_with_metrics: tuple[TraceStore, int], mosquitto: Mosquitto
) -> None:
    """Records by kind, a rejected message under its reason, and an agent whose messages
    arrive with a gap: lag and held records until the gap closes."""
    store, port = store_with_metrics
    before = scrape_now(port)
    assert before.value("trace_store_broker_connected") == 1
    rejected = {
        s.labels["reason"]: s.value for s in before.samples("trace_store_messages_rejected_total")
    }
    assert rejected == dict.fromkeys([r.value for r in Reason], 0.0)  # every reason, from 0
    assert before.samples("trace_store_agent_lag_records") == []

    pub = Publisher(mosquitto.port)
    try:
        held_mode = {"confirm": "store", "order": "in_order"}
        pub.publish(topic(), envelope(readings(range(1, 6)), rng=(0, 5, 5), **held_mode))
        part = body(6, kind="part", serial="S-1", ctx={"serial": "S-1", "lot": "L1"})
        pub.publish(topic(), envelope([part], rng=(5, 6, 1), **held_mode))
        wait_w(store, 6)
        # seqs 7..10 are still on their way: 11..14 are held above the gap.
        pub.publish(topic(), envelope(readings(range(11, 15)), rng=(10, 14, 4), **held_mode))
        pub.publish(topic(), b"{not json")
        wait_messages(store, 4)

        gap = scrape_now(port)
        assert gap.value("trace_store_records_received_total", kind="readings") == 9
        assert gap.value("trace_store_records_received_total", kind="part") == 1
        assert gap.value("trace_store_messages_rejected_total", reason="not_json") == 1
        assert gap.value("trace_store_messages_rejected_total", reason="oversized") == 0
        assert gap.value("trace_store_messages_total") == 4
        assert gap.value("trace_store_messages_accepted_total") == 3
        assert gap.value("trace_store_agent_received_seq", agent=AGENT) == 14
        assert gap.value("trace_store_agent_watermark_seq", agent=AGENT) == 6
        assert gap.value("trace_store_agent_lag_records", agent=AGENT) == 8
        assert gap.value("trace_store_agent_held_records", agent=AGENT) == 4
        assert gap.value("trace_store_held_records") == 4
        assert gap.value("trace_store_records_inserted_total") == 6
        assert 0 <= gap.value("trace_store_agent_last_record_age_seconds", agent=AGENT) < WAIT

        pub.publish(topic(), envelope(readings(range(7, 11)), rng=(6, 10, 4), **held_mode))
        wait_w(store, 14)
        assert store.wait_watermark(AGENT, 14, WAIT, published=True)
        closed = scrape_now(port)
        assert closed.value("trace_store_agent_lag_records", agent=AGENT) == 0
        assert closed.value("trace_store_agent_held_records", agent=AGENT) == 0
        assert closed.value("trace_store_held_records") == 0
        assert closed.value("trace_store_agent_watermark_seq", agent=AGENT) == 14
        assert closed.value("trace_store_agent_confirmed_seq", agent=AGENT) == 14
        assert closed.value("trace_store_records_received_total", kind="readings") == 13
        assert closed.value("trace_store_records_inserted_total") == 14
        assert closed.value("trace_store_confirmations_total") >= 1
    finally:
        pub.close()


def test_a_taken_port_ends_the_store_start_with_one_line(
    mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        store = TraceStore(StoreConfig(host="127.0.0.1", port=mosquitto.port, db=":memory:"))
        with pytest.raises(StartupError) as caught:
            MetricsServer(store, f"127.0.0.1:{port}").start()
        message = (
            f"metrics: 127.0.0.1:{port} is already in use (another trace store? choose "
            "another --metrics)"
        )
        assert str(caught.value) == message
        code, out, err = run_store(
            capsys,
            "--broker",
            f"127.0.0.1:{mosquitto.port}",
            "--db",
            str(tmp_path / "trace.db"),
            "--metrics",
            f"127.0.0.1:{port}",
        )
    assert (code, out, err) == (
        store_cli.EXIT_STARTUP,
        "",
        f"trace-store: cannot start: {message}\n",
    )
    assert not (tmp_path / "trace.db").exists()  # refused before the database was opened
    code, out, err = run_store(capsys, "--metrics", "9465")
    assert (code, out) == (store_cli.EXIT_USAGE, "")
    assert err == (
        "trace-store: --metrics: expected HOST:PORT (e.g. 127.0.0.1:9464, [::1]:9464 or "
        "0.0.0.0:9464), found '9465'\n"
    )


def run_store(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``edge-agent trace-store ...`` in-process, as tests/test_trace_store_cli.py runs it."""
    parser = argparse.ArgumentParser(prog="edge-agent")
    store_cli.register(parser.add_subparsers(dest="command", required=True))
    code = store_cli.dispatch(parser.parse_args(["trace-store", *argv]))
    out, err = capsys.readouterr()
    return code, out, err


def dashboard_metrics() -> set[str]:
    """Every metric name the dashboard's queries and variables use."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    texts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    texts.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    assert len(texts) > 20
    return {m for text in texts for m in METRIC.findall(text)}


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"agent", "station"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        for target in panel["targets"]:
            names = METRIC.findall(target["expr"])
            assert names, target
            if any(n.startswith("edge_agent_") for n in names):
                assert '$agent"' in target["expr"], target


async def test_an_agent_and_its_store_side_by_side(
    store_with_metrics: tuple[TraceStore, int], mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A real agent (confirm: store) on the Modbus simulator: the store's per-agent view and
    the agent's uplink view of one watermark; every family is documented, and every metric the
    Grafana dashboard queries exists in these two scrapes."""
    store, store_port = store_with_metrics
    agent_port = free_port()
    async with ModbusStationServer([StationModel(unit_id=1, cycle_time=CYCLE)]) as plc:
        raw = demo_config(
            modbus_port=plc.port,
            mqtt_port=mosquitto.port,
            buffer_path=str(tmp_path / "buffer.db"),
            agent_id="side-pc1",
            poll_interval=0.02,
        )
        raw["mqtt"]["confirm"] = "store"
        raw["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{agent_port}"}
        agent = Agent(agent_model().model_validate(raw))
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await bounded(agent.started.wait(), 30, "the agent to start")
            await wait_until(
                lambda: agent.stats.parts >= 2 and agent.sync.status.store_watermark >= 50,
                30,
                "2 parts confirmed by the store",
            )
            on_agent = await scrape(agent_port)
            on_store = await asyncio.to_thread(scrape_now, store_port)
        finally:
            stop.set()
            await task
    mark = on_agent.value("edge_agent_uplink_confirmed_seq")
    assert mark >= 50
    assert on_store.value("trace_store_agent_watermark_seq", agent="side-pc1") >= mark
    assert store.watermark("side-pc1") >= on_store.value(
        "trace_store_agent_watermark_seq", agent="side-pc1"
    )
    assert on_store.value("trace_store_agent_received_seq", agent="side-pc1") >= mark
    assert on_store.value("trace_store_agent_lag_records", agent="side-pc1") >= 0
    assert on_store.value("trace_store_records_received_total", kind="part") >= 1
    assert on_store.value("trace_store_records_received_total", kind="readings") >= 1

    documented = DOCS.read_text(encoding="utf-8")
    missing = sorted(
        name
        for name in on_store.documented_names()
        if not re.search(rf"`{re.escape(name)}`", documented)
    )
    assert missing == [], f"not in docs/metrics.md: {missing}"

    scraped = {s.name for m in (on_agent, on_store) for f in m.families.values() for s in f.samples}
    scraped |= {name for m in (on_agent, on_store) for name in m.families}
    unknown = sorted(dashboard_metrics() - scraped)
    assert unknown == [], f"the dashboard queries metrics no endpoint serves: {unknown}"
