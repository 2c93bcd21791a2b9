"""Hand-built inline SVG plots and the self-contained HTML page of a comparison report.

No plotting library and no script: each plot is a small ``<svg>`` string with a ``<title>`` for screen
readers, so the page is one file that works offline and prints. Colours: champion blue, challenger
orange, thresholds dashed grey.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

CHAMPION = "#1f77b4"
CHALLENGER = "#d95f02"
GREY = "#555"
W, H = 640, 250
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 44, 42


@dataclass(frozen=True)
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    color: str
    dashed: bool = False
    step: bool = False


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    a = abs(value)
    if a >= 1000 or a < 0.01:
        return f"{value:.3g}"
    return f"{value:.3g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Return round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks: list[float] = []
    t = start
    while t <= hi + step * 0.5 and len(ticks) < 20:
        ticks.append(round(t, 12))
        t += step
    return ticks


class _Frame:
    """Axes with linear (or log10) x and linear y mapped onto the plot area."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float, *, log_x: bool = False) -> None:
        self.log_x = log_x
        if log_x:
            x0, x1 = math.log10(max(x0, 1e-6)), math.log10(max(x1, 1e-6))
        if x1 <= x0:
            x1 = x0 + 1.0
        if y1 <= y0:
            y1 = y0 + (abs(y0) or 1.0)
        self.x0, self.x1, self.y0, self.y1 = x0, x1, y0, y1

    def x(self, v: float) -> float:
        if self.log_x:
            v = math.log10(max(v, 1e-6))
        return LEFT + (v - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def y(self, v: float) -> float:
        return H - BOTTOM - (v - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)


def _svg(title: str, body: list[str], legend: Sequence[tuple[str, str, bool]] = ()) -> str:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
        f'role="img" class="plot"><title>{escape(title)}</title>',
        f'<text x="{LEFT}" y="16" class="pt">{escape(title)}</text>',
        *body,
    ]
    x = float(LEFT)  # the legend: one row under the title, left to right
    for name, color, dashed in legend:
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(
            f'<line x1="{x:.0f}" y1="29" x2="{x + 16:.0f}" y2="29" stroke="{color}" stroke-width="2.5"{dash}/>'
            f'<text x="{x + 20:.0f}" y="33" class="lg">{escape(name)}</text>'
        )
        x += 6.2 * len(name) + 34
    parts.append("</svg>")
    return "".join(parts)


def _axes(
    frame: _Frame,
    x_label: str,
    y_label: str,
    *,
    x_ticks: Sequence[float] | None = None,
    y_ticks: Sequence[float] | None = None,
    x_tick_fmt: Any = _fmt,
) -> list[str]:
    out = [f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" class="bg"/>']
    for t in y_ticks or nice_ticks(frame.y0, frame.y1):
        if frame.y0 - 1e-12 <= t <= frame.y1 + 1e-12:
            y = frame.y(t)
            out.append(
                f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="tk" text-anchor="end">{_fmt(t)}</text>'
            )
    ticks = x_ticks
    if ticks is None:
        if frame.log_x:
            ticks = [10.0**k for k in range(math.floor(frame.x0), math.ceil(frame.x1) + 1)]
        else:
            ticks = nice_ticks(frame.x0, frame.x1)
    for t in ticks:
        x = frame.x(t)
        if LEFT - 0.5 <= x <= W - RIGHT + 0.5:
            out.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{H - BOTTOM}" y2="{H - BOTTOM + 4}" class="ax"/>'
                f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" class="tk" text-anchor="middle">'
                f"{escape(x_tick_fmt(t))}</text>"
            )
    out.append(
        f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{H - BOTTOM}" y2="{H - BOTTOM}" class="ax"/>'
        f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 6}" class="al" text-anchor="middle">{escape(x_label)}</text>'
        f'<text transform="translate(14 {(TOP + H - BOTTOM) / 2}) rotate(-90)" class="al" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    return out


@dataclass(frozen=True)
class Band:
    """A shaded interval around a series: ``lower``/``upper`` per x (None where there is none)."""

    name: str
    xs: Sequence[float]
    lower: Sequence[float | None]
    upper: Sequence[float | None]
    color: str


def line_plot(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    hlines: Sequence[tuple[float, str]] = (),
    vlines: Sequence[tuple[float, str]] = (),
    bands: Sequence[Band] = (),
    y_range: tuple[float, float] | None = None,
    x_range: tuple[float, float] | None = None,
    log_x: bool = False,
    x_tick_fmt: Any = None,
) -> str:
    """Plot lines (or step lines) sharing axes, with shaded bands, dashed horizontal reference lines
    (a margin) and dotted vertical markers (step boundaries). Every drawn series carries
    ``data-series`` (its name) so a test can find it."""
    xs = [x for s in series for x in s.xs]
    ys = [y for s in series for y in s.ys if y is not None and math.isfinite(y)] + [h for h, _ in hlines]
    ys += [v for b in bands for v in (*b.lower, *b.upper) if v is not None and math.isfinite(v)]
    if not xs or not [y for s in series for y in s.ys if y is not None and math.isfinite(y)]:
        return empty_plot(title, "no data yet")
    if y_range is None:
        lo, hi = min(ys), max(ys)
        pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
        y_range = (lo - pad, hi + pad)
    x0, x1 = x_range if x_range is not None else (min(xs), max(xs))
    frame = _Frame(x0, x1, *y_range, log_x=log_x)
    body = _axes(frame, x_label, y_label, **({"x_tick_fmt": x_tick_fmt} if x_tick_fmt else {}))
    for b in bands:
        upper = [
            (x, u)
            for x, lo_, u in zip(b.xs, b.lower, b.upper, strict=True)
            if lo_ is not None and u is not None
        ]
        lower = [
            (x, lo_)
            for x, lo_, u in zip(b.xs, b.lower, b.upper, strict=True)
            if lo_ is not None and u is not None
        ]
        if not upper:
            continue
        outline = [(frame.x(x), frame.y(_clip(v, *y_range))) for x, v in upper]
        outline += [(frame.x(x), frame.y(_clip(v, *y_range))) for x, v in reversed(lower)]
        if len(upper) == 1:  # one look: a vertical bar
            (x, u), (_, lo_) = upper[0], lower[0]
            body.append(
                f'<line x1="{frame.x(x):.1f}" x2="{frame.x(x):.1f}" y1="{frame.y(_clip(u, *y_range)):.1f}" '
                f'y2="{frame.y(_clip(lo_, *y_range)):.1f}" stroke="{b.color}" stroke-opacity="0.35" '
                f'stroke-width="8" data-series="{escape(b.name)}"/>'
            )
            continue
        body.append(
            f'<polygon points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in outline)}" fill="{b.color}" '
            f'fill-opacity="0.18" stroke="none" data-series="{escape(b.name)}"/>'
        )
    for value, label in vlines:
        x = frame.x(value)
        if LEFT - 0.5 <= x <= W - RIGHT + 0.5:
            body.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{H - BOTTOM}" stroke="{GREY}" '
                f'stroke-dasharray="2 3" stroke-width="1" class="step-mark"/>'
                f'<text x="{x + 3:.1f}" y="{TOP + 11}" class="tk">{escape(label)}</text>'
            )
    for k, (value, label) in enumerate(hlines):
        y = frame.y(value)
        # labels alternate right and left, so two close reference lines keep readable labels
        anchor, lx = ("end", W - RIGHT - 4) if k % 2 == 0 else ("start", LEFT + 4)
        body.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GREY}" '
            f'stroke-dasharray="6 4" stroke-width="1.5"/>'
            f'<text x="{lx}" y="{y - 4:.1f}" class="tk" text-anchor="{anchor}">{escape(label)}</text>'
        )
    for s in series:
        points: list[str] = []
        segments: list[list[str]] = []
        prev_y: float | None = None
        for x, y_value in zip(s.xs, s.ys, strict=True):
            if y_value is None or not math.isfinite(y_value):
                if points:
                    segments.append(points)
                points, prev_y = [], None
                continue
            px, py = frame.x(x), frame.y(y_value)
            if s.step and prev_y is not None:
                points.append(f"{px:.1f},{prev_y:.1f}")
            points.append(f"{px:.1f},{py:.1f}")
            prev_y = py
        if points:
            segments.append(points)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        name = escape(s.name)
        for pts in segments:
            if len(pts) == 1:
                x_, y_ = pts[0].split(",")
                body.append(f'<circle cx="{x_}" cy="{y_}" r="2.5" fill="{s.color}" data-series="{name}"/>')
            else:
                body.append(
                    f'<polyline points="{" ".join(pts)}" fill="none" stroke="{s.color}" '
                    f'stroke-width="2"{dash} data-series="{name}"/>'
                )
    legend = [(s.name, s.color, s.dashed) for s in series]
    return _svg(title, body, legend)


