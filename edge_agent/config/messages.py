"""pydantic's validation errors as messages an integrator can act on, located in the file.

"expected a whole number, found 'fast'", "unknown key 'adress'; did you mean 'address'?":
one message per location, naming what was written and what would be right, never pydantic's
internal paths (the union tags of ``devices.0.modbus_tcp.points``) or a secret's value.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Set
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import ErrorDetails

from edge_agent.config.checks import closest
from edge_agent.config.models import agent_model
from edge_agent.yamlsrc import SourceMap
from kernel.errors import ConfigIssue
from kernel.names import NAME_PATTERN


def unwrap(annotation: Any, value: Any = None) -> Any:
    """``Annotated[X, ...]`` -> X; ``X | None`` -> X; a union of models -> the one whose
    ``type`` literal is ``value``'s type (a discriminated union)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(args) == 1:
                annotation = args[0]
                continue
            if models:
                tag = value.get("type") if isinstance(value, dict) else None
                for m in models:
                    type_field = m.model_fields.get("type")
                    if type_field is not None and tag in get_args(type_field.annotation):
                        return m
                return models[0]
        return annotation


def _annotation_at(path: tuple[str | int, ...], data: Any) -> Any:
    """The declared type of the value at ``path`` (None if the path leaves the models)."""
    ann: Any = agent_model()
    node = data
    for part in path:
        ann = unwrap(ann, node)
        origin = get_origin(ann)
        if origin is list and isinstance(part, int):
            ann = get_args(ann)[0]
        elif origin is dict and isinstance(part, str):
            ann = get_args(ann)[1]
        elif isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(part, str):
            field = ann.model_fields.get(part)
            if field is None:
                return None
            ann = field.annotation
        else:
            return None
        node = _child(node, part)
    return ann


