"""One look at a rollout, writing nothing: measure the step, judge it (with reproducibility), decide.

    assessment = assess(store, rollout, now=now)
    assessment.decision        # what the state machine does now (hold, advance, roll back, ...)
    assessment.analysis()      # what the control loop stores about this look (None for a pending rollout)

The control loop stores an assessment (the analysis, and on a transition the rollout's change and its
event, in one transaction); the report reads the stored analyses and computes its online-vs-offline
section with the same ``online_offline``, so a report cannot disagree with what the loop decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from controller.core import metrics as quality
from controller.core import reproducibility
from controller.core.judge import (
    Judgement,
    Proportion,
    Verdict,
    hold_for_label_delays,
    hold_for_outcome_dependent_labels,
    judge,
)
from controller.core.machine import Decision, decide
from controller.core.policy import Policy
from controller.encoding import finite
from controller.loop.actions import policy_of, state_of
from controller.loop.measure import Measurement, measure
from storage import Store, repro_queries
from storage.entities import NewAnalysis, PipelineVersion, Rollout
from storage.quality import label_coverage, label_delay

__all__ = ["Assessment", "assess", "online_offline", "verdict_dict"]

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class Assessment:
    """What one look at a rollout found: the step's measurement and judgement, and the decision."""

    rollout: Rollout
    decision: Decision
    measurement: Measurement | None = None
    judgement: Judgement | None = None
    quality_policy: quality.QualityPolicy | None = None  # the look's quality gates (for their arm values)

    def analysis(self) -> NewAnalysis | None:
        """Return the analysis to store for this look (None when nothing was judged: a pending rollout)."""
        if self.judgement is None or self.measurement is None:
            return None
        judgement, decision = self.judgement, self.decision
        return NewAnalysis(
            step=self.rollout.step_index,
            outcome=judgement.outcome.label,
            verdicts=[verdict_dict(v) for v in judgement.verdicts],
            metrics={
                **self.measurement.summary(),
                "decision": judgement.decision,
                "judgement": judgement.reason,
                "summary": {"score": finite(judgement.summary.score), "band": judgement.summary.band},
                "error_budget": policy_of(self.rollout).budget(),
                "quality": quality.arm_values(self.measurement.metrics.quality, self.quality_policy),
                "controller": {
                    "action": decision.action,
                    "reason": decision.reason,
                    "message": decision.message,
                },
            },
        )


def verdict_dict(v: Verdict) -> dict[str, Any]:
    """Return a verdict as plain JSON-able data (what analyses and events store)."""
    return {
        "gate": v.gate,
        "role": v.role,
        "outcome": v.outcome.label,
        "statistic": finite(v.statistic),
        "bound": finite(v.bound),
        "effect": finite(v.effect),
        "margin": finite(v.margin),
        "n_champion": v.n_champion,
        "n_challenger": v.n_challenger,
        "reason": v.reason,
        "p_value": finite(v.p_value),
        "interval": None
        if v.interval is None
        else {"lower": finite(v.interval.lower), "upper": finite(v.interval.upper)},
    }


def task_of(version: PipelineVersion) -> Task:
    """Return the statistics' task of a version: regression, else classification."""
    return "regression" if version.task == "regression" else "classification"


def assess(store: Store, rollout: Rollout, *, now: datetime) -> Assessment:
    """Look at one rollout at ``now``: measure and judge its current step (unless pending) and decide."""
    policy = policy_of(rollout)
    if rollout.phase == "pending":
        return Assessment(rollout, decide(state_of(rollout), None, now))
    challenger = store.pipelines.get(rollout.challenger_id)
    task = task_of(challenger)
    measurement = measure(store, rollout, task=task, policy=policy, now=now, classes=challenger.classes)
    judge_policy = policy.to_judge_policy(
        task,
        measurement.metrics.mode,
        final=measurement.final,
        classes=tuple(str(c) for c in challenger.classes or ()),
    )
    judgement = judge(measurement.metrics, judge_policy)
    repro = policy.reproducibility
    if repro.role != "off":
        judgement = reproducibility.gate(
            judgement,
            online_offline(store, rollout, task=task, policy=policy, now=now, challenger=challenger),
            role=repro.role,
            on_worse=repro.on_worse,
        )
    if measurement.final and judgement.decision == "promote":
        judgement = hold_for_label_delays(
            judgement,
            final=True,
            label_delay_s=label_delay(store.db, rollout_id=rollout.id),
            maturity_s=policy.label_maturity_s,
        )
    if measurement.final and judgement.decision == "promote" and task == "classification":
        coverage = label_coverage(
            store.db, rollout_id=rollout.id, received_before=now - timedelta(seconds=policy.label_maturity_s)
        )
        judgement = hold_for_outcome_dependent_labels(
            judgement,
            final=True,
            agreeing=Proportion(n=coverage.agreeing[0], count=coverage.agreeing[1]),
            disagreeing=Proportion(n=coverage.disagreeing[0], count=coverage.disagreeing[1]),
            alpha=judge_policy.alpha,
            n_star=judge_policy.n_star,
        )
    decision = decide(state_of(rollout, samples=measurement.samples), judgement, now)
    return Assessment(rollout, decision, measurement, judgement, judge_policy.quality)


def online_offline(
    store: Store,
    rollout: Rollout,
    *,
    task: str,
    policy: Policy,
    now: datetime,
    challenger: PipelineVersion | None = None,
) -> list[reproducibility.Reproduction]:
    """Compare each arm's matured online labels with its offline metrics (champion, then challenger), then
    the challenger's online-minus-offline gap against the champion's (the champion as control).

    ``challenger``: the rollout's challenger version when the caller has already read it."""
    repro = policy.reproducibility
    labelled = repro_queries.labelled_metrics(
        store.db, rollout.id, received_before=now - timedelta(seconds=policy.label_maturity_s)
    )
    out = []
    arms: dict[str, tuple[reproducibility.ArmOnline, Any]] = {}
    for arm, version_id in (("champion", rollout.champion_id), ("challenger", rollout.challenger_id)):
        given = challenger if arm == "challenger" and challenger is not None else None
        version = given or store.pipelines.get(version_id)
        sums = labelled[arm]
        online = reproducibility.ArmOnline(
            arm=arm,
            version=version.ref,
            labelled=sums.labelled,
            correct=sums.correct,
            abs_error_sum=sums.abs_error_sum,
            abs_error_sq_sum=sums.abs_error_sq_sum,
        )
        arms[arm] = (online, version.offline_metrics)
        out.append(
            reproducibility.compare_online_offline(
                task,
                version.offline_metrics,
                online,
                accuracy_margin=repro.accuracy_margin,
                mae_margin=repro.mae_margin,
                confidence=1.0 - policy.budget()["reproducibility"],
                min_labels=repro.min_labels,
            )
        )
    # the champion as control: the challenger's online-minus-offline gap against the champion's
    out.append(
        reproducibility.compare_with_control(
            task,
            arms["champion"][1],
            arms["challenger"][1],
            arms["champion"][0],
            arms["challenger"][0],
            accuracy_margin=repro.accuracy_margin,
            mae_margin=repro.mae_margin,
            alpha=policy.budget()["reproducibility"],
            min_labels=repro.min_labels,
        )
    )
    return out