def _clip(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)


def heatmap(
    title: str,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    counts: Sequence[Sequence[int]],
    *,
    x_label: str,
    y_label: str,
    color: str,
    annotate: bool = True,
    bottom_up: bool = True,
) -> str:
    """Counts as a grid of shaded square cells (a confusion matrix, a binned predicted-vs-actual plot).

    ``bottom_up``: the first row at the bottom, so a binned scatter reads like a scatter (a confusion
    matrix reads top-down). Cells are shaded by their share of the largest cell; with ``annotate``
    each cell shows its count. The plot is as tall as its grid (at most 300 px of cells).
    """
    rows, cols = len(row_labels), len(col_labels)
    top = max((c for row in counts for c in row), default=0)
    if not rows or not cols or top == 0:
        return empty_plot(title, "no data yet")
    size = min((W - LEFT - RIGHT) / cols, 300 / rows, 70.0)
    height = TOP + BOTTOM + rows * size
    left = LEFT + (W - LEFT - RIGHT - size * cols) / 2
    body: list[str] = []
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            x = left + j * size
            y = height - BOTTOM - (i + 1) * size if bottom_up else TOP + i * size
            share = count / top
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{size:.1f}" height="{size:.1f}" fill="{color}" '
                f'fill-opacity="{0.06 + 0.94 * share:.3f}" stroke="#fff" data-series="{escape(title)}">'
                f"<title>{escape(y_label)} {escape(row_labels[i])}, {escape(x_label)} {escape(col_labels[j])}: "
                f"{count:,}</title></rect>"
            )
            if annotate:
                ink = "#fff" if share > 0.55 else "#222"
                body.append(
                    f'<text x="{x + size / 2:.1f}" y="{y + size / 2 + 4:.1f}" class="tk" text-anchor="middle" '
                    f'style="fill:{ink}">{count:,}</text>'
                )
    every_r = max(rows // 5, 1)
    for i, label in enumerate(row_labels):
        if i % every_r == 0:
            y = height - BOTTOM - (i + 0.5) * size if bottom_up else TOP + (i + 0.5) * size
            body.append(
                f'<text x="{left - 5:.1f}" y="{y + 4:.1f}" class="tk" text-anchor="end">{escape(label[:12])}</text>'
            )
    every_c = max(cols // 5, 1)
    for j, label in enumerate(col_labels):
        if j % every_c == 0:
            x = left + (j + 0.5) * size
            body.append(
                f'<text x="{x:.1f}" y="{height - BOTTOM + 14:.1f}" class="tk" text-anchor="middle">'
                f"{escape(label[:12])}</text>"
            )
    body.append(
        f'<text x="{(LEFT + W - RIGHT) / 2}" y="{height - 10:.1f}" class="al" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text transform="translate({left - 40:.1f} {(TOP + height - BOTTOM) / 2:.1f}) rotate(-90)" class="al" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    return _svg(title, body).replace(
        f'viewBox="0 0 {W} {H}" width="{W}" height="{H}"',
        f'viewBox="0 0 {W} {height:.0f}" width="{W}" height="{height:.0f}"',
        1,
    )


def bar_plot(
    title: str, labels: Sequence[str], groups: Sequence[tuple[str, Sequence[float], str]], *, y_label: str
) -> str:
    """Grouped vertical bars: one group per label, one bar per series."""
    values = [v for _, vs, _ in groups for v in vs]
    if not labels or not values:
        return empty_plot(title, "no data yet")
    frame = _Frame(0, len(labels), 0, max(values) * 1.1 or 1.0)
    body = _axes(frame, "", y_label, x_ticks=[])
    slot = (W - LEFT - RIGHT) / len(labels)
    bar = slot * 0.8 / len(groups)
    for i, label in enumerate(labels):
        for j, (_, vs, color) in enumerate(groups):
            x = LEFT + i * slot + slot * 0.1 + j * bar
            y = frame.y(vs[i])
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.92:.1f}" height="{H - BOTTOM - y:.1f}" '
                f'fill="{color}" data-series="{escape(groups[j][0])}"/>'
            )
        body.append(
            f'<text x="{LEFT + (i + 0.5) * slot:.1f}" y="{H - BOTTOM + 16}" class="tk" '
            f'text-anchor="middle">{escape(label[:14])}</text>'
        )
    return _svg(title, body, [(name, color, False) for name, _, color in groups])


def histogram_plot(
    title: str,
    edges: Sequence[float],
    groups: Sequence[tuple[str, Sequence[int], str]],
    *,
    x_label: str,
    log_x: bool = False,
) -> str:
    """Overlaid histograms as step lines of shares, on shared edges."""
    if len(edges) < 2:
        return empty_plot(title, "no data yet")
    series = []
    for name, counts, color in groups:
        total = sum(counts) or 1
        xs = list(edges)
        ys: list[float | None] = [c / total for c in counts]
        ys.append(counts[-1] / total if counts else 0.0)
        series.append(Series(name, xs, ys, color, step=True))
    top = max((y for s in series for y in s.ys if y is not None), default=1.0)
    return line_plot(
        title, series, x_label=x_label, y_label="share", y_range=(0.0, top * 1.1 or 1.0), log_x=log_x
    )


