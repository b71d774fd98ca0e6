"""One conversation with the scale (the serial port, or one TCP client): commands run in order
and answered, readings streamed, every reply sent through the :class:`Faults`.

- **MT-SICS**: answers ``S`` (waits for stability, ``S I`` after ``stable_timeout``), ``SI``,
  ``SIR`` (repeats every ``repeat_interval`` until ``@`` or any other command), ``Z``/``ZI``,
  ``T``/``TI`` and ``@`` (cancels what runs, clears the tare, answers ``I4 A "<serial>"``);
  anything else gets ``ES``.
- **SBI**: prints its display on ``ESC P``, or unasked every ``repeat_interval`` in auto print;
  takes ``ESC T`` (zero when empty, tare when loaded), ``ESC U``/``ESC f4_`` (tare) and
  ``ESC V``/``ESC f3_`` (zero).
- **Toledo continuous**: streams a frame every ``repeat_interval``, unasked.

Faults (:class:`Faults`) a test can switch on: garbage bytes before the next reply, replies in a
unit nobody knows, silence, each reply split over several writes, several replies merged into
one write.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from simulators.scale.formats import (
    CRLF,
    mtsics_lines,
    mtsics_weight,
    number,
    sbi_commands,
    sbi_line,
    toledo_frame,
)
from simulators.scale.model import ScaleModel, ScaleProtocol, ScaleState
from simulators.scale.wires import _Wire

log = logging.getLogger(__name__)

SPLIT_GAP = 0.002
"""Seconds between the parts of a split reply, so the reader sees them as separate reads."""


@dataclass
class Faults:
    """Misbehaviour to inject; tests set the fields while the simulator runs."""

    silent: bool = False
    """Answer nothing and stream nothing (a scale switched to another mode, a dead line)."""
    unknown_unit: str | None = None
    """Report weights in this unit (for Toledo: a unit code no table has)."""
    split: int = 1
    """Send every reply in this many writes."""
    merge: int = 1
    """Hold replies until this many are ready, then send them in one write."""
    garbage: bytes = b""
    """Sent once, in front of the next reply."""


class _Scale(TypingProtocol):
    """What a session uses of its :class:`~simulators.scale.simulator.ScaleSimulator`: the one
    scale every conversation shares, and the counters kept for the test."""

    model: ScaleModel
    faults: Faults
    commands: list[str]
    writes: int
    bytes_received: int
    silenced: int

    @property
    def state(self) -> ScaleState: ...


class _Session:
    """One conversation: the serial port, or one TCP client. Owns its tasks."""

    def __init__(self, sim: _Scale, wire: _Wire, name: str) -> None:
        self.sim = sim
        self.wire = wire
        self.name = name
        self.repeating = False
        self._queue: deque[Callable[[], Awaitable[None]]] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._stream: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._held: list[bytes] = []
        self._sbi_input = bytearray()

    @property
    def model(self) -> ScaleModel:
        return self.sim.model

    @property
    def state(self) -> ScaleState:
        return self.sim.state

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def run(self) -> None:
        protocol = self.model.protocol
        if protocol is ScaleProtocol.TOLEDO or (
            protocol is ScaleProtocol.SBI and self.model.sbi_auto_print
        ):
            self._stream = asyncio.create_task(self._stream_forever(), name=f"{self.name} stream")
        framer_lines = bytearray()
        try:
            while data := await self.wire.read():
                self.sim.bytes_received += len(data)
                if protocol is ScaleProtocol.MTSICS:
                    for line in mtsics_lines(framer_lines, data):
                        await self._mtsics_line(line)
                elif protocol is ScaleProtocol.SBI:
                    await self._sbi_bytes(data)
                else:  # Toledo continuous output takes no commands here; keep the input
                    self.sim.commands.append(data.decode("latin-1"))
        finally:
            await self._stop_tasks()
            await self.wire.aclose()

    async def _stop_tasks(self) -> None:
        for task in (self._worker, self._stream):
            if task is not None:
                task.cancel()
        for task in (self._worker, self._stream):
            if task is not None:
                with suppress(asyncio.CancelledError):
                    await task
        self._worker = self._stream = None

    # ---- sending, through the faults ----------------------------------------------------

    async def send(self, payload: bytes) -> None:
        faults = self.sim.faults
        if faults.silent:
            self.sim.silenced += 1
            return
        async with self._write_lock:
            if faults.merge > 1:
                self._held.append(payload)
                if len(self._held) < faults.merge:
                    return
                payload = b"".join(self._held)
                self._held.clear()
            if faults.garbage:
                payload, faults.garbage = faults.garbage + payload, b""
            parts = max(1, min(faults.split, len(payload)))
            size = math.ceil(len(payload) / parts)
            try:
                for i in range(0, len(payload), size):
                    if i:
                        await asyncio.sleep(SPLIT_GAP)
                    await self.wire.write(payload[i : i + size])
                    self.sim.writes += 1
            except OSError as exc:  # the client went away, the cable was pulled
                log.debug("%s: reply not sent: %s", self.name, exc)

    def unit(self) -> str:
        return self.sim.faults.unknown_unit or self.model.unit

    def value(self, value: float) -> str:
        return number(value, self.model.decimals)

    # ---- commands, one at a time ----------------------------------------------------------

    def _enqueue(self, run: Callable[[], Awaitable[None]]) -> None:
        """Queue a command; the worker runs them in order (``SIR`` ends when one arrives)."""
        self._queue.append(run)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"{self.name} commands")

    async def _work(self) -> None:
        while self._queue:
            await self._queue.popleft()()

    async def _cancel_all(self) -> None:
        self._queue.clear()
        if self._worker is not None:
            self._worker.cancel()
            with suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self.repeating = False

    async def _until_stable(self) -> bool:
        """Wait for a stable (or out of range) reading; False after ``stable_timeout``."""
        deadline = self.now() + self.model.stable_timeout
        while True:
            now = self.now()
            reading = self.state.reading(now)
            if reading.stable or reading.overload or reading.underload:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(max(0.0, min(self.state.current.stable_at, deadline) - now))

    # ---- MT-SICS --------------------------------------------------------------------------

    async def _mtsics_line(self, command: str) -> None:
        if not command:
            return
        self.sim.commands.append(command)
        if command == "@":
            await self._cancel_all()
            self.state.reset()
            await self.send(f'I4 A "{self.model.serial_number}"'.encode() + CRLF)
            return
        run = {
            "S": self._stable_weight,
            "SI": self._immediate_weight,
            "SIR": self._repeat_weight,
            "Z": self._zero,
            "ZI": self._zero_immediately,
            "T": self._tare,
            "TI": self._tare_immediately,
        }.get(command, self._syntax_error)
        self._enqueue(run)

    def _weight_line(self) -> bytes:
        return mtsics_weight(self.model, self.state.reading(self.now()), self.unit())

    async def _syntax_error(self) -> None:
        await self.send(b"ES" + CRLF)

    async def _stable_weight(self) -> None:
        if await self._until_stable():
            await self.send(self._weight_line())
        else:
            await self.send(b"S I" + CRLF)

    async def _immediate_weight(self) -> None:
        await self.send(self._weight_line())

    async def _repeat_weight(self) -> None:
        self.repeating = True
        try:
            while not self._queue:
                await self.send(self._weight_line())
                self._arrived.clear()
                with suppress(TimeoutError):
                    async with asyncio.timeout(self.model.repeat_interval):
                        await self._arrived.wait()
        finally:
            self.repeating = False

    async def _zero(self) -> None:
        if not await self._until_stable():
            await self.send(b"Z I" + CRLF)
            return
        refused = self.state.zero(self.now())
        await self.send(f"Z {refused or 'A'}".encode() + CRLF)

    async def _zero_immediately(self) -> None:
        stable = self.state.stable(self.now())
        refused = self.state.zero(self.now())
        await self.send(f"ZI {refused or ('S' if stable else 'D')}".encode() + CRLF)

    async def _tare(self) -> None:
        if not await self._until_stable():
            await self.send(b"T I" + CRLF)
            return
        await self._send_tare("T", stable=True)

    async def _tare_immediately(self) -> None:
        await self._send_tare("TI", stable=self.state.stable(self.now()))

    async def _send_tare(self, ident: str, *, stable: bool) -> None:
        refused = self.state.take_tare(self.now())
        if refused:
            await self.send(f"{ident} {refused}".encode() + CRLF)
            return
        tare = self.value(self.state.tare)
        status = "S" if stable else "D"
        await self.send(f"{ident} {status} {tare:>10} {self.unit()}".encode() + CRLF)

    # ---- SBI ------------------------------------------------------------------------------

    async def _sbi_bytes(self, data: bytes) -> None:
        for command in sbi_commands(self._sbi_input, data):
            self.sim.commands.append(f"ESC {command}")
            run = {
                "P": self._sbi_print,
                "T": self._sbi_tare_or_zero,
                "U": self._sbi_tare,
                "f4_": self._sbi_tare,
                "V": self._sbi_zero,
                "f3_": self._sbi_zero,
            }.get(command)
            if run is not None:  # a balance ignores commands it does not have
                self._enqueue(run)

    def _sbi_line(self) -> bytes:
        return sbi_line(self.model, self.state.reading(self.now()), self.unit())

    async def _sbi_print(self) -> None:
        await self.send(self._sbi_line())

    async def _sbi_zero(self) -> None:
        if await self._until_stable():
            self.state.zero(self.now())

    async def _sbi_tare(self) -> None:
        if await self._until_stable():
            self.state.take_tare(self.now())

    async def _sbi_tare_or_zero(self) -> None:
        if await self._until_stable():
            now = self.now()
            if abs(self.state.raw(now)) <= self.model.zero_limit and self.state.tare == 0.0:
                self.state.zero(now)
            else:
                self.state.take_tare(now)

    # ---- continuous output ----------------------------------------------------------------

    async def _stream_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.model.repeat_interval
        next_at = loop.time()
        while True:
            if self.model.protocol is ScaleProtocol.TOLEDO:
                await self.send(self._toledo_frame())
            else:
                await self.send(self._sbi_line())
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def _toledo_frame(self) -> bytes:
        reading = self.state.reading(self.now())
        return toledo_frame(self.model, reading, self.state.tare, self.unit())
