"""Cameras end to end: the camera driver against the camera simulator's three sources (a
watched folder of a smart camera's images, an HTTP MJPEG stream, a video file), with the
frames' ground truth from the station scenario.

Decoded codes are scans with the AIM identifier and GS separators kept, so the scan rules see
GS1 (serial, lot, GTIN); continuous mode gives one scan per part, triggered mode one scan or
one no-read per trigger; no-reads keep their frame in a bounded evidence folder. The last test
runs the whole agent: a camera read sets the station's serial and the PLC's values bind to it.
What goes wrong (drops, bad input, a lost camera) is in ``test_camera_faults.py``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

cv2 = pytest.importorskip("cv2", reason="the camera extra is not installed")
zxingcpp = pytest.importorskip("zxingcpp", reason="the camera extra is not installed")

import numpy as np  # noqa: E402

from drivers.camera.decoding import Code, ZbarDecoder, text_problem  # noqa: E402
from drivers.camera.driver import CameraDriver  # noqa: E402
from edge_agent.config import agent_model  # noqa: E402
from edge_agent.daemon import Agent  # noqa: E402
from edge_agent.scan import GS, classify  # noqa: E402
from kernel.model import DeviceState, Quality  # noqa: E402
from simulators.camera import (  # noqa: E402
    FIVE_MP,
    VGA,
    CameraConfig,
    CameraScene,
    Fault,
    MjpegCamera,
    Placement,
    Resolution,
    Symbology,
    write_video,
)
from simulators.consumer import RecordCollector  # noqa: E402
from simulators.modbus_server import ModbusStationServer  # noqa: E402
from simulators.scenario import demo_config  # noqa: E402
from simulators.station import GTIN, StationModel  # noqa: E402
from tests.camera_helpers import (  # noqa: E402
    CLOCK,
    PART,
    camera,
    drop,
    empty_image,
    kept_bytes,
    part_image,
    png,
    scans,
    state,
)
from tests.modbus_helpers import Collector  # noqa: E402
from tests.modbus_helpers import start_device as start  # noqa: E402
from tests.modbus_helpers import stop_task as stop  # noqa: E402
from tests.mqtt_helpers import Mosquitto  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(120)


# ---- what a code becomes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbology", "resolution", "size", "decoder", "formats"),
    [
        (Symbology.GS1_DATAMATRIX, VGA, 0.3, "zxing", ["DataMatrix"]),
        (Symbology.GS1_QR, VGA, 0.3, "zxing", ["QRCode"]),
        (Symbology.GS1_128, FIVE_MP, 0.8, "zxing", ["Code128"]),
        (Symbology.GS1_128, FIVE_MP, 0.8, "pyzbar", ["Code128"]),
        (Symbology.QR, VGA, 0.3, "pyzbar", ["QRCode"]),
    ],
)
async def test_a_code_in_an_image_is_a_scan_the_rules_understand(
    inbox: Path,
    symbology: Symbology,
    resolution: Resolution,
    size: float,
    decoder: str,
    formats: list[str],
) -> None:
    """zxing's text is what a scanner sends: AIM identifier, GS kept, so a GS1 rule finds the
    serial, lot and GTIN. zbar's has no identifier (it does not report FNC1): GS1 rules that
    require their AIs still match it."""
    if decoder == "pyzbar":
        pytest.importorskip("pyzbar.pyzbar", reason="pyzbar (and libzbar0) not installed")
    config = CameraConfig(
        resolution=resolution, symbology=symbology, placement=Placement(size=size)
    )
    scene = CameraScene(CLOCK, config)
    frame = scene.render(7, 7.1)
    truth = frame.truth.code
    assert truth is not None
    driver = CameraDriver(
        camera(folder=str(inbox), settle=0.0, decoder=decoder, formats=formats, window=1)
    )
    sink = Collector()
    task = await start(driver, sink)
    try:
        drop(inbox, "part7.png", png(frame.image))
        await wait_until(lambda: scans(sink), what="the scan")
        await wait_until(lambda: not any(inbox.iterdir()), what="the image deleted")
    finally:
        await stop(task)
    (obs,) = scans(sink)
    assert obs.quality is Quality.GOOD, obs.error
    expected = truth if decoder == "zxing" else truth[3:]
    assert obs.value == expected
    assert obs.detail is not None
    assert obs.detail["format"] == formats[0]
    assert obs.detail["image"] == "part7.png"
    x, y, w, h = frame.truth.box or (0, 0, 0, 0)
    corners = [tuple(map(int, c.split(","))) for c in str(obs.detail["position"]).split()]
    assert all(x - 5 <= cx <= x + w + 5 and y - 5 <= cy <= y + h + 5 for cx, cy in corners)
    if symbology.gs1:
        scan = classify(str(obs.value), [PART])
        assert scan.status == "accepted"
        assert scan.context == {"serial": CLOCK.serial(7), "lot": CLOCK.lot(7), "product": GTIN}
        assert GS in str(obs.value)
        if decoder == "zxing":
            assert (scan.aim, scan.gs1 is not None) == (symbology.aim, True)
    else:
        assert obs.value == CLOCK.serial(7)


def test_text_that_cannot_be_a_scan_says_why() -> None:
    cases = {
        "]d2010950110102091721SN1\x1d10L1": None,
        "": "empty code",
        "AB\x07CD": "control character 0x07 at position 2",
        "\xff\xfe\x80abc": "control character 0x80 at position 2",
        "ok\ufffd": "the decoder could not map the code's bytes to text (position 2)",
    }
    assert {text: text_problem(text) for text in cases} == cases


async def test_a_code_with_control_characters_is_a_rejected_scan(inbox: Path) -> None:
    barcode = zxingcpp.create_barcode("AB\x07CD", zxingcpp.BarcodeFormat.QRCode)
    image = np.pad(np.array(barcode.to_image(scale=6)), 40, constant_values=255)
    evidence = inbox.parent / "evidence"
    driver = CameraDriver(
        camera(
            folder=str(inbox), settle=0.0, formats=["QRCode"], evidence={"folder": str(evidence)}
        )
    )
    sink = Collector()
    task = await start(driver, sink)
    try:
        drop(inbox, "bad.png", png(image))
        await wait_until(lambda: scans(sink), what="the rejected scan")
    finally:
        await stop(task)
    (obs,) = scans(sink)
    assert (obs.quality, obs.value, obs.error) == (
        Quality.BAD, None, "control character 0x07 at position 2"
    )  # fmt: skip
    assert obs.detail is not None
    assert (obs.detail["text"], obs.detail["length"]) == ("]Q1AB\\x07CD", 8)
    assert kept_bytes(obs) == png(image)


def test_zbar_bytes_that_are_not_utf8_are_rejected() -> None:
    """zbar transcodes what it reads to UTF-8; a symbol it cannot transcode comes through as
    raw bytes, which are then no text (its own Decoded record, filled here by hand)."""
    pyzbar = pytest.importorskip("pyzbar.pyzbar", reason="pyzbar (and libzbar0) not installed")
    Decoded, Point, Rect = pyzbar.Decoded, pyzbar.Point, pyzbar.Rect

    decoder = ZbarDecoder(camera(folder="/tmp/x", decoder="pyzbar", formats=["QRCode"]))
    raw = Decoded(b"\xc3(", "QRCODE", Rect(0, 0, 9, 9), [Point(0, 0)] * 4, 1, "UP")
    code = decoder._code(raw, (10, 20), 1.0)
    assert code == Code(
        None, "QRCode", "10,20 10,20 10,20 10,20", "not UTF-8 text (byte 0xc3 at position 0)",
        "\\xc3(", 2,
    )  # fmt: skip


# ---- continuous mode ---------------------------------------------------------------------------


async def test_a_part_in_view_for_many_frames_is_one_scan(tmp_path: Path) -> None:
    """An MJPEG stream at 10 fps, each part in view for 5 frames: one scan per part, in order,
    and nothing between them."""
    model = StationModel(cycle_time=0.6)
    async with MjpegCamera(CameraScene(model, CameraConfig(fps=10, dwell=0.8))) as cam:
        driver = CameraDriver(camera(url=cam.url, window=1.0, open_timeout=2, read_timeout=2))
        sink = Collector()
        task = await start(driver, sink)
        try:
            await wait_until(lambda: len(scans(sink)) >= 4, within=20, what="four parts")
        finally:
            await stop(task)
        scene = cam.scene
    got = [o.value for o in scans(sink)]
    assert all(o.quality is Quality.GOOD for o in scans(sink))
    first = next(k for k in range(100) if scene.code(k) == got[0])
    assert got == [scene.code(k) for k in range(first, first + len(got))]
    decoded = driver.counters.decoded
    assert decoded > 2 * len(got), "each part was seen in several frames"


async def test_a_video_file_gives_one_scan_per_part_then_ends(tmp_path: Path) -> None:
    """A recorded video plays at its frame rate, as the camera delivered it: one scan per
    part. The end of the file is the end of the stream: the device goes down."""
    scene = CameraScene(CLOCK, CameraConfig(fps=20))
    path = tmp_path / "parts.avi"
    truths = await asyncio.to_thread(write_video, scene, path, 80)
    driver = CameraDriver(camera(url=path.as_uri(), window=5, backoff_initial=30, backoff_max=30))
    sink = Collector()
    task = await start(driver, sink)
    try:
        await wait_until(lambda: state(driver) is DeviceState.DOWN, within=20, what="the end")
    finally:
        await stop(task)
    got = [o for o in scans(sink) if o.quality is Quality.GOOD]
    expected = list(dict.fromkeys(t.payload for t in truths if t.payload is not None))
    assert [o.value for o in got] == expected == [scene.code(k) for k in range(4)]
    assert driver.status.last_error == (
        f"device 'cam10': {path.as_uri()}: the stream ended or the camera was lost"
    )
    # The counters reach the loop with each report of the decode thread; the frames decoded
    # after the last report before the end of the file are not in them.
    assert 0 < driver.counters.frames + driver.counters.dropped <= 80


async def test_a_smart_cameras_image_without_a_code_is_a_no_read(inbox: Path) -> None:
    """An image dropped in the folder is a shot: with no code in it, it is a no-read."""
    driver = CameraDriver(camera(folder=str(inbox), settle=0.0))
    sink = Collector()
    task = await start(driver, sink)
    try:
        drop(inbox, "shot1.png", png(empty_image()))
        await wait_until(lambda: scans(sink), what="the no-read")
    finally:
        await stop(task)
    (obs,) = scans(sink)
    assert (obs.quality, obs.error) == (Quality.BAD, "no code in image shot1.png")
    assert not (inbox / "shot1.png").exists()


# ---- triggered mode ----------------------------------------------------------------------------


async def test_a_trigger_reads_until_a_code_or_the_timeout(tmp_path: Path) -> None:
    """On an MJPEG stream: a trigger while a part is in view reads it; a trigger on a carrier
    without a part is a no-read whose frame is kept; a trigger between two parts does not
    read the part that was in view before it (only frames after the trigger count); two
    codes expected and one in view: one scan and a no-read for the missing one."""
    model = StationModel(cycle_time=1.0)
    config = CameraConfig(fps=20, dwell=0.5, faults={2: Fault.MISSING})
    evidence = tmp_path / "evidence"
    async with MjpegCamera(CameraScene(model, config)) as cam:
        scene = cam.scene

        def at(cycle: int, phase: float) -> bool:
            k, p = scene.model.cycle_at(time.monotonic())
            return k > cycle or (k == cycle and p >= phase)

        dev = camera(
            url=cam.url, mode="triggered", open_timeout=2, read_timeout=2,
            trigger={"device": "plc", "point": "present", "timeout": 0.4},
            evidence={"folder": str(evidence)},
        )  # fmt: skip
        driver = CameraDriver(dev)
        sink = Collector()
        task = await start(driver, sink)
        try:
            await wait_until(lambda: state(driver) is DeviceState.UP, what="stream open")
            await wait_until(lambda: at(1, 0.1), within=5, what="part 1 in view")
            await driver.trigger_read()
            await wait_until(lambda: len(scans(sink)) == 1, what="part 1 read")
            await wait_until(lambda: at(2, 0.1), within=5, what="the empty carrier")
            await driver.trigger_read()
            await wait_until(lambda: len(scans(sink)) == 2, what="the no-read")
            await wait_until(lambda: at(3, 0.55), within=5, what="part 3 gone")
            await driver.trigger_read()
            await wait_until(lambda: len(scans(sink)) == 3, what="the no-read after part 3")
        finally:
            await stop(task)
    read, missing, between = scans(sink)
    assert (read.quality, read.value) == (Quality.GOOD, scene.code(1))
    assert (missing.quality, missing.error) == (Quality.BAD, "no read within 0.4 s of the trigger")
    assert missing.detail is not None
    kept = Path(str(missing.detail["frame_file"]))
    assert kept.parent == evidence
    assert kept.name.startswith("cam10-")
    assert cv2.imread(str(kept)) is not None
    assert int(missing.detail["frames"]) >= 4
    assert between.quality is Quality.BAD, "a part seen before the trigger was read"


async def test_a_read_expecting_two_codes_that_finds_one(inbox: Path) -> None:
    dev = camera(
        folder=str(inbox), settle=0.0, mode="triggered", expected_count=2,
        trigger={"device": "plc", "point": "present", "timeout": 0.5},
    )  # fmt: skip
    driver = CameraDriver(dev)
    sink = Collector()
    task = await start(driver, sink)
    try:
        await wait_until(lambda: state(driver) is DeviceState.UP, what="folder open")
        await driver.trigger_read()
        drop(inbox, "tray.png", png(part_image(4)))
        await wait_until(lambda: len(scans(sink)) == 2, what="a scan and a no-read")
    finally:
        await stop(task)
    read, rest = scans(sink)
    assert read.value == CameraScene(CLOCK).code(4)
    assert rest.error == "1 of 2 codes read: no read within 0.5 s of the trigger"


async def test_a_triggered_folder_takes_only_images_after_the_trigger(inbox: Path) -> None:
    dev = camera(
        folder=str(inbox), settle=0.0, mode="triggered",
        trigger={"device": "plc", "point": "present", "timeout": 0.3},
    )  # fmt: skip
    driver = CameraDriver(dev)
    sink = Collector()
    task = await start(driver, sink)
    try:
        await wait_until(lambda: state(driver) is DeviceState.UP, what="folder open")
        drop(inbox, "early.png", png(part_image(1)))  # no read triggered: not this part's
        await wait_until(lambda: not (inbox / "early.png").exists(), what="early image gone")
        await driver.trigger_read()
        await wait_until(lambda: scans(sink), what="the no-read")
        await driver.trigger_read()
        drop(inbox, "late.png", png(part_image(2)))
        await wait_until(lambda: len(scans(sink)) == 2, what="the read")
        assert await driver.command("trigger") == "read triggered"
        await driver.trigger_read()  # the next trigger ends that read as a no-read
        await wait_until(lambda: len(scans(sink)) == 4, what="two more no-reads")
    finally:
        await stop(task)
    no_frame, read, superseded, last = scans(sink)
    assert no_frame.error == "no read within 0.3 s of the trigger (no frame came from the camera)"
    assert read.value == CameraScene(CLOCK).code(2)
    assert superseded.error == "no read before the next trigger (no frame came from the camera)"
    assert last.error == no_frame.error
    assert driver.counters.ignored == 1


# ---- evidence ------------------------------------------------------------------------------


def noise_png(seed: int) -> bytes:
    """A 640x480 image PNG cannot compress (~300 kB): the byte limit bites after 3."""
    rng = np.random.default_rng(seed)
    return png(rng.integers(0, 256, (480, 640), dtype=np.uint8))


@pytest.mark.parametrize(
    ("limits", "kept"),
    [({"max_files": 3}, 3), ({"max_files": 100, "max_bytes": 1_000_000}, 3)],
    ids=["max_files", "max_bytes"],
)
async def test_the_evidence_folder_is_bounded_oldest_deleted_first(
    inbox: Path, tmp_path: Path, limits: dict[str, int], kept: int
) -> None:
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    other = evidence / "cam10-b-20240101T000000.000Z-000001-noread.png"  # another device's
    other.write_bytes(b"x")
    dev = camera(folder=str(inbox), settle=0.0, evidence={"folder": str(evidence), **limits})
    sink = Collector()
    driver = CameraDriver(dev)
    task = await start(driver, sink)
    try:
        for i in range(6):
            drop(inbox, f"shot{i}.png", noise_png(i))
            await wait_until(lambda i=i: len(scans(sink)) == i + 1, what=f"no-read {i}")
    finally:
        await stop(task)
    files = [Path(str(o.detail["frame_file"])) for o in scans(sink) if o.detail]
    assert len(files) == 6
    assert [f.exists() for f in files] == [False] * (6 - kept) + [True] * kept
    assert files[-1].read_bytes() == noise_png(5), "an image is kept as it came"
    assert sorted(evidence.iterdir()) == sorted([other, *files[-kept:]])
    # A restart with a tighter bound finds the files already there and trims them.
    restarted = CameraDriver(
        camera(folder=str(inbox), evidence={"folder": str(evidence), "max_files": 1})
    )
    task = await start(restarted, Collector())
    try:
        await wait_until(lambda: state(restarted) is DeviceState.UP, what="reopened")
    finally:
        await stop(task)
    assert sorted(evidence.iterdir()) == sorted([other, files[-1]])


# ---- the agent: a camera read sets the serial the PLC's values bind to --------------------------


def station_config(tmp: Path, mqtt_port: int, modbus_port: int, url: str) -> Any:
    raw = demo_config(
        modbus_port=modbus_port,
        mqtt_port=mqtt_port,
        buffer_path=str(tmp / "buffer.db"),
        stations=1,
        agent_id="camera-pc1",
    )
    station = raw["stations"][0]
    station["context"] = {}  # the serial comes from the camera, not the PLC
    station["scans"] = {
        "sources": [{"device": "cam10"}],
        "rules": [PART.model_dump(exclude_none=True)],
    }
    raw["devices"].append(
        {
            "name": "cam10", "type": "camera", "station": station["name"], "url": url,
            "window": 0.5, "open_timeout": 2, "read_timeout": 2,
        }
    )  # fmt: skip
    cfg = agent_model().model_validate(raw)
    assert cfg.issues() == []
    return cfg


async def test_a_camera_read_sets_the_serial_the_plcs_values_bind_to(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    model = StationModel(unit_id=1, cycle_time=0.8)
    async with ModbusStationServer([model]) as plc:
        scene = CameraScene(plc.stations[0], CameraConfig(fps=10, dwell=0.8))
        async with MjpegCamera(scene) as cam:
            cfg = station_config(tmp_path, mosquitto.port, plc.port, cam.url)
            with RecordCollector("127.0.0.1", mosquitto.port) as col:
                agent = Agent(cfg)
                stop_agent = asyncio.Event()
                task = asyncio.create_task(agent.run(stop_agent))
                try:
                    await wait_until(lambda: agent.stats.scans >= 5, within=30, what="5 scans")
                finally:
                    stop_agent.set()
                    await task
                committed = agent.buffer.committed_seq
                assert col.wait_for(lambda d: len(d.records) >= committed, 20)
    records = [r for _, r in sorted(col.data.records.items())]
    scan_records = [r for r in records if r["kind"] == "scan"]
    assert len(scan_records) >= 5
    serials = [r["fields"]["21"] for r in scan_records]
    assert all(r["status"] == "accepted" for r in scan_records), scan_records
    assert len(set(serials)) == len(serials), "one scan per part"
    assert all(r["detail"]["format"] == "DataMatrix" for r in scan_records)
    first = int(serials[0][2:]) - 1
    assert serials == [model.serial(k) for k in range(first, first + len(serials))]
    # Every reading carries the serial of the last accepted scan before it; where the PLC
    # shows the same part in that reading, the two agree.
    current: str | None = None
    agree = 0
    for r in records:
        if r["kind"] == "scan":
            current = r["fields"]["21"]
        elif r["kind"] == "readings" and r["device"] == "press1":
            assert r["ctx"].get("serial") == current, r
            plc_serial = r["values"].get("part_serial")
            agree += plc_serial is not None and plc_serial == current
    assert agree >= 5, "the PLC's values were never bound to the scanned part"
