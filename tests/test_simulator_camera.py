"""The camera simulator against its own ground truth, decoded by zxing-cpp directly.

This tests the simulator, not the camera driver: GS1 DataMatrix frames carry exactly the
scanner's part code (``]d2``, GS separators, parsed by ``edge_agent.scan.classify`` into the
station's GTIN, serial and lot); distortions within reason still decode and unreadable frames
do not; and the three ways of serving frames (video file, image folder, MJPEG over HTTP)
deliver frames that OpenCV opens and zxing-cpp decodes. cv2 calls block, so the async tests
run them in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

cv2 = pytest.importorskip("cv2", reason="the camera extra is not installed")
zxingcpp = pytest.importorskip("zxingcpp", reason="the camera extra is not installed")

from edge_agent.scan import GS, ScanRule, classify  # noqa: E402
from simulators.camera import (  # noqa: E402
    FIVE_MP,
    RESOLUTIONS,
    SXGA,
    VGA,
    CameraConfig,
    CameraScene,
    Distortions,
    DropFault,
    Fault,
    FrameTruth,
    ImageFolderCamera,
    MjpegCamera,
    Placement,
    Resolution,
    Symbology,
    write_video,
)
from simulators.scanner import Symbol, gs1_value, part_code  # noqa: E402
from simulators.station import GTIN, StationModel  # noqa: E402
from tests.modbus_helpers import wait_until  # noqa: E402

PART = ScanRule(
    name="part",
    gs1=True,
    require=["01", "21"],
    set={"product": "01", "serial": "21", "lot": "10"},
)
MODEL = StationModel(t0=0.0, cycle_time=1.0)
"""Cycle k runs from k to k + 1 s, so frame times are plain numbers."""
READ_TIMEOUT_MS = 1000
"""OpenCV's FFMPEG backend waits 30 s for a stalled stream unless told otherwise."""


def decode(image: Any) -> list[str]:
    """What a reader reports: AIM identifier + the data as encoded (text mode Plain keeps GS)."""
    return [
        b.symbology_identifier + b.text
        for b in zxingcpp.read_barcodes(image, text_mode=zxingcpp.TextMode.Plain)
    ]


def expected(truth: FrameTruth) -> list[str]:
    return [] if truth.payload is None else [truth.payload]


def res_id(resolution: Resolution) -> str:
    return f"{resolution[0]}x{resolution[1]}"


# ---- the code on the part -----------------------------------------------------------------


@pytest.mark.parametrize("resolution", RESOLUTIONS, ids=res_id)
def test_gs1_datamatrix_is_the_scanners_part_code(resolution: Resolution) -> None:
    scene = CameraScene(MODEL, CameraConfig(resolution=resolution))
    frame = scene.render(0, 7.2)  # cycle 7, phase 0.2: in view

    assert frame.image.shape == (resolution[1], resolution[0])
    assert (frame.truth.cycle, frame.truth.in_view) == (7, True)
    assert frame.truth.payload == part_code(MODEL, 7)  # ]d2 01 GTIN 21 serial GS 10 lot
    [text] = decode(frame.image)
    assert text == frame.truth.payload
    assert text.startswith("]d2")
    assert GS in text

    scan = classify(text, [PART])
    assert (scan.status, scan.aim, scan.symbology) == ("accepted", "]d2", "GS1 DataMatrix")
    assert scan.gs1 == {
        "01": GTIN,
        "21": gs1_value(MODEL.serial(7)),
        "10": gs1_value(MODEL.lot(7)),
    }
    assert scan.context == {"product": GTIN, "serial": "SN00000008", "lot": "L00001"}


def test_zxing_default_text_mode_is_not_what_a_scanner_sends() -> None:
    """What the driver must know: zxing-cpp's default text mode (HRI) shows GS1 data as
    ``(01)...(21)...`` without GS, and the AIM identifier is never part of ``text``."""
    frame = CameraScene(MODEL).render(0, 0.1)
    [barcode] = zxingcpp.read_barcodes(frame.image)
    assert barcode.symbology_identifier == "]d2"
    assert barcode.content_type == zxingcpp.ContentType.GS1
    assert barcode.text == f"(01){GTIN}(21)SN00000001(10)L00001"
    assert "]d2" + barcode.bytes.decode() == frame.truth.payload


