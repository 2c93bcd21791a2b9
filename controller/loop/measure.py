"""Measure one rollout step: SQL aggregates from storage.analytics turned into judge.StepMetrics.

A shadow step is measured on its pairs (both arms ran on the same request: paired tests); a canary
step on the requests each arm answered (unpaired tests, plus the sample-ratio check against the
configured weight). Only the current step's rows are read (``rollout_id`` and ``step``), and labels
count only for requests older than the policy's label maturity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np

from controller.core import stats
from controller.core.judge import Histogram, Moments, PairedCounts, Proportion, StepMetrics
from controller.core.policy import Policy
from controller.loop.quality import measure_quality
from storage import Store
from storage.analytics import ArmAggregates, LatencyBuckets, StepAggregates, step_aggregates
from storage.entities import Rollout

__all__ = ["LATENCY", "Measurement", "measure", "metrics_from_aggregates"]

_EDGES = stats.latency_edges()
LATENCY = LatencyBuckets(start_ms=float(_EDGES[1]), growth=1.05, count=len(_EDGES) - 1)
VALUE_BINS = 10


@dataclass(frozen=True)
class Measurement:
    """One step's metrics, how many samples it holds, and whether any matured label is among them."""

    metrics: StepMetrics
    samples: int
    labelled: bool
    aggregates: StepAggregates

    def summary(self) -> dict[str, Any]:
        """Return the headline figures as plain data (stored with the analysis)."""
        a = self.aggregates
        out: dict[str, Any] = {
            "mode": self.metrics.mode,
            "samples": self.samples,
            "labelled": self.labelled,
            "champion": {"n": a.champion.n, "failed": a.champion.failed, "labelled": a.champion.labelled},
            "challenger": {
                "n": a.challenger.n,
                "failed": a.challenger.failed,
                "labelled": a.challenger.labelled,
            },
        }
        if a.cohort == "paired":
            out.update(pairs=a.pairs, labelled_pairs=a.labelled_pairs or a.diff_n)
        if a.compared:
            out["agreement"] = a.agreed / a.compared
        return out


def measure(
    store: Store,
    rollout: Rollout,
    *,
    task: Literal["classification", "regression"],
    policy: Policy,
    now: datetime,
    classes: Sequence[Any] | None = None,
) -> Measurement:
    """Aggregate the rollout's current step in SQL and build its StepMetrics."""
    stage = policy.plan()[min(rollout.step_index, len(policy.plan()) - 1)]
    mode: Literal["shadow", "canary"] = "shadow" if stage.kind == "shadow" else "canary"
    aggregates = step_aggregates(
        store.db,
        rollout_id=rollout.id,
        step=rollout.step_index,
        cohort="paired" if mode == "shadow" else "served",
        task=task,
        label_cutoff=now - timedelta(seconds=policy.label_maturity_s),
        latency=LATENCY,
        value_bins=VALUE_BINS,
    )
    metrics = metrics_from_aggregates(
        aggregates,
        task=task,
        challenger_weight=rollout.canary_weight / 100.0 if mode == "canary" else None,
        classes=classes,
    )
    # controller.loop.quality: class-aware metrics, losses, outcome and segments (controller.core.metrics)
    metrics = replace(
        metrics,
        quality=measure_quality(
            store, rollout_id=rollout.id, step=rollout.step_index, mode=mode, task=task, policy=policy, now=now,
            classes=classes,
        ),
    )  # fmt: skip
    a = aggregates
    if mode == "shadow":
        samples, labelled = a.pairs, (a.labelled_pairs if task == "classification" else a.diff_n) > 0
    else:
        samples, labelled = a.champion.n + a.challenger.n, a.champion.labelled + a.challenger.labelled > 0
    return Measurement(metrics, samples, labelled, aggregates)


def class_codes(observed: Sequence[str], classes: Sequence[Any] | None = None) -> dict[str, int]:
    """Number class labels: the pipeline's classes first, in their order, then any others sorted."""
    order = [str(c) for c in classes or ()]
    order += sorted(set(observed) - set(order))
    return {c: i for i, c in enumerate(order)}


