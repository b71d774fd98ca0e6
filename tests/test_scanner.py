"""Scanners end to end: the scanner driver on a real pty and TCP against the scanner
simulator, scans through the station's scan rules into the context the PLC's values are bound
to, good/bad-read answers only after the commit, triggered reads and no-reads."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.scanner.config import ScannerDevice
from drivers.scanner.driver import ScannerDriver
from edge_agent.config import agent_model
from edge_agent.control import ControlError, request
from edge_agent.daemon import Agent
from kernel.model import Observation, Quality
from simulators.consumer import RecordCollector
from simulators.modbus_server import ModbusStationServer
from simulators.scanner import (
    CRLF,
    STX_ETX,
    Fault,
    Faults,
    HandheldScanner,
    HostAck,
    PtyTransport,
    ScannerConfig,
    TcpClientTransport,
    TcpServerTransport,
    TriggerConfig,
    TriggeredReader,
    gs1_value,
)
from simulators.scenario import demo_config
from simulators.station import StationModel
from tests.modbus_helpers import Collector
from tests.modbus_helpers import start_device as run
from tests.modbus_helpers import stop_task as stop
from tests.mqtt_helpers import Mosquitto, spawn
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

RULES = [
    {"name": "part_label", "gs1": True, "require": ["01", "21"], "set": {"serial": "21"}},
]


def scanner(**kw: Any) -> ScannerDevice:
    raw = {"type": "scanner", "name": "scan10", "station": "ST10", **kw}
    dev = ScannerDevice.model_validate(raw)
    assert dev.issues() == []
    return dev


def scans(sink: Collector) -> list[Observation]:
    return [o for o in sink.all if o.point == "scan"]


# ---- the driver alone ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "quality", "error"),
    [
        (None, Quality.GOOD, None),
        (Fault.SPLIT, Quality.GOOD, None),
        (Fault.NO_READ, Quality.BAD, "no read (the reader sent 'NOREAD')"),
        (Fault.OVERLONG, Quality.BAD, "frame longer than 256 bytes"),
    ],
)
async def test_each_scan_is_one_observation_on_a_serial_port(
    tmp_path: Path, fault: Fault | None, quality: Quality, error: str | None
) -> None:
    model = StationModel(cycle_time=0.2)
    transport = PtyTransport(tmp_path)
    config = ScannerConfig(auto=False, faults=Faults(max_length=256))
    async with HandheldScanner(model, transport, config) as sim:
        driver = ScannerDriver(scanner(port=str(transport.agent_path), max_length=256))
        sink = Collector()
        task = await run(driver, sink)
        try:
            await wait_until(lambda: driver.status.state.value == "up", what="port open")
            await sim.scan_part(fault=fault)
            await wait_until(lambda: scans(sink), what="the scan")
        finally:
            await stop(task)
    (obs,) = scans(sink)
    (sent,) = sim.sent
    assert obs.quality is quality
    assert obs.error == error
    if quality is Quality.GOOD:
        assert obs.value == sent.payload.decode()
        assert obs.value.startswith("]d2010")
        assert "\x1d10" in obs.value, "GS separators are kept"
    else:
        assert obs.value is None


async def test_merged_and_garbage_frames_are_every_byte_accounted_for(tmp_path: Path) -> None:
    """Two scans in one write are two scans; garbage is a rejected scan with its bytes."""
    model = StationModel(cycle_time=0.2)
    transport = PtyTransport(tmp_path)
    async with HandheldScanner(model, transport, ScannerConfig(auto=False)) as sim:
        driver = ScannerDriver(scanner(port=str(transport.agent_path)))
        sink = Collector()
        task = await run(driver, sink)
        try:
            await wait_until(lambda: driver.status.state.value == "up", what="port open")
            await sim.scan_part(fault=Fault.MERGED)
            await sim.scan_part(fault=Fault.GARBAGE)
            await sim.scan_part()
            await wait_until(lambda: len(scans(sink)) >= 3, what="three scans")
        finally:
            await stop(task)
    got = scans(sink)
    assert len(got) == 3
    assert (got[0].quality, got[2].quality) == (Quality.GOOD, Quality.GOOD)
    (garbage,) = [s for s in sim.scans if s.fault is Fault.GARBAGE]
    try:
        text = garbage.payload.decode()
    except UnicodeDecodeError:
        # Not text at all: rejected here, its bytes kept (escaped) in the scan's detail.
        assert got[1].quality is Quality.BAD
        assert (got[1].error or "").startswith("not text")
        assert got[1].detail is not None
        assert got[1].detail["length"] == len(garbage.frame)  # its CR included
    else:
        # Text with control characters: passed on, and the scan rules reject it
        # (tests/test_scan.py).
        assert got[1].value == text


async def test_a_reader_on_tcp_in_stx_etx_framing(tmp_path: Path) -> None:
    model = StationModel(cycle_time=0.2)
    transport = TcpServerTransport()
    config = ScannerConfig(auto=False, framing=STX_ETX)
    async with HandheldScanner(model, transport, config) as sim:
        dev = scanner(host="127.0.0.1", tcp_port=transport.port, framing="stx_etx")
        driver = ScannerDriver(dev)
        sink = Collector()
        task = await run(driver, sink)
        try:
            await transport.wait_connected()
            await sim.scan_part()
            await sim.scan_part()
            await wait_until(lambda: len(scans(sink)) >= 2, what="two scans")
        finally:
            await stop(task)
    assert [o.value for o in scans(sink)] == [s.payload.decode() for s in sim.sent]


async def test_a_reader_that_connects_to_the_agent(tmp_path: Path) -> None:
    from simulators.broker import free_port

    port = free_port()
    model = StationModel(cycle_time=0.2)
    driver = ScannerDriver(scanner(listen_port=port, listen_host="127.0.0.1", suffix="CRLF"))
    sink = Collector()
    task = await run(driver, sink)
    try:
        transport = TcpClientTransport("127.0.0.1", port)
        config = ScannerConfig(auto=False, framing=CRLF)
        async with HandheldScanner(model, transport, config) as sim:
            await transport.wait_connected()
            await sim.scan_part()
            await wait_until(lambda: scans(sink), what="a scan")
    finally:
        await stop(task)
    assert scans(sink)[0].value == sim.sent[0].payload.decode()


async def test_an_unplugged_scanner_is_down_and_back_when_replugged(tmp_path: Path) -> None:
    model = StationModel(cycle_time=0.2)
    transport = PtyTransport(tmp_path)
    async with HandheldScanner(model, transport, ScannerConfig(auto=False)):
        dev = scanner(port=str(transport.agent_path), backoff_initial=0.05, backoff_max=0.2)
        driver = ScannerDriver(dev)
        sink = Collector()
        task = await run(driver, sink)
        try:
            await wait_until(lambda: driver.status.state.value == "up", what="port open")
            transport.link.unplug()
            await wait_until(lambda: driver.status.state.value == "down", what="down")
            assert driver.status.last_error
            outage = scans(sink)[-1]
            assert outage.quality is Quality.BAD
            transport.link.replug()
            await wait_until(lambda: driver.status.state.value == "up", what="up again")
        finally:
            await stop(task)


# ---- triggered reads ---------------------------------------------------------------------------


async def test_a_triggered_read_answers_and_a_silent_one_is_a_no_read(tmp_path: Path) -> None:
    model = StationModel(cycle_time=0.5)
    transport = TcpServerTransport()
    trigger = TriggerConfig(decode_time=0.02, read_timeout=5.0)
    async with TriggeredReader(model, transport, ScannerConfig(), trigger) as sim:
        dev = scanner(
            host="127.0.0.1",
            tcp_port=transport.port,
            trigger={
                "device": "plc", "point": "present", "start": "LON<CR>", "stop": "LOFF<CR>",
                "read_timeout": 0.3,
            },
        )  # fmt: skip
        driver = ScannerDriver(dev)
        sink = Collector()
        task = await run(driver, sink)
        try:
            await transport.wait_connected()
            await driver.trigger_read()
            await wait_until(lambda: scans(sink), what="the triggered read")
            (read,) = scans(sink)
            assert read.quality is Quality.GOOD
            assert read.value == sim.sent[0].payload.decode()
            # Nothing readable: the agent's window closes first and it sends the stop command;
            # the reader answers that with its no-read text, which is the one record.
            sim.inject(Fault.NO_READ)
            await driver.trigger_read()
            await wait_until(lambda: len(scans(sink)) >= 2, what="the no-read")
            await wait_until(lambda: len(sim.triggers) >= 3, what="the stop command")
        finally:
            await stop(task)
    assert [o.error for o in scans(sink)] == [None, "no read (the reader sent 'NOREAD')"]
    assert [t.command for t in sim.triggers] == ["on", "on", "off"]


async def test_a_reader_that_ignores_the_stop_gets_its_no_read_from_the_agent() -> None:
    model = StationModel(cycle_time=0.5)
    transport = TcpServerTransport()
    trigger = TriggerConfig(on=b"GO\r", off=b"HALT\r", decode_time=0.02, read_timeout=5.0)
    async with TriggeredReader(model, transport, ScannerConfig(), trigger) as sim:
        dev = scanner(
            host="127.0.0.1", tcp_port=transport.port,
            trigger={"device": "plc", "point": "present", "start": "LON<CR>", "read_timeout": 0.2},
        )  # fmt: skip
        driver = ScannerDriver(dev)  # its LON means nothing to this reader: it never reads
        sink = Collector()
        task = await run(driver, sink)
        try:
            await transport.wait_connected()
            await driver.trigger_read()
            await wait_until(lambda: scans(sink), what="the no-read")
        finally:
            await stop(task)
    assert [o.error for o in scans(sink)] == ["no read within 0.2 s of the trigger"]
    assert sim.sent == []


# ---- the agent: context from scans, answers after the commit ------------------------------------


def station_config(tmp: Path, mqtt_port: int, modbus_port: int, scanner_port: str) -> Any:
    raw = demo_config(
        modbus_port=modbus_port,
        mqtt_port=mqtt_port,
        buffer_path=str(tmp / "buffer.db"),
        stations=1,
        agent_id="scan-pc1",
    )
    station = raw["stations"][0]
    station["context"] = {}  # the serial comes from the scanner, not the PLC
    station["scans"] = {"sources": [{"device": "scanner10"}], "rules": RULES}
    raw["devices"].append(
        {
            "name": "scanner10", "type": "scanner", "station": station["name"],
            "port": scanner_port, "feedback": {"good": "<ESC>7", "bad": "<ESC>8"},
        }
    )  # fmt: skip
    raw["control"] = {"socket": str(tmp / "control.sock")}
    cfg = agent_model().model_validate(raw)
    assert cfg.issues() == []
    return cfg


async def test_a_scanned_serial_binds_the_plcs_values_and_is_answered_after_commit(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    model = StationModel(unit_id=1, cycle_time=0.4)
    async with ModbusStationServer([model]) as plc:
        transport = PtyTransport(tmp_path)
        faults = Faults(rates={Fault.BAD_CHECK_DIGIT: 0.25}, seed=3)
        config = ScannerConfig(ack=HostAck(), faults=faults, scan_phase=0.1)
        cfg = station_config(tmp_path, mosquitto.port, plc.port, str(transport.agent_path))
        async with HandheldScanner(plc.stations[0], transport, config) as sim:
            with RecordCollector("127.0.0.1", mosquitto.port) as col:
                agent = Agent(cfg)
                stop_agent = asyncio.Event()
                task = asyncio.create_task(agent.run(stop_agent))
                try:
                    await wait_until(lambda: len(sim.feedback) >= 8, within=30, what="8 answers")
                finally:
                    stop_agent.set()
                    await task
                committed = agent.buffer.committed_seq
                assert col.wait_for(lambda d: len(d.records) >= committed, 20)
    records = [r for _, r in sorted(col.data.records.items())]
    scan_records = [r for r in records if r["kind"] == "scan"]
    # Scans sent before the agent opened the port are flushed by the open, as on a real
    # wire; every scan the agent saw has its record and exactly one answer.
    by_text = {s.payload.decode(): s for s in sim.sent}
    assert len(scan_records) >= 8
    assert any(r["status"] == "rejected" for r in scan_records), "no bad check digit drawn"
    for rec in scan_records:
        sent = by_text[rec["text"]]
        good = rec["status"] == "accepted"
        assert good == sent.valid, rec
        if good:
            assert rec["fields"]["21"] == gs1_value(model.serial(sent.cycle))
    # One answer per scan, in the order of the scans, good iff accepted. (Compared as
    # sequences: on a loaded machine an answer may come after the next scan was sent, so
    # the simulator's "answer after scan N" bookkeeping cannot pair them.) The last answer
    # may be cut by the stop.
    expected = ["good" if r["status"] == "accepted" else "bad" for r in scan_records]
    verdicts = [fb.verdict for fb in sim.feedback]
    assert len(expected) - 1 <= len(verdicts) <= len(expected)
    assert verdicts == expected[: len(verdicts)]
    # Every reading carries the serial of the last accepted scan before it (in seq order):
    # a rejected scan changes nothing. Where that scan was of the part the PLC shows in the
    # same poll (its own serial register), the two agree.
    current: str | None = None
    agree = 0
    for r in records:
        if r["kind"] == "scan" and r["status"] == "accepted":
            current = r["fields"]["21"]
        elif r["kind"] == "readings" and r["device"] == "press1":
            assert r["ctx"]["serial"] == current, r
            plc = r["values"].get("part_serial")
            agree += plc is not None and gs1_value(plc) == current
    assert agree >= 5, "the PLC's values were never bound to the scanned part"


def commit_blocked(db: Path) -> sqlite3.Connection:
    """Hold the journal's write lock from outside: the agent's commits wait behind it."""
    con = sqlite3.connect(db, timeout=5, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    return con


async def test_no_good_read_before_the_scan_is_committed(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The journal cannot commit (its write lock is held): the scan is bound, but the reader
    hears nothing. Once the commit goes through, the answer follows."""
    model = StationModel(unit_id=1, cycle_time=0.4)
    async with ModbusStationServer([model]) as plc:
        transport = PtyTransport(tmp_path)
        config = ScannerConfig(auto=False)
        cfg = station_config(tmp_path, mosquitto.port, plc.port, str(transport.agent_path))
        async with HandheldScanner(plc.stations[0], transport, config) as sim:
            agent = Agent(cfg)
            stop_agent = asyncio.Event()
            task = asyncio.create_task(agent.run(stop_agent))
            lock: sqlite3.Connection | None = None
            try:
                await wait_until(
                    lambda: agent.buffer.committed_seq > 0, within=20, what="first commits"
                )
                scanner_driver = agent._by_name["scanner10"]
                await wait_until(
                    lambda: scanner_driver.status.state.value == "up", what="scanner up"
                )
                lock = commit_blocked(tmp_path / "buffer.db")
                before = scanner_driver.status.reads_ok
                await sim.scan_part()
                await wait_until(
                    lambda: scanner_driver.status.reads_ok > before,
                    what="the scan received (bound, not committed)",
                )
                held_at = agent.buffer.committed_seq
                # An answer sent without waiting for the commit would come within
                # milliseconds; half a second of silence, with the commit still blocked.
                with pytest.raises(AssertionError, match="timed out"):
                    await wait_until(lambda: bool(sim.feedback), within=0.5, what="no answer")
                assert agent.buffer.committed_seq == held_at, "the lock did not hold commits"
                lock.rollback()
                lock.close()
                lock = None
                await wait_until(lambda: sim.feedback, what="the answer after the commit")
                assert agent.buffer.committed_seq > held_at
            finally:
                if lock is not None:
                    lock.close()
                stop_agent.set()
                await task
    assert [f.verdict for f in sim.feedback] == ["good"]


