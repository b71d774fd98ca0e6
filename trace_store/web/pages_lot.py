"""The Lot page: the recall list.

Every serial that consumed the lot, directly or through sub-assemblies (``trace_lot``), with
its result, product and work order from its part records, where it was consumed, and the
counts by result. The list is paged; the export streams every row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from starlette.responses import Response

from trace_store.export import Table, lot_table
from trace_store.facts import part_summaries
from trace_store.queries import LotTrace, forward_used, trace_lot
from trace_store.storage import CHUNK, Storage
from trace_store.web import params
from trace_store.web.app import Ctx, Page
from trace_store.web.export import stream
from trace_store.web.params import NotFound


def lot_page(ctx: Ctx) -> Page:
    lot = params.required(ctx.params, "id")
    number = params.page(ctx.params)
    trace = trace_lot(ctx.storage, lot, details=True)
    if not trace.found:
        raise NotFound(f"No serial consumed lot {lot!r}.")
    size = ctx.config.page_size
    pages = max(1, -(-len(trace.serials) // size))
    if number > pages:
        raise params.BadParameter("page", f"{number} is past the last page ({pages})")
    rows = trace.serials[(number - 1) * size : number * size]
    counts: Counter[str] = Counter()
    for a in trace.serials:
        part = trace.parts.get(a.serial)
        counts[(part.result or "unknown") if part else "no part record"] += 1
    direct = sum(1 for a in trace.serials if a.depth == 1)
    return Page(
        "lot.html",
        {
            "lot": lot,
            "trace": trace,
            "rows": rows,
            "counts": sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])),
            "direct": direct,
            "page": number,
            "pages": pages,
            "first_row": (number - 1) * size + 1,
        },
        f"Lot {lot}",
    )


def export(ctx: Ctx) -> Response:
    lot = params.required(ctx.params, "id")
    fmt = params.choice(ctx.params, "format", ("csv", "xlsx"))
    if not ctx.storage.edges_to("lot", [lot]):
        raise NotFound(f"No serial consumed lot {lot!r}.")
    return stream(ctx.pool, lambda storage: streamed_lot_table(storage, lot), fmt, f"lot-{lot}")


def streamed_lot_table(storage: Storage, lot: str) -> Table:
    """The recall list as a table whose rows are completed 500 serials at a time (their part
    summaries read per chunk), so only the list of serials is in memory."""
    serials, used = forward_used(storage, storage.edges_to("lot", [lot]))
    header = lot_table(LotTrace(lot, serials)).headers

    def rows() -> Iterator[list[object]]:
        for start in range(0, len(serials), CHUNK):
            some = serials[start : start + CHUNK]
            chunk = [a.serial for a in some]
            part = LotTrace(
                lot, some, part_summaries(storage, chunk), {s: used[s] for s in chunk if s in used}
            )
            yield from lot_table(part).rows  # type: ignore[misc]

    return Table(header, rows(), f"lot {lot}")  # type: ignore[arg-type]
