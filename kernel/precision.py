"""Numbers shown as precise as their source is, for people (the agent's ``tail``, the trace
store's reports and workbench).

A float32 point's 6.019999980926514 is 6.02: 7 significant digits, or the 8 or 9 a float32
needs to read back as itself (20.015625 is a float32 that 7 digits would turn into another
one). A float64's or a scaled integer's 6.0200000000000005 is 6.02 at 15 digits. Where the
source type is not known (the trace store has no device config), a float that is exactly a
float32 almost surely came from one and is shown as one; any other float gets 15 digits.

The agent's ``tail`` passes the digits its config knows for a point; the trace store, which
has no device config, passes none. Both show numbers by this one rule.
"""

from __future__ import annotations

import math
import struct
from typing import Any

FLOAT32_DIGITS = 7
FLOAT64_DIGITS = 15


def as_float32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


def float32_text(x: float) -> float:
    """The float32 ``x`` with 7 significant digits, or 8 or 9 if it needs them to read back as
    itself (9 always do)."""
    for digits in (FLOAT32_DIGITS, 8):
        short = float(f"{x:.{digits}g}")
        if as_float32(short) == x:
            return short
    return float(f"{x:.9g}")


def shown(value: Any, digits: int | None = None) -> Any:
    """``value`` rounded to the precision of its source: ``digits`` significant digits, or,
    with None (type not known), as a float32 if it is exactly one, else to 15 digits.
    Non-floats (bools and ints included), NaN and infinities are returned as they are."""
    if type(value) is not float or not math.isfinite(value):
        return value
    exact32 = abs(value) < 3.4e38 and as_float32(value) == value
    if digits is None:
        return float32_text(value) if exact32 else float(f"{value:.{FLOAT64_DIGITS}g}")
    if digits <= FLOAT32_DIGITS and exact32:
        return float32_text(value)
    return float(f"{value:.{digits}g}")


def text(value: float | int) -> str:
    """A number as a person reads it: ``shown`` and no needless ``.0`` exponent noise
    (``20.6``, ``6.02``, ``1e-07``, ``42``)."""
    v = shown(value)
    if type(v) is float and v.is_integer() and abs(v) < 1e15:
        return f"{v:.1f}"
    return repr(v) if type(v) is float else str(v)
