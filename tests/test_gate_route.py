"""Route rules end to end: "the serial must have an OK part record at ST10 before ST20".
Within one agent the journal decides (also after a restart); across agents the real trace
store answers over the real broker, and when it cannot, each station's on_unreachable policy
decides (refuse, or allow and flag)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from simulators.consumer import RecordCollector
from simulators.modbus_server import ModbusStationServer
from simulators.scanner import HandheldScanner, HostAck, PtyTransport, ScannerConfig
from simulators.station import StationModel
from tests.gate_helpers import gated_config, journal_records, running
from tests.mqtt_helpers import Mosquitto
from tests.store_helpers import StoreFactory
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(240)

CYCLE = 0.1
Scan = Callable[[str], Awaitable[str]]


def plc_models(n: int) -> list[StationModel]:
    """``n`` PLC units; unit 1 (ST10) with the handshake, so no part is ever missed (every
    17th is NOK: the first NOK is the 17th part, a few seconds in)."""
    return [StationModel(unit_id=i + 1, cycle_time=CYCLE, handshake=i == 0) for i in range(n)]


def scanner_of(sim: HandheldScanner) -> Scan:
    async def scan(code: str) -> str:
        before = len(sim.feedback)
        await sim.scan_material(code)
        await wait_until(lambda: len(sim.feedback) > before, 15, f"answer to {code}")
        return sim.feedback[before].verdict

    return scan


def parts(col: RecordCollector, station: str) -> dict[str, str | None]:
    """serial -> result of its latest part record at ``station``, as published."""
    with col.lock:
        records = [r for _, r in sorted(col.data.records.items())]
    return {
        r["serial"]: r["result"] for r in records if r["kind"] == "part" and r["station"] == station
    }


def ok_and_nok(col: RecordCollector) -> tuple[str, str] | None:
    seen = parts(col, "ST10")
    ok = next((s for s, r in seen.items() if r == "ok"), None)
    nok = next((s for s, r in seen.items() if r == "nok"), None)
    return (ok, nok) if ok and nok else None


def gates(col: RecordCollector, station: str) -> list[dict[str, Any]]:
    with col.lock:
        return [
            r
            for _, r in sorted(col.data.records.items())
            if r["kind"] == "gate" and r["station"] == station
        ]


async def test_route_within_one_agent_is_decided_from_its_journal(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with ModbusStationServer(plc_models(2)) as plc:
        transport = PtyTransport(tmp_path)
        cfg = gated_config(
            tmp_path,
            mqtt_port=mosquitto.port,
            modbus_port=plc.port,
            scanners={"ST20": str(transport.agent_path)},
            gate={"ST20": {"route": [{"requires": "ST10"}]}},
            poll_interval=0.1,
            handshake=True,
        )
        async with HandheldScanner(plc.stations[1], transport, ScannerConfig(
            ack=HostAck(), auto=False
        )) as sim:  # fmt: skip
            scan = scanner_of(sim)
            with RecordCollector("127.0.0.1", mosquitto.port) as col:
                async with running(cfg) as agent:
                    ok, nok = await wait_until(lambda: ok_and_nok(col), 30, "an OK and a NOK")
                    assert await scan(f"SN:{ok}") == "good"
                    assert agent.binder.contexts["ST20"]["serial"] == ok
                    assert await scan(f"SN:{nok}") == "bad"
                    await wait_until(lambda: plc.data_taken(2), 10, "interlock up")
                    assert await scan("SN:NEVER-MADE") == "bad"
                    assert agent.binder.contexts["ST20"]["serial"] == ok
                    # Everything delivered: the journal no longer holds those part records.
                    await wait_until(lambda: agent.buffer.depth == 0, 20, "journal drained")
                await wait_until(lambda: len(gates(col, "ST20")) >= 3, 10, "3 gate records")
                decided = gates(col, "ST20")
        assert [(g["serial"], g["decision"], g["source"]) for g in decided] == [
            (ok, "allowed", "local"),
            (nok, "refused", "local"),
            ("NEVER-MADE", "refused", "local"),
        ]
        assert decided[1]["reason"] == "latest part record at ST10: nok"
        # After a restart (the broker down too), with those part records long delivered and
        # deleted, the journal's own table of part results still decides.
        with contextlib.closing(sqlite3.connect(cfg.buffer.path)) as db:
            left = [
                json.loads(body)["serial"]
                for (body,) in db.execute("SELECT body FROM records WHERE kind = 'part'")
            ]
        assert ok not in left
        assert nok not in left
        mosquitto.stop()
        async with HandheldScanner(plc.stations[1], transport, ScannerConfig(
            ack=HostAck(), auto=False
        )) as sim, running(cfg) as agent:  # fmt: skip
            scan = scanner_of(sim)
            await wait_until(lambda: agent.snapshot()["devices"]["scan-ST20"] == "up", 20, "up")
            assert await scan(f"SN:{ok}") == "good"
            assert await scan(f"SN:{nok}") == "bad"
    restarted = journal_records(cfg.buffer.path, "gate")
    assert [(g["serial"], g["decision"]) for g in restarted] == [(ok, "allowed"), (nok, "refused")]


async def test_route_across_agents_asks_the_store_and_falls_back_to_the_policy(
    tmp_path: Path, mosquitto: Mosquitto, stores: StoreFactory, sqlite_db: str
) -> None:
    """Agent pc-a records ST10's parts; agent pc-b gates ST20 (store unreachable: refuse) and
    ST30 (store unreachable: allow and flag) on them. The store is the real trace store."""
    store = stores(sqlite_db)
    async with ModbusStationServer(plc_models(3)) as plc:
        port20, port30 = PtyTransport(tmp_path / "20"), PtyTransport(tmp_path / "30")
        (tmp_path / "20").mkdir(exist_ok=True)
        (tmp_path / "30").mkdir(exist_ok=True)
        maker = gated_config(
            tmp_path,
            mqtt_port=mosquitto.port,
            modbus_port=plc.port,
            scanners={},
            gate={},
            agent_id="pc-a",
            only=["ST10"],
            stations=3,
            poll_interval=0.1,
            handshake=True,
        )
        gated = gated_config(
            tmp_path,
            mqtt_port=mosquitto.port,
            modbus_port=plc.port,
            scanners={"ST20": str(port20.agent_path), "ST30": str(port30.agent_path)},
            gate={
                "ST20": {"route": [{"requires": "ST10", "timeout": 2.0}]},
                "ST30": {
                    "route": [{"requires": "ST10", "timeout": 0.3, "on_unreachable": "allow_flag"}]
                },
            },
            agent_id="pc-b",
            only=["ST20", "ST30"],
            stations=3,
        )
        config = ScannerConfig(ack=HostAck(), auto=False)
        async with (
            HandheldScanner(plc.stations[1], port20, config) as sim20,
            HandheldScanner(plc.stations[2], port30, config) as sim30,
        ):
            scan20, scan30 = scanner_of(sim20), scanner_of(sim30)
            with RecordCollector("127.0.0.1", mosquitto.port) as col:
                async with running(maker):
                    ok, nok = await wait_until(lambda: ok_and_nok(col), 30, "an OK and a NOK")

                def stored() -> bool:
                    with contextlib.closing(sqlite3.connect(sqlite_db)) as db:
                        rows = db.execute(
                            "SELECT count(*) FROM records WHERE kind = 'part' AND serial IN (?, ?)",
                            (ok, nok),
                        ).fetchone()
                    return bool(rows[0] == 2)

                await wait_until(stored, 20, "both parts in the store")
                async with running(gated) as agent:
                    await wait_until(lambda: agent.sync.status.connected, 20, "uplink")
                    await wait_until(
                        lambda: all(
                            agent.snapshot()["devices"][f"scan-{st}"] == "up"
                            for st in ("ST20", "ST30")
                        ),
                        20,
                        "scanners up",
                    )
                    assert await scan20(f"SN:{ok}") == "good"
                    assert await scan20(f"SN:{nok}") == "bad"
                    await wait_until(lambda: plc.data_taken(2), 10, "ST20 interlock up")
                    assert await scan30("SN:NEVER-MADE") == "bad"
                    await wait_until(lambda: plc.data_taken(3), 10, "ST30 interlock up")
                    # The store goes away: no answer comes; each station's policy decides.
                    store.stop()
                    assert await scan20(f"SN:{ok}") == "bad"
                    assert await scan30(f"SN:{ok}") == "good"
                    assert agent.asker.unanswered == 2
                    await wait_until(lambda: not plc.data_taken(3), 10, "ST30 released")
                await wait_until(lambda: len(gates(col, "ST20")) >= 3, 10, "ST20 gate records")
                await wait_until(lambda: len(gates(col, "ST30")) >= 2, 10, "ST30 gate records")
                st20, st30 = gates(col, "ST20"), gates(col, "ST30")
    assert [(g["serial"], g["decision"], g["source"]) for g in st20] == [
        (ok, "allowed", "store"),
        (nok, "refused", "store"),
        (ok, "refused", "unreachable"),
    ]
    assert st20[0]["found"]["agent"] == "pc-a"
    assert st20[1]["found"]["result"] == "nok"
    assert [(g["serial"], g["decision"], g["source"]) for g in st30] == [
        ("NEVER-MADE", "refused", "store"),
        (ok, "flagged", "unreachable"),
    ]
