"""Decoding tables: register words in, expected value out, for every type and word order."""

from __future__ import annotations

import math
import random
import re
import struct
from typing import Any

import pytest

from drivers.modbus.codec import (
    CodecError,
    bytes_to_words,
    compile_decoder,
    decode,
    decode_bits,
    decode_raw,
    encode,
    response_bytes,
    same_value,
    words_to_bytes,
    write_value,
)
from drivers.modbus.config import DataType, ModbusPoint, Table, WordOrder

T = DataType
ABCD, CDAB, BADC, DCBA = WordOrder.ABCD, WordOrder.CDAB, WordOrder.BADC, WordOrder.DCBA
# 123.456 as a float32 holds it (0x42F6E979), widened exactly to a Python float.
F32_123_456: float = struct.unpack(">f", bytes.fromhex("42F6E979"))[0]


def point(data_type: DataType, word_order: WordOrder = ABCD, **kw: Any) -> ModbusPoint:
    table = Table.COIL if data_type is DataType.BOOL else Table.HOLDING
    p = ModbusPoint(name="p", address=0, table=table, type=data_type, word_order=word_order, **kw)
    assert p.issues() == []
    return p


# (type, word order, words, value): every numeric type in every order.
NUMERIC: list[tuple[DataType, WordOrder, list[int], int | float]] = [
    (T.INT16, ABCD, [0xFFFE], -2),
    (T.INT16, CDAB, [0xFFFE], -2),  # one register: nothing to reverse
    (T.INT16, BADC, [0xFEFF], -2),
    (T.INT16, DCBA, [0xFEFF], -2),
    (T.INT16, ABCD, [0x8000], -32768),
    (T.INT16, ABCD, [0x7FFF], 32767),
    (T.UINT16, ABCD, [0x1234], 0x1234),
    (T.UINT16, CDAB, [0x1234], 0x1234),
    (T.UINT16, BADC, [0x3412], 0x1234),
    (T.UINT16, DCBA, [0x3412], 0x1234),
    (T.UINT16, ABCD, [0xFFFF], 65535),
    (T.INT32, ABCD, [0xF8A4, 0x32EB], -123456789),
    (T.INT32, CDAB, [0x32EB, 0xF8A4], -123456789),
    (T.INT32, BADC, [0xA4F8, 0xEB32], -123456789),
    (T.INT32, DCBA, [0xEB32, 0xA4F8], -123456789),
    (T.INT32, ABCD, [0x8000, 0x0000], -(2**31)),
    (T.UINT32, ABCD, [0x1234, 0x5678], 0x12345678),
    (T.UINT32, CDAB, [0x5678, 0x1234], 0x12345678),
    (T.UINT32, BADC, [0x3412, 0x7856], 0x12345678),
    (T.UINT32, DCBA, [0x7856, 0x3412], 0x12345678),
    (T.UINT32, DCBA, [0xFFFF, 0xFFFF], 2**32 - 1),
    (T.FLOAT32, ABCD, [0x42F6, 0xE979], F32_123_456),
    (T.FLOAT32, CDAB, [0xE979, 0x42F6], F32_123_456),
    (T.FLOAT32, BADC, [0xF642, 0x79E9], F32_123_456),
    (T.FLOAT32, DCBA, [0x79E9, 0xF642], F32_123_456),
    (T.FLOAT32, ABCD, [0xBF80, 0x0000], -1.0),
    (T.INT64, ABCD, [0x8000, 0, 0, 0], -(2**63)),
    (T.INT64, CDAB, [0, 0, 0, 0x8000], -(2**63)),
    (T.INT64, BADC, [0x0080, 0, 0, 0], -(2**63)),
    (T.INT64, DCBA, [0, 0, 0, 0x0080], -(2**63)),
    (T.INT64, ABCD, [0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF], 2**63 - 1),
    (T.INT64, DCBA, [0xFFFF, 0xFFFF, 0xFFFF, 0xFF7F], 2**63 - 1),
    (T.INT64, ABCD, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], -1),
    (T.UINT64, ABCD, [0x0102, 0x0304, 0x0506, 0x0708], 0x0102030405060708),
    (T.UINT64, CDAB, [0x0708, 0x0506, 0x0304, 0x0102], 0x0102030405060708),
    (T.UINT64, BADC, [0x0201, 0x0403, 0x0605, 0x0807], 0x0102030405060708),
    (T.UINT64, DCBA, [0x0807, 0x0605, 0x0403, 0x0201], 0x0102030405060708),
    (T.UINT64, ABCD, [0xFFFF] * 4, 2**64 - 1),
    (T.UINT64, CDAB, [0, 0, 0, 0], 0),
    (T.FLOAT64, ABCD, [0x4009, 0x21FB, 0x5444, 0x2D18], math.pi),
    (T.FLOAT64, CDAB, [0x2D18, 0x5444, 0x21FB, 0x4009], math.pi),
    (T.FLOAT64, BADC, [0x0940, 0xFB21, 0x4454, 0x182D], math.pi),
    (T.FLOAT64, DCBA, [0x182D, 0x4454, 0xFB21, 0x0940], math.pi),
    (T.FLOAT64, ABCD, [0xBFF8, 0, 0, 0], -1.5),
]