@pytest.mark.parametrize(
    ("symbology", "resolution", "size"),
    [
        (Symbology.GS1_QR, VGA, 0.3),
        (Symbology.GS1_128, FIVE_MP, 0.8),  # ~320 modules: needs the pixels
        (Symbology.DATAMATRIX, VGA, 0.3),
        (Symbology.QR, VGA, 0.3),
        (Symbology.CODE128, VGA, 0.8),
    ],
)
def test_other_symbologies(symbology: Symbology, resolution: Resolution, size: float) -> None:
    config = CameraConfig(
        resolution=resolution, symbology=symbology, placement=Placement(size=size)
    )
    frame = CameraScene(MODEL, config).render(0, 2.5)

    data = part_code(MODEL, 2, Symbol(aim=None)) if symbology.gs1 else MODEL.serial(2)
    assert frame.truth.payload == symbology.aim + data
    assert decode(frame.image) == [frame.truth.payload]


DISTORTIONS = {
    "rotated 30": Distortions(rotation=30),
    "rotated 90": Distortions(rotation=90),
    "rotated 200": Distortions(rotation=200),
    "blurred": Distortions(blur=1.5),
    "noisy": Distortions(noise=12),
    "low contrast": Distortions(contrast=0.25),
    "inverted (dot-peened)": Distortions(invert=True),
    "all at once": Distortions(rotation=-20, blur=1.0, noise=6, contrast=0.4, invert=True),
}


@pytest.mark.parametrize("distortions", DISTORTIONS.values(), ids=DISTORTIONS.keys())
def test_distortions_within_reason_still_decode(distortions: Distortions) -> None:
    placement = Placement(jitter=0.05, rotation_jitter=10)
    scene = CameraScene(MODEL, CameraConfig(distortions=distortions, placement=placement))
    for cycle in range(3):
        frame = scene.render(cycle, cycle + 0.3)
        applied = frame.truth.distortions
        assert abs(applied.rotation - distortions.rotation) <= 10
        assert applied == Distortions(
            applied.rotation,
            distortions.blur,
            distortions.noise,
            distortions.contrast,
            distortions.invert,
        )
        assert decode(frame.image) == [frame.truth.payload]


def test_colour_frames_decode() -> None:
    scene = CameraScene(MODEL, CameraConfig(color=True, distortions=DISTORTIONS["all at once"]))
    frame = scene.render(0, 0.1)
    assert frame.image.shape == (480, 640, 3)
    assert decode(frame.image) == [frame.truth.payload]


def test_noise_and_jitter_are_seeded() -> None:
    config = CameraConfig(
        distortions=Distortions(noise=8), placement=Placement(jitter=0.1, rotation_jitter=20)
    )
    a, b = CameraScene(MODEL, config), CameraScene(MODEL, config)
    assert (a.render(5, 0.2).image == b.render(5, 0.2).image).all()
    assert (a.render(5, 0.2).image != a.render(6, 0.2).image).any()  # new noise each frame
    assert a.truth(0, 3.2) == b.truth(0, 3.2)
    other = CameraScene(MODEL, CameraConfig(placement=config.placement, seed=1))
    assert other.truth(0, 3.2).box != a.truth(0, 3.2).box


@pytest.mark.parametrize("resolution", RESOLUTIONS, ids=res_id)
@pytest.mark.parametrize("fault", list(Fault))
def test_unreadable_parts_do_not_decode(fault: Fault, resolution: Resolution) -> None:
    scene = CameraScene(MODEL, CameraConfig(resolution=resolution, faults={1: fault}))
    bad, good = scene.render(0, 1.3), scene.render(1, 2.3)

    assert (bad.truth.fault, bad.truth.payload) == (fault, None)
    assert (bad.truth.code is None) == (fault is Fault.MISSING)
    assert decode(bad.image) == []
    assert decode(good.image) == [good.truth.payload]


