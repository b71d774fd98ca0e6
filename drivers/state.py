"""The state of one device as the operator sees it, logged on transitions only."""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from dataclasses import dataclass, field

from kernel.model import DeviceState

log = logging.getLogger("drivers.base")  # the logger name operators' filters already use

READ_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Upper bounds (seconds) of the read latency histogram: a Modbus TCP read on a LAN answers in
1-20 ms, an RS-485 unit in 10-200 ms, and a device timeout can be up to seconds."""


@dataclass
class DeviceStatus:
    """Live state of one device, shown in logs, the demo and metrics."""

    name: str
    state: DeviceState = DeviceState.STARTING
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    reads_ok: int = 0
    reads_failed: int = 0
    read_counts: list[int] = field(default_factory=lambda: [0] * (len(READ_BUCKETS) + 1))
    """Answered polled reads per latency bucket (``READ_BUCKETS``, then one above them all),
    not cumulative: a read costs one increment; the metrics endpoint sums them when scraped."""
    read_seconds: float = 0.0
    reconnects: int = 0
    dropped: int = 0
    """Frames a camera delivered that were never decoded because decoding was slower than the
    camera (the newest frame replaces one not yet decoded, so nothing queues)."""

    def read_answered(self, seconds: float) -> None:
        """A polled read came back after ``seconds``."""
        self.reads_ok += 1
        self.read_seconds += seconds
        self.read_counts[bisect_left(READ_BUCKETS, seconds)] += 1

    def set_state(self, state: DeviceState, error: str | None = None) -> None:
        """Change state, logging only on transitions so a flapping PLC cannot flood the disk."""
        if state is self.state:
            self.last_error = error or self.last_error
            return
        previous, self.state, self.since = self.state, state, time.time()
        if error:
            self.last_error = error
        if state is DeviceState.DOWN:
            log.error("device %s is down: %s", self.name, error, extra={"device": self.name})
        elif state is DeviceState.DEGRADED:
            log.warning("device %s is degraded: %s", self.name, error, extra={"device": self.name})
        elif state is DeviceState.UP and previous is not DeviceState.STARTING:
            log.info(
                "device %s recovered (was %s)",
                self.name,
                previous.value,
                extra={"device": self.name},
            )
        else:
            log.info("device %s is %s", self.name, state.value, extra={"device": self.name})
