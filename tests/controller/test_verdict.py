"""The verdict sentence for every phase, from verdicts the real judge returned on labelled paired rows.

Numbers in the expected sentences are computed here from the rows (the observed accuracy difference)
or read from the stored verdict (its always-valid interval and margin), never from the sentence code.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from controller.core import judge
from controller.core.policy import Policy
from controller.loop.assess import verdict_dict
from controller.loop.measure import LATENCY_EDGES
from controller.reports.verdict import gate_phrase, verdict_sentence
from storage.entities import Analysis, Event, Rollout

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = {
    "mode": "shadow_then_canary",
    "canary": {"steps": [25, 50, 100]},
    "metrics": {"balanced_accuracy": {"role": "off"}},  # the core accuracy gate alone speaks for labels here
}
JUDGE = Policy.parse(POLICY).to_judge_policy("classification", "shadow", final=True, classes=("0", "1"))


def _rollout(phase: str, step: int = 1, **fields: Any) -> Rollout:
    values: dict[str, Any] = {
        "id": 7, "deployment_id": 1, "champion_id": 1, "challenger_id": 2, "mode": "shadow_then_canary",
        "phase": phase, "step_index": step, "canary_weight": 25.0 if step else 0.0, "shadow_rate": 1.0,
        "policy": POLICY, "version": 3, "created_by": "alice", "created_at": T0,
        "step_started_at": T0 + timedelta(minutes=2), "ended_at": None, "reason": None,
    }  # fmt: skip
    values.update(fields)
    return Rollout(**values)


def _labelled(n: int, champion_right: float, challenger_right: float, seed: int = 1) -> dict[str, Any]:
    """n labelled binary pairs whose arms are right with the given probabilities (independently)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    right1 = rng.random(n) < champion_right
    # the arms mostly agree (as two versions of one model do): 10% of rows are redrawn for the challenger
    redraw = rng.random(n) < 0.1
    shift = (challenger_right - champion_right) / 0.1
    right2 = np.where(redraw, rng.random(n) < champion_right + shift, right1)
    p1, p2 = np.where(right1, y, 1 - y), np.where(right2, y, 1 - y)
    metrics = judge.metrics_from_pairs(
        champion_prediction=p1,
        challenger_prediction=p2,
        champion_failed=np.zeros(n, bool),
        challenger_failed=np.zeros(n, bool),
        task="classification",
        label=y,
        labelled=np.ones(n, bool),
        champion_latency_ms=rng.lognormal(1.0, 0.3, n),
        challenger_latency_ms=rng.lognormal(1.0, 0.3, n),
        latency_edges=LATENCY_EDGES,
    )
    j = judge.judge(metrics, JUDGE)
    return {"judgement": j, "difference": float((p2 == y).mean() - (p1 == y).mean()), "n": n}


def _analysis(j: judge.Judgement, *, step: int = 1, at: datetime, **metrics: Any) -> Analysis:
    return Analysis(
        id=1, rollout_id=7, step=step, evaluated_at=at, outcome=j.outcome.label,
        verdicts=[verdict_dict(v) for v in j.verdicts],
        metrics={"decision": j.decision, "error_budget": {"alpha": 0.05}, **metrics},
    )  # fmt: skip


def _event(action: str, actor: str, at: datetime, **details: Any) -> Event:
    return Event(
        id=1, deployment_id=1, rollout_id=7, actor=actor, action=action, reason="", message=f"{action} message",
        details=details, at=at,
    )  # fmt: skip


def _gate(analysis: Analysis, gate: str) -> dict[str, Any]:
    return next(v for v in analysis.verdicts if v["gate"] == gate)


def _points(x: float) -> str:
    return f"{abs(x) * 100:.1f}".rstrip("0").rstrip(".")


