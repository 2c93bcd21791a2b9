"""Measure a rollout: SQL aggregates from storage.analytics turned into judge.StepMetrics.

Every step so far is read (``rollout_id`` and ``step``: one set of aggregate queries per step) and the
steps are combined stratified by step (``controller.core.evidence``), so guardrail and labelled
evidence carries from step to step without mixing splits. A shadow step and the watch are measured on
their pairs (both arms ran on the same request); a canary step on the requests each arm answered
(latency, the sample-ratio check against the configured weight, and the unpaired tests), and, with
``canary.paired`` and a ``canary.shadow_rate`` above 0, its quality and error gates on the requests
both arms scored. In the watch the new champion answers and the previous champion scores in shadow,
so its arms are swapped back (the core aggregates here, the quality aggregates in
``storage.quality.swap_arms``): "challenger" is always the rollout's challenger. Labels count only for
requests older than the policy's label maturity. Counts are of requests (a 10-row request that fails is one failure); shadow
jobs the router skipped are no pairs and no errors, only coverage lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np

from controller.core import stats
from controller.core.evidence import stratified
from controller.core.judge import (
    ErrorTail,
    Histogram,
    Moments,
    PairedAbsErrors,
    PairedCounts,
    Proportion,
    StepMetrics,
    arm_values,
)
from controller.core.policy import Policy
from controller.loop.figures import LATENCY, LATENCY_EDGES, latency_counts, latency_quantile, shadow_summary
from controller.loop.quality import measure_quality
from storage import Store
from storage.analytics import ArmAggregates, StepAggregates, step_aggregates
from storage.entities import Rollout

__all__ = [
    "LATENCY",
    "LATENCY_EDGES",
    "Measurement",
    "canary_metrics",
    "latency_counts",
    "latency_quantile",
    "measure",
    "metrics_from_aggregates",
    "shadow_summary",
    "swap_aggregates",
]

VALUE_BINS = 10


@dataclass(frozen=True)
class Measurement:
    """The rollout's metrics so far (stratified by step), the current step's samples and aggregates.

    ``samples``: observations of the current step (pairs in a shadow step, requests in a canary step,
    labelled pairs in the watch); ``labelled``: whether any matured label is in the evidence;
    ``final``: passing this step promotes for good (see ``Policy.final_stage``).
    """

    metrics: StepMetrics
    samples: int
    labelled: bool
    aggregates: StepAggregates
    final: bool = False
    steps: int = 1

    def summary(self) -> dict[str, Any]:
        """Return the headline figures as plain data (stored with the analysis)."""
        a = self.aggregates
        out: dict[str, Any] = {
            "mode": self.metrics.mode,
            "samples": self.samples,
            "labelled": self.labelled,
            "final": self.final,
            "steps_combined": self.steps,
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
        out["requests"] = a.requests
        out["shadow"] = shadow_summary(a.coverage, requests=a.requests)
        out["arms"] = arm_values(self.metrics)  # each gate's figure per arm, for the plots
        return out


def swap_aggregates(a: StepAggregates) -> StepAggregates:
    """Exchange the arms of one step's aggregates (the watch stores the new champion as "champion")."""
    return replace(
        a,
        champion=a.challenger,
        challenger=a.champion,
        worse=a.better,
        better=a.worse,
        labelled_worse=a.labelled_better,
        labelled_better=a.labelled_worse,
        diff_sum=-a.diff_sum,
    )


def measure(
    store: Store,
    rollout: Rollout,
    *,
    task: Literal["classification", "regression"],
    policy: Policy,
    now: datetime,
    classes: Sequence[Any] | None = None,
) -> Measurement:
    """Aggregate every step of the rollout so far in SQL and combine them, stratified by step."""
    plan = policy.plan()
    watching = rollout.step_index >= len(plan)
    cutoff = now - timedelta(seconds=policy.label_maturity_s)
    strata: list[StepMetrics] = []
    current: StepAggregates | None = None
    for step in range(rollout.step_index + 1):
        kind = "watch" if step >= len(plan) else plan[step].kind
        weight = None if kind != "canary" else plan[step].weight / 100.0
        if step == rollout.step_index and kind == "canary":
            weight = rollout.canary_weight / 100.0

        def read(cohort: Literal["paired", "served"], step: int = step) -> StepAggregates:
            return step_aggregates(
                store.db, rollout_id=rollout.id, step=step, cohort=cohort, task=task,
                label_cutoff=cutoff, latency=LATENCY, value_bins=VALUE_BINS,
            )  # fmt: skip

        if kind == "canary":
            served = read("served")
            paired = read("paired") if policy.canary.paired and policy.canary.shadow_rate > 0 else None
            metrics = canary_metrics(served, paired, task=task, challenger_weight=weight, classes=classes)
            aggregates = served
        else:
            aggregates = read("paired")
            if kind == "watch":
                aggregates = swap_aggregates(aggregates)
            metrics = metrics_from_aggregates(aggregates, task=task, classes=classes)
        strata.append(metrics)
        current = aggregates
    assert current is not None
    metrics = stratified(strata, current=strata[-1])
    # controller.loop.quality: class-aware metrics, losses, outcome and segments of the current step; the
    # watch is measured on its pairs with the arms swapped back, as the core aggregates above
    kind = "watch" if watching else plan[rollout.step_index].kind
    metrics = replace(
        metrics,
        quality=measure_quality(
            store, rollout_id=rollout.id, step=rollout.step_index,
            mode="canary" if kind == "canary" else "shadow", task=task, policy=policy, now=now,
            classes=classes, swapped=watching,
        ),
    )  # fmt: skip
    a = current
    if watching:
        samples = a.labelled_pairs if task == "classification" else a.diff_n
    elif a.cohort == "paired":
        samples = a.pairs
    else:
        samples = a.champion.n + a.challenger.n
    labelled = any(
        (s.paired_correct is not None and s.paired_correct.n > 0)
        or (s.abs_error_difference is not None and s.abs_error_difference.n > 0)
        or (
            s.champion_correct is not None
            and s.champion_correct.n + (s.challenger_correct or s.champion_correct).n > 0
        )
        or (s.champion_abs_error is not None and s.champion_abs_error.n > 0)
        for s in strata
    )
    return Measurement(
        metrics, samples, labelled, current, final=policy.final_stage(rollout.step_index), steps=len(strata)
    )