def test_fault_rates_are_seeded_draws_per_part() -> None:
    config = CameraConfig(fault_rates={Fault.COVERED: 0.2, Fault.MISSING: 0.1}, seed=3)
    scene, again = CameraScene(MODEL, config), CameraScene(MODEL, config)
    faults = [scene.part_fault(k) for k in range(300)]

    assert faults == [again.part_fault(k) for k in range(300)]
    assert 30 <= faults.count(Fault.COVERED) <= 90
    assert 10 <= faults.count(Fault.MISSING) <= 50
    reseeded = CameraScene(MODEL, CameraConfig(fault_rates=config.fault_rates, seed=4))
    assert faults != [reseeded.part_fault(k) for k in range(300)]


def test_frames_follow_the_station_clock() -> None:
    model = StationModel(t0=100.0, cycle_time=0.5)
    scene = CameraScene(model, CameraConfig(fps=10, dwell=0.5))
    frames = list(scene.frames(20))

    for frame in frames:
        cycle, phase = model.cycle_at(frame.truth.t)
        assert (frame.truth.cycle, frame.truth.in_view) == (cycle, phase < 0.5)
        assert frame.truth.payload == (part_code(model, cycle) if phase < 0.5 else None)
    assert [f.truth.in_view for f in frames[:5]] == [True, True, True, False, False]
    assert [f.truth.cycle for f in frames[::5]] == [0, 1, 2, 3]
    assert decode(frames[4].image) == []  # the empty background between parts


def test_placement_puts_the_code_in_a_region_of_interest() -> None:
    placement = Placement(center=(0.25, 0.3), size=0.15)
    frame = CameraScene(MODEL, CameraConfig(resolution=SXGA, placement=placement)).render(0, 0.2)
    assert frame.truth.box is not None
    x, y, w, h = frame.truth.box
    assert (x + w <= 640, y + h <= 480) == (True, True)  # in the top-left quarter

    roi = frame.image[y - 20 : y + h + 20, x - 20 : x + w + 20]
    assert decode(roi) == [frame.truth.payload]
    assert decode(frame.image[:, 640:]) == []
    [barcode] = zxingcpp.read_barcodes(frame.image)
    corner = barcode.position.top_left
    assert x - 3 <= corner.x <= x + w + 3
    assert y - 3 <= corner.y <= y + h + 3


def test_bad_configuration_is_reported_whole() -> None:
    with pytest.raises(ValueError, match="camera configuration invalid") as info:
        CameraConfig(fps=0, dwell=1.5, placement=Placement(size=2))
    assert all(word in str(info.value) for word in ("fps", "dwell", "placement.size"))
    with pytest.raises(ValueError, match="handshake"):
        CameraScene(StationModel(handshake=True))


# ---- served three ways --------------------------------------------------------------------


def test_video_file_reads_back_frame_for_frame(tmp_path: Path) -> None:
    model = StationModel(t0=0.0, cycle_time=0.5)
    config = CameraConfig(fps=10, dwell=0.7, distortions=Distortions(noise=4))
    scene = CameraScene(model, config)
    path = tmp_path / "line.avi"
    truths = write_video(scene, path, 25)

    cap = cv2.VideoCapture(str(path))
    decoded: list[list[str]] = []
    try:
        assert cap.isOpened()
        assert (cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)) == (25, 10)
        while True:
            ok, image = cap.read()
            if not ok:
                break
            decoded.append(decode(image))
    finally:
        cap.release()
    assert decoded == [expected(t) for t in truths]
    assert [t.cycle for t in truths[::5]] == [0, 1, 2, 3, 4]
    assert sum(t.payload is not None for t in truths) == 20  # 4 of each cycle's 5 frames


