"""Keyboard-wedge barcode scanners (USB HID keyboard mode) on Linux: the scanner's input
device is grabbed exclusively and its key events are turned back into text with the keyboard
layout the scanner types for; Enter ends each scan. For scanners that cannot do USB-COM or
serial (type: scanner), which is better for GS1: see docs/devices/keyboard-scanner.md."""

from drivers.keyboard_scanner.config import KeyboardScannerDevice
from drivers.registry import DriverKind

KIND = DriverKind(
    type="keyboard_scanner",
    config=KeyboardScannerDevice,
    driver="drivers.keyboard_scanner.driver:KeyboardScannerDriver",
    summary="A barcode scanner in keyboard-wedge mode, read from its Linux input device "
    "(evdev), grabbed exclusively: each read ended by Enter is one scan.",
    extra="keyboard",
    requires=("evdev",),
)
