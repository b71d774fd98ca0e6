"""Exports as HTTP downloads, streamed: CSV is sent in chunks as rows are read; XLSX is
written row by row to a temporary file (XlsxWriter's constant-memory mode; the format's zip
directory comes last, so the file must be complete before it is sent), then sent in chunks
and deleted. Neither holds the rows in memory.

The connection is borrowed while the rows are read, so the export runs after the page
handler has given its own back.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator

from starlette.responses import StreamingResponse

from trace_store.export import Table, csv_chunks, write_xlsx
from trace_store.storage import Storage
from trace_store.web.db import Pool

CHUNK_BYTES = 64 * 1024
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def stream(pool: Pool, build: Callable[[Storage], Table], fmt: str, name: str) -> StreamingResponse:
    filename = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:100] or "export"
    body = _csv(pool, build) if fmt == "csv" else _xlsx(pool, build)
    media = "text/csv; charset=utf-8" if fmt == "csv" else XLSX
    return StreamingResponse(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}.{fmt}"'},
    )


def _csv(pool: Pool, build: Callable[[Storage], Table]) -> Iterator[bytes]:
    with pool.borrow() as storage:
        for chunk in csv_chunks(build(storage)):
            yield chunk.encode("utf-8")


def _xlsx(pool: Pool, build: Callable[[Storage], Table]) -> Iterator[bytes]:
    fd, path = tempfile.mkstemp(prefix="workbench-", suffix=".xlsx")
    os.close(fd)
    try:
        with pool.borrow() as storage:
            write_xlsx(build(storage), path)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk
    finally:
        os.unlink(path)
