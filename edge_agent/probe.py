"""The commissioning probe: ``edge-agent config probe CONFIG [--device NAME] [--json]``.

Connects to each device, reads every point once (``report: snapshot`` points and coils
included) and says, point by point, what came back: the raw registers or bits, the decoded
value, how long the request took and, when a point is not good, why, in terms an integrator
can act on (a register the PLC does not have, a type one register too long, a unit id the
gateway does not serve, a PLC that does not answer).

Requests are the ones the driver plans (``plan_requests`` with the device's max_gap and
max_registers over all its points). When a coalesced request is refused with a Modbus
exception, its points are read again one by one, so the table names exactly the point at a
bad address while its neighbours still show their values; a note then warns that the poll,
which reads them together, fails them all. A point of several registers refused alone is
checked once more with its first register only, which tells "wrong address" from "wrong type
size".

Devices are probed concurrently, each on a connection of its own that is closed at the end,
so a dead device costs its own timeouts and never delays the others. Nothing is written.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.modbus.config import BIT_TABLES, ModbusPoint, ModbusTcpDevice, Table
from drivers.modbus.driver import ModbusTcpDriver, ProbeReply, describe_exception
from drivers.modbus.plan import PlannedPoint, Request, plan_requests
from edge_agent.config import AgentConfig
from edge_agent.errors import ConnectError, DeviceError
from edge_agent.model import DeviceState, Quality, Value

log = logging.getLogger(__name__)

GIVE_UP_AFTER_TIMEOUTS = 3
"""Consecutive unanswered requests after which a device counts as not answering at all: the
rest of its points are not read, so a dead PLC costs a few timeouts, not one per request."""

GATEWAY_CODES = frozenset({10, 11})
"""Modbus exceptions a gateway sends about the unit behind it rather than about addresses."""

RAW_WORDS_SHOWN = 6
"""Registers the table shows per point (the JSON has all of them)."""

_READ_FC = {Table.COIL: 1, Table.DISCRETE_INPUT: 2, Table.HOLDING: 3, Table.INPUT: 4}
_CELL = {
    Table.COIL: "coil",
    Table.DISCRETE_INPUT: "input",
    Table.HOLDING: "register",
    Table.INPUT: "register",
}


@dataclass(frozen=True, slots=True)
class PointProbe:
    """One point as the probe read it."""

    name: str
    table: str
    address: int
    """As written in the YAML."""
    protocol_address: int
    """On the wire: ``address - address_base``."""
    type: str
    raw: tuple[int, ...] | tuple[bool, ...] | None
    """The point's registers (or bits) as they came back; None if nothing came for it."""
    value: Value
    unit: str | None
    quality: Quality
    latency: float | None
    """Seconds from sending the request that carried the point to its answer."""
    request: str | None
    """That request, e.g. ``holding 0+64``; ``holding 66+1 alone`` after a split."""
    error: str | None = None
    """Why the point is not good, explained."""

    @property
    def ok(self) -> bool:
        return self.quality is Quality.GOOD


@dataclass(slots=True)
class DeviceProbe:
    """One device as the probe found it."""

    name: str
    type: str
    host: str
    port: int
    unit_id: int
    timeout: float
    connected: bool = False
    connect_latency: float | None = None
    """Seconds to open the connection (connect_delay not included)."""
    error: str | None = None
    """Why the device could not be probed at all, or why probing stopped early."""
    points: list[PointProbe] = field(default_factory=list)
    """Every point in config order; empty when the connection could not be opened."""
    notes: list[str] = field(default_factory=list)
    """Warnings about the device as a whole (e.g. a coalesced request the poll will fail)."""
    requests: int = 0
    """Requests sent."""

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ok(self) -> bool:
        return self.connected and self.error is None and all(p.ok for p in self.points)

    @property
    def state(self) -> DeviceState:
        """UP: every point good; DEGRADED: some points bad; DOWN: the device is unreachable."""
        if not self.connected or self.error is not None:
            return DeviceState.DOWN
        return DeviceState.UP if self.ok else DeviceState.DEGRADED

    @property
    def summary(self) -> str:
        good = sum(p.ok for p in self.points)
        counts = f"{good} of {len(self.points)} points good"
        if not self.connected:
            return f"{self.state.value}: {self.error}"
        if self.error is not None:
            return f"{self.state.value}: {counts}; {self.error}"
        return f"{self.state.value}: {counts}"


