"""Query results as spreadsheets: CSV (UTF-8 with a BOM, so Excel reads the text right) and
XLSX, one row per item and **one column per value**, numbers as numbers, rounded to the
precision of their source (``kernel.precision``).

A table is a header and an iterable of rows, consumed once: the writers stream it (CSV in
chunks, XLSX through XlsxWriter's ``constant_memory`` mode, which flushes each row to a
temporary file), so an export never holds all its rows in memory.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from kernel.precision import shown
from trace_store.queries import READINGS_KINDS, LotTrace, MaterialsTrace, SerialTrace
from trace_store.storage import StoredEdge, StoredRecord

Cell = str | int | float | bool | None
BOM = "\ufeff"
CSV_CHUNK_ROWS = 500
EXACT_INTEGERS = 2**53
"""Larger integers (a seq can be up to 2^63-1) lose digits as a spreadsheet's double: XLSX
gets them as text."""


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Iterable[Sequence[Cell]]
    name: str = "trace"  # the XLSX sheet's name


# ---- writers --------------------------------------------------------------------------------


def csv_text(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(shown(value))
    return str(value)


def csv_chunks(table: Table) -> Iterator[str]:
    """The CSV document in pieces of ``CSV_CHUNK_ROWS`` rows, the first starting with the BOM."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    buffer.write(BOM)
    writer.writerow(table.headers)
    for n, row in enumerate(table.rows, start=1):
        writer.writerow([csv_text(v) for v in row])
        if n % CSV_CHUNK_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def write_csv(table: Table, out: IO[str]) -> int:
    """Write ``table`` to ``out``; returns the number of data rows."""
    rows = 0
    for chunk in csv_chunks(table):
        out.write(chunk)
        rows += chunk.count("\r\n")
    return rows - 1


def write_xlsx(table: Table, path: str | os.PathLike[str]) -> int:
    """Write ``table`` as one sheet of an XLSX file; returns the number of data rows."""
    import xlsxwriter

    book = xlsxwriter.Workbook(
        os.fspath(path), {"constant_memory": True, "strings_to_numbers": False}
    )
    try:
        sheet = book.add_worksheet(_sheet_name(table.name))
        bold = book.add_format({"bold": True})
        for col, header in enumerate(table.headers):
            sheet.write_string(0, col, header, bold)
        sheet.freeze_panes(1, 0)
        n = 0
        for n, row in enumerate(table.rows, start=1):
            for col, value in enumerate(row):
                _xlsx_cell(sheet, n, col, value)
        return n
    finally:
        book.close()


def _xlsx_cell(sheet: Any, row: int, col: int, value: Cell) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        sheet.write_boolean(row, col, value)
    elif isinstance(value, int):
        if abs(value) < EXACT_INTEGERS:
            sheet.write_number(row, col, value)
        else:
            sheet.write_string(row, col, str(value))
    elif isinstance(value, float):
        sheet.write_number(row, col, shown(value))
    else:
        # write_string: a serial such as "=1+1" or "0042" stays the text it is.
        sheet.write_string(row, col, value[:32767])


def _sheet_name(name: str) -> str:
    cleaned = "".join("_" if c in "[]:*?/\\" else c for c in name).strip("'")
    return cleaned[:31] or "trace"


# ---- tables of the recall queries --------------------------------------------------------------


def serial_table(trace: SerialTrace, kinds: frozenset[str] | None = None) -> Table:
    """One row per record of the serial (readings only when ``kinds`` asks for them), its
    values in columns of their own."""
    records = [
        r
        for v in trace.visits
        for r in v.records
        if (r.kind in kinds if kinds else r.kind not in READINGS_KINDS)
    ]
    names = value_columns(records)
    headers = [
        "station", "site", "line", "agent", "seq", "ts", "kind", "serial", "result", "quality",
        "repeat", "counter", "cycle_time", "out_of_limits", "device", "details",
        *(label for _, label in names),
    ]  # fmt: skip

    from trace_store.report import summary

    def rows() -> Iterator[list[Cell]]:
        for r in records:
            b = r.body
            values = record_values(r)
            yield [
                r.station, r.site, r.line, r.agent, r.seq, r.ts, r.kind, r.serial,
                _cell(b.get("result")), _cell(b.get("quality")), _cell(b.get("repeat")),
                _cell(b.get("counter")), _cell(b.get("cycle_time")),
                " ".join(out_of_limits(r)), _cell(b.get("device")), summary(r),
                *(_cell(values.get(name)) for name, _ in names),
            ]  # fmt: skip

    return Table(headers, rows(), f"serial {trace.serial}")


