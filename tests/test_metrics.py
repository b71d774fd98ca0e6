"""The agent's Prometheus endpoint: a real agent polling the Modbus station simulator, scraped
over HTTP and read with prometheus_client's own exposition parser; values checked against the
agent's state, a killed PLC, a journal with nowhere to send, a port already taken."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.state import READ_BUCKETS
from edge_agent.config import agent_model, load_config
from edge_agent.daemon import Agent
from kernel.errors import ConfigError, StartupError
from kernel.net import parse_listen
from simulators.broker import free_port
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config, station_name
from simulators.station import StationModel
from tests.metrics_helpers import CYCLE, DOCS, get, scrape
from tests.modbus_helpers import no_leaks, wait_until
from tests.mqtt_helpers import Mosquitto
from tests.waiting import bounded

AGENT = "metrics-pc1"
STATION = station_name(0)


# ---- an agent ----------------------------------------------------------------------------------


def agent_config(tmp: Path, plc_port: int, mqtt_port: int, metrics_port: int) -> dict[str, Any]:
    raw = demo_config(
        modbus_port=plc_port,
        mqtt_port=mqtt_port,
        buffer_path=str(tmp / "buffer.db"),
        agent_id=AGENT,
        poll_interval=0.02,
    )
    raw["metrics"] = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
    return raw


@contextlib.asynccontextmanager
async def running(raw: dict[str, Any]) -> AsyncIterator[Agent]:
    agent = Agent(agent_model().model_validate(raw))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="agent")
    try:
        await asyncio.wait_for(agent.started.wait(), 30)
        yield agent
    finally:
        stop.set()
        await task


# ---- the tests ---------------------------------------------------------------------------------


async def test_a_scrape_tells_what_the_agent_knows(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Live: every family parses, is documented, and the histogram is a histogram. Then the PLC
    is killed: the device shows down, failed reads rise, and with nothing moving any more
    the counters equal the agent's own, exactly."""
    port = free_port()
    sims = [StationModel(unit_id=1, serial_prefix="M-", cycle_time=CYCLE)]
    plc = ModbusStationServer(sims)
    await plc.start()
    try:
        raw = agent_config(tmp_path, plc.port, mosquitto.port, port)
        async with running(raw) as agent:
            stats = agent.stats
            await wait_until(
                lambda: stats.parts >= 3 and agent.sync.status.connected, 30, "3 parts, uplink"
            )
            live = await scrape(port)
            assert live.value("edge_agent_device_up", agent=AGENT, device="press1") == 1
            assert live.value("edge_agent_device_state", device="press1", state="up") == 1
            assert live.value("edge_agent_device_state", device="press1", state="down") == 0
            assert live.value("edge_agent_uplink_connected", agent=AGENT) == 1
            assert live.value("edge_agent_info", agent=AGENT) == 1
            assert live.samples("edge_agent_info")[0].labels["line"] == "line1"
            assert live.value("edge_agent_station_parts_total", station=STATION) >= 3
            assert live.value("edge_agent_journal_disk_free_bytes") > 0
            assert live.value("process_resident_memory_bytes") > 0
            failed_live = live.value(
                "edge_agent_device_reads_total", device="press1", result="failed"
            )
            documented = DOCS.read_text(encoding="utf-8")
            missing = sorted(
                name
                for name in live.documented_names()
                if not re.search(rf"`{re.escape(name)}`", documented)
            )
            assert missing == [], f"not in docs/metrics.md: {missing}"

            await plc.stop()  # the PLC dies
            await wait_until(
                lambda: agent.drivers[0].status.reads_failed >= failed_live + 2,
                30,
                "two failed attempts",
            )
            await wait_until(lambda: agent.buffer.depth == 0, 30, "everything delivered")
            dead = await scrape(port)
            status = agent.drivers[0].status
            assert dead.value("edge_agent_device_up", device="press1") == 0
            assert dead.value("edge_agent_device_state", device="press1", state="down") == 1
            failed = dead.value("edge_agent_device_reads_total", device="press1", result="failed")
            assert failed > failed_live
            assert failed <= status.reads_failed
            assert dead.value("edge_agent_device_reconnects_total", device="press1") >= 2

            # Nothing moves now: the scrape equals the agent's counters exactly.
            st = stats.stations[STATION]
            assert dead.value("edge_agent_station_parts_total", station=STATION) == st.parts
            assert dead.value("edge_agent_station_nok_parts_total", station=STATION) == st.nok
            assert dead.value("edge_agent_station_scans_total", station=STATION) == st.scans
            assert dead.value("edge_agent_station_gaps_total", station=STATION) == st.gaps
            assert dead.value("edge_agent_records_total") == stats.records
            assert st.last_part is not None
            last_ts = datetime.fromisoformat(st.last_part.ts).timestamp()
            assert dead.value(
                "edge_agent_station_last_part_timestamp_seconds", station=STATION
            ) == pytest.approx(last_ts, abs=1e-6)

            serial = agent.binder.contexts[STATION]["serial"]
            assert isinstance(serial, str)
            assert serial.startswith("M-")
            (info,) = dead.samples("edge_agent_station_info")
            assert info.labels["station"] == STATION
            assert info.labels["serial"] == serial
            assert info.labels["lot"] == agent.binder.contexts[STATION]["lot"]
            assert info.value == 1

            # The read latency histogram: cumulative buckets, count = answered polls.
            buckets = [
                s
                for s in dead.samples("edge_agent_device_read_duration_seconds_bucket")
                if s.labels["device"] == "press1"
            ]
            bounds = [s.labels["le"] for s in buckets]
            assert bounds == [f"{b:g}" for b in READ_BUCKETS] + ["+Inf"]
            counts = [s.value for s in buckets]
            assert counts == sorted(counts), "buckets must be cumulative"
            ok = dead.value("edge_agent_device_reads_total", device="press1", result="ok")
            assert ok == status.reads_ok > 10
            assert counts[-1] == ok
            assert dead.value("edge_agent_device_read_duration_seconds_count") == ok
            total = dead.value("edge_agent_device_read_duration_seconds_sum")
            assert total == pytest.approx(status.read_seconds)
            assert 0 < total / ok < 1.0  # a local simulator answers within milliseconds

            # Delivered (confirm: puback): no lag, nothing old waiting.
            sync = agent.sync.status
            assert dead.value("edge_agent_uplink_confirmed_seq") == sync.last_confirmed_seq
            assert dead.value("edge_agent_uplink_lag_records") == (
                agent.buffer.committed_seq - sync.last_confirmed_seq
            )
            assert dead.value("edge_agent_journal_depth_records") == 0
            assert dead.value("edge_agent_journal_oldest_record_age_seconds") == 0
            assert dead.value("edge_agent_uplink_published_messages_total") > 0
    finally:
        await plc.stop()


