"""Camera decoding: time per frame and frames/s per core at three resolutions, zxing-cpp beside
pyzbar (1D and QR) and pylibdmtx (DataMatrix) on the same frames (issue 15, item 7).

Frames come from the camera simulator (``simulators.camera``): the station's part code as a
GS1 DataMatrix (and, for pyzbar, which cannot read DataMatrix, as Code 128 and QR), a third
of the frame wide, with sensor noise, at 640x480, 1280x960 and 2592x1944. Each decoder runs in
this process, one frame at a time, on one core; CPU time per frame is ``time.process_time``
around the call, so frames/s per core is 1 / mean CPU time. "read" counts frames whose
decoded text (AIM id + data) is the ground truth, GS separators included.

- **zxing-cpp** as the driver configures it: only the expected format, rotation and
  downscaling retries off, plain text (GS kept) plus the symbology identifier;
- **pyzbar** (libzbar0): Code 128 and QR only;
- **pylibdmtx** (libdmtx0b): DataMatrix, with a 2 s timeout per frame (it can take seconds).

A decoder whose library is missing is reported as skipped with the reason. Run:
``python -m benchmarks.camera [--frames 20] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from simulators.camera import (
    RESOLUTIONS,
    CameraConfig,
    CameraScene,
    Distortions,
    Placement,
    Symbology,
)
from simulators.station import StationModel

GS = "\x1d"
Decode = Callable[[Any], list[str]]


def _zxing(fmt: Any) -> Decode:
    import zxingcpp

    def decode(image: Any) -> list[str]:
        found = zxingcpp.read_barcodes(
            image,
            formats=fmt,
            try_rotate=False,
            try_downscale=False,
            text_mode=zxingcpp.TextMode.Plain,
        )
        return [r.symbology_identifier + r.text for r in found]

    return decode


def _pyzbar() -> Decode:
    from pyzbar import pyzbar

    def decode(image: Any) -> list[str]:
        return [r.data.decode("latin-1") for r in pyzbar.decode(image)]

    return decode


def _pylibdmtx() -> Decode:
    from pylibdmtx import pylibdmtx

    def decode(image: Any) -> list[str]:
        return [r.data.decode("latin-1") for r in pylibdmtx.decode(image, timeout=2000)]

    return decode


def _scene(resolution: tuple[int, int], symbology: Symbology) -> CameraScene:
    size = 0.6 if symbology is Symbology.CODE128 else 0.3  # a linear code needs more width
    config = CameraConfig(
        resolution=resolution,
        symbology=symbology,
        placement=Placement(size=size),
        distortions=Distortions(noise=4.0),
        dwell=1.0,
    )
    return CameraScene(StationModel(cycle_time=1.0, t0=0.0), config)


def measure(
    decoder: str, decode: Decode, scene: CameraScene, frames: int, strip_aim: bool
) -> dict[str, Any]:
    cpu: list[float] = []
    read = decoded = 0
    sample: str | None = None
    for i in range(frames):
        frame = scene.render(i, float(i))  # one part per second: frame i shows part i
        expected = frame.truth.payload
        t0 = time.process_time()
        texts = decode(frame.image)
        cpu.append(time.process_time() - t0)
        decoded += bool(texts)
        sample = sample or (texts[0] if texts else None)
        if expected is not None:
            want = expected[3:] if strip_aim else expected
            read += want in texts
    mean = statistics.fmean(cpu)
    return {
        "decoder": decoder,
        "frames": frames,
        "read": read,
        "decoded": decoded,
        "gs_kept": None if sample is None else (GS in sample or not scene_gs1(scene)),
        "ms_p50": round(statistics.median(cpu) * 1000, 1),
        "ms_max": round(max(cpu) * 1000, 1),
        "frames_per_s_per_core": round(1 / mean, 1) if mean > 0 else None,
    }


def scene_gs1(scene: CameraScene) -> bool:
    """Whether the scene's code has variable-length fields followed by others (GS needed)."""
    return scene.config.symbology.gs1


def run(frames: int = 20, agent_seconds: float = 15.0) -> dict[str, Any]:
    result = decoders(frames)
    if agent_seconds > 0:
        result["agent"] = agent_at_10_fps(agent_seconds)
    return result


