"""RFID reader driver: reader lines -> tag reads -> one arrival per visit (and departures).

A streaming driver (``runners.run_streaming`` owns state, backoff and outage records) on a
byte link (``drivers.links``): serial, TCP client or TCP server. A reader in front of a
station reads a tag tens of times a second for as long as it sits there; the records want one
fact per visit. So each line is

- parsed (``drivers.rfid.reads.parse_line``, the configured preset or ``line_pattern``);
- if it is a read on an allowed antenna, fed to the :class:`~drivers.rfid.reads.Deduper`,
  which says when a tag *arrives* (its first read while absent) and, with ``departures``,
  when it *leaves* (no read for ``departure_after`` seconds);
- if it is garbage (a frame too long or cut short, bytes that are not text, a line that does
  not match the format, an EPC that is not hex): a BAD observation on the arrival point with
  the reason, and the line's bytes (escaped) and length in ``detail``, so nothing the reader
  sent disappears. Blank lines and the format's ``ignore`` lines (heartbeats) are skipped.

What an arrival's value is: the text the station's scan rules classify
  * An EPC that decodes to a GS1 key (SGTIN, SSCC, SGLN, GRAI, GIAI, GSRN, GDTI, ...) arrives
    as its **GS1 element string, unbracketed, with a leading GS** (0x1D) and GS after each
    variable-length field that is not last: ``<GS>0180614141123458216789``. A leading GS is
    what makes data *claim GS1* in ``edge_agent.scan.classify`` (a tag has no AIM symbology
    identifier, and a made-up one would be recorded as a barcode symbology), so exactly the
    GS1 rules written for GS1 DataMatrix labels apply to tags: ``gs1: true, require: ["01",
    "21"], set: {serial: "21", product: "01"}`` accepts an SGTIN tag. The element string comes
    from epcpy and its check digits from the standard, so it is always valid GS1.
  * An EPC that decodes to a non-GS1 identity (GID, USDOD, ADI) arrives as its pure identity
    URI, ``urn:epc:id:gid:95100000.12345.400``: a regex rule can take it apart.
  * An EPC epcpy cannot decode (an unprogrammed tag, a chip's factory EPC) arrives as its
    upper-case hex, so a regex rule can still match it; ``detail.epc_error`` says why.
  ``detail`` always holds ``epc`` (hex), ``uri``, ``scheme``, ``antenna``, ``rssi`` (of the
  first read) and ``reads`` (1), and ``reader_time`` when the format reports one.

Departures are readings on ``departure_point`` (see ``drivers.rfid.config`` for why they are
not scans): the value is the EPC in hex, ``detail`` holds ``epc``, ``uri``, ``scheme``,
``reads``, ``dwell`` (seconds from first to last read), ``antennas`` (as text, ``"1,2"``),
``best_rssi`` and ``evicted``. A departure is due ``departure_after`` seconds after the last
read, reader silent or not: the stream wakes at the deduper's deadline, so the departure is
recorded on time and stamped with that moment.

Time: the framer stamps lines with the event loop's monotonic clock, which the deduper needs
(the wall clock can jump); observations carry the wall clock, converted as the scanner driver
does. The deduper belongs to the driver, not to one connection: a reader that reconnects
within ``window`` does not make the tags standing in its field arrive twice, and departures
that fell due while the link was down are recorded when it is back, with the time they fell
due. One owner: the deduper is only touched by :meth:`RfidDriver.stream`, in the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from biip.gs1_application_identifiers import GS1ApplicationIdentifier

from drivers.base import StreamingDriver
from drivers.links.base import Link, read_frames
from drivers.links.factory import make_framer, make_link
from drivers.links.framing import Frame, decode
from drivers.registry import DriverContext
from drivers.rfid.config import RfidDevice
from drivers.rfid.epc import EpcInfo, decode_epc
from drivers.rfid.reads import (
    Deduper,
    EventKind,
    IgnoredLine,
    RejectedRead,
    TagEvent,
    parse_line,
)
from kernel.errors import ConnectError, ReadError
from kernel.model import Observation, Quality, Value

log = logging.getLogger(__name__)

GS = "\x1d"
"""The GS1 separator; leading, it says "GS1 element strings follow" (FNC1 in first position)."""
SHOWN_BYTES = 256
"""Bytes of a rejected line kept in its record (escaped); the length is always given."""


@functools.lru_cache(maxsize=256)
def _separator_required(ai: str) -> bool:
    return GS1ApplicationIdentifier.extract(ai).separator_required


def element_string(ais: Mapping[str, str]) -> str:
    """AI -> value as an unbracketed GS1 element string, GS after each variable-length field
    that is not last (``{"01": "80614141123458", "21": "6789"}`` -> ``0180614141123458216789``)."""
    parts: list[str] = []
    last = len(ais) - 1
    for i, (ai, value) in enumerate(ais.items()):
        parts.append(ai + value)
        if i < last and _separator_required(ai):
            parts.append(GS)
    return "".join(parts)


def arrival_text(info: EpcInfo) -> str:
    """What an arrival's scan rules see (see the module doc)."""
    if info.ais:
        return GS + element_string(info.ais)
    return info.identifier


def escaped(raw: bytes) -> str:
    """The first ``SHOWN_BYTES`` of ``raw`` as ASCII text, other bytes as ``\\xNN``."""
    return raw[:SHOWN_BYTES].decode("latin-1").encode("unicode_escape").decode("ascii")


