"""Scale driver: the weight with its unit and stability, asked for or streamed.

A streaming driver (``runners.run_streaming`` owns state, backoff and outage records) on a
byte link (``drivers.links``). The protocol decides the framing: MT-SICS and SBI send lines
(CR LF), Toledo continuous output fixed frames that start with STX. Every message becomes a
weighing (``drivers.scale.protocols``), and every weighing an observation of the weight point:

- a stable weight: GOOD, with its unit, ``detail`` ``{"stable": true}`` (and net/tare where
  the protocol says);
- a dynamic (still moving) weight: UNCERTAIN, "dynamic: the weight is not stable";
- no weight (overload, underload, an unknown unit, a unit other than the configured one, a
  line that matches nothing, garbage): BAD with the reason, never dropped.

MT-SICS is request/response, one request at a time (a lock): the poll (``SI``), a part
snapshot (``S``: the scale waits for stability) and the operator's zero (``Z``) and tare
(``T``) take turns. A request not answered within ``timeout`` means the scale stopped
answering: the stream ends and the runner marks the device down and reconnects. A snapshot
that sees no stable weight within ``snapshot_timeout`` records why, and the scale is reset
(``@``) so that its late answer is not taken for the next request's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from drivers.base import StreamingDriver
from drivers.links.base import Link, read_frames
from drivers.links.factory import make_link
from drivers.links.framing import Frame, Framer
from drivers.links.tcp import TcpServerLink
from drivers.registry import DriverContext
from drivers.scale.config import ScaleDevice
from drivers.scale.protocols import (
    ENCODING,
    TOLEDO_FRAME,
    Ack,
    MtSicsCommand,
    SbiCommand,
    Weighing,
    mtsics_command,
    parse_mtsics,
    parse_sbi,
    parse_toledo,
    sbi_command,
)
from kernel.errors import ConnectError, ReadError, WriteError
from kernel.model import Observation, Quality, Value

log = logging.getLogger(__name__)

Reply = Weighing | Ack
DYNAMIC = "dynamic: the weight is not stable"
SHOWN_BYTES = 128


class ScaleDriver(StreamingDriver):
    """One scale on one link."""

    def __init__(self, device: ScaleDevice, context: DriverContext | None = None) -> None:
        super().__init__(device.name, device.backoff_initial, device.backoff_max)
        self.device = device
        self._link: Link | None = None
        self._queue: asyncio.Queue[list[Observation] | Exception] | None = None
        self._lock = asyncio.Lock()  # one MT-SICS request at a time
        self._pending: asyncio.Future[Reply] | None = None  # the request being answered
        # A snapshot waiting for the stream's next (stable, if True) weighing: toledo.
        self._waiter: tuple[asyncio.Future[Weighing], bool] | None = None
        self._last: tuple[object, ...] | None = None  # what was recorded last (on_change)

    async def open(self) -> None:
        await self.close()
        link = make_link(self.device)
        await link.open()
        self._link = link
        self._last = None

    async def close(self) -> None:
        link, self._link = self._link, None
        waiting = self._waiter[0] if self._waiter is not None else None
        for future in (self._pending, waiting):
            if future is not None and not future.done():
                future.set_exception(ConnectError(self.name, "the connection was closed"))
        if link is not None:
            await link.close()

    def point_names(self) -> Sequence[str]:
        return [self.device.point]

    # -- reading --------------------------------------------------------------------------

    def _framer(self) -> Framer:
        d = self.device
        if d.protocol == "toledo":
            tail = rb"[\s\S]" if d.checksum else b""
            return Framer("pattern", pattern=rb"\x02[\s\S]{15}\r" + tail, max_length=64,
                          inter_char_timeout=d.inter_char_timeout)  # fmt: skip
        return Framer("suffix", suffix=b"\n", max_length=d.max_length,
                      inter_char_timeout=d.inter_char_timeout)  # fmt: skip

    def _parse(self, frame: Frame) -> Reply:
        if frame.error is not None:
            shown = frame.raw[:SHOWN_BYTES].decode(ENCODING)
            return Weighing.failed(f"{frame.error}: {shown!r}")
        if self.device.protocol == "toledo":
            return parse_toledo(frame.data[:TOLEDO_FRAME + 1], checksum=self.device.checksum)
        if self.device.protocol == "sbi":
            return parse_sbi(frame.data)
        return parse_mtsics(frame.data)

    async def stream(self) -> AsyncIterator[Sequence[Observation]]:
        link = self._link
        if link is None:
            raise ConnectError(self.name, "not connected")
        queue: asyncio.Queue[list[Observation] | Exception] = asyncio.Queue()
        self._queue = queue
        tasks = [asyncio.create_task(self._read(link, queue), name=f"read:{self.name}")]
        d = self.device
        if d.poll_interval is not None and d.protocol != "toledo":
            tasks.append(asyncio.create_task(self._poll(queue), name=f"poll:{self.name}"))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self._queue = None
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)

    async def _read(
        self, link: Link, queue: asyncio.Queue[list[Observation] | Exception]
    ) -> None:
        try:
            async for frames in read_frames(link, self._framer()):
                for frame in frames:
                    if frame.blank:
                        continue
                    self._arrived(self._parse(frame), queue)
            queue.put_nowait(ConnectError(self.name, f"{link.description} closed"))
        except (ConnectError, ReadError) as exc:
            queue.put_nowait(exc)
        except Exception as exc:  # a bug must end the stream loudly, not hang it
            log.exception("device %s: reading failed", self.name, extra={"device": self.name})
            queue.put_nowait(ReadError(self.name, f"reading failed: {exc!r}"))

    def _arrived(self, reply: Reply, queue: asyncio.Queue[list[Observation] | Exception]) -> None:
        """A reply answers the request waiting for it; anything else (continuous output, an
        auto-printing balance, the scale's print key) is recorded as it comes."""
        pending = self._pending
        if pending is not None and not pending.done():
            pending.set_result(reply)
            return
        if isinstance(reply, Weighing):
            if self._waiter is not None:
                future, stable = self._waiter
                if not future.done() and (not stable or (reply.ok and reply.stable)):
                    future.set_result(reply)
            self._record(reply, queue)

    async def _poll(self, queue: asyncio.Queue[list[Observation] | Exception]) -> None:
        d = self.device
        assert d.poll_interval is not None
        command = (
            mtsics_command(MtSicsCommand.IMMEDIATE)
            if d.protocol == "mt_sics"
            else sbi_command(SbiCommand.PRINT)
        )
        loop = asyncio.get_running_loop()
        due = loop.time()
        try:
            while True:
                link = self._link
                if isinstance(link, TcpServerLink) and link.peer is None:
                    # A scale that connects to the agent (listen_port): asking before it has
                    # would time out and mark it down, and a reconnecting scale would never
                    # get in. Wait for it; the first poll goes out as it connects.
                    await link.wait_reader()
                    due = loop.time()
                reply = await self._request(command, d.timeout)
                if isinstance(reply, Weighing):
                    self._record(reply, queue)
                due += d.poll_interval
                now = loop.time()
                if due < now:  # a slow answer: skip the missed slots, never bunch them
                    due = now
                await asyncio.sleep(due - now)
        except (ConnectError, ReadError) as exc:
            queue.put_nowait(exc)

    async def _request(self, command: bytes, within: float) -> Reply:
        """Send ``command`` and return the scale's answer. No answer ``within`` seconds: the
        scale stopped answering (ReadError)."""
        link = self._link
        if link is None:
            raise ConnectError(self.name, "not connected")
        async with self._lock:
            future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            self._pending = future
            try:
                await link.write(command)
                async with asyncio.timeout(within):
                    return await future
            except TimeoutError:
                what = command.strip().decode(ENCODING)
                raise ReadError(self.name, f"no answer to {what!r} within {within:g} s") from None
            finally:
                self._pending = None

    def _record(self, w: Weighing, queue: asyncio.Queue[list[Observation] | Exception]) -> None:
        obs = self._observe(w)
        key = (obs.value, obs.unit, obs.quality, obs.error)
        if self.device.report == "on_change" and key == self._last:
            return
        self._last = key
        if obs.quality is Quality.BAD:
            self.status.reads_failed += 1
        queue.put_nowait([obs])

    def _observe(self, w: Weighing, ts: float | None = None) -> Observation:
        d = self.device
        ts = time.time() if ts is None else ts
        detail: dict[str, Value] = {}
        if w.stable is not None:
            detail["stable"] = w.stable
        if w.net is not None:
            detail["net"] = w.net
        if w.tare is not None:
            detail["tare"] = w.tare
        unit = w.unit if w.unit is not None else (d.unit if w.ok else None)
        if w.error is not None:
            quality, error, value = Quality.BAD, w.error, None
        elif d.unit is not None and unit != d.unit:
            quality, error, value = Quality.BAD, f"weighs in {unit}, not {d.unit}", None
        elif not w.stable:
            quality, error, value = Quality.UNCERTAIN, DYNAMIC, w.weight
        else:
            quality, error, value = Quality.GOOD, None, w.weight
        return Observation(
            self.name, d.point, value, quality, ts=ts, unit=unit, error=error,
            detail=detail or None,
        )  # fmt: skip

    # -- snapshots and commands -------------------------------------------------------------

    async def read_points(self, names: Sequence[str]) -> list[Observation]:
        """A part's weight: stable (unless ``stable_only`` is off) within
        ``snapshot_timeout``, else BAD with the reason."""
        d = self.device
        if list(names) != [d.point]:
            raise ReadError(self.name, f"a scale's snapshot is its weight alone ({d.point})")
        try:
            weighing = await self._snapshot()
        except TimeoutError:
            return [self._bad(f"no stable weight within {d.snapshot_timeout:g} s")]
        obs = self._observe(weighing)
        if d.stable_only and obs.quality is Quality.UNCERTAIN:
            return [self._bad(f"no stable weight: {obs.error}", obs)]
        return [obs]

    async def _snapshot(self) -> Weighing:
        d = self.device
        if d.protocol == "mt_sics":
            command = MtSicsCommand.STABLE if d.stable_only else MtSicsCommand.IMMEDIATE
            try:
                reply = await self._request(mtsics_command(command), d.snapshot_timeout)
            except ReadError:
                await self._resync()
                raise TimeoutError from None
            if isinstance(reply, Ack):
                return Weighing.failed(f"unexpected answer to a weight request: {reply}")
            return reply
        if d.protocol == "sbi" and d.poll_interval is not None:
            # SBI has no "send when stable": print until a stable line, or the deadline.
            async with asyncio.timeout(d.snapshot_timeout):
                while True:
                    reply = await self._request(sbi_command(SbiCommand.PRINT), d.timeout)
                    if isinstance(reply, Weighing) and (
                        not reply.ok or reply.stable or not d.stable_only
                    ):
                        return reply
        future: asyncio.Future[Weighing] = asyncio.get_running_loop().create_future()
        # Toledo, or an SBI balance printing on its own (ESC P could switch that off): the
        # stream's next (stable) weighing.
        self._waiter = (future, d.stable_only)
        try:
            async with asyncio.timeout(d.snapshot_timeout):
                return await future
        finally:
            self._waiter = None

    async def _resync(self) -> None:
        """After a request timed out, the scale may still answer it: ``@`` cancels what it was
        doing, and its answer (the serial number) marks where the next request starts."""
        with contextlib.suppress(ReadError, ConnectError):
            await self._request(mtsics_command(MtSicsCommand.RESET), self.device.timeout)

    def _bad(self, why: str, seen: Observation | None = None) -> Observation:
        detail = seen.detail if seen is not None else None
        unit = seen.unit if seen is not None else self.device.unit
        return Observation(
            self.name, self.device.point, None, Quality.BAD, unit=unit, error=why, detail=detail
        )

    async def command(self, name: str) -> str:
        d = self.device
        if d.protocol == "sbi" and name in ("zero", "tare"):
            link = self._link
            if link is None:
                raise ConnectError(self.name, "not connected")
            await link.write(sbi_command(SbiCommand.ZERO if name == "zero" else SbiCommand.TARE))
            return f"{name} sent (an SBI balance does not confirm it)"
        if d.protocol == "mt_sics" and name in ("zero", "tare"):
            command = MtSicsCommand.ZERO if name == "zero" else MtSicsCommand.TARE
            reply = await self._request(mtsics_command(command), d.snapshot_timeout)
            if isinstance(reply, Ack) and reply.done:
                if reply.tare is not None:
                    return f"tared: {reply.tare:g} {reply.unit or ''}".rstrip()
                return "zeroed" if name == "zero" else "tared"
            why = reply.error if reply.error else f"unexpected answer {reply}"
            raise WriteError(self.name, f"{name} refused: {why}")
        return await super().command(name)
