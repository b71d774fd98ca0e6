"""A scenario checked against the agent's config: every device, station and point it names
exists, every value fits its point's type, every fault and event suits its device; and the
part cycles' points resolved from the stations' config.

Problems are (key path, message) pairs like the config's own checks, so the loader reports
them at their YAML line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.device import DeviceConfig
from drivers.links.config import control_bytes
from edge_agent.config import AgentConfig, StationConfig
from edge_agent.config.checks import unknown
from kernel.names import Issue
from simulators.devicemap.cycle import CycleRoles, PointKey
from simulators.devicemap.kinds import FAULT_KINDS, Lookup, ValueSpec, simulators_of
from simulators.devicemap.scenario import (
    PartCycle,
    PointRef,
    ScanEvent,
    Scenario,
    TagEvent,
    WeightEvent,
)

EXCEPTION_CODES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 11)
"""Modbus exception codes a device can answer with."""

Path = tuple[str | int, ...]


@dataclass
class Checked:
    """What the checks found: the problems, and the part cycles' resolved points."""

    issues: list[Issue] = field(default_factory=list)
    roles: dict[str, CycleRoles] = field(default_factory=dict)


class _Checker:
    def __init__(self, scenario: Scenario, config: AgentConfig) -> None:
        self.scenario = scenario
        self.config = config
        self.devices = {d.name: d for d in config.devices}
        self.lookups: dict[str, Lookup] = simulators_of(config.devices)
        self.out = Checked()
        self.driven: dict[PointKey, str] = {}

    def issue(self, path: Path, message: str) -> None:
        self.out.issues.append((path, message))

    def device(self, name: str, path: Path) -> DeviceConfig | None:
        """The device named at ``path``, if it exists and can be simulated."""
        device = self.devices.get(name)
        if device is None:
            self.issue(path, unknown("device", name, self.devices))
            return None
        lookup = self.lookups[device.type]
        sim = lookup.simulator
        why = lookup.reason if sim is None else sim.device_issue(device)
        if why is not None:
            self.issue(path, f"device {name!r} ({device.type}) cannot be simulated: {why}")
            return None
        return device

    def spec(self, device: DeviceConfig, point: str, path: Path) -> ValueSpec | None:
        """The point's value spec, if the point exists and takes values."""
        if point not in device.point_names():
            self.issue(path, unknown(f"point of {device.name!r}", point, device.point_names()))
            return None
        sim = self.lookups[device.type].simulator
        assert sim is not None
        spec = sim.value_spec(device, point)
        if spec is None:
            self.issue(
                path,
                f"{point!r} of {device.name!r} takes no scripted values{_events_hint(sim.events)}",
            )
        return spec

    def claim(self, key: PointKey, what: str, path: Path) -> None:
        """One thing drives a point: a script or one role of one part cycle."""
        if key in self.driven:
            self.issue(path, f"{key[1]!r} of {key[0]!r} is driven already by {self.driven[key]}")
        else:
            self.driven[key] = what

    # ---- the sections ----------------------------------------------------------------------

    def stations(self) -> None:
        by_name = {s.name: s for s in self.config.stations}
        for name, script in self.scenario.stations.items():
            path: Path = ("stations", name)
            station = by_name.get(name)
            if station is None:
                self.issue(path, unknown("station", name, by_name))
                continue
            if script.part_cycle is not None:
                roles = self.cycle(station, script.part_cycle, (*path, "part_cycle"))
                if roles is not None:
                    self.out.roles[name] = roles
                    for key, role in roles.driven().items():
                        self.claim(
                            key, f"the part cycle of {name} (its {role})", (*path, "part_cycle")
                        )

    def cycle(self, station: StationConfig, cycle: PartCycle, path: Path) -> CycleRoles | None:
        part = station.part
        ok = True

        def ref(
            given: PointRef | None, default: PointKey | None, key: str, what: str
        ) -> tuple[PointKey, ValueSpec] | None:
            nonlocal ok
            at: Path = (*path, key) if given is not None else path
            target = (given.device, given.point) if given is not None else default
            if target is None:
                return None
            device = self.device(target[0], (*at, "device") if given else at)
            spec = None if device is None else self.spec(device, target[1], at)
            if spec is None:
                ok = False
                return None
            if spec.kind == "text" and what != "text":
                self.issue(at, f"the {key} point {target[1]!r} holds text, not a number or bool")
                ok = False
                return None
            return target, spec

        trigger_default = (part.trigger.device, part.trigger.point) if part else None
        trigger = ref(cycle.trigger, trigger_default, "trigger", "number")
        if trigger is None:
            if ok:
                self.issue(
                    path,
                    f"station {station.name!r} has no part trigger in the config: "
                    "give part_cycle.trigger",
                )
            return None
        serial_src = station.context.get("serial")
        serial_default = (serial_src.device, serial_src.point) if serial_src else None
        serial = ref(cycle.serial_point, serial_default, "serial_point", "text")
        counter_default = (part.snapshot.device, part.counter) if part and part.counter else None
        counter = ref(cycle.counter, counter_default, "counter", "number")
        result_default = (part.snapshot.device, part.result.point) if part and part.result else None
        result = ref(cycle.result, result_default, "result", "any")
        taken = None
        if part is not None and part.handshake is not None:
            taken = (part.trigger.device, part.handshake.taken)
        roles = CycleRoles(
            station=station.name,
            trigger=trigger[0],
            edge=part.trigger.edge if part and cycle.trigger is None else "rising",
            trigger_numeric=trigger[1].kind == "number",
            serial=serial[0] if serial else None,
            serial_numeric=bool(serial and serial[1].kind == "number"),
            counter=counter[0] if counter else None,
            result=result[0] if result else None,
            taken=taken,
            reset=part.handshake.reset if part and part.handshake else True,
        )
        parts = int(self.scenario.duration / cycle.period) + 2
        if serial is not None:
            self.serials(cycle, serial[1], (*path, "serial"), parts)
        if counter is not None and (err := counter[1].check(parts)) is not None:
            self.issue((*path, "period"), f"the counter reaches {parts}: {err}")
        if result is not None:
            values = self.results(cycle, part, result[1], path)
            if values is None:
                return None
            roles = CycleRoles(**{**roles.__dict__, "ok": values[0], "nok": values[1]})
        return roles if ok else None

    def serials(self, cycle: PartCycle, spec: ValueSpec, path: Path, parts: int) -> None:
        for n in (cycle.first, cycle.first + parts):
            text = cycle.serial.format(n=n)
            value: Any = text
            if spec.kind == "number":
                try:
                    value = int(text)
                except ValueError:
                    self.issue(
                        path,
                        f"the serial point is a {spec.type_name}: the pattern must "
                        f"give a number, not {text!r}",
                    )
                    return
            err = spec.check(value)
            if err is not None:
                self.issue(path, f"serial of part n={n}: {err}")
                return

    def results(
        self, cycle: PartCycle, part: Any, spec: ValueSpec, path: Path
    ) -> tuple[Any, Any] | None:
        out = []
        for key, given in (("ok", cycle.ok), ("nok", cycle.nok)):
            value = given
            if value is None and part is not None and part.result is not None:
                listed = getattr(part.result, key)
                value = listed[0] if listed else None
            if value is None:
                self.issue(path, f"give part_cycle.{key}: the value of an {key.upper()} part")
                return None
            err = spec.check(value)
            if err is not None:
                self.issue((*path, key) if given is not None else path, f"{key} result: {err}")
                return None
            out.append(value)
        return out[0], out[1]

    def points(self) -> None:
        for dev_name, scripts in self.scenario.points.items():
            device = self.device(dev_name, ("points", dev_name))
            if device is None:
                continue
            for point, script in scripts.items():
                path: Path = ("points", dev_name, point)
                spec = self.spec(device, point, path)
                if spec is None:
                    continue
                self.claim((dev_name, point), "its script in points:", path)
                if spec.kind not in ("number", "any") and (script.ramp or script.noise):
                    form = "ramp" if script.ramp else "noise"
                    self.issue(
                        (*path, form),
                        f"a {form} needs a number point; {point!r} is a {spec.type_name} point",
                    )
                    continue
                for sub, value in script.values():
                    err = spec.check(value)
                    if err is not None:
                        self.issue((*path, *sub), err)

    def faults(self) -> None:
        spans: dict[str, list[tuple[float, float, int]]] = {}
        end = self.scenario.duration
        for i, f in enumerate(self.scenario.faults):
            path: Path = ("faults", i)
            device = self.device(f.device, (*path, "device"))
            if f.at >= end:
                self.issue((*path, "at"), _after_end(f.at, end))
            if f.duration == 0 and f.fault != "garbage":
                article = "an" if f.fault[0] in "aeiou" else "a"
                message = f"{article} {f.fault} fault needs a duration (seconds)"
                self.issue((*path, "duration"), message)
            if f.fault == "exception" and f.code not in EXCEPTION_CODES:
                codes = ", ".join(map(str, EXCEPTION_CODES))
                self.issue(
                    (*path, "code") if f.code is not None else path,
                    f"an exception fault needs code: one of {codes}",
                )
            for key in ("code", "points", "data"):
                wanted = "exception" if key != "data" else "garbage"
                if getattr(f, key) is not None and f.fault != wanted:
                    self.issue((*path, key), f"{key} is for fault: {wanted}")
            if f.data is not None:
                try:
                    control_bytes(f.data)
                except ValueError as exc:
                    self.issue((*path, "data"), str(exc))
            if device is None:
                continue
            sim = self.lookups[device.type].simulator
            assert sim is not None
            if f.fault not in sim.faults:
                can = ", ".join(k for k in FAULT_KINDS if k in sim.faults) or "none"
                self.issue(
                    (*path, "fault"),
                    f"a {device.type} device cannot have fault {f.fault!r} (it can have: {can})",
                )
            elif (why := sim.fault_issue(device, f.fault)) is not None:
                self.issue((*path, "fault"), why)
            for j, point in enumerate(f.points or []):
                if point not in device.point_names():
                    self.issue(
                        (*path, "points", j),
                        unknown(f"point of {device.name!r}", point, device.point_names()),
                    )
            stop = f.at + max(f.duration, 1e-9)
            for a, b, other in spans.get(f.device, []):
                if f.at < b and a < stop:
                    self.issue(
                        path,
                        f"overlaps faults[{other}] on {f.device!r} ({a:g} .. "
                        f"{b:g} s): one fault at a time per device",
                    )
                    break
            spans.setdefault(f.device, []).append((f.at, stop, i))

    def events(self) -> None:
        end = self.scenario.duration
        sections: list[tuple[str, Sequence[ScanEvent | WeightEvent | TagEvent]]] = [
            ("scans", self.scenario.scans),
            ("weights", self.scenario.weights),
            ("tags", self.scenario.tags),
        ]
        for section, events in sections:
            for i, e in enumerate(events):
                path: Path = (section, i)
                if e.at >= end:
                    self.issue((*path, "at"), _after_end(e.at, end))
                device = self.device(e.device, (*path, "device"))
                if device is None:
                    continue
                sim = self.lookups[device.type].simulator
                assert sim is not None
                if section not in sim.events:
                    what = _SECTION_WHAT[section]
                    self.issue((*path, "device"), f"a {device.type} device takes no {what}")
                data = getattr(e, "data", None)
                if data is not None:
                    try:
                        control_bytes(data)
                    except ValueError as exc:
                        self.issue((*path, "data"), str(exc))

    def reads(self) -> None:
        for name, reads in self.scenario.reads.items():
            path: Path = ("reads", name)
            device = self.device(name, path)
            if device is None:
                continue
            sim = self.lookups[device.type].simulator
            assert sim is not None
            if "reads" not in sim.events:
                self.issue(path, f"a {device.type} device answers no trigger commands")
                continue
            why = sim.event_issue(device, "reads")
            if why is not None:
                self.issue(path, why)
            timeout = getattr(getattr(device, "trigger", None), "read_timeout", None)
            if timeout is not None and reads.delay >= timeout:
                self.issue(
                    (*path, "delay"),
                    f"{reads.delay:g} s is not within the trigger's read_timeout "
                    f"({timeout:g} s): every answer would come after the agent's no-read",
                )
            for i, code in enumerate(reads.codes or []):
                if code is None:
                    continue
                try:
                    control_bytes(code)
                except ValueError as exc:
                    self.issue((*path, "codes", i), str(exc))
            if reads.pattern is not None:
                try:
                    control_bytes(reads.pattern.format(n=reads.first))
                except ValueError as exc:
                    self.issue((*path, "pattern"), str(exc))


_SECTION_WHAT = {"scans": "scans", "weights": "loads (weights)", "tags": "RFID tags (tags)"}


def _events_hint(events: frozenset[str]) -> str:
    """Where the values of a device without scriptable points come from."""
    if "scans" in events:
        return " (its codes are scans: entries)"
    if "weights" in events:
        return " (its loads are weights: entries)"
    if "tags" in events:
        return " (its tags are tags: entries)"
    return ""


def _after_end(at: float, end: float) -> str:
    return f"at {at:g} s is not before the scenario's end (duration {end:g} s)"


def check_scenario(scenario: Scenario, config: AgentConfig) -> Checked:
    """Every problem of ``scenario`` against ``config``, and the part cycles' points."""
    checker = _Checker(scenario, config)
    checker.stations()  # first: a script of a point a cycle drives is the one reported
    checker.points()
    checker.faults()
    checker.events()
    checker.reads()
    return checker.out
