"""A camera looking at the station's parts, so camera barcode reading is tested against a
known ground truth, on the station's clock, through the three ways cameras hand out images.

Why a simulator and not recorded images: what matters for traceability is *which part* a read
belongs to and *whether* a read should have succeeded at all. The frames here are drawn from
the same :class:`~simulators.station.StationModel` as the PLC and scanner simulators, on the
same clock (``time.monotonic()``, ``t0`` = start of cycle 0), and carry the same code the
scanner simulator sends (:func:`simulators.scanner.part_code`): at time ``t`` the frame shows
part ``cycle_at(t)``, so a test knows, without asking anyone, which serial a decoded frame must
give, which serial the PLC shows meanwhile, and which frames must *not* decode. Every frame
comes with its :class:`FrameTruth`.

The parts, in the order a frame goes through them (each module's doc has the details):

- :mod:`.config`: what the camera is and looks at (:class:`CameraConfig`): the sensor, the
  part's code (:class:`Symbology`), where it sits (:class:`Placement`), how the image is
  spoiled (:class:`Distortions`), which parts are unreadable (:class:`Fault`). Checked at
  construction.
- :mod:`.scene`: the station seen through the camera (:class:`CameraScene`, pure: a frame is a
  function of its index and time): the symbols, the images, their :class:`FrameTruth`.
- :mod:`.files`: frames as files: an image's bytes (:func:`encode_image`) and a video file
  (:func:`write_video`).
- :mod:`.live`: what the live cameras share: start and close, the render thread, the clock.
- :mod:`.folder`: :class:`ImageFolderCamera`, a smart camera dropping one image per part into
  a folder, with faults per file (:class:`DropFault`).
- :mod:`.mjpeg`: :class:`MjpegCamera`, an IP camera's HTTP MJPEG stream, which can die, hang
  and return.

Everything is imported from here (``from simulators.camera import CameraScene``).

Reading the frames back (as the tests do): ``zxingcpp.read_barcodes(image,
text_mode=zxingcpp.TextMode.Plain)``, then ``symbology_identifier + text``. The default text
mode (HRI) shows GS1 data as ``(01)...(21)...`` without GS, and ``text`` never holds the AIM
identifier.

Not simulated: handshake stations (their cycles follow the agent, not the clock), lens
distortion, motion blur, camera exposure control, RTSP.
"""

from simulators.camera.config import (
    FIVE_MP,
    RESOLUTIONS,
    SXGA,
    VGA,
    CameraConfig,
    Distortions,
    Fault,
    Placement,
    Resolution,
    Symbology,
)
from simulators.camera.files import encode_image, write_video
from simulators.camera.folder import DropFault, DroppedFile, ImageFolderCamera
from simulators.camera.mjpeg import BOUNDARY as BOUNDARY
from simulators.camera.mjpeg import MjpegCamera, SentFrame
from simulators.camera.scene import CameraScene, Frame, FrameTruth
from simulators.camera.scene import Image as Image

# Importable from here before the package was split; kept so.
from simulators.scanner import GS as GS
from simulators.scanner import Symbol as Symbol
from simulators.scanner import part_code as part_code
from simulators.station import GTIN as GTIN
from simulators.station import StationModel as StationModel

__all__ = [
    "FIVE_MP",
    "RESOLUTIONS",
    "SXGA",
    "VGA",
    "CameraConfig",
    "CameraScene",
    "Distortions",
    "DropFault",
    "DroppedFile",
    "Fault",
    "Frame",
    "FrameTruth",
    "ImageFolderCamera",
    "MjpegCamera",
    "Placement",
    "Resolution",
    "SentFrame",
    "Symbology",
    "encode_image",
    "write_video",
]
