"""The trace store's blocked set as the agent holds it, and the parsing of its MQTT message
(docs/wire-format.md, "The blocked set"). Pure: no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

KINDS = ("lots", "serials", "products")
"""The set's lists, each of keys as records carry them."""

Entry = Mapping[str, Any]
"""One blocked key's details as the store sent them: reason, since, by."""


@dataclass(frozen=True, slots=True)
class BlockedSet:
    """One version of the blocked set. Immutable: a new message makes a new object, so the
    binder reads whichever one was current without locks or copies."""

    version: int
    at: str | None
    lots: Mapping[str, Entry] = field(default_factory=dict)
    serials: Mapping[str, Entry] = field(default_factory=dict)
    products: Mapping[str, Entry] = field(default_factory=dict)

    def of(self, key: str) -> Mapping[str, Entry]:
        """The keys blocked of one kind: ``lot``, ``serial`` or ``product``."""
        if key == "lot":
            return self.lots
        if key == "serial":
            return self.serials
        return self.products

    def size(self) -> int:
        return len(self.lots) + len(self.serials) + len(self.products)


EMPTY = BlockedSet(version=0, at=None)
"""Held before any set ever arrived: nothing is blocked."""


class Garbled(ValueError):
    """A blocked-set message that does not parse; the reason is the message."""


def parse(payload: bytes | str) -> BlockedSet:
    """The message as a ``BlockedSet``; raises ``Garbled`` naming what is wrong."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Garbled(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Garbled("not a JSON object")
    if doc.get("v") != 1:
        raise Garbled(f"unknown format v={doc.get('v')!r} (this agent reads v 1)")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise Garbled(f"version: expected an integer >= 0, got {version!r}")
    at = doc.get("at")
    if at is not None and not isinstance(at, str):
        raise Garbled(f"at: expected a timestamp text, got {at!r}")
    lists: dict[str, Mapping[str, Entry]] = {}
    for name in KINDS:
        items = doc.get(name, [])
        if not isinstance(items, list):
            raise Garbled(f"{name}: expected a list")
        keyed: dict[str, Entry] = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise Garbled(f"{name}[{i}]: expected an object")
            key = item.get("key")
            if not isinstance(key, str) or not key:
                raise Garbled(f"{name}[{i}].key: expected a non-empty text")
            keyed[key] = MappingProxyType(
                {k: v for k, v in item.items() if k != "key" and isinstance(v, str | None)}
            )
        lists[name] = MappingProxyType(keyed)
    return BlockedSet(version, at, lists["lots"], lists["serials"], lists["products"])
