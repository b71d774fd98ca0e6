"""Reader lines -> tag reads, and reads -> arrivals/departures: tables in, results out."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.rfid.reads import (
    MAX_ANTENNAS_PER_TAG,
    MAX_LINE_CHARS,
    PRESETS,
    Deduper,
    EventKind,
    IgnoredLine,
    ReadFormat,
    RejectedRead,
    TagEvent,
    TagRead,
    format_named,
    parse_line,
)

SGTIN = "3074257BF7194E4000001A85"  # the GS1 EPC TDS SGTIN-96 example
FULLWIDTH = "\uff13\uff10\uff17\uff14"  # "3074" in fullwidth digits: not ASCII hex
GARBAGE = "\x15\ufffd\ufffd?##noise##"  # bytes that were not UTF-8, decoded with "replace"

# ---- parsing -------------------------------------------------------------------------------

# (format, line, epc, antenna, rssi, reader time)
GOOD = [
    ("epc", SGTIN, SGTIN, None, None, None),
    ("epc", SGTIN.lower() + "\r\n", SGTIN, None, None, None),
    ("epc", f"  {SGTIN}\t\r\n", SGTIN, None, None, None),
    ("epc", "E2801160600002054CC2096F", "E2801160600002054CC2096F", None, None, None),
    ("epc", "3034", "3034", None, None, None),
    ("csv", f"{SGTIN},1,-55.5\r\n", SGTIN, 1, -55.5, None),
    ("csv", f"{SGTIN} , 4 , -61", SGTIN, 4, -61.0, None),
    ("csv", f"{SGTIN},0,-70.25", SGTIN, 0, -70.25, None),
    ("csv", f"{SGTIN},,", SGTIN, None, None, None),
    # Alien's own example line (alientag.rb), EPC in groups of four.
    (
        "alien-text",
        "Tag:0102 0304 0506 0708 0900 0A0B, Disc:2008/10/28 10:49:35, "
        "Last:2008/10/28 10:49:35, Count:1, Ant:3, Proto:2",
        "010203040506070809000A0B",
        3,
        None,
        "2008/10/28 10:49:35",
    ),
    (
        "alien-text",
        "Tag:3074 257B F719 4E40 0000 1A85, Disc:2024/01/02 08:00:00, "
        "Last:2024/01/02 08:00:01, Count:12, Ant:0, Proto:2, RSSI:-48.5\r\n",
        SGTIN,
        0,
        -48.5,
        "2024/01/02 08:00:01",
    ),
    ("alien-text", f"tag:{SGTIN}, ant:2", SGTIN, 2, None, None),
    ("alien-text", f"Tag:{SGTIN}", SGTIN, None, None, None),
    # Impinj's own sample (Speedway Connect data integration article), and keys reordered.
    (
        "impinj-json",
        '{"antennaPort":7,"epc":"999908290000000000000004",'
        '"firstSeenTimestamp":"2018-06-14T00:15:54.36879Z","peakRssi":-51,"isHeartBeat":false}',
        "999908290000000000000004",
        7,
        -51.0,
        "2018-06-14T00:15:54.36879Z",
    ),
    (
        "impinj-json",
        '{"epc": "999908290000000000000003", "tid": "E28011002000564500000001", '
        '"peakRssi": -50, "antennaPort": 23, "isHeartBeat": false}',
        "999908290000000000000003",
        23,
        -50.0,
        None,
    ),
]


@pytest.mark.parametrize(("fmt", "line", "epc", "antenna", "rssi", "ts"), GOOD)
def test_a_line_becomes_a_read(
    fmt: str, line: str, epc: str, antenna: int | None, rssi: float | None, ts: str | None
) -> None:
    read = parse_line(line, PRESETS[fmt])
    assert read == TagRead(epc, antenna, rssi, ts, line.rstrip("\r\n"))


BAD = [
    ("epc", "3074 257B", "line does not match the epc format"),
    (
        "epc",
        "3074257BF7194E4000001A8",
        "EPC 3074257BF7194E4000001A8 has an odd number of hex digits (23)",
    ),
    ("epc", "3074257BF7194E40000Z1A85", "EPC '3074257BF7194E40000Z1A85' is not hexadecimal"),
    ("epc", "0x3074", "EPC '0x3074' is not hexadecimal"),
    ("epc", FULLWIDTH, f"EPC '{FULLWIDTH}' is not hexadecimal"),
    ("epc", GARBAGE, f"EPC {GARBAGE!r} is not hexadecimal"),
    ("epc", "00" * 63, "EPC of 504 bits is longer than a tag can hold (496)"),
    ("csv", f"{SGTIN},1", "line does not match the csv format"),
    ("csv", "3074257BF71", "line does not match the csv format"),
    ("csv", f"{SGTIN},1,-55,extra", "line does not match the csv format"),
    ("csv", ",1,-55", "empty EPC"),
    ("csv", f"{SGTIN},one,-55", "antenna 'one' is not a whole number"),
    ("csv", f"{SGTIN},-1,-55", "antenna '-1' is not a whole number"),
    ("csv", f"{SGTIN},1.5,-55", "antenna '1.5' is not a whole number"),
    ("csv", f"{SGTIN},٣,-55", "antenna '٣' is not a whole number"),  # an Arabic-Indic digit
    ("csv", f"{SGTIN},70000,-55", "antenna 70000 is out of range (0-65535)"),
    ("csv", f"{SGTIN},1,loud", "RSSI 'loud' is not a number"),
    ("csv", f"{SGTIN},1,nan", "RSSI 'nan' is not a finite number"),
    ("csv", f"{SGTIN},1,-inf", "RSSI '-inf' is not a finite number"),
    ("alien-text", f"EPC:{SGTIN}, Ant:1", "line does not match the alien-text format"),
    (
        "alien-text",
        "Tag:3074 257B F71, Ant:1",
        "EPC 3074257BF71 has an odd number of hex digits (11)",
    ),
    (
        "impinj-json",
        '{"antennaPort":1,"peakRssi":-50}',
        "line does not match the impinj-json format",
    ),
    ("impinj-json", '{"epc":"zz99","antennaPort":1}', "EPC 'zz99' is not hexadecimal"),
]


@pytest.mark.parametrize(("fmt", "line", "reason"), BAD)
def test_a_bad_line_is_rejected_with_its_reason(fmt: str, line: str, reason: str) -> None:
    assert parse_line(line + "\r\n", PRESETS[fmt]) == RejectedRead(line, reason)


def test_an_overlong_line_is_rejected_and_cut() -> None:
    line = "A" * (MAX_LINE_CHARS + 10)
    result = parse_line(line, PRESETS["epc"])
    assert result == RejectedRead(
        "A" * MAX_LINE_CHARS, f"line longer than {MAX_LINE_CHARS} characters"
    )


IGNORED = [
    ("epc", ""),
    ("csv", "\r\n"),
    ("csv", "   "),
    ("alien-text", "(No Tags)\r\n"),
    ("impinj-json", '{"isHeartBeat":true}'),
    ("impinj-json", '{"antennaPort":0,"isHeartBeat": true,"epc":""}'),
]


@pytest.mark.parametrize(("fmt", "line"), IGNORED)
def test_empty_lines_and_reader_notices_are_ignored(fmt: str, line: str) -> None:
    assert parse_line(line, PRESETS[fmt]) == IgnoredLine(line.rstrip("\r\n"))


def test_a_custom_format() -> None:
    # Thinkify-style "ENTRYEPC=<hex>" lines, with a reader notice to skip.
    fmt = ReadFormat("thinkify", r"ENTRYEPC=(?P<epc>\w*)", ignore=r"STADONE=.*")
    assert parse_line(f"ENTRYEPC={SGTIN}\r\n", fmt) == TagRead(SGTIN, raw=f"ENTRYEPC={SGTIN}")
    assert isinstance(parse_line("STADONE=ALL00", fmt), IgnoredLine)
    assert parse_line("EXITEPC=READFAIL", fmt) == RejectedRead(
        "EXITEPC=READFAIL", "line does not match the thinkify format"
    )


@pytest.mark.parametrize(
    ("pattern", "ignore", "message"),
    [
        (r"(?P<tag>\w+)", None, "read format 'x': the pattern has no (?P<epc>...) group"),
        (
            r"(?P<epc>\w+),(?P<ant>\d+)",
            None,
            "read format 'x': unknown group(s) ant; use antenna, epc, rssi, ts",
        ),
        (r"(?P<epc>\w+", None, "read format 'x': pattern is not a valid regex: "),
        (r"(?P<epc>\w+)", "(", "read format 'x': ignore is not a valid regex: "),
    ],
)
def test_a_bad_format_fails_when_it_is_made(pattern: str, ignore: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        ReadFormat("x", pattern, ignore)


def test_presets_by_name() -> None:
    assert set(PRESETS) == {"epc", "csv", "alien-text", "impinj-json"}
    assert format_named("csv") is PRESETS["csv"]
    with pytest.raises(ValueError, match=re.escape("unknown read format 'cvs'; presets: epc, csv")):
        format_named("cvs")
    for name, fmt in PRESETS.items():
        assert fmt.name == name
        assert fmt.description


# ---- dedupe --------------------------------------------------------------------------------

A, B, C = "30A0", "30B0", "30C0"


@dataclass(frozen=True)
class R:
    """A read at time ``t`` in a dedupe script."""

    t: float
    epc: str
    antenna: int | None = 1
    rssi: float | None = -60.0


@dataclass(frozen=True)
class X:
    """An ``expire(t)`` call in a dedupe script."""

    t: float


def run(deduper: Deduper, script: list[R | X]) -> list[tuple[object, ...]]:
    """Play a script; every event as (kind, epc, at, reads, dwell, antenna, rssi, best,
    antennas) plus ``evicted`` when set."""
    out: list[tuple[object, ...]] = []
    for step in script:
        if isinstance(step, X):
            events = deduper.expire(step.t)
        else:
            events = deduper.feed(TagRead(step.epc, step.antenna, step.rssi), step.t)
        out.extend(short(e) for e in events)
    return out


def short(e: TagEvent) -> tuple[object, ...]:
    row: tuple[object, ...] = (
        e.kind.value,
        e.epc,
        round(e.at, 6),
        e.reads,
        round(e.dwell, 6),
        e.antenna,
        e.rssi,
        e.best_rssi,
        e.antennas,
    )
    return (*row, "evicted") if e.evicted else row


DEDUPE = {
    "repeated reads are one arrival": (
        Deduper(window=1.0),
        [R(0.0, A), R(0.1, A, 2, -50), R(0.5, A), R(1.4, A)],
        [("arrival", A, 0.0, 1, 0.0, 1, -60.0, -60.0, (1,))],
    ),
    "no departures: a read after the window is a new arrival": (
        Deduper(window=1.0),
        [R(0.0, A), R(0.75, A), R(1.5, A), R(2.5, A, 3, -40)],
        [
            ("arrival", A, 0.0, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("arrival", A, 2.5, 1, 0.0, 3, -40.0, -40.0, (3,)),
        ],
    ),
    "a gap of exactly the window ends the presence": (
        Deduper(window=0.5),
        [R(1.0, A), R(1.5, A)],
        [
            ("arrival", A, 1.0, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("arrival", A, 1.5, 1, 0.0, 1, -60.0, -60.0, (1,)),
        ],
    ),
    "a departure carries the count, the dwell, the best RSSI and the antennas": (
        Deduper(window=0.5, departure_after=2.0),
        [
            R(10.0, A, 2, -70),
            R(10.5, A, 1, -52.5),
            R(11.0, A, 4, -58),
            R(12.25, A, None, None),
            X(14.0),
            X(14.25),
        ],
        [
            ("arrival", A, 10.0, 1, 0.0, 2, -70.0, -70.0, (2,)),
            ("departure", A, 14.25, 4, 2.25, 2, -70.0, -52.5, (1, 2, 4)),
        ],
    ),
    "the departure time is the silence's end, however late expire() comes": (
        Deduper(window=0.5, departure_after=1.0),
        [R(0.0, A), R(0.25, A), X(60.0)],
        [
            ("arrival", A, 0.0, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("departure", A, 1.25, 2, 0.25, 1, -60.0, -60.0, (1,)),
        ],
    ),
    "a tag that comes back after departing arrives again": (
        Deduper(window=0.5, departure_after=1.0),
        [R(0.0, A), X(1.0), R(1.1, A, 2, -45)],
        [
            ("arrival", A, 0.0, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("departure", A, 1.0, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("arrival", A, 1.1, 1, 0.0, 2, -45.0, -45.0, (2,)),
        ],
    ),
    "a read after the silence departs and arrives in one feed": (
        Deduper(window=0.5, departure_after=1.0),
        [R(0.0, A), R(3.0, A)],
        [
            ("arrival", A, 0.0, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("departure", A, 1.0, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("arrival", A, 3.0, 1, 0.0, 1, -60.0, -60.0, (1,)),
        ],
    ),
    "departures come in order of last read, before a new tag's arrival": (
        Deduper(window=0.2, departure_after=1.0),
        [R(0.0, A), R(0.1, B), R(0.2, A), R(1.15, C), R(1.3, C)],
        [
            ("arrival", A, 0.0, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("arrival", B, 0.1, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("departure", B, 1.1, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("arrival", C, 1.15, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("departure", A, 1.2, 2, 0.2, 1, -60.0, -60.0, (1,)),
        ],
    ),
    "time going backwards counts as the latest time": (
        Deduper(window=1.0, departure_after=1.0),
        [R(5.0, A), R(4.0, A), X(5.5), X(6.0)],
        [
            ("arrival", A, 5.0, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("departure", A, 6.0, 2, 0.0, 1, -60.0, -60.0, (1,)),
        ],
    ),
    "at the cap the least recently read tag is evicted, with a departure": (
        Deduper(window=1.0, departure_after=5.0, max_tags=2),
        [R(0.0, A), R(0.1, B), R(0.2, A), R(0.3, C), R(0.4, B)],
        [
            ("arrival", A, 0.0, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("arrival", B, 0.1, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("departure", B, 0.3, 1, 0.0, 1, -60.0, -60.0, (1,), "evicted"),
            ("arrival", C, 0.3, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("departure", A, 0.4, 2, 0.2, 1, -60.0, -60.0, (1,), "evicted"),
            ("arrival", B, 0.4, 1, 0.0, 1, -60.0, -60.0, (1,)),
        ],
    ),
    "at the cap without departures the eviction is silent": (
        Deduper(window=1.0, max_tags=1),
        [R(0.0, A), R(0.1, B), R(0.2, A)],
        [
            ("arrival", A, 0.0, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("arrival", B, 0.1, 1, 0.0, 1, -60.0, -60.0, (1,)),
            ("arrival", A, 0.2, 1, 0.0, 1, -60.0, -60.0, (1,)),
        ],
    ),
    "reads without antenna or RSSI": (
        Deduper(window=1.0, departure_after=1.0),
        [R(0.0, A, None, None), R(0.5, A, None, -70), X(2.0)],
        [
            ("arrival", A, 0.0, 1, 0.0, None, None, None, ()),
            ("departure", A, 1.5, 2, 0.5, None, None, -70.0, ()),
        ],
    ),
}


@pytest.mark.parametrize(("deduper", "script", "expected"), DEDUPE.values(), ids=list(DEDUPE))
def test_dedupe(deduper: Deduper, script: list[R | X], expected: list[tuple[object, ...]]) -> None:
    assert run(deduper, script) == expected


def test_eviction_is_counted() -> None:
    d = Deduper(window=1.0, max_tags=2)
    for i, epc in enumerate([A, B, C, A]):
        d.feed(TagRead(epc), i * 0.1)
    assert d.evicted == 2
    assert len(d) == 2
    assert A in d
    assert B not in d


def test_the_deadline_says_when_to_expire() -> None:
    d = Deduper(window=0.5, departure_after=2.0)
    assert d.deadline() is None
    d.feed(TagRead(A), 1.0)
    d.feed(TagRead(B), 1.5)
    assert d.deadline() == 3.0
    d.feed(TagRead(A), 2.0)  # A moves behind B
    assert d.deadline() == 3.5
    assert d.expire(3.49) == []
    assert [e.epc for e in d.expire(3.5)] == [B]
    assert d.deadline() == 4.0
    assert [e.epc for e in d.expire(10.0)] == [A]
    assert d.deadline() is None
    assert len(d) == 0


def test_the_deadline_without_departures_forgets() -> None:
    d = Deduper(window=0.5)
    d.feed(TagRead(A), 1.0)
    assert d.deadline() == 1.5
    assert d.expire(1.5) == []
    assert len(d) == 0


def test_antennas_per_tag_are_capped() -> None:
    d = Deduper(window=1.0, departure_after=1.0)
    for antenna in range(200):
        d.feed(TagRead(A, antenna=antenna), 0.001 * antenna)
    (departure,) = d.expire(10.0)
    assert departure.reads == 200
    assert len(departure.antennas) == MAX_ANTENNAS_PER_TAG
    assert departure.antennas == tuple(range(MAX_ANTENNAS_PER_TAG))


def test_the_reader_time_of_the_first_read_is_kept() -> None:
    d = Deduper(window=1.0, departure_after=1.0)
    (arrival,) = d.feed(TagRead(A, reader_time="08:00:00.000"), 0.0)
    d.feed(TagRead(A, reader_time="08:00:00.100"), 0.1)
    (departure,) = d.expire(5.0)
    assert arrival.kind is EventKind.ARRIVAL
    assert arrival.reader_time == departure.reader_time == "08:00:00.000"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0.0}, "window must be positive, got 0.0"),
        ({"window": float("nan")}, "window must be positive, got nan"),
        ({"window": 1.0, "departure_after": 0.5}, "departure_after (0.5) must be at least window"),
        ({"window": 1.0, "max_tags": 0}, "max_tags must be at least 1, got 0"),
    ],
)
def test_a_bad_deduper_fails_when_it_is_made(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Deduper(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    reads=st.lists(
        st.tuples(st.floats(0, 0.6), st.sampled_from([A, B, C, "30D0"])), min_size=1, max_size=60
    ),
    departures=st.booleans(),
)
def test_dedupe_invariants(reads: list[tuple[float, str]], departures: bool) -> None:
    """Reads closer than the window never give two arrivals; arrivals and departures
    balance; the cap holds."""
    window = 0.5
    d = Deduper(window, departure_after=0.75 if departures else None, max_tags=3)
    now = 0.0
    arrivals: dict[str, list[float]] = {}
    last_read: dict[str, float] = {}
    balance = 0
    for gap, epc in reads:
        now += gap
        for e in d.feed(TagRead(epc), now):
            balance += 1 if e.kind is EventKind.ARRIVAL else -1
            assert e.kind is EventKind.ARRIVAL or departures
            if e.kind is EventKind.ARRIVAL:
                arrivals.setdefault(e.epc, []).append(e.at)
                if epc in last_read and not d.evicted:
                    assert last_read[epc] + window <= now  # the deduper's own arithmetic
        last_read[epc] = now
        assert len(d) <= 3
    balance -= len(d.expire(now + 10))
    assert len(d) == 0
    if departures:
        assert balance == 0
