"""Pointing an agent config at the simulators: the overrides (device name -> keys such as
``host``, ``port``, ``endpoint``) applied to a loaded config, or written into a copy of the
config file for ``edge-agent run``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from edge_agent.config import AgentConfig, load_config
from edge_agent.config.paths import config_folder, is_path_field, resolve

Overrides = Mapping[str, Mapping[str, Any]]


def apply_overrides(config: AgentConfig, overrides: Overrides) -> AgentConfig:
    """``config`` with each overridden device's keys replaced (and checked by its model)."""
    devices = []
    for d in config.devices:
        keys = overrides.get(d.name)
        devices.append(d if not keys else type(d).model_validate({**dict(d), **keys}))
    return config.model_copy(update={"devices": devices})


class _Dumper(yaml.SafeDumper):
    """Plain YAML: a shared value (a template's points, an alias) is written out again, not
    as an anchor the reader would have to follow."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def overridden_text(source: str | Path, overrides: Overrides, out: str | Path) -> str:
    """The config file ``source`` with ``overrides`` applied to its device entries, as the
    text of a file at ``out``.

    The file as written: templates, ``${VAR}`` references and secret files stay as they are
    (nothing secret is copied); comments are lost. A device's keys go into its own entry,
    where they win over a template's. Relative paths written in the file are made absolute
    (from ``source``'s folder) unless ``out`` is in the same folder; defaults (the journal's
    ``data/buffer.db``) are taken from the new file's folder, as for any config.
    """
    config = load_config(source)  # the names and order of the devices, and a valid file
    data = yaml.safe_load(Path(source).read_text(encoding="utf-8-sig"))
    entries = data["devices"]
    for i, device in enumerate(config.devices):
        keys = overrides.get(device.name)
        if keys:
            entries[i] = {**entries[i], **keys}
    base = config_folder(source)
    if base != config_folder(out):
        data = _absolute_paths(data, base)
    header = (
        f"# {Path(source).name} with its devices pointed at `edge-agent simulate` "
        "(written by simulate --write-config).\n"
    )
    body = yaml.dump(
        data,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=None,
        width=100,
    )
    return header + body


def write_config(source: str | Path, overrides: Overrides, out: str | Path) -> None:
    """Write :func:`overridden_text` to ``out`` (atomically: a reader never sees half)."""
    text = overridden_text(source, overrides, out)
    target = Path(out)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def _absolute_paths(value: Any, base: Path, name: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _absolute_paths(v, base, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolute_paths(v, base) for v in value]
    if isinstance(value, str) and is_path_field(name) and "${" not in value:
        return resolve(value, base)
    return value
