"""Scale protocol parsing and command building: tables of what a scale sends, and what it means.

Toledo frames are built here bit by bit from the WILDCAT status tables, not with the module's
own helpers, so a wrong bit in the decoder cannot be mirrored by the test.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.scale.protocols import (
    OVERLOAD,
    UNDERLOAD,
    UNITS,
    Ack,
    LineFramer,
    MtSicsCommand,
    SbiCommand,
    ToledoFramer,
    Weighing,
    decode_toledo_status,
    known_unit,
    mtsics_command,
    parse_mtsics,
    parse_sbi,
    parse_toledo,
    sbi_command,
    toledo_checksum,
)

BUSY = "not executable now: the scale is busy with another command (e.g. taring) or did not settle in time"
NOT_ALLOWED = "not allowed: the scale refused the command or its parameter"


def ok(weight: float, unit: str | None, stable: bool, **extra: object) -> Weighing:
    return Weighing(weight, unit, stable, None, **extra)  # type: ignore[arg-type]


def failed(error: str, **extra: object) -> Weighing:
    return Weighing.failed(error, **extra)  # type: ignore[arg-type]


# ---- MT-SICS ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "wire"),
    [
        (MtSicsCommand.STABLE, b"S\r\n"),
        (MtSicsCommand.IMMEDIATE, b"SI\r\n"),
        (MtSicsCommand.REPEAT, b"SIR\r\n"),
        (MtSicsCommand.ZERO, b"Z\r\n"),
        (MtSicsCommand.ZERO_IMMEDIATE, b"ZI\r\n"),
        (MtSicsCommand.TARE, b"T\r\n"),
        (MtSicsCommand.TARE_IMMEDIATE, b"TI\r\n"),
        (MtSicsCommand.RESET, b"@\r\n"),
    ],
)
def test_mtsics_commands_end_with_cr_lf(command: MtSicsCommand, wire: bytes) -> None:
    assert mtsics_command(command) == wire


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # Weight replies: S, SI and SIR all answer with the ID "S".
        ("S S     100.00 g", ok(100.0, "g", True)),
        ("S D      99.98 g", ok(99.98, "g", False)),
        ("S S    -12.345 kg", ok(-12.345, "kg", True)),
        ("S S          0 lb", ok(0.0, "lb", True)),
        ("S S       1.25 ozt", ok(1.25, "ozt", True)),
        ("S S      3.512 ct", ok(3.512, "ct", True)),
        ("S S       12.5 GN", ok(12.5, "GN", True)),
        ("S D     0.0512 mg", ok(0.0512, "mg", False)),
        (b"S S     100.00 g\r\n", ok(100.0, "g", True)),
        # Replies without a weight, each with its reason.
        ("S I", failed(BUSY)),
        ("S +", failed(OVERLOAD)),
        ("S -", failed(UNDERLOAD)),
        ("S L", failed(NOT_ALLOWED)),
        # General errors: they answer whatever was sent last.
        ("ES", failed("syntax error: the scale did not recognise the command")),
        (
            "ET",
            failed(
                "transmission error: the scale received a garbled command (check baud rate, parity and cable)"
            ),
        ),
        ("EL", failed("logical error: the scale cannot execute this command")),
        (b"ES\r\n", failed("syntax error: the scale did not recognise the command")),
        # A unit nobody knows is never guessed; case matters ("G" is not "g").
        ("S S     100.00 xyz", failed("unknown unit 'xyz'", stable=True)),
        ("S D     100.00 G", failed("unknown unit 'G'", stable=False)),
        ("S S          3 pcs", failed("unknown unit 'pcs'", stable=True)),
    ],
)
def test_mtsics_weight_replies(line: str | bytes, expected: Weighing) -> None:
    assert parse_mtsics(line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Z A", Ack("Z", True, stable=True)),
        ("ZI S", Ack("ZI", True, stable=True)),
        ("ZI D", Ack("ZI", True, stable=False)),
        (
            "Z I",
            Ack(
                "Z",
                False,
                "zero not set: the scale is busy with another command or did not settle in time",
            ),
        ),
        (
            "Z +",
            Ack(
                "Z", False, "zero not set: the load is above the zero-setting range (clear the pan)"
            ),
        ),
        ("Z -", Ack("Z", False, "zero not set: the load is below the zero-setting range")),
        (
            "ZI I",
            Ack(
                "ZI",
                False,
                "zero not set: the scale is busy with another command or did not settle in time",
            ),
        ),
        (
            "ZI +",
            Ack(
                "ZI",
                False,
                "zero not set: the load is above the zero-setting range (clear the pan)",
            ),
        ),
        ("ZI -", Ack("ZI", False, "zero not set: the load is below the zero-setting range")),
        ("T S     100.00 g", Ack("T", True, stable=True, tare=100.0, unit="g")),
        ("TI S      2.500 kg", Ack("TI", True, stable=True, tare=2.5, unit="kg")),
        ("TI D      2.480 kg", Ack("TI", True, stable=False, tare=2.48, unit="kg")),
        (
            "T I",
            Ack(
                "T",
                False,
                "tare not set: the scale is busy with another command or did not settle in time",
            ),
        ),
        ("T +", Ack("T", False, "tare not set: the load is above the taring range")),
        ("T -", Ack("T", False, "tare not set: the load is below the taring range")),
        ("TI +", Ack("TI", False, "tare not set: the load is above the taring range")),
        ("T L", Ack("T", False, NOT_ALLOWED)),
        # The tare was taken, but its value is in a unit nobody knows.
        ("T S     100.00 xyz", Ack("T", True, "unknown unit 'xyz'", stable=True)),
        ('I4 A "B021002593"', Ack("@", True, serial="B021002593")),
        (b'I4 A "0123456789"\r\n', Ack("@", True, serial="0123456789")),
    ],
)
def test_mtsics_zero_tare_and_reset_replies(line: str | bytes, expected: Ack) -> None:
    assert parse_mtsics(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "S",
        "S S",
        "S S 100.00",
        "S X     100.00 g",
        "S S     1O0.00 g",  # a letter O
        "S S        nan g",
        "S S       1e3 g",
        "S I 12",
        "T D     100.00 g",  # T waits for stability: only TI reports a dynamic tare
        "Z A extra",
        "Z S",
        "ZI A",
        "I4 A 0123",
        "\x00\xffS S     100.00 g",
        "hello world",
        "S S     100.00 g trailing",
    ],
)
def test_mtsics_lines_matching_nothing_are_readings_that_quote_them(line: str) -> None:
    assert parse_mtsics(line) == failed(f"unrecognised response {line!r}")


# ---- Sartorius SBI ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "wire"),
    [
        (SbiCommand.PRINT, b"\x1bP\r\n"),
        (SbiCommand.TARE_ZERO, b"\x1bT\r\n"),
        (SbiCommand.TARE, b"\x1bU\r\n"),
        (SbiCommand.ZERO, b"\x1bV\r\n"),
        (SbiCommand.TARE_KEY, b"\x1bf4_\r\n"),
        (SbiCommand.ZERO_KEY, b"\x1bf3_\r\n"),
    ],
)
def test_sbi_commands_are_escape_sequences(command: SbiCommand, wire: bytes) -> None:
    assert sbi_command(command) == wire


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # 16 characters: sign, space, 8 for the weight, space, 3 for the unit (+ CR LF).
        ("+   1255.7 g  \r\n", ok(1255.7, "g", True)),
        ("+   1255.7 g  ", ok(1255.7, "g", True)),
        ("-    12.34 kg ", ok(-12.34, "kg", True)),
        ("     0.000 kg ", ok(0.0, "kg", True)),
        ("+111.25507 mg ", ok(111.25507, "mg", True)),  # position 2 holds a digit
        ("+   150.11 ozt", ok(150.11, "ozt", True)),
        ("+     12.5 GN ", ok(12.5, "GN", True)),
        ("+     12.5 gr ", ok(12.5, "gr", True)),
        # Not stable yet: the balance leaves the unit out.
        ("+   1255.7    ", ok(1255.7, None, False)),
        ("-      0.3    ", ok(-0.3, None, False)),
        # 22 characters: a 6-character ID code first.
        ("N     +   123.56 g  ", ok(123.56, "g", True, net=True)),
        ("N1    +   123.56 g  ", ok(123.56, "g", True, net=True)),
        ("G#    +   1255.7 g  ", ok(1255.7, "g", True, net=False)),
        ("N     -     2.50    ", ok(-2.5, None, False, net=True)),
        ("      +   1255.7 g  ", ok(1255.7, "g", True)),
        (
            "T     +    10.00 g  ",
            failed("a tare value (ID code 'T'), not the weight", unit="g", stable=True, tare=10.0),
        ),
        (
            "T2    +    10.00 g  ",
            failed("a tare value (ID code 'T2'), not the weight", unit="g", stable=True, tare=10.0),
        ),
        ("Setp  +   100.00 g  ", failed("not the current weight: the line is marked 'Setp'")),
        ("Qnt   +      235 pcs", failed("not the current weight: the line is marked 'Qnt'")),
        # Special codes and errors.
        ("      H       ", failed(OVERLOAD)),
        ("      L       ", failed(UNDERLOAD)),
        ("      HH      ", failed(f"{OVERLOAD} (checkweighing)")),
        ("      LL      ", failed(f"{UNDERLOAD} (checkweighing)")),
        ("      C       ", failed("calibrating: the scale is being adjusted and shows no weight")),
        ("Stat        H       ", failed(OVERLOAD)),
        ("Stat      High      ", failed(OVERLOAD)),
        ("Stat      Low       ", failed(UNDERLOAD)),
        (
            "Stat    Cal.Ext.    ",
            failed("calibrating: the scale is being adjusted and shows no weight"),
        ),
        ("              ", failed("no value: the scale's display is blank")),
        ("Stat                ", failed("no value: the scale's display is blank")),
        (
            "   Err  12    ",
            failed("scale error Err 12: see the error list in the scale's manual"),
        ),
        (
            "Stat     Err 123    ",
            failed("scale error Err 123: see the error list in the scale's manual"),
        ),
        (
            "Stat     APP.ERR    ",
            failed("scale error APP.ERR: see the error list in the scale's manual"),
        ),
        # Units nobody knows.
        ("+   1255.7 xyz", failed("unknown unit 'xyz'", stable=True)),
        ("+      253 pcs", failed("unknown unit 'pcs'", stable=True)),
        ("+     99.0 %  ", failed("unknown unit '%'", stable=True)),
    ],
)
def test_sbi_lines(line: str, expected: Weighing) -> None:
    assert parse_sbi(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "",
        "+ 1255.7 g",  # too short
        "+   1255.7 g   ",  # 15 characters
        "S S     100.00 g",
        "*   1255.7 g  ",  # no sign character
        "+  12a55.7 g  ",
        "+  +1255.7 g  ",
        "+    nan.0 g  ",
        "Stat      Boom      ",
        "      X       ",
        "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0b\x0c\x0e\x0f",
    ],
)
def test_sbi_lines_matching_nothing_are_readings_that_quote_them(line: str) -> None:
    assert parse_sbi(line) == failed(f"unrecognised response {line!r}")


# ---- Toledo continuous output ----------------------------------------------------------------


def status_a(decimals_code: int = 4, increment_bits: int = 0b01) -> int:
    """Bits 0-2 decimal point code (4: XXXX.XX), bits 3-4 increment (01: x1), bit 5 set."""
    return 0x20 | decimals_code | increment_bits << 3


def status_b(
    *,
    net: bool = False,
    negative: bool = False,
    out_of_range: bool = False,
    motion: bool = False,
    kg: bool = True,
    power_up: bool = False,
) -> int:
    return (
        0x20
        | net * 0x01
        | negative * 0x02
        | out_of_range * 0x04
        | motion * 0x08
        | kg * 0x10
        | power_up * 0x40
    )


def status_c(unit_code: int = 0, *, print_request: bool = False, expanded: bool = False) -> int:
    return 0x20 | unit_code | print_request * 0x08 | expanded * 0x10


def frame(
    a: int, b: int, c: int, weight: str = "012345", tare: str = "000000", *, check: bool = True
) -> bytes:
    body = bytes([0x02, a, b, c]) + weight.encode() + tare.encode() + b"\r"
    total = sum(body)
    return body + bytes([(128 - total % 128) % 128]) if check else body


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # A stable gross weight in kg with two decimals.
        (frame(status_a(), status_b(), status_c()), ok(123.45, "kg", True, net=False, tare=0.0)),
        # In motion.
        (
            frame(status_a(), status_b(motion=True), status_c()),
            ok(123.45, "kg", False, net=False, tare=0.0),
        ),
        # Net, with the tare in the second field.
        (
            frame(status_a(), status_b(net=True), status_c(), "001000", "000250"),
            ok(10.0, "kg", True, net=True, tare=2.5),
        ),
        # Negative.
        (
            frame(status_a(), status_b(negative=True, net=True), status_c(), "000150", "000500"),
            ok(-1.5, "kg", True, net=True, tare=5.0),
        ),
        # Pounds (status B bit 4 clear), grams and metric tons (status C bits 0-2).
        (
            frame(status_a(), status_b(kg=False), status_c()),
            ok(123.45, "lb", True, net=False, tare=0.0),
        ),
        (
            frame(status_a(2), status_b(), status_c(1), "001500"),
            ok(1500.0, "g", True, net=False, tare=0.0),
        ),
        (
            frame(status_a(5), status_b(), status_c(2), "012500"),
            ok(12.5, "t", True, net=False, tare=0.0),
        ),
        # Decimal point codes: dummy zeros (XXXX00, XXXXX0), none, and 1 to 5 decimals.
        (
            frame(status_a(0), status_b(), status_c()),
            ok(1234500.0, "kg", True, net=False, tare=0.0),
        ),
        (frame(status_a(1), status_b(), status_c()), ok(123450.0, "kg", True, net=False, tare=0.0)),
        (frame(status_a(2), status_b(), status_c()), ok(12345.0, "kg", True, net=False, tare=0.0)),
        (frame(status_a(3), status_b(), status_c()), ok(1234.5, "kg", True, net=False, tare=0.0)),
        (frame(status_a(5), status_b(), status_c()), ok(12.345, "kg", True, net=False, tare=0.0)),
        (frame(status_a(6), status_b(), status_c()), ok(1.2345, "kg", True, net=False, tare=0.0)),
        (frame(status_a(7), status_b(), status_c()), ok(0.12345, "kg", True, net=False, tare=0.0)),
        # Leading zeros sent as spaces.
        (
            frame(status_a(), status_b(), status_c(), "  1234", "    50"),
            ok(12.34, "kg", True, net=False, tare=0.5),
        ),
        # Out of range: over capacity, and under (negative).
        (
            frame(status_a(), status_b(out_of_range=True), status_c()),
            failed(OVERLOAD, unit="kg", stable=True, net=False, tare=0.0),
        ),
        (
            frame(status_a(), status_b(out_of_range=True, negative=True), status_c()),
            failed(UNDERLOAD, unit="kg", stable=True, net=False, tare=0.0),
        ),
        # Unit codes this decoder does not know (3..7) are not guessed.
        (
            frame(status_a(), status_b(), status_c(3)),
            failed("unknown unit: status word C has unit code 3", stable=True, net=False),
        ),
        (
            frame(status_a(), status_b(motion=True), status_c(7)),
            failed("unknown unit: status word C has unit code 7", stable=False, net=False),
        ),
        # A parity bit (bit 7) on the status bytes changes nothing.
        (
            frame(status_a() | 0x80, status_b() | 0x80, status_c() | 0x80),
            ok(123.45, "kg", True, net=False, tare=0.0),
        ),
    ],
)
def test_toledo_frames(raw: bytes, expected: Weighing) -> None:
    assert parse_toledo(raw, checksum=True) == expected


def test_toledo_checksum_is_verified_only_when_configured() -> None:
    good = frame(status_a(), status_b(), status_c())
    bad = good[:-1] + bytes([(good[-1] + 1) & 0x7F])
    want = good[-1]
    assert parse_toledo(bad, checksum=True) == failed(
        f"checksum mismatch: got 0x{(want + 1) & 0x7F:02X}, expected 0x{want:02X}"
    )
    assert parse_toledo(bad) == parse_toledo(good) == ok(123.45, "kg", True, net=False, tare=0.0)
    without = frame(status_a(), status_b(), status_c(), check=False)
    assert parse_toledo(without) == ok(123.45, "kg", True, net=False, tare=0.0)
    assert parse_toledo(without, checksum=True) == failed(
        "no checksum: the frame ends at CR, a checksum byte was expected"
    )
    # A corrupted digit is caught by the checksum, and only by it.
    flipped = good[:9] + b"9" + good[10:]  # the last weight digit: 012345 -> 012349
    assert parse_toledo(flipped).weight == 123.49
    assert not parse_toledo(flipped, checksum=True).ok


def test_toledo_checksum_matches_the_manual_definition() -> None:
    body = frame(status_a(), status_b(), status_c(), check=False)
    assert (sum(body) + toledo_checksum(body)) % 128 == 0
    assert toledo_checksum(body) == frame(status_a(), status_b(), status_c())[-1]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x02",
        frame(status_a(), status_b(), status_c())[1:],  # no STX
        frame(status_a(), status_b(), status_c(), check=False)[:-1] + b"\n",  # no CR
        frame(status_a(), status_b(), status_c(), "01234x", check=False),
        frame(status_a(), status_b(), status_c(), "      ", check=False),
        frame(status_a(), status_b(), status_c(), "-01234", check=False),
        frame(status_a(), status_b(), status_c(), check=True) + b"\r",  # 19 bytes
    ],
)
def test_toledo_frames_matching_nothing_quote_the_bytes(raw: bytes) -> None:
    assert parse_toledo(raw) == failed(f"unrecognised response {raw.decode('latin-1')!r}")


@pytest.mark.parametrize(
    ("a", "decimals", "increment"),
    [
        (status_a(0, 0b01), -2, 1),
        (status_a(1, 0b10), -1, 2),
        (status_a(2, 0b11), 0, 5),
        (status_a(4, 0b01), 2, 1),
        (status_a(7, 0b00), 5, None),
    ],
)
def test_toledo_status_a(a: int, decimals: int, increment: int | None) -> None:
    status = decode_toledo_status(a, status_b(), status_c())
    assert (status.decimals, status.increment) == (decimals, increment)


def test_toledo_status_b_and_c_flags() -> None:
    quiet = decode_toledo_status(status_a(), status_b(), status_c())
    loud = decode_toledo_status(
        status_a(), status_b(power_up=True), status_c(print_request=True, expanded=True)
    )
    flags = ("power_up_not_zeroed", "print_request", "expanded")
    assert [getattr(quiet, f) for f in flags] == [False, False, False]
    assert [getattr(loud, f) for f in flags] == [True, True, True]


# ---- framing ---------------------------------------------------------------------------------


def test_line_framer_joins_split_lines_and_splits_merged_ones() -> None:
    framer = LineFramer()
    assert framer.feed(b"S S   ") == []
    assert framer.feed(b"  100.00 g\r") == []
    assert framer.feed(b"\nS D      99.9 g\r\nS +\r\nS") == [
        b"S S     100.00 g",
        b"S D      99.9 g",
        b"S +",
    ]
    assert framer.feed(b" I\r\n") == [b"S I"]
    assert framer.discarded == 0


def test_line_framer_drops_endless_noise() -> None:
    framer = LineFramer(max_line=16)
    assert framer.feed(b"\xff" * 40) == []
    assert framer.discarded == 40
    assert framer.feed(b"S S 1 g\r\n") == [b"S S 1 g"]


def test_toledo_framer_resyncs_on_noise_and_keeps_checksums_that_look_like_stx() -> None:
    # A checksum byte can be STX or CR itself: frames are cut by length, never by value.
    stx_checked = frame(status_a(), status_b(), status_c(), "999996")
    assert stx_checked[-1] == 0x02
    normal = frame(status_a(), status_b(), status_c())
    framer = ToledoFramer(checksum=True)
    stream = b"noise\x02more noise" + stx_checked + normal[:5]
    assert framer.feed(stream) == [stx_checked]
    assert framer.feed(normal[5:] + normal) == [normal, normal]
    assert framer.discarded == len(b"noise\x02more noise")
    assert all(parse_toledo(f, checksum=True).ok for f in (stx_checked, normal))


def test_toledo_framer_without_checksum_takes_17_bytes() -> None:
    plain = frame(status_a(), status_b(), status_c(), check=False)
    framer = ToledoFramer()
    assert framer.feed(plain * 3) == [plain] * 3
    assert framer.feed(b"\x00\x00" + plain[:10]) == []
    assert framer.feed(plain[10:]) == [plain]
    assert framer.discarded == 2


# ---- units and invariants --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "grams"),
    [
        ("g", 1.0),
        ("kg", 1000.0),
        ("mg", 0.001),
        ("t", 1e6),
        ("lb", 453.59237),
        ("oz", 28.349523125),
        ("ozt", 31.1034768),
        ("ct", 0.2),
        ("dwt", 1.55517384),
        ("GN", 0.06479891),
    ],
)
def test_units(symbol: str, grams: float) -> None:
    unit = known_unit(symbol)
    assert unit is not None
    assert unit.grams == pytest.approx(grams, rel=1e-12)


def test_case_and_counts_are_not_units() -> None:
    assert known_unit("G") is None
    assert known_unit("KG") is None
    assert known_unit("pcs") is None
    assert known_unit("%") is None
    assert all(symbol == unit.symbol for symbol, unit in UNITS.items())


def test_a_weighing_has_a_weight_or_a_reason() -> None:
    with pytest.raises(ValueError, match="either a weight or the reason"):
        Weighing(None, "g", True, None)
    with pytest.raises(ValueError, match="either a weight or the reason"):
        Weighing(1.0, "g", True, "overload")
    assert Weighing(1.0, "g", True, None).ok
    assert not Weighing.failed("x").ok


# ---- nothing a scale sends makes a parser raise ----------------------------------------------


@given(st.binary(max_size=40))
def test_no_bytes_make_a_parser_raise(raw: bytes) -> None:
    for result in (parse_mtsics(raw), parse_sbi(raw), parse_toledo(raw, checksum=True)):
        assert isinstance(result, Weighing | Ack)
        if isinstance(result, Weighing):
            assert (result.weight is None) != (result.error is None)


@given(
    st.text(alphabet=" +-.0123456789SDITZAELgkm", max_size=24),
)
def test_no_near_miss_line_makes_a_parser_raise(text: str) -> None:
    parse_mtsics(text)
    parse_sbi(text)
