"""Configs the CLI writes for people to edit: ``edge-agent config init`` (a commented starter)
and ``edge-agent simulate --print-config`` (the simulator's stations, as templates).

Both start with the ``$schema`` line editors use for completion and checks, keep the
default control socket, and take the agent id from the host name, because a copied id is
the one mistake that makes two PCs' records collide at the trace store.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import yaml

from kernel.names import NAME_PATTERN

SCHEMA_FILE = "edge-agent.schema.json"
"""Written beside the config by ``config init``; ``edge-agent config schema`` prints it."""
SCHEMA_LINE = f"# yaml-language-server: $schema={SCHEMA_FILE}"
SERVICE_BUFFER = "/var/lib/edge-agent/buffer.db"
SERVICE_SOCKET = "/run/edge-agent/control.sock"


def host_agent_id(hostname: str | None = None) -> str:
    """An agent id from the host name (``Line3-PC1.plant.local`` -> ``line3-pc1``): the
    first label, lower case, anything a name may not hold replaced by ``-``."""
    host = (hostname if hostname is not None else socket.gethostname()).split(".")[0].lower()
    name = re.sub(r"[^a-z0-9_.\-]+", "-", host).strip("-.") or "agent"
    if not re.match(NAME_PATTERN, name):
        name = f"pc-{name}"
    return name[:64]


# ---- config init ------------------------------------------------------------------------


def init_text(
    *, agent_id: str, site: str = "plant", line: str = "line1", service: bool = False
) -> str:
    """A commented starter config: one press station on Modbus TCP, as templates, ready for
    ``edge-agent simulate --port 5020`` and then for the real PLC's address."""
    buffer = SERVICE_BUFFER if service else "data/buffer.db"
    control = (
        f"control:\n  socket: {SERVICE_SOCKET}           # RuntimeDirectory of the systemd unit\n"
        if service
        else "# control:\n#   socket: data/control.sock       # the default (edge-agent status,"
        " reload, context)\n"
    )
    where = (
        "  path: " + buffer + "     # StateDirectory of the systemd unit"
        if service
        else "  path: " + buffer + "                 # relative paths: from this file's folder"
    )
    return f"""{SCHEMA_LINE}
# edge-agent starter config, written by `edge-agent config init`.
# Check it:   edge-agent validate {{this file}}        (every problem at once, file:line)
# Try it:     edge-agent simulate --port 5020 --stations 2   (in another terminal), then
#             edge-agent run {{this file}}
# Reference:  docs/configuration.md (every key), docs/install.md (running as a service).

agent:
  site: {site}                         # plant or site code
  line: {line}                         # production line
  id: {agent_id}                       # unique per plant: topics and record keys carry it

templates:
  devices:
    press-plc:                         # one PLC program, the same at every station
      type: modbus_tcp
      host: ${{PLC_HOST:-127.0.0.1}}    # from the environment, else the simulator
      port: 5020                       # 502 on a real PLC
      timeout: 0.1                     # at most poll_interval
      poll_interval: 0.1               # cycle_complete is on for a tenth of a cycle
      points:
        - {{name: cycle_counter, address: 0, type: uint32}}
        - {{name: temperature, address: 2, type: float32, word_order: CDAB, unit: degC}}
        - {{name: force, address: 4, type: float32, unit: kN}}
        - {{name: pressure, address: 6, type: int16, scale: 0.01, unit: bar}}
        - {{name: cycle_time_ms, address: 8, type: uint32, word_order: BADC, unit: ms}}
        - {{name: part_serial, address: 20, type: string, count: 6}}
        - {{name: material_lot, address: 26, type: string, count: 4, word_order: BADC}}
        # A finished part's results: read by the part snapshot only, never polled.
        - {{name: final_force, address: 30, type: float32, unit: kN, report: snapshot}}
        - {{name: final_depth, address: 32, type: float32, word_order: CDAB, unit: mm,
           report: snapshot}}
        - {{name: result, address: 34, type: uint16, report: snapshot}}
        - {{name: cycle_complete, table: coil, address: 1, type: bool, report: on_change}}

  stations:
    press-station:                     # references without `device:` use the station's device
      context:
        serial: {{point: part_serial}}   # every record carries the serial current at its read
        lot: {{point: material_lot}}
        work_order:                    # set by `edge-agent context set --station ST10 ...`
        operator:
      part:                            # one part record per cycle, read at the trigger
        trigger: {{point: cycle_complete}}
        snapshot:
          points: [cycle_counter, part_serial, material_lot, cycle_time_ms,
                   final_force, final_depth, result]
        counter: cycle_counter         # a jump in it is recorded as a gap
        result: {{point: result, ok: [1], nok: [2]}}
        limits:
          final_force: {{min: 18.0, max: 22.5}}    # kN
        cycle_time: cycle_time_ms

stations:
  - {{name: ST10, template: press-station, device: press1}}
  - {{name: ST20, template: press-station, device: press2}}

devices:
  - {{name: press1, template: press-plc, unit_id: 1, station: ST10}}
  - {{name: press2, template: press-plc, unit_id: 2, station: ST20}}

buffer:                                # the journal: everything lands here first
{where}

mqtt:                                  # the broker the trace store reads
  host: ${{MQTT_HOST:-127.0.0.1}}
  port: 1883
  # confirm: store                     # release journal rows only once the store has them

{control}
metrics:                               # Prometheus: curl http://127.0.0.1:9464/metrics
  enabled: {"true" if service else "false"}
  listen: 127.0.0.1:9464
"""


