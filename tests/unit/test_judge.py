"""The decision layer, table by table: each outcome, each veto and the combination rules."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from controller.core import stats
from controller.core.judge import (
    GateSpec,
    Histogram,
    JudgePolicy,
    Moments,
    Outcome,
    PairedCounts,
    Proportion,
    StepMetrics,
    judge,
    metrics_from_pairs,
)

ONLY_ACCURACY = JudgePolicy(
    error_rate=GateSpec(enabled=False),
    latency_p99=GateSpec(enabled=False, margin=1.2),
    agreement=GateSpec(enabled=False),
    regression=GateSpec(enabled=False),
    drift=GateSpec(enabled=False),
    accuracy=GateSpec(role="required", margin=0.01, min_samples=200),
)


def shadow(**fields: object) -> StepMetrics:
    base: dict[str, object] = {
        "mode": "shadow",
        "champion": Proportion(n=20_000, count=100),
        "challenger": Proportion(n=20_000, count=100),
        "paired_errors": PairedCounts(n=20_000, worse=60, better=60),
    }
    base.update(fields)
    return StepMetrics(**base)  # type: ignore[arg-type]


def verdict(j: object, gate: str):  # type: ignore[no-untyped-def]
    return next(v for v in j.verdicts if v.gate == gate)  # type: ignore[attr-defined]


# --- one outcome per row ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paired_correct", "outcome", "decision"),
    [
        (PairedCounts(n=20_000, worse=500, better=500), Outcome.PASS, "promote"),
        (PairedCounts(n=20_000, worse=900, better=300), Outcome.FAIL, "rollback"),
        (PairedCounts(n=1_000, worse=30, better=25), Outcome.INCONCLUSIVE, "continue"),
        (PairedCounts(n=150, worse=3, better=3), Outcome.NO_DATA, "continue"),
        (None, Outcome.NO_DATA, "continue"),
    ],
    ids=["non-inferior", "harm", "undecided", "burn-in", "no-labels"],
)
def test_accuracy_gate_outcomes(paired_correct: PairedCounts | None, outcome: Outcome, decision: str) -> None:
    j = judge(shadow(paired_correct=paired_correct), ONLY_ACCURACY)
    v = verdict(j, "accuracy")
    assert v.outcome == outcome
    assert j.decision == decision
    assert v.reason


def test_promotes_when_every_required_gate_is_non_inferior_and_shows_its_numbers() -> None:
    j = judge(shadow(paired_correct=PairedCounts(n=20_000, worse=500, better=500)), ONLY_ACCURACY)
    v = verdict(j, "accuracy")
    assert j.promote_eligible and j.outcome == Outcome.PASS
    assert v.bound > -0.01 and v.effect == 0.0 and v.margin == 0.01
    assert (v.n_champion, v.n_challenger) == (20_000, 20_000)
    assert "non-inferior" in v.reason


def test_rolls_back_when_error_rate_harm_is_proven() -> None:
    m = shadow(
        paired_errors=PairedCounts(n=20_000, worse=200, better=20),
        paired_correct=PairedCounts(n=20_000, worse=500, better=500),
    )
    j = judge(m, replace(ONLY_ACCURACY, error_rate=GateSpec(role="guardrail", margin=0.0)))
    assert verdict(j, "error_rate").outcome == Outcome.FAIL
    assert j.decision == "rollback" and j.harm
    assert verdict(j, "error_rate").bound > 0  # lower bound of the error-rate increase


def test_unpaired_canary_accuracy_and_error_rate_use_the_two_arms() -> None:
    m = StepMetrics(
        mode="canary",
        champion=Proportion(n=30_000, count=30),
        challenger=Proportion(n=10_000, count=10),  # rare errors: the null variance needs more requests
        challenger_weight=0.25,
        champion_correct=Proportion(n=20_000, count=18_000),
        challenger_correct=Proportion(n=2_000, count=1_790),
    )
    j = judge(m, replace(ONLY_ACCURACY, error_rate=GateSpec(margin=0.003)))
    assert verdict(j, "accuracy").outcome == Outcome.INCONCLUSIVE
    assert verdict(j, "error_rate").outcome == Outcome.PASS
    assert verdict(j, "srm").outcome == Outcome.PASS
    assert j.decision == "continue"


def test_regression_gate_judges_relative_mae_change_of_paired_absolute_errors() -> None:
    policy = replace(
        ONLY_ACCURACY,
        accuracy=GateSpec(enabled=False),
        regression=GateSpec(role="required", margin=0.05, min_samples=200),
    )
    base = Moments(n=10_000, total=10_000.0, total_sq=20_000.0)  # MAE 1.0
    same = Moments(n=10_000, total=0.0, total_sq=10_000 * 0.3**2)  # mean 0, sd 0.3
    worse = Moments(n=10_000, total=1_500.0, total_sq=10_000 * (0.3**2 + 0.15**2))  # +15%
    assert judge(shadow(abs_error_difference=same, champion_abs_error=base), policy).decision == "promote"
    j = judge(shadow(abs_error_difference=worse, champion_abs_error=base), policy)
    assert j.decision == "rollback"
    assert verdict(j, "regression").effect == pytest.approx(0.15)


def test_agreement_gate_needs_the_minimum_share_proven() -> None:
    policy = replace(
        ONLY_ACCURACY,
        accuracy=GateSpec(enabled=False),
        agreement=GateSpec(role="required", margin=0.9, min_samples=100),
    )
    assert judge(shadow(agreement=Proportion(n=5_000, count=4_900)), policy).decision == "promote"
    j = judge(shadow(agreement=Proportion(n=5_000, count=4_000)), policy)
    assert verdict(j, "agreement").outcome == Outcome.FAIL and j.decision == "rollback"


def _latency(champion: np.ndarray, challenger: np.ndarray) -> Histogram:
    e = stats.latency_edges()
    return Histogram(
        edges=tuple(e.tolist()),
        champion=tuple(stats.histogram_counts(champion, e).tolist()),
        challenger=tuple(stats.histogram_counts(challenger, e).tolist()),
    )


def test_latency_gate_fails_a_slower_tail_and_passes_an_equal_one() -> None:
    rng = np.random.default_rng(4)
    a = rng.lognormal(3.0, 0.5, 30_000)
    policy = replace(
        ONLY_ACCURACY,
        accuracy=GateSpec(enabled=False),
        latency_p99=GateSpec(role="required", margin=1.2, min_samples=1000),
    )
    same = judge(shadow(latency=_latency(a, rng.lognormal(3.0, 0.5, 30_000))), policy)
    slow = judge(shadow(latency=_latency(a, rng.lognormal(3.4, 0.5, 30_000))), policy)
    assert verdict(same, "latency_p99").outcome == Outcome.PASS
    assert verdict(slow, "latency_p99").outcome == Outcome.FAIL
    assert verdict(slow, "latency_p99").effect == pytest.approx(np.exp(0.4), rel=0.05)


# --- vetoes ----------------------------------------------------------------------------------------


def test_vetoes_a_sample_ratio_mismatch_in_canary_mode() -> None:
    m = StepMetrics(
        mode="canary",
        champion=Proportion(n=5_000, count=0),
        challenger=Proportion(n=5_600, count=0),
        challenger_weight=0.5,
        paired_correct=PairedCounts(n=20_000, worse=500, better=500),
    )
    j = judge(m, ONLY_ACCURACY)
    assert verdict(j, "srm").outcome == Outcome.FAIL
    assert j.decision == "veto" and j.veto


def test_sample_ratio_counts_routing_keys_when_given_so_busy_clients_are_no_mismatch() -> None:
    # 25% of 2,000 keys on the challenger, as configured, but its clients happen to be busier.
    m = StepMetrics(
        mode="canary",
        champion=Proportion(n=6_000, count=0),
        challenger=Proportion(n=3_000, count=0),
        challenger_weight=0.25,
        units=(1_500, 500),
    )
    j = judge(m, ONLY_ACCURACY)
    assert verdict(j, "srm").outcome == Outcome.PASS and not j.veto
    skewed = replace(m, units=(1_650, 350))  # keys themselves off the split: chi-square 60.0, p ~ 1e-14
    assert verdict(judge(skewed, ONLY_ACCURACY), "srm").outcome == Outcome.FAIL


def test_a_split_over_too_few_routing_keys_to_test_does_not_hold_promotion() -> None:
    # 200 keys at a 5% step: the challenger expects 10 keys, below srm_min_expected (50); the SRM test
    # cannot run, and the step is promoted on its quality gates instead of waiting for keys forever.
    m = StepMetrics(
        mode="canary",
        champion=Proportion(n=19_000, count=0),
        challenger=Proportion(n=1_000, count=0),
        challenger_weight=0.05,
        units=(190, 10),
        paired_correct=PairedCounts(n=20_000, worse=50, better=50),
    )
    j = judge(m, ONLY_ACCURACY)
    assert verdict(j, "srm").outcome == Outcome.NO_DATA
    assert j.decision == "promote"


def test_vetoes_a_proven_breach_of_the_error_rate_slo_even_when_accuracy_passes() -> None:
    m = shadow(
        challenger=Proportion(n=20_000, count=400),
        paired_correct=PairedCounts(n=20_000, worse=500, better=500),
    )
    j = judge(m, replace(ONLY_ACCURACY, error_rate_slo=0.01))
    assert verdict(j, "error_rate_slo").outcome == Outcome.FAIL
    assert j.decision == "veto"
    assert (
        verdict(judge(m, replace(ONLY_ACCURACY, error_rate_slo=0.05)), "error_rate_slo").outcome
        == Outcome.PASS
    )


def test_vetoes_a_proven_breach_of_the_latency_slo() -> None:
    rng = np.random.default_rng(8)
    h = _latency(rng.lognormal(3.0, 0.5, 20_000), rng.lognormal(4.0, 0.5, 20_000))
    j = judge(
        shadow(latency=h, paired_correct=PairedCounts(n=20_000, worse=500, better=500)),
        replace(ONLY_ACCURACY, latency_p99_slo_ms=100.0),
    )
    assert verdict(j, "latency_p99_slo").outcome == Outcome.FAIL and j.decision == "veto"


def test_veto_outranks_harm_which_outranks_promotion() -> None:
    m = StepMetrics(
        mode="canary",
        champion=Proportion(n=5_000, count=0),
        challenger=Proportion(n=5_600, count=0),
        challenger_weight=0.5,
        paired_correct=PairedCounts(n=20_000, worse=900, better=300),
    )
    assert judge(m, ONLY_ACCURACY).decision == "veto"
    assert judge(replace(m, challenger_weight=None), ONLY_ACCURACY).decision == "rollback"


# --- combination rules -----------------------------------------------------------------------------


def test_outcomes_are_ordered_best_to_worst_and_worst_wins() -> None:
    assert Outcome.PASS < Outcome.INCONCLUSIVE < Outcome.NO_DATA < Outcome.FAIL
    assert Outcome.worst([Outcome.PASS, Outcome.NO_DATA, Outcome.INCONCLUSIVE]) == Outcome.NO_DATA
    assert Outcome.worst([]) == Outcome.NO_DATA
    assert [o.label for o in Outcome] == ["pass", "inconclusive", "no-data", "fail"]


def test_an_undecided_guardrail_does_not_block_promotion_but_a_failed_one_rolls_back() -> None:
    correct = PairedCounts(n=20_000, worse=500, better=500)
    policy = replace(ONLY_ACCURACY, error_rate=GateSpec(role="guardrail", margin=0.0))
    undecided = judge(
        shadow(paired_correct=correct, paired_errors=PairedCounts(n=20_000, worse=70, better=60)), policy
    )
    assert verdict(undecided, "error_rate").outcome == Outcome.INCONCLUSIVE
    assert undecided.decision == "promote"
    failed = judge(
        shadow(paired_correct=correct, paired_errors=PairedCounts(n=20_000, worse=300, better=60)), policy
    )
    assert failed.decision == "rollback" and failed.outcome == Outcome.FAIL


def test_a_required_gate_without_data_holds_the_rollout() -> None:
    policy = replace(ONLY_ACCURACY, regression=GateSpec(role="required", margin=0.05))
    j = judge(shadow(paired_correct=PairedCounts(n=20_000, worse=500, better=500)), policy)
    assert j.decision == "continue" and j.outcome == Outcome.NO_DATA
    assert "regression no-data" in j.reason


def test_informational_gates_are_reported_but_never_decide() -> None:
    policy = replace(ONLY_ACCURACY, agreement=GateSpec(role="informational", margin=0.99))
    j = judge(
        shadow(
            paired_correct=PairedCounts(n=20_000, worse=500, better=500),
            agreement=Proportion(n=20_000, count=15_000),
        ),
        policy,
    )
    assert verdict(j, "agreement").outcome == Outcome.FAIL
    assert j.decision == "promote"


def _errors_with_raw_p_between(lo: float, hi: float) -> PairedCounts:
    """Find paired error counts whose raw always-valid harm p-value lies in (lo, hi)."""
    for worse in range(60, 400):
        pc = PairedCounts(n=20_000, worse=worse, better=60)
        policy = replace(ONLY_ACCURACY, accuracy=GateSpec(enabled=False), error_rate=GateSpec(margin=0.0))
        p = verdict(judge(shadow(paired_errors=pc), policy), "error_rate").p_value
        if lo < p < hi:
            return pc
    raise AssertionError("no counts found")


def test_harm_is_holm_adjusted_across_guardrails() -> None:
    borderline = _errors_with_raw_p_between(0.026, 0.05)
    alone = replace(ONLY_ACCURACY, accuracy=GateSpec(enabled=False), error_rate=GateSpec(margin=0.0))
    assert judge(shadow(paired_errors=borderline), alone).decision == "rollback"
    # a second guardrail with no evidence of harm doubles the smallest p-value: no longer harm
    with_agreement = replace(alone, agreement=GateSpec(role="guardrail", margin=0.5))
    j = judge(shadow(paired_errors=borderline, agreement=Proportion(n=20_000, count=19_000)), with_agreement)
    assert verdict(j, "error_rate").outcome == Outcome.INCONCLUSIVE
    assert j.decision == "continue"


def test_drift_fails_only_above_both_the_margin_and_the_noise_floor() -> None:
    policy = replace(
        ONLY_ACCURACY,
        accuracy=GateSpec(enabled=False),
        drift=GateSpec(role="guardrail", margin=0.1, min_samples=100),
    )
    edges = (-0.5, 0.5, 1.5)
    shifted = Histogram(edges=edges, champion=(5_000, 5_000), challenger=(8_000, 2_000))
    small = Histogram(edges=edges, champion=(58, 42), challenger=(42, 58))  # PSI 0.103 < noise 0.133
    assert verdict(judge(shadow(outputs=shifted), policy), "drift").outcome == Outcome.FAIL
    assert verdict(judge(shadow(outputs=small), policy), "drift").outcome == Outcome.INCONCLUSIVE


def test_summary_score_is_descriptive_share_of_decided_gates_passing() -> None:
    j = judge(
        shadow(paired_correct=PairedCounts(n=20_000, worse=500, better=500)),
        replace(ONLY_ACCURACY, error_rate=GateSpec(margin=0.005)),
    )
    assert j.summary.descriptive
    assert (j.summary.passing, j.summary.counted, j.summary.band) == (2, 2, "pass")


def test_policy_rejects_unknown_and_invalid_settings() -> None:
    with pytest.raises(TypeError):
        JudgePolicy(alpah=0.05)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        GateSpec(role="mandatory")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        JudgePolicy(alpha=0.7)
    with pytest.raises(TypeError):
        GateSpec("required")  # type: ignore[misc]


def test_metrics_from_pairs_counts_discordance_the_way_sql_aggregates_would() -> None:
    m = metrics_from_pairs(
        champion_prediction=np.array([1, 0, 1, 1, 0]),
        challenger_prediction=np.array([1, 1, 0, 1, 0]),
        champion_failed=np.array([False, False, False, True, False]),
        challenger_failed=np.array([False, False, False, False, True]),
        label=np.array([1, 1, 1, 1, 0]),
        task="classification",
    )
    assert m.paired_errors == PairedCounts(n=5, worse=1, better=1)
    assert m.agreement == Proportion(n=3, count=1)
    assert m.paired_correct == PairedCounts(n=3, worse=1, better=1)
    assert m.outputs is not None and m.outputs.champion == (1, 2)


# --- A/A: identical arms, looked at every 50 pairs --------------------------------------------------


def test_identical_arms_are_rarely_promoted_or_rolled_back_under_continuous_monitoring() -> None:
    alpha, rollouts, looks, step = 0.05, 300, 80, 50
    rng = np.random.default_rng(20240601)
    policy = JudgePolicy(
        alpha=alpha,
        n_star=1000,
        accuracy=GateSpec(role="required", margin=0.0, min_samples=100),
        error_rate=GateSpec(role="guardrail", margin=0.0, min_samples=100),
        latency_p99=GateSpec(enabled=False, margin=1.2),
        agreement=GateSpec(enabled=False),
        regression=GateSpec(enabled=False),
        drift=GateSpec(enabled=False),
    )
    # per look: counts of (challenger worse, challenger better, neither) for correctness and for errors
    correct = np.cumsum(rng.multinomial(step, [0.05, 0.05, 0.90], size=(rollouts, looks)), axis=1)
    errors = np.cumsum(rng.multinomial(step, [0.01, 0.01, 0.98], size=(rollouts, looks)), axis=1)
    promoted = rolled_back = 0
    for r in range(rollouts):
        for k in range(looks):
            n = (k + 1) * step
            m = shadow(
                champion=Proportion(n=n, count=0),
                challenger=Proportion(n=n, count=0),
                paired_errors=PairedCounts(n=n, worse=int(errors[r, k, 0]), better=int(errors[r, k, 1])),
                paired_correct=PairedCounts(n=n, worse=int(correct[r, k, 0]), better=int(correct[r, k, 1])),
            )
            decision = judge(m, policy).decision
            if decision != "continue":
                promoted += decision == "promote"
                rolled_back += decision == "rollback"
                break
    assert promoted / rollouts <= alpha
    assert rolled_back / rollouts <= alpha


COVERAGE_REQUIRED = replace(ONLY_ACCURACY, coverage=GateSpec(role="required", margin=0.5, min_samples=100))


@pytest.mark.parametrize(
    ("coverage", "outcome", "decision"),
    [
        (None, Outcome.NO_DATA, "continue"),  # no shadow sample: nothing to say
        (Proportion(n=50, count=50), Outcome.NO_DATA, "continue"),  # burn-in
        (Proportion(n=2_000, count=1_900), Outcome.PASS, "promote"),  # 95% scored: proven above 50%
        (Proportion(n=2_000, count=1_000), Outcome.INCONCLUSIVE, "continue"),  # 50%: not above the margin
        (Proportion(n=2_000, count=20), Outcome.INCONCLUSIVE, "continue"),  # 1% scored: never a rollback
    ],
)
def test_a_required_coverage_gate_holds_promotion_until_enough_was_scored_and_never_rolls_back(
    coverage: Proportion | None, outcome: Outcome, decision: str
) -> None:
    good = PairedCounts(n=20_000, worse=100, better=400)  # accuracy proven non-inferior
    j = judge(shadow(paired_correct=good, coverage=coverage), COVERAGE_REQUIRED)
    assert (verdict(j, "coverage").outcome, j.decision) == (outcome, decision)
    informational = judge(shadow(paired_correct=good, coverage=coverage), ONLY_ACCURACY)
    assert informational.decision == "promote"  # by default coverage is reported, never decides


# --- bounds and p-values by value, against an independent computation -------------------------------
# The restricted maximum-likelihood estimates are found here by numerical maximisation of the null
# likelihood (not the closed forms of stats.py), and the confidence sequence's half-width by
# Waudby-Smith et al.'s formula as GrowthBook writes it, checked first against GrowthBook's own test
# value (R11 of /shared/reference/statistics.md). The p-value is the smallest level at which the
# one-sided sequence excludes the margin, found by root search (stats.py uses a closed form).


def _half_width(
    se: float, n: float, *, alpha: float, rho_alpha: float = 0.05, n_star: float = 5000.0
) -> float:
    a = 2.0 * rho_alpha  # one-sided: rho tuned at 2 alpha (GrowthBook)
    rho = np.sqrt((-2.0 * np.log(a) + np.log(-2.0 * np.log(a) + 1.0)) / n_star)
    s2 = se * se * n
    nr2 = n * rho * rho
    return float(
        np.sqrt(s2 * 2.0 * (nr2 + 1.0) / (n * rho) ** 2 * np.log(1.0 + np.sqrt(nr2 + 1.0) / (2.0 * alpha)))
    )


def _cs_p_value(estimate: float, se: float, n: float, null: float) -> float:
    """Smallest alpha' at which the one-sided sequence (rho at the design alpha 0.05) excludes null."""
    from scipy.optimize import brentq

    if estimate <= null:
        return 1.0
    gap = lambda level: estimate - _half_width(se, n, alpha=level) - null  # noqa: E731
    if gap(1.0) <= 0:
        return 1.0
    log_level = brentq(lambda x: gap(float(np.exp(x))), -700.0, 0.0, xtol=1e-13)
    return float(np.exp(log_level))


