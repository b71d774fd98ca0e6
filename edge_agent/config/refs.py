"""Station references that name a device (``context.<key>``, ``scans.sources[]``,
``part.trigger``, ``part.snapshot``), and the station's ``device`` as their default."""

from __future__ import annotations

from typing import Any


def device_refs(station: Any) -> list[tuple[str | int, ...]]:
    """Paths (relative to a station mapping) of the references that name a device:
    context.<key>, scans.sources[j], part.trigger, part.snapshot."""
    if not isinstance(station, dict):
        return []
    refs: list[tuple[str | int, ...]] = []
    ctx = station.get("context")
    if isinstance(ctx, dict):
        refs += [("context", k) for k, v in ctx.items() if isinstance(v, dict)]
    scans = station.get("scans")
    if isinstance(scans, dict) and isinstance(scans.get("sources"), list):
        refs += [
            ("scans", "sources", j) for j, v in enumerate(scans["sources"]) if isinstance(v, dict)
        ]
    part = station.get("part")
    if isinstance(part, dict):
        refs += [("part", k) for k in ("trigger", "snapshot") if isinstance(part.get(k), dict)]
    return refs


def _at(data: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def defaulted_refs(station: Any) -> list[tuple[str | int, ...]]:
    """The device references of a station that omit ``device`` while the station gives one."""
    if not isinstance(station, dict) or station.get("device") is None:
        return []
    return [r for r in device_refs(station) if "device" not in _at(station, r)]


def with_station_device(station: Any) -> Any:
    """A copy of a station mapping whose references without ``device`` name the station's."""
    refs = defaulted_refs(station)
    if not refs:
        return station
    out = dict(station)
    copied: set[tuple[str | int, ...]] = set()
    for ref in refs:
        parent: Any = out
        for n, part in enumerate(ref):  # copy what is changed: the input may be shared
            child = parent[part]
            if ref[: n + 1] not in copied:
                child = dict(child) if isinstance(child, dict) else list(child)
                parent[part] = child
                copied.add(ref[: n + 1])
            parent = child
        parent["device"] = station["device"]
    return out