def canary_metrics(
    served: StepAggregates,
    paired: StepAggregates | None,
    *,
    task: Literal["classification", "regression"],
    challenger_weight: float | None,
    classes: Sequence[Any] | None = None,
) -> StepMetrics:
    """One canary step's metrics: the served requests, and with ``paired`` the quality and error gates'
    data from the requests both arms scored (``canary.paired``)."""
    metrics = metrics_from_aggregates(served, task=task, challenger_weight=challenger_weight, classes=classes)
    if paired is None:
        return metrics
    both = metrics_from_aggregates(paired, task=task, classes=classes)
    return replace(
        metrics,
        paired_errors=both.paired_errors,
        agreement=both.agreement,
        paired_correct=both.paired_correct,
        champion_correct=both.champion_correct,
        challenger_correct=both.challenger_correct,
        abs_error_difference=both.abs_error_difference,
        champion_abs_error=both.champion_abs_error,
        challenger_abs_error=both.challenger_abs_error,
    )


def class_codes(observed: Sequence[str], classes: Sequence[Any] | None = None) -> dict[str, int]:
    """Number class labels: the pipeline's classes first, in their order, then any others sorted."""
    order = [str(c) for c in classes or ()]
    order += sorted(set(observed) - set(order))
    return {c: i for i, c in enumerate(order)}


def _latency(arm: ArmAggregates) -> tuple[int, ...]:
    return latency_counts(arm.latency)


def metrics_from_aggregates(
    a: StepAggregates,
    *,
    task: Literal["classification", "regression"],
    challenger_weight: float | None = None,
    classes: Sequence[Any] | None = None,
    paired: bool = False,
) -> StepMetrics:
    """Build StepMetrics from one step's aggregates (the SQL twin of judge.metrics_from_pairs).

    ``paired``: in a canary step, judge error rate, accuracy and regression on the requests both arms
    scored (the canary's shadow share), clustered by routing key, instead of on each arm's own
    requests; only when that share has pairs (products where the served answer does not change the
    label). The sample-ratio check still counts each arm's routing keys.
    """
    c, h = a.champion, a.challenger
    clusters = {
        name: stats.ClusterSums(
            clusters=x.clusters, rows=x.rows, mm=x.mm, ma=x.ma, mb=x.mb, aa=x.aa, ab=x.ab, bb=x.bb
        )
        for name, x in a.clusters.items()
    }
    pair_abs = None
    if task == "regression" and a.pair_abs is not None and a.diff_n:
        s1, ss1, s2, ss2, cross = a.pair_abs
        pair_abs = PairedAbsErrors(
            n=a.diff_n, champion=s1, champion_sq=ss1, challenger=s2, challenger_sq=ss2, cross=cross
        )
    tail = None
    if task == "regression" and a.error_tail is not None:
        t = a.error_tail
        tail = ErrorTail(
            cap=t.cap,
            quantile=t.quantile,
            champion=Proportion(n=t.champion_n, count=t.champion_above),
            challenger=Proportion(n=t.challenger_n, count=t.challenger_above),
            paired=PairedCounts(n=t.pairs, worse=t.worse, better=t.better)
            if a.cohort == "paired" or paired
            else None,
        )
    latency = None
    if c.latency or h.latency:
        latency = Histogram(edges=LATENCY_EDGES, champion=_latency(c), challenger=_latency(h))
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
            champion_correct=Proportion(n=c.labelled, count=c.correct) if task == "classification" else None,
            challenger_correct=Proportion(n=h.labelled, count=h.correct)
            if task == "classification"
            else None,
            abs_error_difference=moments(a.diff_n, a.diff_sum, a.diff_sumsq)
            if task == "regression"
            else None,
            champion_abs_error=moments(c.labelled, c.abs_error_sum, c.abs_error_sumsq)
            if task == "regression"
            else None,
            challenger_abs_error=moments(h.labelled, h.abs_error_sum, h.abs_error_sumsq)
            if task == "regression"
            else None,
            latency=latency,
            outputs=outputs,
            coverage=Proportion(n=a.coverage.sampled, count=a.coverage.scored)
            if a.coverage.sampled
            else None,
            paired_abs_errors=pair_abs,
            error_tail=tail,
            clusters=clusters,
        )
    use_pairs = paired and a.pairs > 0
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
        paired_errors=PairedCounts(n=a.pairs, worse=a.worse, better=a.better) if use_pairs else None,
        paired_correct=PairedCounts(n=a.labelled_pairs, worse=a.labelled_worse, better=a.labelled_better)
        if use_pairs and task == "classification"
        else None,
        paired_abs_errors=pair_abs if use_pairs else None,
        error_tail=tail,
        clusters=clusters,
    )


def value_edges(lo: float, hi: float, bins: int = VALUE_BINS) -> np.ndarray:
    """Equal-width edges of the regression-output histogram over [lo, hi] (as storage.analytics buckets)."""
    width = (hi - lo) / bins if hi > lo else 1.0
    return lo + width * np.arange(bins + 1, dtype=float)
