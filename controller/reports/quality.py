"""The report's quality section: each quality gate's value per arm, its interval and history, the
per-segment verdicts, online versus offline per metric, and reliability (calibration) curves.

Reliability: binary classifiers get one curve per arm (the positive class's score). More than two
classes get what a data scientist reads first, the top-label curve per arm (confidence = the largest
probability, against the share of answers that were right; Guo et al. 2017), then one one-vs-rest curve
per class (p[class] against the share labelled that class; ``sklearn.calibration.calibration_curve`` of
``y == class``) for the ``MAX_RELIABILITY_CLASSES`` most frequent labels, each with its expected
calibration error (ECE: sum over bins of the bin's share of rows times |observed - mean probability|).

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

__all__ = ["MAX_RELIABILITY_CLASSES", "RELIABILITY_BINS", "html_section", "markdown_lines", "quality_block",
           "reliability_classes"]  # fmt: skip

RELIABILITY_BINS = 10
MAX_RELIABILITY_CLASSES = 10
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


def reliability_classes(classes: Sequence[str], label_counts: Mapping[str, int]) -> list[str]:
    """The classes that get a one-vs-rest reliability panel: the most often labelled first, at most
    ``MAX_RELIABILITY_CLASSES`` (ties in the version's class order), shown in the class order."""
    order = {c: i for i, c in enumerate(classes)}
    ranked = sorted(classes, key=lambda c: (-label_counts.get(c, 0), order[c]))
    return sorted(ranked[:MAX_RELIABILITY_CLASSES], key=order.__getitem__)


def _curve(bins: Mapping[int, Sequence[float]]) -> dict[str, Any]:
    """One arm's reliability curve from its bins ([sum of p, events, rows]), with the ECE over its rows."""
    n = sum(int(c[2]) for c in bins.values())
    points = [
        {"bin": b, "mean_score": c[0] / c[2], "observed": c[1] / c[2], "n": int(c[2])}
        for b, c in sorted(bins.items())
        if c[2] > 0
    ]
    # sum over bins of (n_b / n) * |observed_b - mean_b| = sum |events_b - sum_p_b| / n
    ece = sum(abs(c[1] - c[0]) for c in bins.values()) / n if n else None
    return {"points": points, "ece": ece, "n": n}


def _class_reliability(
    bins: Mapping[str, Mapping[str, Mapping[int, Sequence[float]]]],
    classes: Sequence[str],
    shown: Sequence[str],
) -> dict[str, Any]:
    """The multi-class reliability block: the top-label curve and one per shown class, per arm."""
    arms = ("champion", "challenger")
    return {
        "bins": RELIABILITY_BINS,
        "classes": list(classes),
        "shown": list(shown),
        "omitted": [c for c in classes if c not in shown],
        "top_label": {arm: _curve(bins["top"][arm]) for arm in arms},
        "per_class": [{"class": c, **{arm: _curve(bins[c][arm]) for arm in arms}} for c in shown],
        "method": f"{RELIABILITY_BINS} equal-width bins on [0, 1] (sklearn calibration_curve's, strategy "
        "'uniform'), over the labelled pairs with both arms' probability vectors. Top label: confidence = "
        "the largest probability, observed = share of the arm's answers that were right. One-vs-rest: "
        "p[class], observed = share labelled that class. ECE = sum over bins of the bin's share of rows "
        "times |observed - mean probability|.",
    }


def quality_block(
    analyses: Sequence[Analysis],
    *,
    champion: PipelineVersion,
    challenger: PipelineVersion,
    score_buckets: Mapping[str, Mapping[tuple[int, str], int]] | None,
    positive: str | None,
    score_bins: int,
    class_bins: Mapping[str, Mapping[str, Mapping[int, Sequence[float]]]] | None = None,
    classes: Sequence[str] = (),
    shown: Sequence[str] = (),
) -> dict[str, Any]:
    """Build the report's ``quality`` block from the stored analyses (see the module docstring).

    ``class_bins``: ``storage.report_queries.label_proba_reliability`` of a classifier with more than two
    ``classes`` (panels ``top`` and each of ``shown``), for the multi-class reliability curves.
    """
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
        arm_rows = a.metrics.get("quality", []) if isinstance(a.metrics, Mapping) else []
        per_arm = {
            str(row.get("gate")): row
            for row in arm_rows
            if isinstance(row, Mapping) and row.get("segment") is None
        }
        for v in a.verdicts:
            if not isinstance(v, Mapping) or str(v.get("gate")) not in {r["gate"] for r in metrics_rows}:
                continue
            interval = v.get("interval")
            values = per_arm.get(str(v["gate"]), {})
            history.setdefault(str(v["gate"]), []).append(
                {
                    "at": a.evaluated_at.isoformat(),
                    "step": a.step,
                    "effect": v.get("effect"),
                    "interval": [interval.get("lower"), interval.get("upper")]
                    if isinstance(interval, Mapping)
                    else None,
                    "margin": v.get("margin"),
                    "champion": values.get("champion"),
                    "challenger": values.get("challenger"),
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
        "class_reliability": _class_reliability(class_bins, classes, shown)
        if class_bins and any(class_bins["top"].values())  # none without labelled probability vectors
        else None,
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
        out.append(
            "<p class=muted>Each quality gate per arm over time, with its difference's always-valid band "
            "and margin: under <i>Each gate over time</i> above.</p>"
        )
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
    if q.get("class_reliability"):
        out += _class_reliability_html(q["class_reliability"])
    out.append(f"<p class=muted>{escape(q['method'])}</p></section>")
    return out


def _reliability_plot(title: str, panel: Mapping[str, Any], x_label: str, y_label: str) -> str:
    series = [
        Series(f"{arm} (ECE {_n(panel[arm]['ece'], '{:.3f}')})", [p["mean_score"] for p in panel[arm]["points"]],
               [p["observed"] for p in panel[arm]["points"]], color)
        for arm, color in (("champion", CHAMPION), ("challenger", CHALLENGER))
    ]  # fmt: skip
    series.append(Series("perfect calibration", [0.0, 1.0], [0.0, 1.0], GREY, dashed=True))
    return line_plot(title, series, x_label=x_label, y_label=y_label, y_range=(0.0, 1.0), x_range=(0.0, 1.0))


def _ece_rows(c: Mapping[str, Any], *, html: bool = True) -> list[list[str]]:
    panels = [("top label", c["top_label"])] + [(f"class {p['class']}", p) for p in c["per_class"]]
    return [
        [escape(name) if html else name, _n(p["champion"]["ece"], "{:.4f}"), _n(p["challenger"]["ece"], "{:.4f}"),
         f"{p['champion']['n']} / {p['challenger']['n']}"]
        for name, p in panels
    ]  # fmt: skip


def _class_reliability_html(c: Mapping[str, Any]) -> list[str]:
    """The ECE table, then the top-label curve and the per-class curves (two to a row)."""
    out = [
        "<h3>Reliability (calibration) per arm</h3>",
        _table(["curve (classes: one-vs-rest)", "champion ECE", "challenger ECE", "labelled rows (champion / challenger)"],
               _ece_rows(c), (1, 2, 3), compact=True),
        "<div class=grid2>",
        _reliability_plot("Reliability per arm (top label)", c["top_label"],
                          "confidence (largest probability)", "observed share right"),
    ]  # fmt: skip
    out += [
        _reliability_plot(f"Reliability of class {p['class']} (one-vs-rest)", p, f"predicted P({p['class']})",
                          f"observed share {p['class']}")
        for p in c["per_class"]
    ]  # fmt: skip
    out.append("</div>")
    if c["omitted"]:
        out.append(
            f"<p class=muted>{len(c['omitted'])} less often labelled classes have no one-vs-rest panel "
            f"(at most {MAX_RELIABILITY_CLASSES}): {escape(', '.join(c['omitted']))}.</p>"
        )
    out.append(f"<p class=muted>{escape(c['method'])}</p>")
    return out


def markdown_lines(r: Mapping[str, Any]) -> list[str]:
    """Render the quality block as Markdown tables."""
    q = r.get("quality")
    if not q or not (q["metrics"] or q["segments"] or q.get("class_reliability")):
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
    c = q.get("class_reliability")
    if c:
        out += ["", "### Reliability (expected calibration error)", "",
                "| curve (classes: one-vs-rest) | champion ECE | challenger ECE | rows (champion / challenger) |", "|---|---|---|---|"]  # fmt: skip
        out += [f"| {' | '.join(row)} |" for row in _ece_rows(c, html=False)]
        if c["omitted"]:
            out.append(f"\nNo one-vs-rest panel for {len(c['omitted'])} less often labelled classes.")
    out.append("")
    return out
