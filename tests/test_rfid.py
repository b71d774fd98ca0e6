"""RFID readers end to end: the rfid driver on a real pty and real TCP against the simulated
reader (``simulators.rfid``), whose scene says which tag was in the field when. One arrival per
visit, departures on time even from a silent reader, rejected lines with their bytes, EPCs
turned into the GS1 text the scan rules classify, and a tag's serial bound by the agent to the
PLC's values of that part."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, get_args

import pytest

from drivers.rfid.config import PresetName, RfidDevice
from drivers.rfid.driver import GS, RfidDriver, arrival_text
from drivers.rfid.epc import decode_epc
from drivers.rfid.reads import PRESETS
from edge_agent.config import agent_model
from edge_agent.daemon import Agent
from edge_agent.scan import ScanRule, classify
from kernel.model import Observation, Quality
from simulators.broker import free_port
from simulators.consumer import RecordCollector
from simulators.modbus_server import ModbusStationServer
from simulators.rfid import Fault, LineKind, RfidReaderSim, SentLine, TagScene
from simulators.scenario import demo_config
from simulators.serial_link import NullModem
from simulators.station import StationModel
from tests.modbus_helpers import no_leaks
from tests.mqtt_helpers import Mosquitto
from tests.rfid_helpers import VECTORS as EPC_VECTORS
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

PART_RULE = ScanRule.model_validate(
    {
        "name": "part_tag",
        "gs1": True,
        "require": ["01", "21"],
        "set": {"serial": "21", "product": "01"},
    }
)
SGTIN96 = "3074257BF7194E4000001A85"  # the TDS example: (01)80614141123458 (21)6789


def words(hex_digits: str, bits: int) -> str:
    """``hex_digits`` padded with zeros to whole 16-bit words, as a reader reports them."""
    return hex_digits.ljust((bits + 15) // 16 * 4, "0")


# ---- pure: the config and the arrival text ------------------------------------------------


def test_the_configs_format_names_are_the_presets() -> None:
    assert set(get_args(PresetName)) == set(PRESETS)


def test_a_custom_ignore_pattern_adds_to_the_presets_own() -> None:
    dev = rfid(port="/dev/ttyUSB0", format="alien-text", ignore_pattern="HB")
    fmt = dev.read_format()
    assert fmt.ignore_regex is not None
    assert fmt.ignore_regex.fullmatch("(No Tags)")
    assert fmt.ignore_regex.fullmatch("HB")


# (EPC hex, arrival text, GS1 fields a gs1 rule sees or None when it is no GS1)
ARRIVALS = [
    (SGTIN96, f"{GS}0180614141123458216789", {"01": "80614141123458", "21": "6789"}),
    (
        words("3674257BF6B7A659B2C2BF1", 198),  # SGTIN-198, alphanumeric serial
        f"{GS}01706141411234512132a/b",
        {"01": "70614141123451", "21": "32a/b"},
    ),
    ("3174257BF4499602D2000000", f"{GS}00106141412345678908", {"00": "106141412345678908"}),
    (  # SGLN: GLN (fixed length) then its extension
        "3274257BF46072000000162E",
        f"{GS}41406141411234522545678",
        {"414": "0614141123452", "254": "5678"},
    ),
    (
        words("3774257BF40C0E59B2C2BF1", 170),  # GRAI-170
        f"{GS}80030061414112345232a/b",
        {"8003": "0061414112345232a/b"},
    ),
    # GID-96: decoded, but not a GS1 key: its pure identity URI.
    ("355AB1C60003039000000190", "urn:epc:id:gid:95100000.12345.400", None),
    # Not decodable: the hex.
    ("E2801160600002054CC2096F", "E2801160600002054CC2096F", None),
    ("000000000000000000000000", "000000000000000000000000", None),
]


@pytest.mark.parametrize(("epc", "text", "fields"), ARRIVALS)
def test_an_epc_arrives_as_the_text_the_scan_rules_classify(
    epc: str, text: str, fields: dict[str, str] | None
) -> None:
    assert arrival_text(decode_epc(epc)) == text
    any_gs1 = ScanRule(name="any", gs1=True)
    scan = classify(text, [any_gs1])
    if fields is None:
        assert scan.status == "unclassified"
        assert scan.gs1 is None
    else:
        assert scan.status == "accepted", scan.error
        assert scan.fields == fields
        assert scan.gs1 == fields


@pytest.mark.parametrize("vector", EPC_VECTORS, ids=[v[1] for v in EPC_VECTORS])
def test_every_gs1_scheme_arrives_as_valid_gs1_with_its_ais(vector: tuple[Any, ...]) -> None:
    """The TDS examples of tests/test_rfid_epc.py: each GS1 key's element string, with its GS
    separators, parses back to exactly the AIs epcpy decoded."""
    epc, ais = vector[0], vector[-1]
    scan = classify(arrival_text(decode_epc(epc)), [ScanRule(name="any", gs1=True)])
    if ais:
        assert (scan.status, scan.fields) == ("accepted", ais)
    else:
        assert scan.status == "unclassified"


def test_an_sgtin_tag_sets_serial_and_product_through_the_gs1_rule() -> None:
    scan = classify(arrival_text(decode_epc(SGTIN96)), [PART_RULE])
    assert (scan.status, scan.rule) == ("accepted", "part_tag")
    assert scan.context == {"serial": "6789", "product": "80614141123458"}


# ---- helpers -----------------------------------------------------------------------------------


def rfid(**kw: Any) -> RfidDevice:
    raw = {"type": "rfid", "name": "gate20", "station": "ST20", **kw}
    dev = RfidDevice.model_validate(raw)
    assert dev.issues() == []
    return dev


class Sink:
    """Every batch, with the wall-clock time it was handed over."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[Observation]]] = []

    def __call__(self, batch: Sequence[Observation]) -> None:
        self.batches.append((time.time(), list(batch)))

    def of(self, point: str) -> list[Observation]:
        return [o for _, b in self.batches for o in b if o.point == point]

    def received(self, obs: Observation) -> float:
        return next(at for at, b in self.batches if any(o is obs for o in b))

    def arrivals(self) -> list[Observation]:
        return [o for o in self.of("tag") if o.quality is Quality.GOOD]

    def rejected(self) -> list[Observation]:
        return [o for o in self.of("tag") if o.quality is Quality.BAD]


