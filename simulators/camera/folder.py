"""Frames served as an image folder: :class:`ImageFolderCamera`, a "smart camera" or FTP
client dropping one image per part into a folder, at the cycle rate.

Each file is written under a hidden temporary name and then renamed, as FTP servers do, so a
reader never sees half a file. Faults per drop (:class:`DropFault`): a truncated image, a file
with the image's name that is no image, and a stray non-image file beside the images (smart
cameras write result files). :attr:`ImageFolderCamera.drops` is the ground truth
(:class:`DroppedFile`), in order.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Literal

from simulators.camera.files import encode_image
from simulators.camera.live import _LiveCamera
from simulators.camera.scene import CameraScene, FrameTruth


class DropFault(StrEnum):
    """What can go wrong with one file of an :class:`ImageFolderCamera`."""

    TRUNCATED = "truncated"
    """The part's image, cut off after half its bytes (a corrupt image). ``cv2.imread`` gives
    None for a truncated PNG but an image (its lower part grey) for a truncated JPEG."""
    WRONG_FORMAT = "wrong_format"
    """A file with the image's name and extension whose content is no image (text)."""
    STRAY = "stray"
    """A text file with another extension dropped *beside* the part's (good) image."""


@dataclass(frozen=True)
class DroppedFile:
    """One file the folder camera dropped (renamed into place at ``at``)."""

    seq: int
    cycle: int
    path: Path
    due: float
    """When the picture was taken: the start of the cycle plus ``shot_phase``."""
    at: float
    """When the file appeared under its final name (monotonic)."""
    size: int
    fault: DropFault | None
    truth: FrameTruth | None
    """The picture's truth (None for a stray file). A truncated or wrong-format file keeps
    the picture's truth; its ``payload`` is what the image would have given."""

    @property
    def readable(self) -> bool:
        """The file is a whole image whose code a reader should decode."""
        return self.fault is None and self.truth is not None and self.truth.payload is not None


class ImageFolderCamera(_LiveCamera):
    """A smart camera dropping one image per part into ``folder`` (module doc).

    ``async with ImageFolderCamera(scene, tmp_path / "in") as cam:`` -- the agent watches the
    folder; ``cam.drops`` is the ground truth, in order.
    """

    def __init__(
        self,
        scene: CameraScene,
        folder: Path,
        *,
        ext: Literal[".png", ".jpg"] = ".png",
        prefix: str = "img_",
        shot_phase: float = 0.1,
        first_cycle: int | None = None,
        max_shots: int | None = None,
        faults: Mapping[int, DropFault] | None = None,
    ) -> None:
        super().__init__(scene, "camera-folder")
        if not 0.0 <= shot_phase < scene.config.dwell:
            raise ValueError(
                f"camera configuration invalid: shot_phase {shot_phase} is not in "
                f"[0, dwell = {scene.config.dwell})"
            )
        self.folder = folder
        self.ext = ext
        self.prefix = prefix
        self.shot_phase = shot_phase
        self.first_cycle = first_cycle
        self.max_shots = max_shots
        self.faults: dict[int, DropFault] = dict(faults or {})
        """Cycle -> fault of that cycle's drop."""
        self.drops: list[DroppedFile] = []
        """Every file dropped, in order."""

    async def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        await super().start()
        self._spawn(self._run(), name="camera-folder-schedule")

    def inject(self, fault: DropFault, cycle: int) -> None:
        """Give part ``cycle``'s drop ``fault`` (if it is not dropped yet)."""
        self.faults[cycle] = fault

    def due(self, cycle: int) -> float:
        return self.scene.t0 + (cycle + self.shot_phase) * self.scene.model.cycle_time

    def temp_name(self, name: str) -> str:
        """Where a file is written before the rename: hidden, with a ``.part`` suffix."""
        return f".{name}.part"

    async def _run(self) -> None:
        model = self.scene.model
        k = self.first_cycle
        if k is None:
            now = self.started_at or time.monotonic()
            k = max(0, math.ceil((now - self.scene.t0) / model.cycle_time - self.shot_phase))
        shots = 0
        while self.max_shots is None or shots < self.max_shots:
            due = self.due(k)
            await self._sleep_until(due)
            self.drops += await self._in_thread(self._shoot, shots, k, due, self.faults.get(k))
            shots += 1
            k += 1

    def _shoot(
        self, seq: int, cycle: int, due: float, fault: DropFault | None
    ) -> list[DroppedFile]:
        """(Render thread) take part ``cycle``'s picture and drop its file(s); reads only
        what does not change (the scene, the folder)."""
        frame = self.scene.render(seq, due)
        data = encode_image(frame.image, self.ext, self.scene.config.jpeg_quality)
        name = f"{self.prefix}{seq:06d}"
        drops: list[DroppedFile] = []
        if fault is DropFault.TRUNCATED:
            data = data[: len(data) // 2]
        elif fault is DropFault.WRONG_FORMAT:
            data = f"camera {name}: result OK, image upload failed\n".encode()
        drops.append(self._drop(seq, cycle, name + self.ext, data, due, fault, frame.truth))
        if fault is DropFault.STRAY:
            drops[0] = replace(drops[0], fault=None)
            text = f"{name};cycle={cycle};result=OK\n".encode()
            drops.append(self._drop(seq, cycle, name + ".txt", text, due, fault, None))
        return drops

    def _drop(
        self,
        seq: int,
        cycle: int,
        name: str,
        data: bytes,
        due: float,
        fault: DropFault | None,
        truth: FrameTruth | None,
    ) -> DroppedFile:
        final = self.folder / name
        temp = self.folder / self.temp_name(name)
        temp.write_bytes(data)
        os.replace(temp, final)
        return DroppedFile(seq, cycle, final, due, time.monotonic(), len(data), fault, truth)
