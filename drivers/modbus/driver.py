"""The Modbus polled driver, over any link: planned requests in, observations out.

The runner (``drivers.runners.run_polled``) owns the schedule, the backoff and the DOWN
state; this module only translates, and its subclasses own the link: ``drivers.modbus.tcp``
(a connection of its own) and ``drivers.modbus_rtu`` (a turn on a shared RS-485 bus).
A Modbus exception response is data about some points (BAD observations, device
DEGRADED); silence or a lost connection is about the whole device and is raised as
ConnectError/ReadError so the runner reconnects.

Besides the poll loop, other tasks read snapshots (``read_points``) and write handshake bits
(``write``) over the same connection; the commissioning probe (``edge_agent.probe``) sends
single requests through ``probe_request`` on a connection of its own. Every request takes
its turn on the link for that one request only, so a handshake write waits for at most the
request on the wire (and those already queued), never for a whole poll group;
``request_delay`` is kept between any two requests, whoever sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.base import PolledDriver
from drivers.modbus.codec import (
    CodecError,
    decode_bits,
    response_bytes,
    same_value,
    write_value,
)
from drivers.modbus.config import BIT_TABLES, ModbusDevice, ModbusPoint, Report, Table
from drivers.modbus.plan import (
    PlannedPoint,
    PollGroup,
    Request,
    plan_device,
    protocol_address,
    request_count,
    snapshot_requests,
)
from kernel.errors import ConnectError, ReadError, WriteError
from kernel.model import DeviceState, Observation, Quality, Value

log = logging.getLogger(__name__)

# pymodbus logs every frame at DEBUG and every retry at WARNING; the runners log the device
# transitions that matter, once. Set here, where pymodbus is first imported for a device.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

# A gateway answering these says the PLC behind it is unreachable: that is the device being
# down, not some of its points being bad, so it goes to the runner's backoff.
_GATEWAY_CODES = frozenset({10, 11})


def describe_exception(code: int) -> str:
    return f"modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"


@dataclass(frozen=True, slots=True)
class _Reply:
    """What one request brought back: words or bits, or the exception code."""

    ts: float
    words: list[int] | None = None
    bits: list[bool] | None = None
    error: str | None = None
    code: int | None = None  # the Modbus exception code, when the device answered with one
    latency: float = 0.0  # seconds from sending the request to its answer


class RequestFailed(ReadError):
    """A read brought no usable answer (silence, a garbled reply) while the connection is up."""

    def __init__(self, device: str, message: str, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(device, message)
        self.reason = reason  # the message without the device and the request
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class ProbeReply:
    """What one request of a commissioning probe brought back (``probe_request``).

    ``words`` (register tables) or ``bits`` (coil tables, exactly ``request.count`` of them)
    when the device answered with data, which may be fewer words than asked; otherwise
    ``error`` says why not: a Modbus exception (``exception_code``, gateway codes included),
    silence (``timed_out``) or a reply pymodbus could not use. ``latency`` is the time from
    sending to the answer, None when none came. ``observations`` holds every point of the
    request decoded exactly as a poll decodes it.
    """

    request: Request
    latency: float | None
    words: tuple[int, ...] | None = None
    bits: tuple[bool, ...] | None = None
    exception_code: int | None = None
    error: str | None = None
    timed_out: bool = False
    observations: tuple[Observation, ...] = ()


class ModbusDriver(PolledDriver):
    """One Modbus device (a PLC, or one unit behind a gateway or on an RS-485 bus): planned
    requests in, observations out. Subclasses own the connection: how it is opened and
    closed, and whose turn it is to send (``_turn``)."""

    def __init__(self, device: ModbusDevice) -> None:
        super().__init__(device.name, device.backoff_initial, device.backoff_max)
        self.device = device
        # Planned at construction so a point no request can hold fails at start-up.
        try:
            self.plan: list[PollGroup] = plan_device(device)
        except ValueError as exc:
            raise ValueError(f"configuration invalid for device {device.name!r}: {exc}") from exc
        self._points: dict[str, ModbusPoint] = {p.name: p for p in device.points}
        self._last: dict[str, tuple[Value, Quality]] = {}
        self._unclean: dict[int, str] = {}  # group -> why its last read was not clean
        log.debug(
            "device %s: %d point(s) in %d group(s), %d request(s) per full poll",
            device.name,
            len(device.points),
            len(self.plan),
            request_count(self.plan),
            extra={"device": device.name},
        )

    # -- PolledDriver -----------------------------------------------------------------------

    def groups(self) -> Sequence[tuple[float, Hashable]]:
        return [(g.interval, i) for i, g in enumerate(self.plan)]

    def point_names(self) -> Sequence[str]:
        return [p.name for p in self.device.points]

    async def read(self, group: Hashable) -> list[Observation]:
        if not isinstance(group, int) or not 0 <= group < len(self.plan):
            raise KeyError(f"device {self.name!r} has no poll group {group!r}")
        out: list[Observation] = []
        problems: list[str] = []
        for req in self.plan[group].requests:
            reply = await self._perform(req)
            if reply.error is not None:
                problems.append(f"{_describe_request(req)}: {reply.error}")
            observed, bad = self._observations(req, reply)
            problems.extend(bad)
            out.extend(self._changed(observed))
        self._update_state(group, problems)
        return out

    async def read_points(self, names: Sequence[str]) -> list[Observation]:
        """The named points in as few requests as the device allows (points of one table
        within max_registers share one request), whatever their poll interval or report
        mode; observations of one request share its ts; on_change points are never
        filtered. The config checks make a part snapshot one request."""
        # Deliberately leaves _last and _unclean alone: a snapshot is a side read and must not
        # hide the next on_change report nor flip the device between UP and DEGRADED.
        out: list[Observation] = []
        for req in snapshot_requests(self.device, names):
            observed, _bad = self._observations(req, await self._perform(req))
            out.extend(observed)
        return out

    async def write(self, point: str, value: Value) -> None:
        p = self._points.get(point)
        if p is None:
            raise ValueError(f"device {self.name!r} has no point {point!r}")
        why = p.write_issue()
        if why is not None:
            raise WriteError(self.name, f"point {point!r} cannot be written: {why}")
        try:
            wire = write_value(p, value)
        except CodecError as exc:
            raise WriteError(self.name, f"point {point!r}: {exc}") from exc
        addr, unit = protocol_address(p, self.device.address_base), self.device.unit_id
        what = f"write {p.table.value} {addr}"
        async with self._turn() as client:
            try:
                rr: ModbusPDU
                if p.table is Table.COIL:
                    rr = await client.write_coil(addr, bool(wire), device_id=unit)
                else:
                    rr = await client.write_register(addr, int(wire), device_id=unit)
            except ModbusIOException as exc:
                raise self._io_failure(client, what, exc, WriteError) from exc
            except ConnectionException as exc:
                raise ConnectError(self.name, f"connection lost: {exc}") from exc
            except (ModbusException, OSError) as exc:
                raise WriteError(self.name, f"{what} failed: {exc}") from exc
        if isinstance(rr, ExceptionResponse):
            raise WriteError(
                self.name, f"{what} refused: {describe_exception(int(rr.exception_code))}"
            )
        if rr.isError():
            raise WriteError(self.name, f"{what} failed: {rr}")
        # FC5/FC6 acknowledge by echoing address and value; anything else is not our write.
        echo: object = rr.bits[0] if p.table is Table.COIL and rr.bits else None
        if p.table is not Table.COIL:
            echo = rr.registers[0] if rr.registers else None
        if rr.address != addr or echo != wire:
            raise WriteError(
                self.name,
                f"{what}: device acknowledged address {rr.address} value {echo!r}, "
                f"not {addr} {wire!r}",
            )

    async def probe_request(self, req: Request) -> ProbeReply:
        """Send one read for the commissioning probe and report whatever came back.

        Unlike polling, a Modbus exception (gateway codes 10 and 11 too), a timeout or an
        unusable reply are results here, not errors; only a connection that is gone (or was
        never opened) raises ConnectError. Leaves the poll state (on_change memory, device
        state) alone. ``req`` may be any request, also one the poll plan never makes.
        """
        try:
            reply = await self._exchange(req)
        except RequestFailed as exc:
            failed = _Reply(time.time(), error=exc.reason)
            observed, _ = self._observations(req, failed)
            return ProbeReply(
                req,
                None,
                error=exc.reason,
                timed_out=exc.timed_out,
                observations=tuple(observed),
            )
        observed, _ = self._observations(req, reply)
        return ProbeReply(
            req,
            reply.latency,
            words=None if reply.words is None else tuple(reply.words),
            bits=None if reply.bits is None else tuple(reply.bits),
            exception_code=reply.code,
            error=reply.error,
            observations=tuple(observed),
        )

    # -- the connection, the subclass's -------------------------------------------------------

    @abstractmethod
    def _turn(self) -> contextlib.AbstractAsyncContextManager[ModbusBaseClient]:
        """The connected client, for one request, once it is this device's turn to send.
        Raises ConnectError when there is no connection (a closed pymodbus client would
        silently reconnect if asked to send)."""

    def _connected(self) -> None:
        """A new connection starts from a blank slate: the runner has recorded an outage
        against every point, so on_change points must report their value again."""
        self._last.clear()
        self._unclean.clear()

    # -- internals --------------------------------------------------------------------------

    def _io_failure(
        self,
        client: ModbusBaseClient,
        what: str,
        exc: ModbusIOException,
        error: type[ReadError] | type[WriteError],
    ) -> ConnectError | ReadError | WriteError:
        """The error for a request pymodbus gave up on."""
        if not client.connected:
            # The socket closed while we waited (peer, network, or our own close from the
            # poll task): pymodbus leaves the request to time out and reports silence.
            return ConnectError(self.name, f"{what}: connection lost while awaiting the reply")
        # pymodbus raises this for silence and for mismatched replies alike; only the text
        # tells them apart, and its timeout text ("continue with next request") would mislead
        # an operator.
        timed_out = "no response" in str(exc).lower()
        text = f"no response within {self.device.timeout}s" if timed_out else str(exc)
        if error is ReadError:
            return RequestFailed(self.name, f"{what}: {text}", text, timed_out=timed_out)
        return error(self.name, f"{what}: {text}")

    async def _perform(self, req: Request) -> _Reply:
        """One poll or snapshot request; a gateway exception means the device is down."""
        reply = await self._exchange(req)
        if reply.code in _GATEWAY_CODES:
            raise ReadError(self.name, describe_exception(reply.code))
        return reply

    async def _exchange(self, req: Request) -> _Reply:
        """One request on the wire. Raises ConnectError when the connection is gone and
        RequestFailed when no usable answer came; an exception response is a reply."""
        addr, n, unit = req.address, req.count, self.device.unit_id
        async with self._turn() as client:
            loop = asyncio.get_running_loop()
            sent = loop.time()
            try:
                rr: ModbusPDU
                if req.table is Table.HOLDING:
                    rr = await client.read_holding_registers(addr, count=n, device_id=unit)
                elif req.table is Table.INPUT:
                    rr = await client.read_input_registers(addr, count=n, device_id=unit)
                elif req.table is Table.COIL:
                    rr = await client.read_coils(addr, count=n, device_id=unit)
                else:
                    rr = await client.read_discrete_inputs(addr, count=n, device_id=unit)
            except ModbusIOException as exc:
                raise self._io_failure(client, _describe_request(req), exc, ReadError) from exc
            except ConnectionException as exc:
                raise ConnectError(self.name, f"connection lost: {exc}") from exc
            except (ModbusException, OSError) as exc:
                what = _describe_request(req)
                raise RequestFailed(self.name, f"{what} failed: {exc}", f"failed: {exc}") from exc
            latency = loop.time() - sent
        ts = time.time()
        if isinstance(rr, ExceptionResponse):
            code = int(rr.exception_code)
            return _Reply(ts, error=describe_exception(code), code=code, latency=latency)
        if rr.isError():
            what = _describe_request(req)
            raise RequestFailed(self.name, f"{what} failed: {rr}", f"failed: {rr}")
        if req.table in BIT_TABLES:
            # Bits come back padded to whole bytes.
            return _Reply(ts, bits=list(rr.bits[: req.count]), latency=latency)
        return _Reply(ts, words=list(rr.registers), latency=latency)

    def _observations(self, req: Request, reply: _Reply) -> tuple[list[Observation], list[str]]:
        """Every point of the request, and the decode problems among them."""
        out: list[Observation] = []
        problems: list[str] = []
        data = response_bytes(reply.words) if reply.words is not None else b""
        for pp in req.points:
            p = pp.point
            value: Value = None
            error: str | None = reply.error  # an exception response spoils the whole request
            if error is None:
                value, error = _decode_point(req, pp, reply, data)
                if error is not None:
                    problems.append(f"{p.name}: {error}")
            quality = Quality.GOOD if error is None else Quality.BAD
            out.append(
                Observation(
                    self.name, p.name, value, quality, ts=reply.ts, unit=p.unit, error=error
                )
            )
        return out, problems

    def _changed(self, observations: list[Observation]) -> list[Observation]:
        """Drop on_change points whose value and quality are what the poll last reported."""
        out: list[Observation] = []
        for o in observations:
            if self._points[o.point].report is Report.ON_CHANGE:
                last = self._last.get(o.point)
                if last is not None and last[1] is o.quality and same_value(last[0], o.value):
                    continue
                self._last[o.point] = (o.value, o.quality)
            out.append(o)
        return out

    def _update_state(self, group: int, problems: list[str]) -> None:
        if problems:
            self._unclean[group] = "; ".join(problems)
        else:
            self._unclean.pop(group, None)
        status = self.status
        if self._unclean:
            status.set_state(DeviceState.DEGRADED, "; ".join(self._unclean.values()))
        elif status.state is DeviceState.DEGRADED:
            status.set_state(DeviceState.UP)



def _decode_point(
    req: Request, pp: PlannedPoint, reply: _Reply, data: bytes
) -> tuple[Value, str | None]:
    """The point's value, or why there is none. ``data``: the registers as bytes."""
    end = pp.offset + pp.length
    got = len(reply.bits if reply.bits is not None else reply.words or [])
    if got < end:
        return None, f"short response: {got} of {req.count} {_unit(req)}"
    try:
        if reply.bits is not None:
            return decode_bits(pp.point, reply.bits[pp.offset : end]), None
        return pp.decode(data), None
    except CodecError as exc:
        return None, f"cannot decode {pp.point.type.value}: {exc}"


def _unit(req: Request) -> str:
    return "bits" if req.table in BIT_TABLES else "registers"


def _describe_request(req: Request) -> str:
    return f"{req.table.value} {req.address}+{req.count}"
