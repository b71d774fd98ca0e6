"""The driver registry: every kind of device the agent can run, by its ``type:`` name.

A kind is one folder, ``drivers/<kind>/``, whose ``__init__`` defines ``KIND``, a
:class:`DriverKind`. That entry is all the rest of the agent learns about the kind: the
config's device union, the JSON Schema, the configuration reference, ``config probe``, reload
and the daemon all loop over :func:`kinds`. Folders are discovered, so adding a kind touches
no file outside its folder.

A kind's ``__init__`` and config model import only pydantic and the kernel: the driver (and
whatever heavy stack it needs, asyncua or OpenCV) is imported by :func:`create_driver` when a
config uses the kind, never at start-up of an agent that does not.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

import drivers
from drivers.device import DeviceConfig

if TYPE_CHECKING:
    from drivers.base import Driver
    from drivers.bus import Buses


@dataclass(frozen=True)
class DriverKind:
    """One kind of device, as the rest of the agent knows it."""

    type: str
    """The config's ``type:`` value, e.g. ``modbus_rtu``."""
    config: builtins.type[DeviceConfig]
    """The device entry's model; its ``type`` field is ``Literal[<type>]``."""
    driver: str
    """``module:attribute`` of the driver class (or factory), called as
    ``driver(config, context)``; imported only when a config uses the kind."""
    summary: str
    """One line for the configuration reference."""
    extra: str | None = None
    """The pip extra that brings the driver's dependencies, e.g. ``opcua``."""
    requires: tuple[str, ...] = ()
    """Modules that extra installs; a config using the kind without them is refused."""
    probe: str | None = None
    """``module:function`` of the commissioning probe, ``async (config, attempt_timeout)
    -> DeviceProbe``; None: ``config probe`` says the kind cannot be probed."""
    browse: str | None = None
    """``module:function`` listing what a device offers to read, for ``config browse``:
    ``async (config, start, depth, as_yaml, out, context) -> exit status``."""
    sections: tuple[tuple[str, builtins.type[BaseModel]], ...] = ()
    """Nested models shown in the configuration reference, as (title suffix, model), e.g.
    ``("points[]", ModbusPoint)``."""
    folder: Path = field(init=False, compare=False)
    """The kind's folder (sample config, test cases), derived from the config model."""

    def __post_init__(self) -> None:
        module = sys.modules[self.config.__module__]
        object.__setattr__(self, "folder", Path(module.__file__ or ".").parent)

    def missing(self) -> str | None:
        """Why this kind cannot run on this machine (an extra is not installed), or None."""
        absent = [m for m in self.requires if not _installed(m)]
        if not absent:
            return None
        how = f"pip install 'edge-agent[{self.extra}]'" if self.extra else "install them"
        return (
            f"device type {self.type!r} needs {', '.join(absent)}, which "
            f"{'is' if len(absent) == 1 else 'are'} not installed: {how}"
        )


def _installed(module: str) -> bool:
    # find_spec imports the parents of a dotted name, and raises when they are missing.
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@dataclass(frozen=True)
class DriverContext:
    """What the agent hands every driver it builds: shared state across devices."""

    buses: Buses
    """Connections devices share (RS-485 ports, RTU gateways), one object per wire."""


class MissingExtra(RuntimeError):
    """A config uses a kind whose optional dependencies are not installed."""


_registered: dict[str, DriverKind] = {}
_generation = [0]


@cache
def _discovered() -> tuple[DriverKind, ...]:
    found: list[DriverKind] = []
    for info in pkgutil.iter_modules(drivers.__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"drivers.{info.name}")
        kind = getattr(module, "KIND", None)
        if isinstance(kind, DriverKind):
            found.append(kind)
    return tuple(found)


def kinds() -> tuple[DriverKind, ...]:
    """Every kind: the folders under ``drivers/``, then those registered at run time."""
    builtin = _discovered()
    return builtin + tuple(k for k in _registered.values() if k not in builtin)


def generation() -> int:
    """Changes whenever :func:`register` changes the set of kinds (a cache key)."""
    return _generation[0]


def find(type_name: str) -> DriverKind | None:
    for kind in kinds():
        if kind.type == type_name:
            return kind
    return None


@contextlib.contextmanager
def registered(kind: DriverKind) -> Iterator[DriverKind]:
    """Add ``kind`` while the block runs (tests, and tools that bring their own driver)."""
    if find(kind.type) is not None:
        raise ValueError(f"device type {kind.type!r} is registered already")
    _registered[kind.type] = kind
    _generation[0] += 1
    try:
        yield kind
    finally:
        del _registered[kind.type]
        _generation[0] += 1


def load(path: str) -> Any:
    """The object at ``module:attribute``."""
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def create_driver(config: DeviceConfig, context: DriverContext) -> Driver:
    """Build the driver for one validated device config, chosen by its ``type``."""
    kind = find(config.type)
    if kind is None:
        known = ", ".join(k.type for k in kinds())
        raise ValueError(f"device {config.name!r}: no driver for type {config.type!r} ({known})")
    why = kind.missing()
    if why is not None:
        raise MissingExtra(f"device {config.name!r}: {why}")
    driver: Driver = load(kind.driver)(config, context)
    return driver