def forest_plot(
    title: str, items: Sequence[tuple[str, float | None, float | None, float | None, bool]], *, x_label: str
) -> str:
    """Horizontal intervals per segment around a zero line; flagged segments in the challenger colour."""
    shown = [it for it in items if it[1] is not None][:14]
    if not shown:
        return empty_plot(title, "no segment has data yet")
    lows = [it[2] if it[2] is not None else it[1] for it in shown]
    highs = [it[3] if it[3] is not None else it[1] for it in shown]
    lo, hi = min([0.0, *[v for v in lows if v is not None]]), max([0.0, *[v for v in highs if v is not None]])
    pad = (hi - lo) * 0.1 or 0.01
    height = TOP + BOTTOM + 22 * len(shown)
    frame = _Frame(lo - pad, hi + pad, 0, 1)
    body = [
        f'<rect x="{LEFT + 90}" y="{TOP}" width="{W - LEFT - 90 - RIGHT}" height="{height - TOP - BOTTOM}" '
        f'class="bg"/>'
    ]
    scale_left = LEFT + 90

    def px(v: float) -> float:
        return scale_left + (v - frame.x0) / (frame.x1 - frame.x0) * (W - scale_left - RIGHT)

    for t in nice_ticks(frame.x0, frame.x1):
        if frame.x0 <= t <= frame.x1:
            body.append(
                f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{TOP}" y2="{height - BOTTOM}" class="grid"/>'
                f'<text x="{px(t):.1f}" y="{height - BOTTOM + 16}" class="tk" text-anchor="middle">'
                f"{_fmt(t)}</text>"
            )
    body.append(
        f'<line x1="{px(0):.1f}" x2="{px(0):.1f}" y1="{TOP}" y2="{height - BOTTOM}" stroke="{GREY}" '
        f'stroke-dasharray="6 4"/>'
    )
    for i, (label, effect, low, high, flagged) in enumerate(shown):
        y = TOP + 11 + 22 * i
        color = CHALLENGER if flagged else CHAMPION
        body.append(
            f'<text x="{scale_left - 6}" y="{y + 4}" class="tk" text-anchor="end">{escape(label[:22])}</text>'
        )
        if low is not None and high is not None:
            body.append(
                f'<line x1="{px(low):.1f}" x2="{px(high):.1f}" y1="{y}" y2="{y}" stroke="{color}" '
                f'stroke-width="2"/>'
            )
        assert effect is not None
        body.append(
            f'<circle cx="{px(effect):.1f}" cy="{y}" r="4" fill="{color}" data-series="{escape(label)}"/>'
        )
    body.append(
        f'<text x="{(scale_left + W - RIGHT) / 2}" y="{height - 6}" class="al" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    svg = _svg(title, body, [("ok", CHAMPION, False), ("worse", CHALLENGER, False)])
    return svg.replace(
        f'viewBox="0 0 {W} {H}" width="{W}" height="{H}"',
        f'viewBox="0 0 {W} {height}" width="{W}" height="{height}"',
        1,
    )


def empty_plot(title: str, message: str) -> str:
    body = [
        f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" class="bg"/>',
        f'<text x="{W / 2}" y="{H / 2}" class="al" text-anchor="middle">{escape(message)}</text>',
    ]
    return _svg(title, body)


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------

CSS = """
:root{--fg:#1d1d1f;--muted:#5f6368;--line:#d9dce1;--soft:#f5f6f8;--pass:#1e7f3c;--fail:#b3261e;--warn:#8a5a00;
--champion:#1f77b4;--challenger:#d95f02;--s1:12px;--s2:14px;--s3:16px;--s4:20px;--s5:24px}
*{box-sizing:border-box}
body{font:var(--s2)/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0 auto;
max-width:1120px;padding:24px 28px}
h1{font-size:var(--s5);line-height:1.25;margin:0 0 6px}
h2{font-size:var(--s4);margin:32px 0 10px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:var(--s3);margin:18px 0 6px}
p{margin:6px 0 10px;max-width:80ch}
.muted{color:var(--muted)}small,.small{font-size:var(--s1)}
.verdict{font-size:var(--s3);line-height:1.45;max-width:none;margin:12px 0;padding:12px 16px;border-left:6px solid var(--muted);
background:var(--soft);border-radius:4px}
.verdict.v-promoted{border-color:var(--pass)}.verdict.v-rolled_back,.verdict.v-aborted{border-color:var(--fail)}
.verdict.v-paused{border-color:var(--warn)}.verdict.v-shadowing,.verdict.v-progressing,.verdict.v-watching{border-color:var(--champion)}
table{border-collapse:collapse;margin:6px 0 14px;width:100%}table.compact{width:auto;min-width:360px}
th,td{border-bottom:1px solid var(--line);padding:5px 10px;text-align:left;vertical-align:top}
th{font-weight:600;background:var(--soft);font-size:var(--s1);white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.why td{border-bottom:1px solid var(--line);padding-top:0;color:var(--muted);font-size:var(--s1)}
tr.has-why td{border-bottom:none}
dl.legend{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:var(--s1);color:var(--muted);margin:4px 0 12px}
dl.legend dt{font-weight:600;color:var(--fg)}dl.legend dd{margin:0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 12px;min-width:140px}
.card b{display:block;font-size:var(--s4);font-variant-numeric:tabular-nums}
.o-pass{color:var(--pass);font-weight:600}.o-fail{color:var(--fail);font-weight:600}
.o-inconclusive{color:var(--warn);font-weight:600}.o-no-data,.o-unknown{color:var(--muted)}
.st-passed,.st-promoted{color:var(--pass);font-weight:600}.st-rolled,.st-aborted{color:var(--fail);font-weight:600}
.st-in,.st-paused{color:var(--warn);font-weight:600}.st-not,.st-skipped{color:var(--muted)}
.flag-worse{color:var(--fail);font-weight:600}
svg.plot{max-width:100%;height:auto;display:block;margin:6px 0 14px}
svg .bg{fill:#fafbfc;stroke:var(--line)}svg .grid{stroke:#e8eaed}svg .ax{stroke:#777}
svg .tk{font-size:11px;fill:#444}svg .al{font-size:12px;fill:#333}svg .pt{font-size:13px;font-weight:600;fill:#222}
svg .lg{font-size:11px;fill:#333}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:0 20px}
details{margin:8px 0}summary{cursor:pointer;color:var(--muted)}
section{break-inside:auto}
@media print{body{max-width:none;padding:0;font-size:11px}h2{break-after:avoid}.verdict{background:none}
svg.plot,tr,.card{break-inside:avoid}th{background:none}a{color:inherit;text-decoration:none}
details>*{display:block}.grid2{grid-template-columns:1fr 1fr}}
"""


def _v(value: Any, fmt: str = "{:.4g}") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return fmt.format(value)
    return escape(str(value))


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:.2%}"


def _ci(interval: Any, pct: bool = False) -> str:
    if not interval or interval[0] is None or interval[1] is None:
        return ""
    f = _pct if pct else (lambda x: f"{x:.4g}")
    return f" <span class=muted>[{f(interval[0])}, {f(interval[1])}]</span>"


