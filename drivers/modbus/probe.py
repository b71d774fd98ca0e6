"""The commissioning probe of Modbus devices (TCP and RTU), run by ``edge-agent config probe``.

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
import logging
from collections.abc import Sequence

from drivers.modbus.config import BIT_TABLES, ModbusDevice, ModbusPoint, Table
from drivers.modbus.driver import ModbusDriver, ProbeReply, describe_exception
from drivers.modbus.plan import PlannedPoint, Request, plan_requests
from drivers.probing import DeviceProbe, PointProbe
from drivers.registry import DriverContext, create_driver
from kernel.errors import ConnectError, DeviceError
from kernel.model import Quality, Value

log = logging.getLogger("edge_agent.probe")

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


async def probe_device(
    dev: ModbusDevice, attempt_timeout: float | None, context: DriverContext
) -> DeviceProbe:
    """Probe one Modbus device (TCP or RTU) on a connection of its own."""
    if attempt_timeout is not None:
        dev = dev.model_copy(update={"timeout": attempt_timeout})
    result = DeviceProbe(dev.name, dev.type, dev.describe(), dev.timeout, dev.probe_details())
    try:
        driver = create_driver(dev, context)
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
        result.connect_latency = max(0.0, loop.time() - started - dev.settle_time())
        assert isinstance(driver, ModbusDriver)
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

    def __init__(self, dev: ModbusDevice, driver: ModbusDriver, result: DeviceProbe):
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
                f"{describe_exception(code)}: the gateway at {d.link()} has no path to "
                f"unit {d.unit_id}; check unit_id and the gateway's routing"
            )
        return (
            f"{describe_exception(code)}: {d.link()} answers, but no device behind it "
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


