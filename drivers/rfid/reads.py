"""Tag reads from an RFID reader's text output, and their reduction to arrivals and departures.

Why this module exists: a UHF reader in front of a station reads a tag that sits in its field
tens of times a second, on several antennas. A traceability record wants one fact per visit
("part 123 arrived at ST20 at 10:02:03", and maybe "left at 10:02:41 after 312 reads"), not
a thousand rows. Both halves here are pure and cheap, so the event loop runs them for every
line, and the tests state them as tables.

Parsing (:func:`parse_line`)
  * Readers in their ASCII, "autonomous" or keyboard-wedge modes print one read per line. A
    :class:`ReadFormat` is a regular expression with named groups that must match the whole
    line (``re.fullmatch``, the way scan rules match): ``epc`` (required), ``antenna``,
    ``rssi`` and ``ts`` (optional). The line's trailing CR/LF is not part of it.
  * A line that does not match, an EPC that is not an even number of hex digits, an antenna
    that is not a whole number: each is a :class:`RejectedRead` carrying the line and the
    specific reason. A garbled line is data to record, never an exception.
  * Empty lines, and lines the format's ``ignore`` pattern matches (a reader's heartbeat,
    Alien's ``(No Tags)``), are :class:`IgnoredLine`: not reads, and not errors either.
  * Whitespace inside the EPC is dropped (Alien prints ``3074 257B ...`` in groups of four);
    the EPC is reported upper case. ``ts`` is the reader's own time stamp, kept as text: the
    agent times events with its own monotonic clock, and a reader's clock is rarely set.

Presets (:data:`PRESETS`), each from a documented reader output:
  * ``epc``: the EPC alone. What readers send in keyboard-wedge/HID mode and in scan modes
    configured for the EPC only (FEIG ID ISC "Scan-Mode" with ASCII-formatted hex data and
    an end character; the Acura/Hexapad autonomous mode with no optional fields).
  * ``csv``: ``EPC,ANTENNA,RSSI`` with all three fields (a line cut short is rejected, not
    mistaken for a read without RSSI). The usual configurable "separator" output of
    autonomous modes, and the simulator's default.
  * ``alien-text``: Alien Technology's ``TagListFormat = text``:
    ``Tag:3074 257B ..., Disc:2008/10/28 10:49:35, Last:2008/10/28 10:49:35, Count:1,
    Ant:3, Proto:2`` (also a ``custom`` format using the same ``Key:value`` tokens, e.g.
    with ``RSSI:``). ``(No Tags)`` is ignored. Alien antennas count from 0.
  * ``impinj-json``: Impinj Speedway Connect's JSON output (TCP socket, serial, keyboard
    emulation), one object per line: ``{"antennaPort":7,"epc":"9999...","firstSeenTimestamp":
    "...","peakRssi":-51,"isHeartBeat":false}``, keys in any order. Heartbeats are ignored.
  Zebra fixed readers (IoT Connector) and handhelds (MQTT ``dataEVT``) publish JSON batches
  over MQTT/HTTP rather than lines, and ThingMagic's serial protocol is binary; they get no
  preset. A reader whose output differs gets a custom pattern.

Dedupe (:class:`Deduper`)
  * A tag is *present* from its first read until it has not been read for ``window`` seconds
    (or ``departure_after`` seconds, when departures are wanted). Its first read while absent
    is an ARRIVAL; further reads only update its record (last seen, read count, best RSSI,
    antennas). Two reads of one EPC less than ``window`` apart never give two arrivals.
  * With ``departure_after``, a tag unread for that long gives one DEPARTURE carrying the
    read count and the dwell time (last read minus first read); its time ``at`` is the
    moment the silence reached ``departure_after``, whenever :meth:`Deduper.expire` is
    called. ``departure_after`` must be at least ``window``. Without it, presence just ends
    silently after ``window``. Either way the next read is a new ARRIVAL.
  * Memory is bounded: at most ``max_tags`` tags are tracked. When a new tag arrives at the
    cap, the tag read least recently is dropped first (with departures on, it gets a
    DEPARTURE marked ``evicted``); a dropped tag that is still in the field arrives again on
    its next read. ``evicted`` counts them. Antennas kept per tag are capped too.
  * ``now`` is a monotonic clock reading; it must not go backwards (a smaller value counts as
    the latest one seen). Time-outs are checked on every :meth:`Deduper.feed`, and
    :meth:`Deduper.deadline` tells a runner when to call :meth:`Deduper.expire` next.
    Both are O(1) per event: tags are kept in order of their last read.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "PRESETS",
    "Deduper",
    "EventKind",
    "IgnoredLine",
    "ReadFormat",
    "RejectedRead",
    "TagEvent",
    "TagRead",
    "epc_problem",
    "format_named",
    "parse_line",
]

GROUPS = frozenset({"epc", "antenna", "rssi", "ts"})
"""The named groups a format may use; ``epc`` is required."""
MAX_LINE_CHARS = 1024
"""Longer lines are rejected (and their text cut to this length in the rejection)."""
MAX_EPC_BITS = 496
"""The largest EPC a Gen2 tag can hold (PC length field: 31 words)."""
MAX_ANTENNA = 65535
"""LLRP's AntennaID is 16 bits; anything above is a misparse."""
MAX_ANTENNAS_PER_TAG = 64
"""Distinct antennas recorded per present tag; further ones are not added."""

