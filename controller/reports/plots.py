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
W, H = 640, 230
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 28, 42


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
    x = W - RIGHT
    for name, color, dashed in reversed(legend):
        width = 7 * len(name) + 26
        x -= width
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(
            f'<line x1="{x}" y1="12" x2="{x + 16}" y2="12" stroke="{color}" stroke-width="2.5"{dash}/>'
            f'<text x="{x + 20}" y="16" class="lg">{escape(name)}</text>'
        )
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


def line_plot(
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    hlines: Sequence[tuple[float, str]] = (),
    y_range: tuple[float, float] | None = None,
    log_x: bool = False,
) -> str:
    """Plot lines (or step lines) sharing axes, with optional dashed horizontal reference lines."""
    xs = [x for s in series for x in s.xs]
    ys = [y for s in series for y in s.ys if y is not None and math.isfinite(y)] + [h for h, _ in hlines]
    if not xs or not ys:
        return empty_plot(title, "no data yet")
    if y_range is None:
        lo, hi = min(ys), max(ys)
        pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
        y_range = (lo - pad, hi + pad)
    frame = _Frame(min(xs), max(xs), *y_range, log_x=log_x)
    body = _axes(frame, x_label, y_label)
    for value, label in hlines:
        y = frame.y(value)
        body.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GREY}" '
            f'stroke-dasharray="6 4" stroke-width="1.5"/>'
            f'<text x="{W - RIGHT - 4}" y="{y - 4:.1f}" class="tk" text-anchor="end">{escape(label)}</text>'
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
        for pts in segments:
            if len(pts) == 1:
                x_, y_ = pts[0].split(",")
                body.append(f'<circle cx="{x_}" cy="{y_}" r="2.5" fill="{s.color}"/>')
            else:
                body.append(
                    f'<polyline points="{" ".join(pts)}" fill="none" stroke="{s.color}" '
                    f'stroke-width="2"{dash}/>'
                )
    legend = [(s.name, s.color, s.dashed) for s in series]
    return _svg(title, body, legend)


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
                f'fill="{color}"/>'
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
        body.append(f'<circle cx="{px(effect):.1f}" cy="{y}" r="4" fill="{color}"/>')
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
:root{--fg:#1d1d1f;--muted:#5f6368;--line:#d9dce1;--pass:#1e7f3c;--fail:#b3261e;--warn:#9a6700}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0 auto;
max-width:1000px;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid var(--line);
padding-bottom:4px}h3{font-size:15px;margin:16px 0 6px}
.muted{color:var(--muted)}
table{border-collapse:collapse;margin:6px 0 12px;width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{font-weight:600;background:#f5f6f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 12px;min-width:140px}
.card b{display:block;font-size:18px}
.o-pass{color:var(--pass);font-weight:600}.o-fail{color:var(--fail);font-weight:600}
.o-inconclusive{color:var(--warn);font-weight:600}.o-no-data,.o-unknown{color:var(--muted)}
.flag-worse{color:var(--fail);font-weight:600}
svg.plot{max-width:100%;height:auto;display:block;margin:6px 0 14px}
svg .bg{fill:#fafbfc;stroke:var(--line)}svg .grid{stroke:#e8eaed}svg .ax{stroke:#777}
svg .tk{font-size:11px;fill:#444}svg .al{font-size:12px;fill:#333}svg .pt{font-size:13px;font-weight:600;fill:#222}
svg .lg{font-size:11px;fill:#333}
.grid2{display:grid;grid-template-columns:1fr;gap:4px}
section{break-inside:avoid-page}
@media print{body{max-width:none;padding:0;font-size:11px}h2{break-after:avoid}
svg.plot,table,.card{break-inside:avoid}th{background:none}a{color:inherit;text-decoration:none}}
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


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    out = ["<table><thead><tr>", *(f"<th>{escape(h)}</th>" for h in head), "</tr></thead><tbody>"]
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


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.3g}"


def _x_minutes(series: Sequence[Mapping[str, Any]], bucket: float) -> list[float]:
    return [(p["t"] + bucket / 2) / 60.0 for p in series]


def html_page(r: Mapping[str, Any], *, quality: Sequence[str] = ()) -> str:
    """Render a report dict (see controller.reports.build.REPORT_SCHEMA) as one self-contained HTML page.

    ``quality``: the quality block's HTML (controller.reports.quality.html_section), placed after the
    labelled metrics; passed in so that this module knows nothing of the quality section.
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
        f"<div class=muted>Rollout {ro['id']} · {escape(ro['mode'])} · phase <b>{escape(ro['phase'])}</b> · "
        f"step {ro['step_index']} · challenger weight {ro['canary_weight']:g}% · shadow rate {ro['shadow_rate']:g} · "
        f"started {escape(str(ro['created_at']))} by {escape(ro['created_by'])}"
        f"{' · ended ' + escape(str(ro['ended_at'])) if ro['ended_at'] else ''} · "
        f"generated {escape(str(r['generated_at']))}</div>",
    ]
    latest = r["gates"]["latest"]
    cards = [
        ("requests", f"{r['traffic']['rows']:,}"),
        ("shadow coverage", _pct(r["shadow"]["coverage"])),
        ("champion errors", _pct(arms["champion"]["error_rate"])),
        ("challenger errors", _pct(arms["challenger"]["error_rate"])),
    ]
    if r["agreement"]:
        cards.append(("agreement", _pct(r["agreement"]["share"])))
    if latest:
        cards.append(
            ("latest outcome", f'<span class="o-{latest["outcome"]}">{escape(latest["outcome"])}</span>')
        )
    parts.append(
        '<div class="cards">'
        + "".join(f"<div class=card><span class=muted>{k}</span><b>{v}</b></div>" for k, v in cards)
        + "</div>"
    )
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


def _gates_section(r: Mapping[str, Any]) -> list[str]:
    g = r["gates"]
    out = ["<section><h2>Gates</h2>"]
    if not g["latest"]:
        out.append("<p class=muted>The controller has not evaluated this rollout yet.</p></section>")
        return out
    latest = g["latest"]
    out.append(
        f"<p>Latest evaluation {escape(str(latest['at']))} (step {latest['step']}): "
        f"<span class='o-{latest['outcome']}'>{escape(latest['outcome'])}</span>"
        f"{' → ' + escape(str(latest['decision'])) if latest.get('decision') else ''}. "
        f"{g['analyses']} evaluations in all.</p>"
    )
    rows = [
        [
            escape(v["gate"]),
            escape(v["role"]),
            f"<span class='o-{v['outcome']}'>{escape(v['outcome'])}</span>",
            _v(v["statistic"]),
            _v(v["bound"]),
            _v(v["threshold"]),
            _v(v["effect"]),
            _v(v["margin"]),
            f"{_v(v['n_champion'])} / {_v(v['n_challenger'])}",
            escape(v["reason"]),
        ]
        for v in latest["verdicts"]
    ]
    out.append(
        _table(
            [
                "gate",
                "role",
                "outcome",
                "statistic",
                "bound",
                "threshold",
                "effect",
                "margin",
                "n (champ / chal)",
                "why",
            ],
            rows,
            numeric=(3, 4, 5, 6, 7),
        )
    )
    primary = g["primary"]
    if primary and g["series"]:
        xs: list[float] = []
        ys: list[float | None] = []
        thr = None
        t0 = _epoch(g["series"][0]["at"])
        for k, a in enumerate(g["series"]):
            at = _epoch(a["at"])
            for v in a["verdicts"]:
                if v["gate"] == primary:
                    xs.append((at - t0) / 60.0 if at is not None and t0 is not None else float(k))
                    ys.append(v["bound"])
                    thr = v["threshold"] if v["threshold"] is not None else thr
        hl = [(thr, f"threshold {thr:.4g}")] if thr is not None else []
        out.append(
            line_plot(
                f"{primary}: confidence bound over time against its threshold",
                [Series("bound", xs, ys, CHALLENGER)],
                x_label="minutes since first evaluation",
                y_label="bound",
                hlines=hl,
            )
        )
    history = [
        [
            escape(str(a["at"])),
            str(a["step"]),
            f"<span class='o-{a['outcome']}'>{escape(a['outcome'])}</span>",
            ", ".join(
                f"{escape(v['gate'])} <span class='o-{v['outcome']}'>{escape(v['outcome'])}</span>"
                for v in a["verdicts"]
            ),
        ]
        for a in g["series"][-30:]
    ]
    out.append("<h3>Every evaluation</h3>" + _table(["at", "step", "outcome", "verdicts"], history))
    out.append("</section>")
    return out


def _epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


def _traffic_section(r: Mapping[str, Any]) -> list[str]:
    t = r["traffic"]
    out = ["<section><h2>Traffic</h2>"]
    rows = [
        [
            str(s["step"]),
            f"{s['rows']:,}",
            f"{s['served_champion']:,}",
            f"{s['served_challenger']:,}",
            escape(str(s["first_at"])),
            escape(str(s["last_at"])),
        ]
        for s in t["steps"]
    ]
    out.append(
        _table(
            ["step", "requests", "served by champion", "served by challenger", "first", "last"],
            rows,
            numeric=(1, 2, 3),
        )
    )
    series = t["series"]
    if series:
        bucket = t["bucket_seconds"]
        xs = _x_minutes(series, bucket)
        share = [100.0 * p["served_challenger"] / p["rows"] if p["rows"] else None for p in series]
        steps = sorted({p["step"] for p in series if p["step"] is not None})
        lines = [Series("challenger share", xs, share, CHALLENGER)]
        if len(steps) > 1:
            lines.append(
                Series(
                    "step",
                    xs,
                    [float(p["step"]) * 100 / max(steps) if p["step"] is not None else None for p in series],
                    GREY,
                    dashed=True,
                    step=True,
                )
            )
        out.append(
            line_plot(
                "Traffic share answered by the challenger, by step",
                lines,
                x_label="minutes since the first request",
                y_label="% of requests",
                y_range=(0.0, 105.0),
            )
        )
    out.append("</section>")
    return out


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

        out.append(
            histogram_plot(
                "Latency distribution per arm",
                edges,
                [("champion", regrid(h1), CHAMPION), ("challenger", regrid(h2), CHALLENGER)],
                x_label="latency (ms, log scale)",
                log_x=True,
            )
        )
    out.append("</section>")
    return out


def _outputs_section(r: Mapping[str, Any]) -> list[str]:
    out = ["<section><h2>Outputs and drift</h2>"]
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
            out.append(_table(head, rows, numeric=tuple(range(1, len(labels) + 1))))
        series = r["traffic"]["series"]
        if series:
            xs = _x_minutes(series, r["traffic"]["bucket_seconds"])
            ys = [p["agree"] / p["pairs"] if p["pairs"] else None for p in series]
            out.append(
                line_plot(
                    "Agreement over time",
                    [Series("agreement", xs, ys, CHAMPION)],
                    x_label="minutes since the first request",
                    y_label="share identical",
                    y_range=(min([y for y in ys if y is not None] + [0.8]) - 0.02, 1.01),
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
            out.append(
                bar_plot(
                    "Predicted classes per arm (paired rows)",
                    d["labels"],
                    [("champion", d["champion"], CHAMPION), ("challenger", d["challenger"], CHALLENGER)],
                    y_label="pairs",
                )
            )
        else:
            out.append(
                histogram_plot(
                    f"Output {d['kind']} per arm (paired rows)",
                    d["edges"],
                    [("champion", d["champion"], CHAMPION), ("challenger", d["challenger"], CHALLENGER)],
                    x_label="score" if d["kind"] == "scores" else "value",
                )
            )
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
        f"p = {_v(p['p_value'], '{:.3g}')}. <span class=muted>{escape(p['method'])}</span></p></section>"
    )
    return out


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
            escape(str(e["at"])),
            escape(e["actor"]),
            escape(e["action"]),
            escape(e["reason"]),
            _v(e["step"]),
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
