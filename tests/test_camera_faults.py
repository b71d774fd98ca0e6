"""Cameras when things go wrong: decoding slower than the camera drops frames (counted)
instead of queueing them; bad input (corrupt images, wrong size or pixel format, an evidence
folder that cannot be written) is a rejected scan or a degraded device with the reason; a
stream that dies, a folder that goes away or a URL that never answers is down, and comes back.

The one stand-in is ``SlowDecoder`` (the real zxing decoder plus a sleep), used only to show
drops: the real decoder is faster than any camera the simulator can serve.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

cv2 = pytest.importorskip("cv2", reason="the camera extra is not installed")
zxingcpp = pytest.importorskip("zxingcpp", reason="the camera extra is not installed")

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from drivers.camera.config import CameraDevice  # noqa: E402
from drivers.camera.decoding import Code, Gray, ZxingDecoder  # noqa: E402
from drivers.camera.driver import CameraDriver  # noqa: E402
from kernel.errors import ConnectError  # noqa: E402
from kernel.model import DeviceState, Quality  # noqa: E402
from simulators.camera import (  # noqa: E402
    SXGA,
    CameraConfig,
    CameraScene,
    MjpegCamera,
)
from simulators.station import StationModel  # noqa: E402
from tests.camera_helpers import (  # noqa: E402
    CLOCK,
    camera,
    drop,
    empty_image,
    kept_bytes,
    listing,
    part_image,
    png,
    scans,
    state,
)
from tests.modbus_helpers import Collector  # noqa: E402
from tests.modbus_helpers import start_device as start  # noqa: E402
from tests.modbus_helpers import stop_task as stop  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(120)


# ---- never block, never grow ------------------------------------------------------------------


class SlowDecoder:
    """The real zxing decoder, 0.2 s slower per frame: decoding that cannot keep up with a
    30 fps camera. A stand-in used only to show that frames are dropped, not queued."""

    name = "slow"

    def __init__(self, config: CameraDevice) -> None:
        self._real = ZxingDecoder(config)

    def decode(self, image: Gray, offset: tuple[int, int]) -> list[Code]:
        time.sleep(0.2)
        return self._real.decode(image, offset)


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


async def test_decoding_slower_than_the_camera_drops_frames_and_memory_stays_flat() -> None:
    model = StationModel(cycle_time=1.0)
    config = CameraConfig(resolution=SXGA, fps=30, color=True)  # 3.7 MB a frame
    async with MjpegCamera(CameraScene(model, config)) as cam:
        dev = camera(url=cam.url, open_timeout=2, read_timeout=2)
        driver = CameraDriver(dev, decoder=SlowDecoder(dev))
        sink = Collector()
        task = await start(driver, sink)
        peak = 0
        try:
            await wait_until(lambda: driver.counters.frames >= 10, within=10, what="frames")
            base = rss()

            def sampled() -> bool:
                nonlocal peak
                peak = max(peak, rss() - base)
                return driver.status.dropped >= 60

            await wait_until(sampled, within=20, what="60 frames dropped")
        finally:
            await stop(task)
    c = driver.counters
    # Each frame is decoded or dropped; none waits anywhere (at most one in the slot and one
    # being decoded).
    assert 0 <= c.frames - c.decoded - c.dropped <= 3, c
    assert c.decoded < c.dropped
    # 60 queued frames would be 220 MB more.
    assert peak < 60_000_000, f"memory grew by {peak / 1e6:.0f} MB"
    assert scans(sink), "the newest frames were still decoded"


# ---- bad input ----------------------------------------------------------------------------------


def float_tiff() -> bytes:
    ok, data = cv2.imencode(".tiff", np.zeros((48, 64), np.float32))
    assert ok
    return bytes(data.tobytes())


@pytest.mark.parametrize(
    ("name", "data", "extra", "error"),
    [
        ("cut.png", png(part_image(1))[:2000], {},
         "image cut.png (2000 bytes) is not an image OpenCV can read: corrupt, cut short, or another format"),
        ("text.png", b"camera 12: result OK, image upload failed\n", {},
         "image text.png (42 bytes) is not an image OpenCV can read: corrupt, cut short, or another format"),
        ("small.png", png(part_image(1)), {"width": 320, "height": 240},
         "frame is 640x480, expected 320x240 (width, height)"),
        ("float.tiff", float_tiff(), {},
         "pixels of type float32 (only 8 or 16 bit are decoded)"),
        ("roi.png", png(part_image(1)), {"roi": {"x": 600, "y": 0, "width": 100, "height": 100}},
         "the region of interest (600,0 100x100) is outside the 640x480 frame"),
    ],
)  # fmt: skip
async def test_a_bad_image_is_a_rejected_scan_with_the_reason(
    inbox: Path, tmp_path: Path, name: str, data: bytes, extra: dict[str, Any], error: str
) -> None:
    evidence = tmp_path / "evidence"
    dev = camera(folder=str(inbox), settle=0.0, evidence={"folder": str(evidence)}, **extra)
    driver = CameraDriver(dev)
    sink = Collector()
    task = await start(driver, sink)
    try:
        drop(inbox, name, data)
        await wait_until(lambda: scans(sink), what="the rejected image")
        await wait_until(lambda: not any(inbox.iterdir()), what="the image removed")
    finally:
        await stop(task)
    (obs,) = scans(sink)
    assert (obs.quality, obs.value, obs.error) == (Quality.BAD, None, error)
    assert obs.detail is not None
    assert kept_bytes(obs) == data
    assert Path(str(obs.detail["frame_file"])).suffix == Path(name).suffix
    assert driver.counters.unusable == 1
    assert state(driver) is DeviceState.UP, "a bad image is the image's problem"


async def test_a_streams_frames_of_the_wrong_size_make_the_device_degraded() -> None:
    """One rejected scan per frame would be thirty a second: a live camera's unusable frames
    are the device's state, with the reason, until a good frame comes."""
    model = StationModel(cycle_time=0.5)
    async with MjpegCamera(CameraScene(model, CameraConfig(fps=10))) as cam:
        dev = camera(url=cam.url, width=1280, height=960, open_timeout=2, read_timeout=2)
        driver = CameraDriver(dev)
        sink = Collector()
        task = await start(driver, sink)
        try:
            await wait_until(lambda: state(driver) is DeviceState.DEGRADED, what="degraded")
            await wait_until(lambda: driver.counters.unusable >= 5, what="more frames")
        finally:
            await stop(task)
    assert (
        driver.status.last_error
        == "frames unusable: frame is 640x480, expected 1280x960 (width, height)"
    )
    assert scans(sink) == []


