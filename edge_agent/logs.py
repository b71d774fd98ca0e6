"""Logging set-up: one line per event, with the station/device/serial it concerns.

Three forms: ``text`` for a terminal (UTC with milliseconds and ``Z``, like the records),
``journal`` under systemd (a ``<N>`` syslog priority prefix that journald turns into the
entry's priority, and no timestamp: journald stamps each line itself), and ``json`` (one
object per line, for log shippers). ``auto`` picks ``journal`` when stderr is connected to
the journal (``$JOURNAL_STREAM`` names it), else ``text``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import TextIO

CONTEXT_FIELDS = ("station", "device", "serial")
FORMATS = ("auto", "text", "journal", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# syslog(3) priorities, which journald reads from a "<N>" prefix (sd-daemon(3)).
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def utc_ms(created: float) -> str:
    """``2026-12-03T18:05:09.123Z``: the records' time scale, to the millisecond."""
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _tags(record: logging.LogRecord) -> str:
    tags = [f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if hasattr(record, k)]
    return f" [{' '.join(tags)}]" if tags else ""


class TextFormatter(logging.Formatter):
    """``2026-11-21T10:00:00.123Z ERROR drivers.state: device press1 is down: ...
    [device=press1]`` (one line)."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{utc_ms(record.created)} {record.levelname} {record.name}: "
            f"{record.getMessage()}{_tags(record)}"
        )
        return _with_exception(self, record, line)


class JournalFormatter(logging.Formatter):
    """``<3>drivers.state: device press1 is down: ... [device=press1]``; every line of a
    traceback gets the prefix too, so journald keeps its priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        line = f"{record.name}: {record.getMessage()}{_tags(record)}"
        return "\n".join(prefix + part for part in _with_exception(self, record, line).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": utc_ms(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            # What the call added with extra= (context fields, a summary's counts).
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _priority(levelno: int) -> int:
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


def _with_exception(fmt: logging.Formatter, record: logging.LogRecord, line: str) -> str:
    if record.exc_info:
        line = f"{line}\n{fmt.formatException(record.exc_info)}"
    return line


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (stderr) is the journal's stream socket: systemd sets
    ``$JOURNAL_STREAM`` to its ``device:inode``, which a redirected stderr does not match."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = expected.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "auto":
        fmt = "journal" if stderr_is_journal() else "text"
    if fmt == "json":
        return JsonFormatter()
    if fmt == "journal":
        return JournalFormatter()
    return TextFormatter()


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
