"""The driver registry's contract: a kind registered at run time is a full citizen of the
config union, the schema, the reference docs and the driver factory, and is gone after.

The fake kind ``test_counter`` lives in this module; its driver path is
``<this module>:CounterDriver`` (pytest imports this file as ``test_registry``, so the path is
built from ``__name__`` rather than spelled ``tests.test_registry``, which would import a
second copy of the module).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

from drivers import registry
from drivers.base import PolledDriver
from drivers.bus import Buses
from drivers.device import DeviceConfig
from drivers.registry import DriverContext, DriverKind, MissingExtra, create_driver
from edge_agent.config import parse_config
from edge_agent.docgen import render
from edge_agent.schema import config_schema
from kernel.errors import ConfigError
from kernel.model import Observation
from kernel.names import Name

ROOT = Path(__file__).resolve().parent.parent


class CounterDevice(DeviceConfig):
    """A test-only counter: counts up by step on every read."""

    type: Literal["test_counter"] = Field(description="Driver: test_counter.")
    start: int = Field(default=0, description="First value.")
    step: int = Field(default=1, ge=1, description="Added on every read.")
    points: list[Name] = Field(min_length=1, description="Point names.")

    def point_names(self) -> Sequence[str]:
        return self.points


class CounterDriver(PolledDriver):
    """Reads every point as the same counter."""

    def __init__(self, config: CounterDevice, context: DriverContext) -> None:
        super().__init__(config.name)
        self.config = config
        self.context = context
        self.value = config.start

    def groups(self) -> Sequence[tuple[float, Hashable]]:
        return [(1.0, "all")]

    def point_names(self) -> Sequence[str]:
        return self.config.points

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def read(self, group: Hashable) -> list[Observation]:
        self.value += self.config.step
        return [Observation(self.name, p, self.value) for p in self.config.points]


COUNTER = DriverKind(
    type="test_counter",
    config=CounterDevice,
    driver=f"{__name__}:CounterDriver",
    summary="A test-only counter.",
)

NEEDS_EXTRA = DriverKind(
    type="test_counter",
    config=CounterDevice,
    driver=f"{__name__}:CounterDriver",
    summary="A test-only counter whose extra is not installed.",
    extra="xyz",
    requires=("module_that_does_not_exist_xyz",),
)

CONFIG = """\
agent: {site: plant1, line: line3, id: pc1}
stations:
  - name: ST10
devices:
  - name: counter1
    type: test_counter
    station: ST10
    step: 2
    points: [count, rate]
"""
TYPE_LINE = 6
"""The line of ``type: test_counter`` in CONFIG."""

PART = """\
agent: {site: plant1, line: line3, id: pc1}
stations:
  - name: ST10
    part:
      trigger: {device: counter1, point: count}
      snapshot: {device: counter1, points: [count, rate]}
      handshake: {taken: rate}
devices:
  - name: counter1
    type: test_counter
    points: [count, rate]
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc_info:
        parse_config(text, "line3.yaml")
    return [str(i) for i in exc_info.value.issues]


def types() -> list[str]:
    return [k.type for k in registry.kinds()]


