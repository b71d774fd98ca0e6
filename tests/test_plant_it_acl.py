"""The broker setup docs/plant-it.md gives the plant's IT works as it says.

Mosquitto runs with the page's own config block (paths and port swapped for the test's) and
its ACL file as written, accounts made with mosquitto_passwd for every user the ACL names.
MQTT 5 clients then see each refused publish as a reason code (and a refused read as a
message never delivered): an agent may publish its own stations' records and status and read
its own confirmations and status, and nothing of another agent's; it cannot confirm; the trace store
reads every record and confirms; nobody gets in without an account.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import trustme
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from simulators.broker import free_port
from tests.mqtt_helpers import SBIN_PATH, Mosquitto

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "plant-it.md"
TIMEOUT = 10.0


def doc_block(marker: str) -> str:
    """The fenced block that follows ``<!-- plant-it:MARKER -->`` in the page."""
    text = DOC.read_text(encoding="utf-8")
    after = text.split(f"<!-- plant-it:{marker} -->\n", 1)[1]
    match = re.match(r"```\w*\n(.*?)\n```", after, flags=re.DOTALL)
    assert match, f"no fenced block after the {marker} marker"
    return match.group(1) + "\n"


@dataclass
class Broker:
    mosquitto: Mosquitto
    tls_port: int
    ca_file: str


def _swap(text: str, documented: str, actual: str) -> str:
    assert documented in text, f"docs/plant-it.md no longer says {documented!r}"
    return text.replace(documented, actual)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = {
        "ca": tmp_path / "plant-ca.crt",
        "crt": tmp_path / "broker.crt",
        "key": tmp_path / "broker.key",
        "passwd": tmp_path / "passwd",
        "acl": tmp_path / "acl",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["crt"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    acl = doc_block("acl")
    files["acl"].write_text(acl)
    passwd_tool = shutil.which("mosquitto_passwd", path=SBIN_PATH)
    assert passwd_tool, "mosquitto_passwd is not installed (apt-get install mosquitto)"
    for user in re.findall(r"^user (\S+)$", acl, flags=re.MULTILINE):
        create = ["-c"] if not files["passwd"].exists() else []
        subprocess.run(
            [passwd_tool, *create, "-b", str(files["passwd"]), user, f"{user}-pw"],
            check=True,
            capture_output=True,
            timeout=30,
        )
    conf = doc_block("mosquitto-conf")
    for documented, actual in (
        ("/etc/mosquitto/certs/plant-ca.crt", files["ca"]),
        ("/etc/mosquitto/certs/broker.crt", files["crt"]),
        ("/etc/mosquitto/certs/broker.key", files["key"]),
        ("/etc/mosquitto/passwd", files["passwd"]),
        ("/etc/mosquitto/acl", files["acl"]),
    ):
        conf = _swap(conf, documented, str(actual))
    tls_port = free_port()
    conf = _swap(conf, "listener 8883\n", f"listener {tls_port} 127.0.0.1\n")
    # The helper's own plain listener comes first (its readiness check); the page's settings
    # follow, and its security settings are global, so they hold on both listeners.
    mosquitto = Mosquitto(tmp_path / "mosquitto", anonymous=False, extra=conf)
    mosquitto.start()
    try:
        yield Broker(mosquitto, tls_port, str(files["ca"]))
    finally:
        mosquitto.close()


class Client:
    """An MQTT 5 client whose connect, publish and subscribe return the broker's reason
    code (paho's thread reports them; the caller waits with a deadline)."""

    def __init__(
        self, port: int, user: str | None, *, ca_file: str | None = None, name: str = ""
    ) -> None:
        self.port = port
        self._done = threading.Condition()
        self._results: dict[object, Any] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-{user}{name}", protocol=mqtt.MQTTv5
        )
        if user is not None:
            self._client.username_pw_set(user, f"{user}-pw")
        if ca_file is not None:
            self._client.tls_set(ca_certs=ca_file)
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._started = False

    def connect(self) -> ReasonCode:
        self._client.connect_async("127.0.0.1", self.port, keepalive=10)
        self._client.loop_start()
        self._started = True
        return self._wait("connect")  # type: ignore[no-any-return]

    def publish(self, topic: str, payload: bytes = b"{}") -> ReasonCode:
        info = self._client.publish(topic, payload, qos=1)
        return self._wait(("pub", info.mid))  # type: ignore[no-any-return]

    def subscribe(self, topic: str) -> ReasonCode:
        _, mid = self._client.subscribe(topic, qos=1)
        codes = self._wait(("sub", mid))
        return codes[0]  # type: ignore[no-any-return]

    def received(self, topic: str, payload: bytes) -> bool:
        """Wait until ``(topic, payload)`` has arrived; False at the deadline."""
        with self._done:
            return self._done.wait_for(lambda: (topic, payload) in self.messages, TIMEOUT)

    def close(self) -> None:
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False

    def _wait(self, key: object) -> Any:
        with self._done:
            assert self._done.wait_for(lambda: key in self._results, TIMEOUT), f"no {key}"
            return self._results.pop(key)

    def _set(self, key: object, value: Any) -> None:
        with self._done:
            self._results[key] = value
            self._done.notify_all()

    # ---- paho's thread ------------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            client.disconnect()  # paho would otherwise retry with the same refused login
        self._set("connect", reason_code)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._set(("pub", mid), reason_code)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._set(("sub", mid), reason_codes)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._done:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._done.notify_all()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    try:
        yield made
    finally:
        for client in made:
            client.close()


