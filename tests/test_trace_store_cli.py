"""``edge-agent trace ...`` output in its three formats, and ``edge-agent trace-store`` as a
real process that is SIGKILLed mid-stream and restarted."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.mqtt_helpers import Mosquitto
from tests.store_helpers import (
    AGENT,
    CONFIRMED,
    WAIT,
    Publisher,
    accepted,
    envelope,
    genealogy,
    readings,
    topic,
    write,
)
from tests.waiting import wait_until_sync
from trace_store import cli as store_cli
from trace_store.config import StoreConfig
from trace_store.service import TraceStore
from trace_store.storage import open_storage

CLI = [sys.executable, "-m", "edge_agent.cli"]


@pytest.fixture
def trace_db(tmp_path: Path) -> str:
    """A SQLite trace store holding the small genealogy of ``genealogy()``."""
    path = str(tmp_path / "trace.db")
    with open_storage(path) as storage:
        write(storage, *(accepted(p, t) for t, p in genealogy()))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The trace commands in-process: ``edge-agent``'s parser with our sub-commands."""
    parser = argparse.ArgumentParser(prog="edge-agent")
    store_cli.register(parser.add_subparsers(dest="command", required=True))
    code = store_cli.dispatch(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---- queries -------------------------------------------------------------------------------------


def test_trace_serial_table(trace_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "trace", "serial", "SA-1", "--db", trace_db)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == (
        "serial SA-1: 3 record(s) at 1 station(s), "
        "2026-11-21T10:00:02.000000Z .. 2026-11-21T10:00:04.000000Z"
    )
    assert lines[2].startswith("op10  (plant-a/line-3, agent line3-pc1)")
    assert "  2026-11-21T10:00:02.000000Z  2    context   serial = SA-1 (was -)" in out
    # Readings are summed up per station visit unless asked for (10 Hz would flood it).
    assert (
        "3    readings  1 record(s): press10: force 20.5 kN, stroke - (1 bad) "
        "(--kind readings lists them)"
    ) in out
    assert "result ok, quality good, force=20.6 kN [18..22.5], cycle 2.0 s, counter 1" in out
    assert "used as a component in:" in out
    assert "  FG-1    op30     plant-a/line-3  line3-pc1  9    2026-11-21T10:00:09.000000Z" in out

    code, out, _ = run(capsys, "trace", "serial", "SA-1", "--db", trace_db, "--kind", "readings")
    assert code == 0
    assert "3    readings  press10: force=20.5 kN, stroke=- (bad: no response within 1.0s)" in out
    assert " part " not in out
    assert " context " not in out
    code, out, _ = run(
        capsys, "trace", "serial", "SA-1", "--db", trace_db, "--kind", "part", "--kind", "context"
    )
    assert [line.split()[2] for line in out.splitlines()[4:6]] == ["context", "part"]
    assert "readings" not in out
    code, _, err = run(capsys, "trace", "serial", "SA-1", "--db", trace_db, "--kind", "gap")
    assert code == 1
    assert "no gap records for serial 'SA-1'" in err


def test_trace_lot_is_the_recall_list(trace_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "trace", "lot", "L-STEEL", "--db", trace_db)
    assert code == 0
    assert out.splitlines()[0] == (
        "lot L-STEEL: 5 serial(s) affected (3 consumed it directly, 2 through components); "
        "1 NOK, 2 OK, 2 no part record"
    )
    rows = [line.split()[:6] for line in out.splitlines()[2:]]
    assert rows == [
        ["SA-1", "1", "L-STEEL", "part", "ctx.lot", "OK"],
        ["SA-2", "1", "L-STEEL", "part", "ctx.lot", "NOK"],
        ["SA-3", "1", "L-STEEL", "consumption", "-", "op20"],
        ["FG-1", "2", "SA-1", "component", "OK", "op30"],
        ["FG-2", "2", "SA-2", "component", "-", "op30"],
    ]
    assert out.splitlines()[2].endswith("FG-1")  # consumed into

    code, out, _ = run(capsys, "trace", "lot", "L-STEEL", "--db", trace_db, "--format", "json")
    doc = json.loads(out)
    assert doc["lot"] == "L-STEEL"
    assert [(s["serial"], s["depth"], s["via"], s["how"]) for s in doc["serials"]] == [
        ("SA-1", 1, "L-STEEL", "part ctx.lot"),
        ("SA-2", 1, "L-STEEL", "part ctx.lot"),
        ("SA-3", 1, "L-STEEL", "consumption"),
        ("FG-1", 2, "SA-1", "component"),
        ("FG-2", 2, "SA-2", "component"),
    ]
    assert doc["serials"][2] | {"ts": None} == {
        "serial": "SA-3",
        "depth": 1,
        "via": "L-STEEL",
        "how": "consumption",
        "site": "plant-a",
        "line": "line-3",
        "station": "op20",
        "agent": AGENT,
        "seq": 7,
        "ts": None,
        "consumed_product": None,
        "quantity": 1.5,
        "unit": "kg",
        "product": None,
        "result": None,
        "work_order": None,
        "consumed_into": [],
    }
    assert (doc["serials"][1]["result"], doc["serials"][1]["consumed_into"]) == ("nok", ["FG-2"])

    code, out, _ = run(capsys, "trace", "lot", "L-STEEL", "--db", trace_db, "--format", "csv")
    assert out.startswith("\ufeff")  # UTF-8 with a BOM: Excel reads it as UTF-8
    rows_csv = list(csv.DictReader(io.StringIO(out[1:])))
    assert [r["serial"] for r in rows_csv] == ["SA-1", "SA-2", "SA-3", "FG-1", "FG-2"]
    assert [r["result"] for r in rows_csv] == ["ok", "nok", "", "ok", ""]
    assert rows_csv[3]["via"] == "SA-1"
    assert rows_csv[3]["station"] == "op30"
    assert rows_csv[0]["consumed_into"] == "FG-1"


def test_trace_materials_goes_back_through_components(
    trace_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "trace", "materials", "FG-1", "--db", trace_db)
    assert code == 0
    assert out.splitlines()[0] == "serial FG-1: 3 material(s) (2 lot(s), 1 component(s))"
    assert [line.split()[:5] for line in out.splitlines()[2:]] == [
        ["1", "component", "SA-1", "FG-1", "component"],
        ["1", "lot", "L-GLUE", "FG-1", "consumption"],
        ["2", "lot", "L-STEEL", "SA-1", "part"],
    ]
    code, out, _ = run(capsys, "trace", "materials", "FG-1", "--db", trace_db, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.removeprefix("\ufeff"))))
    assert [(r["kind"], r["id"], r["quantity"], r["unit"]) for r in rows] == [
        ("component", "SA-1", "1.0", "pcs"),
        ("lot", "L-GLUE", "3.0", "g"),
        ("lot", "L-STEEL", "", ""),
    ]
    code, out, _ = run(capsys, "trace", "materials", "FG-1", "--db", trace_db, "--format", "json")
    assert [m["id"] for m in json.loads(out)["materials"]] == ["SA-1", "L-GLUE", "L-STEEL"]