async def test_image_folder_gets_whole_files_at_the_cycle_rate(tmp_path: Path) -> None:
    cycle_time = 0.15
    t0 = time.monotonic() + 0.05
    model = StationModel(t0=t0, cycle_time=cycle_time)
    folder = tmp_path / "ftp"
    faults = {2: DropFault.TRUNCATED, 3: DropFault.WRONG_FORMAT, 4: DropFault.STRAY}
    sizes_seen: dict[str, int] = {}

    def watch() -> bool:
        """Note each file's size when first listed; true once all have been dropped."""
        for path in folder.iterdir() if folder.exists() else ():
            if path.name not in sizes_seen:
                with contextlib.suppress(FileNotFoundError):  # a temporary file, renamed
                    sizes_seen[path.name] = path.stat().st_size
        return len(cam.drops) == 7

    async with ImageFolderCamera(CameraScene(model), folder, max_shots=6, faults=faults) as cam:
        await wait_until(watch, within=5.0, what="six pictures")
    drops = cam.drops

    assert [(d.cycle, d.fault) for d in drops] == [
        (0, None),
        (1, None),
        (2, DropFault.TRUNCATED),
        (3, DropFault.WRONG_FORMAT),
        (4, None),
        (4, DropFault.STRAY),
        (5, None),
    ]
    for d in drops:
        assert d.due == pytest.approx(t0 + (d.cycle + 0.1) * cycle_time)
        assert d.due <= d.at < d.due + cycle_time  # one picture per cycle, in its cycle
    assert sorted(p.name for p in folder.iterdir()) == [d.path.name for d in drops]
    # Atomic: whenever a final name was listed, the file was already whole.
    finals = {n: s for n, s in sizes_seen.items() if not n.startswith(".")}
    assert finals == {d.path.name: d.size for d in drops if d.path.name in finals}
    assert all(n.endswith(".part") for n in sizes_seen.keys() - finals.keys())

    for d in drops:
        image = cv2.imread(str(d.path), cv2.IMREAD_UNCHANGED)
        if d.readable:
            assert d.truth is not None
            assert decode(image) == expected(d.truth) == [part_code(model, d.cycle)]
        elif d.fault is DropFault.STRAY:
            assert (d.path.suffix, d.truth) == (".txt", None)
        else:
            assert image is None  # truncated PNG or not an image at all


def open_stream(url: str) -> Any:
    return cv2.VideoCapture(
        url,
        cv2.CAP_FFMPEG,
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 3000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS],
    )


def read_decoded(cap: Any, count: int) -> list[list[str] | None]:
    """Read ``count`` frames: each one's decoded codes, or None for a failed read."""
    out: list[list[str] | None] = []
    for _ in range(count):
        ok, image = cap.read()
        out.append(decode(image) if ok else None)
    return out


async def test_mjpeg_stream_opens_in_opencv_and_decodes() -> None:
    scene = CameraScene(StationModel(cycle_time=0.4), CameraConfig(fps=25))
    async with MjpegCamera(scene) as cam:
        cap = await asyncio.to_thread(open_stream, cam.url)
        try:
            assert cap.isOpened()
            assert cap.getBackendName() == "FFMPEG"
            reads = await asyncio.to_thread(read_decoded, cap, 15)
        finally:
            await asyncio.to_thread(cap.release)

    assert None not in reads
    decoded = [r[0] if r else None for r in reads]
    assert set(decoded) <= {t.payload for t in cam.published}
    serials = [classify(d, [PART]).context["serial"] for d in decoded if d is not None]
    assert serials
    assert serials == sorted(serials)
    assert {s.connection for s in cam.sent} == {1}


async def test_mjpeg_stream_dies_and_returns() -> None:
    scene = CameraScene(StationModel(cycle_time=0.5), CameraConfig(fps=25))
    async with MjpegCamera(scene) as cam:
        url = cam.url
        cap = await asyncio.to_thread(open_stream, url)
        try:
            assert None not in await asyncio.to_thread(read_decoded, cap, 2)
            await cam.kill()
            assert (cam.alive, cam.clients) == (False, 0)
            assert await asyncio.to_thread(read_decoded, cap, 1) == [None]  # the stream ended
        finally:
            await asyncio.to_thread(cap.release)
        refused = await asyncio.to_thread(open_stream, url)
        assert not refused.isOpened()

        await cam.resume()
        assert cam.url == url
        cap = await asyncio.to_thread(open_stream, url)
        try:
            reads = await asyncio.to_thread(read_decoded, cap, 3)
            assert None not in reads
            assert any(reads)

            cam.stall()  # open connection, no frames: the read times out, the capture is done
            started = time.monotonic()
            assert await asyncio.to_thread(read_decoded, cap, 1) == [None]
            assert time.monotonic() - started >= READ_TIMEOUT_MS / 1000 * 0.9
            await cam.resume()
        finally:
            await asyncio.to_thread(cap.release)
        cap = await asyncio.to_thread(open_stream, url)
        try:
            assert None not in await asyncio.to_thread(read_decoded, cap, 2)
        finally:
            await asyncio.to_thread(cap.release)
    assert cam.connections == 3
