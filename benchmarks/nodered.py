"""Node-RED (node-red-contrib-modbus + mqtt out) side by side with the agent (issue 6, item 6).

Both poll the same simulated PLCs (``edge-agent simulate``, its own process, not measured):
S stations (unit ids 1..S) x 64 holding registers (address 0..63, one request per poll) every
``poll`` ms, offered load S x 64 / poll values/s, and both publish to the same local Mosquitto
with QoS 1. A subscriber in this process counts the values that arrive the same way for both
(the entries of a ``values`` map: one per register read), and the records (agent) or messages
(Node-RED) that carry them, one per poll of a station on either side.
The two run one after the other, never at once (2 cores), each for the same warm-up and
measurement window; psutil samples only their own process (``edge-agent run``; Node-RED's
``node red.js``): CPU in cores and CPU-seconds per 1,000 delivered values, peak RSS.

What each one does per poll (the comparison is deliberately in Node-RED's favour):

- **Agent**: ``benchmarks.throughput.config()``: 64 uint16 points per station; every poll
  response becomes ONE ``readings`` record (~800 B JSON: station, timestamp, device, context
  and the 64 named values; quality, errors and units only where a value needs them) journaled
  durably in SQLite, published in batches (one station per message, several polls per message
  when they queue up), PUBACKed, then deleted from the journal.
- **Node-RED**: per station a ``modbus-client`` (TCP, its unit id) and a ``modbus-read``
  (HoldingRegister, 64 from 0, ``rate`` ms); one shared ``function`` node turns the register
  array into ONE JSON message per poll ``{"station", "ts", "count": 64, "values": {"r0":
  ..., "r63": ...}}`` (named values and a timestamp: the same content as the agent's record,
  but no journal, no store-and-forward), and one ``mqtt out`` (QoS 1, one broker connection
  like the agent's; one message per poll, where the agent may batch several).
- Both time a Modbus request out after one poll interval (the agent's config requires
  ``timeout <= poll_interval``; Node-RED's ``clientTimeout`` is set to the same).

Node-RED and node-red-contrib-modbus are installed with npm into a cache directory outside the
repository (``--nodered-dir``, default ``~/.cache/edge-agent-bench/nodered``), once.
node-red-contrib-modbus 5.x depends on a fork of ``modbus-serial`` by a tarball URL on a
non-npm host; an npm ``overrides`` entry points that name at ``modbus-serial`` from the npm
registry (the same library, which the package used until 5.23). npm picks the newest
node-red-contrib-modbus whose ``engines`` accepts the local Node.js.

Run: ``python -m benchmarks.nodered [--json out.json] [--rates 1000,10000] [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.ceilings import readings_in
from benchmarks.throughput import CLI, REGISTERS, config, stop
from simulators.broker import MosquittoBroker, free_port, wait_listening
from simulators.scenario import station_name

DEFAULT_DIR = Path("~/.cache/edge-agent-bench/nodered").expanduser()
PACKAGES = ["node-red@4", "node-red-contrib-modbus"]
OVERRIDES = {"@openp4nr/modbus-serial": "npm:modbus-serial@^8.0.25"}
POLL_MS = 64
"""Poll interval aimed at: 1,000 values/s per station. Rates pick the station count."""
NR_TOPIC = "nodered-bench"
AGENT_TOPIC = "trace/+/+/+/records"

SETTINGS_JS = """module.exports = {
    uiHost: "127.0.0.1",
    httpAdminRoot: false,
    httpNodeRoot: false,
    disableEditor: true,
    credentialSecret: false,
    flowFilePretty: false,
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false, updateNotification: false },
    externalModules: { autoInstall: false, palette: { allowInstall: false } },
    logging: { console: { level: "warn", metrics: false, audit: false } },
};
"""

FUNCTION_JS = """const regs = msg.payload;
const values = {};
for (let i = 0; i < regs.length; i++) values["r" + i] = regs[i];
return {
    topic: "%s/" + msg.topic + "/values",
    payload: { station: msg.topic, ts: new Date().toISOString(), count: regs.length, values },
};
"""


# --- installation -------------------------------------------------------------------------


def _pkg_version(root: Path, name: str) -> str | None:
    try:
        data = json.loads((root / "node_modules" / name / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return str(data.get("version"))


def ensure_nodered(root: Path) -> str | None:
    """Install Node-RED into ``root`` unless it is there; the reason it cannot, or None."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node or npm is not installed"
    if (root / "node_modules/node-red/red.js").exists() and _pkg_version(
        root, "node-red-contrib-modbus"
    ):
        return None
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "package.json"
    data: dict[str, Any] = {"name": "edge-agent-bench-nodered", "private": True}
    if manifest.exists():
        data = json.loads(manifest.read_text())
    data["overrides"] = OVERRIDES
    manifest.write_text(json.dumps(data, indent=2) + "\n")
    print(f"installing {' '.join(PACKAGES)} into {root} ...", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", *PACKAGES],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired:
        return "npm install timed out"
    if done.returncode != 0 or not (root / "node_modules/node-red/red.js").exists():
        return f"npm install failed: {done.stderr.strip()[-500:]}"
    return None


def versions(root: Path) -> dict[str, str | None]:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    out: dict[str, str | None] = {"node": node}
    for name in ("node-red", "node-red-contrib-modbus", "@openp4nr/modbus-serial", "mqtt"):
        out["modbus-serial (override)" if name.startswith("@") else name] = _pkg_version(root, name)
    return out


# --- the flow -----------------------------------------------------------------------------


def flows(stations: int, plc_port: int, mqtt_port: int, poll_ms: int) -> list[dict[str, Any]]:
    """A Node-RED flow: per station modbus-client + modbus-read; one function, one mqtt out."""
    tab, fn, out, broker = "bench-tab", "bench-fn", "bench-mqtt-out", "bench-broker"
    nodes: list[dict[str, Any]] = [
        {"id": tab, "type": "tab", "label": "bench", "disabled": False, "info": ""},
        {
            "id": broker,
            "type": "mqtt-broker",
            "name": "mosquitto",
            "broker": "127.0.0.1",
            "port": str(mqtt_port),
            "clientid": f"nodered-bench-{uuid.uuid4().hex[:8]}",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
            "autoUnsubscribe": True,
            "birthTopic": "",
            "closeTopic": "",
            "willTopic": "",
        },
        {
            "id": fn,
            "type": "function",
            "z": tab,
            "name": "registers to one message",
            "func": FUNCTION_JS % NR_TOPIC,
            "outputs": 1,
            "timeout": 0,
            "noerr": 0,
            "initialize": "",
            "finalize": "",
            "libs": [],
            "x": 400,
            "y": 40,
            "wires": [[out]],
        },
        {
            "id": out,
            "type": "mqtt out",
            "z": tab,
            "name": "",
            "topic": "",
            "qos": "1",
            "retain": "false",
            "respTopic": "",
            "contentType": "",
            "userProps": "",
            "correl": "",
            "expiry": "",
            "broker": broker,
            "x": 600,
            "y": 40,
            "wires": [],
        },
    ]
    for i in range(stations):
        client = f"bench-client-{i + 1}"
        nodes.append(
            {
                "id": client,
                "type": "modbus-client",
                "name": f"plc{i + 1}",
                "clienttype": "tcp",
                "bufferCommands": True,
                "stateLogEnabled": False,
                "queueLogEnabled": False,
                "failureLogEnabled": True,
                "tcpHost": "127.0.0.1",
                "tcpPort": str(plc_port),
                "tcpType": "DEFAULT",
                "serialPort": "/dev/ttyUSB",
                "serialType": "RTU-BUFFERD",
                "serialBaudrate": "9600",
                "serialDatabits": "8",
                "serialStopbits": "1",
                "serialParity": "none",
                "serialConnectionDelay": "100",
                "serialAsciiResponseStartDelimiter": "0x3A",
                "unit_id": str(i + 1),
                "commandDelay": "1",
                "clientTimeout": str(poll_ms),  # the agent's device timeout: the poll
                "reconnectOnTimeout": True,
                "reconnectTimeout": "2000",
                "parallelUnitIdsAllowed": True,
                "showErrors": True,
                "showWarnings": True,
                "showLogs": True,
            }
        )
        nodes.append(
            {
                "id": f"bench-read-{i + 1}",
                "type": "modbus-read",
                "z": tab,
                "name": f"read plc{i + 1}",
                "topic": station_name(i),
                "showStatusActivities": False,
                "logIOActivities": False,
                "showErrors": True,
                "showWarnings": True,
                "unitid": "",
                "dataType": "HoldingRegister",
                "adr": "0",
                "quantity": str(REGISTERS),
                "rate": str(poll_ms),
                "rateUnit": "ms",
                "delayOnStart": False,
                "enableDeformedMessages": False,
                "startDelayTime": "",
                "server": client,
                "useIOFile": False,
                "ioFile": "",
                "useIOForPayload": False,
                "emptyMsgOnFail": False,
                "x": 150,
                "y": 40 + 60 * i,
                "wires": [[fn], []],
            }
        )
    return nodes


# --- counting and measuring ---------------------------------------------------------------


class Tally:
    """Counts what reaches the broker, per system: ``values`` (the entries of each poll's
    ``values`` map: a Node-RED message's, an agent ``readings`` record's) and ``polls`` (the
    records or messages carrying them). ``bad``: polls without 64 integer values."""

    def __init__(self, host: str, port: int) -> None:
        self.values = {"agent": 0, "nodered": 0}
        self.polls = {"agent": 0, "nodered": 0}
        self.bad = {"agent": 0, "nodered": 0}
        self.ready = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-nr-tally-{uuid.uuid4().hex[:8]}"
        )
        self._client.on_connect = lambda c, *_: c.subscribe(
            [(AGENT_TOPIC, 1), (f"{NR_TOPIC}/#", 1)]
        )
        self._client.on_subscribe = lambda *_: self.ready.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        if msg.topic.startswith(NR_TOPIC + "/"):
            self._poll("nodered", body.get("values"), len(body.get("values") or ()))
        else:
            for record in body["records"]:
                n = readings_in(record)
                if n:  # a poll's record; context_restored and the like carry no values
                    self._poll("agent", record.get("values"), n)

    def _poll(self, key: str, values: Any, n: int) -> None:
        self.polls[key] += 1
        self.values[key] += n
        if (
            not isinstance(values, dict)
            or len(values) != REGISTERS
            or not all(isinstance(v, int) for v in values.values())
        ):
            self.bad[key] += 1

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _measure(
    popen: subprocess.Popen[Any], tally: Tally, key: str, warmup: float, seconds: float
) -> dict[str, Any]:
    proc = psutil.Process(popen.pid)
    deadline = time.monotonic() + 60
    while tally.values[key] == 0:  # first values at the broker: connected and polling
        if popen.poll() is not None:
            raise RuntimeError(f"{key} exited with {popen.returncode} before publishing")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{key}: nothing arrived at the broker within 60 s")
        time.sleep(0.05)
    time.sleep(warmup)
    c0, t0 = proc.cpu_times(), time.perf_counter()
    v0, p0 = tally.values[key], tally.polls[key]
    rss_peak = proc.memory_info().rss
    while time.perf_counter() - t0 < seconds:
        time.sleep(0.2)
        rss_peak = max(rss_peak, proc.memory_info().rss)
    c1, t1 = proc.cpu_times(), time.perf_counter()
    v1, p1 = tally.values[key], tally.polls[key]
    rate = (v1 - v0) / (t1 - t0)
    cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0)
    return {
        "delivered_per_s": round(rate),
        "polls_per_s": round((p1 - p0) / (t1 - t0)),
        "cpu_cores": round(cpu, 3),
        "cpu_s_per_1000_values": round(cpu / rate * 1000, 5) if rate else None,
        "rss_peak_mb": round(rss_peak / 2**20, 1),
    }


