"""Measure the quality gates of one rollout step: storage.quality aggregates -> metrics.QualityStats.

Called by ``controller.loop.measure``; only the parts the policy uses are queried (segments, the
outcome, the fixed-horizon AUC rows, proper scores of a classifier: from the score for two classes,
from the stored probability vectors for more, and squared errors of a regressor: not when their
gates are off). Cohorts as the core gates:
pairs in shadow steps, the watch and canary steps with ``canary.paired`` (and a shadow share); each
arm's served rows otherwise. The outcome is always the served rows'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from controller.core import metrics as quality
from controller.core.policy import Policy
from storage import Store
from storage.quality import LossSums, QualityAggregates, SegmentColumn, quality_aggregates

__all__ = ["measure_quality", "stats_from_aggregates"]


def measure_quality(
    store: Store,
    *,
    rollout_id: int,
    step: int,
    mode: Literal["shadow", "canary"],
    task: Literal["classification", "regression"],
    policy: Policy,
    now: datetime,
    classes: Sequence[Any] | None,
    swapped: bool = False,
) -> quality.QualityStats:
    """Aggregate the step's quality statistics in SQL as the policy needs them.

    ``swapped``: the step is the post-promotion watch, whose rows hold the rollout's challenger in the
    champion columns; the aggregates come back with the arms exchanged (``storage.quality.swap_arms``).
    """
    names = tuple(str(c) for c in classes or ())
    positive = names[1] if len(names) == 2 else None
    m = policy.metrics
    wants_auc = task == "classification" and m.roc_auc.role != "off" and len(names) >= 2
    # A canary step with canary.paired and a shadow share judges its quality on the requests both arms
    # scored, as the core gates do: paired differences cancel what varies from one routing key to the
    # next, which the unpaired (per-arm) variance of the served rows ignores. Outcomes stay served.
    paired = mode == "shadow" or (policy.canary.paired and policy.canary.shadow_rate > 0)
    aggregates = quality_aggregates(
        store.db,
        rollout_id=rollout_id,
        step=step,
        cohort="paired" if paired else "served",
        task=task,
        label_cutoff=now - timedelta(seconds=policy.label_maturity_s),
        positive=positive,
        classes=names,
        quantiles=(m.pinball.quantile,) if task == "regression" and m.pinball.role != "off" else (),
        auc_horizon=m.roc_auc.horizon if wants_auc else None,
        segments=tuple(SegmentColumn(s.column, s.edges) for s in policy.segments.columns),
        max_values=policy.segments.max_values,
        outcome=policy.outcome.role != "off",
        swapped=swapped,
        # figures no gate of the policy reads are not computed
        proper_scores=m.log_loss.role != "off" or m.brier.role != "off",
        squared=m.rmse.role != "off",
    )
    return stats_from_aggregates(aggregates, task=task, classes=names, mode=mode)


def _codes(observed: Sequence[str], classes: Sequence[str]) -> tuple[str, ...]:
    order = list(classes)
    order += sorted(set(observed) - set(order))
    return tuple(order)


def _confusion(
    cells: Mapping[tuple[str, ...], int], paired: bool, classes: Sequence[str]
) -> quality.Confusion | None:
    if not cells:
        return None
    if paired:
        names = _codes([c for cell in cells for c in cell], classes)
        code = {c: i for i, c in enumerate(names)}
        return quality.Confusion(
            names=names, paired={(code[y], code[a], code[b]): n for (y, a, b), n in cells.items()}
        )
    names = _codes([c for cell in cells for c in cell[1:]], classes)
    code = {c: i for i, c in enumerate(names)}
    arms: dict[str, dict[tuple[int, int], int]] = {"champion": {}, "challenger": {}}
    for (arm, y, p), n in cells.items():
        arms[arm][(code[y], code[p])] = arms[arm].get((code[y], code[p]), 0) + n
    return quality.Confusion(names=names, champion=arms["champion"], challenger=arms["challenger"])


def _moments(s: LossSums | None) -> quality.LossMoments | None:
    if s is None or (s.champion[0] == 0 and s.challenger[0] == 0):
        return None
    (n1, s1, q1), (n2, s2, q2), (nd, sd, qd) = s.champion, s.challenger, s.difference
    return quality.LossMoments(n1=n1, s1=s1, q1=q1, n2=n2, s2=s2, q2=q2, nd=nd, sd=sd, qd=qd)


def stats_from_aggregates(
    a: QualityAggregates,
    *,
    task: Literal["classification", "regression"],
    classes: Sequence[str],
    mode: Literal["shadow", "canary"],
) -> quality.QualityStats:
    """Turn SQL aggregates into ``QualityStats`` (class names become codes, pipeline classes first)."""
    paired = a.cohort == "paired"
    missing: dict[str, str] = {}
    if mode == "shadow":
        missing["outcome"] = (
            "shadow: the challenger's answers never reached users, outcomes count in canary steps"
        )
    elif not a.outcome:
        missing["outcome"] = "no outcomes"
    if task == "classification" and len(classes) < 2:
        why = "online proper scores need the pipeline's classes, and this version has none registered"
        missing.update(log_loss=why, brier=why, roc_auc=why)
    elif task == "classification" and len(classes) > 2:
        why = "no class-probability vectors stored (the model gives no probabilities, or older rows)"
        missing.update(log_loss=why, brier=why, roc_auc=why)
    segments: list[quality.SegmentStats] = []
    for column, values in a.segments.items():
        for value, data in values.items():
            if task == "classification":
                segments.append(
                    quality.SegmentStats(
                        column=column, value=value, confusion=_confusion(data, paired, classes)
                    )
                )
            else:
                segments.append(quality.SegmentStats(column=column, value=value, abs_error=_moments(data)))
    squared = None
    if a.squared and min(a.squared["champion"][0], a.squared["challenger"][0]) > 0:
        (n1, s1, q1), (n2, s2, q2) = a.squared["champion"], a.squared["challenger"]
        squared = quality.SquaredErrorMoments(
            n1=n1, s1=s1, q1=q1, n2=n2, s2=s2, q2=q2, paired_n=a.squared_cross[0], cross=a.squared_cross[1]
        )
    outcome = None
    if a.outcome:
        (n1, s1, q1), (n2, s2, q2) = a.outcome["champion"], a.outcome["challenger"]
        ratio = a.outcome_ratio or {}
        outcome = quality.OutcomeMoments(
            n1=n1,
            s1=s1,
            q1=q1,
            n2=n2,
            s2=s2,
            q2=q2,
            ratio1=ratio.get("champion"),
            ratio2=ratio.get("challenger"),
        )
    auc = None
    if a.auc is not None:
        available, labels, s1_, s2_, labels2 = a.auc
        horizon = len(labels) if labels else available + 1
        auc = quality.Auc(
            horizon=horizon,
            available=available,
            paired=paired,
            labels=tuple(labels),
            champion=tuple(s1_),
            challenger=tuple(s2_),
            challenger_labels=tuple(labels2),
        )
    if a.auc_multiclass is not None:
        available, names, p1, p2, names2 = a.auc_multiclass
        code = {c: i for i, c in enumerate(classes)}
        auc = quality.Auc(
            horizon=len(names) if names else available + 1,
            available=available,
            paired=paired,
            labels=tuple(code.get(n, -1) for n in names),
            challenger_labels=tuple(code.get(n, -1) for n in names2),
            classes=tuple(classes),
            champion_proba=tuple(tuple(v) for v in p1),
            challenger_proba=tuple(tuple(v) for v in p2),
        )
    return quality.QualityStats(
        confusion=_confusion(a.paired_cells if paired else a.served_cells, paired, classes),
        log_loss=_moments(a.log_loss),
        brier=_moments(a.brier),
        squared_error=squared,
        pinball={q: m for q, s in a.pinball.items() if (m := _moments(s)) is not None},
        outcome=outcome,
        auc=auc,
        segments=tuple(segments),
        missing=missing,
    )
