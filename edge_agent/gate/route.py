"""Route questions to the trace store (docs/wire-format.md, "Route questions"): one question
per rule naming another agent's station, matched to its answer by id. Owned by the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable

from edge_agent.gate.decide import RouteAnswer

log = logging.getLogger("edge_agent.gate")


class RouteAsker:
    """Publishes questions through ``send`` (False: no uplink now) and resolves them from the
    answers the sync hands to ``answer``."""

    def __init__(self, send: Callable[[str, bytes], bool], ask_topic: str, line: str) -> None:
        self._send = send
        self.ask_topic = ask_topic
        self.line = line
        self._waiting: dict[str, asyncio.Future[RouteAnswer]] = {}
        self.asked = 0
        self.answered = 0
        self.unanswered = 0  # no answer in time, or no uplink
        self.ignored = 0  # answers nobody waits for (late, or not ours), and errors

    async def ask(
        self, serial: str, station: str, line: str | None, wait: float
    ) -> RouteAnswer | None:
        """The store's answer, or None if none came within ``wait`` seconds (or the uplink
        is down: then at once, since no answer can come)."""
        qid = uuid.uuid4().hex
        body = {"v": 1, "id": qid, "serial": serial, "line": line or self.line, "station": station}
        fut: asyncio.Future[RouteAnswer] = asyncio.get_running_loop().create_future()
        self._waiting[qid] = fut
        self.asked += 1
        try:
            if not self._send(self.ask_topic, json.dumps(body).encode()):
                self.unanswered += 1
                return None
            async with asyncio.timeout(wait):
                answer = await fut
        except TimeoutError:
            self.unanswered += 1
            return None
        finally:
            self._waiting.pop(qid, None)
        self.answered += 1
        return answer

    def answer(self, payload: bytes, retained: bool) -> None:
        try:
            doc = json.loads(payload)
            qid = doc["id"] if isinstance(doc, dict) else None
        except (ValueError, KeyError, UnicodeDecodeError):
            qid = None
        fut = self._waiting.get(qid) if isinstance(qid, str) else None
        if fut is None or fut.done():
            self.ignored += 1
            return
        if "error" in doc:
            # A question the store could not read: a bug on one side; log it, and let the
            # rule's on_unreachable decide (as for no answer).
            self.ignored += 1
            log.warning("trace store refused a route question: %s", doc.get("error"))
            return
        result = doc.get("result")
        at, agent = doc.get("at"), doc.get("agent")
        fut.set_result(
            RouteAnswer(
                result if isinstance(result, str) else None,
                at if isinstance(at, str) else None,
                agent if isinstance(agent, str) else None,
            )
        )