def _table(
    head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (), *, compact: bool = False
) -> str:
    """A table; numeric columns right-aligned (headers too). ``compact``: as wide as its content."""
    out = [
        f"<table{' class=compact' if compact else ''}><thead><tr>",
        *(f"<th{' class=n' if i in numeric else ''}>{escape(h)}</th>" for i, h in enumerate(head)),
        "</tr></thead><tbody>",
    ]
    for row in rows:
        out.append(
            "<tr>"
            + "".join(f"<td{' class=n' if i in numeric else ''}>{c}</td>" for i, c in enumerate(row))
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _reproducibility_section(rep: Mapping[str, Any]) -> str:
    """Parity verdict and first mismatches, environment differences, online vs offline, input drift."""
    out = [
        f"<section><h2>Reproducibility</h2><p><b>{escape(rep['status'].replace('_', ' '))}</b>: "
        f"{escape(rep['message'])}</p>"
    ]
    parity = rep.get("parity") or {}
    if parity.get("mismatches"):
        out.append(
            "<h3>Parity: first differing golden rows</h3>"
            + _table(
                ["row", "output", "research", "served", "rel. error", "inputs"],
                [
                    [
                        str(m["row"]),
                        escape(str(m["output"])),
                        escape(str(m["expected"])),
                        escape(str(m["actual"])),
                        "" if m.get("relative_error") is None else f"{m['relative_error']:.3g}",
                        escape(", ".join(f"{k}={v!r}" for k, v in (m.get("inputs") or {}).items())),
                    ]
                    for m in parity["mismatches"][:10]
                ],
                numeric=(0, 4),
            )
        )
    differences = (rep.get("environment") or {}).get("differences") or []
    if differences:
        out.append(
            "<h3>Environment: research vs serving</h3>"
            + _table(
                ["package", "research", "serving"],
                [
                    [escape(str(d["key"])), escape(str(d["research"])), escape(str(d["serving"]))]
                    for d in differences
                ],
            )
        )
    arms = rep.get("online_vs_offline") or []
    if arms:
        out.append(
            "<h3>Online vs offline</h3>"
            + _table(
                [
                    "arm",
                    "version",
                    "metric",
                    "offline",
                    "online",
                    "difference",
                    "outcome",
                    "labels",
                    "labels still needed",
                ],
                [
                    [
                        escape(a["arm"]),
                        escape(a["version"]),
                        escape(a["metric"]),
                        _num(a.get("offline")),
                        _num(a.get("online")),
                        _num(a.get("difference")) + _ci(a.get("interval")),
                        escape(a["outcome"]),
                        str(a["labels"]),
                        "" if a.get("labels_needed") is None else str(a["labels_needed"]),
                    ]
                    for a in arms
                ],
                numeric=(3, 4, 5, 7, 8),
            )
        )
    drift = rep.get("input_drift") or {}
    if drift.get("features"):
        out.append(
            f"<h3>Input drift against the profile of {escape(str(drift.get('against')))} "
            f"({drift.get('live_rows')} live rows)</h3>"
            + _table(
                [
                    "feature",
                    "status",
                    "missing (profile → live)",
                    "out of range",
                    "unseen",
                    "PSI",
                    "PSI noise threshold",
                    "why",
                ],
                [
                    [
                        escape(f["feature"]),
                        escape(f["status"]),
                        f"{_pct_or_blank(f.get('missing_rate_profile'))} → {_pct_or_blank(f.get('missing_rate_live'))}",
                        _pct_or_blank(f.get("out_of_range_share")),
                        _pct_or_blank(f.get("unseen_share")),
                        _num(f.get("psi")),
                        _num(f.get("psi_threshold")),
                        escape("; ".join(f.get("reasons") or [])),
                    ]
                    for f in drift["features"]
                ],
                numeric=(3, 4, 5, 6),
            )
        )
    out.append("</section>")
    return "".join(out)


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.4g}"


def _pct_or_blank(value: Any) -> str:
    return "" if value is None else f"{value:.1%}"


def _time_axis(r: Mapping[str, Any]) -> tuple[float, str]:
    """The time unit of every over-time plot, from the rollout's length: (seconds per unit, axis label)."""
    series = r["traffic"]["series"]
    length = (series[-1]["t"] + (r["traffic"]["bucket_seconds"] or 0.0)) if series else 0.0
    if length <= 600:
        return 1.0, "seconds since the first request"
    if length <= 10 * 3600:
        return 60.0, "minutes since the first request"
    if length <= 10 * 86400:
        return 3600.0, "hours since the first request"
    return 86400.0, "days since the first request"


def _x_time(r: Mapping[str, Any], seconds: Sequence[float]) -> list[float]:
    unit, _ = _time_axis(r)
    return [t / unit for t in seconds]


def _x_buckets(r: Mapping[str, Any], series: Sequence[Mapping[str, Any]], bucket: float) -> list[float]:
    return _x_time(r, [p["t"] + bucket / 2 for p in series])


def _since_start(r: Mapping[str, Any], iso: str | None) -> float | None:
    """Seconds from the traffic plot's origin to an instant (None when either is unknown)."""
    start, at = _epoch(r["traffic"]["start"]), _epoch(iso)
    return None if start is None or at is None else at - start


def _step_marks(r: Mapping[str, Any]) -> list[tuple[float, str]]:
    """Vertical markers where each step after the first began (its first request), in plot units."""
    unit, _ = _time_axis(r)
    marks = []
    for st in r.get("plan") or []:
        if st["step"] == 0 or st["first_at"] is None:
            continue
        t = _since_start(r, st["first_at"])
        if t is not None:
            marks.append((t / unit, f"step {st['step'] + 1}"))
    return marks


def _x_range(r: Mapping[str, Any]) -> tuple[float, float] | None:
    series = r["traffic"]["series"]
    if not series:
        return None
    unit, _ = _time_axis(r)
    return 0.0, (series[-1]["t"] + (r["traffic"]["bucket_seconds"] or 0.0)) / unit


def html_page(r: Mapping[str, Any], *, quality: Sequence[str] = ()) -> str:
    """Render a report dict (see controller.reports.build.REPORT_SCHEMA) as one self-contained HTML page.

    The verdict sentence first, then the plan with each step's outcome, then the evidence: gates with
    their plots, quality, traffic, arms, outputs, labels, segments, timeline, reproducibility.
    ``quality``: the quality block's HTML (controller.reports.quality.html_section), placed after the
    gates; passed in so that this module knows nothing of the quality section.
    """
    ro = r["rollout"]
    dep = r["deployment"]["name"]
    title = f"mlcanary report: {dep}, rollout {ro['id']}"
    arms = r["arms"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(dep)}: {escape(ro['challenger']['ref'])} against {escape(ro['champion']['ref'])}</h1>",
        f'<p class="verdict v-{escape(ro["phase"])}" id="verdict">{escape(r["verdict"])}</p>',
        f"<div class='muted small'>Rollout {ro['id']} · {escape(ro['mode'].replace('_', ' '))} · phase "
        f"<b>{escape(ro['phase'].replace('_', ' '))}</b> · challenger weight {ro['canary_weight']:g}% · shadow rate "
        f"{ro['shadow_rate']:g} · started {escape(_clock(ro['created_at']))} by {escape(ro['created_by'])}"
        f"{' · ended ' + escape(_clock(ro['ended_at'])) if ro['ended_at'] else ''} · "
        f"generated {escape(_clock(r['generated_at']))}</div>",
    ]
    cards = [
        ("requests", f"{r['traffic']['rows']:,}"),
        ("shadow coverage", _pct(r["shadow"]["coverage"])),
        ("champion errors", _pct(arms["champion"]["error_rate"])),
        ("challenger errors", _pct(arms["challenger"]["error_rate"])),
    ]
    if r["agreement"]:
        cards.append(("agreement", _pct(r["agreement"]["share"])))
    if r["labels"]["n"]:
        cards.append(("labelled pairs", f"{r['labels']['n']:,}"))
    parts.append(
        '<div class="cards">'
        + "".join(f"<div class=card><span class=muted>{k}</span><b>{v}</b></div>" for k, v in cards)
        + "</div>"
    )
    parts += _plan_section(r)
    parts += _gates_section(r)
    parts += list(quality)
    parts += _traffic_section(r)
    parts += _arms_section(r)
    parts += _outputs_section(r)
    parts += _labels_section(r)
    parts += _segments_section(r)
    parts += _timeline_section(r)
    parts.append(_reproducibility_section(r["reproducibility"]))
    ss = r["sample_size"]
    parts.append(
        f"<section><h2>Sample size still needed</h2><p>{escape(ss['message'])}</p>"
        f"{'<p class=muted>' + escape(ss['method']) + '</p>' if ss.get('method') else ''}</section>"
    )
    if r["notes"]:
        parts.append(
            "<section><h2>Notes</h2><ul>"
            + "".join(f"<li>{escape(n)}</li>" for n in r["notes"])
            + "</ul></section>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _clock(iso: Any) -> str:
    """An ISO instant as "2025-03-01 12:04:05 UTC" (no microseconds, no offset noise)."""
    if not iso:
        return "–"
    try:
        at = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    return at.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if at.utcoffset() is not None else "")


