"""``simulate --config`` for RFID readers, a scale that connects to the agent, cameras (an
image folder and an MJPEG stream) and keyboard-wedge scanners, through the real drivers and
agent."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from drivers.keyboard_scanner.keymap import GS, WedgeDecoder
from drivers.keyboard_scanner.simulator import key_events, uinput_missing
from kernel.errors import ConfigError
from kernel.model import DeviceState, Quality
from simulators.devicemap import Simulation, parse_scenario
from tests.modbus_helpers import Collector, no_leaks
from tests.simulate_helpers import BACKOFF, config, drivers_for, running
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

EPC1 = "3034257BF7194E4000000001"
EPC2 = "3034257BF7194E4000000002"
EPC3 = "3034257BF7194E4000000003"


async def test_rfid_readers_print_the_scenarios_tags(tmp_path: Path) -> None:
    """A serial reader (csv) and a TCP one (alien-text, which groups the EPC by four): each
    tag of the scenario is one arrival scan with its EPC; a tag carried past while the reader
    is silent is never seen."""
    readers = [
        {"name": "rf1", "type": "rfid", "port": "/dev/ttyUSB3", "station": "ST10", **BACKOFF},
        {"name": "rf2", "type": "rfid", "host": "10.0.0.9", "tcp_port": 14150,
         "format": "alien-text", "station": "ST10", **BACKOFF},
    ]  # fmt: skip
    cfg = config(tmp_path, readers, scans={"sources": [{"device": "rf1"}, {"device": "rf2"}]})
    text = f"""
duration: 60
tags:
  - {{device: rf1, at: 0.2, epc: {EPC1}, dwell: 0.4, antenna: 2}}
  - {{device: rf2, at: 0.2, epc: "{EPC2[:12]} {EPC2[12:]}"}}
  - {{device: rf1, at: 1.0, epc: {EPC3}}}
  - {{device: rf1, at: 2.0, epc: {EPC2}}}
faults:
  - {{device: rf1, at: 0.9, fault: silent, duration: 0.8}}
"""
    async with running(cfg, text, tmp_path, ["scan"]) as run:
        await wait_until(lambda: len(run.scans()) >= 3, 20, "three arrivals")
    seen = {(s["device"], s["detail"]["epc"]) for s in run.scans()}
    assert seen == {("rf1", EPC1), ("rf2", EPC2), ("rf1", EPC2)}
    first = next(s for s in run.scans() if s["detail"]["epc"] == EPC1)
    assert first["detail"]["antenna"] == 2
    assert len([e for e in run.sim.endpoints if e.devices == ("rf1",)]) == 1


@pytest.mark.parametrize("protocol", ["toledo", "mt_sics"])
async def test_a_scale_that_connects_to_the_agent(tmp_path: Path, protocol: str) -> None:
    """listen_port: the simulated scale dials the port the overrides give the agent, gives
    the scenario's loads (Toledo streams them; MT-SICS is polled once it has connected), and
    dials again after being unplugged."""
    polled = {"poll_interval": 0.1} if protocol == "mt_sics" else {}
    scale = {"name": "sc1", "type": "scale", "listen_port": 4001, "protocol": protocol,
             "unit": "kg", "timeout": 0.5, **polled, **BACKOFF}  # fmt: skip
    cfg = config(tmp_path, [scale], device="sc1")
    scenario = parse_scenario(
        """
duration: 60
weights:
  - {device: sc1, at: 0.1, weight: 4.25}
faults:
  - {device: sc1, at: 1.5, fault: unplug, duration: 1.0}
""",
        cfg,
        "s.yaml",
    )
    async with no_leaks(), Simulation(cfg, scenario, pty_dir=tmp_path / "pty") as sim:
        keys = sim.overrides["sc1"]
        assert set(keys) == {"listen_host", "listen_port"}
        assert "TCP client of the agent's listen port" in sim.describe()[0]
        driver = drivers_for(cfg, sim)["sc1"]
        sink = Collector()
        task = asyncio.create_task(driver.run(sink))

        def weighed() -> int:
            return sum(o.value == 4.25 and o.quality is Quality.GOOD for o in sink.all)

        try:
            await wait_until(lambda: weighed() > 0, 15, "the load weighed")
            await wait_until(lambda: driver.status.state is DeviceState.DOWN, 15, "unplugged")
            before = weighed()
            await wait_until(lambda: weighed() > before, 15, "weighed again")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def camera_station(cam: dict[str, Any], tmp: Path) -> Any:
    cam = {"type": "camera", "station": "ST10", **BACKOFF, **cam}
    return config(tmp, [cam], scans={"sources": [{"device": cam["name"]}]})


async def test_a_camera_dropping_images_into_a_folder(tmp_path: Path) -> None:
    """Each scan is one image, named for the config's glob, of a real symbol the driver
    decodes: GS1 DataMatrix by its AIM id, plain text in the config's format (QR here); a
    scan while the camera is silent takes no image."""
    pytest.importorskip("cv2", reason="the camera extra is not installed")
    cam = {"name": "cam1", "folder": "/srv/ftp/cam1", "pattern": "IMG_*.png",
           "formats": ["QRCode", "DataMatrix"]}  # fmt: skip
    cfg = camera_station(cam, tmp_path)
    text = """
