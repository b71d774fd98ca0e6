"""Simulated scales from the config (``edge-agent simulate --config``): each scale speaks its
configured protocol (MT-SICS, SBI, Toledo continuous output; :mod:`simulators.scale`) on a
pty null modem for a serial port or a TCP server for ``host``, in the config's unit, and
shows the scenario's loads (``weights``) from their moments: the reading ramps to the load
and settles, as on a scale.

A scale that connects to the agent (``listen_port``) is a client of the port the overrides
give the agent to listen on, reconnecting whenever the connection is lost.

Faults: ``silent`` (no answer and no streamed reading), ``garbage`` (bytes that are not text
in front of the next reply) and ``unplug`` (the port vanishes, the TCP server closes, or
the dialling scale hangs up and stays away, until the fault ends).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from drivers.device import DeviceConfig
from drivers.scale.config import ScaleDevice
from simulators.devicemap.kinds import (
    ActiveFault,
    Endpoint,
    KindSimulator,
    Placement,
    ValueSpec,
    World,
)
from simulators.devicemap.streams import GARBAGE, free_port
from simulators.scale import ScaleModel, ScaleProtocol, ScaleSimulator
from simulators.serial_link import NullModem

_PROTOCOLS = {
    "mt_sics": ScaleProtocol.MTSICS,
    "sbi": ScaleProtocol.SBI,
    "toledo": ScaleProtocol.TOLEDO,
}


def scale_model(device: ScaleDevice) -> ScaleModel:
    """The simulated scale the config describes (its protocol, unit, checksum)."""
    return ScaleModel(
        protocol=_PROTOCOLS[device.protocol],
        unit=device.unit or "g",
        toledo_checksum=device.checksum,
        sbi_auto_print=device.protocol == "sbi" and device.poll_interval is None,
    )


class ScaleEndpoint(Endpoint):
    def __init__(self, device: ScaleDevice, place: Placement) -> None:
        self.device = device
        self.devices = (device.name,)
        self.modem: NullModem | None = None
        self.listen: tuple[str, int] | None = None
        if device.port is not None:
            name = place.port_name(device.port)
            self.modem = NullModem(place.pty_dir, name, f".{name}.device")
            self.scale = ScaleSimulator(scale_model(device), serial_path=self.modem.b_path)
        elif device.listen_port is not None:
            self.listen = (place.host, free_port(place.host))
            self.scale = ScaleSimulator(scale_model(device), dial=self.listen)
        else:
            self.scale = ScaleSimulator(scale_model(device), tcp=True, host=place.host)

    async def start(self) -> None:
        if self.modem is not None:
            await self.modem.start()
        await self.scale.start()

    async def stop(self) -> None:
        await self.scale.close()
        if self.modem is not None:
            await self.modem.close()

    def overrides(self) -> dict[str, dict[str, Any]]:
        if self.modem is not None:
            return {self.device.name: {"port": str(self.modem.a_path)}}
        if self.listen is not None:
            return {
                self.device.name: {"listen_host": self.listen[0], "listen_port": self.listen[1]}
            }
        return {self.device.name: {"host": self.scale.host, "tcp_port": self.scale.port}}

    def describe(self) -> str:
        if self.modem is not None:
            where = f"serial port {self.modem.a_path}"
        elif self.listen is not None:
            where = f"TCP client of the agent's listen port {self.listen[0]}:{self.listen[1]}"
        else:
            where = f"TCP server {self.scale.host}:{self.scale.port}"
        return f"scale {self.device.name} ({self.device.protocol}) on {where}"

    async def weigh(self, device: str, weight: float) -> None:
        self.scale.place(weight)

    async def fault_started(self, device: str, fault: ActiveFault) -> None:
        if fault.kind == "silent":
            self.scale.faults.silent = True
        elif fault.kind == "garbage":
            self.scale.inject_garbage(GARBAGE if fault.data is None else fault.data)
        elif fault.kind == "unplug":
            await self.scale.close()
            if self.modem is not None:
                self.modem.unplug()

    async def fault_ended(self, device: str, fault: ActiveFault) -> None:
        if fault.kind == "silent":
            self.scale.faults.silent = False
        elif fault.kind == "unplug":
            if self.modem is not None:
                self.modem.replug()
            await self.scale.start()


class ScaleKindSimulator(KindSimulator):
    faults = frozenset({"silent", "garbage", "unplug"})
    events = frozenset({"weights"})

    def value_spec(self, device: DeviceConfig, point: str) -> ValueSpec | None:
        return None  # loads are events (weights:), not values

    def device_issue(self, device: DeviceConfig) -> str | None:
        try:
            scale_model(cast(ScaleDevice, device))
        except ValueError as exc:
            return str(exc)
        return None

    def endpoints(
        self, devices: Sequence[DeviceConfig], world: World, place: Placement
    ) -> list[Endpoint]:
        return [ScaleEndpoint(cast(ScaleDevice, d), place) for d in devices]


SIMULATOR = ScaleKindSimulator()