def _has(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def holds(annotation: Any, kind: type) -> bool:
    """Whether ``kind`` appears in ``annotation`` (``SecretStr | None`` holds SecretStr)."""
    if annotation is kind:
        return True
    return any(holds(a, kind) for a in get_args(annotation))


def _allowed_keys(path: tuple[str | int, ...], data: Any) -> list[str]:
    """Keys of the model that holds ``path[-1]``, for "did you mean"."""
    ann = unwrap(_annotation_at(path[:-1], data), _child_at(path[:-1], data))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return list(ann.model_fields)
    return []


def _child_at(path: tuple[str | int, ...], data: Any) -> Any:
    for part in path:
        data = _child(data, part)
    return data


# ---- pydantic's errors as messages an integrator can act on -------------------------------

_EXPECTED = {
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "int_parsing_size": "a whole number of sensible size",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "list_type": "a list",
    "is_instance_of": "a string",
}


def pydantic_issues(
    errors: list[ErrorDetails],
    data: Any,
    smap: SourceMap,
    incomplete: Set[tuple[str | int, ...]] = frozenset(),
) -> list[ConfigIssue]:
    """One issue per location: the errors of a union's members (``bool | int | str``) at
    one value become one "expected A, B or C" message."""
    by_path: dict[tuple[str | int, ...], list[ErrorDetails]] = {}
    for err in errors:
        path = _data_path(err, data)
        if err["type"] == "union_tag_invalid":
            path = (*path, "type")
        # What loading reported already (an unset variable, an unknown template) is not
        # reported again as a consequence (an empty host, the template's missing keys).
        if smap.is_reported(path) or (
            err["type"] in ("missing", "union_tag_not_found")
            and (path[:-1] in incomplete or path in incomplete)
        ):
            continue
        by_path.setdefault(path, []).append(err)
    out: list[ConfigIssue] = []
    for path, errs in by_path.items():
        kinds = [e["type"] for e in errs]
        if len(errs) > 1 and all(k in _EXPECTED for k in kinds):
            expected = list(dict.fromkeys(_EXPECTED[k] for k in kinds))
            alternatives = ", ".join(expected[:-1]) + f" or {expected[-1]}"
            found = found_text(errs[0].get("input"), smap, path)
            out.append(smap.issue(path, f"expected {alternatives}, found {found}"))
        else:
            out.extend(smap.issue(path, _message(err, path, data, smap)) for err in errs)
    return out


def _message(err: ErrorDetails, path: tuple[str | int, ...], data: Any, smap: SourceMap) -> str:
    kind = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    secret = holds(_annotation_at(path, data), SecretStr)
    found = "a value (not shown: a secret)" if secret else found_text(value, smap, path)
    if kind == "extra_forbidden":
        key = str(path[-1])
        close = closest(key, _allowed_keys(path, data))
        return f"unknown key {key!r}" + (f"; did you mean {close!r}?" if close else "")
    if kind == "missing":
        if path[:1] == ("stations",) and path[-1] == "device":
            return "no device: give device here or on the station"
        return "missing required key"
    if kind == "union_tag_invalid":
        tag = value.get("type") if isinstance(value, dict) else value
        return _choice("device type", tag, str(ctx.get("expected_tags", "")))
    if kind == "union_tag_not_found":
        return "missing required key 'type' (which driver runs this device)"
    if kind in ("enum", "literal_error"):
        return _choice("value", value, str(ctx.get("expected", "")))
    if kind == "string_type" and smap.raw(path) is not None and not secret:
        raw = str(smap.raw(path))
        return (
            f"expected a string, found {raw} (YAML reads it as {found_text(value, smap, ())}; "
            f"write '{raw}' in quotes for the text)"
        )
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, found {found}"
    bounds = {
        "greater_than": "more than {gt}",
        "greater_than_equal": "at least {ge}",
        "less_than": "less than {lt}",
        "less_than_equal": "at most {le}",
    }
    if kind in bounds:
        limits = {k: f"{v:g}" if isinstance(v, float) else v for k, v in ctx.items()}
        return f"expected {bounds[kind].format(**limits)}, found {found}"
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        return f"expected at least {n} character{'s' if n != 1 else ''}, found {found}"
    if kind == "string_too_long":
        length = len(value) if isinstance(value, str) else "more"
        return f"expected at most {ctx.get('max_length')} characters, found {length}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        least = "at least" if kind == "too_short" else "at most"
        return (
            f"expected {least} {bound} entr{'y' if bound == 1 else 'ies'}, "
            f"found {ctx.get('actual_length')}"
        )
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return (
                "expected a name (letters, digits, '_', '.', '-'; starting with a letter or "
                f"'_'), found {found}"
            )
        return f"expected text matching {ctx.get('pattern')}, found {found}"
    if kind in ("value_error", "assertion_error"):
        return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if secret or isinstance(value, dict | list):
        return str(err["msg"])
    return f"{err['msg']} (found {found})"


def _choice(what: str, value: Any, expected: str) -> str:
    """``unknown value 'ABDC'; expected one of ABCD, CDAB, BADC, DCBA; did you mean 'ABCD'?``"""
    choices = re.findall(r"'([^']*)'", expected)
    if not choices or not isinstance(value, str):
        listed = ", ".join(choices) if choices else expected.replace(" or ", ", ")
        return f"expected one of {listed}, found {found_text(value, None, ())}"
    msg = f"unknown {what} {value!r}; expected one of {', '.join(choices)}"
    close = closest(value, choices)
    return msg + (f"; did you mean {close!r}?" if close else "")


def found_text(value: Any, smap: SourceMap | None, path: tuple[str | int, ...]) -> str:
    """What was written, short: ``'fast'``, ``12``, ``true``, ``nothing``, ``a list``."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if smap is not None and smap.raw(path) is not None:
            text = str(smap.raw(path))
        else:
            text = str(value) if not isinstance(value, int) or abs(value) < 10**30 else ""
        return text if len(text) <= 30 else f"a {len(text)}-character number"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else f"{value[:50]!r}... ({len(value)} characters)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _data_path(err: ErrorDetails, data: Any) -> tuple[str | int, ...]:
    """Map pydantic's loc onto the file's keys: drop what is not a key in the file, i.e. the
    tags of discriminated unions (``modbus_tcp`` in ``devices.0.modbus_tcp.points``) and of
    union members (``bool`` in ``ok.0.bool``). A missing key stays: it names what to add."""
    loc = err["loc"]
    path: list[str | int] = []
    node: Any = data
    for n, part in enumerate(loc):
        if _has(node, part):
            path.append(part)
            node = _child(node, part)
        elif n == len(loc) - 1 and err["type"] == "missing":
            path.append(part)
    return tuple(path)


# ---- other files' models (scenarios, config test cases) ---------------------------------------
# Files that share the config's YAML loader but have models of their own: their errors in the
# config's words, and an unknown key's "did you mean" among that model's keys.


def model_issues(
    model: type[BaseModel], exc: ValidationError, data: Any, smap: SourceMap
) -> list[ConfigIssue]:
    """pydantic's errors as the config's messages; an unknown key says which one was meant
    among ``model``'s keys at that place (the config's messages know only the config's)."""
    unknown_keys = [e for e in exc.errors() if e["type"] == "extra_forbidden"]
    out = pydantic_issues([e for e in exc.errors() if e["type"] != "extra_forbidden"], data, smap)
    for err in unknown_keys:
        path = _data_path(err, data)
        if smap.is_reported(path):
            continue
        key = str(path[-1])
        message = f"unknown key {key!r}"
        close = closest(key, keys_at(model, path[:-1], data))
        if close is not None:
            message += f"; did you mean {close!r}?"
        out.append(smap.issue(path, message))
    return out


def keys_at(model: type[BaseModel], path: tuple[str | int, ...], data: Any) -> list[str]:
    """The keys ``model`` allows in the mapping at ``path`` of ``data``."""
    ann: Any = model
    node = data
    for part in path:
        ann = unwrap(ann, node)
        if get_origin(ann) in (list, dict):
            ann = get_args(ann)[-1]
        elif isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(part, str):
            fields = {f.alias or n: f for n, f in ann.model_fields.items()}
            if part not in fields:
                return []
            ann = fields[part].annotation
        else:
            return []
        node = (
            node.get(part)
            if isinstance(node, dict)
            else (
                node[part]
                if isinstance(node, list) and isinstance(part, int) and part < len(node)
                else None
            )
        )
    ann = unwrap(ann, node)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [f.alias or n for n, f in ann.model_fields.items()]
    return []
