"""The control loop: every interval, look at each active rollout, judge its step and apply the decision.

One look at one rollout: ``assess`` it (controller.loop.assess: the step's SQL aggregates, judged, and
``decide`` (pure)), then store the analysis, and when the decision is a transition apply it, the
analysis and its event in one transaction (optimistic concurrency: if an operator acted in between,
the look is dropped and the next one starts from the new state). Events are written on transitions only, with the machine-readable reason and the
verdicts that caused them, actor "controller".

    looks = evaluate_once(store, now=clock())                       # one pass (tests drive the clock)
    run(store, settings, stop=threading.Event(), clock=clock, leadership=leadership)  # `mlcanary controller`
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.clock import Clock, system_clock
from controller.config import Settings
from controller.core.judge import Judgement
from controller.core.machine import Decision
from controller.core.policy import PolicyError
from controller.loop.actions import apply_decision
from controller.loop.assess import assess, verdict_dict
from controller.loop.leader import Leadership
from storage import ConcurrentUpdate, StorageError, Store
from storage.entities import Rollout

log = logging.getLogger("mlcanary.controller")

ACTOR = "controller"
CONTROLLER_ID = f"{socket.gethostname()}:{os.getpid()}"  # which controller process acted, in every event

__all__ = ["Look", "evaluate_once", "evaluate_rollout", "run", "verdict_dict"]


@dataclass(frozen=True)
class Look:
    """What one look at one rollout did. ``applied``: a transition was committed by this look."""

    rollout_id: int
    deployment_id: int
    decision: Decision | None
    judgement: Judgement | None = None
    applied: bool = False
    rollout: Rollout | None = None
    error: str | None = None


NOT_LEADING = "not leading"


def evaluate_rollout(
    store: Store, rollout: Rollout, *, now: datetime, leading: Callable[[], bool] | None = None
) -> Look:
    """Look at one active rollout once: assess it, then store the analysis and apply the decision.

    On a transition the analysis, the rollout's change and its event are written in one transaction;
    otherwise the analysis alone. With ``leading``, nothing is written unless it says True just before
    (a controller whose lead is no longer confirmed stops: controller.loop.leader).
    """
    assessment = assess(store, rollout, now=now)
    decision, judgement, measurement = assessment.decision, assessment.judgement, assessment.measurement
    analysis = assessment.analysis()
    details: dict[str, Any] = {}
    if analysis is not None and judgement is not None and measurement is not None:
        details = {
            "judgement": judgement.reason,
            "samples": measurement.samples,
            "verdicts": analysis.verdicts,
        }
    details["controller"] = CONTROLLER_ID
    if leading is not None and not leading():
        log.warning("controller cannot confirm it leads: rollout %s left to the leader", rollout.id)
        return Look(rollout.id, rollout.deployment_id, decision, judgement, error=NOT_LEADING)
    if not decision.transition:
        if analysis is not None:
            store.analyses.add(
                rollout_id=rollout.id,
                step=analysis.step,
                outcome=analysis.outcome,
                verdicts=analysis.verdicts,
                metrics=analysis.metrics,
                now=now,
            )
        return Look(rollout.id, rollout.deployment_id, decision, judgement, rollout=rollout)
    try:
        updated = apply_decision(
            store, rollout, decision, actor=ACTOR, now=now, details=details, analysis=analysis
        )
    except ConcurrentUpdate:
        log.info(
            "rollout %s changed while it was judged; the next look starts from the new state", rollout.id
        )
        return Look(rollout.id, rollout.deployment_id, decision, judgement, error="concurrent update")
    log.info(
        "rollout %s: %s -> %s (%s): %s",
        rollout.id,
        rollout.phase,
        decision.phase,
        decision.reason,
        decision.message,
    )
    return Look(rollout.id, rollout.deployment_id, decision, judgement, applied=True, rollout=updated)


def evaluate_once(store: Store, *, now: datetime, leading: Callable[[], bool] | None = None) -> list[Look]:
    """Look once at every active rollout; one rollout's failure never stops the others.

    With ``leading`` (see evaluate_rollout) the pass ends at the first look that finds it False.
    """
    outcomes: list[Look] = []
    for rollout in store.rollouts.list(active_only=True):
        try:
            outcomes.append(evaluate_rollout(store, rollout, now=now, leading=leading))
            if outcomes[-1].error == NOT_LEADING:
                break
        except (StorageError, PolicyError, ValueError) as error:
            log.error("rollout %s could not be evaluated: %s", rollout.id, error)
            outcomes.append(Look(rollout.id, rollout.deployment_id, None, error=str(error)))
    return outcomes


def run(
    store: Store,
    settings: Settings,
    *,
    stop: threading.Event,
    clock: Clock = system_clock,
    leadership: Leadership | None = None,
) -> int:
    """Evaluate every ``settings.controller_interval`` seconds until ``stop`` is set; return the passes made.

    Passes never take more than ``settings.controller_busy_share`` of the time (``pause_after``), a
    pass's time being its own: its wall time less what it waited runnable for a CPU (``runnable_wait``).
    Niced beside a saturated router (`serve`), a look needing 0.1 s of CPU lasted 6 s of wall time;
    counting those 6 s made the controller pause 18 s more, so at saturation it looked every ~24 s and
    a harmful challenger was rolled back minutes late. Time spent waiting for the database (PostgreSQL
    working in its own process) still counts: that work takes CPU from the routers as well.

    With ``leadership`` (see controller.loop.leader) leadership is (re)claimed before every pass and a
    standby only waits, retrying each interval; within a pass, every write waits for the lead to be
    confirmed (still within its lease, or one more health query). A database outage is logged and retried.
    """
    interval, busy_share = settings.controller_interval, settings.controller_busy_share
    confirm = None if leadership is None else (lambda: leadership.leads() or leadership.acquire())
    passes = 0
    leading = False
    while not stop.is_set():
        started, queued = time.monotonic(), runnable_wait()
        try:
            now_leading = True if leadership is None else leadership.acquire()
            if now_leading != leading:
                log.warning(
                    "controller %s", "is the leader: acting" if now_leading else "is a standby: waiting"
                )
                leading = now_leading
            if leading:
                evaluate_once(store, now=clock(), leading=confirm)
                passes += 1
        except StorageError as error:
            log.warning("controller pass failed, retrying in %.3g s: %s", interval, error)
        own = (time.monotonic() - started) - (runnable_wait() - queued)
        stop.wait(pause_after(own, interval=interval, busy_share=busy_share))
    return passes


def runnable_wait() -> float:
    """Return the seconds the calling thread has waited runnable for a CPU (Linux schedstat), else 0."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def pause_after(elapsed: float, *, interval: float, busy_share: float) -> float:
    """Seconds to wait after a pass that took ``elapsed`` s: the rest of ``interval``, but at least enough
    that passes take no more than ``busy_share`` of the time.

    A look's cost grows with its step (on SQLite its queries run in the controller's process); without
    the bound a short interval on a big step makes the controller look back to back and take a core
    from the routers it shares a machine with (issue 13). ``elapsed`` is the pass's own time (``run``),
    not its wall time: a pass slowed by others' load already yielded the CPU it waited for.
    """
    return max(0.0, interval - elapsed, elapsed * (1.0 / busy_share - 1.0))