@contextlib.asynccontextmanager
async def running(driver: RfidDriver, sink: Sink) -> AsyncIterator[None]:
    task = asyncio.create_task(driver.run(sink), name=f"device:{driver.name}")
    try:
        await wait_until(lambda: driver.status.state.value == "up", what="the reader open")
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def leak_free() -> AsyncIterator[None]:
    """No task or thread a driver test started outlives it. (The agent's test has the loop's
    default executor thread, which lives until the loop closes: conftest checks it then.)"""
    async with no_leaks():
        yield


def scene_from_now(**kw: Any) -> TagScene:
    """A scene whose first tag enters shortly after the agent's side is open."""
    return TagScene(t0=time.monotonic() + 0.1, **kw)


def visit_reads(sim: RfidReaderSim, k: int) -> list[SentLine]:
    return [s for s in sim.reads() if s.k == k and s.delivered]


def wall(monotonic: float) -> float:
    return monotonic + (time.time() - time.monotonic())


# ---- the driver alone ----------------------------------------------------------------------------

# Reads every 50 ms for 0.3 s per visit, 0.55 s of silence between visits. Visits are of
# different tags, so the time-outs only have to bridge the gaps within one visit (an event loop
# stalled for longer than them would split a visit, as a reader that stopped reading does).
# A visit's departure falls due at most dwell + DEPARTURE = 0.6 s after its arrival, 0.2 s
# before the next tag arrives: the order of the two is the deduper's, not the scheduler's (at
# a 0.6 s cycle both fell due at the same instant and a late read swapped them).
SCENE = {"cycle_time": 0.8, "dwell": 0.3, "reads_per_second": 20, "antennas": (1, 2)}
WINDOW, DEPARTURE = 0.25, 0.3