def lot_table(trace: LotTrace) -> Table:
    """The recall list: each serial with its result, product and work order (from its part
    records) and where it was consumed."""
    headers = [
        "serial", "product", "result", "work_order", "last_station", "last_part_ts", "nok_parts",
        "consumed_into", "depth", "via", "how", "site", "line", "station", "agent", "seq", "ts",
    ]  # fmt: skip

    def rows() -> Iterator[list[Cell]]:
        for a in trace.serials:
            part = trace.parts.get(a.serial)
            e = a.edge
            yield [
                # The serial's own product, from its station context: the edge's product
                # is the consumed item's (the lot's or the component's), not this serial's.
                a.serial, part.product if part else None,
                part.result if part else None, part.work_order if part else None,
                part.station if part else None, part.ts if part else None,
                part.nok if part else None, " ".join(trace.used_in.get(a.serial, ())),
                a.depth, e.child, how(e), e.site, e.line, e.station, e.agent, e.seq, e.ts,
            ]  # fmt: skip

    return Table(headers, rows(), f"lot {trace.lot}")


def materials_table(trace: MaterialsTrace) -> Table:
    headers = [
        "depth", "kind", "id", "into", "how", "product", "quantity", "unit", "site", "line",
        "station", "agent", "seq", "ts",
    ]  # fmt: skip
    rows = (
        [
            m.depth,
            m.kind,
            m.id,
            m.edge.parent,
            how(m.edge),
            m.edge.product,
            m.edge.quantity,
            m.edge.unit,
            m.edge.site,
            m.edge.line,
            m.edge.station,
            m.edge.agent,
            m.edge.seq,
            m.edge.ts,
        ]
        for m in trace.materials
    )
    return Table(headers, rows, f"materials {trace.serial}")


def how(edge: StoredEdge) -> str:
    """How the parent took the child in: ``consumption``, ``part ctx.lot`` or ``component``."""
    if edge.child_kind == "component":
        return "component"
    return "consumption" if edge.how == "consumption" else "part ctx.lot"


# ---- values of a record ------------------------------------------------------------------------


def record_values(record: StoredRecord) -> dict[str, Any]:
    """Point name -> value of a part, readings or reading record (empty for other kinds)."""
    b = record.body
    if record.kind == "reading":
        return {str(b.get("point")): b.get("value")}
    values = b.get("values")
    if not isinstance(values, dict):
        return {}
    if record.kind == "part":
        return {k: v.get("value") if isinstance(v, dict) else v for k, v in values.items()}
    if record.kind == "readings":
        return dict(values)
    return {}


def record_units(record: StoredRecord) -> dict[str, str]:
    b = record.body
    if record.kind == "reading":
        return {str(b.get("point")): str(b["unit"])} if b.get("unit") else {}
    if record.kind == "readings":
        units = b.get("units")
        return {k: str(v) for k, v in units.items() if v} if isinstance(units, dict) else {}
    values = b.get("values")
    if record.kind != "part" or not isinstance(values, dict):
        return {}
    return {k: str(v["unit"]) for k, v in values.items() if isinstance(v, dict) and v.get("unit")}


def value_columns(records: Iterable[StoredRecord]) -> list[tuple[str, str]]:
    """(value name, column header) for every value name in ``records``, in order of first
    appearance; the header carries the unit when the name has one unit throughout."""
    units: dict[str, set[str]] = {}
    for r in records:
        found = record_units(r)
        for name in record_values(r):
            units.setdefault(name, set())
            if name in found:
                units[name].add(found[name])
    return [(n, f"{n} [{next(iter(u))}]" if len(u) == 1 else n) for n, u in units.items()]


def out_of_limits(record: StoredRecord) -> list[str]:
    """The names of a part record's values that failed their limits."""
    values = record.body.get("values") if record.kind == "part" else None
    if not isinstance(values, dict):
        return []
    return [k for k, v in values.items() if isinstance(v, dict) and v.get("ok") is False]


def _cell(value: Any) -> Cell:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    import json

    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