# ---- probing ---------------------------------------------------------------------------


async def probe(
    cfg: AgentConfig, device: str | None = None, *, attempt_timeout: float | None = None
) -> list[DeviceProbe]:
    """Probe every device of ``cfg`` (or only ``device``), concurrently, in config order.

    ``attempt_timeout`` replaces each device's ``timeout`` (connecting and every request).
    An unknown device name is a ValueError naming the closest device. Device problems are
    results, never exceptions.
    """
    devices = list(cfg.devices)
    if device is not None:
        devices = [d for d in devices if d.name == device]
        if not devices:
            raise ValueError(_unknown_device(device, [d.name for d in cfg.devices]))
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(_probe_device(d, attempt_timeout), name=f"probe:{d.name}")
            for d in devices
        ]
    return [t.result() for t in tasks]


def _unknown_device(name: str, known: Sequence[str]) -> str:
    msg = f"unknown device {name!r}"
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"{msg}; did you mean {close[0]!r}?"
    return f"{msg} (devices: {', '.join(known)})"


async def _probe_device(dev: ModbusTcpDevice, attempt_timeout: float | None) -> DeviceProbe:
    if attempt_timeout is not None:
        dev = dev.model_copy(update={"timeout": attempt_timeout})
    result = DeviceProbe(dev.name, dev.type, dev.host, dev.port, dev.unit_id, dev.timeout)
    try:
        driver = ModbusTcpDriver(dev)
    except ValueError as exc:  # config validation rejects this first
        result.error = str(exc)
        return result
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await driver.open()
    except ConnectError as exc:
        result.error = _reason(exc)
        return result
    except Exception as exc:  # a bug must not take the other devices' results with it
        log.exception("probe of device %s failed", dev.name, extra={"device": dev.name})
        result.error = f"probe failed: {exc!r}"
        return result
    try:
        result.connected = True
        result.connect_latency = max(0.0, loop.time() - started - dev.connect_delay)
        prober = _DeviceProber(dev, driver, result)
        try:
            await prober.run()
        except Exception as exc:
            log.exception("probe of device %s failed", dev.name, extra={"device": dev.name})
            result.error = f"probe failed: {exc!r}"
        result.points = prober.rows()
    finally:
        await driver.close()
    return result


def _reason(exc: DeviceError) -> str:
    """The message of a device error without its "device 'x': " prefix (the table says it)."""
    return str(exc).removeprefix(f"device {exc.device!r}: ")