@pytest.mark.usefixtures("leak_free")
async def test_each_visit_is_one_arrival_and_one_departure_on_a_serial_port(
    tmp_path: Path,
) -> None:
    async with NullModem(tmp_path, "ttyAGENT", "ttyREADER") as cable:
        dev = rfid(
            port=str(cable.a_path), window=WINDOW, departures=True, departure_after=DEPARTURE
        )
        driver = RfidDriver(dev)
        sink = Sink()
        async with running(driver, sink):
            sim = RfidReaderSim(scene_from_now(**SCENE), fmt="csv", serial_port=cable.b_path)
            async with sim:
                await wait_until(
                    lambda: len(sink.of("tag_departed")) >= 3 and len(sink.arrivals()) >= 4,
                    within=10,
                    what="three visits and the next tag",
                )
    arrivals, departures = sink.arrivals(), sink.of("tag_departed")
    assert sink.rejected() == []
    scene = sim.scene
    for k in range(3):
        visit, reads = scene.visit(k), visit_reads(sim, k)
        arrival, departure = arrivals[k], departures[k]
        # One arrival per visit: the tag's first read, its EPC decoded for the scan rules.
        assert arrival.detail is not None
        assert departure.detail is not None
        assert arrival.detail["epc"] == visit.epc == departure.detail["epc"] == departure.value
        assert arrival.value == f"{GS}01{visit.gtin}21{visit.serial}"
        assert arrival.detail["scheme"] == "sgtin-96"
        assert arrival.detail["uri"] == decode_epc(visit.epc).uri
        assert arrival.detail["reads"] == 1
        assert (arrival.detail["antenna"], arrival.detail["rssi"]) == (
            reads[0].antenna,
            reads[0].rssi,
        )
        # Stamped with the wall clock, at the first read.
        assert -0.01 < arrival.ts - wall(reads[0].at) < 0.5
        # One departure: every read of the visit counted, due departure_after after the last.
        assert departure.detail["reads"] == len(reads)
        assert departure.detail["antennas"] == ",".join(
            map(str, sorted({r.antenna for r in reads if r.antenna is not None}))
        )
        dwell = departure.detail["dwell"]
        assert isinstance(dwell, float)
        assert departure.ts - arrival.ts == pytest.approx(dwell + DEPARTURE, abs=0.01)
        # ... and recorded before the next tag's arrival (the deduper orders them).
        assert sink.received(departure) <= sink.received(arrivals[k + 1])
    # No tag arrived twice while it was in the field.
    epcs = [a.value for a in arrivals]
    assert len(epcs) == len(set(epcs))


@pytest.mark.usefixtures("leak_free")
async def test_a_silent_reader_still_reports_the_departure_on_time() -> None:
    """One tag passes, then nothing for a minute: only the deduper's deadline can tell."""
    scene = scene_from_now(cycle_time=60.0, dwell=0.2, reads_per_second=20)
    async with RfidReaderSim(scene, fmt="impinj-json", tcp=True) as sim:
        dev = rfid(
            host="127.0.0.1", tcp_port=sim.port, format="impinj-json", window=0.1,
            departures=True, departure_after=0.3,
        )  # fmt: skip
        driver = RfidDriver(dev)
        sink = Sink()
        async with running(driver, sink):
            await sim.wait_clients()
            await wait_until(lambda: bool(sink.of("tag_departed")), within=5, what="the departure")
    (arrival,) = sink.arrivals()
    (departure,) = sink.of("tag_departed")
    reads = visit_reads(sim, 0)
    assert departure.detail is not None
    assert departure.detail["reads"] == len(reads) >= 3
    assert -0.01 < departure.ts - (wall(reads[-1].at) + 0.3) < 0.5
    assert sink.received(departure) - departure.ts < 1.0, "the departure came late"
    assert arrival.detail is not None
    assert arrival.detail["reader_time"]  # impinj's own time stamp


@pytest.mark.usefixtures("leak_free")
async def test_a_tag_still_in_the_field_after_a_reconnect_does_not_arrive_again(
    tmp_path: Path,
) -> None:
    """The deduper belongs to the driver, not to one connection: a cable pulled for less than
    the window is a pause in the reads, not a new visit."""
    scene = scene_from_now(cycle_time=60.0, dwell=30.0, reads_per_second=20)
    async with NullModem(tmp_path, "ttyAGENT", "ttyREADER") as cable:
        dev = rfid(
            port=str(cable.a_path), format="epc", window=2.0, backoff_initial=0.05,
            backoff_max=0.1,
        )  # fmt: skip
        driver = RfidDriver(dev)
        sink = Sink()
        sim = RfidReaderSim(scene, fmt="epc", serial_port=cable.b_path)
        async with running(driver, sink), sim:
            await wait_until(lambda: bool(sink.arrivals()), what="the arrival")
            cable.unplug()
            await wait_until(lambda: driver.status.state.value == "down", what="down")
            cable.replug()
            await wait_until(lambda: driver.status.state.value == "up", what="up again")
            before = driver.reads
            await wait_until(lambda: driver.reads >= before + 5, what="reads again")
    assert len(sink.arrivals()) == 1
    (outage,) = sink.rejected()  # the outage, recorded once
    assert outage.error