_HEX = re.compile(r"[0-9A-Fa-f]*")
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class ReadFormat:
    """How one reader prints a read: a pattern for the whole line, with named groups.

    Construction fails with ValueError (naming the format) when the pattern does not compile,
    has no ``epc`` group, or has a group other than ``epc``, ``antenna``, ``rssi``, ``ts``, so
    a bad configuration is caught at start-up, not on the first read.
    """

    name: str
    pattern: str
    ignore: str | None = None
    """Lines matching this (whole line) are not reads: heartbeats, "no tags" notices."""
    description: str = ""
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    ignore_regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = _compile(self.name, "pattern", self.pattern)
        groups = set(regex.groupindex)
        if "epc" not in groups:
            raise ValueError(f"read format {self.name!r}: the pattern has no (?P<epc>...) group")
        unknown = sorted(groups - GROUPS)
        if unknown:
            raise ValueError(
                f"read format {self.name!r}: unknown group(s) {', '.join(unknown)}; "
                f"use {', '.join(sorted(GROUPS))}"
            )
        object.__setattr__(self, "regex", regex)
        ignore = None if self.ignore is None else _compile(self.name, "ignore", self.ignore)
        object.__setattr__(self, "ignore_regex", ignore)


def _compile(name: str, what: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"read format {name!r}: {what} is not a valid regex: {exc}") from None


def _preset(name: str, pattern: str, ignore: str | None, description: str) -> ReadFormat:
    return ReadFormat(name, pattern, ignore, description)


_PRESETS = (
    _preset(
        "epc",
        r"\s*(?P<epc>\S+)\s*",
        None,
        "The EPC alone, in hex (keyboard-wedge / scan modes).",
    ),
    _preset(
        "csv",
        r"\s*(?P<epc>[^,]*?)\s*,\s*(?P<antenna>[^,]*?)\s*,\s*(?P<rssi>[^,]*?)\s*",
        None,
        "EPC,ANTENNA,RSSI: hex EPC, antenna number, RSSI in dBm.",
    ),
    _preset(
        "alien-text",
        # Key:value fields separated by commas; Tag first, the others in any order.
        r"(?i)\s*Tag:(?P<epc>[^,]*?)\s*"
        r"(?=(?:.*,\s*Last:(?P<ts>[^,]*?)\s*(?:,|$))?)"
        r"(?=(?:.*,\s*Ant:(?P<antenna>[^,]*?)\s*(?:,|$))?)"
        r"(?=(?:.*,\s*RSSI:(?P<rssi>[^,]*?)\s*(?:,|$))?)"
        r"(?:,.*)?",
        r"\s*\(No Tags\)\s*",
        "Alien TagListFormat text: Tag:<EPC>, Disc:..., Last:..., Count:n, Ant:n[, RSSI:x].",
    ),
    _preset(
        "impinj-json",
        r'\s*\{(?=.*"epc"\s*:\s*"(?P<epc>[^"]*)")'
        r'(?=(?:.*"antennaPort"\s*:\s*(?P<antenna>[^,}\s]*))?)'
        r'(?=(?:.*"peakRssi"\s*:\s*(?P<rssi>[^,}\s]*))?)'
        r'(?=(?:.*"firstSeenTimestamp"\s*:\s*"(?P<ts>[^"]*)")?)'
        r".*\}\s*",
        r'.*"isHeartBeat"\s*:\s*true.*',
        "Impinj Speedway Connect JSON, one object per line; heartbeats ignored.",
    ),
)
PRESETS: Mapping[str, ReadFormat] = MappingProxyType({f.name: f for f in _PRESETS})
"""The named formats, by name."""


