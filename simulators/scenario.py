"""Agent configs that match the simulators, for the demo, the tests and ``simulate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simulators.station import (
    COIL_CYCLE_COMPLETE,
    COIL_DATA_READY,
    COIL_DATA_TAKEN,
    FORCE_NOK_ABOVE,
    REGISTER_MAP,
    point_config,
)

PROCESS_POINTS = tuple(n for n in REGISTER_MAP if n not in ("part_serial", "material_lot"))
PART_POINTS = ("final_force", "final_depth", "result")
"""Registers that only matter once a part is done: read by the part snapshot, not polled."""
SNAPSHOT_POINTS = ("cycle_counter", "part_serial", "material_lot", "cycle_time_ms", *PART_POINTS)
FORCE_LIMITS = {"min": 18.0, "max": FORCE_NOK_ABOVE}


def station_name(index: int) -> str:
    return f"ST{(index + 1) * 10}"


def demo_config(
    *,
    modbus_port: int,
    mqtt_port: int,
    buffer_path: str,
    stations: int = 1,
    poll_interval: float = 0.1,
    modbus_host: str = "127.0.0.1",
    mqtt_host: str = "127.0.0.1",
    agent_id: str = "demo-pc1",
    parts: bool = True,
    handshake: bool = False,
    rtu_port: str | None = None,
    opcua_endpoint: str | None = None,
) -> dict[str, Any]:
    """A config for ``stations`` simulated stations on one gateway (unit ids 1..n), or with
    ``rtu_port`` on one Modbus RTU line (8E1, 19200 baud) at that serial port, or with
    ``opcua_endpoint`` as variables of one OPC UA server (``simulators.opcua_server``).

    Serial and lot sit in the same coalesced request as the process values, so every
    reading's serial is exactly the one the PLC showed at that instant. With ``parts``, each
    station records one part per cycle, triggered by the cycle-complete coil, or with
    ``handshake`` by data ready / data taken (the simulator must run with handshake too).

    The device timeout is the poll interval (at most 1 s): a longer one fails validation, as
    a slow answer would overrun the next poll.
    """
    timeout = min(poll_interval, 1.0)
    devices = []
    station_cfgs = []
    for i in range(stations):
        name = station_name(i)
        dev = f"press{i + 1}"
        if opcua_endpoint is not None:
            devices.append(opcua_device(dev, name, opcua_endpoint, parts))
        else:
            link: dict[str, Any] = (
                {"type": "modbus_tcp", "host": modbus_host, "port": modbus_port}
                if rtu_port is None
                else {"type": "modbus_rtu", "port": rtu_port}
            )
            devices.append(
                {
                    "name": dev,
                    **link,
                    "unit_id": i + 1,
                    "station": name,
                    "timeout": timeout,
                    "poll_interval": poll_interval,
                    "backoff_initial": 0.2,
                    "backoff_max": 2.0,
                    "points": _points(parts),
                }
            )
        station: dict[str, Any] = {
            "name": name,
            "context": {
                "serial": {"device": dev, "point": "part_serial"},
                "lot": {"device": dev, "point": "material_lot"},
                "work_order": None,
                "operator": None,
            },
        }
        if parts:
            station["part"] = _part(dev, handshake)
            station["context"]["product"] = None
            station["scans"] = {
                "sources": [{"device": dev, "point": "part_label"}],
                "rules": [
                    {
                        "name": "part_label",
                        "gs1": True,
                        "require": ["01", "21"],
                        "set": {"serial": "21", "lot": "10", "product": "01"},
                    }
                ],
            }
        station_cfgs.append(station)
    return {
        "agent": {"site": "demo-plant", "line": "line1", "id": agent_id},
        "stations": station_cfgs,
        "devices": devices,
        "buffer": {"path": buffer_path},
        # Beside the buffer, so agents started from different directories never share one.
        "control": {"socket": str(Path(buffer_path).with_suffix(".sock"))},
        "mqtt": {"host": mqtt_host, "port": mqtt_port},
    }


OPCUA_NAMESPACE = "urn:edge-agent:sim:stations"
"""The simulator's namespace URI (``simulators.opcua.points.NAMESPACE_URI``)."""


def opcua_device(device: str, station: str, endpoint: str, parts: bool) -> dict[str, Any]:
    """One OPC UA device reading one simulated station's variables: process values by
    subscription (every change, no sampling delay, a queue deep enough for every pulse),
    a part's values in its snapshot."""
    points: list[dict[str, Any]] = []
    for name, spec in REGISTER_MAP.items():
        point: dict[str, Any] = {"name": name, "node": f"nsu={OPCUA_NAMESPACE};s={station}.{name}"}
        if spec[4] is not None:
            point["unit"] = spec[4]
        if parts and name in PART_POINTS:
            point["report"] = "snapshot"
        points.append(point)
    if parts:
        for flag in ("cycle_complete", "data_ready", "data_taken"):
            point = {"name": flag, "browse_path": f"{station}/{flag}", "type": "bool"}
            point["queue_size"] = 100
            if flag == "data_taken":
                point["report"] = "snapshot"
            points.append(point)
    return {
        "name": device,
        "type": "opcua",
        "endpoint": endpoint,
        "namespace": OPCUA_NAMESPACE,
        "station": station,
        "publishing_interval": 0.02,
        "keepalive_count": 50,
        "lifetime_count": 150,
        "retry_interval": 0.5,
        "backoff_initial": 0.2,
        "backoff_max": 2.0,
        "points": points,
    }


def _points(parts: bool) -> list[dict[str, Any]]:
    points = []
    for name in REGISTER_MAP:
        point = point_config(name)
        if parts and name in PART_POINTS:
            point["report"] = "snapshot"
        if name == "part_label":
            point["report"] = "on_change"
        points.append(point)
    if parts:
        points += [
            {"name": "cycle_complete", "table": "coil", "address": COIL_CYCLE_COMPLETE,
             "type": "bool", "report": "on_change"},
            {"name": "data_ready", "table": "coil", "address": COIL_DATA_READY,
             "type": "bool", "report": "on_change"},
            {"name": "data_taken", "table": "coil", "address": COIL_DATA_TAKEN,
             "type": "bool", "report": "snapshot"},
        ]  # fmt: skip
    return points


def _part(device: str, handshake: bool) -> dict[str, Any]:
    part: dict[str, Any] = {
        "trigger": {"device": device, "point": "data_ready" if handshake else "cycle_complete"},
        "snapshot": {"device": device, "points": list(SNAPSHOT_POINTS)},
        "counter": "cycle_counter",
        "result": {"point": "result", "ok": [1], "nok": [2]},
        "limits": {"final_force": dict(FORCE_LIMITS)},
        "cycle_time": "cycle_time_ms",
    }
    if handshake:
        part["handshake"] = {"taken": "data_taken"}
    return part