def test_trace_serial_json_and_csv(trace_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "trace", "serial", "SA-2", "--db", trace_db, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["serial"] == "SA-2"
    assert doc["records"] == 2
    [station] = doc["stations"]
    assert (station["station"], station["agent"]) == ("op10", AGENT)
    assert [r["seq"] for r in station["records"]] == [5, 6]
    assert station["records"][1]["body"]["result"] == "nok"
    assert [u["serial"] for u in doc["used_in"]] == ["FG-2"]

    code, out, _ = run(capsys, "trace", "serial", "SA-2", "--db", trace_db, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.removeprefix("\ufeff"))))
    assert [(r["station"], r["seq"], r["kind"]) for r in rows] == [
        ("op10", "5", "context"),
        ("op10", "6", "part"),
    ]
    assert "force=23.1 kN [18..22.5] NOK" in rows[1]["details"]
    # One column per value, the number alone in it (no JSON in a cell).
    assert (rows[1]["counter"], rows[1]["force [kN]"], rows[1]["out_of_limits"]) == (
        "2",
        "23.1",
        "force",
    )
    assert "body" not in rows[1]


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_nothing_found_exits_1_and_says_so(
    trace_db: str, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    for command, key in (("serial", "stations"), ("lot", "serials"), ("materials", "materials")):
        code, out, err = run(capsys, "trace", command, "NOPE", "--db", trace_db, "--format", fmt)
        assert code == 1
        assert "'NOPE'" in err
        if fmt == "json":
            assert json.loads(out)[key] == []
        elif fmt == "csv":
            assert len(out.splitlines()) == 1  # the header only
        else:
            assert out == ""


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "trace", "lot", "L1", "--db", str(tmp_path / "missing.db"))
    assert code == 2
    assert "no such database" in err
    (tmp_path / "other.db").write_bytes(b"")
    code, _, err = run(capsys, "trace", "lot", "L1", "--db", str(tmp_path / "other.db"))
    assert code == 2
    assert "not a trace store database" in err
    assert not (tmp_path / "missing.db").exists()  # a query never creates a database
    with pytest.raises(SystemExit) as exit_info:
        run(capsys, "trace", "lot")
    assert exit_info.value.code == 2
    code, _, err = run(capsys, "trace-store", "--broker", "host:notaport")
    assert code == 2
    assert "port 'notaport'" in err