async def test_a_journal_with_nowhere_to_send_ages_and_lags(tmp_path: Path) -> None:
    """No broker: every committed record is lag, and the oldest one's age is the age of the
    first record the agent wrote."""
    port = free_port()
    async with ModbusStationServer([StationModel(unit_id=1, cycle_time=CYCLE)]) as plc:
        raw = agent_config(tmp_path, plc.port, free_port(), port)
        async with running(raw) as agent:
            await wait_until(lambda: agent.buffer.depth >= 20, 30, "20 records journaled")
            first = (await agent.buffer.read_batch(0, 1))[0]
            m = await scrape(port)
            committed = agent.buffer.committed_seq
            assert m.value("edge_agent_uplink_connected") == 0
            assert m.value("edge_agent_uplink_confirmed_seq") == 0
            lag = m.value("edge_agent_uplink_lag_records")
            assert 20 <= lag <= committed
            assert m.value("edge_agent_uplink_reconnects_total") >= 1
            depth = m.value("edge_agent_journal_depth_records")
            assert 20 <= depth <= agent.buffer.depth
            age = m.value("edge_agent_journal_oldest_record_age_seconds")
            written = datetime.fromisoformat(json.loads(first.body)["ts"]).timestamp()
            assert age == pytest.approx(time.time() - written, abs=1.0)
            assert age > 0
            await wait_until(lambda: agent.buffer.depth >= depth + 5, 30, "more records")
            later = await scrape(port)
            assert later.value("edge_agent_journal_oldest_record_age_seconds") > age


async def test_only_metrics_is_served(tmp_path: Path) -> None:
    """Another path is 404, a POST 405, a garbled or cut-off request gets no answer; none of
    them stops the endpoint."""
    port = free_port()
    async with (
        ModbusStationServer([StationModel(unit_id=1)]) as plc,
        running(agent_config(tmp_path, plc.port, free_port(), port)) as agent,
    ):
        status, _, text = await get(port, "/")
        assert (status, text) == (404, "not found: the metrics are at /metrics\n")
        assert (await get(port, "/metrics/x"))[0] == 404
        assert (await get(port, "/metrics?x=1"))[0] == 200

        def post() -> int:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", b"x")
            try:
                urllib.request.urlopen(request, timeout=10)
            except urllib.error.HTTPError as exc:
                return exc.code
            return 200

        assert await asyncio.to_thread(post) == 405
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\xffgarbage\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 404")
        writer.close()
        await writer.wait_closed()
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metr")  # and leaves
        writer.close()
        await writer.wait_closed()
        await scrape(port)
        assert agent.metrics is not None
        assert agent.metrics.scrapes == 2