def device_branches(schema: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    """The schema of each device kind, by the ``type`` const that selects it: ``oneOf``
    branches stating it, or ``allOf`` rules ``if type is X then <X's schema>``."""
    defs = schema["$defs"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref", "")
        target: dict[str, Any] = defs[ref.removeprefix("#/$defs/")] if ref else node
        return target

    items = schema["properties"]["devices"]["items"]
    out: dict[Any, dict[str, Any]] = {}
    for branch in items.get("oneOf", []):
        target = resolve(branch)
        out[target["properties"]["type"].get("const")] = target
    for rule in items.get("allOf", []):
        if "if" in rule and "then" in rule:
            out[rule["if"]["properties"]["type"].get("const")] = resolve(rule["then"])
    return out


@pytest.fixture
def counter_kind() -> Iterator[DriverKind]:
    with registry.registered(COUNTER) as kind:
        yield kind
    assert "test_counter" not in types()


def test_builtin_kinds_are_discovered() -> None:
    assert "modbus_tcp" in types()
    modbus = registry.find("modbus_tcp")
    assert modbus is not None
    assert modbus.folder == ROOT / "drivers" / "modbus"
    assert registry.find("test_counter") is None


def test_a_registered_kind_is_a_kind_while_the_block_runs() -> None:
    before = registry.generation()
    with registry.registered(COUNTER) as kind:
        assert kind is COUNTER
        assert "test_counter" in types()
        assert registry.find("test_counter") is COUNTER
        assert registry.generation() != before
        assert kind.folder == Path(__file__).resolve().parent
        with (
            pytest.raises(ValueError, match="'test_counter' is registered already"),
            registry.registered(NEEDS_EXTRA),
        ):
            pass
    assert "test_counter" not in types()
    assert registry.find("test_counter") is None


def test_a_builtin_type_cannot_be_registered_again() -> None:
    modbus = registry.find("modbus_tcp")
    assert modbus is not None
    with (
        pytest.raises(ValueError, match="'modbus_tcp' is registered already"),
        registry.registered(modbus),
    ):
        pass
    assert types().count("modbus_tcp") == 1


def test_config_accepts_the_kind_and_rejects_unknown_keys_in_it(
    counter_kind: DriverKind,
) -> None:
    cfg = parse_config(CONFIG, "line3.yaml")
    (dev,) = cfg.devices
    assert isinstance(dev, CounterDevice)
    assert (dev.name, dev.step, dev.start, dev.points) == ("counter1", 2, 0, ["count", "rate"])
    assert cfg.station_of(dev, "rate") == "ST10"

    assert errors(CONFIG.replace("    step: 2\n", "    step: 2\n    stpe: 3\n")) == [
        "line3.yaml:9:5: devices[0].stpe: unknown key 'stpe'; did you mean 'step'?"
    ]
    assert errors(CONFIG.replace("step: 2", "step: 0")) == [
        "line3.yaml:8:5: devices[0].step: expected at least 1, found 0"
    ]


def test_schema_and_reference_have_the_kind(counter_kind: DriverKind) -> None:
    branches = device_branches(config_schema())
    assert "modbus_tcp" in branches
    counter = branches["test_counter"]
    assert {"type", "name", "start", "step", "points"} <= set(counter["properties"])
    assert "host" not in counter["properties"]  # the branch is the counter's, not Modbus'
    doc = render()
    assert "## devices[] with type: test_counter\n" in doc
    section = doc.split("## devices[] with type: test_counter\n", 1)[1].split("\n## ", 1)[0]
    assert "A test-only counter: counts up by step on every read." in section
    assert "| `step` | int | `1` | Added on every read. |" in section


def test_schema_and_reference_lose_the_kind_after_the_block() -> None:
    with registry.registered(COUNTER):
        assert "test_counter" in device_branches(config_schema())
    assert "test_counter" not in device_branches(config_schema())
    assert "devices[] with type: test_counter" not in render()


async def test_create_driver_builds_the_kinds_driver(counter_kind: DriverKind) -> None:
    cfg = parse_config(CONFIG, "line3.yaml")
    context = DriverContext(buses=Buses())
    driver = create_driver(cfg.devices[0], context)
    assert type(driver) is CounterDriver
    assert driver.name == "counter1"
    assert driver.config is cfg.devices[0]
    assert driver.context is context
    observations = await driver.read("all")
    assert [(o.device, o.point, o.value) for o in observations] == [
        ("counter1", "count", 2),
        ("counter1", "rate", 2),
    ]


def test_snapshot_and_handshake_on_a_kind_that_cannot_are_config_errors(
    counter_kind: DriverKind,
) -> None:
    assert errors(PART) == [
        "line3.yaml:6:18: stations[0].part.snapshot.device: a test_counter device cannot read "
        "a consistent snapshot; take the snapshot from a device that can (a PLC)",
        "line3.yaml:7:19: stations[0].part.handshake.taken: cannot be written: a test_counter "
        "device is never written to",
    ]


def test_a_kind_whose_extra_is_missing_is_refused_at_its_type_line() -> None:
    with registry.registered(NEEDS_EXTRA):
        assert errors(CONFIG) == [
            f"line3.yaml:{TYPE_LINE}:5: devices[0].type: device type 'test_counter' needs "
            "module_that_does_not_exist_xyz, which is not installed: "
            "pip install 'edge-agent[xyz]'"
        ]
        device = CounterDevice(type="test_counter", name="counter1", points=["count"])
        with pytest.raises(MissingExtra, match=r"pip install 'edge-agent\[xyz\]'"):
            create_driver(device, DriverContext(buses=Buses()))


def test_a_missing_dotted_requirement_is_reported_not_raised() -> None:
    # find_spec("a.b") imports a and raises when a is missing: the kind must still be refused
    # with the install hint, not crash the config check.
    kind = DriverKind(
        type="test_counter",
        config=CounterDevice,
        driver=f"{__name__}:CounterDriver",
        summary="A test-only counter whose extra is not installed.",
        extra="xyz",
        requires=("json", "module_that_does_not_exist_xyz.client"),
    )
    assert kind.missing() == (
        "device type 'test_counter' needs module_that_does_not_exist_xyz.client, which is "
        "not installed: pip install 'edge-agent[xyz]'"
    )


def test_after_the_block_the_type_is_unknown_again() -> None:
    with registry.registered(COUNTER):
        parse_config(CONFIG, "line3.yaml")  # accepted while registered
    (message,) = errors(CONFIG)
    assert message.startswith(
        f"line3.yaml:{TYPE_LINE}:5: devices[0].type: unknown device type 'test_counter'"
    )
    assert "modbus_tcp" in message  # the known types are listed


# ---- the config does not import the driver stack -------------------------------------------

MODBUS_CONFIG = """\
agent: {site: plant1, line: line3, id: pc1}
stations:
  - name: ST10
devices:
  - name: plc1
    type: modbus_tcp
    host: 127.0.0.1
    points:
      - {name: temp, address: 0, type: float32}
"""

IMPORTS = textwrap.dedent(
    """
    import json, sys
    import edge_agent.config
    from drivers import registry
    from drivers.bus import Buses

    def loaded():
        return sorted({m.split(".")[0] for m in sys.modules} & {"pymodbus", "serial"})

    kinds = [k.type for k in registry.kinds()]
    cfg = edge_agent.config.parse_config(sys.stdin.read())
    after_parse = loaded()
    registry.create_driver(cfg.devices[0], registry.DriverContext(buses=Buses()))
    print(json.dumps({"kinds": kinds, "after_parse": after_parse, "after_create": loaded()}))
    """
)


def test_loading_a_config_does_not_import_the_driver_stack() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS],
        input=MODBUS_CONFIG,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert "modbus_tcp" in seen["kinds"]  # every kind's package was imported
    assert "pymodbus" not in seen["after_parse"], "the config models import the driver stack"
    assert seen["after_parse"] == []  # nor pyserial
    assert "pymodbus" in seen["after_create"]  # the check above can see pymodbus
