"""The wire formats, per protocol: commands cut from the bytes received, readings written as
the scale writes them. Pure: bytes and values in, bytes or commands out.

- **MT-SICS**: commands are lines (CR LF); a weight is ``S S|D <weight> <unit>`` (``S +``
  overload, ``S -`` underload).
- **SBI**: commands are ``ESC`` + a letter, or ``ESC`` + letter, digit(s) and ``_``; a print is
  the display as a 16-character line (22 with ID codes ``N``/``G#``); an unstable print has no
  unit, as on a real balance.
- **Toledo continuous**: STX, status A B C, weight, tare, CR (and a checksum).

The short status replies to commands (``ES``, ``Z A``, ``I4 A``...) are written where the
commands are carried out, in :mod:`.session`.

The wire formats are written here from the manuals, independently of
``drivers/scale/protocols.py``, so an end-to-end test cannot pass on a format mistake both sides
share. Sources: Mettler Toledo MT-SICS reference (via the balances' operating instructions),
Sartorius SBI "data output format" pages, Mettler Toledo WILDCAT manual appendix 2 (continuous
output); see that module's docstring for the details checked.
"""

from __future__ import annotations

from simulators.scale.model import _TOLEDO_UNIT_CODES, Reading, ScaleModel

CRLF = b"\r\n"
ESC = 0x1B
STX = 0x02
CR = 0x0D
_SBI_LONGEST = 24
"""An SBI command is at most 20 characters; an ESC with no ``_`` within this many is noise."""
_TOLEDO_UNKNOWN_UNIT_CODE = 7


def number(value: float, decimals: int) -> str:
    """A weight or tare as the scale writes it: ``decimals`` places."""
    return f"{value:.{decimals}f}"


# ---- MT-SICS ----------------------------------------------------------------------------------


def mtsics_lines(pending: bytearray, data: bytes) -> list[str]:
    """Append ``data`` to ``pending`` and take the complete lines out of it: the commands."""
    pending += data
    commands: list[str] = []
    while (end := pending.find(b"\n")) >= 0:
        line = bytes(pending[:end]).rstrip(b"\r")
        del pending[: end + 1]
        commands.append(line.decode("latin-1").strip())
    return commands


def mtsics_weight(model: ScaleModel, reading: Reading, unit: str) -> bytes:
    """The answer to ``S``, ``SI`` and ``SIR`` showing ``reading``."""
    if reading.overload:
        return b"S +" + CRLF
    if reading.underload:
        return b"S -" + CRLF
    status = "S" if reading.stable else "D"
    return f"S {status} {number(reading.value, model.decimals):>10} {unit}".encode() + CRLF


# ---- SBI --------------------------------------------------------------------------------------


def sbi_commands(pending: bytearray, data: bytes) -> list[str]:
    """Append ``data`` to ``pending`` and take the complete commands out of it (``P``, ``f4_``...).
    Commands are ``ESC`` + a letter, or ``ESC`` + letter, digit(s) and ``_``; CR LF after them
    are optional, so they are cut by their own syntax, not by line ends."""
    pending += data
    commands: list[str] = []
    while True:
        start = pending.find(ESC)
        if start < 0:
            pending.clear()
            return commands
        del pending[:start]
        if len(pending) < 2:
            return commands
        letter = chr(pending[1])
        if letter.islower():
            end = pending.find(b"_", 0, _SBI_LONGEST)
            if end < 0 and len(pending) < _SBI_LONGEST:
                return commands  # the rest is still on its way
            if end < 0:  # no command of ours: skip this ESC
                del pending[:1]
                continue
            command = pending[1 : end + 1].decode("latin-1")
            del pending[: end + 1]
        else:
            command = letter
            del pending[:2]
        commands.append(command)


def sbi_line(model: ScaleModel, reading: Reading, unit: str) -> bytes:
    """What ``ESC P`` (or auto print) prints for ``reading``."""
    ident = ("N" if reading.net else "G#") if model.sbi_id_codes else None
    if reading.overload or reading.underload:
        body = f"{'':6}{'H' if reading.overload else 'L'}{'':7}"
        ident = "Stat" if ident is not None else None
    else:
        sign = "-" if reading.value < 0 else "+"
        unit = unit if reading.stable else ""
        body = f"{sign} {number(abs(reading.value), model.decimals):>8} {unit:<3}"
    prefix = f"{ident:<6}" if ident is not None else ""
    return (prefix + body).encode("latin-1") + CRLF


# ---- Toledo continuous output -----------------------------------------------------------------


def toledo_frame(model: ScaleModel, reading: Reading, tare: float, unit: str) -> bytes:
    """One frame of continuous output showing ``reading`` and ``tare``."""
    d = model.decimals
    unit_code = _TOLEDO_UNIT_CODES.get(unit, _TOLEDO_UNKNOWN_UNIT_CODE)
    weight = round(abs(reading.value) * 10**d)
    tare_digits = round(tare * 10**d)
    out_of_range = reading.overload or reading.underload or weight > 999_999
    if out_of_range:
        weight = 0
    # Bit 5 of every status byte is always 1 (WILDCAT tables 6-9..6-11).
    a = 0x20 | (d + 2) | 0x08  # decimal point code, increment x1
    b = (
        0x20
        | (0x01 if reading.net else 0)
        | (0x02 if reading.value < 0 or reading.underload else 0)
        | (0x04 if out_of_range else 0)
        | (0x00 if reading.stable else 0x08)
        | (0x10 if unit == "kg" else 0)
    )
    c = 0x20 | unit_code
    frame = bytes([STX, a, b, c]) + f"{weight:06d}{tare_digits:06d}".encode("ascii") + bytes([CR])
    if model.toledo_checksum:
        frame += bytes([-sum(frame) & 0x7F])
    return frame
