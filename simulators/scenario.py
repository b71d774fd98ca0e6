"""Agent configs that match the simulators, for the demo, the tests and ``simulate``."""

from __future__ import annotations

from typing import Any

from simulators.station import REGISTER_MAP, point_config

PROCESS_POINTS = tuple(n for n in REGISTER_MAP if n not in ("part_serial", "material_lot"))


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
) -> dict[str, Any]:
    """A config for ``stations`` simulated stations on one gateway (unit ids 1..n).

    Serial and lot sit in the same coalesced request as the process values, so every
    reading's serial is exactly the one the PLC showed at that instant.
    """
    devices = []
    station_cfgs = []
    for i in range(stations):
        name = station_name(i)
        dev = f"press{i + 1}"
        devices.append(
            {
                "name": dev,
                "type": "modbus_tcp",
                "host": modbus_host,
                "port": modbus_port,
                "unit_id": i + 1,
                "station": name,
                "timeout": 1.0,
                "poll_interval": poll_interval,
                "backoff_initial": 0.2,
                "backoff_max": 2.0,
                "points": [point_config(n) for n in REGISTER_MAP],
            }
        )
        station_cfgs.append(
            {
                "name": name,
                "context": {
                    "serial": {"device": dev, "point": "part_serial"},
                    "lot": {"device": dev, "point": "material_lot"},
                },
            }
        )
    return {
        "agent": {"site": "demo-plant", "line": "line1", "id": agent_id},
        "stations": station_cfgs,
        "devices": devices,
        "buffer": {"path": buffer_path},
        "mqtt": {"host": mqtt_host, "port": mqtt_port},
    }
