"""The framer: tables per mode, then property tests of the accounting invariant.

A case is a list of reads, each ``(bytes, time)``, then an optional flush; the expected
frames are ``(data, raw, error)`` (and ``ts`` where the case is about time). Every case also
checks the invariant that the raws of all frames are exactly the bytes fed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.links.framing import (
    GARBAGE_PATTERN,
    GARBAGE_STX,
    Frame,
    Framer,
    decode,
    describe_bytes,
)

Reads = Sequence[tuple[bytes, float]]
Expected = list[tuple[bytes, bytes, str | None]]


def run(framer: Framer, reads: Reads, flush: str | None = "closed") -> list[Frame]:
    """Feed ``reads``, then flush (unless ``flush`` is None); assert the invariant."""
    frames: list[Frame] = []
    for data, now in reads:
        frames += framer.feed(data, now)
    if flush is not None:
        frames += framer.flush(flush)
        assert framer.pending() == 0
        assert framer.deadline() is None
        assert b"".join(f.raw for f in frames) == b"".join(d for d, _ in reads)
    return frames


def triples(frames: list[Frame]) -> Expected:
    return [(f.data, f.raw, f.error) for f in frames]


def at(*chunks: bytes) -> list[tuple[bytes, float]]:
    """Reads one second apart."""
    return [(c, float(i)) for i, c in enumerate(chunks)]


# ---- suffix --------------------------------------------------------------------------------

SUFFIX_CASES: list[tuple[str, bytes, list[bytes], Expected]] = [
    ("one scan", b"\r", [b"ABC\r"], [(b"ABC", b"ABC\r", None)]),
    (
        "two scans in one read",
        b"\r",
        [b"A1\rB2\r"],
        [(b"A1", b"A1\r", None), (b"B2", b"B2\r", None)],
    ),
    ("one scan in three reads", b"\r", [b"A", b"BC", b"D\r"], [(b"ABCD", b"ABCD\r", None)]),
    (
        "CR setting, reader sends CR LF",
        b"\r",
        [b"A1\r\nB2\r\n"],
        [(b"A1", b"A1\r\n", None), (b"B2", b"B2\r\n", None)],
    ),
    (
        "CR setting, CR LF split over two reads: the LF is a blank frame",
        b"\r",
        [b"A1\r", b"\nB2\r"],
        [(b"A1", b"A1\r", None), (b"", b"\n", None), (b"B2", b"B2\r", None)],
    ),
    (
        "CR setting, the LF alone in a read",
        b"\r",
        [b"A1\r", b"\n", b"B2\r"],
        [(b"A1", b"A1\r", None), (b"", b"\n", None), (b"B2", b"B2\r", None)],
    ),
    (
        "CR setting, an LF not after a CR is data",
        b"\r",
        [b"A\nB\r"],
        [(b"A\nB", b"A\nB\r", None)],
    ),
    (
        "LF setting, reader sends CR LF",
        b"\n",
        [b"A1\r\nB2\n"],
        [(b"A1", b"A1\r\n", None), (b"B2", b"B2\n", None)],
    ),
    (
        "LF setting, CR LF split over two reads",
        b"\n",
        [b"A1\r", b"\n"],
        [(b"A1", b"A1\r\n", None)],
    ),
    (
        "LF setting, a CR not before the LF is data",
        b"\n",
        [b"A\rB\n"],
        [(b"A\rB", b"A\rB\n", None)],
    ),
    (
        "CR LF terminator split between its bytes",
        b"\r\n",
        [b"XY\r", b"\nZ\r\n"],
        [(b"XY", b"XY\r\n", None), (b"Z", b"Z\r\n", None)],
    ),
    (
        "CR LF terminator: a lone CR is data",
        b"\r\n",
        [b"A\rB\r\n"],
        [(b"A\rB", b"A\rB\r\n", None)],
    ),
    (
        "blank lines are blank frames",
        b"\n",
        [b"\n\nA\n"],
        [(b"", b"\n", None), (b"", b"\n", None), (b"A", b"A\n", None)],
    ),
    (
        "GS and other control bytes stay in the data",
        b"\r",
        [b"]d2\x1d01\x00x\r"],
        [(b"]d2\x1d01\x00x", b"]d2\x1d01\x00x\r", None)],
    ),
    (
        "a multi-byte printable terminator",
        b"#END",
        [b"12#E", b"N", b"D34#END"],
        [(b"12", b"12#END", None), (b"34", b"34#END", None)],
    ),
    (
        "a half frame at close is rejected with the flush reason",
        b"\r",
        [b"OK\rHAL"],
        [(b"OK", b"OK\r", None), (b"HAL", b"HAL", "closed")],
    ),
]


@pytest.mark.parametrize(
    ("suffix", "reads", "expected"),
    [c[1:] for c in SUFFIX_CASES],
    ids=[c[0] for c in SUFFIX_CASES],
)
def test_suffix(suffix: bytes, reads: list[bytes], expected: Expected) -> None:
    assert triples(run(Framer("suffix", suffix=suffix), at(*reads))) == expected


def test_a_frame_comes_out_as_soon_as_its_terminator_arrives() -> None:
    framer = Framer(suffix=b"\r")
    assert framer.feed(b"AB", 1.0) == []
    assert framer.pending() == 2
    assert framer.feed(b"C\r", 2.0) == [Frame(b"ABC", b"ABC\r", None, 2.0)]
    assert framer.pending() == 0


def test_the_lf_of_a_split_cr_lf_is_recognised_across_a_flush() -> None:
    # A port reopened after a loss that starts with the LF is only finishing a CR LF.
    framer = Framer(suffix=b"\r")
    assert triples(framer.feed(b"A\r", 1.0)) == [(b"A", b"A\r", None)]
    assert framer.flush("port lost") == []
    assert triples(framer.feed(b"\nB\r", 2.0)) == [(b"", b"\n", None), (b"B", b"B\r", None)]


def test_the_held_bytes_grow_with_max_length() -> None:
    assert Framer().hold_bytes == 65536
    assert Framer(max_length=65536, suffix=b"\r\n").hold_bytes == 2 * 65536 + 4


def test_max_length_rejects_a_long_frame_and_resynchronises_at_the_terminator() -> None:
    framer = Framer(suffix=b"\r", max_length=4)
    frames = run(framer, at(b"1234\r12", b"345678", b"9\rOK\r"))
    assert triples(frames) == [
        (b"1234", b"1234\r", None),
        (b"123456789", b"123456789\r", "frame longer than 4 bytes"),
        (b"OK", b"OK\r", None),
    ]


def test_a_stream_without_terminator_is_handed_out_in_pieces_holding_bounded_memory() -> None:
    framer = Framer(suffix=b"\r\n", max_length=4, hold_bytes=10)
    reads = at(b"x" * 8, b"y" * 8, b"\r", b"\n", b"z" * 11 + b"\r", b"\nOK\r\n")
    frames = run(framer, reads)
    too_long = "frame longer than 4 bytes"
    assert triples(frames) == [
        # 16 bytes pending > 10 held: all but the last byte (it could start a CR LF) go out.
        (b"x" * 8 + b"y" * 7, b"x" * 8 + b"y" * 7, too_long),
        (b"y", b"y\r\n", too_long),  # the rest of that frame, up to its terminator
        (b"z" * 11, b"z" * 11, too_long),  # 12 > 10: the CR is kept back
        (b"", b"\r\n", too_long),  # ... and ends the over-long frame with the LF
        (b"OK", b"OK\r\n", None),  # in sync again
    ]
    assert framer.pending() == 0


def test_inter_char_timeout_rejects_a_half_frame_at_its_deadline() -> None:
    framer = Framer(suffix=b"\r\n", inter_char_timeout=0.5)
    assert framer.deadline() is None
    assert framer.feed(b"AB", 10.0) == []
    assert framer.feed(b"C", 10.25) == []
    assert framer.deadline() == 10.75  # from the last byte, not the first
    assert framer.expire(10.7) == []
    assert framer.expire(10.75) == [
        Frame(b"ABC", b"ABC", "incomplete frame: no CR LF within 0.5 s", 10.25)
    ]
    assert framer.deadline() is None
    assert framer.feed(b"D\r\n", 11.0) == [Frame(b"D", b"D\r\n", None, 11.0)]


def test_a_late_read_first_expires_the_stale_half_frame() -> None:
    # The caller did not call expire() in time: the late bytes must not complete the frame.
    framer = Framer(suffix=b"\r", inter_char_timeout=0.2)
    framer.feed(b"OLD", 1.0)
    assert triples(framer.feed(b"NEW\r", 5.0)) == [
        (b"OLD", b"OLD", "incomplete frame: no CR within 0.2 s"),
        (b"NEW", b"NEW\r", None),
    ]


def test_ts_is_the_arrival_of_the_frames_last_byte() -> None:
    framer = Framer("stx_etx")
    framer.feed(b"\x02AB", 1.0)
    frames = framer.feed(b"\x02CD\x03", 2.0)
    assert [(f.data, f.error, f.ts) for f in frames] == [
        (b"AB", "incomplete frame: STX before ETX", 1.0),
        (b"CD", None, 2.0),
    ]


# ---- STX ... ETX ---------------------------------------------------------------------------

STX_CASES: list[tuple[str, list[bytes], Expected]] = [
    ("one frame", [b"\x02ABC\x03"], [(b"ABC", b"\x02ABC\x03", None)]),
    (
        "split anywhere",
        [b"\x02", b"AB", b"C", b"\x03\x02D", b"\x03"],
        [(b"ABC", b"\x02ABC\x03", None), (b"D", b"\x02D\x03", None)],
    ),
    (
        "garbage before and between frames",
        [b"zz\x02A\x03\r\n\x02B\x03"],
        [
            (b"zz", b"zz", GARBAGE_STX),
            (b"A", b"\x02A\x03", None),
            (b"\r\n", b"\r\n", GARBAGE_STX),
            (b"B", b"\x02B\x03", None),
        ],
    ),
    (
        "a frame that lost its STX is garbage up to its ETX",
        [b"AB\x03\x02C\x03"],
        [(b"AB\x03", b"AB\x03", GARBAGE_STX), (b"C", b"\x02C\x03", None)],
    ),
    (
        "a frame that lost its ETX ends at the next STX",
        [b"\x02AB\x02CD\x03"],
        [
            (b"AB", b"\x02AB", "incomplete frame: STX before ETX"),
            (b"CD", b"\x02CD\x03", None),
        ],
    ),
    ("STX ETX is a blank frame", [b"\x02\x03"], [(b"", b"\x02\x03", None)]),
    (
        "trailing garbage at close",
        [b"\x02A\x03junk"],
        [(b"A", b"\x02A\x03", None), (b"junk", b"junk", GARBAGE_STX)],
    ),
    ("half frame at close", [b"\x02AB"], [(b"AB", b"\x02AB", "closed")]),
]


@pytest.mark.parametrize(
    ("reads", "expected"), [c[1:] for c in STX_CASES], ids=[c[0] for c in STX_CASES]
)
def test_stx_etx(reads: list[bytes], expected: Expected) -> None:
    assert triples(run(Framer("stx_etx"), at(*reads))) == expected


def test_stx_etx_max_length_resynchronises_at_the_next_stx_or_etx() -> None:
    framer = Framer("stx_etx", max_length=3)
    frames = run(framer, at(b"\x02ABCD\x03\x02xyz", b"long-no-etx\x02OK\x03"))
    assert triples(frames) == [
        (b"ABCD", b"\x02ABCD\x03", "frame longer than 3 bytes"),
        (b"xyzlong-no-etx", b"\x02xyzlong-no-etx", "frame longer than 3 bytes"),
        (b"OK", b"\x02OK\x03", None),
    ]


def test_stx_etx_pieces_of_an_endless_frame_and_of_endless_garbage() -> None:
    framer = Framer("stx_etx", max_length=2, hold_bytes=6)
    frames = run(framer, at(b"noise-noise", b"\x02abcdefgh", b"ij\x03\x02ok\x03"))
    too_long = "frame longer than 2 bytes"
    assert triples(frames) == [
        (b"noise-noise", b"noise-noise", GARBAGE_STX),
        (b"abcdefgh", b"\x02abcdefgh", too_long),
        (b"ij", b"ij\x03", too_long),
        (b"ok", b"\x02ok\x03", None),
    ]


def test_stx_etx_timeout_of_a_frame_and_of_garbage() -> None:
    framer = Framer("stx_etx", inter_char_timeout=1.5)
    framer.feed(b"\x02AB", 0.0)
    assert triples(framer.expire(2.0)) == [
        (b"AB", b"\x02AB", "incomplete frame: no ETX within 1.5 s")
    ]
    framer.feed(b"??", 3.0)
    assert triples(framer.expire(4.5)) == [(b"??", b"??", GARBAGE_STX)]


# ---- pattern -------------------------------------------------------------------------------

RECORD = rb"\x02(?P<data>[0-9A-F]{10})\r\n"
"""An RFID reader's fixed-length record: STX, ten hex digits, CR LF."""

