"""The project's small error tree.

Drivers translate library exceptions at their edge (``raise ReadError(...) from exc``) so the
rest of the agent only ever sees these types, never ``None`` as a failure signal.
"""

from __future__ import annotations

from dataclasses import dataclass


class EdgeAgentError(Exception):
    """Base of every error the agent raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file, located as precisely as the YAML allows.

    Prints as ``file:line:col: key.path: message`` (line and column 1-based), the form editors
    and CI problem matchers jump to. Only a file that cannot be read at all has no position.
    """

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(EdgeAgentError):
    """A config file is unusable; carries every problem found, not just the first."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class DeviceError(EdgeAgentError):
    """A device could not be talked to."""

    def __init__(self, device: str, message: str) -> None:
        self.device = device
        self.reason = message
        super().__init__(f"device {device!r}: {message}")


class ConnectError(DeviceError):
    """The connection to a device could not be opened or was lost."""


class ReadError(DeviceError):
    """The device is connected but a read failed as a whole (timeout, protocol error)."""


class WriteError(DeviceError):
    """A write to a device was refused or not acknowledged."""


class BufferError_(EdgeAgentError):  # the trailing _ avoids shadowing the builtin
    """The local journal could not store or hand out records."""


class SyncError(EdgeAgentError):
    """Publishing to the broker failed."""


class StartupError(EdgeAgentError):
    """The agent (or the trace store) cannot start for a reason its operator must fix: a port
    already in use, a path the service user cannot write, a journal another agent holds.
    The CLI prints the message as one line and exits with ``EXIT_STARTUP`` (no traceback);
    the message says what and where, e.g. ``metrics: 127.0.0.1:9464 is already in use``."""


class JournalInUse(BufferError_, StartupError):
    """Another process holds the journal's lock: another agent with the same ``buffer.path``,
    or ``edge-agent buffer salvage`` running."""
