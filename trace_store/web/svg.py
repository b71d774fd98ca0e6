"""Charts as inline SVG made on the server: no JavaScript chart library and nothing from a
CDN, so every page works offline, prints, and shows in a screenshot as in the browser.

Every function returns markup that is safe to embed: text in it is escaped here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from kernel.precision import text as number_text

OK, NOK, NEUTRAL, LIMIT, CONTROL = "#2e7d32", "#c62828", "#78909c", "#c62828", "#ef6c00"
MAX_POINTS = 600  # drawn per series; more are thinned evenly (min and max kept per bucket)


def _n(x: float) -> str:
    return f"{x:.1f}"


def _label(x: float) -> str:
    return number_text(x)


def _hour_label(label: str, *, first: bool) -> str:
    """``2026-12-04T01`` as ``01:00``; the first hour and each midnight with the day."""
    day, _, hour = label.partition("T")
    if not hour:
        return label[-5:]
    return f"{day[5:]} {hour}:00" if first or hour == "00" else f"{hour}:00"


def stat_text(x: float) -> str:
    """A computed statistic (mean, control limit, axis end): 5 significant digits, not the
    15 a float64 carries (20.4401041666667 is 20.44)."""
    return f"{x:.5g}"


def _thin(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most ``MAX_POINTS`` points, keeping each bucket's lowest and highest value so a
    spike still shows."""
    if len(points) <= MAX_POINTS:
        return list(points)
    size = len(points) / (MAX_POINTS / 2)
    out: list[tuple[float, float]] = []
    start = 0.0
    while int(start) < len(points):
        bucket = points[int(start) : int(start + size)] or points[int(start) :]
        low = min(bucket, key=lambda p: p[1])
        high = max(bucket, key=lambda p: p[1])
        out.extend(sorted({low, high}))
        start += size
    return out


@dataclass(frozen=True)
class _Scale:
    lo: float
    hi: float
    a: float  # pixel of lo
    b: float  # pixel of hi

    def __call__(self, v: float) -> float:
        if self.hi == self.lo:
            return (self.a + self.b) / 2
        return self.a + (v - self.lo) * (self.b - self.a) / (self.hi - self.lo)