PATTERN_CASES: list[tuple[str, bytes, list[bytes], Expected]] = [
    (
        "records split and merged",
        RECORD,
        [b"\x020123456789\r", b"\n\x02ABCDEF0123\r\n\x0200"],
        [
            (b"0123456789", b"\x020123456789\r\n", None),
            (b"ABCDEF0123", b"\x02ABCDEF0123\r\n", None),
            (b"\x0200", b"\x0200", "closed"),  # no match, so no data group: all of it
        ],
    ),
    (
        "garbage before a record",
        RECORD,
        [b"xx\x02012345", b"6789\r\n"],
        [(b"xx", b"xx", GARBAGE_PATTERN), (b"0123456789", b"\x020123456789\r\n", None)],
    ),
    (
        "a broken record is garbage once the next one matches",
        RECORD,
        [b"\x020123G\r\n\x02AAAAAAAAAA\r\n"],
        [
            (b"\x020123G\r\n", b"\x020123G\r\n", GARBAGE_PATTERN),
            (b"AAAAAAAAAA", b"\x02AAAAAAAAAA\r\n", None),
        ],
    ),
    (
        "without a data group the whole match is the data",
        rb"[0-9]{4}",
        [b"12", b"345678"],
        [(b"1234", b"1234", None), (b"5678", b"5678", None)],
    ),
]


