"""The control loop: every interval, look at each active rollout, judge its step and apply the decision.

One look at one rollout: load the step's metrics (SQL aggregates), judge them, store the analysis,
``decide`` (pure), and when the decision is a transition apply it in one transaction with its event
(optimistic concurrency: if an operator acted in between, the look is dropped and the next one starts
from the new state). Events are written on transitions only, with the machine-readable reason and the
verdicts that caused them, actor "controller".

    outcomes = evaluate_once(store, now=datetime.now(UTC))          # one pass (tests drive the clock)
    run(store, settings, stop=threading.Event(), leadership=leadership)   # `mlcanary controller`
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from controller.config import Settings
from controller.core import metrics as quality
from controller.core import reproducibility
from controller.core.judge import Judgement, Verdict, judge
from controller.core.machine import Decision, decide
from controller.core.policy import Policy, PolicyError
from controller.loop.actions import apply_decision, policy_of, state_of
from controller.loop.leader import Leadership
from controller.loop.measure import Measurement, measure
from storage import ConcurrentUpdate, StorageError, Store, repro_queries
from storage.entities import Rollout

log = logging.getLogger("mlcanary.controller")

ACTOR = "controller"
CONTROLLER_ID = f"{socket.gethostname()}:{os.getpid()}"  # which controller process acted, in every event

__all__ = ["Outcome", "evaluate_once", "evaluate_rollout", "run", "verdict_dict"]


@dataclass(frozen=True)
class Outcome:
    """What one look at one rollout did. ``applied``: a transition was committed by this look."""

    rollout_id: int
    deployment_id: int
    decision: Decision | None
    judgement: Judgement | None = None
    applied: bool = False
    rollout: Rollout | None = None
    error: str | None = None


def _number(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def verdict_dict(v: Verdict) -> dict[str, Any]:
    """Return a verdict as plain JSON-able data (what analyses and events store)."""
    return {
        "gate": v.gate,
        "role": v.role,
        "outcome": v.outcome.label,
        "statistic": _number(v.statistic),
        "bound": _number(v.bound),
        "effect": _number(v.effect),
        "margin": _number(v.margin),
        "n_champion": v.n_champion,
        "n_challenger": v.n_challenger,
        "reason": v.reason,
        "p_value": _number(v.p_value),
        "interval": None
        if v.interval is None
        else {"lower": _number(v.interval.lower), "upper": _number(v.interval.upper)},
    }


def evaluate_rollout(store: Store, rollout: Rollout, *, now: datetime) -> Outcome:
    """Look at one active rollout once: measure, judge, store the analysis, decide and apply."""
    policy = policy_of(rollout)
    judgement: Judgement | None = None
    measurement: Measurement | None = None
    details: dict[str, Any] = {}
    if rollout.phase != "pending":
        challenger = store.pipelines.get(rollout.challenger_id)
        task: Literal["classification", "regression"] = (
            "regression" if challenger.task == "regression" else "classification"
        )
        measurement = measure(store, rollout, task=task, policy=policy, now=now, classes=challenger.classes)
        judge_policy = policy.to_judge_policy(
            task,
            measurement.metrics.mode,
            labelled=measurement.labelled,
            classes=tuple(str(c) for c in challenger.classes or ()),
        )
        judgement = judge(measurement.metrics, judge_policy)
        judgement = _with_reproducibility(store, rollout, judgement, task=task, policy=policy, now=now)
    decision = decide(state_of(rollout, samples=measurement.samples if measurement else 0), judgement, now)
    if judgement is not None and measurement is not None:
        verdicts = [verdict_dict(v) for v in judgement.verdicts]
        analysis = store.analyses.add(
            rollout_id=rollout.id,
            step=rollout.step_index,
            outcome=judgement.outcome.label,
            verdicts=verdicts,
            metrics={
                **measurement.summary(),
                "decision": judgement.decision,
                "judgement": judgement.reason,
                "summary": {"score": _number(judgement.summary.score), "band": judgement.summary.band},
                "quality": quality.arm_values(measurement.metrics.quality, judge_policy.quality),
                "controller": {
                    "action": decision.action,
                    "reason": decision.reason,
                    "message": decision.message,
                },
            },
            now=now,
        )
        details = {
            "analysis_id": analysis.id,
            "judgement": judgement.reason,
            "samples": measurement.samples,
            "verdicts": verdicts,
        }
    details["controller"] = CONTROLLER_ID
    if not decision.transition:
        return Outcome(rollout.id, rollout.deployment_id, decision, judgement, rollout=rollout)
    try:
        updated = apply_decision(store, rollout, decision, actor=ACTOR, now=now, details=details)
    except ConcurrentUpdate:
        log.info(
            "rollout %s changed while it was judged; the next look starts from the new state", rollout.id
        )
        return Outcome(rollout.id, rollout.deployment_id, decision, judgement, error="concurrent update")
    log.info(
        "rollout %s: %s -> %s (%s): %s",
        rollout.id,
        rollout.phase,
        decision.phase,
        decision.reason,
        decision.message,
    )
    return Outcome(rollout.id, rollout.deployment_id, decision, judgement, applied=True, rollout=updated)


def _with_reproducibility(
    store: Store, rollout: Rollout, judgement: Judgement, *, task: str, policy: Policy, now: datetime
) -> Judgement:
    """Add each arm's online-versus-offline verdict (controller.core.reproducibility) to the step's judgement."""
    repro = policy.reproducibility
    if repro.role == "off":
        return judgement
    labelled = repro_queries.labelled_metrics(
        store.db, rollout.id, received_before=now - timedelta(seconds=policy.label_maturity_s)
    )
    reproductions = []
    for arm, version_id in (("champion", rollout.champion_id), ("challenger", rollout.challenger_id)):
        version = store.pipelines.get(version_id)
        sums = labelled[arm]
        online = reproducibility.ArmOnline(
            arm=arm,
            version=version.ref,
            labelled=sums.labelled,
            correct=sums.correct,
            abs_error_sum=sums.abs_error_sum,
            abs_error_sq_sum=sums.abs_error_sq_sum,
        )
        reproductions.append(
            reproducibility.compare_online_offline(
                task,
                version.offline_metrics,
                online,
                accuracy_margin=repro.accuracy_margin,
                mae_margin=repro.mae_margin,
                confidence=repro.confidence,
                min_labels=repro.min_labels,
            )
        )
    return reproducibility.gate(judgement, reproductions, role=repro.role, on_worse=repro.on_worse)


def evaluate_once(store: Store, *, now: datetime) -> list[Outcome]:
    """Look once at every active rollout; one rollout's failure never stops the others."""
    outcomes: list[Outcome] = []
    for rollout in store.rollouts.list(active_only=True):
        try:
            outcomes.append(evaluate_rollout(store, rollout, now=now))
        except (StorageError, PolicyError, ValueError) as error:
            log.error("rollout %s could not be evaluated: %s", rollout.id, error)
            outcomes.append(Outcome(rollout.id, rollout.deployment_id, None, error=str(error)))
    return outcomes


def _wall_clock() -> datetime:
    return datetime.now(UTC)


def run(
    store: Store,
    settings: Settings,
    *,
    stop: threading.Event,
    clock: Callable[[], datetime] = _wall_clock,
    leadership: Leadership | None = None,
) -> int:
    """Evaluate every ``settings.controller_interval`` seconds until ``stop`` is set; return the passes made.

    With ``leadership`` (see controller.loop.leader) leadership is (re)claimed before every pass and a
    standby only waits, retrying each interval. A database outage is logged and retried.
    """
    interval = settings.controller_interval
    passes = 0
    leading = False
    while not stop.is_set():
        started = time.monotonic()
        try:
            now_leading = True if leadership is None else leadership.acquire()
            if now_leading != leading:
                log.warning(
                    "controller %s", "is the leader: acting" if now_leading else "is a standby: waiting"
                )
                leading = now_leading
            if leading:
                evaluate_once(store, now=clock())
                passes += 1
        except StorageError as error:
            log.warning("controller pass failed, retrying in %.3g s: %s", interval, error)
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    return passes
