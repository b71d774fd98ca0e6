"""What ``edge-agent demo`` shows while it runs: per station the serial and lot, the last
values and the last part with its result, and how far each record has travelled (journal,
broker, trace store).

Values and parts come from the agent's committed records (``edge_agent.tail``, rounded to
their precision), counts and device states from its status snapshot. On a terminal the view
is a table redrawn in place (``rich``); elsewhere (a CI log, a pipe) one compact line every
few seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import RenderableType

MAX_VALUES = 4
"""Process values shown per station (those with a unit, in the order the PLC reports them)."""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}" if abs(v) < 1e6 else f"{v:.6g}"
    return "-" if v is None else str(v)


@dataclass
class StationView:
    name: str
    serial: Any = None
    lot: Any = None
    values: dict[str, tuple[Any, str]] = field(default_factory=dict)  # point -> (value, unit)
    part: dict[str, Any] | None = None  # the last part record, as the tail renders it
    parts: int = 0
    nok: int = 0
    devices: list[tuple[str, str]] = field(default_factory=list)

    def take(self, r: dict[str, Any]) -> None:
        if r["kind"] == "part":
            self.part = r
            return
        units = r.get("units") or {}
        for point, v in r["values"].items():
            if point in units:
                self.values[point] = (v, units[point])

    def shown_values(self) -> list[str]:
        return [f"{p} {_fmt(v)} {u}" for p, (v, u) in list(self.values.items())[:MAX_VALUES]]

    def part_summary(self) -> tuple[str, str] | None:
        """(OK/NOK/?, 'S1-0041  final_force 20.64 kN  ...'), or None before the first part."""
        p = self.part
        if p is None:
            return None
        result = (p.get("result") or "?").upper()
        shown = [
            f"{name} {_fmt(e['value'])}{' ' + e['unit'] if e.get('unit') else ''}"
            for name, e in p.get("values", {}).items()
            if isinstance(e.get("value"), float)
        ]
        return result, "  ".join([str(p.get("serial") or "(no serial)"), *shown])


class LiveState:
    """The demo's view of the chain; fed in the event loop, rendered on demand."""

    def __init__(self, agent_id: str, *, with_store: bool) -> None:
        self.agent_id = agent_id
        self.with_store = with_store
        self.stations: dict[str, StationView] = {}
        self.t0 = time.monotonic()
        self._last = (self.t0, 0, 0)  # (when, records, observations) at the last refresh
        self.records_per_s = 0.0
        self.values_per_s = 0.0
        self.journal = 0
        self.committed_seq = 0
        self.at_broker = 0  # records at the demo's MQTT consumer
        self.broker_seq = 0  # highest seq it got
        self.store_seq: int | None = None  # the trace store's watermark
        self.uplink = "connecting"

    def station(self, name: str) -> StationView:
        view = self.stations.get(name)
        if view is None:
            view = self.stations[name] = StationView(name)
        return view

    def feed(self, records: list[dict[str, Any]]) -> None:
        """Committed records from the agent's tail (readings and parts)."""
        for r in records:
            if r.get("kind") in ("readings", "part"):
                self.station(r["station"]).take(r)

    def refresh(
        self, snapshot: dict[str, Any], at_broker: int, broker_seq: int, store_seq: int | None
    ) -> None:
        now = time.monotonic()
        then, records, observations = self._last
        if now > then:
            self.records_per_s = (snapshot["records"] - records) / (now - then)
            self.values_per_s = (snapshot["observations"] - observations) / (now - then)
        self._last = (now, snapshot["records"], snapshot["observations"])
        self.journal = snapshot["buffer_depth"]
        self.committed_seq = snapshot["committed_seq"]
        self.at_broker, self.broker_seq, self.store_seq = at_broker, broker_seq, store_seq
        sync = snapshot["sync"]
        self.uplink = "connected" if sync["connected"] else "DOWN"
        by_station: dict[str, list[str]] = {}
        for device, stations in snapshot.get("device_stations", {}).items():
            for st in stations:
                by_station.setdefault(st, []).append(device)
        stats = snapshot.get("station_stats", {})
        for name, ctx in snapshot["stations"].items():
            view = self.station(name)
            view.serial, view.lot = ctx.get("serial"), ctx.get("lot")
            view.parts = stats.get(name, {}).get("parts", 0)
            view.nok = stats.get(name, {}).get("nok", 0)
            view.devices = [(d, snapshot["devices"].get(d, "?")) for d in by_station.get(name, [])]

    def travelled(self, seq: int) -> str:
        """Where a record is: confirmed by the store, at the broker, or in the journal."""
        if self.store_seq is not None and self.store_seq >= seq:
            return "in store"
        if self.broker_seq >= seq:
            return "at broker"
        return "in journal"

    def header(self) -> str:
        store = (
            f" | store confirmed up to seq {self.store_seq:,}" if self.store_seq is not None else ""
        )
        return (
            f"[{time.monotonic() - self.t0:5.1f}s] {self.records_per_s:,.0f} records/s "
            f"({self.values_per_s:,.0f} values/s) | committed seq {self.committed_seq:,} | "
            f"journal {self.journal:,} waiting | at broker {self.at_broker:,}{store} | "
            f"uplink {self.uplink}"
        )

    def compact(self) -> str:
        """One line for logs: the header, then per station serial, last part and counts."""
        parts = [self.header()]
        for view in self.stations.values():
            last = view.part_summary()
            part = "-" if last is None else f"{last[0]} ({last[1].split('  ')[0]})"
            parts.append(
                f"{view.name} serial {view.serial} lot {view.lot} last part {part} "
                f"{view.parts} parts {view.nok} NOK"
            )
        return " | ".join(parts)

    def table(self) -> RenderableType:
        """The live table (needs ``rich``). Cells do not wrap: on a narrow terminal they end
        in an ellipsis, and each station stays as tall as its values."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(expand=False, show_lines=True)
        table.add_column("station", no_wrap=True, min_width=12)
        table.add_column("last values", no_wrap=True, overflow="ellipsis")
        table.add_column("last part", no_wrap=True, overflow="ellipsis", min_width=14)
        table.add_column("parts", justify="right", no_wrap=True, min_width=5)
        for view in self.stations.values():
            station = Text(view.name, style="bold")
            station.append(f"\n{_fmt(view.serial)}\nlot {_fmt(view.lot)}")
            for device, state in view.devices:
                station.append(f"\n{device} ")
                station.append(state, style="green" if state == "up" else "bold red")
            last = view.part_summary()
            part = Text("-")
            if last is not None and view.part is not None:
                result, what = last
                colour = {"OK": "bold green", "NOK": "bold red"}.get(result, "yellow")
                serial, *values = what.split("  ")
                part = Text.assemble((result, colour), f" {serial}")
                for v in values:
                    part.append(f"\n{v}")
                part.append(f"\n{self.travelled(view.part['seq'])}", style="dim")
            counts = Text(f"{view.parts}\n")
            counts.append(f"{view.nok} NOK", style="bold red" if view.nok else "")
            table.add_row(station, "\n".join(view.shown_values()) or "-", part, counts)
        return Group(Text(self.header(), style="bold"), table)
