"""The scanner simulators: their codes (pure, checked with biip, not with the agent's
classifier, so a bug both share cannot pass), their timing against the station's clock, their
faults, the triggered reader's protocol and the recording of what the agent answers -- over a
real pty pair and over TCP in both directions."""

from __future__ import annotations

import itertools
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from biip import ParseConfig
from biip.gs1_messages import GS1Message
from pymodbus.client import AsyncModbusTcpClient

from simulators.modbus_server import ModbusStationServer
from simulators.scanner import (
    CR,
    CRLF,
    GS,
    HONEYWELL_BAD,
    LF,
    STX_ETX,
    Fault,
    Faults,
    Framing,
    HandheldScanner,
    HostAck,
    MaterialScan,
    PtyTransport,
    ScannerConfig,
    Symbol,
    TcpServerTransport,
    TriggerConfig,
    TriggeredReader,
    gs1_value,
    gtin14,
    lot_label,
    part_code,
)
from simulators.station import GTIN, REGISTER_MAP, StationModel
from tests.modbus_helpers import no_leaks, wait_until
from tests.scanner_sim_helpers import CYCLE0, on_demand, pty_agent, split_frames, tcp_agent

pytestmark = pytest.mark.timeout(30)

CSET82 = set("!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
BIIP = ParseConfig(gs1_element_strings_verify_date=True, separator_chars=(GS,))


@pytest.fixture(autouse=True)
async def _no_leaks() -> AsyncIterator[None]:
    async with no_leaks():
        yield


def gs1(data: str) -> dict[str, str]:
    """AI -> value of a GS1 element string (no AIM id), check digits verified; else raise."""
    message = GS1Message.parse(data, config=BIIP)
    for es in message.element_strings:
        if es.gtin_error:
            raise ValueError(es.gtin_error)
    return {es.ai.ai: es.value for es in message.element_strings}


# -- the codes (pure) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digits", "expected"),
    [
        ("0950110102091", "09501101020917"),
        ("09501101020917", "09501101020917"),
        ("0400638133393", "04006381333931"),
        ("1234567890123", "12345678901231"),
    ],
)
def test_gtin14_appends_or_checks_the_check_digit(digits: str, expected: str) -> None:
    assert gtin14(digits) == expected


@pytest.mark.parametrize(
    ("digits", "message"),
    [
        ("09501101020918", "has check digit 8, expected 7"),
        ("0950110102091A", "13 or 14 digits"),
        ("095011010209", "13 or 14 digits"),
        ("٠٩٥٠١١٠١٠٢٠٩١", "13 or 14 digits"),  # Arabic-Indic digits: isdigit(), not GS1
    ],
)
def test_gtin14_refuses_what_is_not_a_gtin(digits: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gtin14(digits)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SN00000001", "SN00000001"),
        ("A-00000001", "A-00000001"),
        ("x_y.z/1", "x_y.z/1"),
        ("SN 1", "SN%201"),
        ("50%", "50%25"),
        ("#1", "%231"),
        ("é", "%C3%A9"),
        ("a~b", "a%7Eb"),
    ],
)
def test_gs1_value_percent_encodes_what_cset82_lacks(text: str, expected: str) -> None:
    assert gs1_value(text) == expected
    assert set(gs1_value(text)) <= CSET82
    assert urllib.parse.unquote(gs1_value(text)) == text


def test_gs1_value_is_reversible_over_every_latin1_character() -> None:
    text = "".join(chr(c) for c in range(32, 256))
    assert set(gs1_value(text)) <= CSET82
    assert urllib.parse.unquote(gs1_value(text)) == text


def test_part_code_carries_the_station_serial_and_lot_as_valid_gs1() -> None:
    model = StationModel(parts_per_lot=3)
    assert part_code(model, 0).encode() + b"\r" == CYCLE0
    for k in (0, 1, 2, 3, 99):
        code = part_code(model, k)
        assert code.startswith("]d2")
        assert gs1(code[3:]) == {"01": GTIN, "21": model.serial(k), "10": model.lot(k)}
    bare = part_code(model, 4, Symbol(aim=None, lot=False))
    assert bare == f"01{GTIN}21{model.serial(4)}"
    assert gs1(bare) == {"01": GTIN, "21": model.serial(4)}