def test_the_edge_agent_command_runs_the_queries(trace_db: str) -> None:
    done = subprocess.run(
        [*CLI, "trace", "lot", "L-GLUE", "--db", trace_db, "--format", "csv"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    stdout = done.stdout.removeprefix("\ufeff")
    assert [r["serial"] for r in csv.DictReader(io.StringIO(stdout))] == ["FG-1"]
    done = subprocess.run(
        [*CLI, "trace", "serial", "NOPE", "--db", trace_db],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "no records for serial 'NOPE'" in done.stderr


def test_store_options_become_a_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    parser = argparse.ArgumentParser()
    store_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "trace-store",
            "--broker",
            "mq.plant:1884",
            "--username",
            "store",
            "--password-file",
            str(secret),
            "--db",
            "postgresql://trace@db/trace",
            "--topic-prefix",
            "acme/trace",
            "--store-id",
            "central-1",
            "--agent",
            "pc1",
            "--agent",
            "pc2",
            "--max-held-records",
            "5000",
        ]
    )
    config = store_cli.config_from_args(args)
    assert (config.host, config.port, config.username, config.password) == (
        "mq.plant",
        1884,
        "store",
        "s3cret",
    )
    assert config.agents == frozenset({"pc1", "pc2"})
    assert config.max_held_records == 5000
    assert config.client_id == "trace-store-central-1"
    assert config.subscription == "acme/trace/+/+/+/records"
    assert "s3cret" not in repr(config)

    monkeypatch.setenv(store_cli.ENV_PASSWORD, "from-env")
    args = parser.parse_args(["trace-store", "--username", "u", "--tls-ca", str(secret)])
    config = store_cli.config_from_args(args)
    assert (config.password, config.port, config.use_tls) == ("from-env", 8883, True)
    assert config.max_held_records == 200_000
    with pytest.raises(ValueError, match="max held records"):
        store_cli.config_from_args(parser.parse_args(["trace-store", "--max-held-records", "-1"]))


# ---- the daemon as a process ------------------------------------------------------------------


class ConfirmWatcher:
    """Follows one agent's confirmation topic: the retained message, then every update."""

    def __init__(self, port: int, topic: str) -> None:
        self.seq = 0
        self.stores: set[str] = set()
        self._changed = threading.Condition()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="test-confirm-watcher", protocol=mqtt.MQTTv311
        )
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload:
            doc = json.loads(msg.payload)
            with self._changed:
                self.seq = max(self.seq, doc["seq"])
                self.stores.add(doc["store"])
                self._changed.notify_all()

    def wait(self, seq: int, timeout: float = WAIT) -> None:
        with self._changed:
            ok = self._changed.wait_for(lambda: self.seq >= seq, timeout)
        assert ok, f"confirmed seq {self.seq}, expected {seq}"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def watcher(mosquitto: Mosquitto) -> Iterator[ConfirmWatcher]:
    w = ConfirmWatcher(mosquitto.port, CONFIRMED)
    try:
        yield w
    finally:
        w.close()


def test_store_process_killed_mid_stream_loses_and_duplicates_nothing(
    mosquitto: Mosquitto, watcher: ConfirmWatcher, tmp_path: Path
) -> None:
    db = str(tmp_path / "trace.db")
    options = ["--broker", f"127.0.0.1:{mosquitto.port}", "--db", db, "--store-id", "proc"]
    # A first run creates the store's persistent session, so the broker queues what follows.
    with TraceStore(
        StoreConfig(host="127.0.0.1", port=mosquitto.port, db=db, store_id="proc")
    ) as first:
        assert first.wait_ready(WAIT)

    per_message, messages = 10, 300
    total = per_message * messages
    publisher = Publisher(mosquitto.port)
    try:
        batch = []
        for i in range(messages):
            seqs = range(i * per_message + 1, (i + 1) * per_message + 1)
            station = ("op10", "op20")[i % 2]
            rng = (seqs[0] - 1, seqs[-1], per_message)
            batch.append((topic(station), envelope(readings(seqs, station), rng=rng)))
        publisher.publish_all(batch)
    finally:
        publisher.close()

    log = (tmp_path / "store.log").open("ab")
    try:
        proc = subprocess.Popen([*CLI, "trace-store", *options], stderr=log)
        try:
            watcher.wait(per_message)  # it is committing and confirming...
        finally:
            proc.send_signal(signal.SIGKILL)  # ...and dies without a word
            proc.wait(WAIT)

        proc = subprocess.Popen([*CLI, "trace-store", *options], stderr=log)
        try:
            # The first run may have confirmed everything before the kill landed: then the
            # retained confirmation is already at ``total``, and a SIGTERM must not reach the
            # second run before it has started (and taken over SIGTERM).
            started = tmp_path / "store.log"

            def second_run_connected() -> bool:
                assert proc.poll() is None, started.read_text()
                return started.read_text().count("connected to MQTT broker") >= 2

            wait_until_sync(second_run_connected, WAIT, "the second run to connect")
            watcher.wait(total)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(WAIT)
    finally:
        log.close()
    assert code == 0, (tmp_path / "store.log").read_text()
    assert watcher.stores == {"proc"}
    with open_storage(db) as storage:
        assert storage.seqs(AGENT) == list(range(1, total + 1))
        assert storage.agents()[AGENT].watermark == total


