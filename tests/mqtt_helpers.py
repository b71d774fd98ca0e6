"""Real-broker test helpers: a Mosquitto process and a persistent QoS 1 subscriber.

Mosquitto runs as a child process on a free 127.0.0.1 port with persistence in the test's
tmp dir, so a test can stop it (SIGTERM: sessions and queued messages are saved), start it
again on the same port, kill it, or freeze it (SIGSTOP) to hold PUBACKs back. Readiness is
awaited by polling a TCP connect against a deadline, never by a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from simulators.broker import free_port

SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def mosquitto_binary() -> str:
    """Path of the mosquitto broker. CI installs it, so a missing broker is an error."""
    path = shutil.which("mosquitto", path=SBIN_PATH)
    assert path, "mosquitto is not installed (apt-get install mosquitto); the MQTT tests need it"
    return path


def spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start an agent process. Popen only forks, so calling it from a test coroutine is fine;
    waiting on it must go through a thread."""
    return subprocess.Popen(cmd, env=env)


class Mosquitto:
    """A real mosquitto broker on 127.0.0.1 with persistence in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        anonymous: bool = True,
        extra: str = "",
    ) -> None:
        """``extra``: more mosquitto.conf lines (a password_file, a TLS listener...); the
        plain listener on ``port`` stays first, for readiness checks and test subscribers."""
        self.binary = mosquitto_binary()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        data = workdir / "data"
        data.mkdir(exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            "persistence true\n"
            f"persistence_location {data}/\n"
            # Started as root, mosquitto would switch to user "mosquitto", which cannot
            # write the test's tmp dir; as anyone else this line changes nothing.
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            # Offline sessions keep 1000 messages by default; tests may queue more.
            "max_queued_messages 0\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            f"{extra}"
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start (again) on the same port and persistence dir; return once it accepts TCP."""
        assert self._proc is None, "mosquitto is already running"
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._proc = None
                raise RuntimeError(f"mosquitto exited with {rc}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"mosquitto not accepting on port {self.port} within {timeout:g} s:\n"
                        f"{self.log_tail()}"
                    ) from None
                time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): mosquitto saves sessions and queued messages."""
        proc = self._require()
        self.resume()
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)  # SIGKILL: only a stuck kernel call delays it
            raise RuntimeError(f"mosquitto ignored SIGTERM:\n{self.log_tail()}") from None
        finally:
            self._proc = None

    def kill(self) -> None:
        """SIGKILL: whatever was not saved yet is gone, like a power cut of the broker."""
        proc = self._require()
        proc.kill()
        proc.wait(30)  # SIGKILL: only a stuck kernel call delays it
        self._proc = None
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is read or acknowledged."""
        self._require().send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._require().send_signal(signal.SIGCONT)
            self._paused = False

    def close(self) -> None:
        """Teardown: stop if still running, whatever state it is in."""
        if self._proc is None:
            return
        if self._proc.poll() is not None:
            self._proc = None
            return
        with contextlib.suppress(RuntimeError):  # it was killed; the log has the story
            self.stop(timeout=5.0)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _require(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "mosquitto is not running"
        return self._proc


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the subscriber got it; ``payload`` is the decoded JSON."""

    topic: str
    payload: dict[str, Any]
    dup: bool


class Subscriber:
    """A QoS 1 subscriber in paho's thread with a persistent session.

    ``clean_session=False`` and a fixed client id keep its subscription and its queued
    messages across a broker restart (with persistence on); paho reconnects by itself.
    """

    def __init__(
        self,
        port: int,
        topic: str = "#",
        *,
        client_id: str = "test-subscriber",
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = port
        self.topic = topic
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._waiters: list[Callable[[], None]] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        # paho's hints say int; fractions work and keep a restart test fast.
        self._client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._started = False

    def start(self, timeout: float = 10.0) -> None:
        """Connect and return once the subscription is acknowledged."""
        self._client.connect_async(self.host, self.port, keepalive=10)
        self._client.loop_start()
        self._started = True
        if not self._subscribed.wait(timeout):
            self.stop()
            raise RuntimeError(f"subscriber: no SUBACK from port {self.port} within {timeout:g} s")

    def stop(self) -> None:
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False

    def messages(self) -> list[Received]:
        """Every message so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._messages)

    async def wait_for(
        self,
        predicate: Callable[[list[Received]], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - expiry becomes an assertion with the count
    ) -> list[Received]:
        """Wait until ``predicate(messages)`` holds, waking on each message; fail at the deadline."""
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(arrived.set)

        with self._lock:
            self._waiters.append(wake)
        messages: list[Received] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    arrived.clear()
                    messages = self.messages()
                    if predicate(messages):
                        return messages
                    await arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"subscriber: condition not met within {timeout:g} s "
                f"({len(messages)} messages received)"
            ) from None
        finally:
            with self._lock:
                self._waiters.remove(wake)

    # ---- paho thread ----------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        received = Received(msg.topic, json.loads(msg.payload), bool(msg.dup))
        with self._lock:
            self._messages.append(received)
            waiters = list(self._waiters)
        for wake in waiters:
            wake()
