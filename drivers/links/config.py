"""Config of a device on a byte link (serial port, TCP client, TCP server) and its framing,
shared by the scanner, RFID and scale kinds.

Imports only pydantic and the kernel, like every config model: a config is validated on
machines without pyserial's ports; ``drivers.links.factory`` builds the link and framer.

Byte strings the integrator types (a trigger command, a good-read answer) are text with the
ASCII control characters written by name in angle brackets: ``LON<CR>``, ``<ESC>7``,
``<STX>T<ETX>``; ``<0x1b>`` gives any byte by its hex value. YAML escapes (``"\\x1b7"``)
work too, but a reader's manual names the bytes, so the names are what the docs use.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Literal

from pydantic import Field

from drivers.device import DeviceConfig, backoff_issues
from kernel.names import Issue

CONTROL_NAMES = (
    *("NUL", "SOH", "STX", "ETX", "EOT", "ENQ", "ACK", "BEL"),
    *("BS", "HT", "LF", "VT", "FF", "CR", "SO", "SI"),
    *("DLE", "DC1", "DC2", "DC3", "DC4", "NAK", "SYN", "ETB"),
    *("CAN", "EM", "SUB", "ESC", "FS", "GS", "RS", "US"),
)
"""ASCII's names of bytes 0x00-0x1f, as readers' manuals write them."""
_TOKEN = re.compile(r"<([A-Za-z0-9]+)>")
SUFFIXES: dict[str, bytes] = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n"}
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)


def control_bytes(text: str) -> bytes:
    """``"LON<CR>"`` -> ``b"LON\\r"``. Raises ValueError naming an unknown ``<...>`` token."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.upper() in CONTROL_NAMES:
            return chr(CONTROL_NAMES.index(name.upper()))
        if name.lower().startswith("0x") and len(name) == 4:
            try:
                return chr(int(name[2:], 16))
            except ValueError:
                pass
        if name.upper() == "DEL":
            return "\x7f"
        raise ValueError(f"unknown byte name <{name}>: use <CR>, <LF>, <ESC>, ... or <0x1b>")

    replaced = _TOKEN.sub(one, text)
    try:
        return replaced.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{text!r} holds a character that is not one byte: {exc}") from None


