"""Barcode scanners and fixed-mount readers sending decoded text over a serial port (USB
virtual COM included) or TCP: each message a scan, classified by the station's scan rules."""

from drivers.registry import DriverKind
from drivers.scanner.config import ScannerDevice, ScannerFeedback, ScannerTrigger

KIND = DriverKind(
    type="scanner",
    config=ScannerDevice,
    driver="drivers.scanner.driver:ScannerDriver",
    summary="A barcode scanner or reader on a serial port or TCP: each message one scan.",
    sections=(("feedback", ScannerFeedback), ("trigger", ScannerTrigger)),
)
