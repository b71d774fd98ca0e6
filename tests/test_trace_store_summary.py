"""The trace store's periodic summary line, against a real store on a real Mosquitto: counts
over the interval (stored, duplicates, rejected by reason), held records and each agent's
lag; and the thread that logs it on its own."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt_helpers import Mosquitto
from tests.store_helpers import (
    AGENT,
    WAIT,
    Publisher,
    envelope,
    readings,
    topic,
    wait_messages,
    wait_w,
)
from tests.waiting import wait_until_sync
from trace_store.config import StoreConfig
from trace_store.service import TraceStore
from trace_store.summary import StoreSummary, span

LINE = re.compile(
    r"summary: 5m: (\d+) records stored \((\d+) duplicates dropped\) from (\d+) agent\(s\), "
    r"(\d+) messages rejected(?: \((.*)\))?, (\d+) held(?:; lag: (.*))?"
)


@pytest.fixture
def store(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[TraceStore]:
    s = TraceStore(
        StoreConfig(
            host="127.0.0.1",
            port=mosquitto.port,
            db=str(tmp_path / "trace.db"),
            store_id="summary-test",
            confirm_interval=0.05,
        )
    )
    with s:
        assert s.wait_ready(WAIT), "trace store did not subscribe"
        yield s


def test_each_line_counts_its_interval(
    store: TraceStore, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    summary = StoreSummary(store, 300)
    summary._last = store.stats()  # the baseline start() takes, without the thread
    pub = Publisher(mosquitto.port)
    try:
        pub.publish(topic(), envelope(readings(range(1, 6)), rng=(0, 5, 5)))
        pub.publish(topic(), b"{not json")
        wait_w(store, 5)
        wait_messages(store, 2)
        with caplog.at_level(logging.INFO, logger="trace_store.summary"):
            first = summary.log_once()
        m = LINE.fullmatch(caplog.records[-1].getMessage())
        assert m, caplog.records[-1].getMessage()
        assert m.groups()[:4] == ("5", "0", "1", "1")
        assert m.group(5) == "not_json 1"
        assert m.group(7).startswith(f"{AGENT} 0 (last record ")
        assert first["inserted"] == 5
        assert first["rejected_by_reason"] == {"not_json": 1}
        assert first["lag"] == {AGENT: 0}

        # The same records again: nothing stored, all counted as duplicates, in this line only.
        pub.publish(topic(), envelope(readings(range(1, 6)), rng=(0, 5, 5)))
        wait_messages(store, 3)
        second = summary.log_once()
        assert (second["inserted"], second["duplicates"], second["rejected"]) == (0, 5, 0)
        assert second["rejected_by_reason"] == {}
        assert second["totals"]["inserted"] == 5
    finally:
        pub.close()


def test_the_thread_logs_every_interval_and_stops(
    store: TraceStore, caplog: pytest.LogCaptureFixture
) -> None:
    summary = StoreSummary(store, 0.05)
    with caplog.at_level(logging.INFO, logger="trace_store.summary"):
        summary.start()
        try:
            wait_until_sync(
                lambda: sum(r.name == "trace_store.summary" for r in caplog.records) >= 2,
                WAIT,
                "two summary lines",
            )
        finally:
            summary.stop()
    assert not summary._thread.is_alive()
    assert all("summary: 0.05s: 0 records stored" in r.getMessage() for r in caplog.records)


def test_interval_as_people_write_it() -> None:
    assert [span(s) for s in (300, 60, 3600, 7200, 30, 0.5, 90)] == [
        "5m",
        "1m",
        "1h",
        "2h",
        "30s",
        "0.5s",
        "90s",
    ]
    with pytest.raises(ValueError, match="positive"):
        StoreSummary(object(), 0)  # type: ignore[arg-type]
