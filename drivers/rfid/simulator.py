"""Simulated RFID readers from the config (``edge-agent simulate --config``): each reader on
its own link as the config reaches it (a pty null modem, a TCP server, or a client of the
agent's ``listen_port``), printing the scenario's ``tags:`` as reads in the config's preset
format (``epc``, ``csv``, ``alien-text``, ``impinj-json``; lines as :mod:`simulators.rfid`
writes them, independently of the driver's parser), ended by the config's suffix.

A tag is read :data:`READS_PER_SECOND` times a second on its antenna for its dwell, so the
agent sees one arrival (a scan) per visit, and a departure when its reads stop. A reader
with its own ``line_pattern`` is not simulated: its lines could be anything.

Faults: ``silent`` (no reads go out while it lasts: a tag that passes meanwhile is never
seen), ``garbage`` (a line that is no read, or the fault's ``data``) and ``unplug``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import cast

from drivers.device import DeviceConfig
from drivers.rfid.config import RfidDevice
from simulators.devicemap.kinds import (
    Endpoint,
    KindSimulator,
    Placement,
    TagInField,
    ValueSpec,
    World,
)
from simulators.devicemap.streams import StreamEndpoint
from simulators.rfid import format_line

READS_PER_SECOND = 20.0


class RfidEndpoint(StreamEndpoint):
    def __init__(self, device: RfidDevice, world: World, place: Placement) -> None:
        super().__init__(device, place)
        self.rfid = device
        self.world = world
        self.lines: list[str] = []
        """Every read line that went out (ground truth for tests)."""
        self._visits: set[asyncio.Task[None]] = set()

    async def tag(self, device: str, tag: TagInField) -> None:
        task = asyncio.create_task(self._visit(tag), name=f"simulate: {device} tag {tag.epc}")
        self._visits.add(task)
        task.add_done_callback(self._visits.discard)

    async def stop(self) -> None:
        for task in list(self._visits):
            task.cancel()
        for task in list(self._visits):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await super().stop()

    async def _visit(self, tag: TagInField) -> None:
        loop = asyncio.get_running_loop()
        leaves = loop.time() + tag.dwell
        while loop.time() < leaves:
            fault = self.world.fault(self.device.name)
            if fault is None or fault.kind != "silent":
                line = format_line(self.rfid.format, tag.epc, tag.antenna, tag.rssi, time.time())
                with contextlib.suppress(OSError):  # unplugged, or nobody reading: lost
                    self.send_message(line.encode("utf-8"))
                    self.lines.append(line)
            await asyncio.sleep(1.0 / READS_PER_SECOND)


class RfidSimulator(KindSimulator):
    faults = frozenset({"silent", "garbage", "unplug"})
    events = frozenset({"tags"})

    def value_spec(self, device: DeviceConfig, point: str) -> ValueSpec | None:
        return None  # tags are events, not values

    def device_issue(self, device: DeviceConfig) -> str | None:
        if cast(RfidDevice, device).line_pattern is not None:
            return (
                "a reader with its own line_pattern is not simulated (the simulator prints "
                "the preset formats only: epc, csv, alien-text, impinj-json)"
            )
        return None

    def endpoints(
        self, devices: Sequence[DeviceConfig], world: World, place: Placement
    ) -> list[Endpoint]:
        return [RfidEndpoint(cast(RfidDevice, d), world, place) for d in devices]


SIMULATOR = RfidSimulator()