# ---- numbers and spreadsheets ----------------------------------------------------------------------


@pytest.fixture
def noisy_db(tmp_path: Path) -> str:
    """A serial whose values carry float noise: a scaled integer's 6.0200000000000005 and a
    float32's 20.046875 (exactly representable, so shown as the float32 it is)."""
    from tests.store_helpers import body

    path = str(tmp_path / "noisy.db")
    ctx = {"serial": "N-1", "lot": "L-9", "product": "P-77", "work_order": "WO-3"}
    records = [
        body(1, "context", key="serial", value="N-1", previous=None, ctx=ctx),
        body(2, values={"pressure": 6.0200000000000005, "temp": 181.27000000000001}, ctx=ctx,
             units={"pressure": "bar"}),
        body(3, values={"pressure": 6.49, "temp": 181.5}, ctx=ctx, units={"pressure": "bar"}),
        body(4, "part", serial="N-1", result="ok", quality="good", counter=7, cycle_time=2.5,
             values={"force": {"value": 20.046875, "unit": "kN", "min": 18, "max": 22.5,
                               "ok": True, "quality": "good"},
                     "depth": {"value": 0.30000000000000004, "unit": "mm", "quality": "good"}},
             ctx=ctx),
    ]  # fmt: skip
    with open_storage(path) as storage:
        write(storage, accepted(envelope(records)))
    return path


def test_values_are_rounded_to_their_precision(
    noisy_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "trace", "serial", "N-1", "--db", noisy_db)
    assert code == 0
    assert "2 record(s) until 2026-11-21T10:00:03.000000Z: press10: pressure 6.02..6.49 bar" in out
    assert "force=20.046875 kN [18..22.5], depth=0.3 mm" in out
    assert not re.search(r"\d\.\d*0000\d", re.sub(r"\d\d:\d\d\.\d+Z", "", out))  # no noise
    code, out, _ = run(capsys, "trace", "serial", "N-1", "--db", noisy_db, "--kind", "readings")
    assert "pressure=6.02 bar, temp=181.27" in out
    code, out, _ = run(capsys, "trace", "serial", "N-1", "--db", noisy_db, "--format", "json")
    doc = json.loads(out)
    [part] = [r for r in doc["stations"][0]["records"] if r["kind"] == "part"]
    assert part["body"]["values"]["depth"]["value"] == 0.3
    assert doc["stations"][0]["readings"]["points"][0]["min"] == 6.02
    code, out, _ = run(
        capsys, "trace", "serial", "N-1", "--db", noisy_db, "--format", "csv", "--kind", "readings"
    )
    rows = list(csv.DictReader(io.StringIO(out.removeprefix("\ufeff"))))
    assert [r["pressure [bar]"] for r in rows] == ["6.02", "6.49"]
    code, out, _ = run(capsys, "trace", "lot", "L-9", "--db", noisy_db)
    assert "N-1     1      L-9  part ctx.lot  OK      P-77     WO-3" in out  # product, order


def test_xlsx_needs_a_file_and_holds_numbers_as_numbers(
    noisy_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    code, _, err = run(capsys, "trace", "lot", "L-9", "--db", noisy_db, "--format", "xlsx")
    assert code == 2
    assert "-o FILE" in err
    target = tmp_path / "serial.xlsx"
    code, out, _ = run(
        capsys, "trace", "serial", "N-1", "--db", noisy_db, "--format", "xlsx", "-o", str(target)
    )
    assert (code, out) == (0, "")
    sheet = openpyxl.load_workbook(target, read_only=True).active
    header, *rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    part = dict(zip(header, rows[-1], strict=True))
    assert (part["kind"], part["counter"], part["force [kN]"], part["depth [mm]"]) == (
        "part",
        7,
        20.046875,
        0.3,
    )
    target = tmp_path / "lot.csv"
    code, out, _ = run(capsys, "trace", "lot", "L-9", "--db", noisy_db, "--format", "csv", "-o",
                       str(target))  # fmt: skip
    assert (code, out) == (0, "")
    assert target.read_bytes().startswith(b"\xef\xbb\xbfserial,product,result")