@pytest.mark.parametrize(
    ("pattern", "reads", "expected"),
    [c[1:] for c in PATTERN_CASES],
    ids=[c[0] for c in PATTERN_CASES],
)
def test_pattern(pattern: bytes, reads: list[bytes], expected: Expected) -> None:
    assert triples(run(Framer("pattern", pattern=pattern, max_length=16), at(*reads))) == expected


def test_pattern_rejects_what_can_no_longer_be_a_frame_once_too_much_is_pending() -> None:
    framer = Framer("pattern", pattern=rb"[0-9]{4}", max_length=4, hold_bytes=10)
    frames = framer.feed(b"abcdefghijk", 1.0)  # 11 > 10: all but the last 3 can go
    assert triples(frames) == [(b"abcdefgh", b"abcdefgh", GARBAGE_PATTERN)]
    assert framer.feed(b"1", 2.0) == []  # "ijk1": the "1" may start a frame
    assert framer.feed(b"23", 3.0) == []
    assert triples(framer.feed(b"4", 4.0)) == [
        (b"ijk", b"ijk", GARBAGE_PATTERN),
        (b"1234", b"1234", None),
    ]


def test_pattern_timeout() -> None:
    framer = Framer("pattern", pattern=RECORD, max_length=16, inter_char_timeout=0.1)
    framer.feed(b"\x0201234", 1.0)
    assert triples(framer.expire(1.1)) == [
        (
            b"\x0201234",
            b"\x0201234",
            "incomplete frame: no complete match of the frame pattern within 0.1 s",
        )
    ]