async def test_an_evidence_folder_that_cannot_be_written_is_said_not_hidden(
    inbox: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    dev = camera(folder=str(inbox), settle=0.0, evidence={"folder": str(blocker / "evidence")})
    driver = CameraDriver(dev)
    sink = Collector()
    task = await start(driver, sink)
    try:
        drop(inbox, "shot.png", png(empty_image()))
        await wait_until(lambda: scans(sink), what="the no-read")
        await wait_until(lambda: state(driver) is DeviceState.DEGRADED, what="degraded")
    finally:
        await stop(task)
    (obs,) = scans(sink)
    assert obs.error == "no code in image shot.png"
    assert obs.detail is not None
    assert "frame_file" not in obs.detail
    assert str(obs.detail["evidence_error"]).startswith(f"evidence folder {blocker / 'evidence'}: ")
    assert driver.status.last_error == obs.detail["evidence_error"]


async def test_a_16_bit_colour_image_is_read(inbox: Path) -> None:
    image = cv2.cvtColor(part_image(3), cv2.COLOR_GRAY2BGRA).astype(np.uint16) * 257
    driver = CameraDriver(camera(folder=str(inbox), settle=0.0))
    sink = Collector()
    task = await start(driver, sink)
    try:
        drop(inbox, "deep.png", png(image))
        await wait_until(lambda: scans(sink), what="the scan")
    finally:
        await stop(task)
    assert scans(sink)[0].value == CameraScene(CLOCK).code(3)


async def test_processed_images_move_to_a_bounded_done_folder(inbox: Path, tmp_path: Path) -> None:
    done = tmp_path / "done"
    dev = camera(
        folder=str(inbox), settle=0.0, pattern="*.png", done={"folder": str(done), "max_files": 2}
    )
    driver = CameraDriver(dev)
    sink = Collector()
    task = await start(driver, sink)
    try:
        (inbox / "result.txt").write_text("OK")  # not an image of the pattern: left alone
        for k in range(3):
            drop(inbox, f"part{k}.png", png(part_image(k)))
            await wait_until(lambda k=k: len(scans(sink)) == k + 1, what=f"part {k}")
        await wait_until(lambda: len(list(done.iterdir())) == 2, what="two kept")
    finally:
        await stop(task)
    assert listing(inbox) == ["result.txt"]
    assert [name.split("-", 3)[3] for name in listing(done)] == ["part1.png", "part2.png"]


# ---- the camera lost ---------------------------------------------------------------------------


async def test_a_stream_that_dies_is_down_and_up_again_when_it_returns() -> None:
    model = StationModel(cycle_time=0.5)
    async with MjpegCamera(CameraScene(model, CameraConfig(fps=10))) as cam:
        dev = camera(
            url=cam.url, open_timeout=1, read_timeout=0.5, backoff_initial=0.05, backoff_max=0.2
        )
        driver = CameraDriver(dev)
        sink = Collector()
        task = await start(driver, sink)
        try:
            await wait_until(lambda: scans(sink), within=10, what="a first scan")
            await cam.kill()
            await wait_until(lambda: state(driver) is DeviceState.DOWN, what="down")
            lost = driver.status.last_error
            outage = scans(sink)[-1]
            await cam.resume()
            await wait_until(lambda: state(driver) is DeviceState.UP, within=10, what="up")
            before = len(scans(sink))
            await wait_until(lambda: len(scans(sink)) > before, within=10, what="scans again")
            cam.stall()
            await wait_until(lambda: state(driver) is DeviceState.DOWN, within=10, what="stalled")
            stalled = driver.status.last_error
            await cam.resume()
            await wait_until(lambda: state(driver) is DeviceState.UP, within=10, what="up again")
        finally:
            await stop(task)
    assert lost is not None
    assert lost.startswith(f"device 'cam10': {cam.url}: ")
    assert (outage.quality, outage.value) == (Quality.BAD, None)
    assert stalled is not None
    assert re.search(r"no frame within (0\.5|1) s|no answer within 1 s", stalled), stalled
    assert driver.status.reconnects >= 2


async def test_a_watched_folder_that_goes_away_is_down_until_it_is_back(inbox: Path) -> None:
    dev = camera(folder=str(inbox), settle=0.0, backoff_initial=0.05, backoff_max=0.2)
    driver = CameraDriver(dev)
    sink = Collector()
    task = await start(driver, sink)
    try:
        await wait_until(lambda: state(driver) is DeviceState.UP, what="open")
        away = inbox.with_name("unmounted")
        os.rename(inbox, away)
        await wait_until(lambda: state(driver) is DeviceState.DOWN, what="down")
        assert driver.status.last_error == (
            f"device 'cam10': watched folder {inbox} does not exist (not mounted?)"
        )
        os.rename(away, inbox)
        await wait_until(lambda: state(driver) is DeviceState.UP, what="up again")
        drop(inbox, "part5.png", png(part_image(5)))
        await wait_until(lambda: any(o.quality is Quality.GOOD for o in scans(sink)), what="read")
    finally:
        await stop(task)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never says a word."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/video.mjpg"
    finally:
        srv.close()


async def test_a_url_that_never_answers_is_down_with_the_timeout(silent_server: str) -> None:
    dev = camera(url=silent_server, open_timeout=0.5, backoff_initial=5, backoff_max=5)
    driver = CameraDriver(dev)
    with pytest.raises(ConnectError, match=r"no answer within 0\.5 s \(open_timeout\)"):
        await driver.open()
    sink = Collector()
    task = await start(driver, sink)
    try:
        await wait_until(lambda: state(driver) is DeviceState.DOWN, what="down")
    finally:
        await stop(task)
    assert driver.status.last_error == (
        f"device 'cam10': {silent_server}: no answer within 0.5 s (open_timeout)"
    )
    (outage,) = scans(sink)
    assert outage.error == driver.status.last_error


async def test_a_refused_url_is_down_with_the_reason() -> None:
    from simulators.broker import free_port

    url = f"http://127.0.0.1:{free_port()}/video.mjpg"
    driver = CameraDriver(camera(url=url, open_timeout=2))
    with pytest.raises(ConnectError) as caught:
        await driver.open()
    assert caught.value.reason == f"{url}: refused, not found, or not a video stream"
