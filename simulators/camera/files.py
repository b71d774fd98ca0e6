"""Frames as files: an image file's bytes (:func:`encode_image`, also what the live cameras
drop and stream) and a video file (:func:`write_video`: MJPG in AVI, each frame a JPEG, close
enough to lossless for decoding; frame ``i`` at ``t0 + i / fps``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from simulators.camera.scene import CameraScene, FrameTruth, Image


def encode_image(image: Image, ext: str, jpeg_quality: int = 90) -> bytes:
    """``image`` as a ``.png`` or ``.jpg`` file's bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if ext in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(ext, image, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {ext} image")
    return bytes(data.tobytes())


def write_video(
    scene: CameraScene, path: Path, count: int, *, first: int = 0, fourcc: str = "MJPG"
) -> list[FrameTruth]:
    """Write frames ``first`` .. ``first + count - 1`` to ``path`` (``.avi`` for MJPG) at the
    scene's fps; return their truth. CPU-bound: call it with ``asyncio.to_thread`` from a
    loop."""
    w, h = scene.config.resolution
    code = cv2.VideoWriter.fourcc(*fourcc)
    writer = cv2.VideoWriter(str(path), code, scene.config.fps, (w, h), True)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} video to {path}")
    truths: list[FrameTruth] = []
    try:
        for frame in scene.frames(count, first):
            image = frame.image
            if image.ndim == 2:
                image = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
            writer.write(image)
            truths.append(frame.truth)
    finally:
        writer.release()
    return truths
