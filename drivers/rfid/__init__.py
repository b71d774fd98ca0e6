"""UHF RFID readers printing tag reads as text lines over a serial port or TCP: repeated reads
collapse into one arrival per visit (a scan, its EPC decoded to GS1 keys for the station's
scan rules) and, if asked, one departure when the tag leaves.

The kind is an optional extra: EPC decoding needs epcpy (``pip install
'edge-agent[rfid]'``), which only the driver imports; the config model validates without it.
"""

from drivers.registry import DriverKind
from drivers.rfid.config import RfidDevice

KIND = DriverKind(
    type="rfid",
    config=RfidDevice,
    driver="drivers.rfid.driver:RfidDriver",
    summary="An RFID reader on a serial port or TCP printing tag reads as lines: one arrival "
    "(a scan) per tag visit, optionally a departure.",
    extra="rfid",
    requires=("epcpy",),
)