def _status_class(status: str) -> str:
    return "st-" + status.split(" ", 1)[0]


def _plan_section(r: Mapping[str, Any]) -> list[str]:
    plan = r.get("plan") or []
    if not plan:
        return []
    out = ["<section><h2>Plan</h2>"]
    head = ["step", "stage", "status", "requests", "pairs", "last evaluation", "from", "to"]
    body = ["<table><thead><tr>"]
    body += [f"<th{' class=n' if i in (0, 3, 4) else ''}>{escape(h)}</th>" for i, h in enumerate(head)]
    body.append("</tr></thead><tbody>")
    for st in plan:
        ended = st.get("ended_by")
        outcome = st["outcome"]
        cells = [
            f"<td class=n>{st['step'] + 1}</td>",
            f"<td>{escape(st['name'])}</td>",
            f"<td><span class='{_status_class(st['status'])}'>{escape(st['status'])}</span></td>",
            f"<td class=n>{st['requests']:,}</td>",
            f"<td class=n>{st['pairs']:,}</td>",
            f"<td>{'–' if outcome is None else f'<span class=o-{outcome}>{escape(outcome)}</span>'}</td>",
            f"<td>{escape(_clock(st['first_at']))}</td>",
            f"<td>{escape(_clock(st['last_at']))}</td>",
        ]
        body.append(f"<tr{' class=has-why' if ended else ''}>" + "".join(cells) + "</tr>")
        if ended:
            who = "" if ended["actor"] == "controller" else f" by {ended['actor']}"
            body.append(
                f"<tr class=why><td></td><td colspan={len(head) - 1}>ended {escape(_clock(ended['at']))}{escape(who)}: "
                f"{escape(ended['message'])}</td></tr>"
            )
    body.append("</tbody></table>")
    out.append("".join(body))
    out.append("</section>")
    return out


GATE_LEGEND = (
    ("effect", "what was observed, challenger against champion, in the gate's own unit (a difference of "
     "shares for accuracy and error rate, the agreement share, the relative change of MAE, the ratio of p99 "
     "latencies)"),
    ("always-valid interval", "where the true effect lies with confidence 1 − α (α from the policy), valid "
     "however often the controller looks: a confidence sequence, not a fixed-n interval"),
    ("margin", "how much worse the challenger may be and still pass (non-inferiority margin), from the policy"),
    ("n", "the pairs or requests (champion / challenger) the gate used at this evaluation"),
    ("p", "the harm p-value (always-valid, Holm-adjusted across the gates that can roll back)"),
)  # fmt: skip


def _gates_section(r: Mapping[str, Any]) -> list[str]:
    g = r["gates"]
    out = ["<section><h2>Gates</h2>"]
    if not g["latest"]:
        out.append("<p class=muted>The controller has not evaluated this rollout yet.</p></section>")
        return out
    latest = g["latest"]
    out.append(
        f"<p>Latest evaluation {escape(_clock(latest['at']))} (step {latest['step'] + 1}): "
        f"<span class='o-{latest['outcome']}'>{escape(latest['outcome'])}</span>"
        f"{' → ' + escape(str(latest['decision'])) if latest.get('decision') else ''}. "
        f"{g['analyses']:,} evaluations in all.</p>"
    )
    head = ["gate", "role", "outcome", "effect", "always-valid interval", "margin", "n", "p"]
    numeric = (3, 4, 5, 6, 7)
    body = ["<table class=gates><thead><tr>"]
    body += [f"<th{' class=n' if i in numeric else ''}>{escape(h)}</th>" for i, h in enumerate(head)]
    body.append("</tr></thead><tbody>")
    for v in latest["verdicts"]:
        iv = v.get("interval")
        interval = "–" if not iv or iv[0] is None or iv[1] is None else f"{_sig(iv[0])} to {_sig(iv[1])}"
        cells = [
            f"<td><b>{escape(v['gate'])}</b></td>",
            f"<td>{escape(v['role'])}</td>",
            f"<td><span class='o-{v['outcome']}'>{escape(v['outcome'])}</span></td>",
            f"<td class=n>{_sig(v['effect'])}</td>",
            f"<td class=n>{interval}</td>",
            f"<td class=n>{_sig(v['margin'])}</td>",
            f"<td class=n>{_count(v['n_champion'])} / {_count(v['n_challenger'])}</td>",
            f"<td class=n>{_p(v.get('p_value'))}</td>",
        ]
        body.append("<tr class=has-why>" + "".join(cells) + "</tr>")
        body.append(f"<tr class=why><td></td><td colspan={len(head) - 1}>{escape(v['reason'])}</td></tr>")
    body.append("</tbody></table>")
    out.append("".join(body))
    out.append(
        "<dl class=legend>"
        + "".join(f"<dt>{escape(k)}</dt><dd>{escape(d)}</dd>" for k, d in GATE_LEGEND)
        + "</dl>"
    )
    out += _gate_plots(r)
    out += _evaluations(g)
    out.append("</section>")
    return out


def _sig(value: Any) -> str:
    """A number with sensible precision: 3 significant digits, no exponent for everyday sizes."""
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return "–"
    a = abs(value)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 0.001:
        return f"{value:.3g}"
    return f"{value:.2e}"


def _p(value: Any) -> str:
    return "–" if value is None else f"{value:.2g}"


def _count(value: Any) -> str:
    return "–" if value is None else f"{int(value):,}"


