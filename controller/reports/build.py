"""Comparison reports: one rollout of a deployment, as JSON, a self-contained HTML page or Markdown.

    report = build_report(store, "churn")                         # the latest rollout
    report = build_report(store, "churn", 7, segments=["plan"])   # rollout 7, split by raw column "plan"
    html = render_html(report)                                     # one offline file, inline SVG plots
    text = render_markdown(report)

``build_report`` returns plain JSON-ready data described by ``REPORT_SCHEMA`` (a JSON Schema; the
tests validate against it). Everything over paired rows is aggregated in SQL
(``storage.report_queries``): counts, sums, histograms, never the uuid or JSON payload columns row by
row. Two things use bounded samples, and the report says so in ``notes``: the Kolmogorov–Smirnov test
(at most ``ks_sample`` pairs, every k-th row) and the cut points of numeric segment bins.

Statistics come from ``controller.core.stats``; gate verdicts are those the controller stored in
``store.analyses`` (the report never re-decides anything). Latency quantiles are read off log-spaced
histograms (within 5% of the exact quantile).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import numpy as np
from scipy import stats as sps

from controller.clock import system_clock
from controller.core import metrics as quality_metrics
from controller.core import reproducibility as rp
from controller.core import stats
from controller.core.judge import Outcome
from controller.core.policy import Policy, PolicyError
from controller.encoding import finite
from controller.loop import measure
from controller.loop.actions import policy_of
from controller.loop.assess import online_offline
from controller.reports.plots import html_page
from controller.reports.quality import (
    MAX_RELIABILITY_CLASSES,
    RELIABILITY_BINS,
    quality_block,
    reliability_classes,
)
from controller.reports.quality import html_section as quality_html
from controller.reports.quality import markdown_lines as quality_markdown
from controller.reports.verdict import stage_name, verdict_sentence
from storage import NotFound, Store, repro_queries
from storage import report_queries as rq
from storage.entities import Analysis, Event, PipelineVersion, Rollout

SCHEMA_VERSION = 1
TIMELINE_BUCKETS = 120
TIMELINE_MIN_ROWS = 30
LATENCY_SAMPLE = 60_000
CURVE_SAMPLE = 20_000
SCORE_BINS = 20
VALUE_BINS = 30
AUC_BINS = 200

__all__ = ["REPORT_SCHEMA", "SCHEMA_VERSION", "build_report", "render_html", "render_markdown"]

# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------

_S_num = {"type": ["number", "null"]}
_S_int = {"type": "integer", "minimum": 0}
_S_str_or_null = {"type": ["string", "null"]}
_S_interval = {"type": ["array", "null"], "items": _S_num, "minItems": 2, "maxItems": 2}
_S_outcome = {"enum": ["pass", "inconclusive", "no-data", "fail", "unknown"]}
_S_version = {
    "type": "object",
    "required": ["id", "ref", "task"],
    "properties": {"id": {"type": "integer"}, "ref": {"type": "string"}, "task": {"type": "string"}},
}
_S_latency = {
    "type": "object",
    "required": ["n", "mean", "p50", "p90", "p99", "histogram"],
    "properties": {
        "n": _S_int, "mean": _S_num, "p50": _S_num, "p90": _S_num, "p99": _S_num,
        "histogram": {
            "type": "object", "required": ["edges_ms", "counts"],
            "properties": {"edges_ms": {"type": "array", "items": {"type": "number"}},
                           "counts": {"type": "array", "items": _S_int}},
        },
    },
}  # fmt: skip
_S_arm = {
    "type": "object",
    "required": ["version", "requests", "served", "errors", "error_rate", "error_interval", "latency_ms"],
    "properties": {
        "version": _S_version, "requests": _S_int, "served": _S_int, "errors": _S_int, "error_rate": _S_num,
        "error_interval": _S_interval, "latency_ms": _S_latency,
    },
}  # fmt: skip
_S_verdict = {
    "type": "object",
    "required": ["gate", "role", "outcome", "statistic", "bound", "threshold", "effect", "margin",
                 "n_champion", "n_challenger", "reason"],
    "properties": {
        "gate": {"type": "string"}, "role": {"type": "string"}, "outcome": _S_outcome, "statistic": _S_num,
        "bound": _S_num, "threshold": _S_num, "effect": _S_num, "margin": _S_num, "n_champion": {"type": ["integer", "null"]},
        "n_challenger": {"type": ["integer", "null"]}, "reason": {"type": "string"}, "p_value": _S_num,
        "interval": _S_interval,
    },
}  # fmt: skip
_S_distribution = {
    "type": "object",
    "required": ["kind", "labels", "champion", "challenger", "psi", "jensen_shannon"],
    "properties": {
        "kind": {"enum": ["classes", "scores", "values"]},
        "labels": {"type": "array", "items": {"type": "string"}},
        "edges": {"type": ["array", "null"], "items": {"type": "number"}},
        "champion": {"type": "array", "items": _S_int}, "challenger": {"type": "array", "items": _S_int},
        "psi": {"type": ["object", "null"], "required": ["value", "noise_floor", "threshold", "exceeds_noise"]},
        "jensen_shannon": {"type": ["object", "null"], "required": ["divergence", "distance"]},
        "ks": {"type": ["object", "null"], "required": ["statistic", "p_value", "n", "sampled"]},
    },
}  # fmt: skip
_S_quality_arm = {
    "type": "object",
    "properties": {
        "accuracy": {"type": "object", "required": ["value", "interval"]},
        "f1": {"type": "object", "required": ["value", "average"]},
        "roc_auc": {"type": ["object", "null"], "required": ["value", "interval"]},
        "mae": {"type": "object", "required": ["value", "interval"]},
        "rmse": {"type": "object", "required": ["value", "interval"]},
    },
}  # fmt: skip

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "mlcanary comparison report",
    "description": "One rollout of a deployment: champion against challenger on paired outputs.",
    "type": "object",
    "required": ["schema_version", "generated_at", "deployment", "rollout", "task", "timeline", "traffic",
                 "arms", "shadow", "agreement", "differences", "distributions", "labels", "gates", "segments",
                 "reproducibility", "sample_size", "notes", "verdict", "plan", "curves", "latency_series"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "generated_at": {"type": "string"},
        "deployment": {"type": "object", "required": ["id", "name"]},
        "rollout": {
            "type": "object",
            "required": ["id", "phase", "mode", "step_index", "canary_weight", "shadow_rate", "champion",
                         "challenger", "created_by", "created_at", "ended_at", "reason", "policy"],
            "properties": {"id": {"type": "integer"}, "phase": {"type": "string"}, "mode": {"type": "string"},
                           "champion": _S_version, "challenger": _S_version},
        },
        "task": {"enum": ["classification", "regression"]},
        "timeline": {
            "type": "array",
            "items": {"type": "object", "required": ["at", "actor", "action", "reason", "message", "step",
                                                     "canary_weight"]},
        },
        "traffic": {
            "type": "object",
            "required": ["rows", "steps", "bucket_seconds", "start", "series"],
            "properties": {
                "rows": _S_int,
                "steps": {"type": "array", "items": {"type": "object", "required": ["step", "rows", "served_champion",
                                                                                      "served_challenger", "first_at",
                                                                                      "last_at"]}},
                "series": {"type": "array", "items": {"type": "object", "required": [
                    "t", "step", "rows", "served_challenger", "pairs", "agree", "champion_errors",
                    "challenger_errors"]}},
            },
        },
        "arms": {"type": "object", "required": ["champion", "challenger"],
                 "properties": {"champion": _S_arm, "challenger": _S_arm}},
        "shadow": {
            "type": "object",
            "required": ["rows", "pairs", "coverage", "not_scored", "dropped", "timeouts", "cancelled",
                         "other_errors", "expired", "shed", "queue_wait_ms"],
        },
        "agreement": {
            "type": ["object", "null"],
            "required": ["n", "agree", "share", "interval", "kappa", "table"],
            "properties": {"table": {"type": "object", "required": ["labels", "counts"]}},
        },
        "differences": {"type": ["object", "null"], "required": ["of", "n", "mean", "sd", "mean_abs"]},
        "distributions": {"type": "array", "items": _S_distribution},
        "labels": {
            "type": "object",
            "required": ["available", "n"],
            "properties": {"available": {"type": "boolean"}, "n": _S_int, "champion": _S_quality_arm,
                           "challenger": _S_quality_arm, "paired": {"type": "object"}},
        },
        "gates": {
            "type": "object",
            "required": ["analyses", "primary", "latest", "series"],
            "properties": {
                "analyses": _S_int, "primary": _S_str_or_null,
                "latest": {"type": ["object", "null"], "required": ["at", "step", "outcome", "verdicts"],
                           "properties": {"verdicts": {"type": "array", "items": _S_verdict}}},
                "series": {"type": "array", "items": {
                    "type": "object", "required": ["at", "step", "outcome", "verdicts", "arms"],
                    "properties": {"verdicts": {"type": "array", "items": _S_verdict},
                                   # each gate's figure per arm at this look: {gate: {champion, challenger}}
                                   "arms": {"type": "object", "additionalProperties": {
                                       "type": "object", "required": ["champion", "challenger"]}}}}},
            },
        },
        "segments": {
            "type": "object",
            "required": ["columns", "method", "results"],
            "properties": {"results": {"type": "array", "items": {
                "type": "object", "required": ["column", "kind", "segments"],
                "properties": {"segments": {"type": "array", "items": {
                    "type": "object",
                    "required": ["value", "rows", "pairs", "effect", "effect_name", "interval", "flag"]}}}}}},
        },
        "reproducibility": {"type": "object", "required": ["status", "message"],
                            "properties": {"status": {"enum": ["not_checked", "pass", "fail"]}}},
        "sample_size": {"type": "object", "required": ["status", "message", "needed", "have"]},
        "notes": {"type": "array", "items": {"type": "string"}},
        "quality": {"type": "object", "required": ["metrics", "history", "segments", "reliability", "class_reliability"]},
        "verdict": {"type": "string"},
        "plan": {"type": "array", "items": {"type": "object", "required": [
            "step", "name", "weight", "status", "requests", "pairs", "first_at", "last_at", "outcome", "ended_by"]}},
        "curves": {"type": "object", "required": ["roc", "confusion", "regression"]},
        "latency_series": {"type": "object", "required": ["bucket_seconds", "sampled", "points"]},
    },
}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


_f = finite  # a finite float or None (JSON has no NaN): controller.encoding's one definition


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _epoch_iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()


def _interval(lower: Any, upper: Any) -> list[float | None]:
    return [_f(lower), _f(upper)]


def _version(v: PipelineVersion) -> dict[str, Any]:
    return {"id": v.id, "ref": v.ref, "task": v.task}


def _policy_number(policy: Mapping[str, Any], path: Sequence[str], default: float) -> float:
    node: Any = policy
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else default


def build_report(
    store: Store,
    deployment: str,
    rollout_id: int | None = None,
    *,
    segments: Sequence[str] = (),
    now: datetime | None = None,
    ks_sample: int = 20_000,
    segment_sample: int = 5_000,
    segment_rows: int = 100_000,
) -> dict[str, Any]:
    """Build the comparison report of one rollout (the deployment's latest when ``rollout_id`` is None).

    ``segments``: raw-input columns to break the comparison down by (needs stored raw inputs), over
    the rollout's most recent ``segment_rows`` rows (every segment column is a scan that reads a JSON
    field per row, so they are bounded; the report's notes say when the window is smaller than the rollout).
    NotFound when the deployment, the rollout, or any rollout at all is missing; a rollout of another
    deployment is NotFound too.
    """
    dep = store.deployments.get(deployment)
    if rollout_id is None:
        rollout = store.rollouts.latest(dep.id)
        if rollout is None:
            raise NotFound(f"deployment {deployment!r} has no rollout yet; start one to get a report")
    else:
        rollout = store.rollouts.get(rollout_id)
        if rollout.deployment_id != dep.id:
            raise NotFound(f"rollout {rollout_id} does not belong to deployment {deployment!r}")
    champion = store.pipelines.get(rollout.champion_id)
    challenger = store.pipelines.get(rollout.challenger_id)
    task = challenger.task if challenger.task in ("classification", "regression") else "classification"
    db = store.db
    notes: list[str] = [
        "Latency quantiles are read from log-spaced histograms (each within 5% of the exact quantile).",
    ]

    positive = _positive_class(challenger, [])
    # more than two classes: the probability vectors' classes (champion's, then any new challenger's)
    classes = [str(c) for c in champion.classes or ()]
    classes += [str(c) for c in challenger.classes or () if str(c) not in classes]
    multiclass = task == "classification" and positive is None and len(classes) > 2
    events = store.events.list(rollout_id=rollout.id, limit=10_000)
    column = "score" if task == "classification" else "value"
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="mlcanary-report") as pool:
        # Independent scans run side by side on their own connections (SQLite releases the GIL while
        # it reads and WAL readers do not block each other; PostgreSQL has one backend per connection);
        # the overview, the longest, runs on this thread. SQLite reads the grouped scans range by range
        # of the step spans (report_queries._counts).
        repro_f = pool.submit(_reproducibility, store, rollout, champion, challenger, events, task, now=now)
        spans = rq.step_spans(db, rollout.id)
        rows = sum(n for _, n, _, _ in spans)
        span = (min(s[2] for s in spans).timestamp(), max(s[3] for s in spans).timestamp()) if spans else None
        unit = _bucket_unit(span)
        table_f = (
            pool.submit(rq.class_score_table, db, rollout.id, bins=SCORE_BINS, spans=spans, bucket=unit)
            if task == "classification"
            else None
        )
        latency_f = pool.submit(
            rq.latency_buckets, db, rollout.id, latency=measure.LATENCY, spans=spans, bucket=unit
        )
        if task == "classification":
            labels_f: Future[Any] = pool.submit(
                rq.label_confusion, db, rollout.id, score_bins=AUC_BINS if positive is not None else None
            )
        else:
            labels_f = pool.submit(rq.label_regression, db, rollout.id)
        class_f = (  # every class gets a panel: no need to wait for the label counts
            pool.submit(
                rq.label_proba_reliability, db, rollout.id, classes, shown=classes, bins=RELIABILITY_BINS
            )
            if multiclass and len(classes) <= MAX_RELIABILITY_CLASSES
            else None
        )
        # The KS sample takes every k-th row with k = rows // ks_sample (rows, not pairs, so it need not
        # wait for the overview); it stays a systematic sample of at most ks_sample pairs.
        ks_f = (
            pool.submit(rq.numeric_sample, db, rollout.id, column, limit=ks_sample, total=rows)
            if rows
            else None
        )
        latency_sample_f = (
            pool.submit(rq.latency_sample, db, rollout.id, limit=LATENCY_SAMPLE, total=rows) if rows else None
        )
        regression_f = (
            pool.submit(rq.label_regression_sample, db, rollout.id, limit=CURVE_SAMPLE, total=rows)
            if rows and task == "regression"
            else None
        )
        overview = rq.step_counts(db, rollout.id, bucket=unit, spans=spans) if span else []
        steps = _per_step(overview)
        pairs = sum(st.both_outputs for st in steps)
        table = table_f.result() if table_f is not None else []
        latency = latency_f.result()
        label_rows = labels_f.result()
        class_bins = class_f.result() if class_f is not None else None
        ks_pairs = ks_f.result() if ks_f is not None and pairs else []
        reproducibility = repro_f.result()
        latency_rows = latency_sample_f.result() if latency_sample_f is not None else []
        regression_rows = regression_f.result() if regression_f is not None else []
    shown = classes
    if multiclass and class_f is None:  # the most often labelled classes get a one-vs-rest panel
        counts: dict[str, int] = {}
        for *_, y, _b1, _b2, n in label_rows:
            counts[y] = counts.get(y, 0) + n
        shown = reliability_classes(classes, counts)
        class_bins = rq.label_proba_reliability(db, rollout.id, classes, shown=shown, bins=RELIABILITY_BINS)
    auc_buckets = (
        rq.label_score_buckets(label_rows) if task == "classification" and positive is not None else None
    )
    curves = _curves(task, label_rows, auc_buckets, positive, regression_rows, rows, notes)
    if task == "classification":
        label_rows = _label_classes(label_rows)
    arms = {
        arm: _arm_summary(arm, steps, v, latency[arm])
        for arm, v in (("champion", champion), ("challenger", challenger))
    }
    traffic = _traffic(steps, overview, span, unit)
    waited = sum(s.shadow_wait_n for s in steps)
    shadow = {
        "rows": rows,
        "pairs": pairs,
        "coverage": _f(pairs / rows) if rows else None,
        "not_scored": sum(s.shadow_missing for s in steps),
        "dropped": sum(s.shadow_dropped for s in steps),
        "timeouts": sum(s.shadow_timeout for s in steps),
        "cancelled": sum(s.shadow_cancelled for s in steps),
        "other_errors": sum(s.shadow_other_errors for s in steps),
        # skips are the router's (coverage lost), never the challenger's errors; queue wait is its health
        "expired": sum(s.shadow_expired for s in steps),
        "shed": sum(s.shadow_shed for s in steps),
        "queue_wait_ms": _f(sum(s.shadow_wait_sum for s in steps) / waited) if waited else None,
    }
    agreement_ = _agreement(table, steps) if task == "classification" else None
    differences = _differences(steps, task)
    distributions = _distributions(db, rollout.id, task, table, ks_pairs, pairs, notes)
    labels = _labels(label_rows, auc_buckets, task, challenger)
    n_labelled = int(labels["n"])
    analyses = store.analyses.list(rollout.id)
    gates = _gates(analyses)
    latency_series = _latency_series(latency_rows, traffic, rows, notes)
    segment_block = _segments(
        db,
        rollout.id,
        segments,
        challenger,
        rows,
        n_labelled > 0,
        task,
        segment_sample,
        store_raw=dep.store_raw_inputs,
        window=segment_rows,
    )
    if segment_block["results"]:
        notes.append(segment_block["method"])
    notes.extend(_decision_notes(rollout, events))
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": _iso(now or system_clock()),
        "deployment": {"id": dep.id, "name": dep.name, "store_raw_inputs": dep.store_raw_inputs},
        "rollout": _rollout(rollout, champion, challenger),
        "task": task,
        "timeline": [_event(e) for e in events],
        "traffic": traffic,
        "arms": arms,
        "shadow": shadow,
        "agreement": agreement_,
        "differences": differences,
        "distributions": distributions,
        "labels": labels,
        "gates": gates,
        "segments": segment_block,
        "reproducibility": reproducibility,
        "sample_size": _sample_size(rollout.policy, task, agreement_, labels, challenger),
        "notes": notes,
        "verdict": verdict_sentence(rollout, analyses[-1] if analyses else None, events=events),
        "plan": _plan(rollout, steps, analyses, events),
        "curves": curves,
        "latency_series": latency_series,
        "quality": quality_block(
            analyses, champion=champion, challenger=challenger, score_buckets=auc_buckets, positive=positive,
            score_bins=AUC_BINS, class_bins=class_bins, classes=classes, shown=shown,
        ),
    }  # fmt: skip


def _reproducibility(
    store: Store,
    rollout: Rollout,
    champion: PipelineVersion,
    challenger: PipelineVersion,
    events: Sequence[Event],
    task: str,
    *,
    now: datetime | None,
    drift_sample: int = 5_000,
) -> dict[str, Any]:
    """Parity result, environment differences, online vs offline per arm and input drift (bounded sample)."""
    try:
        policy = policy_of(rollout)
    except PolicyError:
        policy = Policy()
    parity = [
        e.details["parity"]
        for e in events
        if isinstance(e.details.get("parity"), dict) and e.details.get("role", "challenger") == "challenger"
    ]
    # the same comparison the control loop's reproducibility gate makes (controller.loop.assess)
    reproductions = online_offline(store, rollout, task=task, policy=policy, now=now or system_clock())
    reference = challenger if challenger.profile else champion
    drift = None
    if reference.profile:
        live = repro_queries.raw_input_sample(
            store.db, rollout.deployment_id, rollout_id=rollout.id, limit=drift_sample
        )
        drift = rp.input_drift(reference.profile, live)
    return rp.report_section(parity, reproductions, drift, drift_against=reference.ref if drift else None)


def _rollout(r: Rollout, champion: PipelineVersion, challenger: PipelineVersion) -> dict[str, Any]:
    return {
        "id": r.id, "phase": r.phase, "mode": r.mode, "step_index": r.step_index,
        "canary_weight": r.canary_weight, "shadow_rate": r.shadow_rate,
        "champion": _version(champion), "challenger": _version(challenger),
        "created_by": r.created_by, "created_at": _iso(r.created_at), "step_started_at": _iso(r.step_started_at),
        "ended_at": _iso(r.ended_at), "reason": r.reason, "policy": r.policy,
    }  # fmt: skip


def _event(e: Event) -> dict[str, Any]:
    d = e.details
    step = d.get("step", d.get("step_index"))
    weight = d.get("canary_weight", d.get("weight"))
    return {
        "id": e.id, "at": _iso(e.at), "actor": e.actor, "action": e.action, "reason": e.reason, "message": e.message,
        "step": step if isinstance(step, int) else None, "canary_weight": _f(weight),
    }  # fmt: skip


def _arm_summary(
    arm: str, steps: Sequence[rq.StepCounts], version: PipelineVersion, latency: Mapping[int, int]
) -> dict[str, Any]:
    requests = sum(getattr(s, f"{arm}_ran") for s in steps)
    errors = sum(getattr(s, f"{arm}_errors") for s in steps)
    served = sum(getattr(s, f"served_{arm}") for s in steps)
    lat_n = sum(getattr(s, f"{arm}_latency_n") for s in steps)
    lat_sum = sum(getattr(s, f"{arm}_latency_sum") for s in steps)
    edges = measure.LATENCY_EDGES
    counts = np.asarray(measure.latency_counts(latency), dtype=np.int64)
    nonzero = np.nonzero(counts)[0]
    lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if nonzero.size else (0, 0)
    q = {p: _f(measure.latency_quantile(latency, p / 100)) if lat_n else None for p in (50, 90, 99)}
    wi = stats.wilson_interval(errors, requests) if requests else None
    return {
        "version": _version(version),
        "requests": requests,
        "served": served,
        "errors": errors,
        "error_rate": _f(errors / requests) if requests else None,
        "error_interval": _interval(wi.lower, wi.upper) if wi else [None, None],
        "latency_ms": {
            "n": lat_n, "mean": _f(lat_sum / lat_n) if lat_n else None, "p50": q[50], "p90": q[90], "p99": q[99],
            "histogram": {"edges_ms": [float(e) for e in edges[lo:hi + 1]] if nonzero.size else [],
                          "counts": counts[lo:hi].tolist()},
        },
    }  # fmt: skip


def _bucket_unit(span: tuple[float, float] | None) -> str:
    """Pick the unit the database groups rows by: seconds up to 20 minutes, minutes up to 20 hours,
    hours up to 20 days, else days (``_traffic`` then merges them into at most TIMELINE_BUCKETS points)."""
    length = 0.0 if span is None else span[1] - span[0]
    if length <= 1200:
        return "second"
    if length <= 20 * 3600:
        return "minute"
    return "hour" if length <= 20 * 86400 else "day"


UNIT_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def _per_step(overview: Sequence[rq.StepCounts]) -> list[rq.StepCounts]:
    """Add up the per (step, time bucket) rows of the overview scan into one row per step."""
    by_step: dict[int | None, list[rq.StepCounts]] = {}
    for row in overview:
        by_step.setdefault(row.step, []).append(row)
    out = []
    for step, parts in by_step.items():
        sums: dict[str, Any] = {"step": step, "bucket": None}
        for f in fields(rq.StepCounts):
            if f.name in ("step", "bucket"):
                continue
            values = [getattr(p, f.name) for p in parts]
            if f.name == "first_epoch":
                sums[f.name] = min((v for v in values if v is not None), default=None)
            elif f.name == "last_epoch":
                sums[f.name] = max((v for v in values if v is not None), default=None)
            else:
                sums[f.name] = sum(values)
        out.append(rq.StepCounts(**sums))
    return out


def _bucket_start(text: str) -> float:
    """Parse a bucket's start ("2025-03-01 12:05", "...T12", a date, or PostgreSQL's timestamp text) as UTC."""
    text = text.replace("T", " ")
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H", "%Y-%m-%d"):
        try:
            return (
                datetime.strptime(text[: len(datetime(2000, 1, 1).strftime(fmt))], fmt)
                .replace(tzinfo=UTC)
                .timestamp()
            )
        except ValueError:
            continue
    return math.nan


def _traffic(
    steps: Sequence[rq.StepCounts],
    overview: Sequence[rq.StepCounts],
    span: tuple[float, float] | None,
    unit: str,
) -> dict[str, Any]:
    step_rows = [
        {"step": s.step, "rows": s.rows, "served_champion": s.served_champion, "served_challenger": s.served_challenger,
         "first_at": _epoch_iso(s.first_epoch), "last_at": _epoch_iso(s.last_epoch)}
        for s in steps
    ]  # fmt: skip
    if span is None:
        return {"rows": 0, "steps": step_rows, "bucket_seconds": None, "start": None, "series": []}
    unit_seconds = UNIT_SECONDS[unit]
    # merge the database's buckets into "nice" wider ones: at most TIMELINE_BUCKETS points however long
    # and about TIMELINE_MIN_ROWS rows or more each, so a share per point is not just 0 or 100%
    length, total = span[1] - span[0], sum(s.rows for s in steps)

    def fits(f: int) -> bool:
        points = max(length / (unit_seconds * f), 1.0)
        return points <= TIMELINE_BUCKETS and (total / points >= TIMELINE_MIN_ROWS or points <= 12)

    factor = next(
        (f for f in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600) if fits(f)),
        math.ceil(length / (unit_seconds * TIMELINE_BUCKETS)),
    )
    seconds = unit_seconds * factor
    start = math.floor(span[0] / unit_seconds) * unit_seconds  # the first request, to the database unit
    merged: dict[tuple[float, int | None], dict[str, Any]] = {}
    counted = ("rows", "served_challenger", "pairs", "agree", "champion_errors", "challenger_errors")
    for o in overview:
        t = math.floor((_bucket_start(o.bucket or "") - start) / seconds) * seconds
        point = merged.setdefault((t, o.step), {"t": t, "step": o.step, **dict.fromkeys(counted, 0)})
        for name, value in zip(
            counted,
            (o.rows, o.served_challenger, o.both_outputs, o.agree, o.champion_errors, o.challenger_errors),
            strict=True,
        ):
            point[name] += value
    series = sorted(merged.values(), key=lambda p: (p["t"], p["step"] if p["step"] is not None else -1))  # fmt: skip
    return {
        "rows": sum(s.rows for s in steps),
        "steps": step_rows,
        "bucket_seconds": seconds,
        "start": _epoch_iso(start),
        "series": [p for p in series if math.isfinite(float(p["t"] or 0.0))],
    }


def _agreement(
    table_rows: Sequence[tuple[Any, ...]], steps: Sequence[rq.StepCounts]
) -> dict[str, Any] | None:
    table = _confusion(table_rows)
    n = sum(s.both_outputs for s in steps)
    agree = sum(s.agree for s in steps)
    labels = sorted({a for a, _, _ in table} | {b for _, b, _ in table})
    index = {label: i for i, label in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for a, b, k in table:
        counts[index[a]][index[b]] += k
    res = stats.agreement(agree=agree, n=n) if n else None
    kappa = stats.cohen_kappa(counts).kappa if n and labels else None
    return {
        "n": n, "agree": agree, "share": _f(res.share) if res else None,
        "interval": _interval(res.interval.lower, res.interval.upper) if res else [None, None],
        "kappa": _f(kappa), "table": {"labels": labels, "counts": counts, "rows": "champion", "columns": "challenger"},
    }  # fmt: skip


def _confusion(table_rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, str, int]]:
    """Collapse the class/score table to (champion class, challenger class, count)."""
    counts: dict[tuple[str, str], int] = {}
    for a, b, _s1, _s2, n in table_rows:
        counts[(a, b)] = counts.get((a, b), 0) + n
    return [(a, b, n) for (a, b), n in counts.items()]


def _differences(steps: Sequence[rq.StepCounts], task: str) -> dict[str, Any] | None:
    n = sum(s.diff_n for s in steps)
    if not n:
        return None
    total = sum(s.diff_sum for s in steps)
    sq = sum(s.diff_sq for s in steps)
    mean = total / n
    var = max((sq - total * total / n) / (n - 1), 0.0) if n > 1 else math.nan
    return {
        "of": "challenger value - champion value"
        if task == "regression"
        else "challenger score - champion score",
        "n": n,
        "mean": _f(mean),
        "sd": _f(math.sqrt(var)),
        "mean_abs": _f(sum(s.diff_abs for s in steps) / n),
    }


def _drift(
    champion: Sequence[int], challenger: Sequence[int]
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    if sum(champion) == 0 or sum(challenger) == 0:
        return None, None
    p = stats.psi_from_counts(champion, challenger)
    js = stats.jensen_shannon(champion, challenger)
    return (
        {"value": _f(p.psi), "noise_floor": _f(p.noise_floor), "threshold": _f(p.threshold),
         "exceeds_noise": bool(p.exceeds_noise), "bins": p.bins},
        {"divergence": _f(js[0]), "distance": _f(js[1]), "unit": "bits"},
    )  # fmt: skip


def _ks(
    sample: Sequence[tuple[float, float]], pairs: int, column: str, notes: list[str]
) -> dict[str, Any] | None:
    if len(sample) < 2:
        return None
    arr = np.asarray(sample, dtype=float)
    res = stats.ks_test(arr[:, 0], arr[:, 1])
    sampled = len(sample) < pairs
    if sampled:
        notes.append(
            f"Kolmogorov–Smirnov on {column}s uses a systematic sample of {len(sample)} of {pairs} pairs."
        )
    return {"statistic": _f(res.statistic), "p_value": _f(res.p_value), "n": len(sample), "sampled": sampled}


def _distributions(
    db: Any,
    rollout_id: int,
    task: str,
    table_rows: Sequence[tuple[Any, ...]],
    ks_pairs: Sequence[tuple[float, float]],
    pairs: int,
    notes: list[str],
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if not pairs:
        return out
    if task == "classification":
        table = _confusion(table_rows)
        labels = sorted({a for a, _, _ in table} | {b for _, b, _ in table})
        c1 = [sum(k for a, _, k in table if a == label) for label in labels]
        c2 = [sum(k for _, b, k in table if b == label) for label in labels]
        psi, js = _drift(c1, c2)
        out.append(
            {
                "kind": "classes",
                "labels": labels,
                "edges": None,
                "champion": c1,
                "challenger": c2,
                "psi": psi,
                "jensen_shannon": js,
                "ks": None,
            }
        )
        s1, s2 = [0] * SCORE_BINS, [0] * SCORE_BINS
        for _a, _b, x, y, n in table_rows:
            if x is not None:
                s1[min(max(int(x), 0), SCORE_BINS - 1)] += n
            if y is not None:
                s2[min(max(int(y), 0), SCORE_BINS - 1)] += n
        if sum(s1) or sum(s2):
            psi, js = _drift(s1, s2)
            edges = [i / SCORE_BINS for i in range(SCORE_BINS + 1)]
            out.append(
                {
                    "kind": "scores",
                    "labels": [f"{edges[i]:.2f}" for i in range(SCORE_BINS)],
                    "edges": edges,
                    "champion": s1,
                    "challenger": s2,
                    "psi": psi,
                    "jensen_shannon": js,
                    "ks": _ks(ks_pairs, pairs, "score", notes),
                }
            )
        return out
    bounds = rq.output_range(db, rollout_id)
    if bounds is None:
        return out
    low, high = bounds
    if high <= low:
        high = low + 1.0
    buckets = rq.value_buckets(db, rollout_id, low=low, high=high, bins=VALUE_BINS)
    v1 = [buckets["champion"].get(i, 0) for i in range(VALUE_BINS)]
    v2 = [buckets["challenger"].get(i, 0) for i in range(VALUE_BINS)]
    edges = [low + (high - low) * i / VALUE_BINS for i in range(VALUE_BINS + 1)]
    psi, js = _drift(v1, v2)
    out.append(
        {
            "kind": "values",
            "labels": [f"{e:.4g}" for e in edges[:-1]],
            "edges": edges,
            "champion": v1,
            "challenger": v2,
            "psi": psi,
            "jensen_shannon": js,
            "ks": _ks(ks_pairs, pairs, "value", notes),
        }
    )
    return out


def _positive_class(version: PipelineVersion, labels: Sequence[str]) -> str | None:
    if version.classes is not None and len(version.classes) == 2:
        return str(version.classes[1])
    return labels[1] if len(labels) == 2 else None


def _f1(
    confusion: Mapping[tuple[str, str], int], classes: Sequence[str], positive: str | None
) -> dict[str, Any]:
    def f1_of(cls: str) -> float:
        tp = confusion.get((cls, cls), 0)
        fp = sum(n for (p, y), n in confusion.items() if p == cls and y != cls)
        fn = sum(n for (p, y), n in confusion.items() if y == cls and p != cls)
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan

    if positive is not None:
        return {"value": _f(f1_of(positive)), "average": f"binary (positive class {positive})"}
    values = [f1_of(c) for c in classes]
    finite = [v for v in values if math.isfinite(v)]
    return {"value": _f(sum(finite) / len(finite)) if finite else None, "average": "macro"}


def _auc(buckets: Mapping[tuple[int, str], int], positive: str) -> dict[str, Any] | None:
    """ROC AUC from score histograms by label: P(score+ > score-) + P(same bucket)/2, Hanley–McNeil SE."""
    bins = max((b for b, _ in buckets), default=-1) + 1
    pos = np.zeros(bins)
    neg = np.zeros(bins)
    for (b, y), n in buckets.items():
        (pos if y == positive else neg)[b] += n
    n1, n0 = pos.sum(), neg.sum()
    if n1 == 0 or n0 == 0:
        return None
    below = np.cumsum(neg) - neg
    auc = float((pos * (below + 0.5 * neg)).sum() / (n1 * n0))
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    se = math.sqrt(
        max(auc * (1 - auc) + (n1 - 1) * (q1 - auc * auc) + (n0 - 1) * (q2 - auc * auc), 0.0) / (n1 * n0)
    )
    return {
        "value": _f(auc),
        "interval": _interval(max(auc - 1.96 * se, 0.0), min(auc + 1.96 * se, 1.0)),
        "method": f"binned scores ({AUC_BINS} bins), Hanley–McNeil interval",
    }


def _label_classes(rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, str, str, int]]:
    """Collapse label_confusion rows (with score buckets) to (champion, challenger, label class, count)."""
    counts: dict[tuple[str, str, str], int] = {}
    for a, b, y, _b1, _b2, n in rows:
        counts[(a, b, y)] = counts.get((a, b, y), 0) + n
    return [(a, b, y, n) for (a, b, y), n in counts.items()]


def _labels(label_rows: Any, auc_buckets: Any, task: str, version: PipelineVersion) -> dict[str, Any]:
    if task == "classification":
        rows = label_rows
        n = sum(k for *_, k in rows)
        if not n:
            return {
                "available": False,
                "n": 0,
                "message": "no labels have arrived for this rollout's requests yet",
            }
        classes = sorted({y for _, _, y, _ in rows} | {a for a, _, _, _ in rows} | {b for _, b, _, _ in rows})
        positive = _positive_class(version, classes)
        out: dict[str, Any] = {"available": True, "n": n}
        for i, arm in enumerate(("champion", "challenger")):
            conf: dict[tuple[str, str], int] = {}
            for p1, p2, y, k in rows:
                pred = (p1, p2)[i]
                conf[(pred, y)] = conf.get((pred, y), 0) + k
            right = sum(k for (p, y), k in conf.items() if p == y)
            wi = stats.wilson_interval(right, n)
            out[arm] = {
                "accuracy": {
                    "value": _f(right / n),
                    "interval": _interval(wi.lower, wi.upper),
                    "correct": right,
                },
                "f1": _f1(conf, classes, positive),
                "roc_auc": _auc(auc_buckets[arm], positive) if auc_buckets and positive is not None else None,
            }
        b = sum(k for p1, p2, y, k in rows if p1 == y and p2 != y)
        c = sum(k for p1, p2, y, k in rows if p1 != y and p2 == y)
        d = (c - b) / n
        var = max(((b + c) / n - d * d) / n, 0.0)
        test = stats.mcnemar(b, c, method="midp")
        out["paired"] = {
            "method": "McNemar mid-p (two-sided); difference = challenger - champion accuracy, paired Wald interval",
            "champion_right_challenger_wrong": b, "champion_wrong_challenger_right": c,
            "difference": _f(d), "interval": _interval(d - 1.96 * math.sqrt(var), d + 1.96 * math.sqrt(var)),
            "statistic": _f(test.statistic), "p_value": _f(test.p_value),
        }  # fmt: skip
        return out
    s = label_rows
    n = int(s["n"])
    if n == 0:
        return {
            "available": False,
            "n": 0,
            "message": "no labels have arrived for this rollout's requests yet",
        }
    if n < 2:
        return {
            "available": False,
            "n": n,
            "message": "fewer than two labelled pairs where both arms answered",
        }
    out = {"available": True, "n": n}
    z = 1.959963984540054
    for arm, sfx in (("champion", "1"), ("challenger", "2")):
        mae = s["abs" + sfx] / n
        sd = math.sqrt(max((s["sq" + sfx] - s["abs" + sfx] ** 2 / n) / (n - 1), 0.0))
        t = float(sps.t.ppf(0.975, n - 1))
        mse = s["sq" + sfx] / n
        sd_sq = math.sqrt(max((s["quad" + sfx] - s["sq" + sfx] ** 2 / n) / (n - 1), 0.0))
        lo_mse, hi_mse = max(mse - z * sd_sq / math.sqrt(n), 0.0), mse + z * sd_sq / math.sqrt(n)
        out[arm] = {
            "mae": {
                "value": _f(mae),
                "interval": _interval(mae - t * sd / math.sqrt(n), mae + t * sd / math.sqrt(n)),
            },
            "rmse": {
                "value": _f(math.sqrt(mse)),
                "interval": _interval(math.sqrt(lo_mse), math.sqrt(hi_mse)),
            },
        }
    mean = s["diff"] / n
    sd = math.sqrt(max((s["diff_sq"] - s["diff"] ** 2 / n) / (n - 1), 0.0))
    se = sd / math.sqrt(n)
    t_stat = mean / se if se > 0 else 0.0
    q = float(sps.t.ppf(0.975, n - 1))
    out["paired"] = {
        "method": "paired t test on |challenger error| - |champion error| (two-sided)",
        "difference": _f(mean), "interval": _interval(mean - q * se, mean + q * se), "statistic": _f(t_stat),
        "p_value": _f(2 * float(sps.t.sf(abs(t_stat), n - 1))), "sd": _f(sd),
    }  # fmt: skip
    return out


def _outcome_label(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return Outcome(value).label
    text = str(value).lower().replace("_", "-") if value is not None else "unknown"
    return text if text in ("pass", "inconclusive", "no-data", "fail") else "unknown"


def gate_threshold(gate: str, margin: float | None, reason: str = "") -> float | None:
    """Return the value a gate's bound is compared with, in the bound's unit (see controller.core.judge)."""
    if margin is None:
        return None
    if gate == "accuracy":
        return -margin  # the bound is the accuracy difference, challenger - champion
    if gate in ("latency_p99", "latency_p99_slo"):
        return 0.01  # the bound is the share of challenger requests above the latency limit
    if gate == "srm":
        return None
    if gate.startswith("segment[") or gate.split("[", 1)[0] in (
        *quality_metrics.CLASS_METRICS,
        "roc_auc",
        "log_loss",
        "brier",
        "rmse",
        "pinball",
        "outcome",
    ):
        # controller.core.metrics: the bound is the difference challenger - champion in the metric's unit
        # (a segment's MAE gate is shown as a relative change, like the regression gate)
        return -margin if quality_metrics.higher_is_better(gate, reason) else margin
    return margin


def _verdict(d: Mapping[str, Any]) -> dict[str, Any]:
    gate = str(d.get("gate", "?"))
    interval = d.get("interval")
    if isinstance(interval, Mapping):
        interval = [interval.get("lower"), interval.get("upper")]
    margin = _f(d.get("margin"))
    n1, n2 = d.get("n_champion"), d.get("n_challenger")
    return {
        "gate": gate, "role": str(d.get("role", "")), "outcome": _outcome_label(d.get("outcome")),
        "statistic": _f(d.get("statistic")), "bound": _f(d.get("bound")), "threshold": _f(gate_threshold(gate, margin, str(d.get("reason", "")))),
        "effect": _f(d.get("effect")), "margin": margin,
        "n_champion": int(n1) if isinstance(n1, int | float) else None,
        "n_challenger": int(n2) if isinstance(n2, int | float) else None,
        "reason": str(d.get("reason", "")), "p_value": _f(d.get("p_value")),
        "interval": _interval(*interval) if isinstance(interval, list | tuple) and len(interval) == 2 else None,
    }  # fmt: skip


def arms_of(analysis: Analysis) -> dict[str, dict[str, float]]:
    """Return each gate's figure per arm at one look, as the controller stored it: the two-arm core
    gates' (``metrics["arms"]``, ``judge.arm_values``) and the quality gates' (``metrics["quality"]``,
    ``metrics.arm_values``, whole population only). Analyses stored before either was kept give none."""
    m = analysis.metrics if isinstance(analysis.metrics, Mapping) else {}
    out: dict[str, dict[str, float]] = {}
    rows = (
        [(gate, row) for gate, row in (m.get("arms") or {}).items()]
        if isinstance(m.get("arms"), Mapping)
        else []
    )
    rows += [
        (row.get("gate"), row)
        for row in m.get("quality") or []
        if isinstance(row, Mapping) and row.get("segment") is None
    ]
    for gate, row in rows:
        if not isinstance(row, Mapping):
            continue
        c, h = _f(row.get("champion")), _f(row.get("challenger"))
        if c is not None and h is not None:
            out[str(gate)] = {"champion": c, "challenger": h}
    return out


def _gates(analyses: Sequence[Analysis]) -> dict[str, Any]:
    series: list[dict[str, Any]] = [
        {"at": _iso(a.evaluated_at), "step": a.step, "outcome": _outcome_label(a.outcome),
         "decision": a.metrics.get("decision") if isinstance(a.metrics, Mapping) else None,
         "verdicts": [_verdict(v) for v in a.verdicts if isinstance(v, Mapping)], "arms": arms_of(a)}
        for a in analyses
    ]  # fmt: skip
    latest = series[-1] if series else None
    primary = None
    if latest:
        # The primary gate: the quality gate (accuracy / regression) if it has a bound yet, else the first
        # required gate with a bound at some evaluation, else any gate with a bound.
        bounded = {v["gate"] for a in series for v in a["verdicts"] if v["bound"] is not None}
        required = [v["gate"] for v in latest["verdicts"] if v["role"] == "required" and v["gate"] in bounded]
        preferred = [g for g in ("accuracy", "regression") if g in bounded]
        others = [v["gate"] for v in latest["verdicts"] if v["gate"] in bounded]
        primary = (preferred or required or others or [None])[0]
    return {"analyses": len(series), "primary": primary, "latest": latest, "series": series}


def _segments(
    db: Any,
    rollout_id: int,
    columns: Sequence[str],
    version: PipelineVersion,
    rows: int,
    labelled: bool,
    task: str,
    sample: int,
    *,
    store_raw: bool,
    window: int,
) -> dict[str, Any]:
    method = (
        "Segments are aggregated in SQL over every stored raw input; numeric columns are cut into "
        f"quantile bins whose edges come from a systematic sample of at most {sample} rows."
    )
    block: dict[str, Any] = {"columns": list(columns), "method": method, "results": [], "message": None}
    if not columns:
        block["message"] = "no segment columns chosen"
        return block
    if not store_raw:
        block["message"] = "this deployment does not store raw inputs, so no segments can be computed"
        return block
    min_id = rq.recent_floor_id(db, rollout_id, window) if rows > window else None
    if min_id is not None:
        block["method"] = (
            f"Segments are aggregated in SQL over the stored raw inputs of the rollout's most recent "
            f"{window} of {rows} rows (a bound on the report's cost: each segment column reads a JSON "
            f"field per row); numeric columns are cut into quantile bins whose edges come from a "
            f"systematic sample of at most {sample} of those rows."
        )
    total = min(rows, window)
    dtypes = {c.name: c.dtype for c in version.input_schema}
    wanted = [c for c in columns if c in dtypes or not dtypes]
    unknown = [c for c in columns if c not in wanted]
    if unknown:
        block["message"] = f"not input columns of {version.ref}: {', '.join(unknown)}"

    def one(column: str) -> dict[str, Any]:
        kind = dtypes.get(column, "str")
        edges: list[float] | None = None
        labels_of: dict[str, str] = {}
        if kind in ("float", "int"):
            values = [
                float(v)
                for v in rq.segment_sample(db, rollout_id, column, limit=sample, total=total, min_id=min_id)
                if v is not None and _f(v) is not None
            ]
            if values:
                cuts = np.unique(np.quantile(values, [0.2, 0.4, 0.6, 0.8]))
                edges = [float(c) for c in cuts]
                bounds = [-math.inf, *edges, math.inf]
                labels_of = {
                    f"bin{i}": _range_label(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)
                }
        groups = rq.segments(db, rollout_id, column, numeric_edges=edges, labelled=labelled, min_id=min_id)
        m = max(len(groups), 1)
        items = [_segment(g, labels_of, kind, task, labelled, m) for g in groups]
        return {
            "column": column,
            "kind": "numeric" if edges is not None else "categorical",
            "segments": items,
        }

    # One scan per column, side by side on their own connections.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mlcanary-segments") as pool:
        block["results"] = list(pool.map(one, wanted))
    return block


def _range_label(lo: float, hi: float) -> str:
    if not math.isfinite(lo):
        return f"< {hi:.4g}"
    if not math.isfinite(hi):
        return f">= {lo:.4g}"
    return f"[{lo:.4g}, {hi:.4g})"


def _segment(
    g: Mapping[str, Any], labels_of: Mapping[str, str], kind: str, task: str, labelled: bool, m: int
) -> dict[str, Any]:
    """One segment's effect with a Bonferroni-adjusted 95% interval over the column's m segments."""
    value = labels_of.get(g["segment"], g["segment"])
    if kind == "bool":
        value = {"1": "true", "0": "false"}.get(value, value)
    z = float(sps.norm.ppf(1 - 0.05 / (2 * m)))
    pairs = int(g["pairs"])
    rows = int(g["rows"])
    out: dict[str, Any] = {
        "value": value, "rows": rows, "pairs": pairs,
        "champion_errors": int(g["champion_errors"]), "challenger_errors": int(g["challenger_errors"]),
        "agreement": _f(g["agree"] / pairs) if pairs and task == "classification" else None,
        "mean_difference": _f(g["diff_sum"] / pairs) if pairs else None,
    }  # fmt: skip
    n_lab = int(g.get("labelled", 0) or 0)
    effect = interval = None
    name = "error rate difference (challenger - champion)"
    if labelled and n_lab and task == "classification":
        b, c = int(g["worse"]), int(g["better"])
        effect = (c - b) / n_lab
        half = z * math.sqrt(max(((b + c) / n_lab - effect**2) / n_lab, 0.0))
        interval = (effect - half, effect + half)
        name = "accuracy difference (challenger - champion)"
        out["labelled"] = n_lab
        out["champion_accuracy"] = _f(g["champion_right"] / n_lab)
        out["challenger_accuracy"] = _f(g["challenger_right"] / n_lab)
        worse = interval[1] < 0
    elif labelled and n_lab and task == "regression":
        effect = (g["abs2"] - g["abs1"]) / n_lab
        var = max((g["diff_sq"] - effect * effect * n_lab) / max(n_lab - 1, 1), 0.0)
        half = z * math.sqrt(var / n_lab)
        interval = (effect - half, effect + half)
        name = "MAE difference (challenger - champion)"
        out["labelled"] = n_lab
        worse = interval[0] > 0
    elif rows:
        e1, e2 = out["champion_errors"] / rows, out["challenger_errors"] / rows
        effect = e2 - e1
        half = z * math.sqrt(max(e1 * (1 - e1) + e2 * (1 - e2), 1.0 / rows) / rows)
        interval = (effect - half, effect + half)
        worse = interval[0] > 0
    else:
        worse = False
    out.update(
        {
            "effect": _f(effect),
            "effect_name": name,
            "interval": _interval(*interval) if interval else [None, None],
            "flag": "worse" if worse else "ok",
        }
    )
    return out


def _sample_size(
    policy: Mapping[str, Any],
    task: str,
    agreement_: Mapping[str, Any] | None,
    labels: Mapping[str, Any],
    version: PipelineVersion,
) -> dict[str, Any]:
    alpha = _policy_number(policy, ("alpha",), 0.05)
    n_star = _policy_number(policy, ("n_star",), 5000.0)
    base = {"status": "unknown", "needed": None, "have": None, "method": None}
    if task == "classification":
        margin = _policy_number(policy, ("gates", "accuracy", "margin"), 0.01)
        paired = labels.get("paired") if labels.get("available") else None
        if paired:
            n = int(labels["n"])
            b, c = paired["champion_right_challenger_wrong"], paired["champion_wrong_challenger_right"]
            disc, diff = (b + c) / n, (c - b) / n
            if diff <= -margin:
                return {**base, "status": "worse", "have": n,
                        "message": f"the challenger's accuracy is {-diff:.2%} lower, beyond the {margin:.2%} margin: "
                                   "no number of pairs will show non-inferiority"}  # fmt: skip
            plan = stats.plan_labelled_pairs(
                margin=margin, discordance=max(disc, 1e-6), difference=diff, alpha=alpha, n_star=n_star
            )
            detect = None
            if b != c:
                detect = math.ceil(stats.mcnemar_sample_size(b / n, c / n, alpha=alpha))
            needed = max(plan.always_valid_n - n, 0)
            return {"status": "enough" if needed == 0 else "collecting", "needed": needed, "have": n,
                    "total": plan.always_valid_n, "fixed_n": plan.fixed_n, "mcnemar_n_to_detect_difference": detect,
                    "method": "plan_labelled_pairs (always-valid, 80% power) at the observed discordance and difference",
                    "message": f"{needed} more labelled pairs to show non-inferiority at margin {margin:g} "
                               f"(about {plan.always_valid_n} in all; {plan.fixed_n} for a fixed-n test)"}  # fmt: skip
        positive = version.classes is not None and len(version.classes) == 2
        if agreement_ and agreement_.get("share") is not None and positive:
            disc = max(1.0 - float(agreement_["share"]), 1e-6)
            plan = stats.plan_labelled_pairs(margin=margin, discordance=disc, alpha=alpha, n_star=n_star)
            return {"status": "collecting", "needed": plan.always_valid_n, "have": 0, "total": plan.always_valid_n,
                    "fixed_n": plan.fixed_n, "method": "plan_labelled_pairs with discordance = disagreement share "
                    "(binary classes: when the arms disagree exactly one is right) and equal accuracy assumed",
                    "message": f"about {plan.always_valid_n} labelled pairs needed to show non-inferiority at margin "
                               f"{margin:g}, assuming equal accuracy; no labels yet"}  # fmt: skip
        return {**base, "message": "not enough data yet to plan: no labels and no agreement figure"}
    margin = _policy_number(policy, ("gates", "regression", "margin"), 0.05)
    paired = labels.get("paired") if labels.get("available") else None
    if paired and labels.get("champion"):
        n = int(labels["n"])
        mae = float(labels["champion"]["mae"]["value"] or 0.0)
        diff, sd = float(paired["difference"] or 0.0), float(paired["sd"] or 0.0)
        room = margin * mae - diff
        if room <= 0:
            return {
                **base,
                "status": "worse",
                "have": n,
                "message": "the challenger's MAE is already worse than the margin allows",
            }
        z = float(sps.norm.ppf(1 - alpha) + sps.norm.ppf(0.8))
        total = math.ceil((z * sd / room) ** 2)
        needed = max(total - n, 0)
        return {"status": "enough" if needed == 0 else "collecting", "needed": needed, "have": n, "total": total,
                "method": "fixed-n one-sided paired t (80% power); the always-valid sequence needs somewhat more",
                "message": f"{needed} more labelled pairs (about {total} in all) to show the MAE is within "
                           f"{margin:.0%} of the champion's"}  # fmt: skip
    return {
        **base,
        "message": "no labels yet: the number of labelled pairs needed is planned once some arrive",
    }


def _plan(
    rollout: Rollout, steps: Sequence[rq.StepCounts], analyses: Sequence[Analysis], events: Sequence[Event]
) -> list[dict[str, Any]]:
    """The policy's plan, one entry per step: what it was, what happened in it, and what ended it."""
    try:
        policy = policy_of(rollout)
    except PolicyError:
        return []
    stages = [(stage_name(st), st.weight) for st in policy.plan()]
    if policy.watch.enabled:
        stages.append(("post-promotion watch", 100.0))
    by_step = {s.step: s for s in steps}
    last_outcome: dict[int, str] = {}
    for a in analyses:
        last_outcome[a.step] = _outcome_label(a.outcome)
    ended_by: dict[int, Event] = {}
    for e in events:
        frm, to = e.details.get("from"), e.details.get("to")
        if not (isinstance(frm, Mapping) and isinstance(to, Mapping) and isinstance(frm.get("step"), int)):
            continue
        if to.get("step") != frm.get("step") or to.get("phase") in ("promoted", "rolled_back", "aborted"):
            ended_by[int(frm["step"])] = e
    current, phase = rollout.step_index, rollout.phase
    out = []
    for k, (name, weight) in enumerate(stages):
        if k < current:
            status = "passed"
        elif k > current:
            status = "skipped" if phase == "promoted" else "not reached"
        else:
            status = {
                "promoted": "passed",
                "rolled_back": "rolled back",
                "aborted": "aborted",
                "paused": "paused",
                "pending": "not started",
            }.get(phase, "in progress")
        counts = by_step.get(k)
        event = ended_by.get(k)
        if status == "passed" and event is not None and event.actor != "controller":
            status = f"promoted by {event.actor}"
        out.append(
            {
                "step": k, "name": name, "weight": weight, "status": status,
                "requests": counts.rows if counts else 0, "pairs": counts.both_outputs if counts else 0,
                "first_at": _epoch_iso(counts.first_epoch) if counts else None,
                "last_at": _epoch_iso(counts.last_epoch) if counts else None,
                "outcome": last_outcome.get(k),
                "ended_by": None if event is None else {"at": _iso(event.at), "actor": event.actor,
                                                         "action": event.action, "message": event.message},
            }
        )  # fmt: skip
    return out


