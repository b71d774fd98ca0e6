"""``HOST:PORT`` for a socket the agent or the trace store listens on (metrics endpoints),
and the socket option both sides' MQTT connections need.

In the kernel because both sides parse the same text (the agent's ``metrics.listen`` and the
trace store's ``--metrics``) and both open MQTT connections the same way.
"""

from __future__ import annotations

import socket

EXAMPLES = "e.g. 127.0.0.1:9464, [::1]:9464 or 0.0.0.0:9464"


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6 address]:port`` -> (host, port). Raises ValueError saying what
    is wrong, in the integrator's terms (the host is required: listening on every interface
    is a choice to spell out, ``0.0.0.0``)."""
    if not text or text != text.strip() or any(c.isspace() for c in text):
        raise ValueError(f"expected HOST:PORT ({EXAMPLES}), found {text!r}")
    if "/" in text:
        raise ValueError(f"{text!r}: expected HOST:PORT, not a URL ({EXAMPLES})")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: unclosed '[' ({EXAMPLES})")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected ':PORT' after ']' ({EXAMPLES})")
        number = rest[1:]
        if ":" not in host:
            raise ValueError(f"{text!r}: brackets are for IPv6 addresses only ({EXAMPLES})")
    else:
        if text.count(":") > 1:
            raise ValueError(f"{text!r}: an IPv6 address goes in brackets, e.g. [::1]:9464")
        host, colon, number = text.rpartition(":")
        if not colon:
            raise ValueError(f"expected HOST:PORT ({EXAMPLES}), found {text!r}")
    if not host:
        raise ValueError(f"{text!r}: no host (0.0.0.0 listens on every interface)")
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"{text!r}: port {number!r} is not a number")
    port = int(number)
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is not in 1..65535")
    return host, port


def format_listen(host: str, port: int) -> str:
    """The inverse of :func:`parse_listen` (brackets around an IPv6 address)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def without_nagle(sock: object) -> socket.socket | None:
    """``sock`` with TCP_NODELAY set if it is a TCP socket (an ``ssl.SSLSocket`` is one too),
    else None. paho does not set it; without it Nagle holds small MQTT packets (a PUBLISH, a
    PUBACK) back ~40 ms, and the broker's in-flight window with them."""
    if not isinstance(sock, socket.socket):
        return None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