@pytest.mark.usefixtures("leak_free")
async def test_rejected_lines_are_bad_scans_with_every_byte_and_reads_go_on(
    tmp_path: Path,
) -> None:
    async with NullModem(tmp_path, "ttyAGENT", "ttyREADER") as cable:
        driver = RfidDriver(rfid(port=str(cable.a_path), suffix="CR", window=WINDOW))
        sink = Sink()
        async with running(driver, sink):
            sim = RfidReaderSim(scene_from_now(**SCENE), fmt="csv", serial_port=cable.b_path)
            async with sim:
                await wait_until(lambda: bool(sink.arrivals()), what="the first arrival")
                for fault in Fault:
                    sim.inject(fault)
                await wait_until(lambda: len(sink.rejected()) >= 3, what="three rejections")
                await wait_until(lambda: len(sink.arrivals()) >= 2, what="reads after them")
    faults = [s for s in sim.sent if s.kind is not LineKind.READ]
    rejected = sink.rejected()
    assert len(rejected) == len(faults) == 3
    by_kind = dict(zip([s.kind for s in faults], zip(faults, rejected, strict=True), strict=True))
    expected = {
        LineKind.GARBAGE: "not text: byte 0xfe at position 1",
        LineKind.TRUNCATED: "line does not match the csv format",
        LineKind.NON_HEX: f"EPC {by_kind[LineKind.NON_HEX][0].epc!r} is not hexadecimal",
    }
    for kind, (sent, obs) in by_kind.items():
        assert obs.value is None
        assert obs.error == expected[kind]
        assert obs.detail is not None
        assert obs.detail["length"] == len(sent.data)  # the line end included
        shown = obs.detail["line"]
        assert isinstance(shown, str)
        assert shown.encode("ascii").decode("unicode_escape").encode("latin-1") == sent.data
    assert driver.status.reads_failed == 3
    assert driver.status.state.value == "up"


@pytest.mark.usefixtures("leak_free")
async def test_only_the_listed_antennas_count() -> None:
    scene = scene_from_now(**{**SCENE, "antennas": (1, 2, 3)})
    async with RfidReaderSim(scene, fmt="alien-text", tcp=True) as sim:
        dev = rfid(
            host="127.0.0.1", tcp_port=sim.port, format="alien-text", antennas=[2],
            window=WINDOW, departures=True, departure_after=DEPARTURE,
        )  # fmt: skip
        driver = RfidDriver(dev)
        sink = Sink()
        async with running(driver, sink):
            await sim.wait_clients()
            await wait_until(lambda: len(sink.of("tag_departed")) >= 2, what="two visits")
    for k, (arrival, departure) in enumerate(
        zip(sink.arrivals()[:2], sink.of("tag_departed")[:2], strict=True)
    ):
        on_2 = [r for r in visit_reads(sim, k) if r.antenna == 2]
        assert arrival.detail is not None
        assert departure.detail is not None
        assert arrival.detail["antenna"] == 2
        assert (departure.detail["antennas"], departure.detail["reads"]) == ("2", len(on_2))
    assert driver.other_antennas > 0
    assert sink.rejected() == []


@pytest.mark.usefixtures("leak_free")
async def test_a_reader_that_connects_to_the_agent_with_its_own_line_format() -> None:
    """Lines the simulator cannot make: tags that are no GS1, heartbeats, a read without its
    antenna where the antennas count."""
    port = free_port()
    dev = rfid(
        listen_host="127.0.0.1", listen_port=port, suffix="CRLF",
        line_pattern=r"EPC=(?P<epc>[0-9A-Fa-f ]*);ANT=(?P<antenna>\d*)",
        ignore_pattern=r"HB \d+", antennas=[1], window=5.0,
    )  # fmt: skip
    driver = RfidDriver(dev)
    sink = Sink()
    lines = [
        "HB 1",
        f"EPC={SGTIN96};ANT=1",
        f"EPC={SGTIN96};ANT=1",  # the same visit
        "EPC=E2801160600002054CC2096F;ANT=1",  # a factory EPC: no GS1
        "EPC=355AB1C60003039000000190;ANT=1",  # GID-96
        f"EPC={SGTIN96};ANT=",  # no antenna: cannot be counted
        "",
        "HB 2",
    ]
    async with running(driver, sink):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write("".join(f"{line}\r\n" for line in lines).encode())
            await writer.drain()
            await wait_until(
                lambda: len(sink.of("tag")) >= 4 and driver.skipped_lines >= 2, what="the lines"
            )
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    tags = sink.of("tag")
    assert [o.value for o in tags] == [
        f"{GS}0180614141123458216789",
        "E2801160600002054CC2096F",
        "urn:epc:id:gid:95100000.12345.400",
        None,
    ]
    assert tags[1].detail is not None
    assert "header E2" in str(tags[1].detail["epc_error"])
    assert tags[3].error == "no antenna in the read, and antennas lists the ones that count"
    assert (driver.reads, driver.skipped_lines) == (4, 2)  # the blank line is no line at all


