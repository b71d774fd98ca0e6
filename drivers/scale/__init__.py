"""Scales and weighing terminals on a serial port or TCP: Mettler Toledo MT-SICS, Sartorius
SBI, Toledo-style continuous output. One point, the weight, with unit and stability."""

from drivers.registry import DriverKind
from drivers.scale.config import ScaleDevice

KIND = DriverKind(
    type="scale",
    config=ScaleDevice,
    driver="drivers.scale.driver:ScaleDriver",
    summary="A scale on a serial port or TCP (MT-SICS, SBI, Toledo continuous): weight, unit "
    "and stability; a stable weight for a part's snapshot; zero and tare.",
)