def _curves(
    task: str,
    label_rows: Sequence[tuple[Any, ...]],
    auc_buckets: Mapping[str, Mapping[tuple[int, str], int]] | None,
    positive: str | None,
    regression_rows: Sequence[tuple[float, float, float]],
    rows: int,
    notes: list[str],
) -> dict[str, Any]:
    """Curves against the labels: ROC per arm and each arm's confusion matrix (classification), or
    predicted-vs-actual and residual histograms per arm (regression). Reliability curves are the
    quality block's."""
    out: dict[str, Any] = {"roc": None, "confusion": None, "regression": None}
    if task == "classification":
        if label_rows:
            classes = sorted(
                {r[2] for r in label_rows} | {r[0] for r in label_rows} | {r[1] for r in label_rows}
            )
            index = {c: i for i, c in enumerate(classes)}
            matrices = {arm: [[0] * len(classes) for _ in classes] for arm in ("champion", "challenger")}
            for a, b, y, *_rest in label_rows:
                n = int(_rest[-1])
                matrices["champion"][index[y]][index[a]] += n
                matrices["challenger"][index[y]][index[b]] += n
            out["confusion"] = {"labels": classes, "rows": "label", "columns": "prediction", **matrices}
        if auc_buckets and positive is not None:
            roc: dict[str, Any] = {"positive": positive}
            for arm in ("champion", "challenger"):
                pos, neg = np.zeros(AUC_BINS), np.zeros(AUC_BINS)
                for (b, y), n in auc_buckets[arm].items():
                    (pos if y == positive else neg)[min(max(int(b), 0), AUC_BINS - 1)] += n
                n1, n0 = pos.sum(), neg.sum()
                if n1 and n0:
                    tpr = np.concatenate([[0.0], np.cumsum(pos[::-1]) / n1])
                    fpr = np.concatenate([[0.0], np.cumsum(neg[::-1]) / n0])
                    roc[arm] = [[_f(x), _f(y)] for x, y in zip(fpr, tpr, strict=True)]
                else:
                    roc[arm] = []
            out["roc"] = roc  # reliability curves: the quality block's (controller.reports.quality)
        return out
    if len(regression_rows) >= 2:
        arr = np.asarray(regression_rows, dtype=float)
        lo, hi = float(arr.min()), float(arr.max())
        hi = hi if hi > lo else lo + 1.0
        bins = 20
        grid = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
        residuals = np.concatenate([arr[:, 0] - arr[:, 2], arr[:, 1] - arr[:, 2]])
        r_lo, r_hi = float(np.quantile(residuals, 0.005)), float(np.quantile(residuals, 0.995))
        r_hi = r_hi if r_hi > r_lo else r_lo + 1.0
        r_edges = np.linspace(r_lo, r_hi, 31)
        reg: dict[str, Any] = {"n": len(arr), "sampled": len(arr) >= CURVE_SAMPLE, "edges": grid,
                               "residual_edges": [float(e) for e in r_edges]}  # fmt: skip
        for i, arm in enumerate(("champion", "challenger")):
            h, _, _ = np.histogram2d(arr[:, 2], arr[:, i], bins=[grid, grid])
            res = np.clip(arr[:, i] - arr[:, 2], r_lo, r_hi)
            reg[arm] = {
                "actual_vs_predicted": h.astype(int).tolist(),  # [actual bin][predicted bin]
                "residual_counts": np.histogram(res, bins=r_edges)[0].astype(int).tolist(),
                "residual_mean": _f(float((arr[:, i] - arr[:, 2]).mean())),
            }
        out["regression"] = reg
        if reg["sampled"]:
            notes.append(
                f"Predicted-vs-actual and residual plots use a systematic sample of {len(arr):,} labelled pairs."
            )
    return out