duration: 60
scans:
  - {device: cam1, at: 0.2, data: "]d2010950110102091721SN0042<GS>10L7"}
  - {device: cam1, at: 0.8, data: HELLO-7}
  - {device: cam1, at: 1.6, data: LOST}
faults:
  - {device: cam1, at: 1.5, fault: silent, duration: 0.5}
"""
    async with running(cfg, text, tmp_path, ["scan"]) as run:
        assert run.sim.overrides["cam1"]["folder"] == str(tmp_path / "pty" / "cam1-images")
        await wait_until(lambda: len(run.scans()) >= 2, 30, "two reads")
        await wait_until(lambda: len(run.sim.history) >= 4, 10, "the timeline played")
    texts = [s["text"] for s in run.scans()]
    assert texts == [f"]d2010950110102091721SN0042{GS}10L7", "]Q1HELLO-7"]
    [lost] = [h for h in run.sim.history if h.what == "scan 'LOST'"]
    assert lost.error == "cam1 is silent (fault): no image taken"


async def test_a_camera_stream_shows_each_scan(tmp_path: Path) -> None:
    """url: an MJPEG stream, ten frames a second, read continuously by the driver."""
    pytest.importorskip("cv2", reason="the camera extra is not installed")
    cam = {"name": "cam2", "url": "rtsp://10.0.0.70:554/stream1", "formats": ["Code128", "QRCode"],
           "open_timeout": 5, "read_timeout": 2}  # fmt: skip
    cfg = camera_station(cam, tmp_path)
    text = """
duration: 60
scans:
  - {device: cam2, at: 0.3, data: T000123}
  - {device: cam2, at: 2.0, data: "]Q1TRAY-9"}
"""
    async with running(cfg, text, tmp_path, ["scan"]) as run:
        assert run.sim.overrides["cam2"]["url"].startswith("http://127.0.0.1:")
        await wait_until(lambda: len(run.scans()) >= 2, 30, "two reads")
    assert [s["text"] for s in run.scans()][:2] == ["]C0T000123", "]Q1TRAY-9"]


@pytest.mark.parametrize("layout", ["us", "uk", "de", "fr"])
def test_keyboard_key_events_type_what_the_driver_reads(layout: str) -> None:
    """The simulator's key strokes, fed to the driver's decoder, give back the text, GS
    included (Ctrl+]), on every layout."""
    text = f"]d2010950110102091721AB-12{GS}10L7/x"
    decoder = WedgeDecoder(layout)
    scans = [s for t, (code, value) in enumerate(key_events(text, layout, "ctrl+]"))
             for s in decoder.key(code, value, t * 0.001)]  # fmt: skip
    assert [s.text for s in scans] == [text]


def test_keyboard_scanners_need_uinput(tmp_path: Path) -> None:
    """Without /dev/uinput no keyboard can be made: the device is left out with the reason,
    and a scenario giving it scans says why."""
    why = uinput_missing()
    if why is None:
        pytest.skip("this machine can make a virtual keyboard")
    wedge = {"name": "kb1", "type": "keyboard_scanner", "input": "/dev/input/event7",
             "station": "ST10"}  # fmt: skip
    cfg = config(tmp_path, [wedge], scans={"sources": [{"device": "kb1"}]})
    sim = Simulation(cfg, None, pty_dir=tmp_path)
    assert sim.unsupported == {"kb1": f"keyboard_scanner: {why}"}
    assert sim.describe() == [f"not simulated: kb1 (keyboard_scanner: {why})"]
    with pytest.raises(ConfigError) as err:
        parse_scenario("duration: 5\nscans: [{device: kb1, at: 1, data: X}]\n", cfg, "s.yaml")
    assert f"device 'kb1' (keyboard_scanner) cannot be simulated: {why}" in str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tags: [{device: rf1, at: 1, epc: 'XYZ'}]", "EPC 'XYZ' is not hexadecimal"),
        ("tags: [{device: rf1, at: 1, epc: '123'}]", "odd number of hex digits (3)"),
        ("tags: [{device: cam, at: 1, epc: '1234'}]", "a camera device takes no RFID tags"),
        ("faults: [{device: cam, at: 1, fault: unplug, duration: 1}]",
         "a camera dropping images into a folder cannot be unplugged: use silent"),
        ("scans: [{device: v4l, at: 1, data: x}]",
         "a V4L2 camera (device) is not simulated: that needs the v4l2loopback kernel module"),
        ("scans: [{device: pat, at: 1, data: x}]",
         "'pat' (rfid) cannot be simulated: a reader with its own line_pattern is not "
         "simulated"),
    ],
)  # fmt: skip
def test_new_kinds_bad_scenarios(tmp_path: Path, text: str, message: str) -> None:
    devices: list[dict[str, Any]] = [
        {"name": "rf1", "type": "rfid", "port": "/dev/ttyUSB3"},
        {"name": "pat", "type": "rfid", "port": "/dev/ttyUSB4",
         "line_pattern": r"(?P<epc>[0-9A-F]+)"},
        {"name": "cam", "type": "camera", "folder": "/srv/ftp/cam"},
        {"name": "v4l", "type": "camera", "device": 0},
    ]  # fmt: skip
    for d in devices:
        d["station"] = "ST10"
    cfg = config(tmp_path, devices, scans={"sources": [{"device": d["name"]} for d in devices]})
    with pytest.raises(ConfigError) as err:
        parse_scenario(f"duration: 5\n{text}\n", cfg, "s.yaml")
    assert message in str(err.value)