def connected(clients: list[Client], port: int, user: str | None, **tls: Any) -> Client:
    client = Client(port, user, **tls)
    clients.append(client)
    code = client.connect()
    assert not code.is_failure, f"{user}: {code}"
    return client


def refused(port: int, user: str, topic: str) -> int:
    """The reason code of one publish, on a connection of its own: Mosquitto 2.0.11 (Debian
    12's) closes an MQTT 5 client's connection after refusing its publish."""
    client = Client(port, user, name="-refused")
    try:
        assert not client.connect().is_failure
        return client.publish(topic, b"refused?").value
    finally:
        client.close()


NOT_AUTHORIZED = 135


def test_only_accounts_get_in_and_the_tls_listener_works(
    broker: Broker, clients: list[Client]
) -> None:
    anonymous = Client(broker.mosquitto.port, None)
    clients.append(anonymous)
    assert anonymous.connect().is_failure
    agent = connected(clients, broker.tls_port, "line3-pc1", ca_file=broker.ca_file)
    assert not agent.publish("trace/plant-lyon/line3/ST10/records").is_failure


def test_each_agent_publishes_its_own_topics_only(broker: Broker, clients: list[Client]) -> None:
    port = broker.mosquitto.port
    store = connected(clients, port, "trace-store")
    assert store.subscribe("trace/+/+/+/records").value == 1
    agent = connected(clients, port, "line3-pc1")

    # Its own stations and status: yes. Another agent's station or status, or a confirmation
    # of its own: refused, and never delivered.
    assert not agent.publish("trace/plant-lyon/line3/ST20/records", b"own").is_failure
    assert not agent.publish("trace/plant-lyon/line3/line3-pc1/status").is_failure
    mine = "trace/plant-lyon/line3/line3-pc1/confirmed"
    other = "trace/plant-lyon/line4/line4-pc1/confirmed"
    assert refused(port, "line3-pc1", "trace/plant-lyon/line4/ST10/records") == NOT_AUTHORIZED
    assert refused(port, "line3-pc1", "trace/plant-lyon/line4/line4-pc1/status") == NOT_AUTHORIZED
    assert refused(port, "line3-pc1", mine) == NOT_AUTHORIZED
    assert refused(port, "line4-pc1", "trace/plant-lyon/line3/ST10/records") == NOT_AUTHORIZED
    assert not agent.publish("trace/plant-lyon/line3/ST10/records", b"last").is_failure
    assert store.received("trace/plant-lyon/line3/ST10/records", b"last")
    assert [p for _, p in store.messages] == [b"own", b"last"]

    # Confirmations: only the store gives them, each agent reads only its own. (Mosquitto
    # answers every SUBACK with a grant; a subscription the ACL refuses just gets nothing.)
    assert agent.subscribe(mine).value == 1
    agent.subscribe(other)
    assert not store.publish(other, b"line4 seq 7").is_failure
    assert not store.publish(mine, b"seq 2").is_failure
    assert agent.received(mine, b"seq 2")
    assert agent.messages == [(mine, b"seq 2")]

    # Each agent reads its own status (a second agent with its id shows there), not others'.
    own_status = "trace/plant-lyon/line3/line3-pc1/status"
    other_status = "trace/plant-lyon/line4/line4-pc1/status"
    assert agent.subscribe(own_status).value == 1
    agent.subscribe(other_status)
    line4 = connected(clients, port, "line4-pc1")
    assert not line4.publish(other_status, b"line4 online").is_failure
    assert not agent.publish(own_status, b"line3 online").is_failure
    assert agent.received(own_status, b"line3 online")
    assert (other_status, b"line4 online") not in agent.messages
    agent.messages.clear()

    # Monitoring reads statuses and nothing else.
    monitor = connected(clients, port, "monitor")
    assert monitor.subscribe("trace/+/+/+/status").value == 1
    monitor.subscribe("trace/+/+/+/records")
    assert not agent.publish("trace/plant-lyon/line3/ST10/records", b"record").is_failure
    status = "trace/plant-lyon/line3/line3-pc1/status"
    assert not agent.publish(status, b"online").is_failure
    assert monitor.received(status, b"online")
    assert monitor.messages == [(status, b"online")]

    # The trace store reads every agent's status too (the workbench's Lines page).
    assert store.subscribe("trace/+/+/+/status").value == 1
    assert not agent.publish(status, b"online, 3 held").is_failure
    assert store.received(status, b"online, 3 held")