class LinkDevice(DeviceConfig):
    """A device that sends text over a serial port or TCP: exactly one of ``port`` (serial),
    ``host`` + ``tcp_port`` (the agent connects to the device) or ``listen_port`` (the device
    connects to the agent)."""

    port: str | None = Field(
        default=None,
        min_length=1,
        description="Serial port, e.g. /dev/ttyUSB0 or /dev/ttyACM0; prefer the stable "
        "/dev/serial/by-id/... name. Give port, host (the agent connects) or listen_port (the "
        "device connects).",
        examples=["/dev/serial/by-id/usb-Honeywell_Imaging_1900-if00", "/dev/ttyACM0"],
    )
    baudrate: int = Field(
        default=9600,
        description=f"Bits per second on the serial port: one of {', '.join(map(str, BAUD_RATES))}"
        ". USB virtual COM ports ignore it.",
    )
    bytesize: Literal[7, 8] = Field(default=8, description="Data bits: 7 or 8.")
    parity: Literal["N", "E", "O"] = Field(default="N", description="Parity: N, E or O.")
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits: 1 or 2.")
    rtscts: bool = Field(default=False, description="RTS/CTS hardware flow control.")
    xonxoff: bool = Field(default=False, description="XON/XOFF software flow control.")
    host: str | None = Field(
        default=None,
        min_length=1,
        description="The device's address when the agent connects to it over TCP (with "
        "tcp_port), e.g. a fixed-mount reader's data port or a serial device server.",
        examples=["192.168.10.50"],
    )
    tcp_port: int | None = Field(
        default=None, ge=1, le=65535, description="TCP port of host.", examples=[23, 2001]
    )
    listen_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="TCP port the agent listens on when the device connects to the agent "
        "(the reader is the client); one connection at a time, a new one replaces the old.",
        examples=[51236],
    )
    listen_host: str = Field(
        default="0.0.0.0",
        description="Address the agent listens on (with listen_port); 0.0.0.0: every interface.",
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds allowed to connect to host."
    )
    framing: Literal["suffix", "stx_etx", "pattern"] = Field(
        default="suffix",
        description="How the byte stream is cut into messages: suffix (a terminator ends each), "
        "stx_etx (STX message ETX), or pattern (a regex matching one whole message).",
    )
    suffix: Literal["CR", "LF", "CRLF"] = Field(
        default="CR",
        description="Terminator with framing suffix. CR also accepts CR LF and LF also accepts "
        "CR LF, so a reader set to CR LF works either way.",
    )
    pattern: str | None = Field(
        default=None,
        description="With framing pattern: a regex matching one whole message; a group named "
        "data is the message (else the whole match). Use \\x02 style escapes for bytes.",
        examples=[r"\x02(?P<data>[^\x03]*)\x03\r\n"],
    )
    max_length: int = Field(
        default=512,
        ge=1,
        le=65536,
        description="Longest message in bytes; a longer one is rejected with that reason and "
        "the stream resynchronised at the next terminator.",
    )
    inter_char_timeout: float | None = Field(
        default=0.5,
        gt=0,
        description="Seconds without a byte after which a half message is rejected (incomplete "
        "frame); null: wait for the terminator however long it takes.",
    )
    backoff_initial: float = Field(default=0.5, gt=0, description="Reconnect backoff base.")
    backoff_max: float = Field(default=30.0, gt=0, description="Reconnect backoff cap.")

    def issues(self) -> list[Issue]:
        out: list[Issue] = []
        given = [k for k in ("port", "host", "listen_port") if getattr(self, k) is not None]
        if len(given) != 1:
            where = ("port",) if not given else (given[1],)
            out.append(
                (
                    where,
                    "give exactly one of port (serial), host (the agent connects) or "
                    f"listen_port (the device connects); got {', '.join(given) or 'none'}",
                )
            )
        if self.host is not None and self.tcp_port is None:
            out.append((("tcp_port",), "host needs tcp_port (the device's TCP port)"))
        if self.tcp_port is not None and self.host is None:
            out.append((("tcp_port",), "tcp_port is for host; give host too"))
        if self.port is not None and self.baudrate not in BAUD_RATES:
            rates = ", ".join(map(str, BAUD_RATES))
            out.append((("baudrate",), f"{self.baudrate} is not a baud rate: one of {rates}"))
        if self.framing == "pattern":
            if self.pattern is None:
                out.append((("pattern",), "framing pattern needs pattern (a regex of a message)"))
            else:
                try:
                    re.compile(self.pattern.encode("latin-1"))
                except (re.error, UnicodeEncodeError) as exc:
                    out.append((("pattern",), f"not a valid regex: {exc}"))
        elif self.pattern is not None:
            out.append((("pattern",), "pattern is only used with framing: pattern"))
        out.extend(backoff_issues(self.backoff_initial, self.backoff_max))
        return out

    def identity(self) -> Hashable | None:
        if self.port is not None:
            return ("serial", self.port)
        if self.host is not None:
            return ("tcp", self.host.lower(), self.tcp_port)
        if self.listen_port:  # 0 takes a free port: never the same twice
            return ("listen", self.listen_port)
        return None

    def duplicate_issue(self, first: int) -> Issue:
        if self.port is not None:
            return (
                ("port",),
                f"serial port {self.port} is already used by devices[{first}]: one port, one "
                "device (a second reader would take bytes the first one never sees)",
            )
        if self.host is not None:
            return (("host",), f"{self.host}:{self.tcp_port} is already devices[{first}]")
        return (("listen_port",), f"port {self.listen_port} is already devices[{first}]'s")

    def request_timeout(self) -> float:
        return self.connect_timeout
