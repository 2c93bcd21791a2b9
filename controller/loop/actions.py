"""Operators' actions on rollouts: start one, then ``act`` on it (promote, rollback, pause, resume, abort).

Every action is checked against the state machine's table (a forbidden one raises ``ActionError``),
applied with optimistic concurrency (``store.rollouts.update(expected_version=...)``; a race with the
controller loop is retried on fresh state, and re-checked) and audited as an event with the actor, the
operator's reason and the transition, in the same transaction as the change.

    rollout = actions.start_rollout(store, "churn", "churn:2", actor="alice", policy={"mode": "shadow"}, now=now)
    actions.act(store, "churn", "pause", actor="alice", reason="weekend freeze", now=now)
    actions.act(store, "churn", "promote", actor="alice", full=True, now=now)

Errors: ``ActionError`` (ValueError) for a forbidden action or a deployment without an active rollout;
``storage.NotFound`` (LookupError) for an unknown deployment, rollout or pipeline version;
``controller.core.policy.PolicyError`` (ValueError) for an invalid policy; ``storage.ConcurrentUpdate`` when
``expected_version`` is given and the rollout has moved on since.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from controller.clock import system_clock
from controller.core.machine import (
    Decision,
    ManualAction,
    RolloutState,
    TransitionError,
    manual,
)
from controller.core.policy import Policy
from controller.core.rollout_actions import ACTION_HELP, ROLLOUT_ACTIONS, RolloutAction
from storage import ConcurrentUpdate, InvalidState, Store
from storage.entities import NewAnalysis, NewEvent, Rollout

__all__ = [
    "ACTION_HELP",
    "ROLLOUT_ACTIONS",
    "ActionError",
    "act",
    "apply_decision",
    "policy_of",
    "start_rollout",
    "state_of",
    "transition_event",
]

RETRIES = 5


class ActionError(ValueError):
    """The action is not possible now: forbidden by the state machine, or nothing to act on."""

    status = 409  # how the admin API answers it (controller.http.errors)
    code = "invalid_transition"


def policy_of(rollout: Rollout) -> Policy:
    """Return the rollout's stored policy (the rollout's own mode wins over the policy's)."""
    return Policy.parse(rollout.policy, mode=rollout.mode)


def state_of(rollout: Rollout, *, samples: int = 0) -> RolloutState:
    """Return the state machine's view of a stored rollout."""
    return RolloutState(
        phase=rollout.phase,
        step_index=rollout.step_index,
        canary_weight=rollout.canary_weight,
        shadow_rate=rollout.shadow_rate,
        step_started_at=rollout.step_started_at,
        policy=policy_of(rollout),
        samples=samples,
    )


