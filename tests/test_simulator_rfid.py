"""The simulated RFID reader: its scene (pure ground truth), its lines, and both wires.

Over a real pty (a NullModem, opened by path) and a real TCP socket, every byte the reader says
it sent must arrive in order; parsed with the ``drivers.rfid.reads`` presets and deduped on the
reader's tick times, the lines must give exactly one arrival and one departure per tag visit,
with the visit's read count, and decode (``drivers.rfid.epc``) to the scene's GTIN and serial.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.rfid.epc import decode_epc
from drivers.rfid.reads import (
    PRESETS,
    Deduper,
    EventKind,
    RejectedRead,
    TagEvent,
    TagRead,
    parse_line,
)
from simulators.rfid import (
    FORMATS,
    Fault,
    LineKind,
    RfidReaderSim,
    SentLine,
    TagScene,
    format_line,
    sgtin96,
)
from simulators.serial_link import NullModem
from simulators.station import GTIN, StationModel
from tests.modbus_helpers import no_leaks, wait_until

pytestmark = pytest.mark.timeout(60)

SCENE = TagScene(cycle_time=0.3, dwell=0.15, reads_per_second=40, antennas=(1, 2, 3))
"""Six reads per visit, 0.175 s of silence between visits."""
WINDOW, DEPARTURE = 0.05, 0.15


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
async def _no_leaks() -> AsyncIterator[None]:
    """No task, thread or fd (pty, socket) outlives a test."""
    before = open_fds()
    async with no_leaks():
        yield
    await wait_until(lambda: open_fds() <= before, what="fds to be closed")


@pytest.fixture
async def link(tmp_path: Path) -> AsyncIterator[NullModem]:
    async with NullModem(tmp_path, "ttyAGENT", "ttyREADER") as cable:
        yield cable


class PtyEnd:
    """The agent's end of the cable: every byte as it comes (``loop.add_reader``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = bytearray()
        self._fd: int | None = None

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        asyncio.get_running_loop().add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            chunk = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO: the cable was pulled
            self.close()
            return
        if not chunk:
            self.close()
            return
        self.data += chunk

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)


class TcpEnd:
    """A TCP client of the reader, reading until the reader closes the connection."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self, port: int) -> None:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", port)
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(4096):
                self.data += chunk
        self.eof.set()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        if self._task is not None:
            await self._task


def wire_bytes(sent: list[SentLine]) -> bytes:
    return b"".join(s.data for s in sent if s.delivered)


def lines(data: bytes) -> list[str]:
    assert data.endswith(b"\r\n")
    return [raw.decode("utf-8", "replace") for raw in data[:-2].split(b"\r\n")]


def dedupe(sent: list[SentLine], fmt: str) -> list[TagEvent]:
    """Parse what went out and dedupe it on the reader's tick times (the ground truth clock,
    so a test machine's scheduling jitter cannot split a visit)."""
    d = Deduper(WINDOW, departure_after=DEPARTURE)
    events: list[TagEvent] = []
    for s in sent:
        read = parse_line(s.text, PRESETS[fmt])
        if isinstance(read, TagRead):
            events += d.feed(read, s.at)
    return events + d.expire(math.inf)


def check_visits(scene: TagScene, sent: list[SentLine], events: list[TagEvent]) -> list[int]:
    """One arrival and one departure per visit read in ``sent``, each with that visit's read
    count, and decoding to the scene's GTIN and the part's serial; returns the visits."""
    counts = Counter(s.k for s in sent if s.kind is LineKind.READ)
    ks = sorted(k for k in counts if k is not None)
    arrivals = [e for e in events if e.kind is EventKind.ARRIVAL]
    departures = [e for e in events if e.kind is EventKind.DEPARTURE]
    assert [e.epc for e in arrivals] == [scene.epc(k) for k in ks]
    assert [e.epc for e in departures] == [scene.epc(k) for k in ks]
    for k, departure in zip(ks, departures, strict=True):
        visit = scene.visit(k)
        assert departure.reads == counts[k]
        assert visit.enters <= departure.first_seen <= departure.last_seen < visit.leaves
        info = decode_epc(departure.epc)
        assert (info.scheme, info.gtin, info.serial) == ("sgtin-96", GTIN, str(scene.serial(k)))
    return ks


# ---- the scene (pure) ------------------------------------------------------------------------


def test_the_scene_is_ground_truth() -> None:
    scene = TagScene(t0=100.0, cycle_time=1.0, dwell=0.5, reads_per_second=10, antennas=(1, 2))
    assert [v.k for v in scene.in_field(100.0)] == [0]
    assert scene.in_field(100.5) == []
    assert [v.k for v in scene.in_field(101.25)] == [1]
    assert scene.in_field(99.9) == []
    assert [v.k for v in scene.visits_between(99.0, 102.0)] == [0, 1]
    assert [v.k for v in scene.visits_between(100.6, 102.01)] == [1, 2]
    visit = scene.visit(2)
    assert (visit.enters, visit.leaves, visit.serial, visit.gtin) == (102.0, 102.5, 3, GTIN)
    # Tick 3 is 100.3: part 0, on antenna (3 + 0) % 2 -> the second one.
    (read,) = scene.reads_at(3)
    assert (read.k, read.epc, read.antenna) == (0, scene.epc(0), 2)
    assert read.at == pytest.approx(100.3)
    assert -66.0 < read.rssi <= -45.0
    assert scene.reads_at(7) == []
    assert scene.reads_at(3) == scene.reads_at(3)  # deterministic