def _tango_se_numeric(worse: int, better: int, n: int, null: float) -> float:
    """SE of (worse - better)/n at the MLE of the cells restricted to p_worse - p_better = null."""
    from scipy.optimize import minimize_scalar

    rest = n - worse - better
    lo, hi = max(0.0, -null) + 1e-15, (1.0 - null) / 2.0 - 1e-15

    def minus_log_likelihood(t: float) -> float:
        return -(worse * np.log(t + null) + better * np.log(t) + rest * np.log(1.0 - 2.0 * t - null))

    t = minimize_scalar(minus_log_likelihood, bounds=(lo, hi), method="bounded", options={"xatol": 1e-14}).x
    return float(np.sqrt((2.0 * t + null - null * null) / n))


def test_the_half_width_helper_reproduces_growthbooks_value_r11() -> None:
    diff, se, n = 0.23437666666666668, 0.12983081254184736, 6461
    assert diff - _half_width(se, n, alpha=0.05) == pytest.approx(-0.12656844172804982, rel=1e-9)
    assert diff + _half_width(se, n, alpha=0.05) == pytest.approx(0.5953217750613832, rel=1e-9)


@pytest.mark.parametrize(
    ("worse", "better", "outcome"),
    [(500, 500, Outcome.PASS), (900, 300, Outcome.FAIL), (620, 500, Outcome.INCONCLUSIVE)],
)
def test_accuracy_bounds_and_p_value_equal_an_independent_computation(
    worse: int, better: int, outcome: Outcome
) -> None:
    n, margin = 20_000, 0.01
    v = verdict(
        judge(shadow(paired_correct=PairedCounts(n=n, worse=worse, better=better)), ONLY_ACCURACY), "accuracy"
    )
    loss = (worse - better) / n  # champion accuracy minus challenger accuracy
    se = _tango_se_numeric(worse, better, n, margin)
    hw = _half_width(se, n, alpha=0.05)
    assert v.outcome == outcome
    # the accuracy difference (challenger - champion) lies in -(loss +- hw)
    assert (v.interval.lower, v.interval.upper) == (
        pytest.approx(-(loss + hw), rel=1e-7),
        pytest.approx(-(loss - hw), rel=1e-7),
    )
    # the bound shown: the lower bound when it proves non-inferiority, the upper one when it proves harm
    shown = -(loss - hw) if outcome == Outcome.FAIL else -(loss + hw)
    assert v.bound == pytest.approx(shown, rel=1e-7)
    assert v.effect == pytest.approx(-loss, abs=1e-12)
    assert v.statistic == pytest.approx((loss - margin) / se, rel=1e-6)
    assert v.p_value == pytest.approx(_cs_p_value(loss, se, n, margin), rel=1e-6)
    assert (v.p_value <= 0.05) == (outcome == Outcome.FAIL)