class _DeviceProber:
    """Reads every point of one open device, request by request."""

    def __init__(self, dev: ModbusTcpDevice, driver: ModbusTcpDriver, result: DeviceProbe):
        self.dev = dev
        self.driver = driver
        self.result = result
        self.found: dict[str, PointProbe] = {}
        self.stopped: str | None = None  # why the remaining points are not read
        self.timeouts_in_row = 0

    async def run(self) -> None:
        d = self.dev
        for req in plan_requests(
            d.points,
            address_base=d.address_base,
            max_registers=d.max_registers,
            max_gap=d.max_gap,
        ):
            reply = await self._send(req)
            if reply is None:
                continue
            spans = _spans(req)
            if (
                reply.exception_code is None
                or reply.exception_code in GATEWAY_CODES
                or len(spans) == 1
            ):
                self._record(reply)
                continue
            # Refused as a whole: read the points one by one to find the culprit(s).
            alone = [await self._send(r) for r in spans]
            for r in alone:
                if r is not None:
                    await self._record_alone(r)
            self.result.notes.append(self._split_note(req, reply, alone))

    def rows(self) -> list[PointProbe]:
        """Every point in config order; those never read say why."""
        why = f"not read: {self.stopped}" if self.stopped else "not read"
        return [self.found.get(p.name) or self._row(p, None, why) for p in self.dev.points]

    async def _send(self, req: Request) -> ProbeReply | None:
        """The reply, or None once the device is past talking to (remaining points stay
        unread and ``result.error`` says why)."""
        if self.stopped is not None:
            return None
        try:
            reply = await self.driver.probe_request(req)
        except ConnectError as exc:
            self._stop(_reason(exc), "connection lost")
            return None
        self.result.requests += 1
        if reply.timed_out:
            self.timeouts_in_row += 1
            if self.timeouts_in_row >= GIVE_UP_AFTER_TIMEOUTS:
                self._stop(
                    f"the device stopped answering ({self.timeouts_in_row} requests in a row "
                    f"got no response within {self.dev.timeout}s)",
                    "the device stopped answering",
                )
        else:
            self.timeouts_in_row = 0
        if reply.exception_code in GATEWAY_CODES:
            # About the unit, not the addresses: every other request would say the same.
            self._stop(self._gateway(reply.exception_code or 0), self._unreachable())
        return reply

    def _stop(self, error: str, short: str) -> None:
        """Read nothing more: ``error`` goes to the device, ``short`` to unread points."""
        self.result.error = error
        self.stopped = short

    def _record(self, reply: ProbeReply, *, alone: bool = False) -> None:
        req = reply.request
        for pp, obs in zip(req.points, reply.observations, strict=True):
            raw = _raw_of(pp, reply)
            error = None if obs.quality is Quality.GOOD else self._explain(pp, reply, raw)
            self.found[pp.point.name] = self._row(
                pp.point,
                raw,
                error,
                value=obs.value,
                quality=obs.quality,
                latency=reply.latency,
                request=_describe(req, alone),
            )

    async def _record_alone(self, reply: ProbeReply) -> None:
        """A point read alone; refused with exception 2 and longer than one register, it is
        read once more with its first register only, to tell a wrong address from a wrong
        type size."""
        self._record(reply, alone=True)
        req = reply.request
        if reply.exception_code != 2 or req.count == 1 or req.table in BIT_TABLES:
            return
        first = await self._send(Request(req.table, req.address, 1, ()))
        if first is None or first.words is None or len(first.words) != 1:
            return
        a = req.address + self.dev.address_base  # as the YAML counts
        for pp in req.points:
            p = pp.point
            self.found[p.name] = self._row(
                p,
                first.words,
                f"wrong type size: register {a} answers but {_span(a, req.count)} is refused "
                f"(illegal data address): {p.type.value} needs {req.count} registers, and the "
                "PLC holds something shorter there (int16/uint16?) or the address is off",
                value=None,
                quality=Quality.BAD,
                latency=first.latency,
                request=f"{req.table.value} {req.address}+1 alone",
            )

    def _row(
        self,
        p: ModbusPoint,
        raw: tuple[int, ...] | tuple[bool, ...] | None,
        error: str | None,
        *,
        value: Value = None,
        quality: Quality = Quality.BAD,
        latency: float | None = None,
        request: str | None = None,
    ) -> PointProbe:
        return PointProbe(
            name=p.name,
            table=p.table.value,
            address=p.address,
            protocol_address=p.address - self.dev.address_base,
            type=p.type.value,
            raw=raw,
            value=value,
            unit=p.unit,
            quality=quality,
            latency=latency,
            request=request,
            error=error,
        )

    # -- explanations ---------------------------------------------------------------------

    def _explain(
        self, pp: PlannedPoint, reply: ProbeReply, raw: tuple[int, ...] | tuple[bool, ...] | None
    ) -> str:
        p, req = pp.point, reply.request
        code = reply.exception_code
        if code in GATEWAY_CODES:  # the device header carries the whole explanation
            return f"modbus exception {code}: {self._unreachable()}"
        if code is not None:
            return self._exception(code, req)
        if reply.timed_out:
            return f"timeout: no response within {self.dev.timeout}s"
        if reply.error is not None:
            return f"no usable reply: {reply.error}"
        got = len(raw or ())
        if got < pp.length:
            what = "bit" if p.table in BIT_TABLES else "register"
            asked = len(reply.words or reply.bits or ())
            return (
                f"wrong type size: got {_n(got, what)}, {p.type.value} needs {pp.length} "
                f"(the device answered {asked} of the {req.count} {what}s asked)"
            )
        obs = next(o for q, o in zip(req.points, reply.observations, strict=True) if q is pp)
        return f"decode error: {obs.error}"

    def _exception(self, code: int, req: Request) -> str:
        base = self.dev.address_base
        a = req.address + base  # as the YAML counts
        where = _span(a, req.count)
        if base:
            where += f" (protocol address {_span(req.address, req.count)})"
        what = _CELL[req.table]
        text = describe_exception(code)
        if code == 2:
            return (
                f"{text}: the PLC has no {what}{'s' if req.count > 1 else ''} {where} in the "
                f"{req.table.value} table; check address_base (0 vs 1) and the table"
            )
        if code == 1:
            return (
                f"{text}: the PLC does not serve reads of the {req.table.value} table "
                f"(function {_READ_FC[req.table]}); check the table"
            )
        if code == 3:
            return (
                f"{text}: the PLC refused reading {_n(req.count, what)} at {where}; check "
                "count and type, or lower max_registers"
            )
        if code in (5, 6):
            return f"{text}: the PLC is busy; probe again, or raise request_delay"
        return f"{text}: the PLC could not serve the read of {where}"

    def _unreachable(self) -> str:
        return f"the gateway cannot reach unit {self.dev.unit_id}"

    def _gateway(self, code: int) -> str:
        d = self.dev
        if code == 10:
            return (
                f"{describe_exception(code)}: the gateway at {d.host}:{d.port} has no path to "
                f"unit {d.unit_id}; check unit_id and the gateway's routing"
            )
        return (
            f"{describe_exception(code)}: {d.host}:{d.port} answers, but no device behind it "
            f"answers as unit {d.unit_id}; check unit_id and that the PLC is on"
        )

    def _split_note(
        self, req: Request, reply: ProbeReply, alone: Sequence[ProbeReply | None]
    ) -> str:
        what = f"{req.table.value} {req.address}+{req.count}"
        head = (
            f"{what} ({len(req.points)} points) was refused as one request "
            f"({reply.error}), so its points were read one by one"
        )
        d = self.dev
        each_good = all(
            r is not None and all(o.quality is Quality.GOOD for o in r.observations) for r in alone
        )
        if each_good and reply.exception_code == 2:
            return (
                f"{head}: each reads fine alone, so the PLC leaves {_CELL[req.table]}s between "
                f"them unmapped. The poll bridges gaps of up to max_gap ({d.max_gap}) unused "
                f"{_CELL[req.table]}s and would fail all of them: lower max_gap or move the "
                "points."
            )
        if each_good and reply.exception_code == 3:
            return (
                f"{head}: each reads fine alone, so the PLC refuses reading "
                f"{req.count} {_CELL[req.table]}s at once: lower max_registers (now "
                f"{d.max_registers})."
            )
        if each_good:
            return (
                f"{head}: each reads fine alone. If the refusal comes back, the poll fails all "
                "of them: probe again, and if it persists lower max_gap or max_registers."
            )
        return (
            f"{head}. A poll or snapshot that reads them in one request reports all of them bad "
            "until every one of them reads."
        )