def transition_event(
    rollout: Rollout,
    decision: Decision,
    *,
    actor: str,
    message: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> NewEvent:
    """Describe a transition as an audit event: action ``rollout.<verb>``, the reason, from/to and the split."""
    return NewEvent(
        actor=actor,
        action=f"rollout.{decision.action}",
        reason=decision.reason,
        message=message or decision.message,
        deployment_id=rollout.deployment_id,
        rollout_id=rollout.id,
        details={
            "from": {
                "phase": rollout.phase,
                "step": rollout.step_index,
                "canary_weight": rollout.canary_weight,
                "shadow_rate": rollout.shadow_rate,
            },
            "to": {
                "phase": decision.phase,
                "step": decision.step_index,
                "canary_weight": decision.canary_weight,
                "shadow_rate": decision.shadow_rate,
            },
            "version": rollout.version + 1,
            **dict(details or {}),
        },
    )


def apply_decision(
    store: Store,
    rollout: Rollout,
    decision: Decision,
    *,
    actor: str,
    now: datetime,
    message: str | None = None,
    details: Mapping[str, Any] | None = None,
    analysis: NewAnalysis | None = None,
) -> Rollout:
    """Store a transition and its event in one transaction, if the rollout is still at the version read.

    ``analysis``: the look that caused it, stored in the same transaction (its id heads the event's
    details). Raises storage.ConcurrentUpdate when another writer changed the rollout in between.
    """
    return store.rollouts.update(
        rollout.id,
        expected_version=rollout.version,
        events=[transition_event(rollout, decision, actor=actor, message=message, details=details)],
        promote_challenger=decision.promotes_challenger and not decision.revert,
        restore_champion=decision.revert,
        analysis=analysis,
        now=now,
        **decision.changes(now),
    )


def start_rollout(
    store: Store,
    deployment: str,
    challenger: str | int,
    *,
    actor: str,
    mode: str | None = None,
    policy: Policy | Mapping[str, Any] | str | Path | None = None,
    reason: str = "",
    now: datetime | None = None,
    parity_check: Callable[..., Any] | None = None,
) -> Rollout:
    """Create a pending rollout of ``challenger`` (NAME:VERSION or id) on ``deployment``.

    The policy is validated and stored complete (defaults filled in), so later default changes never
    change a running rollout; ``mode`` overrides the policy's mode. The controller starts it at its
    next look. ActionError if the deployment has an active rollout or the challenger is its champion.

    ``parity_check(version, rtol=, atol=)`` (the app factory and CLI pass ``router.parity.check``)
    scores the challenger's golden set through the serving path first, with the policy's
    ``reproducibility`` tolerance: a failure records a "rollout.blocked" event (reason
    "parity_failed") and raises ActionError with the report's explanation; a pass is stored in the
    creation event's details (with any environment differences).
    """
    now = now or system_clock()
    resolved = Policy.parse(policy, mode=mode)
    target = store.deployments.get(deployment)
    version = (
        store.pipelines.get(challenger)
        if isinstance(challenger, int)
        else store.pipelines.get_by_ref(challenger)
    )
    champion = store.pipelines.get(target.champion_id)
    if champion.task != version.task:
        raise ActionError(
            f"challenger {version.ref} is a {version.task}, champion {champion.ref} a {champion.task}"
        )
    details: dict[str, Any] = {"challenger": version.ref, "champion": champion.ref, "mode": resolved.mode}
    if parity_check is not None:
        repro = resolved.reproducibility
        report = parity_check(version, rtol=repro.parity_rtol, atol=repro.parity_atol)
        details["parity"] = report.to_dict()
        if not report.passed:
            store.events.add(NewEvent(
                actor=actor, action="rollout.blocked", reason="parity_failed", message=report.message(),
                deployment_id=target.id, details=details,
            ), now=now)  # fmt: skip
            raise ActionError(f"rollout blocked by the parity gate: {report.message()}")
    event = NewEvent(
        actor=actor,
        action="rollout.create",
        reason="created",
        message=reason or f"rollout of {version.ref} against {champion.ref} ({resolved.mode})",
        details=details,
    )
    try:
        return store.rollouts.create(
            deployment_id=target.id,
            challenger_id=version.id,
            mode=resolved.mode,
            policy=resolved.to_dict(),
            created_by=actor,
            event=event,
            now=now,
        )
    except InvalidState as error:
        raise ActionError(str(error)) from error


def act(
    store: Store,
    deployment: str,
    action: RolloutAction | str,
    *,
    actor: str,
    full: bool = False,
    reason: str = "",
    rollout_id: int | None = None,
    expected_version: int | None = None,
    now: datetime | None = None,
) -> Rollout:
    """Apply an operator's action (one of ``ROLLOUT_ACTIONS``) to the deployment's active rollout.

    ``full`` (promote only): straight to promoted instead of the next step. ``rollout_id``: act on
    that rollout of the deployment instead of the active one; ``expected_version``: refuse with
    ConcurrentUpdate unless the rollout is still at that version (no retry). ``now``: when it
    happens (the caller's clock; ``system_clock()`` if not given).
    """
    if action not in ROLLOUT_ACTIONS:
        raise ActionError(f"unknown rollout action {action!r}; use {', '.join(ROLLOUT_ACTIONS)}")
    if full and action != "promote":
        raise ActionError("only promote can be full")
    manual_action: ManualAction = "promote_full" if full else cast(RolloutAction, action)
    return _act(
        store,
        deployment,
        manual_action,
        actor=actor,
        reason=reason,
        rollout_id=rollout_id,
        expected_version=expected_version,
        now=now or system_clock(),
    )


def _target(store: Store, deployment: str, rollout_id: int | None) -> Rollout:
    target = store.deployments.get(deployment)
    if rollout_id is not None:
        rollout = store.rollouts.get(rollout_id)
        if rollout.deployment_id != target.id:
            raise ActionError(f"rollout {rollout_id} does not belong to deployment {deployment!r}")
        return rollout
    active = store.rollouts.list(deployment_id=target.id, active_only=True)
    if not active:
        raise ActionError(f"deployment {deployment!r} has no active rollout")
    return active[-1]


def _act(
    store: Store,
    deployment: str,
    action: ManualAction,
    *,
    actor: str,
    reason: str,
    rollout_id: int | None,
    expected_version: int | None,
    now: datetime,
) -> Rollout:
    if not actor:
        raise ActionError("an action needs an actor (who did it)")
    for attempt in range(RETRIES):
        rollout = _target(store, deployment, rollout_id)
        if expected_version is not None and rollout.version != expected_version:
            raise ConcurrentUpdate(
                f"rollout {rollout.id} is at version {rollout.version}, not {expected_version}; reload and retry"
            )
        try:
            decision = manual(state_of(rollout), action, now, reason=reason)
        except TransitionError as error:
            raise ActionError(f"cannot {action.replace('_', ' ')} rollout {rollout.id}: {error}") from error
        try:
            return apply_decision(
                store,
                rollout,
                decision,
                actor=actor,
                now=now,
                details={"operator_reason": reason} if reason else {},
            )
        except ConcurrentUpdate:
            if expected_version is not None or attempt == RETRIES - 1:
                raise
            rollout_id = rollout.id  # the controller moved it meanwhile: re-read the same rollout, re-check
    raise AssertionError("unreachable")
