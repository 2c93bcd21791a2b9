"""What the dashboard shows beyond the deployment document: plan and progress, state, verdict, plots.

    overview(store, deployment, now=now)   # GET /api/v1/deployments/NAME/dashboard

Everything is read through storage (``storage.series`` for the time buckets, the repositories for the
rollout, its analyses and events); nothing here runs SQL. Numbers are computed by the code the
decision used: the plan by ``Policy.plan``, p99 by ``measure.latency_quantile`` (the judge's reading
of the judge's buckets), the gates' thresholds by ``reports.gate_threshold``, the shadow figures by
``storage.analytics``' definitions.

``verdict_sentence`` is the report's sentence (``controller.reports.verdict``), the same one that heads
the report, `rollout status` and the status document's ``verdict`` field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from controller.core.policy import Policy, Stage
from controller.http.documents import PLOT_POINTS, rollout_verdict, state_json
from controller.loop import measure
from controller.loop.actions import policy_of
from controller.reports.build import arms_of, gate_threshold
from storage import Store, series
from storage.entities import Analysis, Deployment, Rollout

__all__ = ["SERIES_CACHE", "overview", "plan_json", "series_json", "state_json", "verdict_sentence"]

SERIES_CACHE = "mlcanary.series_cache"  # app.extensions key of the app's storage.series.SeriesCache
GATE_POINTS = 120  # analyses (looks) drawn per gate plot
_ENDED = {"promoted": "Promoted", "rolled_back": "Rolled back", "aborted": "Aborted"}
_UNITS = {"shadow": "pairs", "canary": "requests", "watch": "labelled pairs"}


def _stage_label(stage: Stage | None) -> str:
    if stage is None:
        return "watch (post-promotion)"
    if stage.kind == "shadow":
        return "shadow"
    return f"canary {stage.weight:g}%"


def verdict_sentence(
    store: Store, deployment: Deployment, rollout: Rollout | None, analysis: Analysis | None
) -> str:
    """The sentence that heads the report and `rollout status` (``controller.reports.verdict``)."""
    if rollout is None:
        champion = store.pipelines.get(deployment.champion_id).ref
        return f"No rollout yet: {champion} answers every request."
    return rollout_verdict(store, rollout, analysis)


def plan_json(
    rollout: Rollout, policy: Policy, latest: Analysis | None, *, now: datetime
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Return the plan (each stage with its status) and the progress of the current stage.

    Progress counts what the controller counted at its last look of this step (``samples`` of the
    stored analysis: pairs in a shadow step, requests in a canary step, labelled pairs in the watch).
    """
    stages: list[Stage | None] = list(policy.plan())
    if policy.watch.enabled:
        stages.append(None)
    current = rollout.step_index
    plan = []
    for i, stage in enumerate(stages):
        if i < current:
            status = "done"
        elif i == current:
            status = "current" if rollout.active else rollout.phase
        else:
            status = (
                "next"
                if i == current + 1 and rollout.active
                else ("pending" if rollout.active else "skipped")
            )
        if rollout.phase == "promoted" and i <= current:
            status = "done"
        plan.append(
            {
                "index": i,
                "kind": "watch" if stage is None else stage.kind,
                "label": _stage_label(stage),
                "weight": 100.0 if stage is None else stage.weight,
                "min_samples": policy.watch.min_labelled_pairs if stage is None else stage.min_samples,
                "min_duration_s": policy.watch.min_duration_s if stage is None else stage.min_duration_s,
                "status": status,
            }
        )
    here = plan[current] if current < len(plan) else None
    samples = 0
    if latest is not None and latest.step == current and isinstance(latest.metrics, Mapping):
        samples = int(latest.metrics.get("samples") or 0)
    needed = here["min_samples"] if here else 0
    unit = _UNITS.get(str(here["kind"]), "samples") if here else "samples"
    after = "promote" if current + 1 >= len(plan) else plan[current + 1]["label"]
    elapsed = max(0.0, (now - rollout.step_started_at).total_seconds())
    if here is None:  # a step past the stored plan (the policy changed since): say so, count nothing
        text = f"step {current} is past the plan's {len(plan)} stage(s); next: promote"
    elif rollout.active:
        text = f"{samples:,}/{needed:,} {unit}; next: {after}"
    else:
        where = here["label"] if here else f"step {current}"
        text = f"{_ENDED.get(rollout.phase, rollout.phase)} during {where} after {samples:,} {unit}"
    progress = {
        "step": current,
        "steps": len(plan),
        "samples": samples,
        "needed": needed,
        "unit": unit,
        "next": after if rollout.active else None,
        "step_elapsed_s": elapsed if rollout.active else None,
        "min_duration_s": here["min_duration_s"] if here else None,
        "text": text,
    }
    return plan, progress


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def series_json(
    s: series.RolloutSeries, analyses: Sequence[Analysis], *, gates: Sequence[str] | None = None
) -> dict[str, Any]:
    """Turn time buckets and sampled analyses into the plots' data.

    ``points``: per bucket, each arm's traffic share (requests it answered / requests), error rate
    (failed / ran), p99 latency (ms, the judge's reading), and the shadow coverage (scored / sampled)
    with the skips. ``gates``: per gate (the required ones at the last look, or ``gates``), its effect
    and always-valid interval at each look, each arm's figure (``champion`` / ``challenger``, for the gates
    that compare arms: ``controller.reports.build.arms_of``), the threshold its bound is held against,
    and its outcome.
    ``steps``: when each step's first look or request happened (the plots mark step boundaries).
    """
    points = []
    for p in s.points:
        arms = {"champion": p.champion, "challenger": p.challenger}
        points.append(
            {
                "at": p.start,
                "step": p.step,
                "requests": p.requests,
                "share": {arm: _share(a.served, p.requests) for arm, a in arms.items()},
                "error_rate": {arm: _share(a.errors, a.ran) for arm, a in arms.items()},
                "p99_ms": {arm: measure.latency_quantile(a.latency, 0.99) for arm, a in arms.items()},
                "ran": {arm: a.ran for arm, a in arms.items()},
                "sampled": p.sampled,
                "scored": p.scored,
                "skipped": p.skipped,
                "coverage": _share(p.scored, p.sampled),
            }
        )
    if gates is None:
        last = analyses[-1].verdicts if analyses else []
        gates = [str(v.get("gate")) for v in last if v.get("role") == "required"]
    gate_series: list[dict[str, Any]] = []
    per_look = [arms_of(a) for a in analyses]
    for gate in gates:
        looks = []
        margin = reason = role = None
        for a, per_arm in zip(analyses, per_look, strict=True):
            v = next((v for v in a.verdicts if v.get("gate") == gate), None)
            if v is None:
                continue
            interval = v.get("interval") or {}
            margin, reason, role = v.get("margin"), str(v.get("reason") or ""), v.get("role")
            figures = per_arm.get(gate) or {}
            looks.append(
                {
                    "at": a.evaluated_at,
                    "step": a.step,
                    "effect": v.get("effect"),
                    "lower": interval.get("lower"),
                    "upper": interval.get("upper"),
                    "outcome": str(v.get("outcome")),
                    "n": (v.get("n_champion") or 0) + (v.get("n_challenger") or 0),
                    "champion": figures.get("champion"),
                    "challenger": figures.get("challenger"),
                }
            )
        threshold = gate_threshold(gate, margin, reason or "") if margin is not None else None
        gate_series.append(
            {"gate": gate, "role": role, "margin": margin, "threshold": threshold, "looks": looks}
        )
    steps: dict[int, datetime] = {}
    for p in s.points:
        if p.step is not None and (p.step not in steps or p.start < steps[p.step]):
            steps[p.step] = p.start
    for a in analyses:
        if a.step not in steps or a.evaluated_at < steps[a.step]:
            steps[a.step] = a.evaluated_at
    return {
        "bucket_s": s.width_s,
        "first_at": s.first,
        "last_at": s.last,
        "points": points,
        "gates": gate_series,
        "steps": [{"step": k, "at": v} for k, v in sorted(steps.items())],
    }


