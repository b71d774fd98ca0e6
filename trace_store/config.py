"""What a trace store needs to know: the broker, the database, who it is."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from trace_store.envelope import invalid_level

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_HELD_RECORDS = 200_000


def _hostname() -> str:
    return socket.gethostname() or "trace-store"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Settings of one ``TraceStore``. Invalid combinations raise ValueError at construction,
    naming every problem, so a bad command line fails before anything connects."""

    host: str = "localhost"
    port: int = 1883
    db: str = "trace.db"  # a SQLite path or a postgresql:// URL
    topic_prefix: str = "trace"
    store_id: str = field(default_factory=_hostname)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    agents: frozenset[str] | None = None  # allowlist; None accepts every agent
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False  # implied by any tls_* file; alone it uses the system's CAs
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    keepalive: int = 30
    connect_timeout: float = 10.0
    confirm_interval: float = 0.15  # seconds between two confirmations of one agent
    # Per agent, records of messages set aside until the seqs below them arrive (service.py,
    # "_select"); beyond, a message is dropped and the agent's resend brings it again.
    max_held_records: int = DEFAULT_MAX_HELD_RECORDS
    backoff_initial: float = 0.2
    backoff_max: float = 10.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.host:
            problems.append("broker host is empty")
        if not 1 <= self.port <= 65535:
            problems.append(f"broker port {self.port} is not in 1..65535")
        if not self.db:
            problems.append("db is empty")
        if any(invalid_level(level) for level in self.topic_prefix.split("/")):
            problems.append(
                f"topic prefix {self.topic_prefix!r}: levels must be non-empty and free of "
                "'+', '#' and NUL"
            )
        why = invalid_level(self.store_id)
        if why:
            problems.append(f"store id: {why}")
        if self.max_message_bytes < 1024:
            problems.append("max message bytes must be at least 1024")
        if self.agents is not None:
            problems.extend(f"agent {a!r}: {w}" for a in self.agents if (w := invalid_level(a)))
        if self.password is not None and self.username is None:
            problems.append("password given without username")
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("tls cert and tls key go together")
        if self.keepalive < 5:
            problems.append("keepalive must be at least 5 seconds")
        if self.connect_timeout <= 0 or self.confirm_interval < 0:
            problems.append("connect timeout must be > 0 and confirm interval >= 0")
        if self.max_held_records < 0:
            problems.append("max held records must be >= 0")
        if not 0 < self.backoff_initial <= self.backoff_max:
            problems.append("need 0 < backoff initial <= backoff max")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def client_id(self) -> str:
        """Fixed, so the broker keeps this store's session (and queues for it) while it is
        down. Two stores with one id would disconnect each other: give each its own."""
        return f"trace-store-{self.store_id}"

    @property
    def use_tls(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None

    @property
    def subscription(self) -> str:
        return f"{self.topic_prefix}/+/+/+/records"

    def confirm_topic(self, site: str, line: str, agent: str) -> str:
        return f"{self.topic_prefix}/{site}/{line}/{agent}/confirmed"


def parse_broker(text: str, default_port: int = 1883) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6addr]:port``. Raises ValueError."""
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"broker {text!r}: unclosed '['")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"broker {text!r}: expected ':port' after ']'")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = _port(text, number)
    if not host:
        raise ValueError(f"broker {text!r}: no host")
    return host, port


def _port(text: str, number: str) -> int:
    try:
        port = int(number)
    except ValueError:
        raise ValueError(f"broker {text!r}: port {number!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"broker {text!r}: port {port} is not in 1..65535")
    return port
