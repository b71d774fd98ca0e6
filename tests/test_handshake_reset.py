"""The PLC handshake's reset of "data taken" when the write fails: the PLC waits for data
taken to fall before its next part and data ready stays low meanwhile, so nothing would
bring the reset again; the agent writes it again until it gets through."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from pymodbus.constants import ExcCodes

from drivers.modbus.config import Report
from drivers.modbus.tcp import ModbusTcpDriver
from edge_agent.daemon import Agent
from kernel.model import DeviceState
from tests.modbus_driver_helpers import FAST, C, H, device, pt
from tests.modbus_helpers import memory_for, sim_server
from tests.simulate_helpers import config
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

COUNT = pt("count", 0, "uint16", H)
READY = pt("ready", 2, "bool", C)
TAKEN = pt("taken", 3, "bool", C, report=Report.SNAPSHOT)


def plc(port: int) -> dict[str, Any]:
    return {
        "name": "press", "type": "modbus_tcp", "host": "127.0.0.1", "port": port,
        "station": "ST10", "poll_interval": 0.05, "timeout": 0.05,
        "backoff_initial": 0.05, "backoff_max": 0.2,
        "points": [
            {"name": "count", "address": 0, "type": "uint16"},
            {"name": "ready", "table": "coil", "address": 2, "type": "bool",
             "report": "on_change"},
            {"name": "taken", "table": "coil", "address": 3, "type": "bool",
             "report": "snapshot"},
        ],
    }  # fmt: skip


async def test_a_failed_reset_of_data_taken_is_written_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.daemon")
    memory = memory_for({COUNT: 0, READY: False, TAKEN: False})
    async with sim_server(memory) as sim:
        cfg = config(
            tmp_path,
            [plc(sim.port)],
            device="press",
            part={
                "trigger": {"point": "ready"},
                "snapshot": {"points": ["count"]},
                "counter": "count",
                "handshake": {"taken": "taken"},
            },
        )
        agent = Agent(cfg)
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        probe = ModbusTcpDriver(device(sim.port, [TAKEN], **FAST))
        await probe.open()

        async def taken() -> object:
            (o,) = await probe.read_points(["taken"])
            return o.value

        try:
            await wait_until(
                lambda: agent.drivers[0].status.state is DeviceState.UP, 20, "the PLC up"
            )
            sim.set_value(COUNT, 1)
            sim.set_value(READY, True)
            await wait_until(taken, 20, "data taken for part 1")

            # The PLC refuses writes of data taken just as it drops data ready.
            sim.fail[(C, 3)] = ExcCodes.DEVICE_FAILURE
            sim.set_value(READY, False)
            await wait_until(
                lambda: "handshake write taken=False failed" in caplog.text,
                20,
                "the reset's write to fail",
            )
            del sim.fail[(C, 3)]

            async def reset() -> bool:
                return await taken() is False

            await wait_until(reset, 20, "data taken reset once the PLC takes writes again")
            assert "handshake taken=False written after" in caplog.text

            # The PLC goes on with its next part.
            sim.set_value(COUNT, 2)
            sim.set_value(READY, True)
            await wait_until(taken, 20, "data taken for part 2")
        finally:
            await probe.close()
            stop.set()
            await runner
