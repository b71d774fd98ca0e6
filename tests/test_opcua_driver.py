"""The OPC UA driver against the OPC UA station simulator (a real asyncua server): parts end
to end against ground truth, the server restarting with other namespace indexes, a node that
appears later, a server that goes away, and the probe and browse an integrator uses. Security
is in ``test_opcua_security.py``."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("asyncua")

from asyncua import ua

from drivers.opcua.config import OpcUaDevice
from drivers.opcua.driver import OpcUaDriver
from edge_agent.config import agent_model
from kernel.model import DeviceState, Quality
from simulators.consumer import RecordCollector
from simulators.opcua_server import OpcUaStationServer
from simulators.scenario import OPCUA_NAMESPACE, demo_config, station_name
from simulators.station import StationModel
from tests.modbus_helpers import Collector
from tests.modbus_helpers import start_device as run
from tests.modbus_helpers import stop_task as stop
from tests.mqtt_helpers import Mosquitto
from tests.opcua_helpers import device, good
from tests.parts_helpers import check_part, parts_by_station, run_agent_until
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


# ---- end to end ----------------------------------------------------------------------------


def opcua_config(endpoint: str, mqtt_port: int, tmp: Path, stations: int, **kw: Any) -> Any:
    raw = demo_config(
        modbus_port=1,
        mqtt_port=mqtt_port,
        buffer_path=str(tmp / "buffer.db"),
        stations=stations,
        agent_id="opcua-pc1",
        opcua_endpoint=endpoint,
        **kw,
    )
    cfg = agent_model().model_validate(raw)
    assert cfg.issues() == []
    return cfg


async def test_handshake_parts_match_ground_truth_across_a_server_restart(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Two handshake stations: subscriptions trigger, one Read takes the snapshot, the part is
    committed, then data_taken is written. Midway the server restarts with its namespace at
    another index: no part is lost and none is recorded twice."""
    sims = [
        StationModel(unit_id=i + 1, serial_prefix=f"U{i}-", cycle_time=0.02, handshake=True)
        for i in range(2)
    ]
    async with OpcUaStationServer(sims) as server:
        cfg = opcua_config(server.endpoint, mosquitto.port, tmp_path, 2, handshake=True)
        with RecordCollector("127.0.0.1", mosquitto.port) as col:
            from edge_agent.daemon import Agent

            agent = Agent(cfg)
            stop_agent = asyncio.Event()
            task = asyncio.create_task(agent.run(stop_agent))
            try:
                await wait_until(
                    lambda: all(server.plc(i + 1).parts_released >= 10 for i in range(2)),
                    within=60,
                    what="10 parts released by each station",
                )
                await server.stop()
                server.shift_namespaces = 3
                await server.start()
                assert server.namespace_index == 5
                released = [server.plc(i + 1).parts_released for i in range(2)]
                await wait_until(
                    lambda: all(
                        server.plc(i + 1).parts_released >= released[i] + 10 for i in range(2)
                    ),
                    within=60,
                    what="10 more parts each after the restart",
                )
            finally:
                stop_agent.set()
                await task
            committed = agent.buffer.committed_seq
            assert col.wait_for(lambda d: len(d.records) >= committed, 20)
    parts = parts_by_station(col.data.records)
    for i, model in enumerate(server.stations):
        counters = [p["counter"] for p in parts[station_name(i)]]
        assert counters == list(range(1, len(counters) + 1)), station_name(i)
        assert len(counters) >= 20
        for p in parts[station_name(i)]:
            check_part(p, model)
    devices = [r for r in col.data.records.values() if r["kind"] == "readings"]
    assert any("part_serial" in r.get("errors", {}) for r in devices), "the outage is recorded"


