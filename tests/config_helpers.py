"""Config tests' shared inputs: a small valid config and the device kinds an error lists."""

from __future__ import annotations

from drivers import registry

KIND_TYPES = ", ".join(k.type for k in registry.kinds())
"""What an unknown device type's error lists: every kind, in the registry's order."""

GOOD = """\
agent: {site: plant1, line: line3, id: pc1}
stations:
  - name: ST10
    context:
      serial: {device: plc1, point: serial}
devices:
  - name: plc1
    type: modbus_tcp
    host: 127.0.0.1
    points:
      - {name: serial, address: 100, type: string, count: 6}
      - {name: temp, address: 0, type: float32, word_order: CDAB, unit: degC}
"""