@pytest.mark.parametrize(("data_type", "order", "words", "expected"), NUMERIC)
def test_decode_numeric(
    data_type: DataType, order: WordOrder, words: list[int], expected: int | float
) -> None:
    value = decode(point(data_type, order), words)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(("data_type", "order", "words", "expected"), NUMERIC)
def test_encode_numeric(
    data_type: DataType, order: WordOrder, words: list[int], expected: int | float
) -> None:
    assert encode(data_type, expected, order) == words


@pytest.mark.parametrize(
    ("order", "words", "count", "expected"),
    [
        (ABCD, [0x4142, 0x3132], 2, "AB12"),
        (BADC, [0x4241, 0x3231], 2, "AB12"),
        (ABCD, [0x4142, 0x4300, 0x0000], 3, "ABC"),  # NUL padding
        (BADC, [0x4241, 0x0043, 0x0000], 3, "ABC"),
        (ABCD, [0x4142, 0x4320, 0x2020], 3, "ABC"),  # space padding
        (ABCD, [0x2041, 0x2042, 0x0000], 3, " A B"),  # leading and inner spaces kept
        (ABCD, [0x0000, 0x0000], 2, ""),
        (ABCD, [0x53E9, 0x7200], 2, "Sér"),  # latin-1: every byte is one character
        (ABCD, [0xFFFE], 1, "\xff\xfe"),  # never replaced, never fails
    ],
)
def test_decode_string(order: WordOrder, words: list[int], count: int, expected: str) -> None:
    assert decode(point(T.STRING, order, count=count), words) == expected


@pytest.mark.parametrize(
    ("word", "bit", "expected"),
    [
        (0x0001, 0, True),
        (0x0001, 15, False),
        (0x8000, 15, True),
        (0x8000, 0, False),
        (0x7FFE, 0, False),
        (0x7FFE, 15, False),
        (0x7FFE, 1, True),
        (0xFFFF, 7, True),
    ],
)
def test_decode_bit(word: int, bit: int, expected: bool) -> None:
    assert decode(point(T.BIT, bit=bit), [word]) is expected


@pytest.mark.parametrize(
    ("data_type", "words", "scale", "offset", "expected"),
    [
        (T.INT16, [0xFFFE], 0.1, 1.0, -2 * 0.1 + 1.0),
        (T.UINT16, [250], 0.1, 0.0, 25.0),
        (T.UINT16, [100], 1.0, -40.0, 60.0),
        (T.INT32, [0xFFFF, 0xFFF6], 0.5, 0.0, -5.0),
        (T.FLOAT32, [0x3F80, 0x0000], 2.0, 0.5, 2.5),
    ],
)
def test_scale_offset_give_float(
    data_type: DataType, words: list[int], scale: float, offset: float, expected: float
) -> None:
    value = decode(point(data_type, scale=scale, offset=offset), words)
    assert isinstance(value, float)
    assert value == pytest.approx(expected)


def test_unscaled_int_stays_int() -> None:
    value = decode(point(T.UINT64), [0xFFFF] * 4)
    assert value == 2**64 - 1  # a float would have rounded this
    assert type(value) is int


def test_nan_decodes_and_is_not_a_change() -> None:
    value = decode(point(T.FLOAT32), [0x7FC0, 0x0000])
    assert isinstance(value, float)
    assert math.isnan(value)
    assert same_value(value, float("nan"))
    assert not same_value(1, 1.0)
    assert not same_value(True, 1)


@pytest.mark.parametrize(("bits", "expected"), [([True], True), ([False], False)])
def test_decode_bits(bits: list[bool], expected: bool) -> None:
    assert decode_bits(point(T.BOOL), bits) is expected


@pytest.mark.parametrize(
    ("data_type", "words", "kw"),
    [
        (T.INT32, [0x0001], {}),  # short reply
        (T.FLOAT64, [0, 0, 0], {}),
        (T.INT16, [0x1_0000], {}),  # not a 16-bit word
        (T.STRING, [0x4142], {"count": 2}),
    ],
)
def test_decode_rejects_wrong_words(data_type: DataType, words: list[int], kw: Any) -> None:
    with pytest.raises(CodecError):
        decode(point(data_type, **kw), words)


def test_decode_bits_rejects_short_reply() -> None:
    with pytest.raises(CodecError):
        decode_bits(point(T.BOOL), [])


def test_decode_raw_bit_needs_index() -> None:
    with pytest.raises(CodecError):
        decode_raw(T.BIT, [1])


@pytest.mark.parametrize(
    ("data_type", "value", "count"),
    [
        (T.INT16, 40000, None),
        (T.UINT16, -1, None),
        (T.UINT64, 2**64, None),
        (T.INT32, 1.5, None),
        (T.FLOAT32, 1e40, None),
        (T.STRING, "ABCDE", 2),
        (T.STRING, "€", 1),  # not latin-1
    ],
)
def test_encode_rejects_what_does_not_fit(
    data_type: DataType, value: Any, count: int | None
) -> None:
    with pytest.raises(CodecError):
        encode(data_type, value, count=count)