def format_named(name: str) -> ReadFormat:
    """The preset called ``name``; ValueError listing the presets if there is none."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown read format {name!r}; presets: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class TagRead:
    """One read of one tag, as the reader reported it."""

    epc: str
    """Upper-case hex, an even number of digits."""
    antenna: int | None = None
    rssi: float | None = None
    """dBm, as the reader printed it."""
    reader_time: str | None = None
    """The reader's own time stamp (the ``ts`` group), verbatim."""
    raw: str = ""


@dataclass(frozen=True)
class RejectedRead:
    """A line that should have been a read and is not: the line and why."""

    raw: str
    reason: str


@dataclass(frozen=True)
class IgnoredLine:
    """A line that is not a read by design: empty, or matched by the format's ``ignore``."""

    raw: str


def parse_line(line: str, fmt: ReadFormat) -> TagRead | RejectedRead | IgnoredLine:
    """One line of reader output (trailing CR/LF allowed) as a read, a rejection or nothing."""
    raw = line.rstrip("\r\n")
    if len(raw) > MAX_LINE_CHARS:
        return RejectedRead(raw[:MAX_LINE_CHARS], f"line longer than {MAX_LINE_CHARS} characters")
    if not raw.strip():
        return IgnoredLine(raw)
    if fmt.ignore_regex is not None and fmt.ignore_regex.fullmatch(raw):
        return IgnoredLine(raw)
    match = fmt.regex.fullmatch(raw)
    if match is None:
        return RejectedRead(raw, f"line does not match the {fmt.name} format")
    groups = match.groupdict()

    epc = _WHITESPACE.sub("", groups["epc"] or "")
    why = epc_problem(epc)
    if why is not None:
        return RejectedRead(raw, why)

    antenna: int | None = None
    text = _field(groups, "antenna")
    if text is not None:
        if not text.isascii() or not text.isdigit():
            return RejectedRead(raw, f"antenna {text!r} is not a whole number")
        antenna = int(text)
        if antenna > MAX_ANTENNA:
            return RejectedRead(raw, f"antenna {antenna} is out of range (0-{MAX_ANTENNA})")

    rssi: float | None = None
    text = _field(groups, "rssi")
    if text is not None:
        try:
            rssi = float(text)
        except ValueError:
            return RejectedRead(raw, f"RSSI {text!r} is not a number")
        if not math.isfinite(rssi):
            return RejectedRead(raw, f"RSSI {text!r} is not a finite number")

    return TagRead(epc.upper(), antenna, rssi, _field(groups, "ts"), raw)


def epc_problem(epc: str) -> str | None:
    """Why ``epc`` (whitespace already removed) is not a usable EPC, or None if it is."""
    if not epc:
        return "empty EPC"
    if not epc.isascii() or not _HEX.fullmatch(epc):
        return f"EPC {epc!r} is not hexadecimal"
    if len(epc) % 2:
        return f"EPC {epc} has an odd number of hex digits ({len(epc)})"
    if len(epc) * 4 > MAX_EPC_BITS:
        return f"EPC of {len(epc) * 4} bits is longer than a tag can hold ({MAX_EPC_BITS})"
    return None


def _field(groups: Mapping[str, str | None], name: str) -> str | None:
    """A group's text, stripped; None when absent or empty."""
    value = groups.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


# ---- dedupe ------------------------------------------------------------------------------


class EventKind(StrEnum):
    ARRIVAL = "arrival"
    DEPARTURE = "departure"


@dataclass(frozen=True)
class TagEvent:
    """A tag entering the field (its first read) or leaving it (its reads stopped)."""

    kind: EventKind
    epc: str
    at: float
    """Monotonic time: the first read (arrival), or last read + ``departure_after``
    (departure; the time of the eviction for an evicted tag)."""
    first_seen: float
    last_seen: float
    reads: int
    """Reads in this visit: 1 for an arrival, the total for a departure."""
    antenna: int | None
    """The antenna of the first read."""
    rssi: float | None
    """The RSSI of the first read."""
    best_rssi: float | None
    """The strongest RSSI of the visit (for an arrival, the first read's)."""
    antennas: tuple[int, ...]
    """Every antenna that read the tag in this visit, sorted."""
    reader_time: str | None = None
    """The reader's time stamp of the first read."""
    evicted: bool = False
    """A departure forced by the tracking cap, not by silence."""

    @property
    def dwell(self) -> float:
        """Seconds from the first to the last read of the visit (0 for an arrival)."""
        return self.last_seen - self.first_seen


