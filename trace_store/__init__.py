"""The reference trace store: consumes edge agents' records from MQTT, stores them once by
(agent, seq) in SQLite or PostgreSQL, confirms watermarks back, answers recall queries.
See docs/trace-store.md.

The names below are imported on first use, so ``edge-agent`` commands that only register the
store's sub-commands do not load paho or a database driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trace_store.config import StoreConfig
    from trace_store.queries import trace_lot, trace_materials, trace_serial
    from trace_store.service import TraceStore
    from trace_store.storage import Storage, StorageError, open_storage

__all__ = [
    "Storage",
    "StorageError",
    "StoreConfig",
    "TraceStore",
    "open_storage",
    "trace_lot",
    "trace_materials",
    "trace_serial",
]

_HOME = {
    "StoreConfig": "trace_store.config",
    "TraceStore": "trace_store.service",
    "Storage": "trace_store.storage",
    "StorageError": "trace_store.storage",
    "open_storage": "trace_store.storage",
    "trace_lot": "trace_store.queries",
    "trace_materials": "trace_store.queries",
    "trace_serial": "trace_store.queries",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'trace_store' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
