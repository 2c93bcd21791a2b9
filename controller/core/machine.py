"""The rollout state machine: which transitions exist, and what to do next. Pure, no I/O, no clock.

    pending ──► shadowing ──► progressing ──► progressing (next step) ──► [watching] ──► promoted
       │            │  ▲            │  ▲                                        │
       │            ▼  │            ▼  │                                        └──► rolled_back
       │           paused ◄─────────┘  │         (paused ──► shadowing | progressing: resume)
       │              │                │
       └──────────────┴──► rolled_back | aborted | promoted (manual)

``watching`` (only with ``watch.enabled``): the post-promotion watch. The challenger is already the
deployment's champion and answers every request; the previous champion scores in shadow. Its step
index is ``len(plan)``. It ends ``promoted`` once the required labelled gates pass (after
``watch.min_duration_s`` and ``watch.min_labelled_pairs``), or ``rolled_back`` with the previous
champion restored (``Decision.revert``) on proven harm, on an operator's rollback, or when its budget
runs out under ``on_inconclusive: rollback``.

``TRANSITIONS`` is the whole table; ``check_transition`` enforces it for the loop and for manual
actions alike. ``decide(state, judgement, now)`` is what the controller does on its own at one look;
``manual(state, action, now)`` is what an operator's action means. Both return a ``Decision`` carrying
the target phase, step, weight and shadow rate, a machine-readable ``reason`` and a ``message``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from controller.core.judge import Judgement
from controller.core.policy import Policy, Stage
from controller.core.rollout_actions import ROLLOUT_ACTIONS, RolloutAction

# What ``manual`` accepts: the operators' actions (ROLLOUT_ACTIONS), and a promotion straight to 100 %.
ManualAction = Literal[RolloutAction, "promote_full"]

PHASES: tuple[str, ...] = (
    "pending",
    "shadowing",
    "progressing",
    "paused",
    "watching",
    "promoted",
    "rolled_back",
    "aborted",
)
FINAL: frozenset[str] = frozenset({"promoted", "rolled_back", "aborted"})

TRANSITIONS: Mapping[str, frozenset[str]] = {
    "pending": frozenset({"shadowing", "progressing", "aborted"}),
    "shadowing": frozenset({"progressing", "watching", "promoted", "paused", "rolled_back", "aborted"}),
    "progressing": frozenset({"progressing", "watching", "promoted", "paused", "rolled_back", "aborted"}),
    "paused": frozenset({"shadowing", "progressing", "watching", "promoted", "rolled_back", "aborted"}),
    "watching": frozenset({"promoted", "rolled_back"}),
    "promoted": frozenset(),
    "rolled_back": frozenset(),
    "aborted": frozenset(),
}

__all__ = [
    "FINAL",
    "PHASES",
    "ROLLOUT_ACTIONS",
    "TRANSITIONS",
    "Decision",
    "ManualAction",
    "RolloutAction",
    "RolloutState",
    "TransitionError",
    "check_transition",
    "decide",
    "manual",
]


class TransitionError(ValueError):
    """The transition is not in the table (e.g. resuming a rollout that is not paused)."""


def check_transition(source: str, target: str) -> None:
    """Raise TransitionError unless the table allows source -> target."""
    if source not in TRANSITIONS:
        raise TransitionError(f"unknown phase {source!r}")
    if target not in TRANSITIONS[source]:
        allowed = ", ".join(sorted(TRANSITIONS[source])) or "nothing (the rollout has ended)"
        raise TransitionError(
            f"a {source} rollout cannot become {target}; from {source} it may become {allowed}"
        )


@dataclass(frozen=True)
class RolloutState:
    """What ``decide`` needs to know about a rollout at one look.

    ``samples``: observations in the current step so far (pairs in a shadow step, requests in a canary
    step; labelled pairs of the watch itself while ``watching``); ``step_started_at``: when the
    current step (or the last resume) began.
    """

    phase: str
    step_index: int
    canary_weight: float
    shadow_rate: float
    step_started_at: datetime
    policy: Policy
    samples: int = 0

    @property
    def plan(self) -> tuple[Stage, ...]:
        return self.policy.plan()

    @property
    def stage(self) -> Stage:
        plan = self.plan
        return plan[min(self.step_index, len(plan) - 1)]


@dataclass(frozen=True)
class Decision:
    """The target of one look or action: phase, step, split, a machine-readable reason and a message.

    ``action``: ``hold`` (nothing changes) or the verb of the transition (``start``, ``advance``,
    ``watch``, ``promote``, ``rollback``, ``pause``, ``resume``, ``abort``). ``revert``: the rollback
    ends a watch, so the previous champion becomes the deployment's champion again.
    """

    action: str
    phase: str
    step_index: int
    canary_weight: float
    shadow_rate: float
    reason: str
    message: str
    new_step: bool = False
    revert: bool = False

    @property
    def transition(self) -> bool:
        return self.action != "hold"

    @property
    def promotes_challenger(self) -> bool:
        return self.phase in ("promoted", "watching")

    def changes(self, now: datetime) -> dict[str, Any]:
        """Return the rollout fields to store for this decision (empty when holding)."""
        if not self.transition:
            return {}
        out: dict[str, Any] = {
            "phase": self.phase,
            "step_index": self.step_index,
            "canary_weight": self.canary_weight,
            "shadow_rate": self.shadow_rate,
            "reason": self.reason,
        }
        if self.new_step:
            out["step_started_at"] = now
        if self.phase in FINAL:
            out["ended_at"] = now
        return out


def _hold(state: RolloutState, reason: str, message: str) -> Decision:
    return Decision(
        "hold", state.phase, state.step_index, state.canary_weight, state.shadow_rate, reason, message
    )


def _enter(state: RolloutState, index: int, action: str, reason: str, message: str) -> Decision:
    stage = state.plan[index]
    phase = "shadowing" if stage.kind == "shadow" else "progressing"
    return Decision(action, phase, index, stage.weight, stage.shadow_rate, reason, message, new_step=True)


def _final(state: RolloutState, phase: str, action: str, reason: str, message: str) -> Decision:
    weight = 100.0 if phase == "promoted" else 0.0
    return Decision(action, phase, state.step_index, weight, 0.0, reason, message)


def _describe(stage: Stage) -> str:
    return "shadow" if stage.kind == "shadow" else f"canary {stage.weight:g}%"


def _revert(state: RolloutState, reason: str, message: str) -> Decision:
    """End a watch by restoring the previous champion."""
    return Decision(
        "rollback", "rolled_back", state.step_index, 0.0, 0.0, reason,
        f"{message}; the previous champion is restored", revert=True,
    )  # fmt: skip


def _advance(state: RolloutState, action: str, reason: str, why: str) -> Decision:
    """Move to the next stage; after the last one, start the watch (if enabled) or promote."""
    plan = state.plan
    nxt = state.step_index + 1
    if nxt >= len(plan) and state.policy.watch.enabled:
        w = state.policy.watch
        return Decision(
            "watch", "watching", len(plan), 100.0, w.sample_rate, reason,
            f"{why}; {_describe(plan[-1])} was the last step: the challenger becomes the champion and the "
            f"previous champion scores in shadow for the watch (at least {w.min_duration_s:g} s and "
            f"{w.min_labelled_pairs} labelled pairs)",
            new_step=True,
        )  # fmt: skip
    if nxt >= len(plan):
        return _final(
            state,
            "promoted",
            "promote",
            reason,
            f"{why}; {_describe(plan[-1])} was the last step: the challenger becomes the champion",
        )
    return _enter(
        state, nxt, action, reason, f"{why}; {_describe(plan[state.step_index])} -> {_describe(plan[nxt])}"
    )


def decide(state: RolloutState, judgement: Judgement | None, now: datetime) -> Decision:
    """Decide what the controller does at one look at a rollout; pure.

    Order: a pending rollout starts its first stage; harm or a veto rolls back at once (even while
    paused, since traffic still reaches the challenger); a paused rollout otherwise waits for a human;
    a step decides only after its minimum samples and duration; a passed step advances (the last one
    promotes); a step whose maximum duration runs out undecided pauses or rolls back per the policy.
    """
    policy = state.policy
    if state.phase in FINAL:
        return _hold(state, "ended", f"the rollout has ended ({state.phase})")
    if state.phase == "pending":
        first = state.plan[0]
        return _enter(state, 0, "start", "started", f"rollout started: {_describe(first)}")
    if state.phase == "watching":
        return _decide_watch(state, judgement, now)
    if judgement is not None and judgement.decision in ("veto", "rollback"):
        reason = "veto" if judgement.decision == "veto" else "harm"
        return _final(state, "rolled_back", "rollback", reason, judgement.reason)
    if state.phase == "paused":
        return _hold(state, "paused", "paused: waiting for an operator to resume, promote or roll back")
    stage = state.stage
    elapsed = (now - state.step_started_at).total_seconds()
    out_of_budget = elapsed >= stage.max_duration_s
    ready = state.samples >= stage.min_samples and elapsed >= stage.min_duration_s
    if ready and judgement is not None and judgement.decision == "promote":
        return _advance(state, "advance", "step_passed", judgement.reason)
    if out_of_budget:
        why = (
            f"{_describe(stage)} step ran {elapsed:.0f} s of its {stage.max_duration_s:g} s budget undecided "
            f"({state.samples} samples; {judgement.reason if judgement else 'no judgement'})"
        )
        if policy.on_inconclusive == "rollback":
            return _final(state, "rolled_back", "rollback", "step_budget_exhausted", why)
        return Decision(
            "pause",
            "paused",
            state.step_index,
            state.canary_weight,
            state.shadow_rate,
            "step_budget_exhausted",
            why + "; paused for an operator",
        )
    if state.samples < stage.min_samples:
        return _hold(
            state, "collecting", f"{state.samples} of {stage.min_samples} samples in {_describe(stage)}"
        )
    if elapsed < stage.min_duration_s:
        return _hold(
            state, "min_duration", f"{elapsed:.0f} of {stage.min_duration_s:g} s in {_describe(stage)}"
        )
    return _hold(state, "inconclusive", judgement.reason if judgement else "no judgement yet")


def _decide_watch(state: RolloutState, judgement: Judgement | None, now: datetime) -> Decision:
    w = state.policy.watch
    elapsed = (now - state.step_started_at).total_seconds()
    if judgement is not None and judgement.decision in ("veto", "rollback"):
        return _revert(state, "watch_harm", f"harm during the watch: {judgement.reason}")
    ready = elapsed >= w.min_duration_s and state.samples >= w.min_labelled_pairs
    if ready and judgement is not None and judgement.decision == "promote":
        return Decision(
            "promote", "promoted", state.step_index, 100.0, 0.0, "watch_passed",
            f"watch passed after {elapsed:.0f} s and {state.samples} labelled pairs: {judgement.reason}",
        )  # fmt: skip
    why = judgement.reason if judgement else "no judgement yet"
    if elapsed >= w.max_duration_s:
        if state.policy.on_inconclusive == "rollback":
            return _revert(
                state, "watch_budget_exhausted",
                f"watch ran {elapsed:.0f} s of its {w.max_duration_s:g} s budget undecided ({why})",
            )  # fmt: skip
        return _hold(state, "watch_undecided", f"watch budget spent, waiting for an operator: {why}")
    if elapsed < w.min_duration_s:
        return _hold(state, "watch_min_duration", f"{elapsed:.0f} of {w.min_duration_s:g} s of the watch")
    if state.samples < w.min_labelled_pairs:
        return _hold(
            state, "watch_labels", f"{state.samples} of {w.min_labelled_pairs} labelled pairs in the watch"
        )
    return _hold(state, "watch_inconclusive", why)


def manual(state: RolloutState, action: ManualAction, now: datetime, *, reason: str = "") -> Decision:
    """Turn an operator's action into a Decision; TransitionError if the table forbids it.

    ``promote``: the next step (the last promotes fully); ``promote_full``: straight to promoted;
    ``rollback``; ``pause``; ``resume`` (a paused rollout resumes its step with a fresh clock);
    ``abort`` (stop without a verdict; traffic returns to the champion).
    """
    why = reason or f"manual {action.replace('_', ' ')}"
    if state.phase == "watching":
        if action in ("promote", "promote_full"):
            decision = Decision(
                "promote", "promoted", state.step_index, 100.0, 0.0, "manual_promote",
                f"{why}: the watch ends, the challenger stays the champion",
            )  # fmt: skip
        elif action == "rollback":
            decision = _revert(state, "manual_rollback", why)
        else:
            raise TransitionError(
                f"a watching rollout can only be promoted (end the watch) or rolled back, not {action}"
            )
        check_transition(state.phase, decision.phase)
        return decision
    if action == "promote":
        if state.phase == "pending":
            raise TransitionError("a pending rollout has not started; wait for the controller or abort it")
        if state.phase in FINAL:
            check_transition(state.phase, "promoted")
        decision = _advance(state, "advance", "manual_promote", why)
    elif action == "promote_full":
        decision = _final(
            state, "promoted", "promote", "manual_promote", f"{why}: the challenger becomes the champion"
        )
    elif action == "rollback":
        decision = _final(state, "rolled_back", "rollback", "manual_rollback", why)
    elif action == "abort":
        decision = _final(state, "aborted", "abort", "manual_abort", why)
    elif action == "pause":
        decision = Decision(
            "pause", "paused", state.step_index, state.canary_weight, state.shadow_rate, "manual_pause", why
        )
    elif action == "resume":
        if state.phase != "paused":
            raise TransitionError(f"only a paused rollout can be resumed; this one is {state.phase}")
        decision = _enter(state, state.step_index, "resume", "manual_resume", why)
    else:
        raise TransitionError(f"unknown action {action!r}")
    check_transition(state.phase, decision.phase)
    return decision