class RfidDriver(StreamingDriver):
    """One RFID reader on one link."""

    def __init__(self, device: RfidDevice, context: DriverContext | None = None) -> None:
        super().__init__(device.name, device.backoff_initial, device.backoff_max)
        self.device = device
        self._format = device.read_format()
        self._antennas = frozenset(device.antennas) if device.antennas is not None else None
        self._departures = device.departures
        self._deduper = Deduper(device.window, device.departure_timeout())
        self._link: Link | None = None
        self.reads = 0
        """Reads accepted (on an allowed antenna), deduplicated or not."""
        self.skipped_lines = 0
        """Blank lines and lines the format ignores (heartbeats)."""
        self.other_antennas = 0
        """Reads on antennas outside ``antennas``, skipped."""
        self._reported_antennas: set[int] = set()

    async def open(self) -> None:
        await self.close()
        link = make_link(self.device)
        await link.open()
        self._link = link

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    def point_names(self) -> Sequence[str]:
        return [p.name for p in self.device.named_points()]

    # -- the stream -------------------------------------------------------------------------

    async def stream(self) -> AsyncIterator[Sequence[Observation]]:
        link = self._link
        if link is None:
            raise ConnectError(self.name, "not connected")
        loop = asyncio.get_running_loop()
        # The link's frames and the deduper's deadlines meet here, in one task: the deduper
        # has one owner, and a departure is due whether or not the reader says anything.
        queue: asyncio.Queue[list[Frame] | Exception] = asyncio.Queue()
        reader = asyncio.create_task(self._read(link, queue), name=f"read:{self.name}")
        try:
            now = loop.time()
            while True:
                departed = self._departed(self._deduper.expire(now))
                if departed:
                    yield departed
                deadline = self._deduper.deadline() if self._departures else None
                try:
                    async with asyncio.timeout_at(deadline):
                        item = await queue.get()
                except TimeoutError:
                    assert deadline is not None
                    now = max(loop.time(), deadline)  # the timer may fire a hair early
                    continue
                if isinstance(item, Exception):
                    raise item
                batch = self._observe(item)
                now = loop.time()
                if batch:
                    yield batch
        finally:
            reader.cancel()
            await asyncio.wait({reader})

    async def _read(self, link: Link, queue: asyncio.Queue[list[Frame] | Exception]) -> None:
        try:
            async for frames in read_frames(link, make_framer(self.device)):
                frames = [f for f in frames if not f.blank]
                if frames:
                    queue.put_nowait(frames)
            queue.put_nowait(ConnectError(self.name, f"{link.description} closed"))
        except (ConnectError, ReadError) as exc:
            queue.put_nowait(exc)
        except Exception as exc:  # a bug must end the stream loudly, not hang it
            log.exception("device %s: reading failed", self.name, extra={"device": self.name})
            queue.put_nowait(ReadError(self.name, f"reading failed: {exc!r}"))

    # -- lines -> observations --------------------------------------------------------------

    def _observe(self, frames: Sequence[Frame]) -> list[Observation]:
        # Frame times are the loop's clock; records want the wall clock.
        offset = time.time() - asyncio.get_running_loop().time()
        out: list[Observation] = []
        for frame in frames:
            text, error = decode(frame)
            if text is None:
                out.append(self._rejected(frame, error or "not text", offset))
                continue
            parsed = parse_line(text, self._format)
            if isinstance(parsed, IgnoredLine):
                self.skipped_lines += 1
                continue
            if isinstance(parsed, RejectedRead):
                out.append(self._rejected(frame, parsed.reason, offset))
                continue
            if self._antennas is not None:
                if parsed.antenna is None:
                    why = "no antenna in the read, and antennas lists the ones that count"
                    out.append(self._rejected(frame, why, offset))
                    continue
                if parsed.antenna not in self._antennas:
                    self._other_antenna(parsed.antenna)
                    continue
            self.reads += 1
            for event in self._deduper.feed(parsed, frame.ts):
                out.append(self._event(event, offset))
        return out

    def _departed(self, events: Sequence[TagEvent]) -> list[Observation]:
        if not events:
            return []
        offset = time.time() - asyncio.get_running_loop().time()
        return [self._event(e, offset) for e in events]

    def _event(self, event: TagEvent, offset: float) -> Observation:
        info = decode_epc(event.epc)
        ts = event.at + offset
        detail: dict[str, Value]
        if event.kind is EventKind.ARRIVAL:
            detail = {
                "epc": info.hex,
                "uri": info.uri,
                "scheme": info.scheme,
                "antenna": event.antenna,
                "rssi": event.rssi,
                "reads": event.reads,
            }
            if event.reader_time is not None:
                detail["reader_time"] = event.reader_time
            if info.error is not None:
                detail["epc_error"] = info.error
            text = arrival_text(info)
            return Observation(self.name, self.device.point, text, ts=ts, detail=detail)
        detail = {
            "epc": info.hex,
            "uri": info.uri,
            "scheme": info.scheme,
            "reads": event.reads,
            "dwell": round(event.dwell, 3),
            "antennas": ",".join(map(str, event.antennas)),
            "best_rssi": event.best_rssi,
            "evicted": event.evicted,
        }
        return Observation(self.name, self.device.departure_point, info.hex, ts=ts, detail=detail)

    def _rejected(self, frame: Frame, why: str, offset: float) -> Observation:
        self.status.reads_failed += 1
        detail: dict[str, Value] = {"line": escaped(frame.raw), "length": len(frame.raw)}
        return Observation(
            self.name, self.device.point, None, Quality.BAD,
            ts=frame.ts + offset, error=why, detail=detail,
        )  # fmt: skip

    def _other_antenna(self, antenna: int) -> None:
        self.other_antennas += 1
        if antenna not in self._reported_antennas and len(self._reported_antennas) < 64:
            self._reported_antennas.add(antenna)
            log.info(
                "device %s: reads on antenna %d are skipped (antennas: %s)",
                self.name, antenna, sorted(self._antennas or ()),
                extra={"device": self.name},
            )  # fmt: skip