async def test_a_serial_outside_cset82_is_sent_percent_encoded() -> None:
    model = StationModel(serial_prefix="S #", lot_prefix="L~")
    assert model.serial(0) == "S #00000001"
    code = part_code(model, 0)
    assert gs1(code[3:]) == {"01": GTIN, "21": "S%20%2300000001", "10": "L%7E00001"}
    async with HandheldScanner(model, TcpServerTransport(), on_demand()) as scanner:
        scan = await scanner.scan_part(cycle=0)
    assert scan.payload == code.encode()
    assert scan.serial == "S%20%2300000001"
    assert scan.lot == "L%7E00001"
    assert urllib.parse.unquote(scan.serial) == model.serial(0)


async def test_garbage_never_ends_a_frame_early_and_always_holds_a_control() -> None:
    for framing in (CR, CRLF, STX_ETX):
        config = on_demand(framing=framing, faults=Faults(garbage_length=4, seed=11))
        async with HandheldScanner(StationModel(), TcpServerTransport(), config) as scanner:
            for _ in range(200):
                await scanner.scan_part(fault=Fault.GARBAGE)
        for scan in scanner.scans:
            assert len(scan.payload) == 4
            assert not set(scan.payload) & set(framing.prefix + framing.suffix + GS.encode())
            assert any(b < 0x20 for b in scan.payload), scan.payload
            assert split_frames(scan.frame, framing) == [scan.frame]


def test_a_spoiled_check_digit_is_caught_by_biip() -> None:
    model = StationModel()
    good, bad = part_code(model, 7), part_code(model, 7, bad_check_digit=True)
    assert [i for i, (a, b) in enumerate(zip(good, bad, strict=True)) if a != b] == [18]
    with pytest.raises(ValueError, match="Invalid GTIN check digit"):
        gs1(bad[3:])


def test_lot_label_is_valid_gs1() -> None:
    assert lot_label("LOT 7") == f"]d201{GTIN}10LOT%207"
    assert gs1(lot_label("LOT4711")[3:]) == {"01": GTIN, "10": "LOT4711"}
    assert lot_label("X", gtin="0400638133393", aim=None) == "010400638133393110X"


