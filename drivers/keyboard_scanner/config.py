"""Config model of a keyboard-wedge barcode scanner: a USB scanner that types its reads as a
keyboard would, read from its Linux input device (evdev).

Imports only pydantic, the kernel and the pure keymap (never evdev), like every config
model: a config is validated on machines without the ``keyboard`` extra.
"""

from __future__ import annotations

import posixpath
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from drivers.device import DeviceConfig, NamedPoint, backoff_issues
from drivers.keyboard_scanner.keymap import (
    CTRL_CHORD,
    LayoutName,
    Suffix,
    gs_key_issue,
    parse_gs_key,
)
from kernel.names import Issue, Name


@dataclass(frozen=True, slots=True)
class _Point:
    name: str
    station: str | None


class KeyboardScannerDevice(DeviceConfig):
    """A barcode scanner in keyboard-wedge mode (a USB keyboard); each Enter ends one scan.

    Read from its Linux input device, grabbed so that its keys reach the agent only; each
    scan is classified by the station's scan rules. Prefer a scanner's USB-COM (serial) mode
    with type: scanner where it has one: a wedge depends on the keyboard layout and mangles
    GS."""

    type: Literal["keyboard_scanner"] = Field(
        description="Driver: keyboard_scanner (needs the keyboard extra: evdev).",
        examples=["keyboard_scanner"],
    )
    input: str = Field(
        min_length=1,
        description="The scanner's input event device. Prefer the stable "
        "/dev/input/by-id/usb-...-event-kbd name (or a udev SYMLINK); /dev/input/eventN "
        "numbers change with the order devices are plugged in.",
        examples=[
            "/dev/input/by-id/usb-Honeywell_Imaging___Mobility_1950g_21012B4567-event-kbd",
            "/dev/input/scanner-st10",
        ],
    )
    layout: LayoutName = Field(
        default="us",
        description="Keyboard layout the scanner is set to type for (its keyboard country): "
        "us, uk, de (QWERTZ) or fr (AZERTY). Must match the scanner, or characters turn into "
        "others (z and y swap between us and de).",
    )
    gs_key: str = Field(
        default=CTRL_CHORD,
        description="What the scanner types for GS (the GS1 separator, which a wedge drops or "
        "mangles unless told): ctrl+] (its ASCII chord), one character the codes never "
        "contain that the scanner substitutes (e.g. ~), or a function key F1 to F24. Alt + "
        "keypad codes (Alt+0029) are read as GS whatever this says.",
        examples=["ctrl+]", "~", "F8"],
    )
    suffix: Suffix = Field(
        default="enter",
        description="Key that ends a scan: enter (Enter or keypad Enter), or enter_or_tab "
        "(Tab too; with enter, a Tab is a character of the scan and the scan rules reject it).",
    )
    max_length: int = Field(
        default=512,
        ge=1,
        le=65536,
        description="Longest scan in characters; a longer one is rejected with that reason "
        "(its rest, up to the Enter, is part of the rejected scan).",
    )
    inter_key_timeout: float = Field(
        default=0.5,
        gt=0,
        le=60,
        description="Seconds without a key after which a scan that has not ended with Enter "
        "is rejected (incomplete). A scanner types a whole code in milliseconds.",
    )
    grab: bool = Field(
        default=True,
        description="Grab the input device exclusively, so that scans do not also type into "
        "whatever window has the focus (the HMI). false: the agent reads along.",
    )
    point: Name = Field(
        default="scan",
        description="Point name of the scans, as scans.sources and records name it.",
    )
    no_read: list[str] = Field(
        default_factory=list,
        description="Texts the scanner types when it decoded nothing (if it is set to); each "
        "becomes a rejected scan with reason 'no read' (compared exactly).",
        examples=[["NOREAD"]],
    )
    backoff_initial: float = Field(default=0.5, gt=0, description="Reopen backoff base.")
    backoff_max: float = Field(default=30.0, gt=0, description="Reopen backoff cap.")

    @field_validator("gs_key")
    @classmethod
    def _check_gs_key(cls, value: str) -> str:
        parse_gs_key(value)  # its ValueError says which forms there are
        return value

    def named_points(self) -> Sequence[NamedPoint]:
        return [_Point(self.point, self.station)]

    def scan_points(self) -> Sequence[str]:
        return [self.point]

    def issues(self) -> list[Issue]:
        out: list[Issue] = []
        if not self.input.startswith("/"):
            out.append(
                (
                    ("input",),
                    f"give the input device's absolute path, e.g. /dev/input/by-id/"
                    f"...-event-kbd; got {self.input!r}",
                )
            )
        why = gs_key_issue(self.gs_key, self.layout)
        if why is not None:
            out.append((("gs_key",), why))
        out.extend(backoff_issues(self.backoff_initial, self.backoff_max))
        return out

    def identity(self) -> Hashable | None:
        return ("input", posixpath.normpath(self.input))

    def duplicate_issue(self, first: int) -> Issue:
        return (
            ("input",),
            f"input device {self.input} is already used by devices[{first}]: one input, one "
            "device (a grabbed device gives its keys to one reader only)",
        )
