"""The trace store's retained confirmation, as the agent reads it (docs/wire-format.md,
"Confirmation protocol"). A pure parser: bytes in, a ``Confirmation`` or the reason it is not
one (logged and ignored: a garbled message must never release a row)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

CONFIRM_SCHEMA = "edge-agent.confirm"


@dataclass(frozen=True, slots=True)
class Confirmation:
    """``seq``: the legacy epoch's watermark, or with a store of the previous version
    (``epochs`` None) the whole journal's. ``epochs``: the watermark of each epoch the store
    lists. ``session``: changes when the store lost its broker session; ``store`` names it."""

    seq: int
    epochs: dict[str, int] | None
    session: str | None
    store: str


def parse_confirmation(payload: bytes, agent: str) -> Confirmation:
    """Raises ValueError (with why) for anything that is not a confirmation for ``agent``."""
    try:
        body: Any = json.loads(payload)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    if body.get("schema") != CONFIRM_SCHEMA or body.get("agent") != agent:
        raise ValueError("not a confirmation for this agent")
    seq = _watermark(body.get("seq"), "seq")
    epochs = body.get("epochs")
    if epochs is not None:
        if not isinstance(epochs, dict):
            raise ValueError(f"bad epochs {str(epochs)[:60]!r}")
        epochs = {str(k): _watermark(v, f"epochs[{k!r}]") for k, v in epochs.items()}
    session = body.get("session")
    store = body.get("store")
    return Confirmation(
        seq,
        epochs,
        session if isinstance(session, str) and session else None,
        store if isinstance(store, str) else "",
    )


def _watermark(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"bad {name} {value!r}")
    return value
