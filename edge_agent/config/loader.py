"""Loading a config file: YAML with positions, templates, station default devices, secret
files, then the models and the cross-section checks; every problem reported at once.

``load_config(path)`` and ``parse_config(text)`` raise ``ConfigError`` listing every
``file:line:col: key.path: message``.

Relative file paths in a loaded file (``buffer.path``, ``control.socket``, TLS and secret
files, ...: :mod:`edge_agent.config.paths`) are taken relative to the file's folder, defaults
included, so the agent finds the same files from any working directory. Text parsed without a
file (``parse_config``) keeps them relative to the working directory.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError

from edge_agent import yamlsrc
from edge_agent.config.checks import unknown
from edge_agent.config.messages import found_text, holds, pydantic_issues, unwrap
from edge_agent.config.models import AgentConfig, ControlConfig, agent_model
from edge_agent.config.paths import config_folder, resolve, resolve_paths
from edge_agent.config.refs import defaulted_refs, with_station_device
from edge_agent.yamlsrc import SourceMap, decode, load_yaml
from kernel.errors import ConfigError, ConfigIssue


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate a config file; raise ConfigError listing every problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError([ConfigIssue(str(p), None, None, "", f"cannot read: {why}")]) from None
    text, issues = decode(raw, str(p))
    if text is None:
        raise ConfigError(issues)
    return _parse(text, str(p), env, config_folder(p))


def parse_config(
    text: str, file: str = "<config>", env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Validate config text; raise ConfigError listing every problem with file:line:col.

    Before the models see the data: templates are expanded, station default devices filled
    in, ``<name>_file`` secrets read (``env``, default ``os.environ``, serves ``${VAR}``).
    Relative paths stay relative to the working directory (there is no file to take them
    from; ``load_config`` takes them from the file's folder).
    """
    return _parse(text, file, env, None)


def _parse(text: str, file: str, env: Mapping[str, str] | None, base: Path | None) -> AgentConfig:
    """``parse_config`` with relative paths taken from ``base`` (None: the CWD)."""
    data, smap, issues = load_yaml(text, file, env)
    if data is None:
        raise ConfigError(issues)
    if not isinstance(data, dict):
        issues.append(
            smap.issue((), f"expected a mapping of sections, found {found_text(data, smap, ())}")
        )
        raise ConfigError(issues)
    incomplete = _expand_templates(data, smap, issues)
    _fill_station_devices(data, smap)
    read_secret_files(agent_model(), data, (), smap, issues, base)
    _booleans_as_numbers(agent_model(), data, (), smap, issues)
    try:
        cfg = agent_model().model_validate(data)
    except ValidationError as exc:
        issues.extend(pydantic_issues(exc.errors(), data, smap, incomplete))
        raise ConfigError(_tidy(issues)) from None
    cfg = resolve_paths(cfg, base)  # before the checks: they compare folders
    # A value reported already (true where a number belongs) is no news to the checks.
    issues.extend(smap.issue(p, msg) for p, msg in cfg.issues() if not smap.is_reported(p))
    if issues:
        raise ConfigError(_tidy(issues))
    return cfg


def control_socket(path: str | Path, env: Mapping[str, str] | None = None) -> str:
    """The control socket a config file names, read leniently: only ``control.socket``, from
    a file that may not validate (an integrator asks the agent's status while editing). The
    default when the file cannot be read or parsed or gives none; relative to its folder."""
    socket = ControlConfig.model_fields["socket"].default
    with contextlib.suppress(OSError):
        text, _ = decode(Path(path).read_bytes(), str(path))
        data = load_yaml(text, str(path), env)[0] if text is not None else None
        control = data.get("control") if isinstance(data, dict) else None
        given = control.get("socket") if isinstance(control, dict) else None
        if isinstance(given, str) and given:
            socket = given
    return resolve(socket, config_folder(path))


