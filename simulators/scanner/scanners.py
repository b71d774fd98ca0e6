"""The scanners: what they scan when, the faults applied on the wire, and what comes back.

Two kinds of scanner
  * :class:`HandheldScanner` -- a handheld or presentation scanner: it scans each part as it
    arrives (phase ``scan_phase`` of its cycle, 0 = the moment it arrives), plus material
    labels at configured moments (:class:`MaterialScan`) or on demand.
  * :class:`TriggeredReader` -- a fixed-mount reader (Keyence SR / Cognex DataMan style): the
    host sends a trigger (``LON\\r``), the reader answers with the current part's code after
    the decode time, or with the no-read text when the read window closes (``LOFF\\r`` or the
    read timeout) with nothing decodable.

Host feedback: every byte the agent sends back is recorded (:class:`Feedback`) with its arrival
time and the scan it follows (the last scan whose last byte had been handed to the wire), so a
test can assert that the good-read answer came only after the agent committed the scan, and
measure scan -> answer latency. ``HostAck.good``/``bad`` default to Honeywell's host ACK
(ESC 7 / ESC 8). With ``HostAck.wait`` the scanner works in host ACK mode: after each write it
sends nothing more until every scan of that write was answered (good or bad) or
``HostAck.timeout`` passed (``ScanRecord.ack_timeout``). Scans due meanwhile are sent late, in
order, none skipped (``started_at - due`` says how late).

All tasks belong to the scanner and are cancelled and awaited by :meth:`ScannerBase.close`,
which then re-raises the first exception any of them died of, so a broken simulator fails the
test instead of going quiet. A scanner must be started, used and closed on one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Self

from simulators.scanner.codes import gs1_value, part_code
from simulators.scanner.records import Feedback, ScanKind, ScanRecord, Trigger, Verdict, Write
from simulators.scanner.settings import (
    _VALID_DATA,
    Fault,
    MaterialScan,
    ScannerConfig,
    TriggerConfig,
    _check_config,
)
from simulators.scanner.transports import Transport
from simulators.station import StationModel

log = logging.getLogger(__name__)


class ScannerBase:
    """What both scanner kinds share: faults, framing, the wire, feedback, ground truth."""

    def __init__(
        self,
        model: StationModel,
        transport: Transport,
        config: ScannerConfig | None = None,
        *,
        extra_tokens: Sequence[bytes] = (),
    ) -> None:
        self.config = config or ScannerConfig()
        _check_config(model, self.config, extra_tokens)
        self.model = model
        """The station; its ``t0`` is resolved by ``start()`` when it was None."""
        self.transport = transport
        self.scans: list[ScanRecord] = []
        """Every scan made, in order (held ``merged`` ones included, with sent_at None)."""
        self.wire: list[Write] = []
        self.feedback: list[Feedback] = []
        self._rng = random.Random(self.config.faults.seed)
        self._injected: deque[Fault] = deque()
        self._held: list[ScanRecord] = []
        self._lock = asyncio.Lock()
        self._last_sent: ScanRecord | None = None
        self._answers = 0
        self._answered = asyncio.Event()
        self._rx = b""
        self._unknown = b""
        self._tokens: dict[bytes, str] = {self.config.ack.good: "good", self.config.ack.bad: "bad"}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._errors: list[BaseException] = []
        self._started = False
        self.started_at: float | None = None
        """When ``start()`` was called (monotonic)."""

    # -- life cycle

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("scanner already started")
        self._started = True
        self.started_at = time.monotonic()
        if self.model.t0 is None:
            self.model = replace(self.model, t0=self.started_at)
        await self.transport.open(self._on_data)

    async def close(self) -> None:
        """Stop every task, close the transport, then re-raise what a task died of."""
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.transport.close()
        if self._errors:
            raise self._errors[0]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("scanner task %s died", task.get_name(), exc_info=exc)
            self._errors.append(exc)

    # -- faults and scans

    def inject(self, fault: Fault, count: int = 1) -> None:
        """The next ``count`` part scans get ``fault`` (before any drawn by rate)."""
        self._injected.extend([fault] * count)

    def _next_fault(self) -> Fault | None:
        if self._injected:
            return self._injected.popleft()
        draw = self._rng.random()
        for fault in Fault:
            rate = self.config.faults.rates.get(fault, 0.0)
            if draw < rate:
                return fault
            draw -= rate
        return None

    def _record(
        self,
        kind: ScanKind,
        cycle: int,
        payload: bytes,
        *,
        valid: bool,
        fault: Fault | None,
        due: float,
        serial: str | None = None,
        lot: str | None = None,
        detail: str = "",
    ) -> ScanRecord:
        frame = self.config.framing.frame(payload)
        record = ScanRecord(
            len(self.scans), kind, cycle, payload, frame, valid, fault, due, serial, lot, detail
        )
        self.scans.append(record)
        return record

    def _part_record(self, cycle: int, fault: Fault | None, due: float) -> ScanRecord:
        cfg = self.config
        code = part_code(self.model, cycle, cfg.symbol)
        serial: str | None = gs1_value(self.model.serial(cycle))
        lot = gs1_value(self.model.lot(cycle)) if cfg.symbol.lot else None
        if fault is Fault.NO_READ:
            payload, serial, lot = cfg.no_read_text.encode("ascii"), None, None
        elif fault is Fault.BAD_CHECK_DIGIT:
            payload = part_code(self.model, cycle, cfg.symbol, bad_check_digit=True).encode()
        elif fault is Fault.GARBAGE:
            payload, serial, lot = self._garbage(), None, None
        elif fault is Fault.OVERLONG:
            payload = code.encode().ljust(cfg.faults.max_length + 1, b"X")
        else:
            payload = code.encode()
        return self._record(
            "part",
            cycle,
            payload,
            valid=fault is None or fault in _VALID_DATA,
            fault=fault,
            due=due,
            serial=serial,
            lot=lot,
        )

    def _no_read_record(self, cycle: int, due: float, why: str) -> ScanRecord:
        return self._record(
            "part",
            cycle,
            self.config.no_read_text.encode("ascii"),
            valid=False,
            fault=Fault.NO_READ,
            due=due,
            detail=why,
        )

    def _material_record(self, code: str, valid: bool, due: float) -> ScanRecord:
        return self._record(
            "material",
            self.model.cycle_at(due)[0],
            code.encode("latin-1"),
            valid=valid,
            fault=None,
            due=due,
        )

    def _garbage(self) -> bytes:
        """Line noise in one frame: random bytes that never end it early, one C0 control."""
        banned = self.config.framing.reserved | {0x1D}
        allowed = [b for b in range(256) if b not in banned]
        controls = [b for b in range(0x20) if b not in banned]
        n = self.config.faults.garbage_length
        out = [self._rng.choice(allowed) for _ in range(n)]
        out[self._rng.randrange(n)] = self._rng.choice(controls)
        return bytes(out)

    # -- the wire

    async def _emit(self, record: ScanRecord) -> None:
        """Write ``record`` (with any held frames), applying its wire fault; in host ACK mode
        also wait for the answers before releasing the wire."""
        async with self._lock:
            if record.fault is Fault.MERGED:
                self._held.append(record)
                return
            scans, self._held = [*self._held, record], []
            data = b"".join(s.frame for s in scans)
            seqs = tuple(s.seq for s in scans)
            if record.fault is Fault.SPLIT:
                n = min(self.config.faults.split_into, len(data))
                cuts = [len(data) * i // n for i in range(n + 1)]
                pieces = [data[a:b] for a, b in itertools.pairwise(cuts)]
            else:
                pieces = [data]
            answers_before = self._answers
            delivered = True
            for i, piece in enumerate(pieces):
                if i:
                    await asyncio.sleep(self.config.faults.split_pause)
                delivered = self.transport.send(piece) and delivered
                now = time.monotonic()
                self.wire.append(Write(now, piece, seqs))
                for s in scans:
                    if s.started_at is None:
                        s.started_at = now
                if i == len(pieces) - 1:
                    for s in scans:
                        s.sent_at = now
                        s.delivered = delivered
                    self._last_sent = scans[-1]
                await self.transport.drain()
            if self.config.ack.wait and delivered:
                await self._await_answers(scans, answers_before)

    async def _await_answers(self, scans: Sequence[ScanRecord], before: int) -> None:
        deadline = time.monotonic() + self.config.ack.timeout
        while self._answers - before < len(scans):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for s in scans:
                    s.ack_timeout = True
                log.info("host ACK mode: no answer to scans %s", [s.seq for s in scans])
                return
            self._answered.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._answered.wait()

    async def _sleep_until(self, t: float) -> None:
        """Sleep until monotonic ``t`` (never wakes early, so cycle_at(now) is the due cycle)."""
        # A deadline, not a condition: there is no event to wait for. (asyncio may wake a
        # timer up to one clock resolution early, hence the loop.)
        while (delay := t - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)

    # -- what comes back

    def _on_data(self, data: bytes) -> None:
        """Split what the agent sent into known tokens (answers, triggers) and the rest."""
        now = time.monotonic()
        self._rx += data
        while self._rx:
            for token, kind in self._tokens.items():
                if self._rx.startswith(token):
                    self._flush_unknown(now)
                    self._rx = self._rx[len(token) :]
                    self._on_token(kind, token, now)
                    break
            else:
                if any(t.startswith(self._rx) for t in self._tokens):
                    break  # the start of a token: wait for the rest
                self._unknown += self._rx[:1]
                self._rx = self._rx[1:]
        self._flush_unknown(now)

    def _flush_unknown(self, now: float) -> None:
        if self._unknown:
            data, self._unknown = self._unknown, b""
            self._add_feedback(now, data, "unknown")

    def _add_feedback(self, now: float, data: bytes, verdict: Verdict) -> None:
        last = self._last_sent
        latency = now - last.sent_at if last is not None and last.sent_at is not None else None
        self.feedback.append(
            Feedback(now, data, verdict, last.seq if last is not None else None, latency)
        )

    def _on_token(self, kind: str, token: bytes, now: float) -> None:
        if kind in ("good", "bad"):
            self._add_feedback(now, token, "good" if kind == "good" else "bad")
            self._answers += 1
            self._answered.set()

    # -- for tests

    @property
    def sent(self) -> list[ScanRecord]:
        """Scans whose bytes are all on the wire, in order of their last byte."""
        return sorted(
            (s for s in self.scans if s.sent_at is not None), key=lambda s: s.sent_at or 0
        )

    def feedback_after(self, seq: int) -> list[Feedback]:
        """What the agent sent back after scan ``seq`` and before the next scan was sent."""
        return [f for f in self.feedback if f.after == seq]


class HandheldScanner(ScannerBase):
    """Scans each part of the station as it arrives (see the module doc).

    ``async with HandheldScanner(model, PtyTransport(tmp_path)) as scanner:`` -- the agent
    opens ``scanner.transport.agent_path``.
    """

    def __init__(
        self, model: StationModel, transport: Transport, config: ScannerConfig | None = None
    ) -> None:
        super().__init__(model, transport, config)

    async def start(self) -> None:
        await super().start()
        if self.config.auto:
            self._spawn(self._run(), name="scanner-schedule")

    def due(self, cycle: int, phase: float | None = None) -> float:
        """When the scan at ``phase`` (default: ``scan_phase``) of ``cycle`` is due."""
        t0 = self.model.t0
        if t0 is None:
            raise RuntimeError("start() the scanner first")
        p = self.config.scan_phase if phase is None else phase
        return t0 + (cycle + p) * self.model.cycle_time

    def _first_cycle(self, now: float) -> int:
        if self.config.first_cycle is not None:
            return self.config.first_cycle
        t0 = self.model.t0 or 0.0
        k = max(0, math.ceil((now - t0) / self.model.cycle_time - self.config.scan_phase))
        while k > 0 and self.due(k - 1) >= now:  # float rounding: never skip a due part
            k -= 1
        return k

    async def _run(self) -> None:
        cfg = self.config
        k = self._first_cycle(self.started_at or time.monotonic())
        scanned = 0
        while cfg.max_scans is None or scanned < cfg.max_scans:
            events: list[tuple[float, int, MaterialScan | None]] = [(self.due(k), 0, None)]
            events += [
                (self.due(k, m.phase), 1 + i, m)
                for i, m in enumerate(cfg.materials)
                if m.cycle == k
            ]
            for due, _order, material in sorted(events, key=lambda e: (e[0], e[1])):
                await self._sleep_until(due)
                if material is None:
                    record = self._part_record(k, self._next_fault(), due)
                    scanned += 1
                else:
                    record = self._material_record(material.code, material.valid, due)
                await self._emit(record)
                if cfg.max_scans is not None and scanned >= cfg.max_scans:
                    return
            k += 1

    async def scan_part(self, cycle: int | None = None, fault: Fault | None = None) -> ScanRecord:
        """Scan a part now: ``cycle`` (default: the one at the station), with ``fault``
        (default: as injected or drawn by rate). Returns once written (or held, if merged)."""
        now = time.monotonic()
        k = self.model.cycle_at(now)[0] if cycle is None else cycle
        record = self._part_record(k, self._next_fault() if fault is None else fault, now)
        await self._emit(record)
        return record

    async def scan_material(self, code: str, *, valid: bool = True) -> ScanRecord:
        """Scan a material label now."""
        record = self._material_record(code, valid, time.monotonic())
        await self._emit(record)
        return record


@dataclass
class _Window:
    trigger: Trigger
    off: asyncio.Event = field(default_factory=asyncio.Event)


class TriggeredReader(ScannerBase):
    """A fixed-mount reader: decodes the part at the station when triggered (module doc).

    A trigger while a read window is open is ignored (``Trigger.ignored``), as is an ``off``
    with no window open. Faults apply to the answer as to a handheld scan; ``no_read`` means
    nothing decodable is in view, so the answer is the no-read text when the window closes.
    """

    def __init__(
        self,
        model: StationModel,
        transport: Transport,
        config: ScannerConfig | None = None,
        trigger: TriggerConfig | None = None,
    ) -> None:
        self.trigger = trigger or TriggerConfig()
        super().__init__(model, transport, config, extra_tokens=(self.trigger.on, self.trigger.off))
        if self.trigger.decode_time < 0 or self.trigger.read_timeout <= 0:
            raise ValueError(
                "scanner configuration invalid: trigger.decode_time must be >= 0 and "
                "trigger.read_timeout > 0"
            )
        self._tokens |= {self.trigger.on: "on", self.trigger.off: "off"}
        self.triggers: list[Trigger] = []
        self._window: _Window | None = None

    def _on_token(self, kind: str, token: bytes, now: float) -> None:
        if kind == "on":
            trig = Trigger(now, "on")
            self.triggers.append(trig)
            if self._window is not None:
                trig.ignored = True
                return
            window = _Window(trig)
            self._window = window
            self._spawn(self._read(window), name=f"reader-window-{len(self.triggers)}")
        elif kind == "off":
            trig = Trigger(now, "off")
            self.triggers.append(trig)
            if self._window is None:
                trig.ignored = True
            else:
                self._window.off.set()
        else:
            super()._on_token(kind, token, now)

    async def _read(self, window: _Window) -> None:
        """One read window: the answer after the decode time, or the no-read text when the
        window closes (off, or the read timeout) with nothing decodable."""
        trig = window.trigger
        cycle = self.model.cycle_at(trig.at)[0]
        fault = self._next_fault()
        cfg = self.trigger
        readable = fault is not Fault.NO_READ and cfg.decode_time < cfg.read_timeout
        ends = trig.at + (cfg.decode_time if readable else cfg.read_timeout)
        try:
            closed_by_off = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, ends - time.monotonic())):
                    await window.off.wait()
                    closed_by_off = True
            if not closed_by_off:
                await self._sleep_until(ends)
            if readable and not closed_by_off:
                record = self._part_record(cycle, fault, ends)
            else:
                why = "off" if closed_by_off else "timeout"
                record = self._no_read_record(cycle, time.monotonic(), why)
            trig.answer = record.seq
        finally:
            self._window = None
        await self._emit(record)
