"""Cameras that read barcodes from images: a V4L2 camera, an RTSP or HTTP stream, or a folder a
smart camera drops its images into; each code read is a scan, classified by the station's scan
rules like a scanner's. OpenCV and zxing-cpp come with the ``camera`` extra and are imported
only by the driver, so configs with cameras validate without them."""

from drivers.camera.config import CameraDevice, CameraTrigger, DoneFolder, Evidence, Roi
from drivers.registry import DriverKind

KIND = DriverKind(
    type="camera",
    config=CameraDevice,
    driver="drivers.camera.driver:CameraDriver",
    summary="A camera, stream or smart camera's image folder: codes decoded from frames "
    "(zxing-cpp or pyzbar), each a scan.",
    extra="camera",
    requires=("cv2", "zxingcpp"),
    sections=(
        ("trigger", CameraTrigger),
        ("roi", Roi),
        ("evidence", Evidence),
        ("done", DoneFolder),
    ),
)
