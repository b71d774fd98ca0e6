"""Config model of a UHF RFID reader that prints its tag reads as text lines over a serial port
or TCP (the reader's ASCII / "autonomous" / TCP data output).

Imports only pydantic, the kernel and ``drivers.rfid.reads`` (pure): a config using this kind
is validated on machines without epcpy, and refused there on its ``type:`` line only because
the registry says the kind needs it. Everything about the read lines (the preset or custom
pattern, the ignore pattern, the antenna allow-list) is checked here at load time, so a wrong
pattern is an error with its YAML line, never a flood of rejected reads at the first tag.

Arrivals are scans, departures are plain readings, and why
  * An **arrival** (the first read of a tag that was not in the field) identifies what came
    to the station: it is a scan (``scan_points``), classified by the station's scan rules, so
    a GS1 rule can set the serial and product from an SGTIN tag. The config checks make sure
    the point is a scan source of a station.
  * A **departure** (the tag's reads stopped for ``departure_after`` seconds) is *not* a scan:
    it says that something left, not what is here now. Fed to the scan rules, the GS1 rule that
    set the serial on arrival would set it again on departure, and where visits overlap (the
    next part's tag already read while the previous one is still leaving) the station would
    fall back to the part that left, binding the next part's values to the wrong serial. So it
    is a reading on its own point (``departure_point``): recorded with the context current
    when the tag left, its EPC as the value and the dwell time and read count in its detail,
    and it never changes the context. A station's scan source naming the whole device
    (``{device: NAME}``) takes its scan points only (``scan_points``: the arrivals).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from drivers.device import NamedPoint
from drivers.links.config import LinkDevice
from drivers.rfid.reads import GROUPS, PRESETS, ReadFormat
from kernel.names import Issue, Name

PresetName = Literal["epc", "csv", "alien-text", "impinj-json"]
"""The preset names of ``drivers.rfid.reads.PRESETS`` (a test keeps the two equal)."""
DEFAULT_FORMAT: PresetName = "csv"
CUSTOM = "line_pattern"
"""The name of a custom read format, as rejected reads name it ("does not match the
line_pattern format")."""


def _presets_text() -> str:
    return "; ".join(f"{f.name}: {f.description.rstrip('.')}" for f in PRESETS.values())


@dataclass(frozen=True, slots=True)
class _Point:
    name: str
    station: str | None


class RfidDevice(LinkDevice):
    """A UHF RFID reader printing one tag read per line, one arrival (a scan) per tag visit.

    Repeated reads of a tag in the field become one arrival, classified by the station's scan
    rules, and, if asked, one departure (a reading) when its reads stop."""

    type: Literal["rfid"] = Field(description="Driver: rfid.", examples=["rfid"])
    suffix: Literal["CR", "LF", "CRLF"] = Field(
        default="LF",
        description="Line end of the reader's output. LF (the default) also accepts CR LF, "
        "which most readers send; CR also accepts CR LF.",
    )
    format: PresetName = Field(
        default=DEFAULT_FORMAT,
        description=f"How the reader prints a read, one of the presets ({_presets_text()}). "
        "For any other output give line_pattern instead.",
        examples=["csv", "alien-text", "impinj-json"],
    )
    line_pattern: str | None = Field(
        default=None,
        description="Your own regex for one read line (the whole line, without its line end; "
        "Python syntax) instead of a preset format: a named group epc (the EPC in hex, spaces "
        "allowed) and optionally antenna (a whole number), rssi (dBm) and ts (the reader's "
        "time, kept as text).",
        examples=[r"EPC=(?P<epc>[0-9A-F]+) ANT=(?P<antenna>\d+) RSSI=(?P<rssi>-?[\d.]+)"],
    )
    ignore_pattern: str | None = Field(
        default=None,
        description="Regex of whole lines that are not reads and not errors either (a "
        "heartbeat, a banner); they are skipped. The presets already skip their reader's own "
        "(Alien's (No Tags), Impinj heartbeats).",
        examples=[r"HB \d+", r"READY.*"],
    )
    point: Name = Field(
        default="tag",
        description="Point of the arrivals (a tag's first read): scans, as scans.sources and "
        "records name them.",
    )
    window: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        description="Seconds: reads of one tag less than this apart are one visit (one "
        "arrival). A tag unread for longer arrives again at its next read.",
    )
    departures: bool = Field(
        default=False,
        description="Record a departure (a reading on departure_point, with the dwell time and "
        "read count) when a tag's reads stop.",
    )
    departure_after: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="Seconds without a read after which a tag has left (with departures: "
        "true); at least window. Default: window.",
    )
    departure_point: Name = Field(
        default="tag_departed",
        description="Point of the departures: plain readings (the EPC as value), never scans, "
        "so a tag leaving never changes the station context.",
    )
    antennas: list[Annotated[int, Field(ge=0, le=65535)]] | None = Field(
        default=None,
        min_length=1,
        description="Only reads on these antennas count (the others, e.g. an antenna facing "
        "the next station, are skipped); needs a format that reports the antenna. Null: every "
        "antenna.",
        examples=[[1, 2]],
    )

    # ---- what the agent's core asks ------------------------------------------------------

    def named_points(self) -> Sequence[NamedPoint]:
        points = [_Point(self.point, self.station)]
        if self.departures:
            points.append(_Point(self.departure_point, self.station))
        return points

    def scan_points(self) -> Sequence[str]:
        return [self.point]

    def departure_timeout(self) -> float | None:
        """Seconds of silence after which a tag has left; None when departures are off."""
        if not self.departures:
            return None
        return self.departure_after if self.departure_after is not None else self.window

    def read_format(self) -> ReadFormat:
        """The format reads are parsed with. Raises ValueError only for a config whose
        ``issues()`` are not empty."""
        if self.line_pattern is not None:
            return ReadFormat(CUSTOM, self.line_pattern, self.ignore_pattern)
        preset = PRESETS[self.format]
        if self.ignore_pattern is None:
            return preset
        ignore = self.ignore_pattern
        if preset.ignore is not None:
            ignore = f"(?:{preset.ignore})|(?:{self.ignore_pattern})"
        return ReadFormat(preset.name, preset.pattern, ignore, preset.description)

    # ---- cross-field checks --------------------------------------------------------------

    def issues(self) -> list[Issue]:
        out = [self._framing_pattern_hint(issue) for issue in super().issues()]
        groups = self._line_issues(out)
        if self.antennas is not None and groups is not None and "antenna" not in groups:
            what = "line_pattern" if self.line_pattern else f"the {self.format} format"
            out.append(
                (
                    ("antennas",),
                    f"{what} has no antenna field, so no read could pass antennas: use a "
                    "format that reports the antenna (csv, alien-text, impinj-json, or "
                    "(?P<antenna>...) in line_pattern), or drop antennas",
                )
            )
        if self.departure_after is not None:
            if not self.departures:
                out.append(
                    (("departure_after",), "departure_after is for departures: true; set it too")
                )
            elif self.departure_after < self.window:
                out.append(
                    (
                        ("departure_after",),
                        f"must be at least window ({self.window:g} s): a tag cannot leave "
                        "before its repeated reads stop counting as one visit",
                    )
                )
        if self.departures and self.departure_point == self.point:
            out.append(
                (
                    ("departure_point",),
                    f"{self.departure_point!r} is the arrivals' point too: give departures a "
                    "point of their own",
                )
            )
        return out

    def _line_issues(self, out: list[Issue]) -> set[str] | None:
        """Check line_pattern and ignore_pattern; the read format's groups, None if unknown."""
        if self.ignore_pattern is not None:
            why = _regex_problem(self.ignore_pattern)
            if why is not None:
                out.append((("ignore_pattern",), why))
        if self.line_pattern is None:
            return set(PRESETS[self.format].regex.groupindex)
        if "format" in self.model_fields_set:
            out.append(
                (
                    ("line_pattern",),
                    "give format (a preset) or line_pattern (your own regex), not both",
                )
            )
        why = _regex_problem(self.line_pattern)
        if why is not None:
            out.append((("line_pattern",), why))
            return None
        groups = set(re.compile(self.line_pattern).groupindex)
        if "epc" not in groups:
            out.append(
                (
                    ("line_pattern",),
                    "no (?P<epc>...) group: the EPC's hex digits must be captured by a group "
                    "named epc",
                )
            )
        for name in sorted(groups - GROUPS):
            close = difflib.get_close_matches(name, sorted(GROUPS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            out.append(
                (
                    ("line_pattern",),
                    f"unknown group {name!r}: {hint}a line pattern's named groups are "
                    f"{', '.join(sorted(GROUPS))} (write (?:...) for a group that only groups)",
                )
            )
        return groups

    @staticmethod
    def _framing_pattern_hint(issue: Issue) -> Issue:
        """``pattern`` is LinkDevice's framing regex; someone writing an RFID config who
        sets it most likely meant the read line's pattern."""
        path, message = issue
        if path == ("pattern",) and message.startswith("pattern is only used with framing"):
            message += "; the pattern of a read line is line_pattern"
        return path, message


def _regex_problem(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        return f"not a valid regex: {exc.msg}{where}"
    return None