def test_error_rate_bounds_at_margin_zero_use_mcnemars_variance() -> None:
    # With margin 0 the restricted estimates are (b + c)/2n each: the variance is (b + c)/n^2.
    n, b, c = 20_000, 200, 20
    m = shadow(paired_errors=PairedCounts(n=n, worse=b, better=c))
    v = verdict(
        judge(m, replace(ONLY_ACCURACY, accuracy=GateSpec(enabled=False), error_rate=GateSpec(margin=0.0))),
        "error_rate",
    )
    diff, se = (b - c) / n, np.sqrt(b + c) / n
    hw = _half_width(se, n, alpha=0.05)
    assert v.outcome == Outcome.FAIL
    assert v.bound == pytest.approx(diff - hw, rel=1e-9)  # lower bound of the increase, above 0
    assert (v.interval.lower, v.interval.upper) == (
        pytest.approx(diff - hw, rel=1e-9),
        pytest.approx(diff + hw, rel=1e-9),
    )
    assert v.statistic == pytest.approx((b - c) / np.sqrt(b + c), rel=1e-9)  # McNemar's z
    assert v.p_value == pytest.approx(_cs_p_value(diff, se, n, 0.0), rel=1e-6)


def test_unpaired_error_rate_bounds_use_the_restricted_mle_of_two_independent_proportions() -> None:
    from scipy.optimize import minimize_scalar

    x1, n1, x2, n2, margin = 30, 30_000, 12, 10_000, 0.003
    m = StepMetrics(
        mode="canary",
        champion=Proportion(n=n1, count=x1),
        challenger=Proportion(n=n2, count=x2),
        challenger_weight=0.25,
    )
    v = verdict(
        judge(
            m, replace(ONLY_ACCURACY, accuracy=GateSpec(enabled=False), error_rate=GateSpec(margin=margin))
        ),
        "error_rate",
    )

    def minus_log_likelihood(p1: float) -> float:  # p2 = p1 + margin under the null hypothesis
        p2 = p1 + margin
        return -(x1 * np.log(p1) + (n1 - x1) * np.log1p(-p1) + x2 * np.log(p2) + (n2 - x2) * np.log1p(-p2))

    p1 = minimize_scalar(
        minus_log_likelihood, bounds=(1e-12, 1 - margin - 1e-12), method="bounded", options={"xatol": 1e-14}
    ).x
    p2 = p1 + margin
    se = np.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    diff, n = x2 / n2 - x1 / n1, n1 + n2
    hw = _half_width(se, n, alpha=0.05)
    assert v.outcome == Outcome.PASS  # upper bound of the increase below 0.3 points
    assert v.bound == pytest.approx(diff + hw, rel=1e-6)
    assert v.bound < margin
    assert v.interval.lower == pytest.approx(diff - hw, rel=1e-6)
    assert v.statistic == pytest.approx((diff - margin) / se, rel=1e-6)


def test_a_rollback_reason_says_harm_once_per_gate() -> None:
    """Issue 19: no "harm: error_rate: harm: ..." stutter in the decision's reason."""
    m = shadow(
        paired_errors=PairedCounts(n=20_000, worse=200, better=20),
        paired_correct=PairedCounts(n=20_000, worse=500, better=500),
    )
    j = judge(m, replace(ONLY_ACCURACY, error_rate=GateSpec(role="guardrail", margin=0.0)))
    assert j.decision == "rollback"
    assert j.reason.startswith("harm: error_rate: ") and j.reason.count("harm:") == 1, j.reason
