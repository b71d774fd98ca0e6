"""Connections several devices share: one object per wire, opened while anyone uses it.

Modbus RTU units on one RS-485 port, units behind one RTU-over-TCP gateway, and later several
scanners on one serial port each reach their device through the same connection. Each device
keeps its own task, state and backoff (a dead unit is backed off on its own); the bus owns
the connection and the turn-taking on it. A device ``acquire``s the bus when its runner opens
it and ``release``s it when the runner closes it, so the port is open exactly while some
device on it is running, and a port that vanished is reopened by the first device to retry.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, TypeVar


class SharedBus(ABC):
    """A connection with reference-counted users. Subclasses open and close the wire."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.users = 0
        self._opening = asyncio.Lock()

    @property
    @abstractmethod
    def is_open(self) -> bool:
        """Whether the wire is usable right now (a vanished port is not)."""

    @abstractmethod
    async def _open(self) -> None:
        """Open the wire; raise BusUnavailable with the reason when it cannot be."""

    @abstractmethod
    async def _close(self) -> None:
        """Close the wire. Must not raise."""

    async def acquire(self) -> None:
        """Count one more user, opening the wire if it is not open (also after it was lost
        while others still held it). On failure the caller holds nothing."""
        self.users += 1
        try:
            async with self._opening:
                if not self.is_open:
                    await self._close()
                    await self._open()
        except BaseException:
            self.users -= 1
            raise

    async def release(self) -> None:
        """Count one user less; the last one closes the wire."""
        self.users = max(0, self.users - 1)
        if self.users == 0:
            await self._close()


B = TypeVar("B", bound=SharedBus)


class BusUnavailable(Exception):
    """The wire cannot be used now (it could not be opened, or was lost). Drivers raise it
    on as ConnectError naming their device, so each device backs off on its own."""


class Buses:
    """The shared connections of one agent, by wire (``BusClaim.key``).

    Config checks make every device on one wire give the same settings, so a device asking
    for a bus with other settings means the config changed (a reload): the old bus is
    replaced once nobody uses it.
    """

    def __init__(self) -> None:
        self._buses: dict[str, SharedBus] = {}

    def get(
        self, key: str, settings: Mapping[str, Any], kind: type[B], make: Callable[[], B]
    ) -> B:
        bus = self._buses.get(key)
        if isinstance(bus, kind) and bus.settings == dict(settings):
            return bus
        if bus is not None and bus.users:
            # Only a device still running under an older config can hold it: the caller
            # retries with backoff until that device has stopped.
            raise BusUnavailable(f"{key} is still open with other settings by another device")
        fresh = make()
        self._buses[key] = fresh
        return fresh

    def __len__(self) -> int:
        return len(self._buses)
