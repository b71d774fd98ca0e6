"""The gate refuses a blocked lot end to end: a running agent, the simulated PLC (its
interlock coil read back from the simulator), a scanner on a pty answering good/bad read,
and a real Mosquitto carrying the blocked set. Then the same with the broker down, before
and after a restart: the journal's copy decides."""

from __future__ import annotations

import asyncio
import getpass
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.remote import gate_line
from simulators.broker import free_port
from simulators.consumer import RecordCollector
from simulators.modbus_server import ModbusStationServer
from simulators.scanner import HandheldScanner, HostAck, PtyTransport, ScannerConfig
from simulators.station import StationModel
from tests.gate_helpers import blocked_set, gated_config, journal_records, publish, running
from tests.metrics_helpers import DOCS, scrape
from tests.mqtt_helpers import Mosquitto
from tests.store_helpers import StoreFactory
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

BLOCKED_TOPIC = "trace/blocked"


def gate_records(col: RecordCollector) -> list[dict[str, Any]]:
    with col.lock:
        return [r for _, r in sorted(col.data.records.items()) if r["kind"] == "gate"]


async def test_a_blocked_lot_is_refused_with_the_broker_up_down_and_after_a_restart(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    model = StationModel(unit_id=1, cycle_time=0.5)
    metrics_port = free_port()
    async with ModbusStationServer([model, StationModel(unit_id=2, cycle_time=0.5)]) as plc:
        transport = PtyTransport(tmp_path)
        cfg = gated_config(
            tmp_path,
            mqtt_port=mosquitto.port,
            modbus_port=plc.port,
            scanners={"ST10": str(transport.agent_path)},
            gate={"ST10": {}},
            metrics_port=metrics_port,
        )
        scanner_cfg = ScannerConfig(ack=HostAck(), auto=False)
        async with HandheldScanner(model, transport, scanner_cfg) as sim:

            async def scan(code: str) -> str:
                """Scan ``code``; the reader's answer (good/bad) once it comes."""
                before = len(sim.feedback)
                await sim.scan_material(code)
                await wait_until(lambda: len(sim.feedback) > before, 10, f"answer to {code}")
                return sim.feedback[before].verdict

            with RecordCollector("127.0.0.1", mosquitto.port) as col:
                async with running(cfg) as agent:
                    await wait_until(lambda: agent.sync.status.connected, 20, "uplink")
                    await wait_until(
                        lambda: agent.snapshot()["devices"]["scan-ST10"] == "up", 20, "scanner"
                    )
                    assert await scan("LOT:L0042") == "good"
                    assert agent.binder.contexts["ST10"]["lot"] == "L0042"

                    # The store blocks the lot: the next scan of it is refused, the PLC's
                    # interlock bit goes up, the reader says bad read.
                    published = time.monotonic()
                    publish(mosquitto.port, BLOCKED_TOPIC, blocked_set(5, lots=["L0042"]),
                            retain=True)  # fmt: skip
                    await wait_until(lambda: agent.keeper.held.version == 5, 10, "set v5 held")
                    assert await scan("LOT:L0042") == "bad"
                    await wait_until(lambda: plc.data_taken(1), 10, "interlock bit up")
                    assert time.monotonic() - published < 10
                    refused = (await wait_until(lambda: gate_records(col), 10, "gate record"))[0]
                    assert refused["decision"] == "refused"
                    assert refused["check"] == "blocked"
                    assert refused["lot"] == "L0042"
                    assert refused["version"] == 5
                    # The station context is unchanged by a refused scan: it still holds the
                    # lot accepted before the block (the part in work), no new consumption.
                    assert agent.binder.contexts["ST10"]["lot"] == "L0042"

                    # A good lot releases the interlock.
                    assert await scan("LOT:L0001") == "good"
                    await wait_until(lambda: not plc.data_taken(1), 10, "interlock released")

                    # A garbled set and an older one are ignored and counted; v5 stays.
                    publish(mosquitto.port, BLOCKED_TOPIC, b"{not json", retain=False)
                    publish(mosquitto.port, BLOCKED_TOPIC, blocked_set(4), retain=False)
                    await wait_until(
                        lambda: (agent.keeper.garbled, agent.keeper.older) == (1, 1),
                        10,
                        "garbled and older counted",
                    )
                    gate = agent.snapshot()["gate"]
                    assert gate["blocked_version"] == 5
                    assert (gate["sets_garbled"], gate["sets_older"]) == (1, 1)
                    assert gate_line(gate) == (
                        "gate (ST10): blocked set version 5 of 2026-12-03T21:00:00.000Z, "
                        "1 lot(s), 0 serial(s), 0 product(s); ignored 1 garbled, 1 older"
                    )
                    live = await scrape(metrics_port)
                    assert live.value("edge_agent_gate_blocked_version") == 5
                    assert live.value("edge_agent_gate_blocked_keys", kind="lot") == 1
                    assert live.value("edge_agent_gate_sets_ignored_total", reason="garbled") == 1
                    assert live.value("edge_agent_gate_sets_ignored_total", reason="older") == 1
                    documented = DOCS.read_text(encoding="utf-8")
                    assert all(
                        f"`{name}`" in documented
                        for name in live.documented_names()
                        if name.startswith("edge_agent_gate")
                    )
                    assert await scan("LOT:L0042") == "bad"

                    # The broker goes away: the copy in memory (and the journal) decides.
                    assert await scan("LOT:L0001") == "good"
                    mosquitto.stop()
                    await wait_until(lambda: not agent.sync.status.connected, 20, "uplink down")
                    assert await scan("LOT:L0042") == "bad"
                    await wait_until(lambda: plc.data_taken(1), 10, "interlock up, offline")
                    assert await scan("LOT:L0001") == "good"
                    await wait_until(lambda: not plc.data_taken(1), 10, "released, offline")
                scans = [
                    r
                    for _, r in sorted(col.data.records.items())
                    if r["kind"] == "scan" and r["station"] == "ST10"
                ]

            # A restart with the broker still down: the set comes from the journal.
            async with running(cfg) as agent:
                assert agent.keeper.held.version == 5
                await wait_until(
                    lambda: agent.snapshot()["devices"]["scan-ST10"] == "up", 20, "scanner"
                )
                assert await scan("LOT:L0042") == "bad"
                await wait_until(lambda: plc.data_taken(1), 10, "interlock up after restart")
                # The operator took the part out: `gate release` lowers the interlock now.
                released = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "edge_agent.cli", "gate", "release",
                    "--socket", str(cfg.control.socket), "--station", "ST10",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, err = await asyncio.wait_for(released.communicate(), 60)
                assert released.returncode == 0, err.decode()
                assert out.decode().startswith("ST10: interlock released (committed, seq ")
                await wait_until(lambda: not plc.data_taken(1), 10, "released by the operator")
                wrong = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "edge_agent.cli", "gate", "release",
                    "--socket", str(cfg.control.socket), "--station", "ST99",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                _, err = await asyncio.wait_for(wrong.communicate(), 60)
                assert wrong.returncode == 1
                assert "ST99" in err.decode()

    statuses = [(s["text"], s["status"]) for s in scans]
    assert statuses[:2] == [("LOT:L0042", "accepted"), ("LOT:L0042", "refused")]
    assert all(s["gate"]["version"] == (0 if i == 0 else 5) for i, s in enumerate(scans))
    # Offline decisions are in the journal, waiting for the uplink: the scan says refused,
    # the gate record which set decided; no consumption was recorded for any refused scan.
    offline_gates = journal_records(cfg.buffer.path, "gate")
    assert [g["decision"] for g in offline_gates] == ["refused", "refused", "released"]
    assert {g.get("version") for g in offline_gates[:2]} == {5}
    assert (offline_gates[2]["check"], offline_gates[2]["user"]) == ("operator", getpass.getuser())
    consumed = [c["lot"] for c in journal_records(cfg.buffer.path, "consumption")]
    assert "L0042" not in consumed


async def test_a_block_with_the_stores_cli_stops_the_next_scan_of_that_lot(
    tmp_path: Path, mosquitto: Mosquitto, stores: StoreFactory, sqlite_db: str
) -> None:
    """The whole chain as a quality engineer drives it: the real trace store, its
    ``edge-agent quality block`` command, a running agent."""
    stores(sqlite_db)
    model = StationModel(unit_id=1, cycle_time=0.5)
    async with ModbusStationServer([model, StationModel(unit_id=2, cycle_time=0.5)]) as plc:
        transport = PtyTransport(tmp_path)
        cfg = gated_config(
            tmp_path,
            mqtt_port=mosquitto.port,
            modbus_port=plc.port,
            scanners={"ST10": str(transport.agent_path)},
            gate={"ST10": {}},
        )
        scanner_cfg = ScannerConfig(ack=HostAck(), auto=False)
        async with HandheldScanner(model, transport, scanner_cfg) as sim, running(cfg) as agent:
            await wait_until(lambda: agent.snapshot()["devices"]["scan-ST10"] == "up", 20, "up")
            await wait_until(lambda: agent.sync.status.connected, 20, "uplink")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge_agent.cli", "quality", "block", "--db", sqlite_db,
                "--lot", "L0777", "--reason", "supplier recall", "--user", "qe.meier",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await proc.communicate()
            assert proc.returncode == 0, out
            blocked_at = time.monotonic()
            await wait_until(lambda: "L0777" in agent.keeper.held.lots, 10, "the block held")
            # Well under the 2 s target here too (the benchmark measures it); bounded
            # generously for a loaded machine.
            assert time.monotonic() - blocked_at < 10
            await sim.scan_material("LOT:L0777")
            await wait_until(lambda: sim.feedback, 10, "the answer")
            assert sim.feedback[0].verdict == "bad"
            await wait_until(lambda: plc.data_taken(1), 10, "interlock bit up")
            entry = agent.keeper.held.lots["L0777"]
            assert (entry["reason"], entry["by"]) == ("supplier recall", "qe.meier")
