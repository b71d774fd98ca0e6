"""Barcode scanners for the station scenario, so the agent's scanner input is tested on a
real wire against a known ground truth.

Why a simulator and not recorded bytes: what matters for traceability is *which part* a scan
belongs to, *when* it came, and what the agent answered. The scanners here read the same
:class:`~simulators.station.StationModel` as the PLC simulators, on the same clock
(``time.monotonic()``, ``t0`` = start of cycle 0), so the scan of cycle N goes out when cycle
N starts and carries part N's serial and lot: a test knows, without asking anyone, which
serial the PLC shows while a scan arrives. Everything sent and received is kept as ground
truth (:attr:`ScannerBase.scans`, :attr:`ScannerBase.wire`, :attr:`ScannerBase.feedback`).

Two kinds of scanner: :class:`HandheldScanner` scans each part as it arrives;
:class:`TriggeredReader` (a fixed-mount reader) answers the host's trigger.

The parts, in the order a scan goes through them (each module's doc has the details):

- :mod:`.codes`: what a scanner decodes: the part's GS1 DataMatrix (:func:`part_code`),
  material labels (:func:`lot_label`), serials and lots in GS1 (:func:`gs1_value`). Pure.
- :mod:`.settings`: how a scanner is configured (:class:`ScannerConfig`,
  :class:`TriggerConfig`): framing, faults, the agent's answers; all checked before anything
  runs.
- :mod:`.records`: the ground truth kept of every scan, write, answer and trigger.
- :mod:`.transports`: the wire: a pty, or TCP as server or client.
- :mod:`.scanners`: the scanners: when they scan, faults applied, host ACK mode, triggers.

Everything is imported from here (``from simulators.scanner import HandheldScanner``).

Not simulated: handshake stations (their cycles follow the agent, not the clock, so a scanner
cannot know when a part arrives: building a scanner for one is an error); re-opening a
:class:`PtyTransport` after its :class:`NullModem` was unplugged.
"""

from simulators.scanner.codes import GS, Symbol, gs1_value, gtin14, lot_label, part_code
from simulators.scanner.records import (
    Feedback,
    ScanRecord,
    Trigger,
    Write,
)
from simulators.scanner.records import ScanKind as ScanKind
from simulators.scanner.records import Verdict as Verdict
from simulators.scanner.scanners import HandheldScanner, ScannerBase, TriggeredReader
from simulators.scanner.settings import (
    CR,
    CRLF,
    HONEYWELL_BAD,
    HONEYWELL_GOOD,
    LF,
    STX_ETX,
    Fault,
    Faults,
    Framing,
    HostAck,
    MaterialScan,
    ScannerConfig,
    TriggerConfig,
)
from simulators.scanner.transports import (
    PtyTransport,
    TcpClientTransport,
    TcpServerTransport,
    Transport,
)

# Importable from here before the package was split; kept so.
from simulators.serial_link import NullModem as NullModem
from simulators.station import GTIN as GTIN
from simulators.station import StationModel as StationModel

__all__ = [
    "CR",
    "CRLF",
    "GS",
    "HONEYWELL_BAD",
    "HONEYWELL_GOOD",
    "LF",
    "STX_ETX",
    "Fault",
    "Faults",
    "Feedback",
    "Framing",
    "HandheldScanner",
    "HostAck",
    "MaterialScan",
    "PtyTransport",
    "ScanRecord",
    "ScannerBase",
    "ScannerConfig",
    "Symbol",
    "TcpClientTransport",
    "TcpServerTransport",
    "Transport",
    "Trigger",
    "TriggerConfig",
    "TriggeredReader",
    "Write",
    "gs1_value",
    "gtin14",
    "lot_label",
    "part_code",
]