def test_rolled_back_names_the_failing_gate_its_bound_margin_and_pairs() -> None:
    case = _labelled(1400, 0.90, 0.80)
    assert case["judgement"].decision == "rollback"
    at = T0 + timedelta(minutes=4)
    analysis = _analysis(case["judgement"], at=at)
    accuracy = _gate(analysis, "accuracy")
    assert accuracy["outcome"] == "fail"
    upper = accuracy["interval"]["upper"]  # the difference's bound nearest to "no harm"
    assert upper < -0.01
    rollout = _rollout("rolled_back", ended_at=at, reason="harm")
    sentence = verdict_sentence(rollout, analysis, events=[_event("rollout.rollback", "controller", at)])
    assert sentence == (
        f"Rolled back at 12:04 UTC: accuracy {_points(case['difference'])} points worse than the champion "
        f"(at least {_points(upper)} worse, 95% always-valid), beyond the 1-point margin, after 1,400 labelled "
        "pairs."
    )


def test_promoted_shows_the_worst_plausible_difference_within_the_margin() -> None:
    case = _labelled(6000, 0.90, 0.91, seed=3)
    assert case["judgement"].decision == "promote"
    at = T0 + timedelta(hours=3, minutes=30)
    analysis = _analysis(case["judgement"], step=2, at=at)
    lower = _gate(analysis, "accuracy")["interval"]["lower"]
    word = "better" if case["difference"] > 0 else "worse"
    rollout = _rollout("promoted", step=2, ended_at=at, reason="step_passed")
    sentence = verdict_sentence(rollout, analysis, events=[_event("rollout.promote", "controller", at)])
    assert sentence == (
        f"Promoted at 15:30 UTC: accuracy {_points(case['difference'])} points {word} than the champion "
        f"(at worst {_points(lower)} {'worse' if lower < 0 else 'better'}, 95% always-valid), within the "
        "1-point margin, after 6,000 labelled pairs."
    )


def test_a_running_step_says_where_it_is_what_comes_next_and_what_it_waits_for() -> None:
    case = _labelled(300, 0.90, 0.89, seed=5)
    assert case["judgement"].decision == "continue"
    analysis = _analysis(
        case["judgement"],
        at=T0 + timedelta(minutes=3),
        samples=300,
        controller={"action": "hold", "reason": "inconclusive", "message": case["judgement"].reason},
    )
    sentence = verdict_sentence(_rollout("progressing"), analysis)
    assert sentence.startswith(
        "Canary step 2 of 3 (25% of traffic to the challenger); next: canary 50%. Since 12:02 UTC: "
        "holding, not yet decided: accuracy "
    )
    assert gate_phrase(_gate(analysis, "accuracy")) in sentence
    assert sentence.endswith("after 300 labelled pairs; 300 of 500 samples.")
    collecting = _analysis(
        case["judgement"],
        at=T0 + timedelta(minutes=3),
        samples=320,
        controller={"action": "hold", "reason": "collecting", "message": "320 of 500 samples in canary 25%"},
    )
    assert verdict_sentence(_rollout("progressing"), collecting).endswith("collecting: 320 of 500 samples.")
    shadow = verdict_sentence(_rollout("shadowing", step=0), None)
    assert shadow == (
        "Shadow step 1 of 3 (the champion answers, the challenger scores in shadow); next: canary 25%. "
        "Since 12:02 UTC: no evaluation of this step yet."
    )


def test_an_analysis_of_an_earlier_step_does_not_speak_for_the_current_one() -> None:
    case = _labelled(300, 0.90, 0.89, seed=5)
    analysis = _analysis(case["judgement"], step=0, at=T0 + timedelta(minutes=1))
    assert verdict_sentence(_rollout("progressing"), analysis).endswith("no evaluation of this step yet.")


