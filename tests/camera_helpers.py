"""Camera tests' helpers: a camera device config, the scans a sink got, frames of the
station scenario's parts (rendered without a running clock), dropping a file into a watched
folder as an FTP server does, and the evidence a scan kept. Import after
``pytest.importorskip("cv2")``: the camera simulator needs OpenCV."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from drivers.camera.config import CameraDevice
from drivers.camera.driver import CameraDriver
from edge_agent.scan import ScanRule
from kernel.model import DeviceState, Observation
from simulators.camera import CameraConfig, CameraScene, encode_image
from simulators.station import StationModel
from tests.modbus_helpers import Collector

PART = ScanRule(
    name="part", gs1=True, require=["01", "21"], set={"serial": "21", "lot": "10", "product": "01"}
)
CLOCK = StationModel(t0=0.0, cycle_time=1.0)
"""For frames rendered without a running clock: part k is in view from k to k + 0.8 s."""


def camera(**kw: Any) -> CameraDevice:
    raw = {"type": "camera", "name": "cam10", "station": "ST10", **kw}
    dev = CameraDevice.model_validate(raw)
    assert dev.issues() == []
    return dev


def scans(sink: Collector) -> list[Observation]:
    return [o for o in sink.all if o.point == "scan"]


def state(driver: CameraDriver) -> DeviceState:
    return driver.status.state


def drop(folder: Path, name: str, data: bytes) -> Path:
    """Put a file in the watched folder as an FTP server does: hidden name, then rename."""
    temp = folder / f".{name}.part"
    temp.write_bytes(data)
    final = folder / name
    os.replace(temp, final)
    return final


def part_image(cycle: int, config: CameraConfig | None = None) -> Any:
    """Part ``cycle``'s frame (the part in view, no clock needed)."""
    return CameraScene(CLOCK, config).render(cycle, cycle + 0.1).image


def empty_image(config: CameraConfig | None = None) -> Any:
    """A frame between two parts: background only."""
    return CameraScene(CLOCK, config).render(0, 0.9).image


def png(image: Any) -> bytes:
    return encode_image(image, ".png")


def kept_bytes(obs: Observation) -> bytes:
    """The evidence file a scan names."""
    assert obs.detail is not None
    return Path(str(obs.detail["frame_file"])).read_bytes()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())
