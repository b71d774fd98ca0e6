"""The demo's live view: a table redrawn in place on a terminal (a real pty here), compact
lines elsewhere; and the folder it keeps."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.demo import run_demo
from edge_agent.demo_view import LiveState

CLI = [sys.executable, "-m", "edge_agent.cli"]


def snapshot(records: int, nok: int) -> dict[str, Any]:
    return {
        "records": records,
        "observations": records * 10,
        "buffer_depth": 3,
        "committed_seq": 120,
        "sync": {"connected": True},
        "stations": {"ST10": {"serial": "S1-00000042", "lot": "L00001"}},
        "station_stats": {"ST10": {"parts": 41, "nok": nok}},
        "devices": {"press1": "up", "scale1": "down"},
        "device_stations": {"press1": ["ST10"], "scale1": ["ST10"]},
    }


def state_with_a_part(result: str) -> LiveState:
    state = LiveState("demo-pc1", with_store=True)
    state.feed(
        [
            {
                "seq": 100,
                "kind": "readings",
                "station": "ST10",
                "values": {"temperature": 181.2734, "status": 3},
                "units": {"temperature": "degC"},
            },
            {
                "seq": 110,
                "kind": "part",
                "station": "ST10",
                "serial": "S1-00000041",
                "result": result,
                "values": {
                    "final_force": {"value": 20.046875, "unit": "kN", "quality": "good"},
                    "result": {"value": 1, "quality": "good"},
                },
            },
        ]
    )
    state.refresh(snapshot(500, 2), at_broker=118, broker_seq=118, store_seq=112)
    return state


def test_the_table_shows_values_the_part_coloured_and_where_it_is() -> None:
    pytest.importorskip("rich")
    from rich.console import Console

    for result, colour in (("ok", "\x1b[1;32m"), ("nok", "\x1b[1;31m")):
        out = io.StringIO()
        Console(file=out, force_terminal=True, width=80, color_system="standard").print(
            state_with_a_part(result).table()
        )
        text = out.getvalue()
        plain = re.sub(r"\s+", " ", re.sub(r"\x1b\[[0-9;]*m", "", text))
        assert f"{colour}{result.upper()}\x1b[0m" in text
        for shown in (
            "S1-00000042",
            "lot L00001",
            "temperature 181.273 degC",
            "S1-00000041",
            "final_force 20.0469 kN",
            "in store",
            "store confirmed up to seq 112",
            "journal 3 waiting",
            "2 NOK",
        ):
            assert shown in plain, (shown, plain)
        assert "status" not in plain, "values without a unit are not process values"
        assert "\x1b[1;31mdown" in text  # the device that is down


def test_the_compact_line_says_the_same_in_one_line() -> None:
    line = state_with_a_part("nok").compact()
    assert "\n" not in line
    assert "records/s" in line
    assert "ST10 serial S1-00000042 lot L00001 last part NOK (S1-00000041) 41 parts 2 NOK" in line


async def test_a_folder_that_holds_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "buffer.db").write_bytes(b"")
    assert await run_demo(duration=1, dir=tmp_path, out=io.StringIO()) == 2


def test_on_a_terminal_the_view_redraws_in_place(tmp_path: Path) -> None:
    pytest.importorskip("rich")
    import pty

    main, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "LINES": "40", "TERM": "xterm"}
    proc = subprocess.Popen(
        [*CLI, "demo", "--duration", "3", "--stations", "2", "--cycle-time", "0.5", "--dir", "d"],
        stdin=secondary,
        stdout=secondary,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env=env,
    )
    os.close(secondary)
    chunks = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the demo closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    screen = b"".join(chunks).decode(errors="replace")
    assert "\x1b[2K" in screen or "\x1b[1A" in screen, "redrawn in place (cursor up, erase line)"
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert "last values" in plain
    assert re.search(r"(OK|NOK) S[12]-\d{8}", plain)
    assert "nothing lost." in plain
    assert (tmp_path / "d" / "demo.yaml").exists()
