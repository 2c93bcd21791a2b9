"""The rollout state machine: the transition table entry by entry, and decide() table by table."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.core.judge import Judgement, Outcome, Summary
from controller.core.machine import (
    FINAL,
    PHASES,
    TRANSITIONS,
    RolloutState,
    TransitionError,
    check_transition,
    decide,
    manual,
)
from controller.core.policy import Policy

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

ALLOWED = {
    ("pending", "shadowing"), ("pending", "progressing"), ("pending", "aborted"),
    ("shadowing", "progressing"), ("shadowing", "promoted"), ("shadowing", "paused"),
    ("shadowing", "rolled_back"), ("shadowing", "aborted"),
    ("progressing", "progressing"), ("progressing", "promoted"), ("progressing", "paused"),
    ("progressing", "rolled_back"), ("progressing", "aborted"),
    ("paused", "shadowing"), ("paused", "progressing"), ("paused", "promoted"), ("paused", "rolled_back"),
    ("paused", "aborted"),
    ("shadowing", "watching"), ("progressing", "watching"), ("paused", "watching"),
    ("watching", "promoted"), ("watching", "rolled_back"),
}  # fmt: skip


@pytest.mark.parametrize("source", PHASES)
@pytest.mark.parametrize("target", PHASES)
def test_transition_table_allows_exactly_the_listed_transitions(source: str, target: str) -> None:
    assert (target in TRANSITIONS[source]) == ((source, target) in ALLOWED)
    if (source, target) in ALLOWED:
        check_transition(source, target)
    else:
        with pytest.raises(TransitionError, match=f"{source} rollout cannot become {target}"):
            check_transition(source, target)


def test_final_phases_allow_nothing() -> None:
    assert all(not TRANSITIONS[p] for p in FINAL)


def _judgement(decision: str) -> Judgement:
    outcome = {"promote": Outcome.PASS, "continue": Outcome.INCONCLUSIVE}.get(decision, Outcome.FAIL)
    return Judgement(decision, outcome, (), f"judge says {decision}", Summary(math.nan, "no-data", 0, 0))  # type: ignore[arg-type]


def _state(
    phase: str = "shadowing",
    step: int = 0,
    *,
    samples: int = 1000,
    age_s: float = 3600,
    policy: dict[str, Any] | None = None,
) -> RolloutState:
    p = Policy.parse(policy)
    stage = p.plan()[step]
    return RolloutState(
        phase=phase,
        step_index=step,
        canary_weight=stage.weight,
        shadow_rate=stage.shadow_rate,
        step_started_at=T0 - timedelta(seconds=age_s),
        policy=p,
        samples=samples,
    )


# (phase, step, samples, age_s, judge decision, policy) -> (action, phase, step, weight, reason)
DECIDE_TABLE: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = [
    # a pending rollout starts its first stage
    (("pending", 0, 0, 0, None, None), ("start", "shadowing", 0, 0.0, "started")),
    (("pending", 0, 0, 0, None, {"mode": "canary"}), ("start", "progressing", 0, 5.0, "started")),
    # harm and vetoes roll back at once, even before the minimums, even when paused
    (("shadowing", 0, 10, 1, "rollback", None), ("rollback", "rolled_back", 0, 0.0, "harm")),
    (("progressing", 2, 10, 1, "veto", None), ("rollback", "rolled_back", 2, 0.0, "veto")),
    (("paused", 1, 10, 1, "rollback", None), ("rollback", "rolled_back", 1, 0.0, "harm")),
    # a passed step advances; the last step promotes
    (("shadowing", 0, 1000, 3600, "promote", None), ("advance", "progressing", 1, 5.0, "step_passed")),
    (("progressing", 1, 1000, 3600, "promote", None), ("advance", "progressing", 2, 25.0, "step_passed")),
    (("progressing", 3, 1000, 3600, "promote", None), ("promote", "promoted", 3, 100.0, "step_passed")),
    (
        ("shadowing", 0, 1000, 3600, "promote", {"mode": "shadow"}),
        ("promote", "promoted", 0, 100.0, "step_passed"),
    ),
    # not before the step's minimum samples and duration
    (("shadowing", 0, 499, 3600, "promote", None), ("hold", "shadowing", 0, 0.0, "collecting")),
    (("progressing", 1, 1000, 59, "promote", None), ("hold", "progressing", 1, 5.0, "min_duration")),
    (("progressing", 1, 1000, 600, "continue", None), ("hold", "progressing", 1, 5.0, "inconclusive")),
    (("progressing", 1, 1000, 600, None, None), ("hold", "progressing", 1, 5.0, "inconclusive")),
    # out of budget undecided: pause (default) or roll back
    (("shadowing", 0, 1000, 86400, "continue", None), ("pause", "paused", 0, 0.0, "step_budget_exhausted")),
    (("shadowing", 0, 3, 86400, None, None), ("pause", "paused", 0, 0.0, "step_budget_exhausted")),
    (
        ("progressing", 2, 1000, 86400, "continue", {"on_inconclusive": "rollback"}),
        ("rollback", "rolled_back", 2, 0.0, "step_budget_exhausted"),
    ),
    # a passed step wins over an exhausted budget
    (("progressing", 1, 1000, 86400, "promote", None), ("advance", "progressing", 2, 25.0, "step_passed")),
    # a paused rollout waits for a human
    (("paused", 1, 1000, 86400, "promote", None), ("hold", "paused", 1, 5.0, "paused")),
    (("promoted", 3, 0, 0, None, None), ("hold", "promoted", 3, 50.0, "ended")),
]


@pytest.mark.parametrize(("given", "expected"), DECIDE_TABLE)
def test_decide(given: tuple[Any, ...], expected: tuple[Any, ...]) -> None:
    phase, step, samples, age_s, verdict, policy = given
    state = _state(phase, step, samples=samples, age_s=age_s, policy=policy)
    decision = decide(state, None if verdict is None else _judgement(verdict), T0)
    assert (
        decision.action,
        decision.phase,
        decision.step_index,
        decision.canary_weight,
        decision.reason,
    ) == expected
    assert decision.message
    if decision.transition:
        check_transition(phase, decision.phase)


def test_rollback_stops_the_challenger_at_once_and_promotion_moves_all_traffic() -> None:
    rolled = decide(_state("progressing", 2), _judgement("rollback"), T0)
    assert (rolled.canary_weight, rolled.shadow_rate) == (0.0, 0.0)
    assert rolled.changes(T0) == {
        "phase": "rolled_back",
        "step_index": 2,
        "canary_weight": 0.0,
        "shadow_rate": 0.0,
        "reason": "harm",
        "ended_at": T0,
    }
    promoted = decide(_state("progressing", 3), _judgement("promote"), T0)
    assert promoted.promotes_challenger and promoted.changes(T0)["ended_at"] == T0


def test_a_new_step_restarts_the_step_clock() -> None:
    decision = decide(_state("shadowing", 0), _judgement("promote"), T0)
    assert decision.changes(T0)["step_started_at"] == T0
    assert decide(_state("shadowing", 0, samples=1), None, T0).changes(T0) == {}


# (phase, step, action) -> (action, phase, step, weight)  or an error
MANUAL_TABLE: list[tuple[tuple[str, int, str], tuple[Any, ...] | str]] = [
    (("shadowing", 0, "promote"), ("advance", "progressing", 1, 5.0)),
    (("progressing", 3, "promote"), ("promote", "promoted", 3, 100.0)),
    (("paused", 1, "promote"), ("advance", "progressing", 2, 25.0)),
    (("shadowing", 0, "promote_full"), ("promote", "promoted", 0, 100.0)),
    (("paused", 2, "promote_full"), ("promote", "promoted", 2, 100.0)),
    (("progressing", 1, "rollback"), ("rollback", "rolled_back", 1, 0.0)),
    (("paused", 1, "rollback"), ("rollback", "rolled_back", 1, 0.0)),
    (("shadowing", 0, "pause"), ("pause", "paused", 0, 0.0)),
    (("progressing", 2, "pause"), ("pause", "paused", 2, 25.0)),
    (("paused", 0, "resume"), ("resume", "shadowing", 0, 0.0)),
    (("paused", 2, "resume"), ("resume", "progressing", 2, 25.0)),
    (("pending", 0, "abort"), ("abort", "aborted", 0, 0.0)),
    (("progressing", 1, "abort"), ("abort", "aborted", 1, 0.0)),
    (("pending", 0, "promote"), "has not started"),
    (("pending", 0, "pause"), "pending rollout cannot become paused"),
    (("pending", 0, "rollback"), "pending rollout cannot become rolled_back"),
    (("paused", 1, "pause"), "paused rollout cannot become paused"),
    (("progressing", 1, "resume"), "only a paused rollout"),
    (("promoted", 3, "rollback"), "promoted rollout cannot become rolled_back"),
    (("rolled_back", 1, "promote"), "rolled_back rollout cannot become"),
    (("aborted", 1, "abort"), "aborted rollout cannot become aborted"),
]


@pytest.mark.parametrize(("given", "expected"), MANUAL_TABLE)
def test_manual(given: tuple[str, int, str], expected: tuple[Any, ...] | str) -> None:
    phase, step, action = given
    state = _state(phase, step)
    if isinstance(expected, str):
        with pytest.raises(TransitionError, match=expected):
            manual(state, action, T0)  # type: ignore[arg-type]
        return
    decision = manual(state, action, T0, reason="operator says so")  # type: ignore[arg-type]
    assert (decision.action, decision.phase, decision.step_index, decision.canary_weight) == expected
    assert decision.reason == f"manual_{action.removesuffix('_full')}"
    assert "operator says so" in decision.message


def test_resume_starts_the_step_clock_afresh_so_an_exhausted_budget_does_not_pause_again() -> None:
    paused = _state("paused", 1, age_s=86400)
    resumed = manual(paused, "resume", T0)
    assert resumed.changes(T0)["step_started_at"] == T0
