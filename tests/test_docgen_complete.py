"""Every key of the config file has its row in docs/configuration.md.

The walk below follows the validated models on its own (not docgen's list of sections): each
model reached through a field is a section whose title is its key path, and each of its
fields a row. A section added to the models without a table, or a table that misses a key,
fails here naming the key path.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from drivers import registry
from edge_agent.config import agent_model
from edge_agent.docgen import render

ROOT = Path(__file__).resolve().parent.parent


def _inner_models(annotation: Any) -> Iterator[tuple[str, type[BaseModel]]]:
    """(path suffix, model) of each model an annotation holds."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        yield from _inner_models(get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _inner_models(arg)
    elif origin is list:
        for suffix, model in _inner_models(get_args(annotation)[0]):
            yield f"[]{suffix}", model
    elif origin is dict:
        for suffix, model in _inner_models(get_args(annotation)[1]):
            yield f".<*>{suffix}", model
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield "", annotation


def _keys(
    model: type[BaseModel], title: str, path: str, kind: str | None
) -> Iterator[tuple[str, str]]:
    """(section title, field name) of ``model``'s fields and of every model under them."""
    for name, field in model.model_fields.items():
        yield title, name
        for suffix, sub in _inner_models(field.annotation):
            if not path and name == "devices":
                continue  # the kinds are walked from the registry
            sub_path = f"{path}{name}{suffix}"
            sub_title = sub_path if kind is None else f"devices[].{sub_path} ({kind})"
            yield from _keys(sub, sub_title, f"{sub_path}.", kind)


def every_key() -> list[tuple[str, str]]:
    out = list(_keys(agent_model(), "Top level", "", None))
    for kind in registry.kinds():
        out += _keys(kind.config, f"devices[] with type: {kind.type}", "", kind.type)
    return out


def doc_tables(doc: str) -> dict[str, set[str]]:
    """Section title (placeholders such as ``<point>`` as ``<*>``) -> keys of its table."""
    tables: dict[str, set[str]] = {}
    for section in doc.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        title = re.sub(r"<[^>]+>", "<*>", title)
        tables[title] = set(re.findall(r"^\| `([^`]+)` \|", body, flags=re.MULTILINE))
    return tables


def test_the_walk_sees_the_nested_sections() -> None:
    keys = set(every_key())
    assert ("control", "socket") in keys
    assert ("stations[].part.limits.<*>", "min") in keys
    assert ("devices[].points[] (modbus_tcp)", "word_order") in keys
    assert ("devices[] with type: scale", "protocol") in keys


def test_every_key_is_in_the_reference() -> None:
    tables = doc_tables(render())
    missing = [
        f"{title}: {name}" for title, name in every_key() if name not in tables.get(title, set())
    ]
    assert missing == [], "run: python -m edge_agent.docgen > docs/configuration.md"


def test_the_committed_reference_has_every_key() -> None:
    tables = doc_tables((ROOT / "docs" / "configuration.md").read_text(encoding="utf-8"))
    missing = [
        f"{title}: {name}" for title, name in every_key() if name not in tables.get(title, set())
    ]
    assert missing == [], "run: python -m edge_agent.docgen > docs/configuration.md"


def test_no_section_intro_stops_mid_sentence() -> None:
    doc = render()
    for section in doc.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        intro = body.strip().split("\n\n")[0]
        if intro.startswith("|") or intro.startswith("- "):
            continue
        assert intro.rstrip().endswith((".", ")", ":")), f"{title}: {intro!r}"
