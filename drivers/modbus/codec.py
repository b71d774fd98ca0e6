"""Register words <-> values for every Modbus data type and word order.

Pure functions, no I/O: the driver decodes with them and the simulator encodes with them, so
one table of test vectors covers both directions.

Word orders, for registers r0..rn of 16 bits each: CDAB and DCBA reverse the order of the
registers, BADC and DCBA swap the two bytes inside each register; the resulting bytes are
then read big-endian. float32 123.456 (0x42F6E979) is [0x42F6, 0xE979] in ABCD,
[0xE979, 0x42F6] in CDAB, [0xF642, 0x79E9] in BADC and [0x79E9, 0xF642] in DCBA.

Strings are decoded as latin-1: it maps every byte to exactly one character, so nothing a PLC
sends is ever replaced or lost (the raw bytes can be recovered from the recorded text), and the
string types of the PLCs we meet (S7 STRING, Logix STRING, plain ASCII serials) are one byte per
character anyway. UTF-8 with errors="replace" would silently turn unexpected bytes into U+FFFD.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Literal

from drivers.modbus.config import REGISTERS, DataType, ModbusPoint, WordOrder
from kernel.model import Value

STRING_ENCODING = "latin-1"

# struct format of each fixed-width numeric type (big-endian is applied by the caller).
_STRUCT: dict[DataType, str] = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}

_REVERSE_WORDS = frozenset({WordOrder.CDAB, WordOrder.DCBA})
_SWAP_BYTES = frozenset({WordOrder.BADC, WordOrder.DCBA})

Raw = bool | int | float | str


class CodecError(ValueError):
    """Words cannot be turned into a value of the type (or a value into words)."""


def words_to_bytes(words: Sequence[int], word_order: WordOrder) -> bytes:
    """The big-endian byte string the registers stand for under ``word_order``."""
    for w in words:
        if not 0 <= w <= 0xFFFF:
            raise CodecError(f"register value {w} is not a 16-bit word")
    ordered = list(reversed(words)) if word_order in _REVERSE_WORDS else list(words)
    if word_order in _SWAP_BYTES:
        return b"".join(w.to_bytes(2, "little") for w in ordered)
    return b"".join(w.to_bytes(2, "big") for w in ordered)


def bytes_to_words(data: bytes, word_order: WordOrder) -> list[int]:
    """Inverse of :func:`words_to_bytes`; ``data`` must have an even length."""
    if len(data) % 2:
        raise CodecError(f"{len(data)} bytes do not fill whole registers")
    byteorder: Literal["little", "big"] = "little" if word_order in _SWAP_BYTES else "big"
    words = [int.from_bytes(data[i : i + 2], byteorder) for i in range(0, len(data), 2)]
    if word_order in _REVERSE_WORDS:
        words.reverse()
    return words


def _expect(data_type: DataType, words: Sequence[int], count: int | None) -> int:
    fixed = REGISTERS[data_type]
    want = fixed if fixed is not None else (count if count is not None else len(words))
    if len(words) != want:
        raise CodecError(f"{data_type.value} needs {want} register(s), got {len(words)}")
    return want


def decode_raw(
    data_type: DataType,
    words: Sequence[int],
    word_order: WordOrder = WordOrder.ABCD,
    *,
    bit: int | None = None,
    count: int | None = None,
) -> Raw:
    """Decode registers to the raw value of ``data_type`` (no scale/offset).

    ``bit`` is required for :attr:`DataType.BIT`; ``count`` (registers) for strings is
    optional and, when given, checked against ``len(words)``. BOOL takes one word (0 or not).
    """
    _expect(data_type, words, count)
    if data_type is DataType.BOOL:
        return bool(words[0])
    if data_type is DataType.BIT:
        if bit is None or not 0 <= bit <= 15:
            raise CodecError(f"type bit needs bit 0..15, got {bit}")
        if not 0 <= words[0] <= 0xFFFF:
            raise CodecError(f"register value {words[0]} is not a 16-bit word")
        return bool((words[0] >> bit) & 1)
    data = words_to_bytes(words, word_order)
    if data_type is DataType.STRING:
        return data.decode(STRING_ENCODING).rstrip("\x00 ")
    value: int | float = struct.unpack(">" + _STRUCT[data_type], data)[0]
    return value


def scaled(raw: int | float, scale: float, offset: float) -> int | float:
    """raw * scale + offset; an unscaled integer stays an int so counters keep exactness."""
    if scale == 1.0 and offset == 0.0:
        return raw
    return raw * scale + offset


def decode(point: ModbusPoint, words: Sequence[int]) -> Value:
    """The engineering value of ``point`` from its registers (scale and offset applied)."""
    raw = decode_raw(point.type, words, point.word_order, bit=point.bit, count=point.count)
    if isinstance(raw, bool | str):
        return raw
    return scaled(raw, point.scale, point.offset)


def response_bytes(words: Sequence[int]) -> bytes:
    """A register response as the big-endian bytes it came in (what compiled decoders read)."""
    return struct.pack(f">{len(words)}H", *words)


def compile_decoder(point: ModbusPoint, offset: int) -> Callable[[bytes], Value]:
    """``decode`` for ``point`` at ``offset`` registers into a response, as one function of the
    response's bytes (:func:`response_bytes`).

    Built once per point when the poll plan is made: decoding a 64-register response then
    costs one ``pack`` and one ``unpack_from`` per point, where ``decode`` sliced, checked and
    joined words per point (the largest cost of a poll after the Modbus exchange itself).
    Types and word orders off the fast path go through ``decode``, so results are identical.
    """
    start = 2 * offset
    words = point.register_count
    data_type = point.type
    if data_type is DataType.BOOL:
        return lambda data: data[start] != 0 or data[start + 1] != 0
    if data_type is DataType.BIT and point.bit is not None and 0 <= point.bit <= 15:
        mask = 1 << point.bit
        return lambda data: ((data[start] << 8 | data[start + 1]) & mask) != 0
    fmt = _STRUCT.get(data_type)
    plain = point.word_order is WordOrder.ABCD or (
        words == 1 and point.word_order not in _SWAP_BYTES
    )
    if fmt is None or not plain:
        end = start + 2 * words

        def general(data: bytes) -> Value:
            return decode(point, struct.unpack(f">{words}H", data[start:end]))

        return general
    unpack_from = struct.Struct(">" + fmt).unpack_from
    scale, shift = point.scale, point.offset
    if scale == 1.0 and shift == 0.0:
        return lambda data: unpack_from(data, start)[0]
    return lambda data: unpack_from(data, start)[0] * scale + shift


def decode_bits(point: ModbusPoint, bits: Sequence[bool]) -> bool:
    """The value of a coil or discrete input point from the bit(s) read for it."""
    if point.type is not DataType.BOOL:
        raise CodecError(f"{point.type.value} is not read from a bit table")
    if len(bits) != 1:
        raise CodecError(f"bool needs 1 bit, got {len(bits)}")
    return bool(bits[0])


def encode(
    data_type: DataType,
    value: Raw,
    word_order: WordOrder = WordOrder.ABCD,
    count: int | None = None,
    *,
    bit: int | None = None,
) -> list[int]:
    """Registers holding the raw ``value`` (no scale/offset), as a device would serve them.

    Strings are NUL-padded to ``count`` registers (default: just long enough). BIT sets only
    ``bit`` in an otherwise zero word; BOOL gives [0] or [1].
    """
    if data_type is DataType.BOOL:
        return [1 if value else 0]
    if data_type is DataType.BIT:
        if bit is None or not 0 <= bit <= 15:
            raise CodecError(f"type bit needs bit 0..15, got {bit}")
        return [(1 << bit) if value else 0]
    if data_type is DataType.STRING:
        if not isinstance(value, str):
            raise CodecError(f"string value expected, got {type(value).__name__}")
        try:
            data = value.encode(STRING_ENCODING)
        except UnicodeEncodeError as exc:
            raise CodecError(f"{value!r} is not {STRING_ENCODING} text") from exc
        regs = count if count is not None else (len(data) + 1) // 2
        if len(data) > 2 * regs:
            raise CodecError(f"{len(data)} characters do not fit {regs} register(s)")
        return bytes_to_words(data.ljust(2 * regs, b"\x00"), word_order)
    fmt = ">" + _STRUCT[data_type]
    if isinstance(value, str) or (
        data_type not in (DataType.FLOAT32, DataType.FLOAT64) and not isinstance(value, int)
    ):
        raise CodecError(f"{data_type.value} cannot hold {value!r}")
    try:
        data = struct.pack(fmt, value)
    except (struct.error, OverflowError) as exc:
        raise CodecError(f"{data_type.value} cannot hold {value!r}: {exc}") from exc
    return bytes_to_words(data, word_order)


def same_value(a: Value, b: Value) -> bool:
    """Equality for change detection: NaN equals NaN, so a NaN reading is not a change."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def write_value(point: ModbusPoint, value: Value) -> bool | int:
    """What a single write sends to set ``point`` to ``value``: the coil state (FC5) or the
    register word (FC6). Only points ``ModbusPoint.write_issue`` accepts can be written.

    A bool may go to a register (1/0: a "taken" flag kept in a word) and 0/1 to a coil; floats
    are refused even when whole, since the value written must be the value read back.
    """
    if point.write_issue() is not None:
        raise CodecError(f"{point.name!r} is not writable: {point.write_issue()}")
    if point.type is DataType.BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise CodecError(f"a coil takes true/false (or 1/0), not {value!r}")
    if isinstance(value, bool):
        value = int(value)
    if value is None or isinstance(value, float):
        raise CodecError(f"{point.type.value} cannot hold {value!r}")
    (word,) = encode(point.type, value, point.word_order)
    return word