def test_overlapping_visits_put_several_tags_in_the_field() -> None:
    scene = TagScene(t0=0.0, cycle_time=0.5, dwell=1.2, reads_per_second=10)
    assert [v.k for v in scene.in_field(1.1)] == [0, 1, 2]
    assert [r.k for r in scene.reads_at(11)] == [0, 1, 2]


def test_epcs_are_sgtin96_of_the_gtin_and_serial() -> None:
    scene = TagScene(first_serial=41)
    info = decode_epc(scene.epc(1))
    assert info.scheme == "sgtin-96"
    assert (info.gtin, info.serial, info.filter) == (GTIN, "42", 1)
    assert info.uri == "urn:epc:id:sgtin:9501101.002091.42"
    assert sgtin96("80614141123458", 6789, 7, 3) == "3074257BF7194E4000001A85"  # TDS example


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("09501101020918", 1), "wrong check digit"),
        (("09501101020917", 2**38), "Invalid serial value 274877906944"),
        (("09501101020917", 1, 13), "is not an SGTIN-96"),
        (("09501101020917", 1, 7, 9), "is not an SGTIN-96"),
    ],
)
def test_what_is_not_an_sgtin96_is_refused(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sgtin96(*args)


def test_a_scene_follows_its_station() -> None:
    model = StationModel(cycle_time=0.5, t0=100.0, first_serial=7)
    scene = TagScene.for_station(model, dwell_fraction=0.5, antennas=(3,))
    for k in range(3):
        visit = scene.visit(k)
        assert visit.enters == 100.0 + k * model.cycle_time
        assert f"SN{visit.serial:08d}" == model.serial(k)
        assert model.cycle_at(visit.enters + 0.01)[0] == k
    assert scene.antennas == (3,)
    with pytest.raises(ValueError, match="handshake"):
        TagScene.for_station(StationModel(handshake=True))


def test_a_scene_needs_its_t0_for_times() -> None:
    with pytest.raises(ValueError, match="no t0"):
        TagScene().visit(0)
    with pytest.raises(ValueError, match="positive"):
        TagScene(dwell=0)
    with pytest.raises(ValueError, match="antenna"):
        TagScene(antennas=())


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_is_a_preset_the_parser_reads_back(fmt: str) -> None:
    line = format_line(fmt, "303643E6B4020AC000000001", 2, -51.4, 1_700_000_000.25)
    read = parse_line(line + "\r\n", PRESETS[fmt])
    assert isinstance(read, TagRead)
    assert read.epc == "303643E6B4020AC000000001"
    if fmt != "epc":
        assert read.antenna == 2
    if fmt == "csv":
        assert read.rssi == -51.4
    if fmt == "impinj-json":
        assert read.rssi == -51.0  # Speedway Connect prints whole dBm
    if fmt in ("alien-text", "impinj-json"):
        assert read.reader_time is not None
        assert read.reader_time.startswith("2023")


def test_an_unknown_format_or_wire_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown line format 'xml'"):
        RfidReaderSim(SCENE, fmt="xml", tcp=True)
    with pytest.raises(ValueError, match="exactly one"):
        RfidReaderSim(SCENE)
    with pytest.raises(ValueError, match="exactly one"):
        RfidReaderSim(SCENE, serial_port="/dev/null", tcp=True)


# ---- over a serial line ----------------------------------------------------------------------


def read_visit(sim: RfidReaderSim, k: int) -> bool:
    return any(s.k is not None and s.k >= k for s in sim.reads())


@pytest.mark.parametrize("fmt", FORMATS)
async def test_over_a_pty_every_line_arrives_and_dedupes_to_the_visits(
    link: NullModem, fmt: str
) -> None:
    agent = PtyEnd(link.a_path)
    agent.open()
    try:
        async with RfidReaderSim(SCENE, fmt=fmt, serial_port=link.b_path) as sim:
            await wait_until(lambda: read_visit(sim, 3), within=10, what="four visits")
        sent = list(sim.sent)
        await wait_until(lambda: bytes(agent.data) == wire_bytes(sent), what="every byte")
    finally:
        agent.close()
    assert all(s.delivered and s.kind is LineKind.READ for s in sent)
    assert lines(bytes(agent.data)) == [s.text for s in sent]
    ks = check_visits(sim.scene, sent, dedupe(sent, fmt))
    assert ks[:4] == [0, 1, 2, 3]
    assert link.lost_bytes == 0
    if fmt != "epc":
        rows = [parse_line(s.text, PRESETS[fmt]) for s in sent if s.k == 1]
        assert {r.antenna for r in rows if isinstance(r, TagRead)} == {1, 2, 3}


async def test_a_pulled_cable_loses_lines_and_the_reader_carries_on(link: NullModem) -> None:
    async with RfidReaderSim(SCENE, fmt="csv", serial_port=link.b_path) as sim:
        await wait_until(lambda: len(sim.reads()) > 3, what="first reads")
        link.unplug()
        await wait_until(
            lambda: any(not s.delivered for s in sim.sent), what="a line lost while unplugged"
        )
        link.replug()
        agent = PtyEnd(link.a_path)
        agent.open()
        try:
            await wait_until(lambda: b"\r\n" in agent.data, what="lines after the replug")
        finally:
            agent.close()
    text = bytes(agent.data).decode()
    delivered_after = [s.text for s in sim.sent if s.delivered and s.text in text]
    assert delivered_after
    assert sim.reads()[-1].delivered


# ---- over TCP ---------------------------------------------------------------------------------


async def test_over_tcp_every_client_gets_every_line() -> None:
    first, second = TcpEnd(), TcpEnd()
    async with RfidReaderSim(SCENE, fmt="impinj-json", tcp=True) as sim:
        assert sim.port > 0
        await first.connect(sim.port)
        await sim.wait_clients(1)
        await second.connect(sim.port)
        await sim.wait_clients(2)
        assert sim.clients == 2
        await wait_until(lambda: read_visit(sim, 2), within=10, what="three visits")
        await first.close()
        await wait_until(lambda: sim.clients == 1, what="the first client gone")
        await wait_until(lambda: read_visit(sim, 3), within=10, what="a fourth visit")
    await asyncio.wait_for(second.eof.wait(), 5)  # stop() closes the connection
    await second.close()
    delivered = [s for s in sim.sent if s.delivered]
    everything = wire_bytes(delivered)
    # The first client got everything from the start until it left; the second everything
    # from when it came, a whole number of lines.
    assert everything.startswith(bytes(first.data))
    assert everything.endswith(bytes(second.data))
    assert second.data.startswith(b'{"antennaPort"')
    assert len(second.data) > len(everything) - len(first.data)
    check_visits(sim.scene, delivered, dedupe(delivered, "impinj-json"))


EXPECTED_REASONS = {
    ("epc", Fault.GARBAGE): "is not hexadecimal",
    ("epc", Fault.TRUNCATED): "has an odd number of hex digits (13)",
    ("epc", Fault.NON_HEX): "is not hexadecimal",
    ("csv", Fault.GARBAGE): "line does not match the csv format",
    ("csv", Fault.TRUNCATED): "line does not match the csv format",
    ("csv", Fault.NON_HEX): "is not hexadecimal",
    ("alien-text", Fault.GARBAGE): "line does not match the alien-text format",
    ("alien-text", Fault.TRUNCATED): "line does not match the alien-text format",
    ("alien-text", Fault.NON_HEX): "is not hexadecimal",
    ("impinj-json", Fault.GARBAGE): "line does not match the impinj-json format",
    ("impinj-json", Fault.TRUNCATED): "line does not match the impinj-json format",
    ("impinj-json", Fault.NON_HEX): "is not hexadecimal",
}


@pytest.mark.parametrize("fmt", FORMATS)
async def test_faults_are_rejected_with_their_reason_and_lose_no_read(fmt: str) -> None:
    client = TcpEnd()
    async with RfidReaderSim(SCENE, fmt=fmt, tcp=True) as sim:
        await client.connect(sim.port)
        await sim.wait_clients(1)
        await wait_until(lambda: any(s.delivered for s in sim.sent), what="a first line")
        for fault in Fault:
            sim.inject(fault, 2)
        await wait_until(lambda: read_visit(sim, 2), within=10, what="three visits")
    await asyncio.wait_for(client.eof.wait(), 5)
    await client.close()
    delivered = [s for s in sim.sent if s.delivered]
    assert bytes(client.data) == wire_bytes(delivered)
    got = [parse_line(text, PRESETS[fmt]) for text in lines(bytes(client.data))]
    faults = Counter(s.kind for s in delivered if s.kind is not LineKind.READ)
    assert faults == {LineKind.GARBAGE: 2, LineKind.TRUNCATED: 2, LineKind.NON_HEX: 2}
    for s, result in zip(delivered, got, strict=True):
        if s.kind is LineKind.READ:
            assert isinstance(result, TagRead)
            assert result.epc == s.epc
        else:
            assert isinstance(result, RejectedRead), s
            assert EXPECTED_REASONS[fmt, Fault(s.kind.value)] in result.reason
    check_visits(sim.scene, delivered, dedupe(delivered, fmt))


async def test_lines_with_nobody_connected_are_lost() -> None:
    async with RfidReaderSim(SCENE, fmt="csv", tcp=True) as sim:
        await wait_until(lambda: len(sim.sent) >= 2, what="lines")
        assert sim.clients == 0
    assert not any(s.delivered for s in sim.sent)