# ---- the agent: a tag's serial binds the PLC's values ---------------------------------------


def station_config(tmp: Path, mqtt_port: int, modbus_port: int, reader_port: str) -> Any:
    raw = demo_config(
        modbus_port=modbus_port,
        mqtt_port=mqtt_port,
        buffer_path=str(tmp / "buffer.db"),
        stations=1,
        agent_id="rfid-pc1",
    )
    station = raw["stations"][0]
    station["context"] = {}  # serial and product come from the tag, not the PLC
    station["scans"] = {
        # The whole reader: its arrivals are scans, its departures stay readings.
        "sources": [{"device": "gate1"}],
        "rules": [PART_RULE.model_dump(exclude_defaults=True)],
    }
    raw["devices"].append(
        {
            "name": "gate1", "type": "rfid", "station": station["name"], "port": reader_port,
            "window": WINDOW, "departures": True, "departure_after": DEPARTURE,
        }
    )  # fmt: skip
    raw["control"] = {"socket": str(tmp / "control.sock")}
    cfg = agent_model().model_validate(raw)
    assert cfg.issues() == []
    return cfg


def accepted(record: dict[str, Any]) -> bool:
    return bool(record["kind"] == "scan" and record["status"] == "accepted")


def count(col: RecordCollector, keep: Callable[[dict[str, Any]], bool]) -> int:
    with col.lock:
        return sum(1 for r in col.data.records.values() if keep(r))


async def test_a_tags_serial_binds_the_plcs_values(tmp_path: Path, mosquitto: Mosquitto) -> None:
    model = StationModel(unit_id=1, cycle_time=0.6)
    async with ModbusStationServer([model]) as plc, NullModem(tmp_path, "ttyA", "ttyR") as cable:
        station = plc.stations[0]
        cfg = station_config(tmp_path, mosquitto.port, plc.port, str(cable.a_path))
        scene = TagScene.for_station(station, dwell_fraction=0.5, reads_per_second=20)
        with RecordCollector("127.0.0.1", mosquitto.port) as col:
            agent = Agent(cfg)
            stop_agent = asyncio.Event()
            task = asyncio.create_task(agent.run(stop_agent))
            try:
                async with RfidReaderSim(scene, fmt="csv", serial_port=cable.b_path):
                    await wait_until(lambda: count(col, accepted) >= 6, within=30, what="6 tags")
            finally:
                stop_agent.set()
                await task
            committed = agent.buffer.committed_seq
            assert col.wait_for(lambda d: len(d.records) >= committed, 20)
    records = [r for _, r in sorted(col.data.records.items())]
    scans = [r for r in records if r["kind"] == "scan"]
    # Each visit of a tag the agent saw from its start is one accepted scan; the tag's serial
    # and GTIN come from its EPC through the GS1 rule.
    serials = [r["fields"]["21"] for r in scans]
    assert all(r["status"] == "accepted" for r in scans), scans
    assert len(serials) == len(set(serials)), "a tag arrived twice in one visit"
    for rec in scans:
        k = int(rec["fields"]["21"]) - scene.first_serial
        assert rec["detail"]["epc"] == scene.epc(k)
        assert rec["fields"]["01"] == scene.gtin
        assert rec["text"] == f"{GS}01{scene.gtin}21{scene.serial(k)}"
    contexts = [r for r in records if r["kind"] == "context" and r["key"] == "serial"]
    assert [c["value"] for c in contexts] == serials
    # Departures are readings of the tag that left: they never change the context.
    departed = [r for r in records if r["kind"] == "readings" and r["device"] == "gate1"]
    assert len(departed) >= 2
    # Each departure counts its visit's reads (about 6). The scene follows the PLC's clock,
    # so the first visit may have begun before the reader simulator started sending: only
    # the later visits are whole.
    for r in departed[1:]:
        assert r["details"]["tag_departed"]["reads"] >= 3
    # Every PLC reading carries the serial of the last tag that arrived before it (seq order);
    # when that tag is the part the PLC shows (its own serial register), the two agree.
    current: str | None = None
    agree = 0
    for r in records:
        if r["kind"] == "scan" and r["status"] == "accepted":
            current = r["fields"]["21"]
        elif r["kind"] == "readings" and r["device"] == "press1":
            assert r["ctx"]["serial"] == current, r
            shown = r["values"].get("part_serial")
            agree += (
                isinstance(shown, str) and current is not None and int(shown[2:]) == int(current)
            )
    assert agree >= 5, "the PLC's values were never bound to the tag's part"
