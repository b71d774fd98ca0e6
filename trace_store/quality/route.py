"""Route questions from the agents' station gates (contract section 2, docs/quality.md):
"does serial S have a part record with result OK at station ST of line L?".

The answer is the result of the serial's LATEST part record (by ``ts``) at that station
among the records this store holds: a record still waiting in another agent's journal, or
held here for a gap below it, is not known yet.
"""

from __future__ import annotations

import json
from typing import Any

from trace_store.link import ASK_SUFFIX
from trace_store.storage import Storage

ANSWER_SUFFIX = "/route/answer"
MAX_FIELD = 512


def answer_topic(topic: str) -> str:
    return topic[: -len(ASK_SUFFIX)] + ANSWER_SUFFIX


def answer(storage: Storage, topic: str, payload: bytes, prefix: str) -> dict[str, Any]:
    """The answer's payload to the question ``payload`` that arrived on ``topic``."""
    levels = topic[len(prefix) + 1 :].split("/")
    topic_line = levels[1] if len(levels) == 5 else None
    try:
        question = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        return _error(None, f"not JSON: {exc}")
    if not isinstance(question, dict):
        return _error(None, "not a JSON object")
    ident = question.get("id")
    if not isinstance(ident, str) or not ident or len(ident) > MAX_FIELD:
        return _error(None, "id: expected a non-empty text")
    if question.get("v") != 1:
        return _error(ident, f"v {question.get('v')!r}, expected 1")
    serial, station = question.get("serial"), question.get("station")
    line = question.get("line", topic_line)
    for name, value in (("serial", serial), ("station", station), ("line", line)):
        if not isinstance(value, str) or not value or len(value) > MAX_FIELD:
            return _error(ident, f"{name}: expected a non-empty text")
    with storage._transaction():
        rows = storage._execute(
            "SELECT agent, ts, body FROM records WHERE serial = ? AND kind = 'part' "
            "AND station = ? AND line = ? ORDER BY ts DESC, agent DESC, seq DESC LIMIT 1",
            (serial, station, line),
        )
    result: str | None = None
    at = agent = None
    if rows:
        agent, at = rows[0][0], rows[0][1]
        said = json.loads(rows[0][2]).get("result")
        result = said if said in ("ok", "nok") else "unknown"
    return {
        "v": 1,
        "id": ident,
        "serial": serial,
        "line": line,
        "station": station,
        "result": result,
        "at": at,
        "agent": agent,
    }


def _error(ident: str | None, reason: str) -> dict[str, Any]:
    return {"v": 1, "id": ident, "error": reason}
