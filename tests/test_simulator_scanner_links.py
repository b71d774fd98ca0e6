"""The scanner simulators' conversations: the triggered reader's protocol, the recording of
what the agent answers (feedback, host acknowledgement), and the links' behaviour when the
agent is not there (TCP server and client, an unplugged pty) -- over real ptys and TCP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from simulators.broker import free_port
from simulators.scanner import (
    CR,
    HONEYWELL_BAD,
    HONEYWELL_GOOD,
    Fault,
    HandheldScanner,
    HostAck,
    PtyTransport,
    ScannerConfig,
    TcpClientTransport,
    TcpServerTransport,
    Transport,
    TriggerConfig,
    TriggeredReader,
    part_code,
)
from simulators.station import StationModel
from tests.modbus_helpers import no_leaks, wait_until
from tests.scanner_sim_helpers import (
    CYCLE0,
    TcpAgent,
    on_demand,
    pty_agent,
    split_frames,
    tcp_agent,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
async def _no_leaks() -> AsyncIterator[None]:
    async with no_leaks():
        yield


# -- the triggered reader -------------------------------------------------------------------


@asynccontextmanager
async def reader(trigger: TriggerConfig) -> AsyncIterator[tuple[TriggeredReader, TcpAgent]]:
    transport = TcpServerTransport()
    model = StationModel(cycle_time=10.0)  # one part for the whole test
    async with (
        TriggeredReader(model, transport, trigger=trigger) as scanner,
        tcp_agent(transport.port) as agent,
    ):
        await transport.wait_connected()
        yield scanner, agent


async def test_a_trigger_is_answered_with_the_current_part_after_the_decode_time() -> None:
    async with reader(TriggerConfig(decode_time=0.05)) as (scanner, agent):
        agent.write(b"LON\r")
        await wait_until(lambda: len(agent.frames()) == 1, what="the answer")
        agent.write(b"LON\r")
        await wait_until(lambda: len(agent.frames()) == 2, what="the second answer")
    first, second = scanner.triggers
    answer = scanner.scans[0]
    assert agent.frames()[0] == answer.frame == CYCLE0
    assert first.command == "on"
    assert first.answer == 0
    assert second.answer == 1
    assert answer.cycle == scanner.model.cycle_at(first.at)[0] == 0
    assert answer.sent_at is not None
    assert answer.sent_at - first.at >= 0.05
    assert agent.arrival(0) - first.at >= 0.05


async def test_no_read_when_the_window_times_out() -> None:
    async with reader(TriggerConfig(decode_time=0.01, read_timeout=0.15)) as (scanner, agent):
        scanner.inject(Fault.NO_READ)
        agent.write(b"LON\r")
        await wait_until(lambda: len(agent.frames()) == 1, what="the no-read")
    (trig,) = scanner.triggers
    (scan,) = scanner.scans
    assert agent.frames() == [b"NOREAD\r"]
    assert scan.fault is Fault.NO_READ
    assert scan.detail == "timeout"
    assert not scan.valid
    assert scan.sent_at is not None
    assert scan.sent_at - trig.at >= 0.15


async def test_no_read_when_the_host_stops_the_read_and_stray_commands_are_ignored() -> None:
    async with reader(TriggerConfig(decode_time=2.0, read_timeout=3.0)) as (scanner, agent):
        agent.write(b"LOFF\r")  # no window open
        agent.write(b"LON\r")
        await wait_until(lambda: len(scanner.triggers) == 2, what="the trigger")
        agent.write(b"LON\r")  # while reading
        await wait_until(lambda: len(scanner.triggers) == 3, what="the second trigger")
        agent.write(b"LOFF\r")
        await wait_until(lambda: len(agent.frames()) == 1, what="the no-read")
    off, on, again, stop = scanner.triggers
    assert [t.command for t in scanner.triggers] == ["off", "on", "on", "off"]
    assert [t.ignored for t in scanner.triggers] == [True, False, True, False]
    assert agent.frames() == [b"NOREAD\r"]
    (scan,) = scanner.scans
    assert scan.detail == "off"
    assert on.answer == 0
    assert again.answer is None
    assert scan.sent_at is not None
    assert scan.sent_at - on.at < 1.0
    assert off.at <= on.at < stop.at <= scan.sent_at  # off and on may share a chunk


# -- feedback -------------------------------------------------------------------------------


async def test_feedback_is_recorded_with_the_scan_it_follows(tmp_path: Path) -> None:
    transport = PtyTransport(tmp_path)
    async with (
        HandheldScanner(StationModel(), transport, on_demand()) as scanner,
        pty_agent(transport.agent_path) as agent,
    ):
        agent.write(b"?")
        await wait_until(lambda: len(scanner.feedback) == 1, what="the stray byte")
        first = await scanner.scan_part(cycle=0)
        await wait_until(lambda: len(agent.frames()) == 1, what="scan 0")
        agent.write(HONEYWELL_GOOD)
        await wait_until(lambda: len(scanner.feedback) == 2, what="the good answer")
        second = await scanner.scan_part(cycle=1)
        await wait_until(lambda: len(agent.frames()) == 2, what="scan 1")
        agent.write(b"xy" + HONEYWELL_BAD + b"\x1b")  # ends with half an answer...
        await wait_until(lambda: len(scanner.feedback) == 4, what="junk and the bad answer")
        agent.write(b"7")  # ...and the rest of it
        await wait_until(lambda: len(scanner.feedback) == 5, what="the split good answer")
    stray, good, junk, bad, late = scanner.feedback
    assert (stray.data, stray.verdict, stray.after, stray.latency) == (b"?", "unknown", None, None)
    assert (good.data, good.verdict, good.after) == (HONEYWELL_GOOD, "good", 0)
    assert first.sent_at is not None
    assert good.at >= agent.arrival(0) >= first.sent_at
    assert good.latency == good.at - first.sent_at
    assert (junk.data, junk.verdict, junk.after) == (b"xy", "unknown", 1)
    assert (bad.data, bad.verdict, bad.after) == (HONEYWELL_BAD, "bad", 1)
    assert (late.data, late.verdict, late.after) == (HONEYWELL_GOOD, "good", 1)
    assert second.sent_at is not None
    assert bad.at >= second.sent_at
    assert scanner.feedback_after(0) == [good]
    assert scanner.feedback_after(1) == [junk, bad, late]


async def test_host_ack_mode_holds_the_next_scan_until_answered_or_timed_out(
    tmp_path: Path,
) -> None:
    config = ScannerConfig(max_scans=3, ack=HostAck(wait=True, timeout=0.2))
    transport = PtyTransport(tmp_path)
    async with (
        HandheldScanner(StationModel(cycle_time=0.05), transport, config) as scanner,
        pty_agent(transport.agent_path) as agent,
    ):
        model = scanner.model
        await wait_until(lambda: len(agent.frames()) == 1, what="scan 0")
        # Answer late, when part 2 is already at the station: scan 1 must not have gone out.
        await wait_until(lambda: model.cycle_at(time.monotonic())[0] >= 2, what="part 2")
        assert len(agent.frames()) == 1
        assert scanner.scans[1:] == []
        agent.write(HONEYWELL_GOOD)
        await wait_until(lambda: len(agent.frames()) == 3, within=2.0, what="scans 1 and 2")
    s0, s1, s2 = scanner.scans
    (answer,) = scanner.feedback
    assert answer.after == 0
    assert not s0.ack_timeout
    assert s1.cycle == 1
    assert s1.started_at is not None
    assert s1.started_at >= answer.at
    assert s1.ack_timeout
    assert s1.sent_at is not None
    assert s2.cycle == 2
    assert s2.started_at is not None
    assert s2.started_at - s1.sent_at >= 0.2
    assert agent.frames() == [s.frame for s in scanner.scans]


# -- transports -----------------------------------------------------------------------------


async def test_tcp_server_loses_scans_until_an_agent_connects_and_the_newest_wins() -> None:
    transport = TcpServerTransport()
    # 40 scans over 2 s: the second agent connects while scans are still to come, however
    # slowly the first one got its scan (with 6 over 0.3 s, a loaded machine sometimes had
    # sent them all before the second agent was there).
    config = ScannerConfig(max_scans=40)
    async with HandheldScanner(StationModel(cycle_time=0.05), transport, config) as scanner:
        await wait_until(lambda: len(scanner.sent) >= 1, what="scan 0")
        async with tcp_agent(transport.port) as first:
            await transport.wait_connected()
            await wait_until(lambda: len(first.frames()) >= 1, what="a scan to the first agent")
            async with tcp_agent(transport.port) as second:
                await asyncio.wait_for(first.closed.wait(), 2.0)  # replaced
                await wait_until(lambda: len(scanner.sent) == 40, within=20, what="40 scans")
                await wait_until(
                    lambda: (
                        first.data + second.data
                        == b"".join(s.frame for s in scanner.sent if s.delivered)
                    ),
                    what="every delivered scan received by one of them",
                )
    assert scanner.scans[0].delivered is False
    assert transport.connections == 2
    lost = [s for s in scanner.scans if not s.delivered]
    assert lost
    assert all(s.cycle < scanner.scans[-1].cycle for s in lost)
    assert (
        split_frames(first.data, CR)
        == [s.frame for s in scanner.scans if s.delivered][: len(first.frames())]
    )
    assert second.frames()  # the newest connection got the rest


async def test_tcp_client_retries_until_the_agent_listens_and_after_it_hangs_up() -> None:
    port = free_port()
    transport = TcpClientTransport("127.0.0.1", port, retry_interval=0.02)
    agents: list[TcpAgent] = []

    def accept() -> TcpAgent:
        agents.append(TcpAgent())
        return agents[-1]

    loop = asyncio.get_running_loop()
    async with HandheldScanner(StationModel(), transport, on_demand()) as scanner:
        await wait_until(lambda: transport.failed_attempts >= 2, what="refused attempts")
        lost = await scanner.scan_part(cycle=0)
        server = await loop.create_server(accept, "127.0.0.1", port)
        try:
            await transport.wait_connected()
            scan = await scanner.scan_part(cycle=1)
            await wait_until(lambda: len(agents[0].frames()) == 1, what="the scan")
            agents[0].write(HONEYWELL_GOOD)
            await wait_until(lambda: len(scanner.feedback) == 1, what="the answer")
            assert agents[0].transport is not None
            agents[0].transport.close()  # the agent restarts
            await wait_until(lambda: transport.connections == 2, what="a reconnect")
            again = await scanner.scan_part(cycle=2)
            await wait_until(lambda: len(agents[1].frames()) == 1, what="the scan after it")
        finally:
            for agent in agents:
                assert agent.transport is not None
                agent.transport.close()
            server.close()
            await server.wait_closed()
    assert lost.delivered is False
    assert scan.delivered
    assert again.delivered
    assert agents[0].frames() == [scan.frame]
    assert agents[1].frames() == [again.frame]
    assert scanner.feedback[0].after == scan.seq
    assert scanner.feedback[0].verdict == "good"


async def test_an_unplugged_pty_loses_scans(tmp_path: Path) -> None:
    transport = PtyTransport(tmp_path)
    async with HandheldScanner(StationModel(), transport, on_demand()) as scanner:
        assert transport.connected
        transport.link.unplug()
        scan = await scanner.scan_part(cycle=0)
        assert not transport.connected
    assert scan.delivered is False
    assert scan.sent_at is not None


class BrokenTransport(Transport):
    async def open(self, on_data: object) -> None:
        self._connected.set()

    def send(self, data: bytes) -> bool:
        raise RuntimeError("wire on fire")

    async def drain(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_close_raises_what_a_scanner_task_died_of() -> None:
    scanner = HandheldScanner(StationModel(), BrokenTransport())
    await scanner.start()
    await wait_until(lambda: bool(scanner.scans), what="the first scan attempt")
    with pytest.raises(RuntimeError, match="wire on fire"):
        await scanner.close()


async def test_scan_records_hold_the_ground_truth_of_each_scan() -> None:
    """The record's text and frame agree, and held scans are never in ``sent``."""
    async with HandheldScanner(StationModel(), TcpServerTransport(), on_demand()) as scanner:
        held = await scanner.scan_part(cycle=0, fault=Fault.MERGED)
        assert scanner.sent == []
        await scanner.scan_part(cycle=1)
    assert held.text == part_code(scanner.model, 0)
    assert [s.seq for s in scanner.sent] == [0, 1]
