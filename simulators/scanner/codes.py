"""What a scanner decodes: the part's GS1 DataMatrix and material labels, as text. Pure.

What a part scan holds (:func:`part_code`): the AIM identifier (``]d2`` by default, or none),
then the GS1 element string ``01`` GTIN-14, ``21`` serial and, optionally, GS ``10`` lot (AI 21
has variable length, so GS ends it; nothing ends the last field). Then the framing: a CR, LF or
CRLF suffix, or STX ... ETX. The GTIN's check digit is computed with biip
(:func:`gtin14`), and the first part's code is parsed with biip when a scanner is built, so a
configuration that could not produce valid GS1 fails at start-up.

Serials and lots in GS1 (:func:`gs1_value`): AI 21 and AI 10 allow only the 82 characters of
GS1 "CSET 82" (``!"%&'()*+,-./0-9:;<=>?A-Z_a-z``) and at most 20 of them. The station's serials
(``SN00000001``; the line rig uses ``A-00000001``) are plain, but a prefix with a space, ``#``
or a non-ASCII letter would not be: such a character is percent-encoded as UTF-8 (``%20``,
``%23``, ``%C3%A9``), and so is ``%`` itself (``%25``), as GS1 Digital Link does. The mapping
is therefore reversible (URL unquoting gives the station serial back), ``ScanRecord.serial``
holds the value as sent, and a mapped value longer than 20 characters is a configuration error.
"""

from __future__ import annotations

from dataclasses import dataclass

from biip import ParseConfig, ParseError
from biip.checksums import gs1_standard_check_digit
from biip.gs1_messages import GS1Message

from simulators.station import GTIN, StationModel

GS = "\x1d"
"""The GS1 separator (ASCII 29) ending a variable-length field."""

_GS1_MAX = 20  # AI 10 and AI 21: X..20
# GS1 "CSET 82" (GS1 General Specifications, figure 7.11-1): what AI 10 and 21 may contain.
_CSET82 = frozenset(
    "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
)
_SAFE = _CSET82 - {"%"}
_BIIP = ParseConfig(gs1_element_strings_verify_date=True, separator_chars=(GS,))


@dataclass(frozen=True)
class Symbol:
    """How the part's DataMatrix is encoded."""

    aim: str | None = "]d2"
    """AIM symbology identifier sent before the data; None: the scanner does not send one."""
    gtin: str = GTIN
    """The product's GTIN: 14 digits with a valid check digit, or 13 (it is computed)."""
    lot: bool = True
    """Append ``10`` + the part's lot (after a GS)."""


def gtin14(digits: str) -> str:
    """A GTIN-14: 13 digits get their check digit appended; 14 must have the right one."""
    if not digits.isascii() or not digits.isdigit() or len(digits) not in (13, 14):
        raise ValueError(f"a GTIN-14 is 13 or 14 digits, not {digits!r}")
    check = str(gs1_standard_check_digit(digits[:13]))
    if len(digits) == 13:
        return digits + check
    if digits[13] != check:
        raise ValueError(f"GTIN {digits} has check digit {digits[13]}, expected {check}")
    return digits


def gs1_value(text: str) -> str:
    """``text`` in GS1 CSET 82: other characters and ``%`` itself percent-encoded (UTF-8)."""
    # Not urllib.parse.quote: it never encodes "~", which CSET 82 lacks.
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def _spoil_check_digit(gtin: str) -> str:
    return gtin[:13] + str((int(gtin[13]) + 1) % 10)


def part_code(
    model: StationModel, cycle: int, symbol: Symbol = Symbol(), *, bad_check_digit: bool = False
) -> str:
    """The part's DataMatrix as a scanner sends it, without framing:
    ``[aim] 01 <GTIN> 21 <serial> [GS 10 <lot>]``."""
    gtin = gtin14(symbol.gtin)
    if bad_check_digit:
        gtin = _spoil_check_digit(gtin)
    code = f"{symbol.aim or ''}01{gtin}21{gs1_value(model.serial(cycle))}"
    if symbol.lot:
        code += f"{GS}10{gs1_value(model.lot(cycle))}"
    return code


def lot_label(lot: str, gtin: str = GTIN, aim: str | None = "]d2") -> str:
    """A GS1 material label: ``[aim] 01 <GTIN> 10 <lot>`` (lot mapped like a serial)."""
    return f"{aim or ''}01{gtin14(gtin)}10{gs1_value(lot)}"


def _gs1_check(label: str, data: str) -> None:
    """Raise ValueError unless ``data`` is a valid GS1 element string (biip, check digits)."""
    try:
        message = GS1Message.parse(data, config=_BIIP)
    except ParseError as exc:
        raise ValueError(f"{label} is not valid GS1: {exc}") from None
    for es in message.element_strings:
        bad = es.gtin_error or es.sscc_error or es.gln_error
        if bad:
            raise ValueError(f"{label} is not valid GS1: {bad}")


def _strip_aim(code: str, aim: str | None) -> str:
    return code[len(aim) :] if aim and code.startswith(aim) else code