def _latency(arm: ArmAggregates) -> tuple[int, ...]:
    counts = np.zeros(LATENCY.count, dtype=np.int64)
    for bucket, n in arm.latency.items():
        counts[bucket] += n
    return tuple(int(x) for x in counts)


def metrics_from_aggregates(
    a: StepAggregates,
    *,
    task: Literal["classification", "regression"],
    challenger_weight: float | None = None,
    classes: Sequence[Any] | None = None,
) -> StepMetrics:
    """Build StepMetrics from one step's aggregates (the SQL twin of judge.metrics_from_pairs)."""
    c, h = a.champion, a.challenger
    latency = None
    if c.latency or h.latency:
        latency = Histogram(
            edges=tuple(float(e) for e in _EDGES), champion=_latency(c), challenger=_latency(h)
        )
    outputs = None
    if task == "classification" and (c.classes or h.classes):
        codes = class_codes([*c.classes, *h.classes], classes)
        k = max(codes[x] for x in [*c.classes, *h.classes]) + 1
        edges = tuple(float(x) for x in np.arange(k + 1) - 0.5)
        outputs = Histogram(
            edges=edges,
            champion=tuple(sum(n for cls, n in c.classes.items() if codes[cls] == i) for i in range(k)),
            challenger=tuple(sum(n for cls, n in h.classes.items() if codes[cls] == i) for i in range(k)),
        )
    elif task == "regression" and a.value_range is not None:
        lo, hi = a.value_range
        edges = tuple(float(x) for x in value_edges(lo, hi))
        outputs = Histogram(
            edges=edges,
            champion=tuple(c.values.get(i, 0) for i in range(VALUE_BINS)),
            challenger=tuple(h.values.get(i, 0) for i in range(VALUE_BINS)),
        )
    agreement = Proportion(n=a.compared, count=a.agreed) if task == "classification" else None

    def moments(n: int, total: float, total_sq: float) -> Moments:
        return Moments(n=n, total=total, total_sq=total_sq)

    if a.cohort == "paired":
        return StepMetrics(
            mode="shadow",
            champion=Proportion(n=a.pairs, count=c.failed),
            challenger=Proportion(n=a.pairs, count=h.failed),
            paired_errors=PairedCounts(n=a.pairs, worse=a.worse, better=a.better),
            agreement=agreement,
            paired_correct=PairedCounts(n=a.labelled_pairs, worse=a.labelled_worse, better=a.labelled_better)
            if task == "classification"
            else None,
            abs_error_difference=moments(a.diff_n, a.diff_sum, a.diff_sumsq)
            if task == "regression"
            else None,
            champion_abs_error=moments(c.labelled, c.abs_error_sum, c.abs_error_sumsq)
            if task == "regression"
            else None,
            latency=latency,
            outputs=outputs,
        )
    return StepMetrics(
        mode="canary",
        champion=Proportion(n=c.n, count=c.failed),
        challenger=Proportion(n=h.n, count=h.failed),
        challenger_weight=challenger_weight,
        units=(c.units, h.units),
        agreement=agreement if agreement is not None and agreement.n else None,
        champion_correct=Proportion(n=c.labelled, count=c.correct) if task == "classification" else None,
        challenger_correct=Proportion(n=h.labelled, count=h.correct) if task == "classification" else None,
        champion_abs_error=moments(c.labelled, c.abs_error_sum, c.abs_error_sumsq)
        if task == "regression"
        else None,
        challenger_abs_error=moments(h.labelled, h.abs_error_sum, h.abs_error_sumsq)
        if task == "regression"
        else None,
        latency=latency,
        outputs=outputs,
    )


def value_edges(lo: float, hi: float, bins: int = VALUE_BINS) -> np.ndarray:
    """Equal-width edges of the regression-output histogram over [lo, hi] (as storage.analytics buckets)."""
    width = (hi - lo) / bins if hi > lo else 1.0
    return lo + width * np.arange(bins + 1, dtype=float)
