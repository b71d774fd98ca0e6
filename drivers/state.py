"""The state of one device as the operator sees it, logged on transitions only."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from kernel.model import DeviceState

log = logging.getLogger("drivers.base")  # the logger name operators' filters already use


@dataclass
class DeviceStatus:
    """Live state of one device, shown in logs, the demo and metrics."""

    name: str
    state: DeviceState = DeviceState.STARTING
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    reads_ok: int = 0
    reads_failed: int = 0
    reconnects: int = 0
    dropped: int = 0
    """Frames a camera delivered that were never decoded because decoding was slower than the
    camera (the newest frame replaces one not yet decoded, so nothing queues)."""

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
