"""Reusable Modbus test fixtures: an in-process pymodbus SimDevice server and small waiters.

The server is a real pymodbus TCP server on 127.0.0.1 (port 0 unless a test needs a fixed
one), so tests exercise the wire. Register contents are produced with ``drivers.modbus.codec``
so a test states values, not hand-encoded words. The server can be told to fail requests with
an exception code, to stop answering (requests hang until resumed), and it counts requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from drivers.base import Driver
from drivers.modbus.codec import Raw, encode
from drivers.modbus.config import BIT_TABLES, DataType, ModbusPoint, Table
from kernel.model import Observation
from simulators.broker import free_port  # noqa: F401  (re-exported for the tests)

# Re-exported: some thirty modules import it from here; new code imports tests.waiting.
from tests.waiting import wait_until as wait_until

# Function codes by table, for reads.
READ_FC: dict[Table, int] = {
    Table.COIL: 1,
    Table.DISCRETE_INPUT: 2,
    Table.HOLDING: 3,
    Table.INPUT: 4,
}
_FC_TABLE = {fc: t for t, fc in READ_FC.items()} | {5: Table.COIL, 15: Table.COIL}
for _fc in (6, 16, 22, 23):
    _FC_TABLE[_fc] = Table.HOLDING

# Far from anything a test uses: pymodbus wants every table to hold at least one entry.
_FILLER_ADDRESS = 60000

Memory = dict[Table, dict[int, int]]
"""Protocol address -> register word (or 0/1 for bit tables), per table."""


def memory_for(values: Mapping[ModbusPoint, Raw], address_base: int = 0) -> Memory:
    """Encode raw point values into table memory, as the PLC would hold them."""
    mem: Memory = {t: {} for t in Table}
    for p, value in values.items():
        words = encode(p.type, value, p.word_order, p.count, bit=p.bit)
        cells = mem[p.table]
        for i, w in enumerate(words):
            addr = p.address - address_base + i
            # Several bit points may share one word: merge rather than overwrite.
            cells[addr] = (cells.get(addr, 0) | w) if p.type is DataType.BIT else w
    return mem


def _runs(cells: Mapping[int, int]) -> list[tuple[int, list[int]]]:
    """Contiguous address runs; addresses between runs stay unmapped (illegal address)."""
    out: list[tuple[int, list[int]]] = []
    for addr in sorted(cells):
        if out and out[-1][0] + len(out[-1][1]) == addr:
            out[-1][1].append(cells[addr])
        else:
            out.append((addr, [cells[addr]]))
    return out


def _sim_block(table: Table, cells: Mapping[int, int]) -> list[SimData]:
    runs = _runs(cells) or [(_FILLER_ADDRESS, [0])]
    if table in BIT_TABLES:
        return [SimData(a, values=[bool(v) for v in vs], datatype=SimType.BITS) for a, vs in runs]
    return [SimData(a, values=vs, datatype=SimType.REGISTERS) for a, vs in runs]


@dataclass
class SimServer:
    """A running pymodbus TCP server with knobs for failure injection."""

    memory: Memory
    unit_id: int = 1
    port: int = 0
    requests: list[tuple[Table, int, int]] = field(default_factory=list)
    """(table, address, count) of every read that reached the data; for bit tables the count
    is in 16-bit words, as pymodbus' simulator reports it."""
    fail: dict[tuple[Table, int], ExcCodes] = field(default_factory=dict)
    """Requests starting at (table, address) answer with this exception code."""
    short_by: int = 0
    """Register responses leave out this many trailing registers (a buggy gateway)."""
    _pending: list[tuple[Table, int, int]] = field(default_factory=list)
    _server: ModbusTcpServer | None = None
    _gate: asyncio.Event = field(default_factory=asyncio.Event)
    _in_flight: int = 0

    def __post_init__(self) -> None:
        self._gate.set()

    async def start(self) -> None:
        coils, discrete, holding, inputs = (
            _sim_block(t, self.memory.get(t, {}))
            for t in (Table.COIL, Table.DISCRETE_INPUT, Table.HOLDING, Table.INPUT)
        )
        # Four separate tables, as real PLCs have them (pymodbus can also share one block).
        device = SimDevice(
            id=self.unit_id, simdata=(coils, discrete, holding, inputs), action=self._action
        )
        server = ModbusTcpServer(
            device, address=("127.0.0.1", self.port), trace_pdu=self._trace_pdu
        )
        await server.serve_forever(background=True)
        self._server = server
        self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Shut down, first letting any request held by :meth:`go_silent` finish."""
        await self.resume()
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()  # type: ignore[no-untyped-call]

    def set_value(self, point: ModbusPoint, value: Raw, address_base: int = 0) -> None:
        """Change a point's registers; applied on the next request that touches its table.

        For type bit the whole word is written, so other bits of that word are cleared."""
        words = encode(point.type, value, point.word_order, point.count, bit=point.bit)
        start = point.address - address_base
        self._pending.extend((point.table, start + i, w) for i, w in enumerate(words))

    def go_silent(self) -> None:
        """From now on requests get no answer (the PLC hangs) until :meth:`resume`."""
        self._gate.clear()

    async def resume(self) -> None:
        """Answer again, and wait until every held request has been let through."""
        self._gate.set()
        await wait_until(lambda: self._in_flight == 0, what="held requests to finish")

    def count(self, table: Table | None = None) -> int:
        return sum(1 for t, _, _ in self.requests if table is None or t is table)

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending and self.short_by and pdu.registers:
            pdu.registers = pdu.registers[: -self.short_by]
        return pdu

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        table = _FC_TABLE[function_code]
        if not self._gate.is_set():
            self._in_flight += 1
            try:
                await self._gate.wait()
            finally:
                self._in_flight -= 1
            return None
        self._apply_pending(table, start_address, registers)
        if set_values is None:
            self.requests.append((table, address, count))
        return self.fail.get((table, address))

    def _apply_pending(self, table: Table, start: int, registers: list[int]) -> None:
        keep: list[tuple[Table, int, int]] = []
        for t, addr, w in self._pending:
            if t is not table:
                keep.append((t, addr, w))
            elif table in BIT_TABLES:
                # Bit blocks are packed 16 per register, first bit in the low-order position.
                reg, bit = divmod(addr, 16)
                i = reg - start
                registers[i] = (registers[i] | (1 << bit)) if w else (registers[i] & ~(1 << bit))
            else:
                registers[addr - start] = w
        self._pending = keep


@asynccontextmanager
async def sim_server(
    memory: Memory, *, unit_id: int = 1, port: int = 0
) -> AsyncIterator[SimServer]:
    """Run a :class:`SimServer` for the duration of the block; always shut it down."""
    srv = SimServer(memory, unit_id=unit_id, port=port)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


class Collector:
    """A sink that keeps every batch, for assertions."""

    def __init__(self) -> None:
        self.batches: list[list[Observation]] = []

    def __call__(self, observations: Sequence[Observation]) -> None:
        self.batches.append(list(observations))

    @property
    def all(self) -> list[Observation]:
        return [o for b in self.batches for o in b]

    def of(self, point: str) -> list[Observation]:
        return [o for o in self.all if o.point == point]


async def start_device(driver: Driver, sink: Collector) -> asyncio.Task[None]:
    """Run ``driver`` as the daemon does: one task, named after the device."""
    return asyncio.create_task(driver.run(sink), name=f"device:{driver.name}")


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end, whatever it ended with."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def running(tasks: Iterable[asyncio.Task[None]]) -> AsyncIterator[None]:
    """Cancel and await ``tasks`` on exit, so none outlives the test."""
    started = list(tasks)
    try:
        yield
    finally:
        for t in started:
            t.cancel()
        for t in started:
            with suppress(asyncio.CancelledError):
                await t


@asynccontextmanager
async def no_leaks(settle: float = 2.0) -> AsyncIterator[None]:
    """Fail if a task or thread started inside the block is still alive after it."""
    tasks_before = asyncio.all_tasks()
    threads_before = set(threading.enumerate())
    yield
    me = asyncio.current_task()

    def leaked_tasks() -> set[asyncio.Task[object]]:
        return {t for t in asyncio.all_tasks() - tasks_before if t is not me and not t.done()}

    def leaked_threads() -> set[threading.Thread]:
        return {t for t in set(threading.enumerate()) - threads_before if t.is_alive()}

    # Closed transports finish on the next loop turns; give them that, not a fixed sleep.
    try:
        await wait_until(lambda: not leaked_tasks() and not leaked_threads(), settle, "cleanup")
    except AssertionError:
        raise AssertionError(
            f"leaked tasks: {leaked_tasks()!r}; leaked threads: {leaked_threads()!r}"
        ) from None