def _latency_series(
    sample: Sequence[tuple[datetime, float | None, float | None]],
    traffic: Mapping[str, Any],
    rows: int,
    notes: list[str],
) -> dict[str, Any]:
    """p50 and p99 latency per arm over time, in the traffic plot's buckets (widened until each holds
    about 25 rows of the sample, so a p99 rests on more than a handful of requests)."""
    if not sample or traffic["start"] is None:
        return {"bucket_seconds": None, "sampled": False, "points": []}
    seconds = float(traffic["bucket_seconds"])
    start = datetime.fromisoformat(traffic["start"]).timestamp()
    times = np.asarray([t.replace(tzinfo=t.tzinfo or UTC).timestamp() for t, _, _ in sample]) - start
    length = max(float(times.max()), seconds)
    width = seconds
    while len(sample) / max(length / width, 1.0) < 25 and width < length:
        width *= 2
    keys = np.floor(times / width).astype(int)
    latencies = {
        i: np.asarray([math.nan if row[i] is None else row[i] for row in sample], dtype=float) for i in (1, 2)
    }
    points = []
    for k in np.unique(keys):
        mask = keys == k
        point: dict[str, Any] = {"t": float(k * width), "n": int(mask.sum())}
        for i, arm in ((1, "champion"), (2, "challenger")):
            values = latencies[i][mask]
            values = values[np.isfinite(values)]
            point[arm] = {
                "n": int(values.size),
                "p50": _f(float(np.quantile(values, 0.5))) if values.size else None,
                "p99": _f(float(np.quantile(values, 0.99))) if values.size else None,
            }
        points.append(point)
    sampled = len(sample) < rows
    if sampled:
        notes.append(f"Latency over time uses a systematic sample of {len(sample):,} of {rows:,} requests.")
    return {"bucket_seconds": width, "sampled": sampled, "points": points}


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def render_html(report: Mapping[str, Any]) -> str:
    """Render the report as one self-contained HTML page (inline CSS and SVG; no script, no network)."""
    return html_page(report, quality=quality_html(report))


