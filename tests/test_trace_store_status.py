"""The agents' status messages at the trace store (``trace_store/agent_status.py``): kept per
agent from a real broker, a Last Will keeps the journal count said before it, what is not a
status is counted and left out; the workbench's Lines page and its export show them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.store_helpers import AGENT, LINE, PREFIX, SITE, WAIT, Publisher, StoreFactory
from trace_store import agent_status
from trace_store.storage import open_storage

STATUS = f"{PREFIX}/{SITE}/{LINE}/{AGENT}/status"


def status(state: str, ts: str, **extra: Any) -> bytes:
    body = {"schema": "edge-agent.status", "v": 1, "agent": AGENT, "state": state, "ts": ts}
    return json.dumps(body | extra).encode()


def test_the_store_keeps_each_agents_last_status(
    stores: StoreFactory, publisher: Publisher, db: str
) -> None:
    store = stores(db)
    alarm = {"code": "disk_low", "message": "3 % free", "since": "2026-12-04T09:00:00Z"}
    said = "2026-12-04T10:00:00.000000Z"
    publisher.publish(STATUS, status("online", said, held=1234, alarms=[alarm], host="pc1"))
    assert store.wait_stats(lambda s: s["statuses"] >= 1, WAIT)
    with open_storage(db, read_only=True) as reader:
        [(agent, got)] = agent_status.read(reader).items()
    assert agent == AGENT
    assert (got.site, got.line, got.state, got.held, got.held_ts) == (
        SITE,
        LINE,
        "online",
        1234,
        said,
    )
    assert (got.alarms, got.host) == (("disk_low",), "pc1")

    # Not statuses: bad JSON, another agent's name on this agent's topic, another schema.
    publisher.publish(STATUS, b"{not json")
    publisher.publish(STATUS, status("online", said).replace(AGENT.encode(), b"line9-pc1"))
    publisher.publish(STATUS, status("online", said).replace(b"edge-agent.status", b"x"))
    publisher.publish(STATUS, status("online", "2026\u0000", held=1))  # a time no database keeps
    assert store.wait_stats(lambda s: s["statuses_ignored"] >= 4, WAIT)

    # The Last Will (made at connect: no count): the count said before stays, with its time.
    will = status(
        "offline",
        "2026-12-04T09:59:00.000000Z",
        reason="connection lost",
        alarms=[{"code": "odd\u0000\ud800"}],
        host="pc\ud800",  # a lone surrogate: not text a database holds, left out
    )
    publisher.publish(STATUS, will)
    assert store.wait_stats(lambda s: s["statuses"] >= 2, WAIT)
    with open_storage(db, read_only=True) as reader:
        got = agent_status.read(reader)[AGENT]
    assert (got.state, got.reason, got.held, got.held_ts, got.alarms, got.host) == (
        "offline", "connection lost", 1234, said, ("odd\x00\ud800",), None,
    )  # fmt: skip
    assert store.stats()["statuses"] == 2


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_the_lines_page_shows_what_each_pc_holds(
    stores: StoreFactory, publisher: Publisher, db: str
) -> None:
    """An agent that has spoken but sent no record yet has its row, with its status."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from trace_store.web.app import WorkbenchConfig, create_app

    store = stores(db)
    publisher.publish(STATUS, status("online", "2026-12-04T10:00:00.000000Z", held=77))
    assert store.wait_stats(lambda s: s["statuses"] >= 1, WAIT)
    with TestClient(create_app(WorkbenchConfig(db))) as client:
        html = client.get("/lines").text
        csv = client.get("/lines/export?format=csv").content.decode("utf-8-sig")
    row = html[html.index(f"<td>{AGENT}</td>") :].split("</tr>")[0]
    assert "online" in row
    assert '<td class="n">77<br>' in row
    header, line = csv.splitlines()[:2]
    fields = dict(zip(header.split(","), line.split(","), strict=True))
    assert (fields["agent"], fields["pc_state"], fields["held_on_pc"]) == (AGENT, "online", "77")