def _tidy(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Sorted by position; one issue per position and message. Ten devices from one template
    with one mistake in it are one issue at the template's line, saying how often it is used."""
    groups: dict[tuple[str, int | None, int | None, str], list[ConfigIssue]] = {}
    for issue in issues:
        groups.setdefault((issue.file, issue.line, issue.column, issue.message), []).append(issue)
    out = []
    for group in groups.values():
        best = min(group, key=lambda i: ("(" in i.path, len(i.path), i.path))
        uses = len({i.path for i in group})
        if uses > 1 and best.path.endswith(")") and "(from template " in best.path:
            more = uses - 1
            path = f"{best.path[:-1]}, and {more} more use{'s' if more > 1 else ''})"
            best = ConfigIssue(best.file, best.line, best.column, path, best.message)
        out.append(best)
    return sorted(out, key=lambda i: (i.line or 0, i.column or 0, i.path))


# ---- templates, station default devices, secret files -------------------------------------


def _expand_templates(
    data: dict[str, Any], smap: SourceMap, issues: list[ConfigIssue]
) -> set[tuple[str | int, ...]]:
    """Replace every ``template: NAME`` entry by the template's keys overridden by its own
    (shallow), and point the source map of the inherited keys at the template's lines.
    Returns the entries whose template could not be used (their missing keys are no news)."""
    incomplete: set[tuple[str | int, ...]] = set()
    section = data.get("templates")
    budget = yamlsrc.MAX_VALUES - len(smap.positions)  # values the expansion may add
    sizes: dict[tuple[str, str, str], int] = {}
    for kind in ("devices", "stations"):
        raw = section.get(kind) if isinstance(section, dict) else None
        bodies = (
            {k: v for k, v in raw.items() if isinstance(v, dict)} if isinstance(raw, dict) else {}
        )
        for name, body in bodies.items():
            if "template" in body:
                issues.append(
                    smap.issue(
                        ("templates", kind, name, "template"),
                        "a template cannot use another template; copy its keys here",
                    )
                )
        entries = data.get(kind)
        if not isinstance(entries, list):
            continue
        entries = data[kind] = list(entries)  # changed below; the list may be an alias's too
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "template" not in entry:
                continue
            name = entry["template"]
            own = {k: v for k, v in entry.items() if k != "template"}
            entries[i] = own
            where = (kind, i, "template")
            if not isinstance(name, str) or name not in bodies:
                incomplete.add((kind, i))
            if not isinstance(name, str):
                issues.append(
                    smap.issue(
                        where, f"expected a template name, found {found_text(name, smap, where)}"
                    )
                )
                continue
            if name not in bodies:
                if isinstance(raw, dict) and name in raw:
                    continue  # the template itself is reported (not a mapping)
                what = f"{kind[:-1]} template"
                msg = (
                    unknown(what, name, bodies)
                    if bodies
                    else f"unknown {what} {name!r}: templates.{kind} defines none"
                )
                issues.append(smap.issue(where, msg))
                continue
            inherited = [k for k in bodies[name] if k not in own and k != "template"]
            for k in inherited:
                if (kind, name, k) not in sizes:
                    sizes[(kind, name, k)] = _size(bodies[name][k])
            size = sum(sizes[(kind, name, k)] for k in inherited)
            if budget - size < 0:
                incomplete.add((kind, i))
                if budget >= 0:  # say it once
                    limit = yamlsrc.MAX_VALUES
                    msg = f"the templates expand the document to more than {limit} values"
                    issues.append(smap.issue(where, msg))
                budget = -1
                continue
            budget -= size
            # Shared, not copied: nothing downstream changes the data in place.
            merged = {k: bodies[name][k] for k in inherited}
            note = f"from template {name!r}"
            for key in inherited:
                smap.link((kind, i, key), ("templates", kind, name, key), note)
            merged.update(own)
            entries[i] = merged
    return incomplete


def _fill_station_devices(data: dict[str, Any], smap: SourceMap) -> None:
    """Name the station's ``device`` in its references that omit one, as the model would, and
    locate those at the station's ``device`` key (what an error there is about)."""
    stations = data.get("stations")
    if not isinstance(stations, list):
        return
    stations = data["stations"] = list(stations)  # changed below; may be an alias's too
    for i, st in enumerate(stations):
        refs = defaulted_refs(st)
        if not refs:
            continue
        for ref in refs:
            smap.link(
                ("stations", i, *ref, "device"), ("stations", i, "device"), "the station's device"
            )
        stations[i] = with_station_device(st)


MAX_SECRET_BYTES = 64 * 1024


def read_secret_files(
    model: type[BaseModel],
    data: Any,
    path: tuple[str | int, ...],
    smap: SourceMap,
    issues: list[ConfigIssue],
    folder: Path | None = None,
) -> None:
    """For every model with a secret field ``<name>`` and a ``<name>_file`` field: read the
    file into ``<name>`` (one trailing newline stripped; a relative path from ``folder``, None:
    the CWD). The secret never enters a message."""
    for owner, mapping, key, at in _fields_of(model, data, path):
        fields, value = owner.model_fields, mapping[key]
        base = key.removesuffix("_file")
        if base == key or base not in fields or not holds(fields[base].annotation, SecretStr):
            continue
        if not isinstance(value, str):
            continue  # the model reports the type
        if isinstance(mapping.get(base), SecretStr):
            continue  # read already: a template's mapping shared by several entries
        if base in mapping:
            issues.append(smap.issue((*at, key), f"give {base} or {key}, not both"))
            continue
        secret, problem = _read_secret(resolve(value, folder))
        if secret is None:
            issues.append(smap.issue((*at, key), problem))
            continue
        mapping[base] = SecretStr(secret)
        smap.link((*at, base), (*at, key), f"read from {key}")


def _size(value: Any) -> int:
    """Values in ``value`` (itself included), as the source map counts them."""
    if isinstance(value, dict):
        return 1 + sum(_size(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_size(v) for v in value)
    return 1


def _read_secret(file: str) -> tuple[str | None, str]:
    """(secret, "") or (None, why not). Only a regular file is opened: a FIFO would block."""
    try:
        if not stat.S_ISREG(os.stat(file).st_mode):
            return None, f"cannot read {file!r}: not a regular file"
        with open(file, "rb") as fh:
            raw = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        return None, f"cannot read {file!r}: {exc.strerror or exc}"
    if len(raw) > MAX_SECRET_BYTES:
        return None, f"{file!r} is larger than {MAX_SECRET_BYTES // 1024} KiB: not a secret?"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, f"{file!r} is not UTF-8 text"
    text = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
    if not text:
        return None, f"{file!r} is empty"
    return text, ""


def _booleans_as_numbers(
    model: type[BaseModel],
    data: Any,
    path: tuple[str | int, ...],
    smap: SourceMap,
    issues: list[ConfigIssue],
) -> None:
    """``baudrate: true`` is a mistake, not the number 1 that pydantic's lax mode makes of it:
    every true/false given where the model wants a number is reported."""
    for owner, mapping, key, at in _fields_of(model, data, path):
        value = mapping[key]
        if not isinstance(value, bool):
            continue
        expected = _number_kind(unwrap(owner.model_fields[key].annotation, value))
        if expected is None:
            continue
        where = (*at, key)
        found = found_text(value, smap, where)
        raw = smap.raw(where)
        if raw is not None and raw.lower() != found:  # yes, on, True: YAML's booleans
            found = f"{raw} (a boolean to YAML)"
        issues.append(smap.issue(where, f"expected {expected}, found {found}"))
        smap.reported.add(where)  # pydantic's own complaint would only repeat it


def _fields_of(
    model: type[BaseModel], data: Any, path: tuple[str | int, ...]
) -> Iterator[tuple[type[BaseModel], dict[str, Any], str, tuple[str | int, ...]]]:
    """(model, mapping, key, path of the mapping) for every key of ``data`` that ``model``
    declares, and so on down the models the values hold (before validation: the data as
    written, templates expanded)."""
    if not isinstance(data, dict):
        return
    for key, value in list(data.items()):  # a snapshot: callers may add keys
        field = model.model_fields.get(key)
        if field is None:
            continue
        yield model, data, key, path
        for sub, sub_data, sub_path in _models_under(field.annotation, value, (*path, key)):
            yield from _fields_of(sub, sub_data, sub_path)


def _number_kind(annotation: Any) -> str | None:
    """'a whole number' or 'a number' when ``annotation`` takes only numbers, else None."""
    if annotation is int:
        return "a whole number"
    if annotation is float:
        return "a number"
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        if all(isinstance(c, int) and not isinstance(c, bool) for c in choices):
            return f"one of {', '.join(map(str, choices))}"
    return None


def _models_under(
    annotation: Any, value: Any, path: tuple[str | int, ...]
) -> Iterator[tuple[type[BaseModel], Any, tuple[str | int, ...]]]:
    """The (model, data, path) of every mapping ``value`` holds according to ``annotation``."""
    ann = unwrap(annotation, value)
    origin = get_origin(ann)
    if origin is list and isinstance(value, list):
        for j, item in enumerate(value):
            yield from _models_under(get_args(ann)[0], item, (*path, j))
    elif origin is dict and isinstance(value, dict):
        for k, item in value.items():
            yield from _models_under(get_args(ann)[1], item, (*path, k))
    elif isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(value, dict):
        yield ann, value, path
