"""Simulated barcode scanners from the config (``edge-agent simulate --config``): each
scanner on its own link as the config reaches it (serial port: a pty null modem; ``host``:
a TCP server; ``listen_port``: a client of the agent), sending the scenario's scans at their
moments, each framed as the config cuts messages.

A scanner with ``trigger:`` in the config answers the agent's start commands as the
scenario's ``reads:`` say (a code, or a no-read: nothing, or its first no-read text in answer
to the stop command when the config has one); without ``reads:`` it never answers.

Faults: ``garbage`` (bytes that are not text, or the fault's ``data``, as one message: the
agent records a rejected scan), ``silent`` (the reader hears and sends nothing: scans are
not sent, triggers not answered, the link stays up) and ``unplug`` (the port vanishes, or
the TCP connection drops, until the fault ends: the device is down). The good-read /
bad-read answers the agent sends are kept (:attr:`StreamEndpoint.received`), not answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from drivers.device import DeviceConfig
from drivers.links.config import control_bytes
from drivers.scanner.config import ScannerDevice
from simulators.devicemap.kinds import Endpoint, KindSimulator, Placement, ValueSpec, World
from simulators.devicemap.streams import StreamEndpoint


@dataclass(frozen=True)
class Triggered:
    """A trigger command as the simulated reader heard it and what it answered."""

    t: float
    """Seconds from the scenario's start."""
    k: int
    """0 for the first trigger."""
    answer: str | None
    """The code sent; None: a no-read."""


class ScannerEndpoint(StreamEndpoint):
    def __init__(self, device: ScannerDevice, world: World, place: Placement) -> None:
        super().__init__(device, place)
        self.scanner = device
        self.world = world
        self.triggers: list[Triggered] = []
        """Every trigger heard, in order, with its answer (ground truth for tests)."""
        trigger = device.trigger
        self._start = control_bytes(trigger.start) if trigger else b""
        self._stop = control_bytes(trigger.stop) if trigger and trigger.stop else b""
        self._heard = bytearray()  # what the agent sent, not yet matched against commands
        self._pending: set[asyncio.TimerHandle] = set()
        self._awaiting_stop = False  # the last trigger was a no-read: the stop gets its text

    def silent(self) -> bool:
        fault = self.world.fault(self.device.name)
        return fault is not None and fault.kind == "silent"

    async def scan(self, device: str, data: str) -> None:
        if self.silent():
            raise OSError(f"{device} is silent (fault): the scan is not sent")
        self.send_message(control_bytes(data))

    async def stop(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        await super().stop()

    # ---- trigger commands ------------------------------------------------------------------

    def _keep(self, data: bytes) -> None:
        super()._keep(data)
        if not self._start or self.silent():
            return  # a silent reader does not hear the command either
        self._heard += data
        while True:
            hits = [
                (i, cmd)
                for cmd in (self._start, self._stop)
                if cmd and (i := self._heard.find(cmd)) >= 0
            ]
            if not hits:
                break
            i, cmd = min(hits)
            del self._heard[: i + len(cmd)]
            if cmd == self._start:
                self._triggered()
            else:
                self._stopped()
        longest = max(len(self._start), len(self._stop))
        del self._heard[: max(0, len(self._heard) - longest + 1)]

    def _triggered(self) -> None:
        answers = self.world.trigger_answers(self.device.name)
        k = len(self.triggers)
        answer = answers.answer(k) if answers is not None else None
        self.triggers.append(Triggered(self.world.now(), k, answer))
        self._awaiting_stop = answer is None
        if answer is not None:
            assert answers is not None
            self._later(answers.delay, control_bytes(answer))

    def _stopped(self) -> None:
        if self._awaiting_stop and self.scanner.no_read:
            self._awaiting_stop = False
            self._later(0.0, self.scanner.no_read[0].encode("latin-1"))

    def _later(self, delay: float, payload: bytes) -> None:
        loop = asyncio.get_running_loop()

        def send() -> None:
            self._pending.discard(handle)
            if self.silent():
                return
            with contextlib.suppress(OSError):  # unplugged meanwhile: lost, as on a wire
                self.send_message(payload)

        handle = loop.call_later(delay, send)
        self._pending.add(handle)


class ScannerSimulator(KindSimulator):
    faults = frozenset({"silent", "garbage", "unplug"})
    events = frozenset({"scans", "reads"})

    def value_spec(self, device: DeviceConfig, point: str) -> ValueSpec | None:
        return None  # scans are events, not values

    def endpoints(
        self, devices: Sequence[DeviceConfig], world: World, place: Placement
    ) -> list[Endpoint]:
        return [ScannerEndpoint(cast(ScannerDevice, d), world, place) for d in devices]

    def event_issue(self, device: DeviceConfig, event: str) -> str | None:
        if event == "reads" and cast(ScannerDevice, device).trigger is None:
            return (
                f"scanner {device.name!r} has no trigger in the config: it reads on its own "
                "(give its codes as scans: entries)"
            )
        return None


SIMULATOR = ScannerSimulator()