# ---- configuration, decode, names -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "lines"}, "unknown framing mode 'lines'"),
        ({"suffix": b""}, "needs a terminator"),
        ({"mode": "pattern"}, "a frame pattern is needed"),
        ({"pattern": rb"\d{4}"}, "a frame pattern is needed"),
        ({"mode": "pattern", "pattern": rb"(\d"}, "invalid frame pattern"),
        ({"max_length": 0}, "max_length must be at least 1"),
        ({"inter_char_timeout": 0}, "inter_char_timeout must be positive"),
        ({"max_length": 100, "hold_bytes": 50}, "hold_bytes (50) must exceed"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Framer(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (Frame(b"4006381333931", b"", None, 0), ("4006381333931", None)),
        (Frame(b"]d2\x1d10ABC", b"", None, 0), ("]d2\x1d10ABC", None)),
        (Frame("Müller".encode(), b"", None, 0), ("Müller", None)),
        (Frame(b"", b"\r", None, 0), ("", None)),
        (Frame(b"abc\xff", b"", None, 0), (None, "not text: byte 0xff at position 3")),
        (Frame(b"\xc3", b"", None, 0), (None, "not text: byte 0xc3 at position 0")),
        (Frame(b"x", b"x", "frame longer than 4 bytes", 0), (None, "frame longer than 4 bytes")),
    ],
)
def test_decode(frame: Frame, expected: tuple[str | None, str | None]) -> None:
    assert decode(frame) == expected