_MD_SPECIAL = str.maketrans(
    {
        **{c: "\\" + c for c in "\\`[]|"},
        "<": "&lt;",
        ">": "&gt;",
        "&": "&amp;",
        "\n": " ",
        "\r": " ",
    }
)


def _md(value: Any, fmt: str = "{:.4g}") -> str:
    """Write a value for Markdown: numbers formatted, text escaped (no HTML, links or emphasis).

    Segment values, class labels, reasons and event messages come from clients and operators; a
    Markdown viewer must show them as text, never render `<img onerror=...>` or `[x](javascript:...)`:
    HTML is escaped as entities, link brackets, code backticks and table pipes with a backslash.
    """
    if value is None:
        return "–"
    if isinstance(value, float):
        return fmt.format(value)
    if isinstance(value, int):
        return str(value)
    return str(value).translate(_MD_SPECIAL)


def _md_pct(value: Any) -> str:
    return "–" if value is None else f"{value:.2%}"


def _md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _decision_notes(rollout: Any, events: Sequence[Any]) -> list[str]:
    """The error budget the rollout's decisions used, and its post-promotion watch, if any."""
    from controller.core.policy import Policy, PolicyError

    try:
        policy = Policy.parse(rollout.policy)
    except PolicyError:
        return []
    b = policy.budget()
    out = [
        f"Error budget: alpha {b['alpha']:g} split as harm family {b['harm']:.4g} (Holm over every required "
        f"and guardrail gate that can roll back, no-data gates counted with p = 1), each of the three veto "
        f"slots {b['veto']:.4g} (SRM {b['srm']:.4g}), online versus offline {b['reproducibility']:.4g} per arm."
    ]
    watch = [e for e in events if e.action == "rollout.watch"]
    if rollout.phase == "watching" or watch:
        since = _iso(watch[-1].at) if watch else "?"
        state = {
            "watching": "in progress",
            "promoted": "passed",
            "rolled_back": "ended by a revert to the previous champion",
        }.get(rollout.phase, rollout.phase)
        out.append(
            f"Post-promotion watch (step {len(policy.plan())}) since {since}: {state}. The challenger answered "
            f"every request while the previous champion scored in shadow; in that step the stored champion "
            f"columns hold the new champion."
        )
    return out


