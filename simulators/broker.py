"""Brokers for the demo and the tests: a real Mosquitto process, or amqtt embedded in-process
when Mosquitto is not installed (so the demo needs nothing but pip)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it; taken at use time, not import)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, timeout: float) -> None:
    """Poll a TCP connect until it succeeds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


class Broker(Protocol):
    host: str
    port: int
    name: str

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class MosquittoBroker:
    """A Mosquitto process on a loopback port, persistence on (saved on graceful stop)."""

    name = "mosquitto"

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", workdir: str | Path | None = None
    ) -> None:
        exe = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if exe is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.host = host
        self.port = port or free_port(host)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mosquitto-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_conf(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            # Run as whoever we are: as root Mosquitto would switch to user `mosquitto`,
            # which cannot write persistence into our directory (queued messages lost).
            f"user {getpass.getuser()}\n"
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "max_queued_messages 0\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
        )
        return conf

    def start_sync(self, timeout: float = 10.0) -> None:
        conf = self._write_conf()
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_listening(self.host, self.port, timeout)
        except TimeoutError:
            self.kill_sync()
            raise

    def stop_sync(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): Mosquitto writes its persistence file on the way out."""
        if self.proc is not None:
            proc, self.proc = self.proc, None
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill_sync(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            proc.kill()
            proc.wait()

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    def close(self) -> None:
        self.kill_sync()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class EmbeddedBroker:
    """amqtt running in this process's event loop."""

    name = "amqtt (embedded)"

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._broker: Any = None

    async def start(self) -> None:
        try:
            from amqtt.broker import Broker as AmqttBroker
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "no broker: install Mosquitto, or `pip install 'edge-agent[demo]'` for amqtt"
            ) from exc
        self._broker = AmqttBroker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        await self._broker.start()

    async def stop(self) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            with contextlib.suppress(Exception):
                await broker.shutdown()


def pick_broker(kind: str = "auto") -> MosquittoBroker | EmbeddedBroker:
    """``auto``: Mosquitto when installed, else the embedded broker."""
    if kind == "mosquitto" or (kind == "auto" and shutil.which("mosquitto")):
        return MosquittoBroker()
    if kind == "auto" and Path("/usr/sbin/mosquitto").exists():
        return MosquittoBroker()
    return EmbeddedBroker()