async def test_a_port_in_use_is_one_line_and_a_clean_stop(tmp_path: Path) -> None:
    """Another program on the port: StartupError with the message the CLI prints, the journal
    closed (another agent can open it), the control socket gone, no task or thread left."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        raw = agent_config(tmp_path, free_port(), free_port(), port)
        cfg = agent_model().model_validate(raw)
        # The loop's executor thread is the loop's, not the agent's: started before counting.
        await asyncio.to_thread(lambda: None)
        async with no_leaks():
            agent = Agent(cfg)
            with pytest.raises(StartupError) as caught:
                await agent.run(asyncio.Event())
        assert str(caught.value) == (
            f"metrics: 127.0.0.1:{port} is already in use (another agent? set metrics.listen)"
        )
        assert not await asyncio.to_thread(Path(cfg.control.socket).exists)
        # The journal was stopped: a second agent on the same files starts (and the
        # journal's lock would refuse it otherwise).
        raw["metrics"] = {"enabled": False}
        async with running(raw) as again:
            assert again.metrics is None
            await again.buffer.flush()


async def test_metrics_are_off_unless_enabled(tmp_path: Path) -> None:
    raw = agent_config(tmp_path, free_port(), free_port(), 9464)
    del raw["metrics"]
    cfg = agent_model().model_validate(raw)
    assert (cfg.metrics.enabled, cfg.metrics.listen) == (False, "127.0.0.1:9464")
    assert Agent(cfg).metrics is None


async def test_a_reload_that_moves_the_endpoint_is_refused(tmp_path: Path) -> None:
    port = free_port()
    async with ModbusStationServer([StationModel(unit_id=1)]) as plc:
        raw = agent_config(tmp_path, plc.port, free_port(), port)
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        agent = Agent(load_config(path), config_path=path)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await bounded(agent.started.wait(), 30, "the agent to start")
            raw["metrics"]["listen"] = f"127.0.0.1:{free_port()}"
            path.write_text(yaml.safe_dump(raw), encoding="utf-8")
            answer = await agent.reload()
            assert answer == {
                "ok": False,
                "errors": ["metrics: changed; restart the agent to apply it"],
            }
            await scrape(port)  # still where it was
        finally:
            stop.set()
            await task


@pytest.mark.parametrize(
    ("listen", "error"),
    [
        ("127.0.0.1:9464", None),
        ("0.0.0.0:1", None),
        ("localhost:65535", None),
        ("[::1]:9464", None),
        (
            "9464",
            "expected HOST:PORT (e.g. 127.0.0.1:9464, [::1]:9464 or 0.0.0.0:9464), found '9464'",
        ),
        (":9464", "':9464': no host (0.0.0.0 listens on every interface)"),
        ("::1:9464", "'::1:9464': an IPv6 address goes in brackets, e.g. [::1]:9464"),
        (
            "[::1:9464",
            "'[::1:9464': unclosed '[' (e.g. 127.0.0.1:9464, [::1]:9464 or 0.0.0.0:9464)",
        ),
        (
            "[::1]9464",
            "'[::1]9464': expected ':PORT' after ']' (e.g. 127.0.0.1:9464, [::1]:9464 or 0.0.0.0:9464)",
        ),
        (
            "[host]:1",
            "'[host]:1': brackets are for IPv6 addresses only (e.g. 127.0.0.1:9464, [::1]:9464 or 0.0.0.0:9464)",
        ),
        ("host:http", "'host:http': port 'http' is not a number"),
        ("host:9_464", "'host:9_464': port '9_464' is not a number"),
        ("host:0", "'host:0': port 0 is not in 1..65535"),
        ("host:65536", "'host:65536': port 65536 is not in 1..65535"),
        (
            "a b:1",
            "expected HOST:PORT (e.g. 127.0.0.1:9464, [::1]:9464 or 0.0.0.0:9464), found 'a b:1'",
        ),
        (
            "http://h:1",
            "'http://h:1': expected HOST:PORT, not a URL (e.g. 127.0.0.1:9464, [::1]:9464 or 0.0.0.0:9464)",
        ),
    ],
)
def test_listen_addresses(listen: str, error: str | None) -> None:
    if error is None:
        host, port = parse_listen(listen)
        assert 1 <= port <= 65535
        assert host
        assert "[" not in host
    else:
        with pytest.raises(ValueError, match=re.escape(error)) as caught:
            parse_listen(listen)
        assert str(caught.value) == error


def test_a_bad_listen_address_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    raw = agent_config(tmp_path, 502, 1883, 9464)
    raw["metrics"] = {"enabled": True, "listen": "9464"}
    path = tmp_path / "agent.yaml"
    text = yaml.safe_dump(raw, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    line = text.splitlines().index("  listen: '9464'") + 1
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(i) for i in caught.value.issues] == [
        f"{path}:{line}:3: metrics.listen: expected HOST:PORT (e.g. 127.0.0.1:9464, "
        "[::1]:9464 or 0.0.0.0:9464), found '9464'"
    ]