class _Presence:
    """What the deduper keeps about one present tag (mutable, owned by the Deduper)."""

    __slots__ = (
        "antenna",
        "antennas",
        "best_rssi",
        "epc",
        "first_seen",
        "last_seen",
        "reader_time",
        "reads",
        "rssi",
    )

    def __init__(self, read: TagRead, now: float) -> None:
        self.epc = read.epc
        self.first_seen = self.last_seen = now
        self.reads = 1
        self.antenna = read.antenna
        self.rssi = self.best_rssi = read.rssi
        self.antennas: set[int] = set() if read.antenna is None else {read.antenna}
        self.reader_time = read.reader_time

    def update(self, read: TagRead, now: float) -> None:
        self.last_seen = now
        self.reads += 1
        if read.rssi is not None and (self.best_rssi is None or read.rssi > self.best_rssi):
            self.best_rssi = read.rssi
        if read.antenna is not None and len(self.antennas) < MAX_ANTENNAS_PER_TAG:
            self.antennas.add(read.antenna)

    def event(self, kind: EventKind, at: float, evicted: bool = False) -> TagEvent:
        return TagEvent(
            kind=kind,
            epc=self.epc,
            at=at,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            reads=self.reads,
            antenna=self.antenna,
            rssi=self.rssi,
            best_rssi=self.best_rssi,
            antennas=tuple(sorted(self.antennas)),
            reader_time=self.reader_time,
            evicted=evicted,
        )


class Deduper:
    """Collapses a stream of reads into arrivals (and departures); see the module doc."""

    def __init__(
        self, window: float, departure_after: float | None = None, max_tags: int = 10_000
    ) -> None:
        if not window > 0:
            raise ValueError(f"window must be positive, got {window}")
        if departure_after is not None and not departure_after >= window:
            raise ValueError(
                f"departure_after ({departure_after}) must be at least window ({window}): "
                "a tag cannot leave before its repeated reads stop counting as one"
            )
        if max_tags < 1:
            raise ValueError(f"max_tags must be at least 1, got {max_tags}")
        self.window = window
        self.departure_after = departure_after
        self.max_tags = max_tags
        self.evicted = 0
        """Tags dropped by the cap while present (each may arrive twice)."""
        self._timeout = departure_after if departure_after is not None else window
        self._now = -math.inf
        # EPC -> presence, in order of last read (oldest first).
        self._tags: OrderedDict[str, _Presence] = OrderedDict()

    def __len__(self) -> int:
        """Tags currently tracked as present (some may be past their time-out until the next
        :meth:`feed` or :meth:`expire`)."""
        return len(self._tags)

    def __contains__(self, epc: object) -> bool:
        return epc in self._tags

    def feed(self, read: TagRead, now: float) -> list[TagEvent]:
        """Account for one read at ``now``: departures that fell due first, then the tag's
        ARRIVAL if it was not present (nothing if it was)."""
        now = self._advance(now)
        events = self._expire(now)
        presence = self._tags.get(read.epc)
        if presence is not None:
            presence.update(read, now)
            self._tags.move_to_end(read.epc)
            return events
        if len(self._tags) >= self.max_tags:
            _, oldest = self._tags.popitem(last=False)
            self.evicted += 1
            if self.departure_after is not None:
                events.append(oldest.event(EventKind.DEPARTURE, now, evicted=True))
        presence = _Presence(read, now)
        self._tags[read.epc] = presence
        events.append(presence.event(EventKind.ARRIVAL, now))
        return events

    def expire(self, now: float) -> list[TagEvent]:
        """End the presence of every tag unread for the time-out by ``now``: their
        DEPARTUREs in order (none when departures are off)."""
        return self._expire(self._advance(now))

    def deadline(self) -> float | None:
        """When :meth:`expire` next has something to do (a departure, or forgetting a tag);
        None while no tag is tracked."""
        if not self._tags:
            return None
        oldest = next(iter(self._tags.values()))
        return oldest.last_seen + self._timeout

    def _advance(self, now: float) -> float:
        if now > self._now:
            self._now = now
        return self._now

    def _expire(self, now: float) -> list[TagEvent]:
        events: list[TagEvent] = []
        while self._tags:
            oldest = next(iter(self._tags.values()))
            due = oldest.last_seen + self._timeout
            if due > now:
                break
            self._tags.popitem(last=False)
            if self.departure_after is not None:
                events.append(oldest.event(EventKind.DEPARTURE, due))
        return events