@pytest.mark.parametrize(
    ("model", "config", "message"),
    [
        (StationModel(handshake=True), ScannerConfig(), "handshake station"),
        (StationModel(serial_prefix="A B C D E "), ScannerConfig(), "longer than 20"),
        (StationModel(), ScannerConfig(symbol=Symbol(gtin="09501101020918")), "check digit 8"),
        (StationModel(), ScannerConfig(framing=Framing(suffix=b"")), "suffix must not be empty"),
        (StationModel(), ScannerConfig(no_read_text="NO\rREAD"), "holds framing"),
        (StationModel(), ScannerConfig(framing=Framing(suffix=b"S")), "contains a framing byte"),
        (
            StationModel(),
            ScannerConfig(faults=Faults(rates={Fault.NO_READ: 0.6, Fault.GARBAGE: 0.5})),
            "add up to 1.1",
        ),
        (
            StationModel(),
            ScannerConfig(faults=Faults(rates={Fault.SPLIT: -0.1})),
            "not a probability",
        ),
        (StationModel(), ScannerConfig(faults=Faults(split_into=1)), "split_into"),
        (StationModel(), ScannerConfig(scan_phase=1.0), "scan_phase"),
        (
            StationModel(),
            ScannerConfig(materials=[MaterialScan(1, "LOT\r1")]),
            "material scan 'LOT\\\\r1' contains a framing byte",
        ),
        (StationModel(), ScannerConfig(ack=HostAck(bad=b"\x1b")), "cannot be told apart"),
        (
            StationModel(),
            ScannerConfig(framing=Framing(suffix=b"\x1d")),
            "contains a framing byte",
        ),
        (StationModel(), ScannerConfig(materials=[MaterialScan(1, "LOT€")]), "not Latin-1"),
    ],
)
def test_configuration_errors_are_found_when_built(
    model: StationModel, config: ScannerConfig, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        HandheldScanner(model, PtyTransport(tmp_path), config)


def test_trigger_commands_must_differ_from_the_answers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be told apart"):
        TriggeredReader(StationModel(), PtyTransport(tmp_path), trigger=TriggerConfig(on=b"\x1b"))
    with pytest.raises(ValueError, match="read_timeout"):
        TriggeredReader(
            StationModel(), PtyTransport(tmp_path), trigger=TriggerConfig(read_timeout=0)
        )


# -- handheld: timing against the station ---------------------------------------------------


async def test_each_part_is_scanned_as_it_arrives_over_a_pty(tmp_path: Path) -> None:
    model = StationModel(cycle_time=0.08)
    transport = PtyTransport(tmp_path)
    async with (
        HandheldScanner(model, transport, ScannerConfig(max_scans=4)) as scanner,
        pty_agent(transport.agent_path) as agent,
    ):
        await wait_until(lambda: len(agent.frames()) == 4, within=2.0, what="4 scans")
    model = scanner.model
    assert model.t0 == scanner.started_at  # the station's clock starts with the scanner
    assert [s.cycle for s in scanner.scans] == [0, 1, 2, 3]
    assert agent.frames() == [s.frame for s in scanner.scans]
    assert agent.frames()[0] == CYCLE0
    for n, scan in enumerate(scanner.scans):
        assert scan.kind == "part"
        assert scan.valid
        assert scan.fault is None
        assert scan.delivered
        assert scan.serial == model.serial(scan.cycle)
        assert scan.sent_at is not None
        assert scan.due == (model.t0 or 0.0) + scan.cycle * model.cycle_time
        assert scan.started_at == scan.sent_at >= scan.due
        cycle, phase = model.cycle_at(scan.sent_at)
        assert (cycle, phase < 0.5) == (scan.cycle, True), f"scan {n} sent at phase {phase}"
        assert model.cycle_at(agent.arrival(n))[0] == scan.cycle  # arrives in its cycle too


async def test_the_scan_matches_the_serial_the_plc_shows(tmp_path: Path) -> None:
    """On the PLC simulator's clock: started after it, the scanner joins at the next part,
    and while each scan arrives the PLC shows that part's serial."""
    address, _kind, _order, count, _unit, _scale = REGISTER_MAP["part_serial"]
    async with ModbusStationServer([StationModel(cycle_time=0.15)]) as plc:
        station = plc.stations[0]
        assert station.t0 is not None
        await wait_until(lambda: station.cycle_at(time.monotonic())[1] > 0.5, what="mid-cycle")
        client = AsyncModbusTcpClient("127.0.0.1", port=plc.port, reconnect_delay=0)
        assert await client.connect()
        transport = PtyTransport(tmp_path)
        shown: list[str] = []
        try:
            async with (
                HandheldScanner(station, transport, ScannerConfig(max_scans=3)) as scanner,
                pty_agent(transport.agent_path) as agent,
            ):
                for n in range(3):
                    await wait_until(lambda n=n: len(agent.frames()) > n, what=f"scan {n}")
                    reply = await client.read_holding_registers(address, count=count, device_id=1)
                    raw = b"".join(w.to_bytes(2, "big") for w in reply.registers)
                    shown.append(raw.rstrip(b"\0").decode())
        finally:
            client.close()
    first = station.cycle_at(scanner.started_at or 0.0)[0] + 1
    assert scanner.model == station  # same clock, not a copy with its own t0
    assert [s.cycle for s in scanner.scans] == [first, first + 1, first + 2]
    assert shown == [station.serial(s.cycle) for s in scanner.scans]
    assert [gs1(f[3:-1].decode())["21"] for f in agent.frames()] == shown


@pytest.mark.parametrize(
    ("framing", "symbol", "expected"),
    [
        (CR, Symbol(), b"]d2010950110102091721SN00000006\x1d10L00001\r"),
        (LF, Symbol(), b"]d2010950110102091721SN00000006\x1d10L00001\n"),
        (CRLF, Symbol(), b"]d2010950110102091721SN00000006\x1d10L00001\r\n"),
        (STX_ETX, Symbol(), b"\x02]d2010950110102091721SN00000006\x1d10L00001\x03"),
        (CR, Symbol(aim=None, lot=False), b"010950110102091721SN00000006\r"),
        (
            CR,
            Symbol(aim="]Q3", gtin="0400638133393"),
            b"]Q3010400638133393121SN00000006\x1d10L00001\r",
        ),
    ],
)
async def test_framing_and_symbol_options_over_tcp(
    framing: Framing, symbol: Symbol, expected: bytes
) -> None:
    config = on_demand(framing=framing, symbol=symbol)
    transport = TcpServerTransport()
    async with (
        HandheldScanner(StationModel(), transport, config) as scanner,
        tcp_agent(transport.port) as agent,  # the port is known once the scanner started
    ):
        await transport.wait_connected()
        scan = await scanner.scan_part(cycle=5)
        await wait_until(lambda: agent.data == expected, what=f"{expected!r}")
    assert scan.frame == expected
    assert scan.delivered


async def test_material_labels_are_scanned_at_their_moments(tmp_path: Path) -> None:
    materials = [
        MaterialScan(1, lot_label("LOT4711"), phase=0.5),
        MaterialScan(2, "LOT4712", phase=0.25),
    ]
    config = ScannerConfig(max_scans=4, materials=materials)
    transport = PtyTransport(tmp_path)
    async with (
        HandheldScanner(StationModel(cycle_time=0.08), transport, config) as scanner,
        pty_agent(transport.agent_path) as agent,
    ):
        await wait_until(lambda: len(agent.frames()) == 6, within=2.0, what="6 scans")
        on_demand_scan = await scanner.scan_material("LOT9999", valid=False)
        await wait_until(lambda: len(agent.frames()) == 7, what="the material on demand")
    model = scanner.model
    kinds = [(s.kind, s.cycle) for s in scanner.scans[:6]]
    assert kinds == [
        ("part", 0),
        ("part", 1),
        ("material", 1),
        ("part", 2),
        ("material", 2),
        ("part", 3),
    ]
    assert agent.frames()[2] == f"]d201{GTIN}10LOT4711\r".encode()
    assert agent.frames()[4] == b"LOT4712\r"
    for scan, wanted in zip((scanner.scans[2], scanner.scans[4]), materials, strict=True):
        assert scan.sent_at is not None
        assert scan.valid
        cycle, phase = model.cycle_at(scan.sent_at)
        assert cycle == wanted.cycle
        assert wanted.phase <= phase < wanted.phase + 0.2
    assert agent.frames()[6] == b"LOT9999\r"
    assert on_demand_scan.kind == "material"
    assert not on_demand_scan.valid


# -- faults ---------------------------------------------------------------------------------


@contextmanager
def biip_rejects() -> Iterator[None]:
    with pytest.raises(ValueError):  # noqa: PT011 -- biip's ParseError or our check-digit one
        yield


async def test_no_read_bad_check_digit_garbage_and_overlong_frames(tmp_path: Path) -> None:
    config = on_demand(faults=Faults(max_length=64, seed=3))
    transport = PtyTransport(tmp_path)
    model = StationModel()
    async with (
        HandheldScanner(model, transport, config) as scanner,
        pty_agent(transport.agent_path) as agent,
    ):
        for fault in (Fault.NO_READ, Fault.BAD_CHECK_DIGIT, Fault.GARBAGE, Fault.OVERLONG):
            await scanner.scan_part(cycle=2, fault=fault)
        scanner.inject(Fault.NO_READ)
        await scanner.scan_part(cycle=3)  # injected
        await scanner.scan_part(cycle=4)  # clean again
        await wait_until(lambda: len(agent.frames()) == 6, what="6 frames")
    no_read, bad, garbage, overlong, injected, clean = agent.frames()
    good = part_code(model, 2)
    assert [s.fault for s in scanner.scans] == [
        Fault.NO_READ, Fault.BAD_CHECK_DIGIT, Fault.GARBAGE, Fault.OVERLONG, Fault.NO_READ, None
    ]  # fmt: skip
    assert [s.valid for s in scanner.scans] == [False] * 5 + [True]
    assert no_read == injected == b"NOREAD\r"
    assert bad[:18] == good[:18].encode()
    assert bad[18:] != good[18:].encode()
    with biip_rejects():
        gs1(bad[3:-1].decode())
    assert garbage.endswith(b"\r")
    assert len(garbage) == 13
    assert b"\r" not in garbage[:-1]
    assert any(b < 0x20 for b in garbage[:-1])
    assert GS.encode() not in garbage
    assert len(overlong) == 64 + 1 + 1
    assert overlong.startswith(good.encode())
    assert scanner.scans[3].payload == overlong[:-1]
    assert clean == (part_code(model, 4) + "\r").encode()
    assert scanner.scans[0].serial is None
    assert scanner.scans[1].serial == model.serial(2)


async def test_a_split_frame_arrives_in_pieces_with_pauses(tmp_path: Path) -> None:
    config = on_demand(faults=Faults(split_into=3, split_pause=0.03))
    transport = PtyTransport(tmp_path)
    async with (
        HandheldScanner(StationModel(), transport, config) as scanner,
        pty_agent(transport.agent_path) as agent,
    ):
        scan = await scanner.scan_part(cycle=0, fault=Fault.SPLIT)
        await wait_until(lambda: agent.frames() == [CYCLE0], what="the whole frame")
    assert scan.valid
    assert scan.fault is Fault.SPLIT
    writes = scanner.wire
    assert [w.seqs for w in writes] == [(0,), (0,), (0,)]
    assert b"".join(w.data for w in writes) == CYCLE0
    assert all(b.at - a.at >= 0.03 for a, b in itertools.pairwise(writes))
    assert scan.started_at == writes[0].at
    assert scan.sent_at == writes[-1].at
    assert len(agent.chunks) == 3  # the agent saw the pieces, not one frame


async def test_a_merged_frame_goes_out_with_the_next_one(tmp_path: Path) -> None:
    transport = PtyTransport(tmp_path)
    model = StationModel()
    async with (
        HandheldScanner(model, transport, on_demand()) as scanner,
        pty_agent(transport.agent_path) as agent,
    ):
        held = await scanner.scan_part(cycle=0, fault=Fault.MERGED)
        assert held.sent_at is None
        assert held.delivered is None
        assert scanner.wire == []
        nxt = await scanner.scan_part(cycle=1, fault=Fault.NO_READ)
        await wait_until(lambda: len(agent.frames()) == 2, what="both frames")
        agent.write(HONEYWELL_BAD)
        await wait_until(lambda: len(scanner.feedback) == 1, what="the answer")
    assert held.valid
    assert held.fault is Fault.MERGED
    assert len(scanner.wire) == 1
    assert scanner.wire[0].data == CYCLE0 + b"NOREAD\r" == agent.data
    assert scanner.wire[0].seqs == (0, 1)
    assert held.sent_at == nxt.sent_at == scanner.wire[0].at
    assert len(agent.chunks) == 1
    assert scanner.feedback[0].after == nxt.seq  # the last scan of the write


async def test_fault_rates_are_drawn_per_scan_and_repeatable() -> None:
    rates = {Fault.NO_READ: 0.25, Fault.GARBAGE: 0.25}

    async def faults(seed: int) -> list[Fault | None]:
        config = on_demand(faults=Faults(rates=rates, seed=seed))
        # Nobody connected: every scan is recorded, and lost.
        async with HandheldScanner(StationModel(), TcpServerTransport(), config) as scanner:
            for _ in range(400):
                await scanner.scan_part(cycle=1)
        assert not any(s.delivered for s in scanner.scans)
        return [s.fault for s in scanner.scans]

    drawn = await faults(seed=1)
    counts = {f: drawn.count(f) for f in (*Fault, None)}
    assert 70 <= counts[Fault.NO_READ] <= 130
    assert 70 <= counts[Fault.GARBAGE] <= 130
    assert counts[None] == 400 - counts[Fault.NO_READ] - counts[Fault.GARBAGE]
    assert drawn == await faults(seed=1)
    assert drawn != await faults(seed=2)


async def test_faults_by_rate_in_the_schedule(tmp_path: Path) -> None:
    config = ScannerConfig(max_scans=6, faults=Faults(rates={Fault.NO_READ: 0.5}, seed=7))
    transport = PtyTransport(tmp_path)
    async with (
        HandheldScanner(StationModel(cycle_time=0.04), transport, config) as scanner,
        pty_agent(transport.agent_path) as agent,
    ):
        await wait_until(lambda: len(agent.frames()) == 6, what="6 frames")
    assert {s.fault for s in scanner.scans} == {Fault.NO_READ, None}
    assert agent.frames() == [s.frame for s in scanner.scans]
    assert [f == b"NOREAD\r" for f in agent.frames()] == [not s.valid for s in scanner.scans]