def render_markdown(report: Mapping[str, Any]) -> str:
    """Render the report as Markdown: the same sections as the HTML page, tables instead of plots."""
    r = report
    ro = r["rollout"]
    out = [
        f"# {r['deployment']['name']}: {ro['challenger']['ref']} against {ro['champion']['ref']}",
        "",
        f"**{_md(r['verdict'])}**",
        "",
        f"Rollout {ro['id']}, {ro['mode']}, phase {ro['phase']}, challenger weight "
        f"{ro['canary_weight']:g}%, shadow rate {ro['shadow_rate']:g}; started {ro['created_at']} by "
        f"{_md(ro['created_by'])}. Generated {r['generated_at']}.",
        "",
    ]
    if r["plan"]:
        out += ["## Plan", ""]
        out += _md_table(
            ["step", "stage", "status", "requests", "pairs", "last evaluation", "ended"],
            [
                [
                    st["step"] + 1,
                    st["name"],
                    st["status"],
                    st["requests"],
                    st["pairs"],
                    st["outcome"],
                    f"{st['ended_by']['at']}: {st['ended_by']['message']}" if st["ended_by"] else None,
                ]
                for st in r["plan"]
            ],
        )
    g = r["gates"]
    out += ["## Gates", ""]
    if g["latest"]:
        latest = g["latest"]
        out += [
            f"Latest evaluation {latest['at']} (step {latest['step'] + 1}): **{latest['outcome']}**"
            f"{' → ' + str(latest['decision']) if latest.get('decision') else ''}; {g['analyses']} evaluations.",
            "",
            "Effect: what was observed, challenger against champion, in the gate's unit; interval: the "
            "always-valid (1 − α) confidence sequence; margin: the tolerated difference; n: champion / challenger.",
            "",
        ]
        out += _md_table(
            ["gate", "role", "outcome", "effect", "always-valid interval", "margin", "n"],
            [
                [
                    v["gate"],
                    v["role"],
                    v["outcome"],
                    v["effect"],
                    f"{_md(v['interval'][0])} to {_md(v['interval'][1])}" if v["interval"] else None,
                    v["margin"],
                    f"{v['n_champion']} / {v['n_challenger']}",
                ]
                for v in latest["verdicts"]
            ],
        )
        out += [f"- **{_md(v['gate'])}**: {_md(v['reason'])}" for v in latest["verdicts"]] + [""]
    else:
        out += ["The controller has not evaluated this rollout yet.", ""]
    out += quality_markdown(r)
    t = r["traffic"]
    out += ["## Traffic", ""]
    out += _md_table(
        ["step", "requests", "served by champion", "served by challenger", "first", "last"],
        [
            [s["step"], s["rows"], s["served_champion"], s["served_challenger"], s["first_at"], s["last_at"]]
            for s in t["steps"]
        ],
    )
    out += ["## Arms", ""]
    out += _md_table(
        ["arm", "version", "requests", "served", "errors", "error rate", "p50 ms", "p90 ms", "p99 ms"],
        [
            [
                arm,
                a["version"]["ref"],
                a["requests"],
                a["served"],
                a["errors"],
                _md_pct(a["error_rate"]),
                a["latency_ms"]["p50"],
                a["latency_ms"]["p90"],
                a["latency_ms"]["p99"],
            ]
            for arm, a in r["arms"].items()
        ],
    )
    sh = r["shadow"]
    out += [
        f"Shadow coverage {_md_pct(sh['coverage'])} ({sh['pairs']} pairs of {sh['rows']} requests); not asked "
        f"{sh['not_scored']}; skipped by the router (coverage lost, not errors): queue full {sh['dropped']}, "
        f"expired in the queue {sh['expired']}, load shed {sh['shed']}, shutdown {sh['cancelled']}; "
        f"errors of the shadow arm: too slow {sh['timeouts']}, other {sh['other_errors']}; mean queue wait "
        + ("-" if sh["queue_wait_ms"] is None else f"{sh['queue_wait_ms']:.1f} ms")
        + ".",
        "",
    ]
    out += ["## Outputs and drift", ""]
    ag = r["agreement"]
    if ag:
        out += [
            f"Agreement {_md_pct(ag['share'])} of {ag['n']} pairs (95% interval {_md_pct(ag['interval'][0])} to "
            f"{_md_pct(ag['interval'][1])}), Cohen's kappa {_md(ag['kappa'])}.",
            "",
        ]
        if ag["table"]["labels"]:
            out += _md_table(
                ["champion \\ challenger", *ag["table"]["labels"]],
                [[lbl, *row] for lbl, row in zip(ag["table"]["labels"], ag["table"]["counts"], strict=True)],
            )
    if r["differences"]:
        d = r["differences"]
        out += [
            f"Differences ({d['of']}): n {d['n']}, mean {_md(d['mean'])}, sd {_md(d['sd'])}, "
            f"mean absolute {_md(d['mean_abs'])}.",
            "",
        ]
    out += _md_table(
        ["distribution", "PSI", "PSI noise threshold", "Jensen–Shannon (bits)", "KS D", "KS p"],
        [
            [
                d["kind"],
                (d["psi"] or {}).get("value"),
                (d["psi"] or {}).get("threshold"),
                (d["jensen_shannon"] or {}).get("divergence"),
                (d["ks"] or {}).get("statistic"),
                (d["ks"] or {}).get("p_value"),
            ]
            for d in r["distributions"]
        ],
    )
    lab = r["labels"]
    out += ["## Quality against labels", ""]
    if lab["available"]:
        rows = []
        for arm in ("champion", "challenger"):
            q = lab[arm]
            if "accuracy" in q:
                rows.append(
                    [
                        arm,
                        _md_pct(q["accuracy"]["value"]),
                        q["f1"]["value"],
                        (q.get("roc_auc") or {}).get("value"),
                    ]
                )
            else:
                rows.append([arm, q["mae"]["value"], q["rmse"]["value"]])
        head = ["arm", "accuracy", "F1", "ROC AUC"] if len(rows[0]) == 4 else ["arm", "MAE", "RMSE"]
        p = lab["paired"]
        out += [
            f"{lab['n']} labelled pairs.",
            "",
            *_md_table(head, rows),
            f"Paired difference {_md(p['difference'])} (95% interval {_md(p['interval'][0])} to "
            f"{_md(p['interval'][1])}), p = {_md(p['p_value'], '{:.3g}')}: {p['method']}.",
            "",
        ]
    else:
        out += [lab.get("message", "No labels yet."), ""]
    seg = r["segments"]
    out += ["## Segments", ""]
    if seg.get("message"):
        out += [seg["message"], ""]
    for res in seg["results"]:
        name = res["segments"][0]["effect_name"] if res["segments"] else "effect"
        out += [f"### {res['column']} ({res['kind']})", ""]
        out += _md_table(
            ["value", "requests", "pairs", name, "95% interval", "flag"],
            [
                [
                    s["value"],
                    s["rows"],
                    s["pairs"],
                    s["effect"],
                    f"{_md(s['interval'][0])} to {_md(s['interval'][1])}",
                    s["flag"],
                ]
                for s in res["segments"]
            ],
        )
    out += ["## Timeline", ""]
    out += _md_table(
        ["at", "who", "action", "why", "message"],
        [[e["at"], e["actor"], e["action"], e["reason"], e["message"]] for e in r["timeline"]],
    )
    rep = r["reproducibility"]
    out += ["## Reproducibility", "", f"{rep['status'].replace('_', ' ')}: {_md(rep['message'])}", ""]
    if rep.get("online_vs_offline"):
        out += _md_table(
            ["arm", "version", "metric", "offline", "online", "outcome", "labels", "labels still needed"],
            [
                [
                    a["arm"],
                    a["version"],
                    a["metric"],
                    a["offline"],
                    a["online"],
                    a["outcome"],
                    a["labels"],
                    a["labels_needed"],
                ]
                for a in rep["online_vs_offline"]
            ],
        )
    if (rep.get("input_drift") or {}).get("features"):
        out += _md_table(
            ["feature", "status", "missing live", "out of range", "unseen", "PSI", "why"],
            [
                [
                    f["feature"],
                    f["status"],
                    f["missing_rate_live"],
                    f["out_of_range_share"],
                    f["unseen_share"],
                    f["psi"],
                    "; ".join(f["reasons"]),
                ]
                for f in rep["input_drift"]["features"]
            ],
        )
    out += ["## Sample size still needed", "", r["sample_size"]["message"], ""]
    if r["notes"]:
        out += ["## Notes", "", *[f"- {n}" for n in r["notes"]], ""]
    return "\n".join(out)
