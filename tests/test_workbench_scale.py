"""The plant-scale benchmark (``benchmarks/workbench_scale.py``) on a few hours of the line:
its history fits the store's schema and queries, and every figure it reports is there."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("starlette")

from benchmarks import workbench_history, workbench_scale
from trace_store.queries import trace_lot, trace_materials
from trace_store.storage import open_storage


def test_the_history_is_a_store_the_queries_understand(tmp_path: Path) -> None:
    db = str(tmp_path / "trace.db")
    h = workbench_history.build(db, 0.05, log=lambda _: None)  # 144 units
    assert h.records == 144 * 24 + sum(
        1 for rows, _, _ in workbench_history.generate(144) for r in rows if '"repeat":1' in r[8]
    )
    with open_storage(db, read_only=True) as storage:
        lot = trace_lot(storage, "LA00000", details=True)
        assert len(lot.serials) == 2 * 144  # the sub-assemblies, then the finished units
        assert {a.depth for a in lot.serials} == {1, 2}
        assert {p.product for p in lot.parts.values()} == {"SUB-A", "FIN-X"}
        lots = {m.id for m in trace_materials(storage, "FG00000007").materials}
        assert lots == {"SA00000007", "LB00000", "LA00000"}
        assert [s for s, _, _ in storage.stations()] == list(workbench_history.STATIONS)
        assert storage.agents()["line1-st01"].watermark > 0


def test_the_benchmark_reports_every_page_and_the_ingest() -> None:
    out = workbench_scale.run(
        "0.05", backends=("sqlite",), keys=2, ingest_seconds=1.5, log=lambda _: None
    )
    r = out["sqlite"]
    assert set(r["pages"]) == {
        "serial", "lot", "window", "window_filtered", "dashboard", "export",
    }  # fmt: skip
    assert r["pages"]["export"]["rows_min"] == 2 * 144
    assert all(p["p95_s"] > 0 for p in r["pages"].values())
    assert r["ingest"]["alone_records_per_s"] > 0
    assert r["ingest"]["beside_spinner_records_per_s"] > 0
    assert r["ingest"]["queries_meanwhile"] > 0
    assert "spinner" in workbench_scale.targets(out)[1][2]
    assert "| sqlite |" in workbench_scale.table(out)
    assert len(workbench_scale.targets(out)) == 2
