"""The scanner simulators: their codes (pure, checked with biip, not with the agent's
classifier, so a bug both share cannot pass), their timing against the station's clock, their
faults, the triggered reader's protocol and the recording of what the agent answers -- over a
real pty pair and over TCP in both directions."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from biip import ParseConfig
from biip.gs1_messages import GS1Message
from pymodbus.client import AsyncModbusTcpClient

from simulators.broker import free_port
from simulators.modbus_server import ModbusStationServer
from simulators.scanner import (
    CR,
    CRLF,
    GS,
    HONEYWELL_BAD,
    HONEYWELL_GOOD,
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
    TcpClientTransport,
    TcpServerTransport,
    Transport,
    TriggerConfig,
    TriggeredReader,
    gs1_value,
    gtin14,
    lot_label,
    part_code,
)
from simulators.station import GTIN, REGISTER_MAP, StationModel
from tests.modbus_helpers import no_leaks, wait_until

pytestmark = pytest.mark.timeout(30)

CSET82 = set("!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")
BIIP = ParseConfig(gs1_element_strings_verify_date=True, separator_chars=(GS,))
CYCLE0 = b"]d2010950110102091721SN00000001\x1d10L00001\r"
"""Part 0 of the default station, as the default scanner sends it."""


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


def split_frames(data: bytes, framing: Framing) -> list[bytes]:
    """Whole frames (framing included) in a byte stream; an unfinished tail is left out."""
    out = []
    while (end := data.find(framing.suffix)) >= 0:
        cut = end + len(framing.suffix)
        out.append(data[:cut])
        data = data[cut:]
    return out


class AgentEnd:
    """The agent's side of a link: every chunk received, with its arrival time."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, bytes]] = []

    @property
    def data(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def frames(self, framing: Framing = CR) -> list[bytes]:
        return split_frames(self.data, framing)

    def arrival(self, n: int, framing: Framing = CR) -> float:
        """When the chunk completing frame ``n`` arrived."""
        need = sum(len(f) for f in self.frames(framing)[: n + 1])
        got = 0
        for at, chunk in self.chunks:
            got += len(chunk)
            if got >= need:
                return at
        raise AssertionError(f"frame {n} not received")


class PtyAgent(AgentEnd):
    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def _readable(self) -> None:
        self.chunks.append((time.monotonic(), os.read(self.fd, 4096)))

    def write(self, data: bytes) -> None:
        assert os.write(self.fd, data) == len(data)


@asynccontextmanager
async def pty_agent(path: Path) -> AsyncIterator[PtyAgent]:
    """The agent's serial port, opened raw and read with add_reader (no thread)."""
    loop = asyncio.get_running_loop()
    agent = PtyAgent(os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
    loop.add_reader(agent.fd, agent._readable)
    try:
        yield agent
    finally:
        loop.remove_reader(agent.fd)
        os.close(agent.fd)


class TcpAgent(AgentEnd, asyncio.Protocol):
    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append((time.monotonic(), data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@asynccontextmanager
async def tcp_agent(port: int) -> AsyncIterator[TcpAgent]:
    """An agent connected to a scanner's TCP server."""
    loop = asyncio.get_running_loop()
    _transport, agent = await loop.create_connection(TcpAgent, "127.0.0.1", port)
    try:
        yield agent
    finally:
        assert agent.transport is not None
        agent.transport.close()
        await asyncio.wait_for(agent.closed.wait(), 2.0)


def on_demand(**kwargs: object) -> ScannerConfig:
    return ScannerConfig(auto=False, **kwargs)  # type: ignore[arg-type]


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


# -- the triggered reader -------------------------------------------------------------------


@asynccontextmanager
async def reader(trigger: TriggerConfig) -> AsyncIterator[tuple[TriggeredReader, TcpAgent]]:
    transport = TcpServerTransport()
    model = StationModel(cycle_time=10.0)  # one part for the whole test
    async with (
        TriggeredReader(model, transport, trigger=trigger) as scanner,
        tcp_agent(transport.port) as agent,
    ):
        await transport.wait_connected()
        yield scanner, agent


async def test_a_trigger_is_answered_with_the_current_part_after_the_decode_time() -> None:
    async with reader(TriggerConfig(decode_time=0.05)) as (scanner, agent):
        agent.write(b"LON\r")
        await wait_until(lambda: len(agent.frames()) == 1, what="the answer")
        agent.write(b"LON\r")
        await wait_until(lambda: len(agent.frames()) == 2, what="the second answer")
    first, second = scanner.triggers
    answer = scanner.scans[0]
    assert agent.frames()[0] == answer.frame == CYCLE0
    assert first.command == "on"
    assert first.answer == 0
    assert second.answer == 1
    assert answer.cycle == scanner.model.cycle_at(first.at)[0] == 0
    assert answer.sent_at is not None
    assert answer.sent_at - first.at >= 0.05
    assert agent.arrival(0) - first.at >= 0.05


async def test_no_read_when_the_window_times_out() -> None:
    async with reader(TriggerConfig(decode_time=0.01, read_timeout=0.15)) as (scanner, agent):
        scanner.inject(Fault.NO_READ)
        agent.write(b"LON\r")
        await wait_until(lambda: len(agent.frames()) == 1, what="the no-read")
    (trig,) = scanner.triggers
    (scan,) = scanner.scans
    assert agent.frames() == [b"NOREAD\r"]
    assert scan.fault is Fault.NO_READ
    assert scan.detail == "timeout"
    assert not scan.valid
    assert scan.sent_at is not None
    assert scan.sent_at - trig.at >= 0.15


async def test_no_read_when_the_host_stops_the_read_and_stray_commands_are_ignored() -> None:
    async with reader(TriggerConfig(decode_time=2.0, read_timeout=3.0)) as (scanner, agent):
        agent.write(b"LOFF\r")  # no window open
        agent.write(b"LON\r")
        await wait_until(lambda: len(scanner.triggers) == 2, what="the trigger")
        agent.write(b"LON\r")  # while reading
        await wait_until(lambda: len(scanner.triggers) == 3, what="the second trigger")
        agent.write(b"LOFF\r")
        await wait_until(lambda: len(agent.frames()) == 1, what="the no-read")
    off, on, again, stop = scanner.triggers
    assert [t.command for t in scanner.triggers] == ["off", "on", "on", "off"]
    assert [t.ignored for t in scanner.triggers] == [True, False, True, False]
    assert agent.frames() == [b"NOREAD\r"]
    (scan,) = scanner.scans
    assert scan.detail == "off"
    assert on.answer == 0
    assert again.answer is None
    assert scan.sent_at is not None
    assert scan.sent_at - on.at < 1.0
    assert off.at <= on.at < stop.at <= scan.sent_at  # off and on may share a chunk


# -- feedback -------------------------------------------------------------------------------


async def test_feedback_is_recorded_with_the_scan_it_follows(tmp_path: Path) -> None:
    transport = PtyTransport(tmp_path)
    async with (
        HandheldScanner(StationModel(), transport, on_demand()) as scanner,
        pty_agent(transport.agent_path) as agent,
    ):
        agent.write(b"?")
        await wait_until(lambda: len(scanner.feedback) == 1, what="the stray byte")
        first = await scanner.scan_part(cycle=0)
        await wait_until(lambda: len(agent.frames()) == 1, what="scan 0")
        agent.write(HONEYWELL_GOOD)
        await wait_until(lambda: len(scanner.feedback) == 2, what="the good answer")
        second = await scanner.scan_part(cycle=1)
        await wait_until(lambda: len(agent.frames()) == 2, what="scan 1")
        agent.write(b"xy" + HONEYWELL_BAD + b"\x1b")  # ends with half an answer...
        await wait_until(lambda: len(scanner.feedback) == 4, what="junk and the bad answer")
        agent.write(b"7")  # ...and the rest of it
        await wait_until(lambda: len(scanner.feedback) == 5, what="the split good answer")
    stray, good, junk, bad, late = scanner.feedback
    assert (stray.data, stray.verdict, stray.after, stray.latency) == (b"?", "unknown", None, None)
    assert (good.data, good.verdict, good.after) == (HONEYWELL_GOOD, "good", 0)
    assert first.sent_at is not None
    assert good.at >= agent.arrival(0) >= first.sent_at
    assert good.latency == good.at - first.sent_at
    assert (junk.data, junk.verdict, junk.after) == (b"xy", "unknown", 1)
    assert (bad.data, bad.verdict, bad.after) == (HONEYWELL_BAD, "bad", 1)
    assert (late.data, late.verdict, late.after) == (HONEYWELL_GOOD, "good", 1)
    assert second.sent_at is not None
    assert bad.at >= second.sent_at
    assert scanner.feedback_after(0) == [good]
    assert scanner.feedback_after(1) == [junk, bad, late]


async def test_host_ack_mode_holds_the_next_scan_until_answered_or_timed_out(
    tmp_path: Path,
) -> None:
    config = ScannerConfig(max_scans=3, ack=HostAck(wait=True, timeout=0.2))
    transport = PtyTransport(tmp_path)
    async with (
        HandheldScanner(StationModel(cycle_time=0.05), transport, config) as scanner,
        pty_agent(transport.agent_path) as agent,
    ):
        model = scanner.model
        await wait_until(lambda: len(agent.frames()) == 1, what="scan 0")
        # Answer late, when part 2 is already at the station: scan 1 must not have gone out.
        await wait_until(lambda: model.cycle_at(time.monotonic())[0] >= 2, what="part 2")
        assert len(agent.frames()) == 1
        assert scanner.scans[1:] == []
        agent.write(HONEYWELL_GOOD)
        await wait_until(lambda: len(agent.frames()) == 3, within=2.0, what="scans 1 and 2")
    s0, s1, s2 = scanner.scans
    (answer,) = scanner.feedback
    assert answer.after == 0
    assert not s0.ack_timeout
    assert s1.cycle == 1
    assert s1.started_at is not None
    assert s1.started_at >= answer.at
    assert s1.ack_timeout
    assert s1.sent_at is not None
    assert s2.cycle == 2
    assert s2.started_at is not None
    assert s2.started_at - s1.sent_at >= 0.2
    assert agent.frames() == [s.frame for s in scanner.scans]


# -- transports -----------------------------------------------------------------------------


async def test_tcp_server_loses_scans_until_an_agent_connects_and_the_newest_wins() -> None:
    transport = TcpServerTransport()
    config = ScannerConfig(max_scans=6)
    async with HandheldScanner(StationModel(cycle_time=0.05), transport, config) as scanner:
        await wait_until(lambda: len(scanner.sent) >= 1, what="scan 0")
        async with tcp_agent(transport.port) as first:
            await transport.wait_connected()
            await wait_until(lambda: len(first.frames()) >= 1, what="a scan to the first agent")
            async with tcp_agent(transport.port) as second:
                await asyncio.wait_for(first.closed.wait(), 2.0)  # replaced
                await wait_until(lambda: len(scanner.sent) == 6, within=2.0, what="6 scans")
                await wait_until(
                    lambda: (
                        first.data + second.data
                        == b"".join(s.frame for s in scanner.sent if s.delivered)
                    ),
                    what="every delivered scan received by one of them",
                )
    assert scanner.scans[0].delivered is False
    assert transport.connections == 2
    lost = [s for s in scanner.scans if not s.delivered]
    assert lost
    assert all(s.cycle < scanner.scans[-1].cycle for s in lost)
    assert (
        split_frames(first.data, CR)
        == [s.frame for s in scanner.scans if s.delivered][: len(first.frames())]
    )
    assert second.frames()  # the newest connection got the rest


async def test_tcp_client_retries_until_the_agent_listens_and_after_it_hangs_up() -> None:
    port = free_port()
    transport = TcpClientTransport("127.0.0.1", port, retry_interval=0.02)
    agents: list[TcpAgent] = []

    def accept() -> TcpAgent:
        agents.append(TcpAgent())
        return agents[-1]

    loop = asyncio.get_running_loop()
    async with HandheldScanner(StationModel(), transport, on_demand()) as scanner:
        await wait_until(lambda: transport.failed_attempts >= 2, what="refused attempts")
        lost = await scanner.scan_part(cycle=0)
        server = await loop.create_server(accept, "127.0.0.1", port)
        try:
            await transport.wait_connected()
            scan = await scanner.scan_part(cycle=1)
            await wait_until(lambda: len(agents[0].frames()) == 1, what="the scan")
            agents[0].write(HONEYWELL_GOOD)
            await wait_until(lambda: len(scanner.feedback) == 1, what="the answer")
            assert agents[0].transport is not None
            agents[0].transport.close()  # the agent restarts
            await wait_until(lambda: transport.connections == 2, what="a reconnect")
            again = await scanner.scan_part(cycle=2)
            await wait_until(lambda: len(agents[1].frames()) == 1, what="the scan after it")
        finally:
            for agent in agents:
                assert agent.transport is not None
                agent.transport.close()
            server.close()
            await server.wait_closed()
    assert lost.delivered is False
    assert scan.delivered
    assert again.delivered
    assert agents[0].frames() == [scan.frame]
    assert agents[1].frames() == [again.frame]
    assert scanner.feedback[0].after == scan.seq
    assert scanner.feedback[0].verdict == "good"


async def test_an_unplugged_pty_loses_scans(tmp_path: Path) -> None:
    transport = PtyTransport(tmp_path)
    async with HandheldScanner(StationModel(), transport, on_demand()) as scanner:
        assert transport.connected
        transport.link.unplug()
        scan = await scanner.scan_part(cycle=0)
        assert not transport.connected
    assert scan.delivered is False
    assert scan.sent_at is not None


class BrokenTransport(Transport):
    async def open(self, on_data: object) -> None:
        self._connected.set()

    def send(self, data: bytes) -> bool:
        raise RuntimeError("wire on fire")

    async def drain(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_close_raises_what_a_scanner_task_died_of() -> None:
    scanner = HandheldScanner(StationModel(), BrokenTransport())
    await scanner.start()
    await wait_until(lambda: bool(scanner.scans), what="the first scan attempt")
    with pytest.raises(RuntimeError, match="wire on fire"):
        await scanner.close()


async def test_scan_records_hold_the_ground_truth_of_each_scan() -> None:
    """The record's text and frame agree, and held scans are never in ``sent``."""
    async with HandheldScanner(StationModel(), TcpServerTransport(), on_demand()) as scanner:
        held = await scanner.scan_part(cycle=0, fault=Fault.MERGED)
        assert scanner.sent == []
        await scanner.scan_part(cycle=1)
    assert held.text == part_code(scanner.model, 0)
    assert [s.seq for s in scanner.sent] == [0, 1]
