"""How the long-running commands (run, simulate, trace-store's asyncio parts) stop."""

from __future__ import annotations

import asyncio
import signal


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM (systemd, kill) and SIGINT (Ctrl-C) set ``stop``: a clean stop, never an
    exception in the middle of a commit."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
