"""Simulated barcode scanners from the config (``edge-agent simulate --config``): each
scanner on its own link as the config reaches it (serial port: a pty null modem; ``host``:
a TCP server; ``listen_port``: a client of the agent), sending the scenario's scans at their
moments, each framed as the config cuts messages.

Faults: ``garbage`` (bytes that are not text, or the fault's ``data``, as one message: the
agent records a rejected scan) and ``unplug`` (the port vanishes, or the TCP connection
drops, until the fault ends: the device is down). The good-read / bad-read answers and
trigger commands the agent sends are kept (:attr:`StreamEndpoint.received`), not answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from drivers.device import DeviceConfig
from drivers.links.config import control_bytes
from drivers.scanner.config import ScannerDevice
from simulators.devicemap.kinds import Endpoint, KindSimulator, Placement, ValueSpec, World
from simulators.devicemap.streams import StreamEndpoint


class ScannerEndpoint(StreamEndpoint):
    async def scan(self, device: str, data: str) -> None:
        self.send_message(control_bytes(data))


class ScannerSimulator(KindSimulator):
    faults = frozenset({"garbage", "unplug"})
    events = frozenset({"scans"})

    def value_spec(self, device: DeviceConfig, point: str) -> ValueSpec | None:
        return None  # scans are events, not values

    def endpoints(
        self, devices: Sequence[DeviceConfig], world: World, place: Placement
    ) -> list[Endpoint]:
        return [ScannerEndpoint(cast(ScannerDevice, d), place) for d in devices]


SIMULATOR = ScannerSimulator()