def _gate_plots(r: Mapping[str, Any]) -> list[str]:
    """Two plots per gate with an effect: each arm's figure over time (when the gate compares arms), and
    the paired difference with its always-valid band and its margin; step boundaries marked on both."""
    g = r["gates"]
    unit, x_label = _time_axis(r)
    histories: dict[str, list[tuple[float, Mapping[str, Any], Mapping[str, Any] | None]]] = {}
    for k, a in enumerate(g["series"]):
        t = _since_start(r, a["at"])
        x = t / unit if t is not None else float(k)
        arms = a.get("arms") or {}
        for v in a["verdicts"]:
            if (
                v["effect"] is not None or v["gate"] in arms
            ):  # arms have figures before the gate's burn-in ends
                histories.setdefault(v["gate"], []).append((x, v, arms.get(v["gate"])))
    rows = []
    marks = _step_marks(r)
    for gate, points in histories.items():
        xs = [x for x, _, _ in points]
        plots = []
        if any(arm is not None for _, _, arm in points):
            plots.append(
                line_plot(
                    f"{gate} per arm over time",
                    [
                        Series(arm, xs, [p[arm] if p else None for _, _, p in points], color)
                        for arm, color in (("champion", CHAMPION), ("challenger", CHALLENGER))
                    ],
                    x_label=x_label,
                    y_label=_arm_unit(gate),
                    vlines=marks,
                    x_range=_x_range(r),
                )
            )
        effect = [v["effect"] for _, v, _ in points]
        lower = [v["interval"][0] if v.get("interval") else None for _, v, _ in points]
        upper = [v["interval"][1] if v.get("interval") else None for _, v, _ in points]
        last = points[-1][1]
        hl = []
        margin_at = _margin_line(last)
        if margin_at is not None:
            hl.append((margin_at, f"margin {_sig(last['margin'])}"))
        same = _no_difference(gate)
        if same is not None:
            hl.append((same, "no difference"))
        if all(e is None for e in effect):  # still in burn-in: only the arms have figures yet
            rows.append(f'<div class=grid2 data-gate="{escape(gate)}">{"".join(plots)}</div>')
            continue
        plots.append(
            line_plot(
                f"{gate}: effect over time with its always-valid band",
                [Series("effect", xs, effect, CHALLENGER)],
                bands=[Band("always-valid interval", xs, lower, upper, CHALLENGER)],
                x_label=x_label,
                y_label=_gate_unit(gate),
                hlines=hl,
                vlines=marks,
                x_range=_x_range(r),
            )
        )
        rows.append(f'<div class=grid2 data-gate="{escape(gate)}">{"".join(plots)}</div>')
    if not rows:
        return []
    return [
        "<h3>Each gate over time</h3><p class=muted>Left: each arm's figure at every look of the controller "
        "(gates that compare the arms). Right: what the gate judged, challenger against champion, with its "
        "always-valid band and the margin it is held against. Dotted lines: step boundaries.</p>",
        *rows,
    ]


def _margin_line(v: Mapping[str, Any]) -> float | None:
    """Where a gate's margin sits on its effect axis (see controller.core.judge and gate_threshold)."""
    if v["gate"] in ("latency_p99", "latency_p99_slo"):
        return v["margin"]  # the effect is the p99 ratio (or ms); the threshold is the tail share's
    return v["threshold"] if v["threshold"] is not None else v["margin"]


def _no_difference(gate: str) -> float | None:
    """Where "the arms are equal" sits on a gate's effect axis (None for one-arm figures)."""
    if gate == "latency_p99":
        return 1.0
    if gate in ("agreement", "agreement_proxy", "drift", "coverage", "latency_p99_slo", "srm"):
        return None
    return 0.0


def _arm_unit(gate: str) -> str:
    return {
        "accuracy": "accuracy",
        "error_rate": "error rate",
        "regression": "mean absolute error",
        "latency_p99": "p99 latency (ms)",
    }.get(gate, gate)


def _gate_unit(gate: str) -> str:
    return {
        "accuracy": "accuracy difference",
        "error_rate": "error rate difference",
        "agreement": "agreement share",
        "agreement_proxy": "agreement share",
        "regression": "relative MAE change",
        "latency_p99": "p99 ratio",
        "drift": "PSI",
    }.get(gate, "effect")


def _evaluations(g: Mapping[str, Any]) -> list[str]:
    """Every evaluation: the ones that changed an outcome in a table, all of them behind a details element."""
    series = g["series"]

    def key(a: Mapping[str, Any]) -> tuple[Any, ...]:
        return (a["step"], a["outcome"], tuple((v["gate"], v["outcome"]) for v in a["verdicts"]))

    changes, previous = [], None
    for a in series:
        if key(a) != previous:
            changes.append(a)
        previous = key(a)

    def span(outcome: str) -> str:
        return f"<span class='o-{escape(outcome)}'>{escape(outcome)}</span>"

    def gates(a: Mapping[str, Any], before: Mapping[str, Any] | None) -> str:
        """The gates whose outcome changed since ``before`` (all of them, by outcome, for the first)."""
        if before is None:
            by: dict[str, list[str]] = {}
            for v in a["verdicts"]:
                by.setdefault(v["outcome"], []).append(escape(v["gate"]))
            return "; ".join(f"{span(o)}: {', '.join(names)}" for o, names in by.items())
        old = {v["gate"]: v["outcome"] for v in before["verdicts"]}
        changed = [
            f"{escape(v['gate'])} {span(old[v['gate']]) if v['gate'] in old else 'new'} → {span(v['outcome'])}"
            for v in a["verdicts"]
            if old.get(v["gate"]) != v["outcome"]
        ]
        return ", ".join(changed) or "<span class=muted>no gate changed</span>"

    def rows(items: Sequence[Mapping[str, Any]]) -> list[list[str]]:
        out, before = [], None
        for a in items:
            out.append(
                [
                    escape(_clock(a["at"])),
                    str(a["step"] + 1),
                    span(a["outcome"]),
                    escape(str(a.get("decision") or "")),
                    gates(a, before),
                ]
            )
            before = a
        return out

    head = ["at", "step", "outcome", "decision", "gates that changed"]
    out = [
        f"<h3>Evaluations that changed an outcome</h3><p class=muted>{len(changes):,} of {len(series):,} "
        "evaluations changed the step, the combined outcome or a gate's outcome.</p>",
        _table(head, rows(changes), numeric=(1,)),
    ]
    if len(series) > len(changes):
        shown = series[-500:]
        out.append(
            f"<details><summary>All {len(series):,} evaluations"
            + (f" (the latest {len(shown):,})" if len(shown) < len(series) else "")
            + "</summary>"
            + _table(head, rows(shown), numeric=(1,))
            + "</details>"
        )
    return out


def _epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