def _range(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if lo == hi:
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.08
    return lo - pad, hi + pad


def sparkline(
    points: Sequence[tuple[float, float]],
    marks: Sequence[float] = (),
    *,
    limits: tuple[float | None, float | None] = (None, None),
    width: int = 260,
    height: int = 44,
    title: str = "",
) -> Markup:
    """A small line of ``(time, value)`` with vertical marks at ``marks`` (the part's time)
    and dashed lines at the limits."""
    if not points:
        return Markup("")
    pts = _thin(points)
    xs = [p[0] for p in pts]
    values = [p[1] for p in pts] + [v for v in limits if v is not None]
    ylo, yhi = _range(values)
    x = _Scale(min(xs + list(marks)), max(xs + list(marks)), 2, width - 2)
    y = _Scale(ylo, yhi, height - 3, 3)
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{_n(x(t))},{_n(y(v))}" for i, (t, v) in enumerate(pts)
    )
    parts = [
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for limit in limits:
        if limit is not None:
            parts.append(
                f'<line x1="0" x2="{width}" y1="{_n(y(limit))}" y2="{_n(y(limit))}" '
                f'stroke="{LIMIT}" stroke-dasharray="3 3" stroke-width="1"/>'
            )
    for m in marks:
        parts.append(
            f'<line x1="{_n(x(m))}" x2="{_n(x(m))}" y1="0" y2="{height}" stroke="{NEUTRAL}" '
            'stroke-width="1.5"/>'
        )
    parts.append(f'<path d="{path}" fill="none" stroke="#1565c0" stroke-width="1.3"/>')
    if len(pts) == 1:
        parts.append(
            f'<circle cx="{_n(x(xs[0]))}" cy="{_n(y(pts[0][1]))}" r="2.5" fill="#1565c0"/>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(frozen=True)
class Span:
    label: str
    start: float
    end: float
    status: str  # ok, nok or none
    href: str = ""


def timeline(spans: Sequence[Span], *, width: int = 900, row: int = 22) -> Markup:
    """Station visits on a time axis, one row per station, coloured by result."""
    if not spans:
        return Markup("")
    labels = list(dict.fromkeys(s.label for s in spans))
    left = 90
    t0 = min(s.start for s in spans)
    t1 = max(s.end for s in spans)
    x = _Scale(t0, t1 if t1 > t0 else t0 + 1, left, width - 10)
    height = row * len(labels) + 8
    colour = {"ok": OK, "nok": NOK}
    parts = [
        f'<svg class="timeline" viewBox="0 0 {width} {height}" width="100%" role="img" '
        'aria-label="route through the stations">'
    ]
    for i, label in enumerate(labels):
        parts.append(
            f'<text x="4" y="{i * row + row - 6}" class="axis">{escape(label)}</text>'
            f'<line x1="{left}" x2="{width - 10}" y1="{i * row + row - 10}" '
            f'y2="{i * row + row - 10}" stroke="#eceff1"/>'
        )
    for s in spans:
        i = labels.index(s.label)
        x0, x1 = x(s.start), x(s.end)
        bar = (
            f'<rect x="{_n(x0)}" y="{i * row + 4}" width="{_n(max(x1 - x0, 4))}" '
            f'height="{row - 10}" rx="3" fill="{colour.get(s.status, NEUTRAL)}">'
            f"<title>{escape(s.label)}: {escape(s.status.upper())}</title></rect>"
        )
        parts.append(f'<a href="{escape(s.href)}">{bar}</a>' if s.href else bar)
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_bars(
    groups: Sequence[tuple[str, int, int]], *, width: int = 900, height: int = 180
) -> Markup:
    """Per group (an hour): OK (green) and NOK (red) counts stacked."""
    if not groups:
        return Markup("")
    top = max(ok + nok for _, ok, nok in groups) or 1
    left, bottom = 36, 22
    slot = (width - left) / len(groups)
    y = _Scale(0, top, height - bottom, 8)
    parts = [
        f'<svg class="bars" viewBox="0 0 {width} {height}" width="100%" role="img" '
        'aria-label="output per hour">',
        f'<text x="2" y="14" class="axis">{top}</text>'
        f'<text x="2" y="{height - bottom}" class="axis">0</text>',
    ]
    every = max(1, len(groups) // 12)
    for i, (label, ok, nok) in enumerate(groups):
        x0 = left + i * slot + 1
        w = max(slot - 2, 1)
        y_ok = y(ok)
        parts.append(
            f'<rect x="{_n(x0)}" y="{_n(y_ok)}" width="{_n(w)}" '
            f'height="{_n(height - bottom - y_ok)}" fill="{OK}"><title>{escape(label)}: {ok} OK'
            "</title></rect>"
        )
        if nok:
            y_all = y(ok + nok)
            parts.append(
                f'<rect x="{_n(x0)}" y="{_n(y_all)}" width="{_n(w)}" height="{_n(y_ok - y_all)}" '
                f'fill="{NOK}"><title>{escape(label)}: {nok} NOK</title></rect>'
            )
        if i % every == 0:
            parts.append(
                f'<text x="{_n(x0)}" y="{height - 6}" class="axis">'
                f"{escape(_hour_label(label, first=i == 0))}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def pareto(items: Sequence[tuple[str, int]], *, width: int = 900, bar: int = 22) -> Markup:
    """Horizontal bars, largest first, with the cumulative share."""
    if not items:
        return Markup("")
    total = sum(n for _, n in items) or 1
    top = max(n for _, n in items) or 1
    left, right = 200, 120
    height = bar * len(items) + 4
    parts = [
        f'<svg class="pareto" viewBox="0 0 {width} {height}" width="100%" role="img" '
        'aria-label="NOK causes">'
    ]
    running = 0
    for i, (label, n) in enumerate(items):
        running += n
        w = (width - left - right) * n / top
        y0 = i * bar + 2
        parts.append(
            f'<text x="4" y="{y0 + bar - 8}" class="axis">{escape(label[:30])}</text>'
            f'<rect x="{left}" y="{y0}" width="{_n(max(w, 1))}" height="{bar - 6}" '
            f'fill="{NOK}"/><text x="{_n(left + w + 6)}" y="{y0 + bar - 8}" class="axis">'
            f"{n} ({100 * running / total:.0f}% cum.)</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def control_chart(
    points: Sequence[tuple[float, float]],
    *,
    mean: float,
    ucl: float,
    lcl: float,
    lsl: float | None,
    usl: float | None,
    nok: Sequence[bool] = (),
    width: int = 900,
    height: int = 260,
) -> Markup:
    """An individuals chart: the values in time order, their mean, the control limits
    (mean +- 3 sigma, orange) and the specification limits (red, dashed)."""
    if not points:
        return Markup("")
    pts = _thin(points) if not nok else list(points)[-MAX_POINTS:]
    flags = list(nok)[-len(pts) :] if nok else [False] * len(pts)
    values = [v for _, v in pts] + [mean, ucl, lcl] + [v for v in (lsl, usl) if v is not None]
    lo, hi = _range(values)
    left, right = 56, 96
    x = _Scale(0, max(len(pts) - 1, 1), left, width - right)
    y = _Scale(lo, hi, height - 14, 10)
    parts = [
        f'<svg class="control" viewBox="0 0 {width} {height}" width="100%" role="img" '
        'aria-label="control chart">'
    ]

    def hline(v: float, colour: str, label: str, dash: str = "", given: bool = False) -> None:
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        shown = _label(v) if given else stat_text(v)  # a limit as configured; else computed
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{_n(y(v))}" y2="{_n(y(v))}" '
            f'stroke="{colour}"{dashed}/><text x="{width - right + 4}" y="{_n(y(v) + 4)}" '
            f'class="axis">{escape(label)} {escape(shown)}</text>'
        )

    hline(mean, "#455a64", "mean")
    hline(ucl, CONTROL, "UCL", "6 3")
    hline(lcl, CONTROL, "LCL", "6 3")
    if usl is not None:
        hline(usl, LIMIT, "USL", "2 3", given=True)
    if lsl is not None:
        hline(lsl, LIMIT, "LSL", "2 3", given=True)
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{_n(x(i))},{_n(y(v))}" for i, (_, v) in enumerate(pts)
    )
    parts.append(f'<path d="{path}" fill="none" stroke="#1565c0" stroke-width="1"/>')
    for i, ((_, v), bad) in enumerate(zip(pts, flags, strict=True)):
        outside = bad or v > ucl or v < lcl
        if outside or len(pts) <= 200:
            parts.append(
                f'<circle cx="{_n(x(i))}" cy="{_n(y(v))}" r="{3 if outside else 2}" '
                f'fill="{NOK if outside else "#1565c0"}"/>'
            )
    parts.append(
        f'<text x="2" y="14" class="axis">{escape(stat_text(hi))}</text>'
        f'<text x="2" y="{height - 14}" class="axis">{escape(stat_text(lo))}</text></svg>'
    )
    return Markup("".join(parts))
