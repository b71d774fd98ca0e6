"""The commissioning probe: ``edge-agent config probe CONFIG [--device NAME] [--json]``.

Connects to each device, reads every point once and says, point by point, what came back:
the raw registers or bits, the decoded value, how long the request took and, when a point is
not good, why, in terms an integrator can act on. How a kind of device is probed is its own
business (``DriverKind.probe``, e.g. ``drivers/modbus/probe.py``); this module runs the probes
and prints them.

Devices are probed concurrently, each on a connection of its own that is closed at the end,
so a dead device costs its own timeouts and never delays the others. Nothing is written.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import math
import sys
from collections.abc import Sequence
from typing import Any

from drivers import registry
from drivers.bus import Buses
from drivers.device import DeviceConfig
from drivers.probing import DeviceProbe, PointProbe
from drivers.registry import DriverContext
from edge_agent.config import AgentConfig
from kernel.model import Value

log = logging.getLogger(__name__)

RAW_WORDS_SHOWN = 6
"""Registers the table shows per point (the JSON has all of them)."""

__all__ = [
    "COLUMNS",
    "DeviceProbe",
    "PointProbe",
    "exit_code",
    "format_table",
    "probe",
    "to_json",
]


async def probe(
    cfg: AgentConfig, device: str | None = None, *, attempt_timeout: float | None = None
) -> list[DeviceProbe]:
    """Probe every device of ``cfg`` (or only ``device``), concurrently, in config order.

    ``attempt_timeout`` replaces each device's ``timeout`` (connecting and every request).
    An unknown device name is a ValueError naming the closest device. Device problems are
    results, never exceptions.
    """
    devices = list(cfg.devices)
    if device is not None:
        devices = [d for d in devices if d.name == device]
        if not devices:
            raise ValueError(_unknown_device(device, [d.name for d in cfg.devices]))
    # Devices on one wire take turns on one bus object, as in the agent.
    context = DriverContext(buses=Buses())
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(_probe_device(d, attempt_timeout, context), name=f"probe:{d.name}")
            for d in devices
        ]
    return [t.result() for t in tasks]


def _unknown_device(name: str, known: Sequence[str]) -> str:
    msg = f"unknown device {name!r}"
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"{msg}; did you mean {close[0]!r}?"
    return f"{msg} (devices: {', '.join(known)})"


async def _probe_device(
    dev: DeviceConfig, attempt_timeout: float | None, context: DriverContext
) -> DeviceProbe:
    """The device's kind probes it; what keeps it from being probed is its result's error."""
    kind = registry.find(dev.type)
    why = None if kind is None else kind.missing()
    if kind is not None and kind.probe is not None and why is None:
        try:
            found: DeviceProbe = await registry.load(kind.probe)(dev, attempt_timeout, context)
            return found
        except Exception as exc:  # a bug must not take the other devices' results with it
            log.exception("probe of device %s failed", dev.name, extra={"device": dev.name})
            why = f"probe failed: {exc!r}"
    # Without a kind's own words for its address, the type stands in the table's header.
    result = DeviceProbe(dev.name, dev.type, dev.type, dev.request_timeout())
    result.error = why or f"a {dev.type} device cannot be probed yet"
    return result


async def browse(
    cfg: AgentConfig, device: str, start: str | None, depth: int, as_yaml: bool
) -> int:
    """``config browse``: the device's kind lists what it offers to read, on stdout."""
    found = [d for d in cfg.devices if d.name == device]
    if not found:
        raise ValueError(_unknown_device(device, [d.name for d in cfg.devices]))
    dev = found[0]
    kind = registry.find(dev.type)
    why = None if kind is None else kind.missing()
    if kind is None or kind.browse is None or why is not None:
        raise ValueError(why or f"a {dev.type} device cannot be browsed")
    status: int = await registry.load(kind.browse)(
        dev, start, depth, as_yaml, sys.stdout, DriverContext(buses=Buses())
    )
    return status


def exit_code(probes: Sequence[DeviceProbe]) -> int:
    """0 when every device connected and every point read good, else 1."""
    return 0 if all(d.ok for d in probes) else 1


COLUMNS = ("POINT", "TABLE", "ADDRESS", "TYPE", "RAW", "VALUE", "QUALITY", "LATENCY", "PROBLEM")


def format_table(probes: Sequence[DeviceProbe]) -> str:
    """Plain text, one block per device: a header line, then one aligned row per point."""
    blocks = [_device_block(d) for d in probes]
    good = sum(d.ok for d in probes)
    blocks.append(f"{good} of {len(probes)} device(s) fully good")
    return "\n\n".join(blocks)


def _device_block(d: DeviceProbe) -> str:
    connect = f"connected in {_ms(d.connect_latency)}" if d.connected else "not connected"
    lines = [
        f"{d.name}  {d.endpoint}  {connect}  {d.requests} request(s)  {d.summary}"
    ]
    if d.points:
        rows = [COLUMNS, *(_cells(p) for p in d.points)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
        for r in rows:
            cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
            lines.append(("  " + "  ".join(cells) + "  " + r[-1]).rstrip())
    lines.extend(f"  note: {n}" for n in d.notes)
    return "\n".join(lines)


def _cells(p: PointProbe) -> tuple[str, ...]:
    address = str(p.address)
    if p.protocol_address != p.address:
        address += f" (wire {p.protocol_address})"
    return (
        p.name,
        p.table,
        address,
        p.type,
        _raw_text(p.raw),
        _value_text(p.value, p.unit) if p.ok else "-",
        p.quality.value,
        _ms(p.latency),
        p.error or "",
    )


def _raw_text(raw: tuple[int, ...] | tuple[bool, ...] | str | None) -> str:
    if raw is None or not raw:
        return "-"
    if isinstance(raw, str):
        return raw
    if isinstance(raw[0], bool):
        return " ".join("1" if b else "0" for b in raw)
    words = [f"0x{w:04X}" for w in raw]
    if len(words) > RAW_WORDS_SHOWN:
        return " ".join(words[: RAW_WORDS_SHOWN - 1]) + f" ... ({len(words)} regs)"
    return " ".join(words)


def _value_text(value: Value, unit: str | None) -> str:
    if isinstance(value, str):
        text = repr(value)  # quotes show padding; control characters (GS in GS1) show up
    elif isinstance(value, float):
        text = f"{value:.10g}"
    else:
        text = str(value)
    return f"{text} {unit}" if unit else text


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def to_json(probes: Sequence[DeviceProbe]) -> list[dict[str, Any]]:
    """The probe as JSON-ready data (``--json``); NaN and infinities become strings."""
    return [
        {
            "device": d.name,
            "type": d.type,
            **d.details,
            "timeout": d.timeout,
            "state": d.state.value,
            "ok": d.ok,
            "connected": d.connected,
            "connect_latency_ms": _json_ms(d.connect_latency),
            "requests": d.requests,
            "error": d.error,
            "notes": list(d.notes),
            "points": [
                {
                    "name": p.name,
                    "table": p.table,
                    "address": p.address,
                    "protocol_address": p.protocol_address,
                    "type": p.type,
                    "raw": p.raw if p.raw is None or isinstance(p.raw, str) else list(p.raw),
                    "value": _json_value(p.value),
                    "unit": p.unit,
                    "quality": p.quality.value,
                    "latency_ms": _json_ms(p.latency),
                    "request": p.request,
                    "error": p.error,
                    **p.details,
                }
                for p in d.points
            ],
        }
        for d in probes
    ]


def _json_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _json_value(value: Value) -> Value:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