def overview(
    store: Store,
    deployment: Deployment,
    *,
    now: datetime,
    events: int = 50,
    cache: series.SeriesCache | None = None,
) -> dict[str, Any]:
    """Return everything the dashboard shows of one deployment besides the status document.

    ``cache``: the app's ``storage.series.SeriesCache`` (a poll then aggregates only the rollout's new
    rows); without one the whole rollout is aggregated.
    """
    rollout = store.rollouts.latest(deployment.id)
    latest = store.analyses.latest(rollout.id) if rollout is not None else None
    body: dict[str, Any] = {
        "name": deployment.name,
        "state": state_json(rollout, now=now),
        "verdict": verdict_sentence(store, deployment, rollout, latest),
        "rollout_id": rollout.id if rollout is not None else None,
        "plan": None,
        "progress": None,
        "series": None,
    }
    if rollout is not None:
        policy = policy_of(rollout)
        body["plan"], body["progress"] = plan_json(rollout, policy, latest, now=now)
        aggregate = cache.rollout_series if cache is not None else series.rollout_series
        buckets = aggregate(store.db, rollout.id, latency=measure.LATENCY, points=PLOT_POINTS)
        looks = series.analysis_sample(store.db, rollout.id, points=GATE_POINTS)
        body["series"] = series_json(buckets, looks)
    recent = series.recent_events(store.db, deployment.id, limit=events)
    body["timeline"] = [
        {
            "id": e.id,
            "at": e.at,
            "actor": e.actor,
            "action": e.action,
            "reason": e.reason,
            "message": e.message,
            "rollout_id": e.rollout_id,
        }
        for e in recent
    ]
    return body