def _spans(req: Request) -> list[Request]:
    """One request per distinct span of the request's points (bits of one word share one)."""
    by_span: dict[tuple[int, int], list[PlannedPoint]] = {}
    for pp in req.points:
        by_span.setdefault((req.address + pp.offset, pp.length), []).append(pp)
    return [
        Request(req.table, addr, n, tuple(PlannedPoint(pp.point, 0) for pp in pps))
        for (addr, n), pps in by_span.items()
    ]


def _raw_of(pp: PlannedPoint, reply: ProbeReply) -> tuple[int, ...] | tuple[bool, ...] | None:
    end = pp.offset + pp.length
    if reply.bits is not None:
        return reply.bits[pp.offset : end]
    if reply.words is not None:
        return reply.words[pp.offset : end]
    return None


def _describe(req: Request, alone: bool) -> str:
    return f"{req.table.value} {req.address}+{req.count}" + (" alone" if alone else "")


def _span(start: int, count: int) -> str:
    return str(start) if count == 1 else f"{start}..{start + count - 1}"


def _n(count: int, what: str) -> str:
    return f"{count} {what}" + ("" if count == 1 else "s")


# ---- output ----------------------------------------------------------------------------


def exit_code(probes: Sequence[DeviceProbe]) -> int:
    """0 when every device connected and every point read good, else 1."""
    return 0 if all(d.ok for d in probes) else 1