def run_agent(
    stations: int, poll_ms: int, plc_port: int, broker: MosquittoBroker, tally: Tally, **kw: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-nr-agent-") as tmp_name:
        tmp = Path(tmp_name)
        cfg = tmp / "agent.yaml"
        cfg.write_text(yaml.safe_dump(config(stations, plc_port, broker.port, tmp, poll_ms / 1e3)))
        marks = ("WARNING", "ERROR", "Traceback")
        return _run_measured([*CLI, "run", str(cfg)], tmp, "agent", marks, tally, **kw)


def run_nodered(
    stations: int,
    poll_ms: int,
    plc_port: int,
    broker: MosquittoBroker,
    tally: Tally,
    root: Path,
    **kw: float,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-nr-") as tmp_name:
        tmp = Path(tmp_name)
        settings = tmp / "settings.js"
        settings.write_text(SETTINGS_JS)
        flow_file = tmp / "flows.json"
        flow_file.write_text(json.dumps(flows(stations, plc_port, broker.port, poll_ms)))
        cmd = ["node", str(root / "node_modules/node-red/red.js"), "--settings", str(settings)]
        cmd += ["--userDir", str(tmp), "--port", str(free_port()), str(flow_file)]
        return _run_measured(cmd, tmp, "nodered", ("[warn]", "[error]", "Error"), tally, **kw)


def _run_measured(
    cmd: list[str], tmp: Path, key: str, marks: tuple[str, ...], tally: Tally, **kw: float
) -> dict[str, Any]:
    """Start ``cmd`` (log in ``tmp``), measure it, stop it; its warnings and errors added."""
    log = tmp / f"{key}.log"
    with log.open("wb") as log_f:
        popen = subprocess.Popen(cmd, stdout=log_f, stderr=log_f, stdin=subprocess.DEVNULL, cwd=tmp)
        try:
            result = _measure(popen, tally, key, **kw)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace").splitlines()[-10:]
            raise RuntimeError(f"{exc}; end of its log:\n" + "\n".join(tail)) from None
        finally:
            stop(popen)
    result["log_lines"] = _log_lines(log, marks)
    return result


BENIGN = ("Projects disabled", "Using unencrypted credentials")
"""Node-RED start-up warnings that only restate this benchmark's settings."""


def _log_lines(log: Path, marks: tuple[str, ...]) -> list[str]:
    """Warnings and errors from a system's log (first five), minus the benign ones."""
    text = log.read_text(errors="replace")
    lines = [
        ln
        for ln in text.splitlines()
        if any(m in ln for m in marks) and not any(b in ln for b in BENIGN)
    ]
    return lines[:5] + ([f"... {len(lines) - 5} more"] if len(lines) > 5 else [])


def plan(rate: int) -> tuple[int, int]:
    """(stations, poll ms) for an offered rate: about POLL_MS per poll, whole stations."""
    stations = max(1, round(rate * POLL_MS / (REGISTERS * 1000)))
    return stations, max(1, round(stations * REGISTERS * 1000 / rate))


def one_rate(
    rate: int, broker: MosquittoBroker, tally: Tally, root: Path, warmup: float, seconds: float
) -> dict[str, Any]:
    stations, poll_ms = plan(rate)
    plc_port = free_port()
    tally.bad = {"agent": 0, "nodered": 0}
    sim = subprocess.Popen(
        [*CLI, "simulate", "--port", str(plc_port), "--stations", str(stations)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_listening("127.0.0.1", plc_port, 30)
        kw = {"warmup": warmup, "seconds": seconds}
        agent = run_agent(stations, poll_ms, plc_port, broker, tally, **kw)
        nodered = run_nodered(stations, poll_ms, plc_port, broker, tally, root, **kw)
    finally:
        sim.terminate()
        sim.wait(30)
    a, n = agent["cpu_s_per_1000_values"], nodered["cpu_s_per_1000_values"]
    return {
        "stations": stations,
        "points": stations * REGISTERS,
        "poll_ms": poll_ms,
        "offered_per_s": round(stations * REGISTERS * 1000 / poll_ms),
        "agent": agent,
        "nodered": nodered,
        "nodered_bad_messages": tally.bad["nodered"],
        "agent_bad_records": tally.bad["agent"],
        "cpu_per_value_ratio_nodered_to_agent": round(n / a, 2) if a and n else None,
    }


def run(
    rates: list[int],
    seconds: float,
    *,
    warmup: float = 5.0,
    nodered_dir: Path | None = None,
) -> dict[str, Any]:
    """Both systems at each offered rate; ``{"skipped": reason}`` without node/npm/Mosquitto."""
    root = nodered_dir or DEFAULT_DIR
    reason = ensure_nodered(root)
    if reason:
        return {"skipped": reason}
    try:
        broker = MosquittoBroker()
    except FileNotFoundError as exc:
        return {"skipped": str(exc)}
    broker.start_sync()
    steps = []
    try:
        tally = Tally(broker.host, broker.port)
        try:
            if not tally.ready.wait(10):
                raise TimeoutError("the counting subscriber did not subscribe")
            for rate in rates:
                step = one_rate(rate, broker, tally, root, warmup, seconds)
                print(json.dumps(step), file=sys.stderr, flush=True)
                steps.append(step)
        finally:
            tally.close()
    finally:
        broker.stop_sync()
        broker.close()
    comparisons = [
        {
            "offered_per_s": s["offered_per_s"],
            "agent_cpu_s_per_1k": s["agent"]["cpu_s_per_1000_values"],
            "nodered_cpu_s_per_1k": s["nodered"]["cpu_s_per_1000_values"],
            "ratio": s["cpu_per_value_ratio_nodered_to_agent"],  # > 1: the agent uses less
        }
        for s in steps
        if s["cpu_per_value_ratio_nodered_to_agent"] is not None
    ]
    return {
        "cpus": os.cpu_count(),
        "versions": versions(root),
        "warmup_s": warmup,
        "seconds": seconds,
        "steps": steps,
        "comparisons": comparisons,
    }


def table(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"Node-RED comparison skipped: {result['skipped']}"
    rows = [
        "| system | offered values/s | delivered values/s | records (Node-RED: messages)/s "
        "| CPU (cores) | CPU s / 1k values | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ratios = []
    for s in result["steps"]:
        for key, label in (("agent", "edge-agent"), ("nodered", "Node-RED")):
            m = s[key]
            rows.append(
                f"| {label} | {s['offered_per_s']:,} | {m['delivered_per_s']:,} "
                f"| {m['polls_per_s']:,} | {m['cpu_cores']} | {m['cpu_s_per_1000_values']} "
                f"| {m['rss_peak_mb']} |"
            )
        ratios.append(
            f"- {s['offered_per_s']:,} values/s ({s['stations']} stations x {REGISTERS} "
            f"registers every {s['poll_ms']} ms): Node-RED / agent CPU per value = "
            f"{s['cpu_per_value_ratio_nodered_to_agent']}"
            + (
                f" (polls without 64 integer values: agent {s['agent_bad_records']}, "
                f"Node-RED {s['nodered_bad_messages']})"
                if s.get("agent_bad_records") or s.get("nodered_bad_messages")
                else ""
            )
        )
    versions_line = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    return "\n".join([*rows, "", *ratios, "", f"Versions: {versions_line}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,10000", help="offered values/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--nodered-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    result = run(rates, args.seconds, warmup=args.warmup, nodered_dir=args.nodered_dir)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
