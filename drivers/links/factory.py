"""The link and framer a :class:`~drivers.links.config.LinkDevice` asks for."""

from __future__ import annotations

from drivers.links.base import Link
from drivers.links.config import SUFFIXES, LinkDevice
from drivers.links.framing import Framer


def make_link(device: LinkDevice) -> Link:
    """A serial port, a TCP client or a TCP server link, as the config says."""
    if device.port is not None:
        from drivers.links.serial import SerialLink

        return SerialLink(
            device.name,
            device.port,
            baudrate=device.baudrate,
            bytesize=device.bytesize,
            parity=device.parity,
            stopbits=device.stopbits,
            xonxoff=device.xonxoff,
            rtscts=device.rtscts,
        )
    from drivers.links.tcp import TcpClientLink, TcpServerLink

    if device.host is not None:
        assert device.tcp_port is not None  # the config's issues() make sure
        return TcpClientLink(
            device.name, device.host, device.tcp_port, connect_timeout=device.connect_timeout
        )
    assert device.listen_port is not None
    return TcpServerLink(device.name, device.listen_host, device.listen_port)


def make_framer(device: LinkDevice) -> Framer:
    pattern = device.pattern.encode("latin-1") if device.pattern is not None else None
    return Framer(
        device.framing,
        suffix=SUFFIXES[device.suffix],
        pattern=pattern,
        max_length=device.max_length,
        inter_char_timeout=device.inter_char_timeout,
    )
