"""File paths in a config file mean the same wherever the agent is started from: a relative
one is taken relative to the config file's folder, never to the working directory (which is
``/`` under systemd).

A field holds a file path by its name: ``path``, ``socket``, ``folder``, ``pki``,
``user_certificate``, ``user_private_key`` or ``<name>_file``. Device names (``port:
/dev/ttyUSB0``, a keyboard scanner's ``input``, a camera's ``device``) and URLs are not files
of the config and stay as written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

PATH_FIELDS = frozenset({"path", "socket", "folder", "pki", "user_certificate", "user_private_key"})
"""Field names holding a file or folder path, beside every ``<name>_file``."""

M = TypeVar("M", bound=BaseModel)


def is_path_field(name: str) -> bool:
    """Whether a config field of this name holds a file or folder path."""
    return name in PATH_FIELDS or name.endswith("_file")


def config_folder(config_file: str | Path) -> Path:
    """The folder relative paths of this config file are taken from (absolute; symlinks are
    not followed: the folder the file is named in)."""
    return Path(os.path.abspath(config_file)).parent


def resolve(value: str, base: Path | None) -> str:
    """``value`` relative to ``base`` (normalised); an absolute path, an empty string or no
    ``base`` (config text without a file) leave it as it is."""
    if base is None or not value or os.path.isabs(value):
        return value
    return os.path.normpath(os.path.join(base, value))


def resolve_paths(model: M, base: Path | None) -> M:
    """A copy of ``model`` whose path fields, in it and in every model it holds (defaults
    included), are resolved against ``base``; the model itself when nothing changes."""
    if base is None:
        return model
    return _resolved(model, base)  # type: ignore[no-any-return]


def _resolved(value: Any, base: Path, name: str = "") -> Any:
    if isinstance(value, BaseModel):
        changes: dict[str, Any] = {}
        for key in type(value).model_fields:
            old = getattr(value, key)
            new = _resolved(old, base, key)
            if new is not old:
                changes[key] = new
        return value.model_copy(update=changes) if changes else value
    if isinstance(value, str):
        return resolve(value, base) if is_path_field(name) else value
    if isinstance(value, list | tuple):
        items = [_resolved(v, base) for v in value]
        same = all(a is b for a, b in zip(items, value, strict=True))
        return value if same else type(value)(items)
    if isinstance(value, dict):  # models by name (part.limits); raw YAML (templates) is kept
        out = {k: _resolved(v, base) for k, v in value.items()}
        return value if all(out[k] is value[k] for k in value) else out
    return value