@pytest.mark.parametrize("order", [ABCD, BADC])
@pytest.mark.parametrize("text", ["", "A", "SN-000123", "Lot Nr. 7 ÄÖÜ", "x" * 20])
def test_string_round_trip(order: WordOrder, text: str) -> None:
    words = encode(T.STRING, text, order, count=10)
    assert len(words) == 10
    assert decode(point(T.STRING, order, count=10), words) == text


@pytest.mark.parametrize("order", list(WordOrder))
@pytest.mark.parametrize(
    ("data_type", "value"),
    [
        (T.INT16, -12345),
        (T.UINT16, 54321),
        (T.INT32, -2_000_000_000),
        (T.UINT32, 4_000_000_000),
        (T.INT64, -(2**62) - 12345),
        (T.UINT64, 2**64 - 2),
        (T.FLOAT32, -0.25),
        (T.FLOAT64, 6.02214076e23),
    ],
)
def test_numeric_round_trip(order: WordOrder, data_type: DataType, value: int | float) -> None:
    assert decode(point(data_type, order), encode(data_type, value, order)) == value


@pytest.mark.parametrize("bit", [0, 7, 15])
def test_bit_round_trip(bit: int) -> None:
    assert encode(T.BIT, True, bit=bit) == [1 << bit]
    assert decode(point(T.BIT, bit=bit), encode(T.BIT, True, bit=bit)) is True
    assert decode(point(T.BIT, bit=bit), encode(T.BIT, False, bit=bit)) is False


@pytest.mark.parametrize("order", list(WordOrder))
def test_bytes_words_inverse(order: WordOrder) -> None:
    data = bytes(range(1, 9))
    assert words_to_bytes(bytes_to_words(data, order), order) == data


@pytest.mark.parametrize(
    ("pt", "value", "wire"),
    [
        (point(T.BOOL), True, True),
        (point(T.BOOL), False, False),
        (point(T.BOOL), 1, True),
        (point(T.BOOL), 0, False),
        (point(T.UINT16), 65535, 65535),
        (point(T.UINT16), True, 1),  # a "taken" flag kept in a whole register
        (point(T.INT16), -2, 0xFFFE),
        (point(T.INT16, BADC), 1, 0x0100),  # the word order the point is read with
    ],
)
def test_write_value(pt: ModbusPoint, value: Any, wire: bool | int) -> None:
    got = write_value(pt, value)
    assert (got, type(got)) == (wire, type(wire))


@pytest.mark.parametrize(
    ("pt", "value", "message"),
    [
        (point(T.BOOL), 2, "a coil takes true/false (or 1/0), not 2"),
        (point(T.BOOL), "on", "a coil takes true/false (or 1/0), not 'on'"),
        (point(T.UINT16), -1, "uint16 cannot hold -1"),
        (point(T.INT16), 40000, "int16 cannot hold 40000"),
        (point(T.INT16), 1.0, "int16 cannot hold 1.0"),
        (point(T.UINT16), None, "uint16 cannot hold None"),
        (point(T.FLOAT32), 1.0, "'p' is not writable: only single-register"),
        (point(T.INT16, scale=0.1), 1, "'p' is not writable: scaled points"),
    ],
)
def test_write_value_rejects(pt: ModbusPoint, value: Any, message: str) -> None:
    with pytest.raises(CodecError, match="^" + re.escape(message)):
        write_value(pt, value)


def _point(data_type: DataType, order: WordOrder, **kw: Any) -> ModbusPoint:
    return ModbusPoint(name="p", address=0, type=data_type, word_order=order, **kw)


COMPILED_CASES = [
    *[
        _point(t, o, scale=s, offset=off)
        for t in (T.INT16, T.UINT16, T.INT32, T.UINT32, T.INT64, T.UINT64, T.FLOAT32, T.FLOAT64)
        for o in WordOrder
        for s, off in ((1.0, 0.0), (0.1, -40.0))
    ],
    *[_point(DataType.BOOL, o) for o in WordOrder],
    *[_point(DataType.BIT, WordOrder.ABCD, bit=b) for b in (0, 7, 8, 15)],
    *[_point(DataType.STRING, o, count=3) for o in WordOrder],
]


@pytest.mark.parametrize("point", COMPILED_CASES, ids=repr)
def test_compiled_decoder_agrees_with_decode(point: ModbusPoint) -> None:
    """The poll path decodes with ``compile_decoder``; ``decode`` is the reference. Random
    registers at an offset inside a longer response, every type and word order."""
    rng = random.Random(f"{point.type}{point.word_order}{point.bit}{point.scale}")
    n = point.register_count
    for _ in range(200):
        words = [rng.randrange(0x10000) for _ in range(n + 5)]
        expected = decode(point, words[3 : 3 + n])
        got = compile_decoder(point, 3)(response_bytes(words))
        assert type(got) is type(expected)
        assert got == expected or (got != got and expected != expected)  # NaN is NaN