async def test_an_agent_killed_before_the_commit_never_answered_the_scan(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The agent process gets the scan but cannot commit it (the journal's write lock is
    held) and is killed: the reader never heard a good read, and the journal has no such
    scan, so the operator, hearing nothing, scans again; that scan is committed and answered."""
    model = StationModel(unit_id=1, cycle_time=0.4)
    async with ModbusStationServer([model]) as plc:
        transport = PtyTransport(tmp_path)
        cfg = station_config(tmp_path, mosquitto.port, plc.port, str(transport.agent_path))
        path = tmp_path / "agent.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
        socket = str(tmp_path / "control.sock")
        cmd = [sys.executable, "-m", "edge_agent.cli", "--log-level", "WARNING", "run", str(path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}

        async def status() -> dict[str, Any]:
            try:
                reply = await request(socket, {"op": "status"}, answer_within=2)
            except ControlError:
                return {}  # not listening yet
            return dict(reply.get("status", {}))

        async def scanner_up() -> bool:
            return bool((await status()).get("devices", {}).get("scanner10") == "up")

        async with HandheldScanner(plc.stations[0], transport, ScannerConfig(auto=False)) as sim:
            proc = spawn(cmd, env)
            try:
                await wait_until(scanner_up, 30, "the agent's scanner up")
                lock = commit_blocked(tmp_path / "buffer.db")
                try:
                    before = int((await status())["scans"])
                    await sim.scan_part()
                    (scan,) = sim.sent

                    async def scan_seen() -> bool:
                        return int((await status()).get("scans", -1)) > before

                    await wait_until(scan_seen, 10, "the scan bound (its commit blocked)")
                    proc.send_signal(signal.SIGKILL)
                    await asyncio.to_thread(proc.wait, 10)
                finally:
                    lock.rollback()
                    lock.close()
                assert sim.feedback_after(scan.seq) == [], "answered a scan it never committed"
                db = sqlite3.connect(tmp_path / "buffer.db")
                try:
                    kinds = [row[0] for row in db.execute("SELECT kind FROM records")]
                finally:
                    db.close()
                assert "scan" not in kinds, "the scan was committed after all"
                # The operator scans again; the restarted agent commits and answers it.
                proc = spawn(cmd, env)
                await wait_until(scanner_up, 30, "the restarted agent's scanner up")
                await sim.scan_part()
                await wait_until(lambda: len(sim.feedback) == 1, within=10, what="the answer")
                assert sim.feedback[0].verdict == "good"
                assert sim.feedback[0].after == sim.sent[-1].seq
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.to_thread(proc.wait, 30)
