"""The simulated scale itself: :class:`ScaleSimulator`, on a serial port path and/or TCP, with
the scenario a test writes and its ground truth."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import suppress

from simulators.scale.model import Placement, ScaleModel, ScaleState
from simulators.scale.session import Faults, _Session
from simulators.scale.wires import _PtyWire, _TcpWire, _Wire

log = logging.getLogger(__name__)

DIAL_RETRY = 0.1
"""Seconds between a dialling scale's attempts to reach the agent."""


class ScaleSimulator:
    """A scale on a serial port path (``serial_path``, e.g. a NullModem end) and/or on TCP.

    ``async with ScaleSimulator(model, serial_path=link.b_path, tcp=True) as scale:`` then talk
    to ``link.a_path`` or ``127.0.0.1:scale.port``. Both share one load, zero and tare (one
    scale, two cables), and each TCP client is its own conversation.
    """

    def __init__(
        self,
        model: ScaleModel | None = None,
        *,
        serial_path: str | os.PathLike[str] | None = None,
        tcp: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        dial: tuple[str, int] | None = None,
    ) -> None:
        if serial_path is None and not tcp and dial is None:
            raise ValueError("give the simulator a serial_path, tcp=True, dial, or some of them")
        self.model = model or ScaleModel()
        self.serial_path = serial_path
        self.tcp = tcp
        self.host = host
        self.port = port
        self.faults = Faults()
        self.commands: list[str] = []
        """Every command received, in order, over every connection."""
        self.writes = 0
        """Writes to any wire (a split reply counts each part, a merged batch once)."""
        self.bytes_received = 0
        self.silenced = 0
        """Replies and streamed readings swallowed by :attr:`Faults.silent`."""
        self._state: ScaleState | None = None
        self.dial = dial
        """(host, port) the scale connects to, as a scale set up as a TCP client reaches the
        agent's listen port; again whenever the connection is lost."""
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], _Session] = {}
        self._dialer: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._state is None:
            self._state = ScaleState(self.model, loop.time())
        try:
            if self.serial_path is not None:
                self._serve(_PtyWire(self.serial_path), f"scale {self.serial_path}")
            if self.tcp:
                self._server = await asyncio.start_server(self._on_client, self.host, self.port)
                self.port = self._server.sockets[0].getsockname()[1]
            if self.dial is not None:
                self._dialer = asyncio.create_task(self._dial(*self.dial), name="scale dialer")
        except BaseException:
            await self.close()
            raise
        log.info("simulated %s scale on %s", self.model.protocol, self._where())

    async def close(self) -> None:
        dialer, self._dialer = self._dialer, None
        if dialer is not None:
            dialer.cancel()
            with suppress(asyncio.CancelledError):
                await dialer
        server, self._server = self._server, None
        if server is not None:
            server.close()  # no new clients; 3.11 leaves the connected ones to us
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        for task in sessions:
            with suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> ScaleSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _where(self) -> str:
        places = [str(self.serial_path)] if self.serial_path is not None else []
        if self.tcp:
            places.append(f"{self.host}:{self.port}")
        if self.dial is not None:
            places.append(f"a client of {self.dial[0]}:{self.dial[1]}")
        return " and ".join(places)

    async def _dial(self, host: str, port: int) -> None:
        """One conversation at a time with whoever listens at host:port; each runs in a task
        of its own (tracked like a TCP client's), so ``close`` ends it like the others."""
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(DIAL_RETRY)
                continue
            session = _Session(self, _TcpWire(reader, writer), f"scale client of {host}:{port}")
            task = asyncio.create_task(session.run(), name=f"scale client of {host}:{port}")
            self._track(task, session)
            await asyncio.wait({task})  # close() cancels the session after this loop
            if not task.cancelled() and task.exception() is not None:
                log.warning("scale client of %s:%s: %r", host, port, task.exception())
            await asyncio.sleep(DIAL_RETRY)

    def _serve(self, wire: _Wire, name: str) -> None:
        session = _Session(self, wire, name)
        self._track(asyncio.create_task(session.run(), name=name), session)

    def _track(self, task: asyncio.Task[None], session: _Session) -> None:
        self._sessions[task] = session
        task.add_done_callback(self._sessions.pop)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Runs in the server's task for this client: that task is the conversation."""
        session = _Session(
            self, _TcpWire(reader, writer), f"scale tcp {writer.get_extra_info('peername')}"
        )
        task = asyncio.current_task()
        assert task is not None
        self._track(task, session)
        # Ends normally when close() cancels it: 3.11's start_server callback calls
        # task.exception(), which raises (and logs an ERROR) on a cancelled task.
        with suppress(asyncio.CancelledError):
            await session.run()

    # ---- the scenario and its ground truth ---------------------------------------------------

    @property
    def state(self) -> ScaleState:
        if self._state is None:
            raise RuntimeError("start() the simulator first")
        return self._state

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def place(self, load: float) -> Placement:
        """Put a load on the pan (replacing what was there): it ramps, then settles."""
        return self.state.place(load, self._now())

    def clear(self) -> Placement:
        """Take everything off the pan."""
        return self.place(0.0)

    @property
    def placements(self) -> list[Placement]:
        return list(self.state.placements)

    def expected_weight(self) -> float:
        """What a stable reading will show for the current load (after zero and tare)."""
        return self.state.expected_weight()

    def zero_key(self) -> bool:
        """Press ZERO on the scale itself; False when outside the zero range."""
        return self.state.zero(self._now()) is None

    def tare_key(self) -> bool:
        """Press TARE on the scale itself; False when outside the taring range."""
        return self.state.take_tare(self._now()) is None

    def inject_garbage(self, data: bytes) -> None:
        """Send ``data`` in front of the next reply (or the next streamed reading)."""
        self.faults.garbage += data

    # ---- introspection for tests -------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._sessions)

    @property
    def repeating(self) -> bool:
        """Whether some conversation is running ``SIR``."""
        return any(s.repeating for s in self._sessions.values())
