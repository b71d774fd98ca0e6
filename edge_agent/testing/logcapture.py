"""The log of each case, kept apart while cases run side by side in one process.

A case's task sets :data:`current`; the tasks the agent starts inherit it (asyncio copies the
context into every task, and ``asyncio.to_thread`` into its thread), so a log record knows
its case without the agent's code knowing it is under test. The lines go into the case's
report (the JUnit ``system-out``) instead of the terminal, where several agents' logs
interleaved would be noise.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from contextvars import ContextVar

MAX_LINES = 2000
"""Lines kept per case (the last ones: what led to the end)."""

current: ContextVar[CaseLog | None] = ContextVar("edge_agent_test_case", default=None)


class CaseLog:
    """The log lines of one case."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=MAX_LINES)
        self.warnings: deque[str] = deque(maxlen=50)
        """WARNING and above, for the failure report."""


class _Router(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(
            logging.Formatter(
                "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%H:%M:%S"
            )
        )

    def emit(self, record: logging.LogRecord) -> None:
        log = current.get()
        if log is None:
            return
        try:
            line = self.format(record)
        except Exception:  # a broken log call must not break a case
            return
        log.lines.append(line)
        if record.levelno >= logging.WARNING:
            log.warnings.append(line)


class _NotACase(logging.Filter):
    """On the terminal's handlers: a case's lines go to its report; others only from
    WARNING up (the broker's and threads' chatter stays out of the runner's output)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return current.get() is None and record.levelno >= logging.WARNING


@contextlib.contextmanager
def routed() -> Iterator[None]:
    """While inside: log records of a case go to its :class:`CaseLog`, not the terminal."""
    root = logging.getLogger()
    router, keep_out = _Router(), _NotACase()
    handlers = list(root.handlers)
    for h in handlers:
        h.addFilter(keep_out)
    root.addHandler(router)
    level = root.level
    if root.getEffectiveLevel() > logging.INFO:  # a case's report has its INFO lines
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(level)
        root.removeHandler(router)
        for h in handlers:
            h.removeFilter(keep_out)