COLUMNS = ("POINT", "TABLE", "ADDRESS", "TYPE", "RAW", "VALUE", "QUALITY", "LATENCY", "PROBLEM")


def format_table(probes: Sequence[DeviceProbe]) -> str:
    """Plain text, one block per device: a header line, then one aligned row per point."""
    blocks = [_device_block(d) for d in probes]
    good = sum(d.ok for d in probes)
    blocks.append(f"{good} of {len(probes)} device(s) fully good")
    return "\n\n".join(blocks)


def _device_block(d: DeviceProbe) -> str:
    connect = f"connected in {_ms(d.connect_latency)}" if d.connected else "not connected"
    lines = [
        f"{d.name}  {d.endpoint}  unit {d.unit_id}  {connect}  {d.requests} request(s)  {d.summary}"
    ]
    if d.points:
        rows = [COLUMNS, *(_cells(p) for p in d.points)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
        for r in rows:
            cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
            lines.append(("  " + "  ".join(cells) + "  " + r[-1]).rstrip())
    lines.extend(f"  note: {n}" for n in d.notes)
    return "\n".join(lines)


def _cells(p: PointProbe) -> tuple[str, ...]:
    address = str(p.address)
    if p.protocol_address != p.address:
        address += f" (wire {p.protocol_address})"
    return (
        p.name,
        p.table,
        address,
        p.type,
        _raw_text(p.raw),
        _value_text(p.value, p.unit) if p.ok else "-",
        p.quality.value,
        _ms(p.latency),
        p.error or "",
    )


def _raw_text(raw: tuple[int, ...] | tuple[bool, ...] | None) -> str:
    if raw is None or not raw:
        return "-"
    if isinstance(raw[0], bool):
        return " ".join("1" if b else "0" for b in raw)
    words = [f"0x{w:04X}" for w in raw]
    if len(words) > RAW_WORDS_SHOWN:
        return " ".join(words[: RAW_WORDS_SHOWN - 1]) + f" ... ({len(words)} regs)"
    return " ".join(words)


def _value_text(value: Value, unit: str | None) -> str:
    if isinstance(value, str):
        text = repr(value)  # quotes show padding; control characters (GS in GS1) show up
    elif isinstance(value, float):
        text = f"{value:.10g}"
    else:
        text = str(value)
    return f"{text} {unit}" if unit else text


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def to_json(probes: Sequence[DeviceProbe]) -> list[dict[str, Any]]:
    """The probe as JSON-ready data (``--json``); NaN and infinities become strings."""
    return [
        {
            "device": d.name,
            "type": d.type,
            "host": d.host,
            "port": d.port,
            "unit_id": d.unit_id,
            "timeout": d.timeout,
            "state": d.state.value,
            "ok": d.ok,
            "connected": d.connected,
            "connect_latency_ms": _json_ms(d.connect_latency),
            "requests": d.requests,
            "error": d.error,
            "notes": list(d.notes),
            "points": [
                {
                    "name": p.name,
                    "table": p.table,
                    "address": p.address,
                    "protocol_address": p.protocol_address,
                    "type": p.type,
                    "raw": None if p.raw is None else list(p.raw),
                    "value": _json_value(p.value),
                    "unit": p.unit,
                    "quality": p.quality.value,
                    "latency_ms": _json_ms(p.latency),
                    "request": p.request,
                    "error": p.error,
                }
                for p in d.points
            ],
        }
        for d in probes
    ]


def _json_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _json_value(value: Value) -> Value:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