def _traffic_section(r: Mapping[str, Any]) -> list[str]:
    t = r["traffic"]
    out = ["<section><h2>Traffic</h2>"]
    rows = [
        [
            str(s["step"] + 1) if s["step"] is not None else "–",
            f"{s['rows']:,}",
            f"{s['served_champion']:,}",
            f"{s['served_challenger']:,}",
            escape(_clock(s["first_at"])),
            escape(_clock(s["last_at"])),
        ]
        for s in t["steps"]
    ]
    out.append(
        _table(
            ["step", "requests", "served by champion", "served by challenger", "first", "last"],
            rows,
            numeric=(0, 1, 2, 3),
        )
    )
    series = t["series"]
    if series:
        bucket = t["bucket_seconds"]
        xs = _x_buckets(r, series, bucket)
        _, x_label = _time_axis(r)
        share = [100.0 * p["served_challenger"] / p["rows"] if p["rows"] else None for p in series]
        coverage = [100.0 * p["pairs"] / p["rows"] if p["rows"] else None for p in series]
        marks = _step_marks(r)
        rate1 = [100.0 * p["champion_errors"] / p["rows"] if p["rows"] else None for p in series]
        rate2 = [100.0 * p["challenger_errors"] / p["rows"] if p["rows"] else None for p in series]
        out.append("<div class=grid2>")
        out.append(
            line_plot(
                "Traffic share and shadow coverage over time",
                [
                    Series("answered by the challenger", xs, share, CHALLENGER),
                    Series("shadow coverage (both arms answered)", xs, coverage, CHAMPION, dashed=True),
                ],
                x_label=x_label,
                y_label="% of requests",
                y_range=(0.0, 105.0),
                vlines=marks,
                x_range=_x_range(r),
            )
        )
        top = max([v for v in (*rate1, *rate2) if v is not None] + [1.0])
        out.append(
            line_plot(
                "Error rate per arm over time",
                [Series("champion", xs, rate1, CHAMPION), Series("challenger", xs, rate2, CHALLENGER)],
                x_label=x_label,
                y_label="% of requests failed",
                y_range=(0.0, top * 1.15),
                vlines=marks,
                x_range=_x_range(r),
            )
        )
        out.append("</div>")
        out.append(
            f"<p class=muted>One point per {_duration(bucket)} of traffic; dotted lines mark where a step began.</p>"
        )
    out.append("</section>")
    return out


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "bucket"
    for size, name in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            k = seconds / size
            return f"{k:g} {name}{'s' if k != 1 else ''}" if k != 1 else name
    return f"{seconds:g} s"


def _arms_section(r: Mapping[str, Any]) -> list[str]:
    arms = r["arms"]
    sh = r["shadow"]
    out = ["<section><h2>Arms</h2>"]
    rows = []
    for name in ("champion", "challenger"):
        a = arms[name]
        lat = a["latency_ms"]
        rows.append(
            [
                f"{name} <span class=muted>{escape(a['version']['ref'])}</span>",
                f"{a['requests']:,}",
                f"{a['served']:,}",
                f"{a['errors']:,}",
                _pct(a["error_rate"]) + _ci(a["error_interval"], True),
                _v(lat["p50"], "{:.3g}"),
                _v(lat["p90"], "{:.3g}"),
                _v(lat["p99"], "{:.3g}"),
            ]
        )
    out.append(
        _table(
            ["arm", "requests", "served", "errors", "error rate", "p50 ms", "p90 ms", "p99 ms"],
            rows,
            numeric=(1, 2, 3, 5, 6, 7),
        )
    )
    out.append(
        f"<p>Shadow coverage: {_pct(sh['coverage'])} of {sh['rows']:,} requests have both outputs "
        f"({sh['pairs']:,} pairs). The other arm was not asked on {sh['not_scored']:,}. The router skipped "
        f"it (coverage lost, not an error) on {sh['dropped']:,} for a full queue, {sh['expired']:,} expired "
        f"in the queue, {sh['shed']:,} shed under load and {sh['cancelled']:,} at shutdown; the arm itself "
        f"was too slow on {sh['timeouts']:,} and failed otherwise on {sh['other_errors']:,}. Mean queue wait "
        + ("-" if sh.get("queue_wait_ms") is None else f"{sh['queue_wait_ms']:.1f} ms")
        + " (the router's health, not the arm's latency).</p>"
    )
    h1, h2 = arms["champion"]["latency_ms"]["histogram"], arms["challenger"]["latency_ms"]["histogram"]
    edges = sorted(set(h1["edges_ms"]) | set(h2["edges_ms"]))
    if len(edges) >= 2:

        def regrid(h: Mapping[str, Any]) -> list[int]:
            index = {e: i for i, e in enumerate(edges)}
            counts = [0] * (len(edges) - 1)
            for e, c in zip(h["edges_ms"], h["counts"], strict=False):
                counts[index[e]] += c
            return counts

        out.append("<div class=grid2>")
        out.append(
            histogram_plot(
                "Latency distribution per arm",
                edges,
                [("champion", regrid(h1), CHAMPION), ("challenger", regrid(h2), CHALLENGER)],
                x_label="latency (ms, log scale)",
                log_x=True,
            )
        )
        out.append(_latency_over_time(r))
        out.append("</div>")
    out.append("</section>")
    return out


def _latency_over_time(r: Mapping[str, Any]) -> str:
    ls = r.get("latency_series") or {}
    points = ls.get("points") or []
    _, x_label = _time_axis(r)
    width = ls.get("bucket_seconds") or 0.0
    xs = _x_time(r, [p["t"] + width / 2 for p in points])
    return line_plot(
        "p99 latency per arm over time" + (" (sampled)" if ls.get("sampled") else ""),
        [
            Series("champion p99", xs, [p["champion"]["p99"] for p in points], CHAMPION),
            Series("challenger p99", xs, [p["challenger"]["p99"] for p in points], CHALLENGER),
            Series("champion p50", xs, [p["champion"]["p50"] for p in points], CHAMPION, dashed=True),
            Series("challenger p50", xs, [p["challenger"]["p50"] for p in points], CHALLENGER, dashed=True),
        ],
        x_label=x_label,
        y_label="ms",
        vlines=_step_marks(r),
        x_range=_x_range(r),
    )


def _outputs_section(r: Mapping[str, Any]) -> list[str]:
    out = ["<section><h2>Outputs and drift</h2>"]
    plots: list[str] = []
    ag = r["agreement"]
    if ag:
        out.append(
            f"<p>Agreement: {_pct(ag['share'])}{_ci(ag['interval'], True)} of {ag['n']:,} pairs; Cohen's "
            f"kappa {_v(ag['kappa'])}.</p>"
        )
        labels = ag["table"]["labels"]
        if labels:
            head = ["champion \\ challenger", *labels]
            rows = [
                [f"<b>{escape(lbl)}</b>", *(f"{c:,}" for c in row)]
                for lbl, row in zip(labels, ag["table"]["counts"], strict=True)
            ]
            out.append(_table(head, rows, numeric=tuple(range(1, len(labels) + 1)), compact=True))
        series = r["traffic"]["series"]
        if series:
            xs = _x_buckets(r, series, r["traffic"]["bucket_seconds"])
            ys = [p["agree"] / p["pairs"] if p["pairs"] else None for p in series]
            plots.append(
                line_plot(
                    "Agreement over time",
                    [Series("agreement", xs, ys, CHAMPION)],
                    x_label=_time_axis(r)[1],
                    y_label="share identical",
                    y_range=(min([y for y in ys if y is not None] + [0.8]) - 0.02, 1.01),
                    vlines=_step_marks(r),
                    x_range=_x_range(r),
                )
            )
    diff = r["differences"]
    if diff:
        out.append(
            f"<p>Differences ({escape(diff['of'])}) over {diff['n']:,} pairs: mean {_v(diff['mean'])}, "
            f"sd {_v(diff['sd'])}, mean absolute {_v(diff['mean_abs'])}.</p>"
        )
    rows = []
    for d in r["distributions"]:
        psi, js, ks = d["psi"] or {}, d["jensen_shannon"] or {}, d["ks"]
        rows.append(
            [
                escape(d["kind"]),
                _v(psi.get("value")),
                _v(psi.get("threshold")),
                "yes" if psi.get("exceeds_noise") else "no",
                _v(js.get("divergence")),
                (
                    f"D = {ks['statistic']:.3g}, p = {ks['p_value']:.3g} (n {ks['n']:,}{', sampled' if ks['sampled'] else ''})"
                    if ks
                    else "–"
                ),
            ]
        )
        if d["kind"] == "classes":
            plots.append(
                bar_plot(
                    "Predicted classes per arm (paired rows)",
                    d["labels"],
                    [("champion", d["champion"], CHAMPION), ("challenger", d["challenger"], CHALLENGER)],
                    y_label="pairs",
                )
            )
        else:
            plots.append(
                histogram_plot(
                    f"Output {d['kind']} per arm (paired rows)",
                    d["edges"],
                    [("champion", d["champion"], CHAMPION), ("challenger", d["challenger"], CHALLENGER)],
                    x_label="score" if d["kind"] == "scores" else "value",
                )
            )
    if plots:
        out += ["<div class=grid2>", *plots, "</div>"]
    if rows:
        out.append(
            _table(
                [
                    "distribution",
                    "PSI",
                    "PSI noise threshold (99%)",
                    "beyond noise",
                    "Jensen–Shannon (bits)",
                    "Kolmogorov–Smirnov",
                ],
                rows,
                numeric=(1, 2, 4),
            )
        )
    out.append("</section>")
    return out


