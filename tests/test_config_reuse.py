"""Reuse in config files: templates, the station's default device, environment variables."""

from __future__ import annotations

import pytest

from edge_agent.binder import BindingRules
from edge_agent.config import parse_config
from kernel.errors import ConfigError

LINE = """\
agent: {site: plant1, line: line3, id: pc1}
templates:
  devices:
    press-plc:
      type: modbus_tcp
      host: 10.0.0.5
      port: 1502
      timeout: 0.5
      poll_interval: 0.5
      points:
        - {name: counter, address: 0, type: uint32}
        - {name: serial, address: 20, type: string, count: 6}
        - {name: force, address: 30, type: float32, report: snapshot}
        - {name: done, table: coil, address: 1, type: bool, report: on_change}
  stations:
    press-station:
      context:
        serial: {point: serial}
        work_order:
      part:
        trigger: {point: done}
        snapshot: {points: [counter, serial, force]}
        counter: counter
        limits:
          force: {max: 22.5}
stations:
  - {name: ST10, template: press-station, device: press1}
  - {name: ST20, template: press-station, device: press2}
devices:
  - {name: press1, template: press-plc, unit_id: 1, station: ST10}
  - {name: press2, template: press-plc, unit_id: 2, station: ST20}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc_info:
        parse_config(text, "line.yaml", env={})
    return [str(i) for i in exc_info.value.issues]


def test_templates_expand_and_entries_override() -> None:
    text = LINE.replace(
        "unit_id: 2, station: ST20}",
        "unit_id: 2, station: ST20, port: 502,\n"
        "     points: [{name: done, table: coil, address: 1, type: bool},\n"
        "              {name: serial, address: 20, type: string, count: 6},\n"
        "              {name: counter, address: 0, type: uint32},\n"
        "              {name: force, address: 30, type: float32}]}",
    )
    cfg = parse_config(text, env={})
    p1, p2 = cfg.devices
    assert (p1.name, p1.host, p1.port, p1.unit_id, p1.timeout) == (
        "press1",
        "10.0.0.5",
        1502,
        1,
        0.5,
    )
    # a key given in the entry replaces the template's whole value: port, and the whole list
    assert (p2.port, p2.unit_id) == (502, 2)
    assert [p.name for p in p2.points] == ["done", "serial", "counter", "force"]
    assert [p.name for p in p1.points] == ["counter", "serial", "force", "done"]
    # every use gets its own copy
    assert p1.points is not p2.points
    st10, st20 = cfg.stations
    assert st10.part is not None
    assert st20.part is not None
    assert st10.part.limits["force"].max == 22.5
    assert (st10.device, st20.device) == ("press1", "press2")


def test_station_template_with_station_device_resolves_every_reference() -> None:
    cfg = parse_config(LINE, env={})
    st = cfg.stations[1]
    assert st.part is not None
    assert st.context["serial"] is not None
    assert st.context["serial"].device == "press2"
    assert st.part.trigger.device == "press2"
    assert st.part.snapshot.device == "press2"
    assert st.context["work_order"] is None
    rules = BindingRules.from_config(cfg)  # downstream reads src.device as a plain str
    assert rules.trigger_of[("press2", "done")] == ("ST20",)
    assert rules.context_of[("press1", "serial")] == (("ST10", "serial"),)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # a mistake in a template: one issue at the template's line, naming the uses
        (
            "      timeout: 0.5\n",
            "      timeout: fast\n",
            [
                "line.yaml:8:7: devices[0].timeout (from template 'press-plc', and 1 more use): "
                "expected a number, found 'fast'"
            ],
        ),
        (
            "{name: serial, address: 20, type: string, count: 6}",
            "{name: serial, address: 20, type: string}",
            [
                "line.yaml:12:11: devices[0].points[1].count (from template 'press-plc', and 1 "
                "more use): type string needs count (registers, two characters each)"
            ],
        ),
        (
            "      host: 10.0.0.5\n",
            "      host: 10.0.0.5\n      hots: 10.0.0.6\n",
            [
                "line.yaml:7:7: devices[0].hots (from template 'press-plc', and 1 more use): "
                "unknown key 'hots'; did you mean 'host'?"
            ],
        ),
        # ... also when only one entry uses it, and for stations
        (
            "trigger: {point: done}",
            "trigger: {point: dune}",
            [
                "line.yaml:21:19: stations[0].part.trigger.point (from template 'press-station'): "
                "unknown point of 'press1' 'dune'; did you mean 'done'?",
                "line.yaml:21:19: stations[1].part.trigger.point (from template 'press-station'): "
                "unknown point of 'press2' 'dune'; did you mean 'done'?",
            ],
        ),
        # a mistake in the entry itself is at the entry's line
        (
            "unit_id: 2, station: ST20}",
            "unit_id: 2, station: ST20, port: fast}",
            ["line.yaml:31:68: devices[1].port: expected a whole number, found 'fast'"],
        ),
        # unknown template: did you mean, and no cascade of the keys it would have given
        (
            "template: press-plc, unit_id: 2",
            "template: press-pcl, unit_id: 2",
            [
                "line.yaml:31:20: devices[1].template: unknown device template 'press-pcl'; did "
                "you mean 'press-plc'?"
            ],
        ),
        (
            "{name: ST20, template: press-station",
            "{name: ST20, template: 7",
            ["line.yaml:28:18: stations[1].template: expected a template name, found 7"],
        ),
        (
            "    press-station:\n",
            "    press-station:\n      template: other\n",
            [
                "line.yaml:17:7: templates.stations.press-station.template: a template cannot "
                "use another template; copy its keys here"
            ],
        ),
        # two entries for the same PLC unit
        (
            "unit_id: 2, station: ST20}",
            "unit_id: 1, station: ST20}",
            [
                "line.yaml:31:41: devices[1].unit_id: same PLC as devices[0] (10.0.0.5:1502 "
                "unit 1): give each PLC unit one entry (its points may each set poll_interval "
                "and station)"
            ],
        ),
    ],
)
def test_template_errors_point_at_the_template(old: str, new: str, expected: list[str]) -> None:
    assert old in LINE
    assert errors(LINE.replace(old, new, 1)) == expected


def test_template_without_templates_section() -> None:
    text = LINE.replace("template: press-plc, unit_id: 2", "template: press-pcl, unit_id: 2")
    text = text.replace("  devices:\n    press-plc:", "  devices: {}\n  unused:\n    press-plc:")
    assert errors(text) == [
        "line.yaml:4:3: templates.unused: unknown key 'unused'",
        "line.yaml:31:20: devices[0].template: unknown device template 'press-plc': templates.devices "
        "defines none",
        "line.yaml:32:20: devices[1].template: unknown device template 'press-pcl': templates.devices "
        "defines none",
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # no device anywhere: each reference says where to give one
        (
            "{name: ST10, template: press-station, device: press1}",
            "{name: ST10, template: press-station}",
            [
                "line.yaml:18:9: stations[0].context.serial.device (from template "
                "'press-station'): no device: give device here or on the station",
                "line.yaml:21:9: stations[0].part.trigger.device (from template "
                "'press-station'): no device: give device here or on the station",
                "line.yaml:22:9: stations[0].part.snapshot.device (from template "
                "'press-station'): no device: give device here or on the station",
            ],
        ),
        # an unknown station device is one issue, at the station's device key
        (
            "device: press1}",
            "device: pres1}",
            ["line.yaml:27:43: stations[0].device: unknown device 'pres1'; did you mean 'press1'?"],
        ),
    ],
)
def test_station_device(old: str, new: str, expected: list[str]) -> None:
    assert old in LINE
    assert errors(LINE.replace(old, new, 1)) == expected


def test_a_reference_with_its_own_device_keeps_it() -> None:
    text = LINE.replace("serial: {point: serial}", "serial: {device: press1, point: serial}")
    cfg = parse_config(text, env={})
    serial = cfg.stations[1].context["serial"]
    assert serial is not None
    assert serial.device == "press1"


def test_station_device_when_built_in_code() -> None:
    from edge_agent.config import StationConfig

    st = StationConfig.model_validate(
        {
            "name": "ST10",
            "device": "plc",
            "scans": {"sources": [{}, {"point": "label"}, {"device": "cam"}]},
        }
    )
    assert st.scans is not None
    assert [(s.device, s.point) for s in st.scans.sources] == [
        ("plc", None),
        ("plc", "label"),
        ("cam", None),
    ]


# ---- environment variables -------------------------------------------------------------------


def test_env_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLC_GATEWAY", "10.1.3.50")
    monkeypatch.setenv("PLC_PORT", "5020")
    monkeypatch.setenv("EMPTY", "")
    monkeypatch.delenv("UNSET_PORT", raising=False)
    text = (
        LINE.replace("host: 10.0.0.5", "host: ${PLC_GATEWAY}")
        .replace("port: 1502", 'port: "${PLC_PORT}"')
        .replace("timeout: 0.5", "timeout: ${UNSET_TIMEOUT:-0.5}")
        .replace("poll_interval: 0.5", "poll_interval: ${EMPTY:-0.5}")
        .replace(
            "devices:\n  - {name: press1",
            "mqtt: {client_id: 'pc-${UNSET_ID:-1}-$${x}'}\ndevices:\n  - {name: press1",
        )
    )
    cfg = parse_config(text, "line.yaml")
    dev = cfg.devices[0]
    assert (dev.host, dev.port, dev.timeout, dev.poll_interval) == ("10.1.3.50", 5020, 0.5, 0.5)
    assert cfg.mqtt.client_id == "pc-1-${x}"


def test_env_values_are_never_parsed_as_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITE", "plant1}\nstations: []\n#")
    text = LINE.replace("site: plant1", "site: '${SITE}'")
    with pytest.raises(ConfigError) as exc_info:
        parse_config(text, "line.yaml")
    assert [str(i) for i in exc_info.value.issues] == [
        "line.yaml:1:9: agent.site: expected a name (letters, digits, '_', '.', '-'; starting "
        "with a letter or '_'), found 'plant1}\\nstations: []\\n#'"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "${PLC_HOST}",
            "line.yaml:6:13: templates.devices.press-plc.host: "
            "environment variable 'PLC_HOST' is not set (use ${PLC_HOST:-default} for a default)",
        ),
        (
            "${PLC HOST}",
            "line.yaml:6:13: templates.devices.press-plc.host: "
            "'${PLC HOST}' is not a variable reference: write ${NAME} or ${NAME:-default} (or "
            "$${ for a literal ${)",
        ),
        (
            "'${PLC_HOST'",
            "line.yaml:6:13: templates.devices.press-plc.host: '${' "
            "without a closing '}' (write $${ for a literal ${)",
        ),
    ],
)
def test_env_problems(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.delenv("PLC_HOST", raising=False)
    text = LINE.replace("host: 10.0.0.5", f"host: {value}")
    with pytest.raises(ConfigError) as exc_info:
        parse_config(text, "line.yaml")
    # one issue: the empty host the missing variable leaves is not reported again
    assert [str(i) for i in exc_info.value.issues] == [expected]


def test_env_is_not_substituted_in_keys_or_non_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X", "y")
    found = errors(LINE.replace("  stations:\n    press", "  stations:\n    ${X}: {}\n    press"))
    assert found == [
        "line.yaml:16:5: templates.stations.${X}: expected a name (letters, digits, '_', '.', "
        "'-'; starting with a letter or '_'), found '${X}'"
    ]


def test_templates_are_not_changed_by_their_uses() -> None:
    cfg = parse_config(LINE, env={})
    station = cfg.templates.stations["press-station"]
    assert station["part"]["trigger"] == {"point": "done"}
    assert station["context"]["serial"] == {"point": "serial"}