# ---- simulate --print-config -------------------------------------------------------------

DEVICE_TEMPLATE = "station-plc"
STATION_TEMPLATE = "station"
_ENTRY_KEYS = ("name", "station")  # always the entry's own


def templated(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with what its devices (and its stations) share moved into one template each.

    A key goes into the template when every entry has the same value for it; each entry
    keeps its name and what differs (a unit id, an OPC UA node). A station's references to
    its own device become the station-level ``device:`` default.
    """
    out = dict(raw)
    devices: list[dict[str, Any]] = list(raw.get("devices") or [])
    stations: list[dict[str, Any]] = list(raw.get("stations") or [])
    own_device = {d["station"]: d["name"] for d in devices if d.get("station")}
    stations = [_station_device_default(s, own_device.get(s["name"])) for s in stations]
    templates: dict[str, Any] = {}
    if len(devices) > 1:
        shared, devices = _factor(devices, DEVICE_TEMPLATE)
        templates["devices"] = {DEVICE_TEMPLATE: shared}
    if len(stations) > 1:
        shared, stations = _factor(stations, STATION_TEMPLATE)
        templates["stations"] = {STATION_TEMPLATE: shared}
    ordered: dict[str, Any] = {"agent": out.pop("agent")}
    if templates:
        ordered["templates"] = templates
    ordered["stations"] = stations
    ordered["devices"] = devices
    out.pop("stations", None)
    out.pop("devices", None)
    ordered.update(out)
    return ordered


def _station_device_default(station: dict[str, Any], device: str | None) -> dict[str, Any]:
    if device is None:
        return station

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: strip(v) for k, v in node.items() if not (k == "device" and v == device)
            }
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    body = {k: strip(v) for k, v in station.items() if k != "name"}
    return {"name": station["name"], "device": device, **body}


def _factor(
    entries: list[dict[str, Any]], template: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    first = entries[0]
    own = set(_ENTRY_KEYS) | {"device"}
    shared = {
        k: v for k, v in first.items() if k not in own and all(e.get(k) == v for e in entries)
    }
    slim = []
    for e in entries:
        entry: dict[str, Any] = {"name": e["name"], "template": template}
        entry.update({k: v for k, v in e.items() if k != "name" and k not in shared})
        slim.append(entry)
    return shared, slim


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for small mappings and lists of scalars (an
    entry per line, as people write them)."""


def _represent_dict(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    flow = len(data) <= 6 and all(
        not isinstance(v, dict | list) or (isinstance(v, list) and _scalars(v))
        for v in data.values()
    )
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=_scalars(data))


def _scalars(items: list[Any]) -> bool:
    return all(not isinstance(v, dict | list) for v in items)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)


def dump(cfg: dict[str, Any], header: str) -> str:
    """YAML text of ``cfg``, after the ``$schema`` line and a comment ``header``."""
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    sections = [
        yaml.dump({key: value}, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
        for key, value in cfg.items()
    ]
    return f"{SCHEMA_LINE}\n{comments}\n" + "\n".join(sections)