def _labels_section(r: Mapping[str, Any]) -> list[str]:
    lab = r["labels"]
    out = ["<section><h2>Quality against labels</h2>"]
    if not lab["available"]:
        out.append(f"<p class=muted>{escape(lab.get('message', 'no labels yet'))}</p></section>")
        return out
    rows = []
    for name in ("champion", "challenger"):
        q = lab[name]
        if "accuracy" in q:
            auc = q.get("roc_auc")
            rows.append(
                [
                    name,
                    _pct(q["accuracy"]["value"]) + _ci(q["accuracy"]["interval"], True),
                    f"{_v(q['f1']['value'])} <span class=muted>{escape(q['f1']['average'])}</span>",
                    (_v(auc["value"]) + _ci(auc["interval"])) if auc else "–",
                ]
            )
        else:
            rows.append(
                [
                    name,
                    _v(q["mae"]["value"]) + _ci(q["mae"]["interval"]),
                    _v(q["rmse"]["value"]) + _ci(q["rmse"]["interval"]),
                ]
            )
    head = ["arm", "accuracy", "F1", "ROC AUC"] if len(rows[0]) == 4 else ["arm", "MAE", "RMSE"]
    out.append(f"<p>{lab['n']:,} labelled pairs.</p>" + _table(head, rows))
    p = lab["paired"]
    out.append(
        f"<p>Paired difference (challenger − champion): <b>{_v(p['difference'])}</b>{_ci(p['interval'])}, "
        f"p = {_v(p['p_value'], '{:.3g}')}. <span class=muted>{escape(p['method'])}</span></p>"
    )
    out += _curve_plots(r)
    out.append("</section>")
    return out


def _curve_plots(r: Mapping[str, Any]) -> list[str]:
    """ROC curves and confusion matrices per arm (classification); predicted-vs-actual and residuals (regression)."""
    c = r.get("curves") or {}
    plots: list[str] = []
    roc = c.get("roc")
    if roc:
        series = [
            Series(
                f"{arm} (AUC {_sig(((r['labels'].get(arm) or {}).get('roc_auc') or {}).get('value'))})",
                [pt[0] for pt in roc[arm]],
                [pt[1] for pt in roc[arm]],
                color,
            )
            for arm, color in (("champion", CHAMPION), ("challenger", CHALLENGER))
            if roc.get(arm)
        ]
        series.append(Series("chance", [0.0, 1.0], [0.0, 1.0], GREY, dashed=True))
        plots.append(
            line_plot(
                f"ROC curve per arm (positive class {roc['positive']})",
                series,
                x_label="false positive rate",
                y_label="true positive rate",
                y_range=(0.0, 1.0),
                x_range=(0.0, 1.0),
            )
        )
    conf = c.get("confusion")
    if conf:
        for arm, color in (("champion", CHAMPION), ("challenger", CHALLENGER)):
            plots.append(
                heatmap(
                    f"Confusion matrix: {arm} against the labels",
                    conf["labels"],
                    conf["labels"],
                    conf[arm],
                    x_label=f"{arm}'s prediction",
                    y_label="label",
                    color=color,
                    annotate=len(conf["labels"]) <= 8,
                    bottom_up=False,
                )
            )
    reg = c.get("regression")
    if reg:
        edges = reg["edges"]
        labels = [_sig(e) for e in edges[:-1]]
        for arm, color in (("champion", CHAMPION), ("challenger", CHALLENGER)):
            plots.append(
                heatmap(
                    f"Predicted against actual: {arm} (binned)",
                    labels,
                    labels,
                    reg[arm]["actual_vs_predicted"],
                    x_label=f"{arm}'s prediction",
                    y_label="actual (label)",
                    color=color,
                    annotate=False,
                )
            )
        plots.append(
            histogram_plot(
                "Residuals (prediction − label) per arm",
                reg["residual_edges"],
                [
                    ("champion", reg["champion"]["residual_counts"], CHAMPION),
                    ("challenger", reg["challenger"]["residual_counts"], CHALLENGER),
                ],
                x_label="residual",
            )
        )
    if not plots:
        return []
    return ["<div class=grid2>", *plots, "</div>"]


def _segments_section(r: Mapping[str, Any]) -> list[str]:
    seg = r["segments"]
    out = ["<section><h2>Segments</h2>"]
    if seg.get("message"):
        out.append(f"<p class=muted>{escape(seg['message'])}</p>")
    for res in seg["results"]:
        items = res["segments"]
        name = items[0]["effect_name"] if items else ""
        out.append(f"<h3>{escape(res['column'])} <span class=muted>({escape(res['kind'])})</span></h3>")
        out.append(
            forest_plot(
                f"{name} by {res['column']}",
                [
                    (s["value"], s["effect"], s["interval"][0], s["interval"][1], s["flag"] == "worse")
                    for s in items
                ],
                x_label=name,
            )
        )
        rows = [
            [
                escape(s["value"]),
                f"{s['rows']:,}",
                f"{s['pairs']:,}",
                _pct(s.get("agreement")),
                _v(s["effect"]) + _ci(s["interval"]),
                f"<span class='flag-{s['flag']}'>{escape(s['flag'])}</span>",
            ]
            for s in items
        ]
        out.append(
            _table(["value", "requests", "pairs", "agreement", escape(name), "flag"], rows, numeric=(1, 2))
        )
    if seg["results"]:
        out.append(
            f"<p class=muted>{escape(seg['method'])} Intervals are 95% with a Bonferroni adjustment over "
            "the column's segments.</p>"
        )
    out.append("</section>")
    return out


def _timeline_section(r: Mapping[str, Any]) -> list[str]:
    rows = [
        [
            escape(_clock(e["at"])),
            escape(e["actor"]),
            escape(e["action"]),
            escape(e["reason"]),
            "–" if e["step"] is None else str(e["step"] + 1),
            _v(e["canary_weight"], "{:g}%"),
            escape(e["message"]),
        ]
        for e in r["timeline"]
    ]
    if not rows:
        return ["<section><h2>Timeline</h2><p class=muted>No events recorded.</p></section>"]
    return [
        "<section><h2>Timeline</h2>",
        _table(["at", "who", "action", "why", "step", "weight", "message"], rows),
        "</section>",
    ]
