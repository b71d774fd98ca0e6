"""Checks that span sections of a valid-looking config: unique names, references that
resolve, what a trigger asks of its device, devices that share a wire.

Each returns ``Issue``s (key path, message); the loader locates them in the file. What a
device can do (a consistent snapshot, a writable point) is asked of its config model
(``drivers.device.DeviceConfig``), so nothing here knows a kind of device.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable
from typing import Any

from drivers import registry
from drivers.device import BusClaim, DeviceConfig
from edge_agent.config.models import AgentConfig, PartConfig, StationConfig
from kernel.names import Issue

Path = tuple[str | int, ...]


def config_issues(cfg: AgentConfig) -> list[Issue]:
    """Every cross-section problem of ``cfg``."""
    out: list[Issue] = []
    stations: dict[str, int] = {}
    for i, st in enumerate(cfg.stations):
        if st.name in stations:
            out.append((("stations", i, "name"), f"duplicate station {st.name!r}"))
        stations.setdefault(st.name, i)
    devices: dict[str, int] = {}
    identities: dict[Hashable, int] = {}
    buses: dict[str, tuple[int, BusClaim]] = {}
    for i, dev in enumerate(cfg.devices):
        at: Path = ("devices", i)
        out.extend(((*at, *p), m) for p, m in dev.issues())
        kind = registry.find(dev.type)
        missing = kind.missing() if kind is not None else None
        if missing is not None:
            out.append(((*at, "type"), missing))
        if dev.name in devices:
            out.append(((*at, "name"), f"duplicate device {dev.name!r}"))
        devices.setdefault(dev.name, i)
        out.extend(_identity_issues(dev, at, identities))
        out.extend(_bus_issues(dev, at, buses, cfg))
        out.extend(_station_refs(dev, at, stations, len(cfg.stations)))
    for i, st in enumerate(cfg.stations):
        out.extend(_station_issues(cfg, st, ("stations", i), devices))
    for i, dev in enumerate(cfg.devices):
        out.extend(_reader_issues(cfg, dev, ("devices", i), devices))
    return out


def _reader_issues(
    cfg: AgentConfig, dev: DeviceConfig, at: Path, devices: dict[str, int]
) -> list[Issue]:
    """An identification device's scans must reach a station's scan rules, and the point
    that triggers its reads must exist."""
    out: list[Issue] = []
    sources = {
        (src.device, src.point)
        for st in cfg.stations
        if st.scans is not None
        for src in st.scans.sources
    }
    for point in dev.scan_points():
        if (dev.name, point) not in sources and (dev.name, None) not in sources:
            station = dev.point_station(point) or "<station>"
            out.append(
                (
                    (*at, "name"),
                    f"the scans of {dev.name!r} reach no station: add "
                    f"{{device: {dev.name}}} to stations[{station}].scans.sources (with the "
                    "rules that classify them)",
                )
            )
    trigger = dev.read_trigger()
    if trigger is not None:
        path, device, point = trigger
        out.extend(_point_issue(cfg, (*at, *path), device, point, devices))
    return out


def _identity_issues(dev: DeviceConfig, at: Path, seen: dict[Hashable, int]) -> list[Issue]:
    key = dev.identity()
    if key is None:
        return []
    if key not in seen:
        seen[key] = int(at[1])
        return []
    path, message = dev.duplicate_issue(seen[key])
    return [((*at, *path), message)]


def _bus_issues(
    dev: DeviceConfig, at: Path, seen: dict[str, tuple[int, BusClaim]], cfg: AgentConfig
) -> list[Issue]:
    """Devices on one wire must open it alike: the second one's differing settings are the
    error (the first device's are what the wire was opened with)."""
    claim = dev.bus()
    if claim is None:
        return []
    first = seen.get(claim.key)
    if first is None:
        seen[claim.key] = (int(at[1]), claim)
        return []
    j, other = first
    out: list[Issue] = []
    for key, value in claim.settings.items():
        theirs = other.settings.get(key)
        if theirs != value:
            out.append(
                (
                    (*at, key),
                    f"{claim.what} is also used by {cfg.devices[j].name!r} (devices[{j}]) "
                    f"with {key} {theirs!r}, not {value!r}: devices on one wire share its "
                    "settings",
                )
            )
    return out


def _station_refs(dev: DeviceConfig, at: Path, stations: dict[str, int], n: int) -> list[Issue]:
    out: list[Issue] = []
    if dev.station is not None and dev.station not in stations:
        out.append(((*at, "station"), unknown("station", dev.station, stations)))
    for path, station in dev.point_entries():
        if station is not None and station not in stations:
            out.append(((*at, *path, "station"), unknown("station", station, stations)))
        elif station is None and dev.station is None and n > 1:
            out.append(
                (
                    (*at, *path),
                    "belongs to no station: set station on the device or the point "
                    "(only a single-station file may leave it out)",
                )
            )
    return out


def _point_issue(
    cfg: AgentConfig, path: Path, device: str, point: str | None, devices: dict[str, int]
) -> list[Issue]:
    """A (device, point) reference that does not resolve, as an issue at ``path``."""
    if device not in devices:
        return [((*path, "device"), unknown("device", device, devices))]
    if point is None:
        return []
    names = cfg.devices[devices[device]].point_names()
    if point not in names:
        return [((*path, "point"), unknown(f"point of {device!r}", point, names))]
    return []


def _station_issues(
    cfg: AgentConfig, st: StationConfig, path: Path, devices: dict[str, int]
) -> list[Issue]:
    out: list[Issue] = []
    if st.device is not None and st.device not in devices:
        out.append(((*path, "device"), unknown("device", st.device, devices)))
    for key, src in st.context.items():
        if src is not None:
            out.extend(
                _point_issue(cfg, (*path, "context", key), src.device, src.point, devices)
            )
    if st.scans is not None:
        for j, scan_src in enumerate(st.scans.sources):
            out.extend(
                _point_issue(
                    cfg, (*path, "scans", "sources", j), scan_src.device, scan_src.point, devices
                )
            )
        for j, rule in enumerate(st.scans.rules):
            out.extend(((*path, "scans", "rules", j, *p), m) for p, m in rule.issues())
    if st.part is not None:
        out.extend(_part_issues(cfg, st.part, (*path, "part"), devices))
    if st.gate is not None:
        out.extend(_gate_issues(cfg, st, (*path, "gate"), devices))
    return out


def _gate_issues(
    cfg: AgentConfig, st: StationConfig, path: Path, devices: dict[str, int]
) -> list[Issue]:
    """An interlock that cannot be written, and route rules that cannot hold, are found at
    start-up like a handshake bit, not at the first refused part."""
    gate = st.gate
    assert gate is not None
    out: list[Issue] = [((*path, *p), m) for p, m in gate.issues()]
    if st.scans is None:
        out.append((path, "a gate checks scans: give the station scans.sources and rules"))
    lock = gate.interlock
    if lock is not None:
        found = _point_issue(cfg, (*path, "interlock"), lock.device, lock.point, devices)
        out.extend(found)
        if not found:
            dev = cfg.devices[devices[lock.device]]
            why = dev.write_issue(lock.point)
            if why is not None:
                out.append(((*path, "interlock", "point"), f"cannot be written: {why}"))
            for key in ("value", "release"):
                bad = None if why is not None else dev.value_issue(lock.point, getattr(lock, key))
                if bad is not None:
                    out.append(((*path, "interlock", key), f"cannot be written there: {bad}"))
    by_name = {s.name: s for s in cfg.stations}
    for i, rule in enumerate(gate.route):
        if rule.line is not None and rule.line != cfg.agent.line:
            continue  # another line's station: the trace store answers for it
        at: Path = (*path, "route", i, "requires")
        required = by_name.get(rule.requires)
        if rule.requires == st.name:
            out.append((at, "a station cannot require itself"))
        elif required is not None and required.part is None:
            out.append(
                (
                    at,
                    f"station {rule.requires!r} records no parts (no part: section): no serial "
                    "could ever pass",
                )
            )
    return out


def _part_issues(
    cfg: AgentConfig, part: PartConfig, path: Path, devices: dict[str, int]
) -> list[Issue]:
    trig, snap = part.trigger, part.snapshot
    out = _point_issue(cfg, (*path, "trigger"), trig.device, trig.point, devices)
    if not out:
        why = cfg.devices[devices[trig.device]].trigger_issue(trig.point)
        if why is not None:
            out.append(((*path, "trigger", "point"), why))
    snap_issues = _point_issue(cfg, (*path, "snapshot"), snap.device, None, devices)
    out.extend(snap_issues)
    if snap_issues:
        return out
    dev = cfg.devices[devices[snap.device]]
    names = dev.point_names()
    bad = False
    for j, name in enumerate(snap.points):
        if name not in names:
            out.append(
                ((*path, "snapshot", "points", j), unknown(f"point of {dev.name!r}", name, names))
            )
            bad = True
    if not bad:
        # What the trigger needs of its device is checked now, with the YAML line, not at
        # the first part.
        problem = dev.snapshot_issue(snap.points)
        if problem is not None:
            where, message = problem
            out.append(((*path, "snapshot", *where), message))
    in_snapshot = set(snap.points)
    for k, also in enumerate(snap.also):
        at: Path = (*path, "snapshot", "also", k)
        if also.device == snap.device:
            out.append(((*at, "device"), "the snapshot's own device: list its points above"))
            continue
        found = _point_issue(cfg, at, also.device, None, devices)
        out.extend(found)
        if found:
            continue
        other = cfg.devices[devices[also.device]]
        known = other.point_names()
        missing = False
        for j, name in enumerate(also.points):
            if name not in known:
                out.append(((*at, "points", j), unknown(f"point of {other.name!r}", name, known)))
                missing = True
            elif name in in_snapshot:
                out.append(
                    (
                        (*at, "points", j),
                        f"{name!r} is already a snapshot point: a part record holds one value "
                        "per point name",
                    )
                )
                missing = True
            in_snapshot.add(name)
        if not missing:
            problem = other.snapshot_issue(also.points)
            if problem is not None:
                where, message = problem
                out.append(((*at, *where), message))
    refs: list[tuple[Path, str]] = []
    if part.counter is not None:
        refs.append(((*path, "counter"), part.counter))
    if part.result is not None:
        refs.append(((*path, "result", "point"), part.result.point))
    if part.cycle_time is not None:
        refs.append(((*path, "cycle_time"), part.cycle_time))
    refs.extend(((*path, "limits", name), name) for name in part.limits)
    for ref_path, name in refs:
        if name not in in_snapshot:
            out.append(
                (
                    ref_path,
                    f"{name!r} is not a snapshot point (snapshot.points: "
                    f"{', '.join(snap.points)}, or of snapshot.also)",
                )
            )
    for name, lim in part.limits.items():
        if lim.min is None and lim.max is None:
            out.append(((*path, "limits", name), "give min, max or both"))
        elif lim.min is not None and lim.max is not None and lim.min > lim.max:
            out.append(((*path, "limits", name, "min"), f"min {lim.min} is above max {lim.max}"))
    if part.handshake is not None:
        out.extend(_handshake_issues(cfg, part, path))
    return out


def _handshake_issues(cfg: AgentConfig, part: PartConfig, path: Path) -> list[Issue]:
    out: list[Issue] = []
    trig = part.trigger
    assert part.handshake is not None
    if trig.edge != "rising":
        out.append(((*path, "trigger", "edge"), "a handshake trigger is 'data ready': use rising"))
    trig_dev = cfg.device(trig.device)
    if trig_dev is None:
        return out
    taken = part.handshake.taken
    names = trig_dev.point_names()
    if taken not in names:
        message = unknown(f"point of {trig.device!r}", taken, names)
        out.append(((*path, "handshake", "taken"), message))
        return out
    why = trig_dev.write_issue(taken)
    if why is not None:
        out.append(((*path, "handshake", "taken"), f"cannot be written: {why}"))
    return out


def unknown(what: str, name: str, known: Any) -> str:
    msg = f"unknown {what} {name!r}"
    close = closest(name, list(known))
    if close is not None:
        msg += f"; did you mean {close!r}?"
    elif known:
        msg += f" (known: {', '.join(sorted(known))})"
    return msg


def closest(word: str, choices: list[str]) -> str | None:
    """The choice ``word`` most likely misspells (case aside), or None. Among equally close
    choices the one sharing the longest start wins ('ABDC' -> 'ABCD', not 'BADC')."""
    folded = {c.casefold(): c for c in reversed(choices)}
    w = word.casefold()
    close = difflib.get_close_matches(w, list(folded), n=len(folded))
    if not close:
        return None

    def rank(c: str) -> tuple[float, int]:
        prefix = next(
            (n for n, (a, b) in enumerate(zip(w, c, strict=False)) if a != b), min(len(w), len(c))
        )
        return difflib.SequenceMatcher(None, w, c).ratio(), prefix

    return folded[max(close, key=rank)]
