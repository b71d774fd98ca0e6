"""Modbus TCP polled driver: planned requests in, observations out.

The runner (``drivers.base.run_polled``) owns the schedule, the backoff and the DOWN state;
this module only translates. A Modbus exception response is data about some points (BAD
observations, device DEGRADED); silence or a lost connection is about the whole device and is
raised as ConnectError/ReadError so the runner reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.base import PolledDriver
from drivers.modbus.codec import CodecError, decode, decode_bits, same_value
from drivers.modbus.config import BIT_TABLES, ModbusTcpDevice, Report, Table
from drivers.modbus.plan import PlannedPoint, PollGroup, Request, plan_device, request_count
from edge_agent.errors import ConnectError, ReadError
from edge_agent.model import DeviceState, Observation, Quality, Value

log = logging.getLogger(__name__)

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


class ModbusTcpDriver(PolledDriver):
    """One Modbus TCP device (or one unit id behind a gateway) with its own client."""

    def __init__(self, device: ModbusTcpDevice) -> None:
        super().__init__(device.name, device.backoff_initial, device.backoff_max)
        self.device = device
        # Planned at construction so a point no request can hold fails at start-up.
        try:
            self.plan: list[PollGroup] = plan_device(device)
        except ValueError as exc:
            raise ValueError(f"configuration invalid for device {device.name!r}: {exc}") from exc
        self._client: AsyncModbusTcpClient | None = None
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

    async def open(self) -> None:
        await self.close()
        d = self.device
        client = AsyncModbusTcpClient(
            d.host,
            port=d.port,
            name=f"modbus:{d.name}",
            timeout=d.timeout,
            retries=0,
            # 0 turns off pymodbus' own reconnect task: run_polled owns the backoff, and a
            # second reconnect loop would race it and outlive close().
            reconnect_delay=0,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if not await client.connect():
                elapsed = loop.time() - started
                raise ConnectError(d.name, await self._connect_failure_reason(elapsed))
            self._client = client
            # A new connection starts from a blank slate: the runner has recorded an outage
            # against every point, so on_change points must report their value again.
            self._last.clear()
            self._unclean.clear()
            if d.connect_delay:
                await asyncio.sleep(d.connect_delay)
        except BaseException:
            self._client = None
            client.close()
            raise

    async def read(self, group: Hashable) -> list[Observation]:
        if not isinstance(group, int) or not 0 <= group < len(self.plan):
            raise KeyError(f"device {self.name!r} has no poll group {group!r}")
        out: list[Observation] = []
        problems: list[str] = []
        for i, req in enumerate(self.plan[group].requests):
            if i and self.device.request_delay:
                await asyncio.sleep(self.device.request_delay)
            reply = await self._perform(req)
            if reply.error is not None:
                problems.append(f"{_describe_request(req)}: {reply.error}")
            out.extend(self._observe(req, reply, problems))
        self._update_state(group, problems)
        return out

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.close()
        except Exception:  # close() must never raise; a half-dead socket is still released
            log.debug("device %s: error while closing", self.name, exc_info=True)

    # -- internals --------------------------------------------------------------------------

    async def _perform(self, req: Request) -> _Reply:
        client = self._client
        if client is None or not client.connected:
            raise ConnectError(self.name, "not connected (connection lost)")
        addr, n, unit = req.address, req.count, self.device.unit_id
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
            # pymodbus raises this for silence and for mismatched replies alike; only the
            # text tells them apart, and its timeout text ("continue with next request") would
            # mislead an operator.
            what = (
                f"no response within {self.device.timeout}s"
                if "no response" in str(exc).lower()
                else str(exc)
            )
            raise ReadError(self.name, f"{_describe_request(req)}: {what}") from exc
        except ConnectionException as exc:
            raise ConnectError(self.name, f"connection lost: {exc}") from exc
        except (ModbusException, OSError) as exc:
            raise ReadError(self.name, f"{_describe_request(req)} failed: {exc}") from exc
        ts = time.time()
        if isinstance(rr, ExceptionResponse):
            code = int(rr.exception_code)
            if code in _GATEWAY_CODES:
                raise ReadError(self.name, describe_exception(code))
            return _Reply(ts, error=describe_exception(code))
        if rr.isError():
            raise ReadError(self.name, f"{_describe_request(req)} failed: {rr}")
        if req.table in BIT_TABLES:
            # Bits come back padded to whole bytes.
            return _Reply(ts, bits=list(rr.bits[: req.count]))
        return _Reply(ts, words=list(rr.registers))

    def _observe(self, req: Request, reply: _Reply, problems: list[str]) -> list[Observation]:
        out: list[Observation] = []
        for pp in req.points:
            p = pp.point
            value: Value = None
            error: str | None = reply.error  # an exception response spoils the whole request
            if error is None:
                value, error = _decode_point(req, pp, reply)
                if error is not None:
                    problems.append(f"{p.name}: {error}")
            quality = Quality.GOOD if error is None else Quality.BAD
            if p.report is Report.ON_CHANGE:
                last = self._last.get(p.name)
                if last is not None and last[1] is quality and same_value(last[0], value):
                    continue
                self._last[p.name] = (value, quality)
            out.append(
                Observation(
                    self.name, p.name, value, quality, ts=reply.ts, unit=p.unit, error=error
                )
            )
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

    async def _connect_failure_reason(self, elapsed: float) -> str:
        """Why connecting failed. pymodbus only says False, so a fast failure is probed once
        more with a bare socket to tell "refused" from "no route" or "unknown host"."""
        d = self.device
        where = f"{d.host}:{d.port}"
        if elapsed >= 0.9 * d.timeout:
            return f"connect to {where} timed out after {d.timeout}s"
        try:
            async with asyncio.timeout(d.timeout):
                _, writer = await asyncio.open_connection(d.host, d.port)
        except TimeoutError:
            return f"connect to {where} timed out after {d.timeout}s"
        except ConnectionRefusedError:
            return f"connection to {where} refused"
        except socket.gaierror as exc:
            return f"cannot resolve host {d.host!r}: {exc.strerror}"
        except OSError as exc:
            return f"cannot connect to {where}: {exc.strerror or exc}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return f"connect to {where} failed (transient)"


def _decode_point(req: Request, pp: PlannedPoint, reply: _Reply) -> tuple[Value, str | None]:
    """The point's value, or why there is none."""
    end = pp.offset + pp.length
    got = len(reply.bits if reply.bits is not None else reply.words or [])
    if got < end:
        return None, f"short response: {got} of {req.count} {_unit(req)}"
    try:
        if reply.bits is not None:
            return decode_bits(pp.point, reply.bits[pp.offset : end]), None
        return decode(pp.point, (reply.words or [])[pp.offset : end]), None
    except CodecError as exc:
        return None, f"cannot decode {pp.point.type.value}: {exc}"


def _unit(req: Request) -> str:
    return "bits" if req.table in BIT_TABLES else "registers"


def _describe_request(req: Request) -> str:
    return f"{req.table.value} {req.address}+{req.count}"