async def test_a_pulse_shorter_than_a_publish_still_makes_its_part(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Without a handshake: the cycle-complete pulse lasts 100 ms, the server publishes every
    250 ms, so most pulses start and end between two publishes. The trigger's queue keeps
    each of them, so every cycle gets its part record, no gap, each with its own serial.
    (The snapshot is read after the publish, so it may see the next cycle: the counter and
    serial then both belong to it, and values that the PLC clears with the pulse need the
    handshake, which holds them; see the test above. The cycle is long enough that the read
    lands within the next cycle even on a loaded CI machine: a read later than a whole cycle
    is a gap, rightly recorded, and not what this test is about.)"""
    sims = [StationModel(unit_id=1, serial_prefix="C-", cycle_time=1.0)]
    async with OpcUaStationServer(sims) as server:
        raw = demo_config(
            modbus_port=1,
            mqtt_port=mosquitto.port,
            buffer_path=str(tmp_path / "buffer.db"),
            agent_id="opcua-pc1",
            opcua_endpoint=server.endpoint,
        )
        raw["devices"][0]["publishing_interval"] = 0.25
        cfg = agent_model().model_validate(raw)
        with RecordCollector("127.0.0.1", mosquitto.port) as col:
            agent = await run_agent_until(cfg, lambda: parts_in(col) >= 8, "8 part records")
            committed = agent.buffer.committed_seq
            assert col.wait_for(lambda d: len(d.records) >= committed, 20)
    parts = parts_by_station(col.data.records)["ST10"]
    counters = [p["counter"] for p in parts]
    assert counters == list(range(counters[0], counters[0] + len(counters)))
    assert not [r for r in col.data.records.values() if r["kind"] == "gap"]
    model = server.stations[0]
    for p in parts:
        assert p["serial"] == model.serial(p["counter"] - 1), p


async def test_a_restart_without_handshake_records_the_missed_cycles_as_a_gap(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """No handshake: while the server is down, cycles go by unseen. After the restart the
    cycle counter jumps, and the jump is a gap record saying how many parts went by, so
    part records + missed = every cycle from the first to the last."""
    sims = [StationModel(unit_id=1, serial_prefix="G-", cycle_time=0.2)]
    async with OpcUaStationServer(sims) as server:
        cfg = opcua_config(server.endpoint, mosquitto.port, tmp_path, 1)
        with RecordCollector("127.0.0.1", mosquitto.port) as col:
            from edge_agent.daemon import Agent

            agent = Agent(cfg)
            stop_agent = asyncio.Event()
            task = asyncio.create_task(agent.run(stop_agent))
            try:
                await wait_until(lambda: parts_in(col) >= 3, within=30, what="3 parts")
                stopped_at = time.time()
                await server.stop()
                # Down for several cycles, as measured on the PLC's own clock.
                counter = server.stations[0].cycle_at(asyncio.get_running_loop().time())[0]
                await wait_until(
                    lambda: (
                        server.stations[0].cycle_at(asyncio.get_running_loop().time())[0]
                        >= counter + 5
                    ),
                    within=10,
                    what="five cycles with the server down",
                )
                await server.start()
                restarted_at = time.time()
                before = parts_in(col)
                await wait_until(lambda: parts_in(col) >= before + 3, within=30, what="parts again")
            finally:
                stop_agent.set()
                await task
            committed = agent.buffer.committed_seq
            assert col.wait_for(lambda d: len(d.records) >= committed, 20)
    records = [r for _, r in sorted(col.data.records.items()) if r["kind"] in ("part", "gap")]
    gaps = [r for r in records if r["kind"] == "gap"]
    assert gaps, "the missed cycles are recorded"
    covered = [r["counter"] for r in records if r["kind"] == "part" and r["counter"]]
    missed = sum(g["missed"] for g in gaps)
    assert len(covered) + missed == covered[-1] - covered[0] + 1
    # The window in which the subscription's changes could have been lost is stated once,
    # from the last publish before the stop to the current values after the restart.
    windows = [r for r in col.data.records.values() if r["kind"] == "unobserved"]
    assert len(windows) == 1, windows
    (window,) = windows
    subscribed = {p.name for p in cfg.devices[0].points if p.report.value == "on_change"}
    assert set(window["points"]) == subscribed
    assert window["station"] == "ST10"
    assert window["device"] == cfg.devices[0].name
    assert "subscription rebuilt" in window["reason"]
    since, until = (epoch(window[k]) for k in ("since", "until"))
    assert stopped_at - 5 < since <= stopped_at + 0.01 < restarted_at <= until


def epoch(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def parts_in(col: RecordCollector) -> int:
    return sum(1 for r in list(col.data.records.values()) if r["kind"] == "part")


# ---- points that fail, servers that go away -------------------------------------------------


async def test_a_missing_node_is_bad_with_the_reason_until_it_appears(tmp_path: Path) -> None:
    """ST20 does not exist yet: its point is BAD (the server says BadNodeIdUnknown) while the
    other points read; once the node is added, it is watched without a reconnect."""
    sims = [StationModel(unit_id=1, serial_prefix="M-")]
    async with OpcUaStationServer(sims) as server:
        dev = device(server.endpoint, retry_interval=0.2)
        late = {"name": "late", "node": f"nsu={OPCUA_NAMESPACE};s=ST20.late"}
        dev = OpcUaDevice.model_validate(
            {**dev.model_dump(), "points": [*dev.model_dump()["points"], late]}
        )
        driver = OpcUaDriver(dev)
        sink = Collector()
        task = await run(driver, sink)
        try:
            await wait_until(
                lambda: sink.of("late") and good(sink, "part_serial"), what="first values"
            )
            (first,) = sink.of("late")[:1]
            assert first.quality is Quality.BAD
            assert first.error == "monitored item refused: BadNodeIdUnknown"
            assert driver.status.state is DeviceState.UP
            asyncua_server = server._server
            assert asyncua_server is not None
            parent = asyncua_server.get_node(server.node_id(1))
            node = await parent.add_variable(
                ua.NodeId("ST20.late", server.namespace_index),
                ua.QualifiedName("late", server.namespace_index),
                ua.Variant(42, ua.VariantType.UInt16),
            )
            await wait_until(lambda: good(sink, "late") == [42], what="the late node's value")
            await node.write_value(ua.Variant(43, ua.VariantType.UInt16))
            await wait_until(lambda: good(sink, "late") == [42, 43], what="its next change")
            assert driver.status.reconnects == 0
        finally:
            await stop(task)


async def test_a_server_that_is_not_there_is_down_with_the_reason() -> None:
    from simulators.broker import free_port

    port = free_port()
    driver = OpcUaDriver(
        device(f"opc.tcp://127.0.0.1:{port}/", backoff_initial=0.05, backoff_max=0.1)
    )
    sink = Collector()
    task = await run(driver, sink)
    try:
        await wait_until(lambda: driver.status.reconnects >= 2, what="two attempts")
    finally:
        await stop(task)
    assert driver.status.state is DeviceState.DOWN
    assert f"connection to opc.tcp://127.0.0.1:{port}/ refused" in (driver.status.last_error or "")


async def test_a_dropped_connection_resumes_the_session_and_misses_nothing() -> None:
    """The network drops every connection; the server keeps the session. The device is down
    at once (one outage record), asyncua reactivates the session and transfers the
    subscription (no rebuild), and every counter value of the meantime still arrives."""
    sims = [StationModel(unit_id=1, serial_prefix="D-", cycle_time=0.05)]
    async with OpcUaStationServer(sims) as server:
        dev = device(server.endpoint, backoff_initial=0.05, backoff_max=0.2)
        # The server keeps each item's changes while nobody asks for them, up to its queue:
        # deep enough for the seconds a reconnect takes.
        points = [p.model_copy(update={"queue_size": 1000}) for p in dev.points]
        driver = OpcUaDriver(dev.model_copy(update={"points": points}))
        sink = Collector()
        task = await run(driver, sink)
        try:
            await wait_until(lambda: len(good(sink, "cycle_counter")) >= 4, what="counters")
            server.drop_connections()
            await wait_until(
                lambda: any(o.quality is Quality.BAD for o in sink.of("part_serial")),
                what="the loss recorded",
            )
            await wait_until(
                lambda: driver.status.state is DeviceState.UP, within=20, what="resumed"
            )
            seen = max(good(sink, "cycle_counter"))
            await wait_until(
                lambda: max(good(sink, "cycle_counter")) >= seen + 4, what="counting on"
            )
        finally:
            await stop(task)
    assert driver.status.reconnects == 0, "resumed, not rebuilt"
    counters = sorted(set(good(sink, "cycle_counter")))
    assert counters == list(range(counters[0], counters[-1] + 1)), "a change was missed"
    outages = [o for o in sink.of("part_serial") if o.quality is Quality.BAD]
    assert len(outages) == 1
    assert not [o for o in sink.all if o.unobserved], "nothing was missed"
    assert outages[0].error == "connection to the server lost; resuming the session"


# ---- integrator tools ------------------------------------------------------------------------


async def test_probe_explains_each_point(tmp_path: Path) -> None:
    from edge_agent.config import parse_config
    from edge_agent.probe import format_table, probe, to_json

    sims = [StationModel(unit_id=1, serial_prefix="P-")]
    async with OpcUaStationServer(sims) as server:
        cfg = parse_config(
            "agent: {site: s, line: l, id: a}\n"
            "stations: [{name: ST10}]\n"
            "devices:\n"
            "  - name: press1\n"
            "    type: opcua\n"
            f"    endpoint: {server.endpoint}\n"
            f"    namespace: {OPCUA_NAMESPACE}\n"
            "    points:\n"
            f"      - {{name: serial, node: 'nsu={OPCUA_NAMESPACE};s=ST10.part_serial'}}\n"
            "      - {name: force, browse_path: ST10/final_force, type: float, unit: kN}\n"
            "      - {name: counter, browse_path: ST10/cycle_counter, type: string}\n"
            "      - {name: nope, browse_path: ST10/nope}\n"
            f"      - {{name: ghost, node: 'nsu={OPCUA_NAMESPACE};s=ST10.ghost'}}\n"
            "      - {name: other, node: 'nsu=urn:elsewhere;s=X'}\n",
            "probe.yaml",
        )
        (result,) = await probe(cfg)
    rows = {p.name: p for p in result.points}
    assert result.connected
    assert rows["serial"].type == "String"
    assert str(rows["serial"].value).startswith("P-")
    assert rows["serial"].protocol_address == f"ns={server.namespace_index};s=ST10.part_serial"
    assert (rows["force"].type, rows["force"].quality) == ("Float", Quality.GOOD)
    assert rows["counter"].error == "expected string, got an integer"
    assert rows["nope"].error == "browse path 'ST10/nope' leads nowhere: BadNoMatch"
    assert rows["ghost"].error == "no such node on the server (check the NodeId, or browse for it)"
    assert rows["other"].error == "the server has no namespace 'urn:elsewhere'"
    table = format_table([result])
    assert "down" not in table.splitlines()[0]
    assert to_json([result])[0]["points"][0]["source_timestamp"].endswith("Z")


async def test_browse_prints_points_that_validate(tmp_path: Path) -> None:
    import io
    import sys

    import yaml

    from edge_agent.config import parse_config
    from edge_agent.probe import browse

    sims = [StationModel(unit_id=1, serial_prefix="B-")]
    async with OpcUaStationServer(sims) as server:
        text = (
            "agent: {site: s, line: l, id: a}\n"
            "stations: [{name: ST10}]\n"
            "devices:\n"
            f"  - {{name: press1, type: opcua, endpoint: '{server.endpoint}', "
            "points: [{name: x, node: 'i=2258'}]}\n"
        )
        cfg = parse_config(text, "browse.yaml")
        out = io.StringIO()
        saved, sys.stdout = sys.stdout, out
        try:
            status = await browse(cfg, "press1", f"nsu={OPCUA_NAMESPACE};s=ST10", 2, True)
        finally:
            sys.stdout = saved
    assert status == 0
    points = yaml.safe_load(out.getvalue())["points"]
    by_name = {p["name"]: p for p in points}
    assert by_name["part_serial"] == {
        "name": "part_serial",
        "node": f"nsu={OPCUA_NAMESPACE};s=ST10.part_serial",
        "type": "string",
    }
    assert by_name["cycle_complete"]["type"] == "bool"
    pasted = yaml.safe_dump({"points": points})
    full = text.replace("points: [{name: x, node: 'i=2258'}]}", "points: []}")
    doc = yaml.safe_load(full)
    doc["devices"][0]["points"] = yaml.safe_load(pasted)["points"]
    assert parse_config(yaml.safe_dump(doc), "pasted.yaml").devices[0].point_names()
