"""The report's quality section: each quality gate's value per arm, its interval and history, the
per-segment verdicts, online versus offline per metric, and reliability (calibration) curves.

Additive to ``controller.reports.build`` (which calls ``quality_block``) and ``plots`` (which calls
``html_section``). Every number comes from what the controller stored with its analyses
(``analysis.metrics["quality"]`` and the verdicts, computed by ``controller.core.metrics``), so the
report never re-decides; the reliability curves come from the report's own score-by-label buckets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from controller.core import metrics as quality
from controller.reports.plots import CHALLENGER, CHAMPION, GREY, Series, _table, line_plot
from storage.entities import Analysis, PipelineVersion

__all__ = ["RELIABILITY_BINS", "html_section", "markdown_lines", "quality_block"]

RELIABILITY_BINS = 10
Z = 1.959963984540054


def _offline(gate: str, offline: Mapping[str, Any]) -> float | None:
    """The registered holdout value of a quality gate's metric, if the version has one."""
    name, _, inner = gate.partition("[")
    value: Any = offline.get(name)
    if inner:
        key = inner.rstrip("]")
        value = value.get(key) if isinstance(value, Mapping) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _reliability(buckets: Mapping[tuple[int, str], int], positive: str, bins: int) -> list[dict[str, Any]]:
    """Fold score buckets (``bins`` equal-width on [0, 1]) into RELIABILITY_BINS: mean score vs observed share."""
    fold = max(bins // RELIABILITY_BINS, 1)
    rows: dict[int, list[float]] = {}
    for (b, y), n in buckets.items():
        r = rows.setdefault(b // fold, [0.0, 0.0, 0.0])
        r[0] += n * (b + 0.5) / bins  # bucket midpoint as the bucket's mean score
        r[1] += n * (y == positive)
        r[2] += n
    return [
        {"bin": k, "mean_score": s / n, "observed": pos / n, "n": int(n)}
        for k, (s, pos, n) in sorted(rows.items())
        if n > 0
    ]


def quality_block(
    analyses: Sequence[Analysis],
    *,
    champion: PipelineVersion,
    challenger: PipelineVersion,
    score_buckets: Mapping[str, Mapping[tuple[int, str], int]] | None,
    positive: str | None,
    score_bins: int,
) -> dict[str, Any]:
    """Build the report's ``quality`` block from the stored analyses (see the module docstring)."""
    latest = analyses[-1] if analyses else None
    verdicts = {v.get("gate"): v for v in (latest.verdicts if latest else []) if isinstance(v, Mapping)}
    values = latest.metrics.get("quality", []) if latest and isinstance(latest.metrics, Mapping) else []
    metrics_rows: list[dict[str, Any]] = []
    segment_rows: list[dict[str, Any]] = []
    for row in values:
        gate = str(row.get("gate"))
        v = verdicts.get(gate, {})
        interval = v.get("interval")
        base = {
            "gate": gate,
            "role": v.get("role"),
            "outcome": v.get("outcome", "no-data"),
            "difference": row.get("difference"),
            "interval": [interval.get("lower"), interval.get("upper")]
            if isinstance(interval, Mapping)
            else None,
            "n_champion": row.get("n_champion"),
            "n_challenger": row.get("n_challenger"),
            "reason": v.get("reason", row.get("no_data", "")),
        }
        if row.get("segment") is not None:
            too_small = str(row.get("no_data") or "").startswith("too small")
            segment_rows.append(
                {
                    **base,
                    "segment": row["segment"],
                    "metric": gate.rsplit(".", 1)[-1],
                    "verdict": "too small" if too_small else base["outcome"],
                }
            )
            continue
        arms: dict[str, Any] = {}
        for arm, version in (("champion", champion), ("challenger", challenger)):
            online, se = row.get(arm), row.get(f"se_{arm}")
            offline = _offline(gate, version.offline_metrics or {})
            entry: dict[str, Any] = {
                "value": online,
                "interval": [online - Z * se, online + Z * se]
                if isinstance(online, float) and isinstance(se, float)
                else None,
                "offline": offline,
                "online_minus_offline": online - offline
                if isinstance(online, float) and offline is not None
                else None,
            }
            if entry["interval"] is not None and offline is not None:
                lo, hi = entry["interval"][0] - offline, entry["interval"][1] - offline
                better_up = quality.higher_is_better(gate, str(v.get("reason", "")))
                worse = hi < 0 if better_up else lo > 0
                better = lo > 0 if better_up else hi < 0
                entry["versus_offline"] = "worse" if worse else "better" if better else "reproduced"
            arms[arm] = entry
        metrics_rows.append({**base, **arms})
    history: dict[str, list[dict[str, Any]]] = {}
    for a in analyses:
        for v in a.verdicts:
            if not isinstance(v, Mapping) or str(v.get("gate")) not in {r["gate"] for r in metrics_rows}:
                continue
            interval = v.get("interval")
            history.setdefault(str(v["gate"]), []).append(
                {
                    "at": a.evaluated_at.isoformat(),
                    "effect": v.get("effect"),
                    "interval": [interval.get("lower"), interval.get("upper")]
                    if isinstance(interval, Mapping)
                    else None,
                    "margin": v.get("margin"),
                }
            )
    reliability = None
    if score_buckets and positive is not None:
        reliability = {
            arm: _reliability(score_buckets.get(arm, {}), positive, score_bins)
            for arm in ("champion", "challenger")
        }
    return {
        "metrics": metrics_rows,
        "history": history,
        "segments": segment_rows,
        "reliability": reliability,
        "method": "Per-arm intervals: 95% normal (delta method on the confusion table, or the mean loss); "
        "the difference's interval is the gate's one-sided always-valid bound pair (fixed-horizon DeLong for "
        "ROC AUC). Online versus offline: the online interval against the registered holdout value, "
        "offline taken as exact. Reliability: score buckets of the labelled pairs, bucket midpoints as mean score.",
    }


def _n(x: Any, fmt: str = "{:.4g}") -> str:
    return fmt.format(x) if isinstance(x, int | float) and math.isfinite(x) else "–"


def _ci(iv: Any) -> str:
    return f" [{_n(iv[0])}, {_n(iv[1])}]" if isinstance(iv, list) and len(iv) == 2 and None not in iv else ""


def html_section(r: Mapping[str, Any]) -> list[str]:
    """Render the quality block: a table, one plot per gate, the segment verdicts and reliability curves."""
    q = r.get("quality")
    if not q:
        return []
    out = ["<section><h2>Quality metrics</h2>"]
    if q["metrics"]:
        rows = [
            [
                escape(m["gate"]),
                _n(m["champion"]["value"]) + _ci(m["champion"]["interval"]),
                _n(m["challenger"]["value"]) + _ci(m["challenger"]["interval"]),
                _n(m["difference"]) + _ci(m["interval"]),
                f"<span class='o-{escape(str(m['outcome']))}'>{escape(str(m['outcome']))}</span>",
                _n(m["champion"]["offline"]) + " / " + _n(m["challenger"]["offline"]),
                escape(str(m["champion"].get("versus_offline", "–")))
                + " / "
                + escape(str(m["challenger"].get("versus_offline", "–"))),
            ]
            for m in q["metrics"]
        ]
        out.append(
            _table(
                ["metric", "champion", "challenger", "difference", "gate", "offline (champion / challenger)",
                 "online vs offline"],
                rows,
            )
        )  # fmt: skip
        for gate, points in q["history"].items():
            xs = [float(i) for i in range(len(points))]
            series = [
                Series("difference", xs, [p["effect"] for p in points], CHALLENGER),
                Series(
                    "lower",
                    xs,
                    [p["interval"][0] if p["interval"] else None for p in points],
                    GREY,
                    dashed=True,
                ),
                Series(
                    "upper",
                    xs,
                    [p["interval"][1] if p["interval"] else None for p in points],
                    GREY,
                    dashed=True,
                ),
            ]
            out.append(line_plot(f"{gate}: challenger - champion per look", series, x_label="look",
                                 y_label=gate, hlines=[(0.0, "no difference")]))  # fmt: skip
    if q["segments"]:
        out.append("<h3>Segments</h3>")
        rows = [
            [escape(s["segment"]), escape(s["metric"]), f"<span class='o-{escape(s['outcome'])}'>{escape(s['verdict'])}</span>",
             _n(s["difference"]) + _ci(s["interval"]), f"{s['n_champion']} / {s['n_challenger']}", escape(s["reason"])]
            for s in q["segments"]
        ]  # fmt: skip
        out.append(_table(["segment", "metric", "verdict", "difference", "n", "why"], rows))
    if q["reliability"]:
        series = [
            Series(arm, [p["mean_score"] for p in pts], [p["observed"] for p in pts], color)
            for arm, pts, color in (
                ("champion", q["reliability"]["champion"], CHAMPION),
                ("challenger", q["reliability"]["challenger"], CHALLENGER),
            )
        ]
        series.append(Series("perfect calibration", [0.0, 1.0], [0.0, 1.0], GREY, dashed=True))
        out.append(line_plot("Reliability per arm", series, x_label="mean predicted probability",
                             y_label="observed share positive", y_range=(0.0, 1.0)))  # fmt: skip
    out.append(f"<p class=muted>{escape(q['method'])}</p></section>")
    return out


def markdown_lines(r: Mapping[str, Any]) -> list[str]:
    """Render the quality block as Markdown tables."""
    q = r.get("quality")
    if not q or not (q["metrics"] or q["segments"]):
        return []
    out = ["## Quality metrics", "", "| metric | champion | challenger | difference | gate | offline | vs offline |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in q["metrics"]:
        out.append(
            f"| {m['gate']} | {_n(m['champion']['value'])}{_ci(m['champion']['interval'])} | "
            f"{_n(m['challenger']['value'])}{_ci(m['challenger']['interval'])} | {_n(m['difference'])}{_ci(m['interval'])} | "
            f"{m['outcome']} | {_n(m['champion']['offline'])} / {_n(m['challenger']['offline'])} | "
            f"{m['champion'].get('versus_offline', '–')} / {m['challenger'].get('versus_offline', '–')} |"
        )
    if q["segments"]:
        out += [
            "",
            "### Segments",
            "",
            "| segment | metric | verdict | difference | n |",
            "|---|---|---|---|---|",
        ]
        for s in q["segments"]:
            out.append(
                f"| {s['segment']} | {s['metric']} | {s['verdict']} | {_n(s['difference'])}{_ci(s['interval'])} | "
                f"{s['n_champion']} / {s['n_challenger']} |"
            )
    out.append("")
    return out