def decoders(frames: int = 20) -> dict[str, Any]:
    import zxingcpp

    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    peers: dict[str, tuple[Callable[[], Decode], tuple[Symbology, ...], bool]] = {
        # pyzbar and pylibdmtx report the data without the AIM identifier.
        "pyzbar": (_pyzbar, (Symbology.CODE128, Symbology.QR), True),
        "pylibdmtx": (_pylibdmtx, (Symbology.GS1_DATAMATRIX,), True),
    }
    for resolution in RESOLUTIONS:
        label = f"{resolution[0]}x{resolution[1]}"
        for symbology in (Symbology.GS1_DATAMATRIX, Symbology.CODE128, Symbology.QR):
            scene = _scene(resolution, symbology)
            fmt = symbology.barcode_format
            row = measure("zxing-cpp", _zxing(fmt), scene, frames, strip_aim=False)
            rows.append({"resolution": label, "symbology": symbology.value, **row})
            for name, (make, kinds, strip) in peers.items():
                if symbology not in kinds or name in skipped:
                    continue
                try:
                    decode = make()
                except Exception as exc:  # a missing library or shared object
                    skipped[name] = f"{type(exc).__name__}: {exc}"
                    continue
                n = frames if name != "pylibdmtx" else max(1, frames // 5)  # seconds each
                row = measure(name, decode, scene, n, strip_aim=strip)
                rows.append({"resolution": label, "symbology": symbology.value, **row})
    return {"zxing_cpp": zxingcpp.__version__ if hasattr(zxingcpp, "__version__") else "?",
            "rows": rows, "skipped": skipped}  # fmt: skip


def agent_at_10_fps(seconds: float, resolution: tuple[int, int] = (1280, 960)) -> dict[str, Any]:
    """The agent (its own process) reading an HTTP MJPEG camera at 10 frames/s in continuous
    mode, one part a second: its CPU share and peak RSS over ``seconds``, and the scans."""
    import asyncio
    import tempfile
    from pathlib import Path

    import psutil
    import yaml

    from benchmarks.throughput import CLI
    from simulators.broker import MosquittoBroker
    from simulators.camera import MjpegCamera

    async def measure_agent(tmp: Path, mqtt_port: int) -> dict[str, Any]:
        config = CameraConfig(
            resolution=resolution, placement=Placement(size=0.25),
            distortions=Distortions(noise=4.0), fps=10.0, dwell=0.8,
        )  # fmt: skip
        scene = CameraScene(StationModel(cycle_time=1.0), config)
        async with MjpegCamera(scene) as cam:
            raw = {
                "agent": {"site": "bench", "line": "l1", "id": "bench-camera"},
                "stations": [{"name": "ST10", "scans": {"sources": [{"device": "cam10"}]}}],
                "devices": [
                    {"name": "cam10", "type": "camera", "station": "ST10", "url": cam.url,
                     "mode": "continuous", "formats": ["DataMatrix"]},
                ],
                "buffer": {"path": str(tmp / "buffer.db")},
                "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
                "control": {"socket": str(tmp / "control.sock")},
            }  # fmt: skip
            path = tmp / "agent.yaml"
            path.write_text(yaml.safe_dump(raw))
            agent = await asyncio.create_subprocess_exec(*CLI, "run", str(path))
            try:
                process = psutil.Process(agent.pid)
                await asyncio.sleep(3.0)  # past start-up: imports, first connection
                cpu0 = sum(process.cpu_times()[:2])
                t0 = time.monotonic()
                rss = 0
                while time.monotonic() - t0 < seconds:
                    rss = max(rss, process.memory_info().rss)
                    await asyncio.sleep(0.5)
                cpu = sum(process.cpu_times()[:2]) - cpu0
                took = time.monotonic() - t0
            finally:
                agent.terminate()
                await agent.wait()
        return {
            "resolution": f"{resolution[0]}x{resolution[1]}",
            "fps": 10,
            "seconds": round(took, 1),
            "cpu_share": round(cpu / took, 3),
            "peak_rss_mb": round(rss / 2**20, 1),
            "frames_served": len(cam.published),
        }

    with tempfile.TemporaryDirectory(prefix="bench-camera-") as tmp:
        broker = MosquittoBroker()
        broker.start_sync()
        try:
            return asyncio.run(measure_agent(Path(tmp), broker.port))
        finally:
            broker.stop_sync()
            broker.close()


def table(result: dict[str, Any]) -> str:
    out = [
        "| resolution | code | decoder | read right | decoded | GS kept | ms p50 | ms max "
        "| frames/s per core |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        out.append(
            f"| {r['resolution']} | {r['symbology']} | {r['decoder']} | {r['read']}/{r['frames']} "
            f"| {r['decoded']}/{r['frames']} | {r['gs_kept']} | {r['ms_p50']} | {r['ms_max']} "
            f"| {r['frames_per_s_per_core']} |"
        )
    for name, why in result.get("skipped", {}).items():
        out.append(f"| | | {name} | skipped: {why} | | | | | |")
    agent = result.get("agent")
    if agent:
        out += [
            "",
            f"Agent reading a {agent['resolution']} MJPEG camera at {agent['fps']} frames/s "
            f"(continuous, DataMatrix): {agent['cpu_share']:.1%} of a core, peak RSS "
            f"{agent['peak_rss_mb']} MB over {agent['seconds']} s.",
        ]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--agent-seconds", type=float, default=15.0, help="0: decoders only")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = run(args.frames, args.agent_seconds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
