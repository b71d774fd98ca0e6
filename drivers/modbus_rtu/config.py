"""Config model of a Modbus RTU unit: on an RS-485 serial port, or behind an RTU-over-TCP
gateway. Everything about the register map is ``ModbusDevice``'s, shared with TCP."""

from __future__ import annotations

import os
from collections.abc import Hashable
from typing import Literal

from pydantic import Field

from drivers.device import BusClaim
from drivers.modbus.config import ModbusDevice
from kernel.names import Issue

BAUD_RATES = (1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400)


class ModbusRtuDevice(ModbusDevice):
    """A Modbus RTU unit on a serial line (RS-485/RS-232), or behind an RTU-over-TCP gateway.

    Units that name the same ``port`` (or the same ``host`` and ``tcp_port``) share one
    connection and take turns on it, one request at a time, as the bus requires.
    """

    type: Literal["modbus_rtu"] = Field(description="Driver: modbus_rtu.", examples=["modbus_rtu"])
    port: str | None = Field(
        default=None,
        min_length=1,
        description="Serial port, e.g. /dev/ttyUSB0; prefer the stable /dev/serial/by-id/... "
        "name. Give port, or host for an RTU-over-TCP gateway.",
        examples=["/dev/ttyUSB0", "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1ABC-if00-port0"],
    )
    host: str | None = Field(
        default=None,
        min_length=1,
        description="RTU-over-TCP gateway (serial device server) address, instead of port: RTU "
        "frames, CRC included, travel inside TCP.",
        examples=["192.168.10.40"],
    )
    tcp_port: int = Field(
        default=502,
        ge=1,
        le=65535,
        description="TCP port of the RTU-over-TCP gateway (with host).",
        examples=[4001, 502],
    )
    baudrate: int = Field(
        default=19200,
        description=f"Bits per second on the serial line: one of {', '.join(map(str, BAUD_RATES))}."
        " Every unit on the port must say the same.",
        examples=[9600, 19200, 38400],
    )
    parity: Literal["E", "O", "N"] = Field(
        default="E",
        description="E (even, the Modbus default: 8E1), O (odd) or N (none; then the standard "
        "asks for 2 stop bits, though many devices use 1).",
        examples=["E", "N"],
    )
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits.", examples=[1, 2])
    bytesize: Literal[7, 8] = Field(
        default=8, description="Data bits per character (RTU uses 8).", examples=[8]
    )
    unit_id: int = Field(
        default=1,
        ge=1,
        le=247,
        description="Modbus unit (slave) address on the bus, 1..247.",
        examples=[1, 17],
    )
    timeout: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="Seconds to wait for this unit's answer. The bus waits too, so a dead unit "
        "costs every other unit on the port this much (times 1 + retries) until it is backed "
        "off: keep it short.",
        examples=[0.3, 1.0],
    )
    retries: int = Field(
        default=1,
        ge=0,
        le=5,
        description="Requests sent again after silence or a garbled (CRC) answer, before the "
        "unit counts as not answering.",
        examples=[0, 2],
    )

    def issues(self) -> list[Issue]:
        out = super().issues()
        if (self.port is None) == (self.host is None):
            where = ("port",) if self.port is not None else ()
            out.insert(
                0, (where, "give port (a serial port) or host (an RTU-over-TCP gateway), one")
            )
        if self.port is not None and self.baudrate not in BAUD_RATES:
            out.append(
                (
                    ("baudrate",),
                    f"{self.baudrate} is not a serial baud rate; use one of "
                    f"{', '.join(map(str, BAUD_RATES))}",
                )
            )
        if self.port is not None and self.bytesize == 7:
            out.append((("bytesize",), "Modbus RTU needs 8 data bits (7 is Modbus ASCII)"))
        return out

    def bus(self) -> BusClaim:
        if self.port is not None:
            path = os.path.normpath(self.port)
            settings = {
                "baudrate": self.baudrate,
                "parity": self.parity,
                "stopbits": self.stopbits,
                "bytesize": self.bytesize,
            }
            return BusClaim(f"serial:{path}", f"serial port {path}", settings)
        host = (self.host or "").strip().lower()
        return BusClaim(f"rtu-tcp:{host}:{self.tcp_port}", f"gateway {self.link()}", {})

    def identity(self) -> Hashable | None:
        return ("modbus_rtu", self.bus().key, self.unit_id)

    def duplicate_issue(self, first: int) -> Issue:
        return (
            ("unit_id",),
            f"same unit as devices[{first}] ({self.link()} unit {self.unit_id}): give each unit "
            "one entry (its points may each set poll_interval and station)",
        )

    def link(self) -> str:
        return self.port if self.port is not None else f"{self.host}:{self.tcp_port}"

    def probe_details(self) -> dict[str, object]:
        if self.port is not None:
            return {
                "port": self.port,
                "baudrate": self.baudrate,
                "parity": self.parity,
                "stopbits": self.stopbits,
                "unit_id": self.unit_id,
            }
        return {"host": self.host, "tcp_port": self.tcp_port, "unit_id": self.unit_id}
