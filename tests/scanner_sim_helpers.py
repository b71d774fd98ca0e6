"""The agent's end of a simulated scanner's link (a pty or a TCP socket), for the scanner
simulator tests: what the agent would read, and its answers."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from simulators.scanner import (
    CR,
    Framing,
    ScannerConfig,
)

CYCLE0 = b"]d2010950110102091721SN00000001\x1d10L00001\r"
"""Part 0 of the default station, as the default scanner sends it."""


def split_frames(data: bytes, framing: Framing) -> list[bytes]:
    """Whole frames (framing included) in a byte stream; an unfinished tail is left out."""
    out = []
    while (end := data.find(framing.suffix)) >= 0:
        cut = end + len(framing.suffix)
        out.append(data[:cut])
        data = data[cut:]
    return out


class AgentEnd:
    """The agent's side of a link: every chunk received, with its arrival time."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, bytes]] = []

    @property
    def data(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def frames(self, framing: Framing = CR) -> list[bytes]:
        return split_frames(self.data, framing)

    def arrival(self, n: int, framing: Framing = CR) -> float:
        """When the chunk completing frame ``n`` arrived."""
        need = sum(len(f) for f in self.frames(framing)[: n + 1])
        got = 0
        for at, chunk in self.chunks:
            got += len(chunk)
            if got >= need:
                return at
        raise AssertionError(f"frame {n} not received")


class PtyAgent(AgentEnd):
    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def _readable(self) -> None:
        self.chunks.append((time.monotonic(), os.read(self.fd, 4096)))

    def write(self, data: bytes) -> None:
        assert os.write(self.fd, data) == len(data)


@asynccontextmanager
async def pty_agent(path: Path) -> AsyncIterator[PtyAgent]:
    """The agent's serial port, opened raw and read with add_reader (no thread)."""
    loop = asyncio.get_running_loop()
    agent = PtyAgent(os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK))
    loop.add_reader(agent.fd, agent._readable)
    try:
        yield agent
    finally:
        loop.remove_reader(agent.fd)
        os.close(agent.fd)


class TcpAgent(AgentEnd, asyncio.Protocol):
    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append((time.monotonic(), data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@asynccontextmanager
async def tcp_agent(port: int) -> AsyncIterator[TcpAgent]:
    """An agent connected to a scanner's TCP server."""
    loop = asyncio.get_running_loop()
    _transport, agent = await loop.create_connection(TcpAgent, "127.0.0.1", port)
    try:
        yield agent
    finally:
        assert agent.transport is not None
        agent.transport.close()
        await asyncio.wait_for(agent.closed.wait(), 2.0)


def on_demand(**kwargs: object) -> ScannerConfig:
    return ScannerConfig(auto=False, **kwargs)  # type: ignore[arg-type]
