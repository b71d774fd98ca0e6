"""Rules in the running trace store (issue 20, contract section 3): part records arrive over
MQTT, a rule fires, and the alert is stored, published retained on <prefix>/alerts/<rule>,
POSTed to a real local webhook, and shown on the workbench; a bad rules file stops the
command before anything connects."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.mqtt_helpers import Mosquitto
from tests.store_helpers import (
    WAIT,
    Publisher,
    body,
    envelope,
    read_retained,
    topic,
    wait_messages,
)
from tests.waiting import wait_until_sync
from trace_store import cli as store_cli
from trace_store.config import StoreConfig
from trace_store.quality import alerts
from trace_store.quality.ruleconf import load_rules
from trace_store.service import TraceStore
from trace_store.storage import open_storage


class Hook:
    """A real HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, name="test-webhook")

    def __enter__(self) -> Hook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def hook() -> Iterator[Hook]:
    with Hook() as h:
        yield h


def part_record(seq: int, result: str, serial: str) -> dict[str, Any]:
    return body(
        seq,
        "part",
        serial=serial,
        result=result,
        quality="good",
        ctx={"serial": serial, "lot": "L7"},
    )


def test_three_nok_in_a_row_fire_an_alert_everywhere(
    tmp_path: Path, mosquitto: Mosquitto, publisher: Publisher, hook: Hook
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        f"webhook: {hook.url}\n"
        "rules:\n"
        "  - id: op10-three-nok\n"
        "    kind: consecutive_nok\n"
        "    count: 3\n"
        "    where: {station: op10}\n"
    )
    db = str(tmp_path / "trace.db")
    config = StoreConfig(
        host="127.0.0.1",
        port=mosquitto.port,
        db=db,
        store_id="t",
        backoff_initial=0.02,
        backoff_max=0.2,
    )
    with TraceStore(config, load_rules(rules_file)) as store:
        assert store.wait_ready(WAIT)
        # NOK, NOK, OK, NOK, NOK: never three in a row.
        for seq, result in enumerate(["nok", "nok", "ok", "nok", "nok"], start=1):
            publisher.publish(topic(), envelope([part_record(seq, result, f"SN{seq}")]))
        wait_messages(store, 5)
        assert store.quality.counters["alerts"] == 0
        publisher.publish(topic(), envelope([part_record(6, "nok", "SN6")]))
        wait_until_sync(
            lambda: store.quality.counters["alerts_published"] >= 1, WAIT, "the alert published"
        )
        alert = read_retained(mosquitto.port, "trace/alerts/#")["trace/alerts/op10-three-nok"]
        assert alert["state"] == "firing"
        assert alert["rule"] == "op10-three-nok"
        assert alert["message"] == "3 NOK parts in a row at line-3/op10"
        assert [(e["seq"], e["serial"]) for e in alert["evidence"]] == [
            (4, "SN4"),
            (5, "SN5"),
            (6, "SN6"),
        ]
        wait_until_sync(lambda: len(hook.received) >= 1, WAIT, "the webhook's POST")
        assert hook.received[0] == alert
        # The next OK part clears it: retained "ok", posted too.
        publisher.publish(topic(), envelope([part_record(7, "ok", "SN7")]))
        wait_until_sync(lambda: len(hook.received) >= 2, WAIT, "the second POST")
        assert hook.received[1]["state"] == "ok"
        # A resend of a NOK changes nothing.
        publisher.publish(topic(), envelope([part_record(6, "nok", "SN6")]))
        wait_messages(store, 8)
    with open_storage(db, read_only=True) as s:
        stored = alerts.alerts(s)
    assert [(a.state, a.rule) for a in stored] == [
        ("ok", "op10-three-nok"),
        ("firing", "op10-three-nok"),
    ]
    assert [e["seq"] for e in stored[1].evidence] == [4, 5, 6]


def test_a_restarted_store_remembers_a_firing_rule(
    tmp_path: Path, mosquitto: Mosquitto, publisher: Publisher
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("rules:\n  - id: two\n    kind: consecutive_nok\n    count: 2\n")
    db = str(tmp_path / "trace.db")
    config = StoreConfig(host="127.0.0.1", port=mosquitto.port, db=db, store_id="t")
    rules = load_rules(rules_file)
    with TraceStore(config, rules) as store:
        assert store.wait_ready(WAIT)
        publisher.publish(
            topic(), envelope([part_record(1, "nok", "A"), part_record(2, "nok", "B")])
        )
        wait_until_sync(lambda: store.quality.counters["alerts"] == 1, WAIT, "the alert")
    with TraceStore(config, rules) as store:
        assert store.wait_ready(WAIT)
        publisher.publish(topic(), envelope([part_record(3, "ok", "C")]))
        wait_until_sync(lambda: store.quality.counters["alerts"] == 1, WAIT, "the all-clear")
    with open_storage(db, read_only=True) as s:
        assert [a.state for a in alerts.alerts(s)] == ["ok", "firing"]


def test_a_bad_rules_file_stops_the_command_naming_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("rules:\n  - id: x\n    kind: nok_rate\n    threshold: 1.5\n")
    parser = argparse.ArgumentParser(prog="edge-agent")
    store_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "trace-store",
            "--broker",
            "127.0.0.1:1",
            "--db",
            str(tmp_path / "t.db"),
            "--rules",
            str(rules_file),
        ]
    )
    assert store_cli.dispatch(args) == 2
    err = capsys.readouterr().err
    assert f"{rules_file}:4: rules[0].threshold: required: a fraction" in err
    assert not (tmp_path / "t.db").exists()  # nothing was started


def test_a_webhook_that_cannot_be_reached_is_tried_then_counted_lost() -> None:
    from simulators.broker import free_port

    hooks = alerts.Webhooks()
    try:
        hooks.post(f"http://127.0.0.1:{free_port()}/nobody", {"v": 1, "rule": "r"})
        wait_until_sync(lambda: hooks.counters["webhook_failed"] == 1, WAIT, "the give-up")
        assert hooks.counters["webhook_posted"] == 0
    finally:
        hooks.stop()