def test_paused_says_who_paused_and_why_or_that_the_step_ran_out_of_time() -> None:
    at = T0 + timedelta(minutes=10)
    by_alice = _event("rollout.pause", "alice", at, operator_reason="weekend freeze")
    assert verdict_sentence(_rollout("paused"), None, events=[by_alice]) == (
        "Paused at 12:10 UTC by alice: weekend freeze. Canary step 2 of 3 (25% of traffic to the challenger); "
        "next: canary 50% (resume, promote or roll back)."
    )
    budget = _event("rollout.pause", "controller", at)
    assert verdict_sentence(_rollout("paused"), None, events=[budget]).startswith(
        "Paused at 12:10 UTC for an operator: rollout.pause message. Canary step 2 of 3"
    )


def test_ended_by_an_operator_says_who_and_why() -> None:
    at = T0 + timedelta(days=1, minutes=5)
    aborted = _rollout("aborted", ended_at=at)
    assert verdict_sentence(
        aborted, None, events=[_event("rollout.abort", "bob", at, operator_reason="wrong model")]
    ) == ("Aborted at 2025-03-02 12:05 UTC by bob: wrong model; all traffic is back on the champion.")
    rolled = _rollout("rolled_back", ended_at=at, reason="manual_rollback")
    case = _labelled(1400, 0.90, 0.80)
    analysis = _analysis(case["judgement"], at=at)
    events = [_event("rollout.rollback", "carol", at, operator_reason="accuracy worse in segment pro")]
    assert verdict_sentence(rolled, analysis, events=events) == (
        "Rolled back at 2025-03-02 12:05 UTC by carol: accuracy worse in segment pro."
    )


def test_watching_and_pending() -> None:
    at = T0 + timedelta(hours=1)
    watching = _rollout("watching", step=3, canary_weight=100.0, step_started_at=at)
    assert verdict_sentence(watching, None, events=[_event("rollout.watch", "controller", at)]) == (
        "Watching since 13:00 UTC: the challenger answers every request, the previous champion scores in "
        "shadow; no evaluation of the watch yet."
    )
    assert verdict_sentence(_rollout("pending", step=0), None) == (
        "Pending: waiting for the controller to start the rollout (shadow first)."
    )


def test_error_rate_harm_is_said_in_points_of_requests() -> None:
    n = 2000
    rng = np.random.default_rng(2)
    failed1, failed2 = rng.random(n) < 0.01, rng.random(n) < 0.08
    metrics = judge.metrics_from_pairs(
        champion_prediction=np.zeros(n, int),
        challenger_prediction=np.zeros(n, int),
        champion_failed=failed1,
        challenger_failed=failed2,
        task="classification",
    )
    j = judge.judge(metrics, JUDGE)
    at = T0 + timedelta(minutes=4)
    analysis = _analysis(j, at=at)
    v = _gate(analysis, "error_rate")
    assert v["outcome"] == "fail"
    diff = float(failed2.mean() - failed1.mean())
    sentence = verdict_sentence(_rollout("rolled_back", ended_at=at, reason="harm"), analysis)
    assert sentence == (
        f"Rolled back at 12:04 UTC: error rate {_points(diff)} points higher than the champion's (at least "
        f"{_points(v['interval']['lower'])} higher, 95% always-valid), beyond the {_points(v['margin'])}-point "
        f"margin, after {n:,} requests."
    )


def test_the_sentence_says_why_a_final_promotion_is_held_for_the_labels() -> None:
    case = _labelled(300, 0.90, 0.89, seed=5)
    why = (
        "hold: labels look outcome-dependent: 19% of 8000 disagreeing pairs labelled vs 85% of 90000 agreeing"
    )
    analysis = _analysis(
        case["judgement"], step=2, at=T0 + timedelta(minutes=3), samples=600,
        judgement=why + "; every required gate is non-inferior: accuracy",
        controller={"action": "hold", "reason": "inconclusive", "message": why},
    )  # fmt: skip
    sentence = verdict_sentence(_rollout("progressing", step=2, canary_weight=100.0), analysis)
    assert why in sentence and "every required gate" not in sentence
