"""How gates combine and when they apply: table tests of judge() and decide() under the policy's rules."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.core import stats
from controller.core.evidence import stratified, swap_arms
from controller.core.judge import (
    Histogram,
    Judgement,
    Outcome,
    PairedCounts,
    Proportion,
    StepMetrics,
    Summary,
    hold_for_label_delays,
    hold_for_outcome_dependent_labels,
    judge,
    outcome_dependent_labels,
)
from controller.core.machine import RolloutState, TransitionError, decide, manual
from controller.core.policy import Policy, PolicyError

T0 = datetime(2026, 12, 1, tzinfo=UTC)
N = 20_000


def shadow(**fields: Any) -> StepMetrics:
    base: dict[str, Any] = {
        "mode": "shadow",
        "champion": Proportion(n=N, count=20),
        "challenger": Proportion(n=N, count=20),
        "paired_errors": PairedCounts(n=N, worse=10, better=10),
    }
    base.update(fields)
    return StepMetrics(**base)


def agreement(share: float) -> Proportion:
    return Proportion(n=N, count=round(share * N))


def gate(j: Judgement, name: str) -> Any:
    return next(v for v in j.verdicts if v.gate == name)


def classification(policy: dict[str, Any] | None = None, *, final: bool = False, mode: str = "shadow") -> Any:
    # These tables are about how the core gates combine; the class-aware quality gates (on by default:
    # balanced accuracy) have their own tests (tests/unit/test_metrics.py), so they are off here.
    policy = {"metrics": {"balanced_accuracy": {"role": "off"}}, **(policy or {})}
    return Policy.parse(policy).to_judge_policy("classification", mode, final=final)  # type: ignore[arg-type]


# --- 1. promotion needs evidence on what the policy requires ---------------------------------------


@pytest.mark.parametrize(
    ("share", "final", "decision", "why"),
    [
        (0.999, False, "promote", "accuracy (through agreement)"),  # 0.1% disagreement <= 1-point margin
        (0.999, True, "continue", "accuracy no-data"),  # the final promotion needs the labels
        (0.95, False, "continue", "accuracy no-data"),  # 5% disagreement could hide a 5-point loss
        (0.92, True, "continue", "accuracy no-data"),  # the audit's 8% disagreement case
    ],
)
def test_agreement_stands_in_for_accuracy_only_before_the_final_promotion_and_at_its_margin(
    share: float, final: bool, decision: str, why: str
) -> None:
    j = judge(shadow(agreement=agreement(share)), classification(final=final))
    assert j.decision == decision
    assert why in j.reason


def test_the_stand_in_threshold_is_one_minus_the_accuracy_margin() -> None:
    loose = classification({"gates": {"accuracy": {"margin": 0.1}}})
    tight = classification({"gates": {"accuracy": {"margin": 0.01}}})
    metrics = shadow(agreement=agreement(0.95))
    # 5% disagreement bounds the accuracy drop by 5 points: within a 10-point margin, not a 1-point one
    assert judge(metrics, loose).decision == "promote"
    assert judge(metrics, tight).decision == "continue"
    assert gate(judge(metrics, tight), "agreement_proxy").margin == pytest.approx(0.99)


def test_labels_that_prove_accuracy_promote_whatever_the_agreement() -> None:
    labelled = PairedCounts(n=N, worse=1000, better=1200)  # 11% disagreement, challenger 1 point better
    j = judge(shadow(agreement=agreement(0.89), paired_correct=labelled), classification(final=True))
    assert j.decision == "promote"
    assert gate(j, "accuracy").outcome == Outcome.PASS


# --- 2. disagreement is not harm --------------------------------------------------------------------


def test_agreement_below_its_minimum_holds_instead_of_rolling_back() -> None:
    j = judge(shadow(agreement=agreement(0.7)), classification())
    assert gate(j, "agreement").outcome == Outcome.FAIL
    assert j.decision == "continue"
    assert j.reason.startswith("hold (not harm; labels decide)")


def test_agreement_rolls_back_only_when_the_policy_says_so() -> None:
    j = judge(
        shadow(agreement=agreement(0.7)), classification({"gates": {"agreement": {"on_fail": "rollback"}}})
    )
    assert j.decision == "rollback"


def test_an_agreement_hold_does_not_hide_harm_proven_by_labels() -> None:
    labelled = PairedCounts(n=N, worse=3000, better=1000)  # 10 points worse
    j = judge(shadow(agreement=agreement(0.8), paired_correct=labelled), classification())
    assert j.decision == "rollback"
    assert sorted(v.gate for v in j.verdicts if v.outcome == Outcome.FAIL) == ["accuracy", "agreement"]


# --- 3. guardrails block promotion until they have data ---------------------------------------------


def _canary(latency_n: int) -> StepMetrics:
    edges = tuple(float(x) for x in stats.latency_edges())
    k = len(edges) - 1
    counts = [0] * k
    counts[100] = latency_n
    return StepMetrics(
        mode="canary",
        champion=Proportion(n=N, count=20),
        challenger=Proportion(n=N, count=20),
        challenger_weight=0.5,
        units=(N, N),
        paired_errors=PairedCounts(n=N, worse=10, better=10),
        paired_correct=PairedCounts(n=N, worse=500, better=500),
        latency=Histogram(edges=edges, champion=tuple(counts), challenger=tuple(counts)),
    )


@pytest.mark.parametrize(
    ("latency_n", "allow", "decision"),
    [(999, False, "continue"), (999, True, "promote"), (5000, False, "promote")],
)
def test_a_guardrail_without_data_blocks_promotion_unless_waived(
    latency_n: int, allow: bool, decision: str
) -> None:
    policy = classification({"gates": {"latency_p99": {"allow_no_data": allow}}}, mode="canary", final=True)
    j = judge(_canary(latency_n), policy)
    assert j.decision == decision
    if decision == "continue":
        assert "latency_p99 no-data" in j.reason


# --- 4. one error budget ----------------------------------------------------------------------------


def test_the_error_budget_splits_alpha_exactly() -> None:
    p = Policy.parse({"alpha": 0.05})
    b = p.budget()
    # harm 80%, three veto slots share 10%, two arms share 10%
    assert b["harm"] == pytest.approx(0.04)
    assert b["harm"] + 3 * b["veto"] + 2 * b["reproducibility"] == pytest.approx(0.05)
    with pytest.raises(PolicyError, match="add up to 1"):
        Policy.parse({"error_budget": {"harm": 0.9, "vetoes": 0.1, "reproducibility": 0.1}})


def _borderline_errors(lo: float, hi: float, policy: Any) -> PairedCounts:
    only_errors = replace(policy, accuracy=replace(policy.accuracy, enabled=False))
    for worse in range(10, 400):
        pc = PairedCounts(n=N, worse=worse, better=10)
        p = gate(judge(shadow(paired_errors=pc), only_errors), "error_rate").p_value
        if lo < p < hi:
            return pc
    raise AssertionError("no counts found")


def test_a_gate_without_data_stays_in_the_holm_family_with_p_one() -> None:
    base = classification({"gates": {"error_rate": {"margin": 0.0}, "agreement": {"role": "off"}}})
    alpha = base.alpha
    pc = _borderline_errors(alpha / 2, alpha, base)
    only_errors = replace(base, accuracy=replace(base.accuracy, enabled=False))
    raw = gate(judge(shadow(paired_errors=pc), only_errors), "error_rate").p_value
    assert judge(shadow(paired_errors=pc), only_errors).decision == "rollback"
    # accuracy has no label yet: it still counts (p = 1), so Holm doubles the smallest p-value
    j = judge(shadow(paired_errors=pc), base)
    assert gate(j, "accuracy").outcome == Outcome.NO_DATA
    assert gate(j, "error_rate").p_value == pytest.approx(min(1.0, 2 * raw))
    assert j.decision == "continue"


def test_slo_vetoes_use_their_share_of_the_budget() -> None:
    p = classification({"slo": {"error_rate": 0.01}})
    # challenger errors: find a count whose breach the veto level proves but the harm level would too
    n = 5000
    veto_alpha = p.veto_alpha
    assert veto_alpha is not None and veto_alpha < p.alpha
    for count in range(60, 200):
        rate = count / n
        se = math.sqrt((count + 1) / (n + 2) * (1 - (count + 1) / (n + 2)) / n)
        at_harm = stats.confidence_sequence(rate, se, n, alpha=p.alpha, n_star=p.n_star, side="greater").lower
        at_veto = stats.confidence_sequence(
            rate, se, n, alpha=veto_alpha, n_star=p.n_star, side="greater"
        ).lower
        if at_harm > 0.01 >= at_veto:
            break
    else:
        raise AssertionError("no count between the two levels")
    m = StepMetrics(
        mode="shadow", champion=Proportion(n=n, count=count), challenger=Proportion(n=n, count=count)
    )
    j = judge(m, replace(p, error_rate=replace(p.error_rate, enabled=False)))
    assert gate(j, "error_rate_slo").outcome == Outcome.PASS  # not proven at the veto level


# --- 5. evidence across steps, stratified -----------------------------------------------------------


def test_steps_are_combined_stratified_not_pooled() -> None:
    # Simpson's trap: the 5% step ran in a bad hour for everyone (10% errors), the 50% step in a good one
    step5 = StepMetrics(
        mode="canary", champion=Proportion(n=950, count=95), challenger=Proportion(n=50, count=5),
        challenger_weight=0.05, units=(950, 50),
    )  # fmt: skip
    step50 = StepMetrics(
        mode="canary", champion=Proportion(n=500, count=5), challenger=Proportion(n=500, count=5),
        challenger_weight=0.5, units=(500, 500),
    )  # fmt: skip
    pooled_gap = (5 + 5) / 550 - (95 + 5) / 1450  # pooling the raw counts: -5.1 points, an artefact
    assert pooled_gap < -0.05
    combined = stratified([step5, step50], current=step50)
    # each step scaled to its smaller arm: (50, 5) + (500, 5) for both arms
    assert combined.champion == Proportion(n=550, count=10)
    assert combined.challenger == Proportion(n=550, count=10)
    assert combined.units == (500, 500) and combined.challenger_weight == 0.5  # the current split only


def test_paired_evidence_adds_up_across_steps_and_the_watch_swaps_arms_back() -> None:
    a = shadow(paired_correct=PairedCounts(n=1000, worse=30, better=20))
    b = shadow(paired_correct=PairedCounts(n=500, worse=5, better=25))
    assert stratified([a, b], current=b).paired_correct == PairedCounts(n=1500, worse=35, better=45)
    watch = swap_arms(b)
    assert watch.paired_correct == PairedCounts(n=500, worse=25, better=5)


# --- 6. the post-promotion watch ---------------------------------------------------------------------


def _judgement(decision: str) -> Judgement:
    return Judgement(decision, Outcome.PASS, (), f"judge says {decision}", Summary(math.nan, "no-data", 0, 0))  # type: ignore[arg-type]


WATCH = {"mode": "shadow", "watch": {"enabled": True, "min_duration_s": 3600, "min_labelled_pairs": 500}}


def _watching(age_s: float, samples: int, policy: dict[str, Any] | None = None) -> RolloutState:
    p = Policy.parse(policy or WATCH)
    return RolloutState("watching", len(p.plan()), 100.0, 1.0, T0, p, samples)


def test_the_last_step_passing_starts_the_watch_when_enabled() -> None:
    p = Policy.parse(WATCH)
    state = RolloutState("shadowing", 0, 0.0, 1.0, T0, p, 1000)
    d = decide(state, _judgement("promote"), T0 + timedelta(seconds=60))
    assert (d.action, d.phase, d.step_index, d.canary_weight, d.new_step) == (
        "watch",
        "watching",
        1,
        100.0,
        True,
    )
    assert d.promotes_challenger and not d.revert
    assert p.final_stage(0) is False and p.final_stage(1) is True


@pytest.mark.parametrize(
    ("age_s", "samples", "decision", "action", "phase", "reason"),
    [
        (60, 0, "rollback", "rollback", "rolled_back", "watch_harm"),
        (60, 0, "veto", "rollback", "rolled_back", "watch_harm"),
        (60, 5000, "promote", "hold", "watching", "watch_min_duration"),
        (7200, 100, "promote", "hold", "watching", "watch_labels"),
        (7200, 600, "promote", "promote", "promoted", "watch_passed"),
        (7200, 600, "continue", "hold", "watching", "watch_inconclusive"),
        (8 * 86400, 600, "continue", "hold", "watching", "watch_undecided"),
    ],
)
def test_watch_decisions(
    age_s: float, samples: int, decision: str, action: str, phase: str, reason: str
) -> None:
    d = decide(_watching(age_s, samples), _judgement(decision), T0 + timedelta(seconds=age_s))
    assert (d.action, d.phase, d.reason) == (action, phase, reason)
    assert d.revert == (phase == "rolled_back")


def test_an_undecided_watch_reverts_when_the_policy_rolls_back_on_inconclusive() -> None:
    policy = {**WATCH, "on_inconclusive": "rollback"}
    d = decide(_watching(0, 0, policy), _judgement("continue"), T0 + timedelta(days=8))
    assert (d.phase, d.reason, d.revert) == ("rolled_back", "watch_budget_exhausted", True)


def test_operators_end_a_watch_by_promoting_or_reverting_and_nothing_else() -> None:
    state = _watching(0, 0)
    assert manual(state, "promote", T0).phase == "promoted"
    assert manual(state, "rollback", T0).revert
    for action in ("pause", "resume", "abort"):
        with pytest.raises(TransitionError, match="watching"):
            manual(state, action, T0)  # type: ignore[arg-type]


def _promoting() -> Judgement:
    return Judgement(
        "promote",
        Outcome.PASS,
        (),
        "every required gate is non-inferior: accuracy",
        Summary(1.0, "pass", 1, 1),
    )


def test_a_final_promotion_waits_while_labels_arrive_later_than_the_label_maturity() -> None:
    held = hold_for_label_delays(_promoting(), final=True, label_delay_s=86_400.0, maturity_s=0.0)
    assert held.decision == "continue"
    assert "set label_maturity_s to at least 86400 s" in held.reason
    # the maturity covers the delay (within the tolerance), no label yet, or not the final stage: unchanged
    assert (
        hold_for_label_delays(_promoting(), final=True, label_delay_s=86_400.0, maturity_s=86_400.0).decision
        == "promote"
    )
    assert (
        hold_for_label_delays(_promoting(), final=True, label_delay_s=30.0, maturity_s=0.0).decision
        == "promote"
    )
    assert (
        hold_for_label_delays(_promoting(), final=True, label_delay_s=None, maturity_s=0.0).decision
        == "promote"
    )
    assert (
        hold_for_label_delays(_promoting(), final=False, label_delay_s=86_400.0, maturity_s=0.0).decision
        == "promote"
    )
    rollback = replace(_promoting(), decision="rollback")
    assert hold_for_label_delays(rollback, final=True, label_delay_s=86_400.0, maturity_s=0.0) is rollback


def _held(agreeing: Proportion, disagreeing: Proportion, **kw: Any) -> Judgement:
    args: dict[str, Any] = {"final": True, "alpha": 0.05, "n_star": 5000.0, **kw}
    return hold_for_outcome_dependent_labels(_promoting(), agreeing=agreeing, disagreeing=disagreeing, **args)


def test_a_final_promotion_waits_while_disagreeing_pairs_are_far_less_labelled_than_agreeing_ones() -> None:
    # the simulator's outcome-order row at 3 h: wrong answers of the challenger labelled a day later
    held = _held(Proportion(n=90_000, count=76_800), Proportion(n=8_000, count=1_500))
    assert held.decision == "continue"
    assert held.reason.startswith(
        "hold: labels look outcome-dependent: 19% of 8000 disagreeing pairs labelled vs 85% of 90000 agreeing"
    )
    assert held.reason.endswith(_promoting().reason)


def test_equal_label_shares_or_too_few_pairs_do_not_hold_a_promotion() -> None:
    assert _held(Proportion(n=90_000, count=85_500), Proportion(n=8_000, count=7_600)).decision == "promote"
    # 3 points apart, inside the 5-point tolerance, with plenty of pairs
    assert _held(Proportion(n=90_000, count=85_500), Proportion(n=80_000, count=73_600)).decision == "promote"
    # 40% vs 90% on 10 disagreeing pairs: not yet evidence
    assert _held(Proportion(n=100, count=90), Proportion(n=10, count=4)).decision == "promote"
    # no disagreement at all (identical answers): nothing to compare
    assert _held(Proportion(n=100, count=90), Proportion(n=0, count=0)).decision == "promote"
    # not the final stage, no coverage (regression), or not a promotion: unchanged
    bad = (Proportion(n=90_000, count=76_800), Proportion(n=8_000, count=1_500))
    assert _held(*bad, final=False).decision == "promote"
    assert (
        hold_for_outcome_dependent_labels(
            _promoting(), final=True, agreeing=None, disagreeing=None, alpha=0.05, n_star=5000.0
        ).decision
        == "promote"
    )
    rollback = replace(_promoting(), decision="rollback")
    assert (
        hold_for_outcome_dependent_labels(
            rollback, final=True, agreeing=bad[0], disagreeing=bad[1], alpha=0.05, n_star=5000.0
        )
        is rollback
    )


def test_the_outcome_dependent_labels_test_is_the_confidence_sequence_p_value_at_the_tolerance() -> None:
    # the documented test, recomputed by hand: shares, Wald errors with the pseudo-counts, n = both counts
    a, d = Proportion(n=20_000, count=18_000), Proportion(n=2_000, count=1_600)
    qa, qd = 18_001 / 20_002, 1_601 / 2_002
    se = math.sqrt(qa * (1 - qa) / 20_000 + qd * (1 - qd) / 2_000)
    p = stats.confidence_sequence_p_value(
        0.9 - 0.8, se, 22_000, null=0.05, alpha=0.05, side="greater"
    ).p_value
    assert p < 0.05  # 10 points apart on 2,000 disagreeing pairs: outcome-dependent
    assert outcome_dependent_labels(a, d, alpha=0.05, n_star=5000.0) is not None
    assert outcome_dependent_labels(a, d, alpha=p / 2, n_star=5000.0) is None
