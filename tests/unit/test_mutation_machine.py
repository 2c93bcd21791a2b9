"""The state machine's decisions compared field by field: the post-promotion watch and manual actions.

tests/unit/test_machine.py checks actions, phases and reasons; these tests pin every field of the
Decision (step, weight, shadow rate, the message an operator reads, revert) at the boundaries of the
watch's minimum duration, labelled pairs and budget. Written against the mutants of
controller/core/machine.py that survived `make mutation` (bench/results/mutation.md).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.core.judge import Judgement, Outcome, Summary
from controller.core.machine import Decision, RolloutState, TransitionError, decide, manual
from controller.core.policy import Policy

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
WATCH = {
    "enabled": True,
    "min_duration_s": 60,
    "min_labelled_pairs": 100,
    "max_duration_s": 600,
    "sample_rate": 0.5,
}


def _judgement(decision: str) -> Judgement:
    outcome = {"promote": Outcome.PASS, "continue": Outcome.INCONCLUSIVE}.get(decision, Outcome.FAIL)
    return Judgement(decision, outcome, (), f"judge says {decision}", Summary(math.nan, "no-data", 0, 0))  # type: ignore[arg-type]


def _watching(*, samples: int, age_s: float, on_inconclusive: str = "pause") -> RolloutState:
    policy = Policy.parse(
        {"mode": "canary", "canary": {"steps": [10, 50]}, "watch": WATCH, "on_inconclusive": on_inconclusive}
    )
    return RolloutState(
        phase="watching",
        step_index=2,
        canary_weight=100.0,
        shadow_rate=0.5,
        step_started_at=T0 - timedelta(seconds=age_s),
        policy=policy,
        samples=samples,
    )


def _hold(reason: str, message: str) -> Decision:
    return Decision("hold", "watching", 2, 100.0, 0.5, reason, message)


def _revert(reason: str, message: str) -> Decision:
    return Decision("rollback", "rolled_back", 2, 0.0, 0.0, reason, message, revert=True)


@pytest.mark.parametrize(
    ("samples", "age_s", "judged", "expected"),
    [
        (0, 1, "rollback", _revert("watch_harm", "harm during the watch: judge says rollback; the previous champion is restored")),
        (0, 1, "veto", _revert("watch_harm", "harm during the watch: judge says veto; the previous champion is restored")),
        # exactly at both minimums the watch may end
        (100, 60, "promote", Decision("promote", "promoted", 2, 100.0, 0.0, "watch_passed",
                                      "watch passed after 60 s and 100 labelled pairs: judge says promote")),
        (99, 60, "promote", _hold("watch_labels", "99 of 100 labelled pairs in the watch")),
        (100, 59, "promote", _hold("watch_min_duration", "59 of 60 s of the watch")),
        (100, 60, "continue", _hold("watch_inconclusive", "judge says continue")),
        (100, 60, None, _hold("watch_inconclusive", "no judgement yet")),
        # the budget runs out at exactly max_duration_s; here the policy pauses for an operator
        (100, 600, "continue", _hold("watch_undecided", "watch budget spent, waiting for an operator: judge says continue")),
        (100, 599, "continue", _hold("watch_inconclusive", "judge says continue")),
        (100, 600, None, _hold("watch_undecided", "watch budget spent, waiting for an operator: no judgement yet")),
    ],
)  # fmt: skip
def test_every_field_of_a_watch_decision(
    samples: int, age_s: float, judged: str | None, expected: Decision
) -> None:
    judgement = None if judged is None else _judgement(judged)
    assert decide(_watching(samples=samples, age_s=age_s), judgement, T0) == expected


def test_a_watch_whose_budget_runs_out_rolls_back_when_the_policy_says_so() -> None:
    state = _watching(samples=100, age_s=600, on_inconclusive="rollback")
    assert decide(state, _judgement("continue"), T0) == _revert(
        "watch_budget_exhausted",
        "watch ran 600 s of its 600 s budget undecided (judge says continue); the previous champion is restored",
    )
    assert decide(state, None, T0).message == (
        "watch ran 600 s of its 600 s budget undecided (no judgement yet); the previous champion is restored"
    )


@pytest.mark.parametrize("action", ["promote", "promote_full"])
def test_promoting_a_watching_rollout_ends_the_watch_with_the_challenger_as_champion(action: Any) -> None:
    state = _watching(samples=0, age_s=1)
    assert manual(state, action, T0) == Decision(
        "promote", "promoted", 2, 100.0, 0.0, "manual_promote",
        f"manual {action.replace('_', ' ')}: the watch ends, the challenger stays the champion",
    )  # fmt: skip
    assert manual(state, action, T0, reason="labels look fine").message == (
        "labels look fine: the watch ends, the challenger stays the champion"
    )


def test_rolling_back_a_watching_rollout_restores_the_previous_champion() -> None:
    state = _watching(samples=0, age_s=1)
    assert manual(state, "rollback", T0) == _revert(
        "manual_rollback", "manual rollback; the previous champion is restored"
    )
    with pytest.raises(TransitionError, match="can only be promoted .* or rolled back, not pause"):
        manual(state, "pause", T0)


def test_entering_a_step_and_holding_carry_the_stage_shadow_rate() -> None:
    policy = Policy.parse({"mode": "canary", "canary": {"steps": [10, 50], "shadow_rate": 0.25}})
    start = RolloutState("pending", 0, 0.0, 0.0, T0, policy)
    entered = decide(start, None, T0)
    assert (entered.action, entered.phase, entered.step_index, entered.canary_weight, entered.shadow_rate) == (
        "start", "progressing", 0, 10.0, 0.25,
    )  # fmt: skip
    progressing = RolloutState("progressing", 0, 10.0, 0.25, T0, policy, samples=3)
    held = decide(progressing, None, T0)
    assert (held.action, held.canary_weight, held.shadow_rate) == ("hold", 10.0, 0.25)


def _canary(phase: str, *, step: int = 0) -> RolloutState:
    policy = Policy.parse({"mode": "canary", "canary": {"steps": [10, 50], "shadow_rate": 0.25}})
    return RolloutState(phase, step, 10.0, 0.25, T0, policy, samples=3)


def test_pausing_keeps_the_split_and_says_who_paused() -> None:
    assert manual(_canary("progressing"), "pause", T0) == Decision(
        "pause", "paused", 0, 10.0, 0.25, "manual_pause", "manual pause"
    )
    assert manual(_canary("progressing"), "pause", T0, reason="on call: investigating").message == (
        "on call: investigating"
    )


@pytest.mark.parametrize("phase", ["promoted", "rolled_back", "aborted"])
def test_promoting_an_ended_rollout_is_refused_as_a_transition_to_promoted(phase: str) -> None:
    with pytest.raises(TransitionError, match=f"a {phase} rollout cannot become promoted"):
        manual(_canary(phase), "promote", T0)


def test_manual_errors_name_the_problem() -> None:
    with pytest.raises(TransitionError, match="^a pending rollout has not started; wait for the controller"):
        manual(_canary("pending"), "promote", T0)
    with pytest.raises(TransitionError, match="^unknown action 'explode'$"):
        manual(_canary("progressing"), "explode", T0)  # type: ignore[arg-type]


# --- decide() outside the watch: whole decisions at the step's boundaries ----------------------------

STEPS = {
    "mode": "canary",
    "canary": {"steps": [10, 50], "shadow_rate": 0.25, "min_samples": 500, "min_duration_s": 60},
}


def _step(
    phase: str = "progressing", *, samples: int, age_s: float, policy: dict[str, Any] = STEPS
) -> RolloutState:
    return RolloutState(
        phase, 0, 10.0, 0.25, T0 - timedelta(seconds=age_s), Policy.parse(policy), samples=samples
    )


@pytest.mark.parametrize(
    ("samples", "age_s", "judged", "expected"),
    [
        # exactly at the minimum samples and duration the step may pass
        (500, 60, "promote", Decision("advance", "progressing", 1, 50.0, 0.25, "step_passed",
                                      "judge says promote; canary 10% -> canary 50%", new_step=True)),
        (500, 60, "continue", Decision("hold", "progressing", 0, 10.0, 0.25, "inconclusive", "judge says continue")),
        (500, 60, None, Decision("hold", "progressing", 0, 10.0, 0.25, "inconclusive", "no judgement yet")),
        (499, 60, "promote", Decision("hold", "progressing", 0, 10.0, 0.25, "collecting", "499 of 500 samples in canary 10%")),
        (500, 59, "promote", Decision("hold", "progressing", 0, 10.0, 0.25, "min_duration", "59 of 60 s in canary 10%")),
        # the default budget is a day: undecided then, the default policy pauses for an operator
        (3, 86_400, "continue", Decision("pause", "paused", 0, 10.0, 0.25, "step_budget_exhausted",
                                         "canary 10% step ran 86400 s of its 86400 s budget undecided "
                                         "(3 samples; judge says continue); paused for an operator")),
        (3, 86_400, None, Decision("pause", "paused", 0, 10.0, 0.25, "step_budget_exhausted",
                                   "canary 10% step ran 86400 s of its 86400 s budget undecided "
                                   "(3 samples; no judgement); paused for an operator")),
    ],
)  # fmt: skip
def test_every_field_of_a_step_decision(
    samples: int, age_s: float, judged: str | None, expected: Decision
) -> None:
    judgement = None if judged is None else _judgement(judged)
    assert decide(_step(samples=samples, age_s=age_s), judgement, T0) == expected


def test_start_pause_and_last_step_messages_name_the_stages() -> None:
    pending = RolloutState("pending", 0, 0.0, 0.0, T0, Policy.parse(STEPS))
    assert decide(pending, None, T0).message == "rollout started: canary 10%"
    shadow = RolloutState("pending", 0, 0.0, 0.0, T0, Policy.parse({"mode": "shadow"}))
    assert decide(shadow, None, T0).message == "rollout started: shadow"
    paused = _step("paused", samples=0, age_s=0)
    assert decide(paused, None, T0) == Decision(
        "hold",
        "paused",
        0,
        10.0,
        0.25,
        "paused",
        "paused: waiting for an operator to resume, promote or roll back",
    )
    watched = {**STEPS, "watch": WATCH}
    last = RolloutState(
        "progressing", 1, 50.0, 0.25, T0 - timedelta(seconds=60), Policy.parse(watched), samples=500
    )
    assert decide(last, _judgement("promote"), T0) == Decision(
        "watch", "watching", 2, 100.0, 0.5, "step_passed",
        "judge says promote; canary 50% was the last step: the challenger becomes the champion and the "
        "previous champion scores in shadow for the watch (at least 60 s and 100 labelled pairs)",
        new_step=True,
    )  # fmt: skip


def test_transition_errors_say_what_is_allowed() -> None:
    from controller.core.machine import check_transition

    with pytest.raises(TransitionError, match="^unknown phase 'bogus'$"):
        check_transition("bogus", "promoted")
    with pytest.raises(
        TransitionError, match=r"from promoted it may become nothing \(the rollout has ended\)$"
    ):
        check_transition("promoted", "paused")
    with pytest.raises(TransitionError, match="from watching it may become promoted, rolled_back$"):
        check_transition("watching", "paused")
