"""``edge-agent tail``: a real agent reading the station simulator over Modbus TCP, followed
through its control socket. What a follower sees is committed, in seq order, filtered in the
agent, with values as precise as their source; a follower that never reads costs the agent a
bounded queue and nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import re
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import agent_model
from edge_agent.control import request
from edge_agent.daemon import Agent
from edge_agent.tail import Subscription, shown
from edge_agent.tail_cli import follow, text_line
from simulators.broker import free_port
from simulators.modbus_server import ModbusStationServer
from simulators.scenario import demo_config
from simulators.station import StationModel
from tests.waiting import deadline, wait_until

FLOAT32_POINTS = ("temperature", "force", "final_force", "final_depth")


@contextlib.asynccontextmanager
async def running_agent(
    tmp_path: Path, stations: int = 2, poll: float = 0.02, cycle: float = 0.4
) -> AsyncIterator[tuple[Agent, list[StationModel]]]:
    """An agent on the simulator (no broker: records stay in the journal, which is all a
    follower on the PC needs)."""
    models = [
        StationModel(unit_id=i + 1, serial_prefix=f"S{i + 1}-", cycle_time=cycle)
        for i in range(stations)
    ]
    async with ModbusStationServer(models) as plc:
        raw = demo_config(
            modbus_port=plc.port,
            mqtt_port=free_port(),
            buffer_path=str(tmp_path / "buffer.db"),
            stations=stations,
            poll_interval=poll,
        )
        agent = Agent(agent_model().model_validate(raw))
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop), name="agent")
        try:
            await asyncio.wait_for(agent.started.wait(), 20)
            yield agent, models
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


async def open_tail(
    agent: Agent, stations: list[str] | None = None, kinds: list[str] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(agent.cfg.control.socket, limit=1 << 24)
    writer.write(json.dumps({"op": "tail", "stations": stations, "kinds": kinds}).encode() + b"\n")
    await writer.drain()
    head = json.loads(await asyncio.wait_for(reader.readline(), 10))
    return reader, writer, head


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def test_a_follower_sees_only_committed_matching_records_in_seq_order(
    tmp_path: Path,
) -> None:
    async with running_agent(tmp_path) as (agent, models):
        reader, writer, head = await open_tail(agent, ["ST20"], ["part", "context"])
        assert head["ok"]
        assert head["stream"] == "tail"
        seen: list[dict[str, Any]] = []
        try:
            async with deadline(60, "four part records on the tail"):
                while sum(r["kind"] == "part" for r in seen) < 4:
                    line = await asyncio.wait_for(reader.readline(), 20)
                    assert line, "the stream ended"
                    record = json.loads(line)
                    # Shown only once committed: the journal is at least there when it arrives.
                    assert record["seq"] <= agent.buffer.committed_seq, record
                    seen.append(record)
        finally:
            await close(writer)
        await wait_until(lambda: not agent.tail.subscribers, what="the follower to be dropped")
    assert {r["station"] for r in seen} == {"ST20"}
    assert {r["kind"] for r in seen} == {"part", "context"}
    seqs = [r["seq"] for r in seen]
    assert seqs == sorted(set(seqs)), "strictly increasing"
    for part in (r for r in seen if r["kind"] == "part"):
        k = part["counter"] - 1
        assert part["serial"] == models[1].serial(k)
        assert part["result"] == ("ok" if models[1].ok(k) else "nok")
        # The simulator's final values are exact float32 values: they come through as such.
        assert part["values"]["final_force"]["value"] == models[1].final_values(k)["final_force"]


async def test_values_are_rounded_to_the_precision_of_their_source(tmp_path: Path) -> None:
    async with running_agent(tmp_path, stations=1) as (agent, _):
        reader, writer, _head = await open_tail(agent, kinds=["readings"])
        try:
            records = [json.loads(await asyncio.wait_for(reader.readline(), 20)) for _ in range(20)]
        finally:
            await close(writer)
    readings = [r for r in records if r["device"] == "press1" and "temperature" in r["values"]]
    assert readings
    for r in readings:
        values = r["values"]
        for point in ("temperature", "force"):  # float32 registers: no binary noise
            v = values[point]
            assert len(re.sub(r"[-.]|e.*", "", repr(v)).strip("0")) <= 9, (point, v)
            # ... and nothing lost: it reads back as the very float32 the PLC had.
            assert shown(struct.unpack("f", struct.pack("f", v))[0], 7) == v
        # int16 * 0.01: float64 arithmetic noise (4.0200000000000005) rounded away.
        assert values["pressure"] == round(values["pressure"], 2)
        assert isinstance(values["cycle_counter"], int)


def test_shown_keeps_what_the_source_said_and_drops_binary_noise() -> None:
    f32 = 6.019999980926514  # float32(6.02) as a double
    assert shown(f32, 7) == 6.02
    assert shown(f32, None) == 6.02  # no type known, but exactly a float32: shown as one
    assert shown(20.015625, 7) == 20.015625  # a float32 that needs 8 digits keeps them
    assert shown(180.79901123046875, 7) == 180.79901
    assert shown(6.019999980926514 * 0.1, 7) == 0.602  # scaled: not a float32 any more
    assert shown(402 * 0.01, 15) == 4.02
    assert shown(0.1 + 0.2, None) == 0.3  # a double with no known type: 15 digits
    assert shown(181.27340698242188, 7) == 181.2734
    assert shown(True, 7) is True
    assert shown(7, 7) == 7
    assert math.isnan(shown(math.nan, 7))


async def test_the_cli_prints_one_readable_line_per_record(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as (agent, models):
        out, err = io.StringIO(), io.StringIO()
        socket_path = agent.cfg.control.socket
        follower = asyncio.create_task(follow(socket_path, ["ST10"], ["part"], out=out, err=err))
        await wait_until(lambda: out.getvalue().count("\n") >= 3, 20, "three part lines")
        as_json = io.StringIO()
        json_follower = asyncio.create_task(
            follow(socket_path, None, ["part"], as_json=True, out=as_json, err=io.StringIO())
        )
        await wait_until(lambda: as_json.getvalue().count("\n") >= 2, 20, "two JSON lines")
    # The agent stopped: both followers say so and end.
    assert await asyncio.wait_for(follower, 10) == 1
    assert await asyncio.wait_for(json_follower, 10) == 1
    assert "the agent closed the stream" in err.getvalue()
    lines = out.getvalue().splitlines()
    for line in lines:
        m = re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} ST10 part (S1-\d+) (OK|NOK) #(\d+) (.*)", line)
        assert m, line
        k = int(m[3]) - 1
        assert m[1] == models[0].serial(k)
        assert m[2] == ("OK" if models[0].ok(k) else "NOK")
        assert f"final_force={models[0].final_values(k)['final_force']} kN" in m[4]
        assert "part_serial" not in m[4], "identifications are shown once, as the serial"
    for line in as_json.getvalue().splitlines():
        assert json.loads(line)["kind"] == "part"


async def test_a_bad_filter_is_refused_and_request_reply_ops_still_work(tmp_path: Path) -> None:
    async with running_agent(tmp_path, stations=1) as (agent, _):
        path = agent.cfg.control.socket
        reply = await request(path, {"op": "tail", "stations": ["ST99"]})
        assert reply["ok"] is False
        assert "ST99" in reply["error"]
        assert "ST10" in reply["error"]
        reply = await request(path, {"op": "tail", "kinds": ["parts"]})
        assert reply["ok"] is False
        assert "'parts'" in reply["error"]
        # A stream open beside them changes nothing for the other ops.
        _reader, writer, head = await open_tail(agent)
        try:
            assert head["ok"]
            status = await request(path, {"op": "status"})
            assert status["ok"]
            assert status["status"]["agent"] == agent.cfg.agent.id
        finally:
            await close(writer)
        err = io.StringIO()
        assert await follow(path, ["nope"], None, out=io.StringIO(), err=err) == 2
        assert "nope" in err.getvalue()


async def test_a_stuck_follower_neither_blocks_acquisition_nor_grows(tmp_path: Path) -> None:
    """A client that never reads: its socket fills, its queue stops at the limit, the rest
    is counted as skipped, and the agent commits on at full speed. When it reads again it
    gets the records it had, one overflow line for those it missed, and the ones after."""
    loop = asyncio.get_running_loop()
    # Bare sockets (no asyncio reader draining them into memory) that are not read from; the
    # second one never is, and the agent stops while it is still connected.
    sock, never_read = (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2))
    for s in (sock, never_read):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
    async with running_agent(tmp_path, stations=3, poll=0.01) as (agent, _):
        agent.tail.limit = 50
        try:
            await loop.sock_connect(sock, agent.cfg.control.socket)
            await loop.sock_sendall(sock, b'{"op": "tail"}\n')
            await wait_until(lambda: len(agent.tail.subscribers) == 1, what="subscribed")
            (sub,) = agent.tail.subscribers
            await loop.sock_connect(never_read, agent.cfg.control.socket)
            await loop.sock_sendall(never_read, b'{"op": "tail", "kinds": ["readings"]}\n')
            await wait_until(lambda: sub.skipped > 0, 60, "the follower's queue to overflow")
            committed = agent.buffer.committed_seq
            skipped = sub.skipped
            # Acquisition goes on: hundreds more records committed while the client sleeps...
            await wait_until(
                lambda: agent.buffer.committed_seq >= committed + 300, 30, "300 more commits"
            )
            # ... and they are counted, not kept (less the few that were appended, already
            # skipped, but not yet committed when `committed` was read).
            assert sub.skipped >= skipped + 250
            assert sub.queued <= 50
            assert len(sub._items) <= 51  # the records and one skip marker
            # Now it reads: records in order, then the overflow line, then records again.
            data = b""
            lines: list[dict[str, Any]] = []
            async with deadline(60, "the overflow line and five records after it"):
                while not any(r.get("kind") == "tail.overflow" for r in lines[:-5]):
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 20)
                    assert chunk, "the stream ended"
                    data += chunk
                    *complete, data = data.split(b"\n")
                    lines += [json.loads(x) for x in complete]
            await wait_until(
                lambda: any(s.skipped for s in agent.tail.subscribers), 30, "the other one stuck"
            )
        finally:
            sock.close()
        stopping = time.monotonic()
    never_read.close()
    assert time.monotonic() - stopping < 10, "a client that never reads does not hold the stop"
    head, records = lines[0], lines[1:]
    assert head["ok"]
    marks = [i for i, r in enumerate(records) if r["kind"] == "tail.overflow"]
    mark = records[marks[0]]
    assert sum(records[i]["skipped"] for i in marks) >= 250
    before = [r["seq"] for r in records[: marks[0]]]
    after = [r["seq"] for r in records[marks[0] + 1 :] if r["kind"] != "tail.overflow"]
    assert before == sorted(before)
    assert after == sorted(after)
    assert before[-1] < mark["first_seq"] <= mark["last_seq"] < after[0]


def test_every_kind_has_a_readable_line() -> None:
    base = {"seq": 1, "station": "ST10", "ts": "2026-11-21T10:15:02.123456Z", "ctx": {}}
    records: list[dict[str, Any]] = [
        {"kind": "context", "key": "lot", "value": "L2", "previous": "L1",
         "source": {"manual": True, "user": "ana"}},
        {"kind": "context_restored", "ctx": {"serial": "S1", "lot": None}, "counter": 41},
        {"kind": "scan", "device": "cam", "point": "code", "text": "]d2bad", "status": "rejected",
         "rule": None, "quality": "bad", "error": "not valid GS1"},
        {"kind": "consumption", "serial": "S1", "lot": "L7", "quantity": 2, "unit": "pcs",
         "rule": "lot", "quality": "good"},
        {"kind": "gap", "previous": 40, "counter": 43, "missed": 2},
        {"kind": "unobserved", "device": "ua", "points": ["a", "b"], "since": None,
         "until": "x", "reason": "queue overflowed"},
        {"kind": "reading", "device": "press1", "point": "force", "value": 1.5, "unit": "kN",
         "quality": "good"},
        {"kind": "readings", "device": "press1", "values": {"force": None, "temp": 20.5},
         "quality": {"force": "bad"}, "errors": {"force": "timeout"}, "units": {"temp": "degC"}},
        {"kind": "future_kind", "x": 1},
        {"kind": "part", "serial": None, "result": None},  # fields missing: shown raw
    ]  # fmt: skip
    lines = [text_line({**base, **r}) for r in records]
    assert "lot L2 (was L1) set by hand (ana)" in lines[0]
    assert "serial=S1 lot=- (counter 41)" in lines[1]
    assert "rejected ']d2bad': not valid GS1" in lines[2]
    assert "S1 <- lot L7 2 pcs (rule lot)" in lines[3]
    assert "counter 40 -> 43: 2 part(s) without a record" in lines[4]
    assert "ua a, b since their previous value: queue overflowed" in lines[5]
    assert "press1 force=1.5 kN" in lines[6]
    assert "force=- (bad: timeout) temp=20.5 degC" in lines[7]
    assert lines[8].endswith('future_kind {"x":1}')
    assert "ST10 part" in lines[9]
    overflow = {"kind": "tail.overflow", "skipped": 3, "first_seq": 5, "last_seq": 9}
    assert text_line(overflow).startswith("-- 3 record(s) skipped (seq 5..9)")


@pytest.mark.parametrize("limit", [1, 3])
def test_a_full_queue_counts_skips_in_one_marker(limit: int) -> None:
    from edge_agent.tail import TailHub
    from kernel.model import RecordDraft, RecordKind

    cfg = agent_model().model_validate(
        demo_config(modbus_port=1, mqtt_port=1, buffer_path="/tmp/x.db")
    )
    hub = TailHub(lambda: cfg, limit=limit)
    sub: Subscription = hub.subscribe()
    hub.subscribers.add(sub)
    drafts = [RecordDraft("ST10", RecordKind.GAP, {"kind": "gap"}) for _ in range(10)]
    hub.appended(drafts, 100, 110)
    assert sub.queued == limit
    assert sub.skipped == 10 - limit
    assert len(sub._items) == limit + 1
    # Refused readings got no seq: the trace records among them keep theirs, in order.
    sub2 = hub.subscribe(kinds=["gap"])
    hub.subscribers = {sub2}
    mixed = [RecordDraft("ST10", RecordKind.READINGS, {}), *drafts[:2]]
    hub.appended(mixed, 110, 112)
    assert [i[0] for i in sub2._items if isinstance(i, tuple)][:limit] == [111, 112][:limit]