@pytest.mark.parametrize(
    ("delimiter", "name"),
    [(b"\r", "CR"), (b"\r\n", "CR LF"), (b"\x03", "ETX"), (b"#", "'#'"), (b"\x7f\xfe", "DEL 0xfe")],
)
def test_describe_bytes(delimiter: bytes, name: str) -> None:
    assert describe_bytes(delimiter) == name


# ---- properties ----------------------------------------------------------------------------

PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PAYLOAD = st.binary(min_size=1, max_size=9).filter(lambda b: not set(b) & {0x02, 0x03, 0x0A, 0x0D})
GARBAGE = st.binary(min_size=1, max_size=10)


@st.composite
def cut(draw: st.DrawFn, stream: bytes) -> list[tuple[bytes, float]]:
    """``stream`` in random pieces at increasing random times (gaps up to 0.3 s)."""
    points = sorted(draw(st.sets(st.integers(1, max(1, len(stream) - 1)), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    gaps = draw(st.lists(st.floats(0, 0.3), min_size=len(pieces), max_size=len(pieces)))
    now, reads = 0.0, []
    for piece, gap in zip(pieces, gaps, strict=True):
        now += gap
        reads.append((piece, now))
    return [r for r in reads if r[0]]


def good(frames: list[Frame]) -> list[bytes]:
    return [f.data for f in frames if f.error is None and not f.blank]


@PROPERTY
@given(st.data(), st.sampled_from([b"\r", b"\n", b"\r\n", b"\x03"]), st.lists(PAYLOAD, max_size=6))
def test_suffix_frames_come_back_whatever_the_cuts(
    data: st.DataObject, suffix: bytes, payloads: list[bytes]
) -> None:
    # Readers set to CR LF where CR or LF was configured still give the same frames.
    endings = {b"\r": [b"\r", b"\r\n"], b"\n": [b"\n", b"\r\n"]}.get(suffix, [suffix])
    stream = b"".join(p + data.draw(st.sampled_from(endings)) for p in payloads)
    framer = Framer("suffix", suffix=suffix, inter_char_timeout=0.5)
    frames = run(framer, data.draw(cut(stream)))
    assert good(frames) == payloads
    assert all(f.error is None for f in frames)


@PROPERTY
@given(st.data(), st.lists(PAYLOAD, max_size=6))
def test_stx_etx_frames_survive_garbage_between_them(
    data: st.DataObject, payloads: list[bytes]
) -> None:
    # Garbage without STX/ETX between frames is rejected and never spoils a frame.
    noise = st.binary(max_size=6).filter(lambda b: not set(b) & {0x02, 0x03})
    stream = b"".join(data.draw(noise) + b"\x02" + p + b"\x03" for p in payloads)
    frames = run(Framer("stx_etx"), data.draw(cut(stream)))
    assert good(frames) == payloads
    assert all(f.error == GARBAGE_STX for f in frames if f.error is not None)


@PROPERTY
@given(st.data(), st.lists(st.text("0123456789ABCDEF", min_size=10, max_size=10), max_size=5))
def test_pattern_records_come_back_whatever_the_cuts(
    data: st.DataObject, records: list[str]
) -> None:
    stream = b"".join(b"\x02" + r.encode() + b"\r\n" for r in records)
    frames = run(Framer("pattern", pattern=RECORD, max_length=16), data.draw(cut(stream)))
    assert good(frames) == [r.encode() for r in records]
    assert all(f.error is None for f in frames)


@PROPERTY
@given(st.data(), st.lists(PAYLOAD, max_size=6))
def test_max_length_rejects_exactly_the_long_frames(
    data: st.DataObject, payloads: list[bytes]
) -> None:
    stream = b"".join(p + b"\r" for p in payloads)
    frames = run(Framer(suffix=b"\r", max_length=5), data.draw(cut(stream)))
    assert [(f.data, f.error is None) for f in frames] == [(p, len(p) <= 5) for p in payloads]


MODES = st.one_of(
    st.builds(
        lambda s, m, t: Framer(
            "suffix", suffix=s, max_length=m, inter_char_timeout=t, hold_bytes=m + 12
        ),
        st.sampled_from([b"\r", b"\n", b"\r\n", b"\x03"]),
        st.integers(1, 8),
        st.sampled_from([None, 0.1]),
    ),
    st.builds(
        lambda m, t: Framer("stx_etx", max_length=m, inter_char_timeout=t, hold_bytes=m + 6),
        st.integers(1, 8),
        st.sampled_from([None, 0.1]),
    ),
    st.builds(
        lambda m, t: Framer(
            "pattern", pattern=RECORD, max_length=m, inter_char_timeout=t, hold_bytes=m + 6
        ),
        st.integers(14, 20),
        st.sampled_from([None, 0.1]),
    ),
)


@PROPERTY
@given(st.data(), MODES, st.lists(st.one_of(PAYLOAD, GARBAGE), max_size=8))
def test_every_byte_fed_is_in_exactly_one_frame(
    data: st.DataObject, framer: Framer, parts: list[bytes]
) -> None:
    """Any mode, any garbage, any cuts and pauses, expiries at random: nothing is lost,
    duplicated or reordered, and nothing raises."""

    def wrap(p: bytes) -> bytes:
        """``p`` made a frame of the framer's mode."""
        if framer.mode == "suffix":
            return p + framer.suffix
        if framer.mode == "stx_etx":
            return b"\x02" + p + b"\x03"
        return b"\x02" + p.hex().upper()[:10].ljust(10, "0").encode() + b"\r\n"

    stream = b"".join(wrap(p) if data.draw(st.booleans()) else p for p in parts)
    frames: list[Frame] = []
    for piece, now in data.draw(cut(stream)):
        if data.draw(st.booleans()):
            frames += framer.expire(now)
        frames += framer.feed(piece, now)
        assert framer.pending() <= framer.hold_bytes
        assert all(f.ts <= now for f in frames)
    frames += framer.flush("closed")
    assert b"".join(f.raw for f in frames) == stream
    assert all(f.raw and f.data in f.raw for f in frames)
    assert [f.ts for f in frames] == sorted(f.ts for f in frames)
