"""controller.core.judge field by field, against counts and library values: what `make mutation` runs.

Written against the mutants of judge.py that survived tests/unit/test_judge.py and
test_decision_rules.py (bench/results/mutation.md). Every expected value comes from the input counts,
from NumPy/SciPy/scikit-learn, or from the published formulas the docstrings name, evaluated here
independently; none is a value the judge printed.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats as sps
from scipy.special import rel_entr
from sklearn.metrics import confusion_matrix

from controller.core import stats
from controller.core.judge import (
    ErrorTail,
    GateSpec,
    Histogram,
    Judgement,
    JudgePolicy,
    Moments,
    Outcome,
    PairedAbsErrors,
    PairedCounts,
    Proportion,
    StepMetrics,
    Summary,
    Verdict,
    hold_for_label_delays,
    judge,
    metrics_from_pairs,
)

OFF = GateSpec(enabled=False)
NOTHING = JudgePolicy(
    error_rate=OFF,
    latency_p99=GateSpec(enabled=False, margin=1.2),
    agreement=OFF,
    accuracy=OFF,
    regression=OFF,
    drift=OFF,
    coverage=OFF,
)
"""Every core gate off: each test turns on the one it is about."""


def shadow(**fields: object) -> StepMetrics:
    base: dict[str, object] = {
        "mode": "shadow",
        "champion": Proportion(n=20_000, count=100),
        "challenger": Proportion(n=20_000, count=100),
    }
    base.update(fields)
    return StepMetrics(**base)  # type: ignore[arg-type]


def verdict(j: Judgement, gate: str) -> Verdict:
    return next(v for v in j.verdicts if v.gate == gate)


def half_width(se: float, n: float, *, alpha: float = 0.05, n_star: float = 5000.0) -> float:
    """One-sided half-width of Waudby-Smith et al.'s sequence as GrowthBook writes it (rho at 2 alpha)."""
    a = 2.0 * alpha
    rho = math.sqrt((-2.0 * math.log(a) + math.log(-2.0 * math.log(a) + 1.0)) / n_star)
    s2 = se * se * n
    nr2 = n * rho * rho
    return math.sqrt(
        s2 * 2.0 * (nr2 + 1.0) / (n * rho) ** 2 * math.log(1.0 + math.sqrt(nr2 + 1.0) / (2.0 * alpha))
    )


def bernoulli_se(count: float, n: float) -> float:
    """Agresti-Coull style guard: the share's standard error with one pseudo-success and one pseudo-failure."""
    p = (count + 1.0) / (n + 2.0)
    return math.sqrt(p * (1.0 - p) / n)


# --- metrics_from_pairs: the reference aggregates, against counts -----------------------------------


def test_metrics_from_pairs_classification_counts_every_cell_as_sklearn_does() -> None:
    rng = np.random.default_rng(11)
    n = 400
    y = rng.integers(0, 3, n)
    y1 = np.where(rng.random(n) < 0.8, y, rng.integers(0, 3, n))
    y2 = np.where(rng.random(n) < 0.7, y, rng.integers(0, 4, n))  # the challenger also says class 3
    f1, f2 = rng.random(n) < 0.05, rng.random(n) < 0.1
    labelled = rng.random(n) < 0.6
    lat1, lat2 = rng.exponential(20.0, n), rng.exponential(30.0, n)
    m = metrics_from_pairs(
        champion_prediction=y1,
        challenger_prediction=y2,
        champion_failed=f1,
        challenger_failed=f2,
        task="classification",
        label=y,
        labelled=labelled,
        champion_latency_ms=lat1,
        challenger_latency_ms=lat2,
    )
    fail = confusion_matrix(f1, f2, labels=[False, True])  # rows: champion failed, columns: challenger
    assert m.mode == "shadow"
    assert m.champion == Proportion(n=n, count=int(f1.sum()))
    assert m.challenger == Proportion(n=n, count=int(f2.sum()))
    assert m.paired_errors == PairedCounts(n=n, worse=int(fail[0, 1]), better=int(fail[1, 0]))
    ok = ~f1 & ~f2
    assert m.agreement == Proportion(n=int(ok.sum()), count=int((y1 == y2)[ok].sum()))
    rows = ok & labelled
    right = confusion_matrix(y1[rows] == y[rows], y2[rows] == y[rows], labels=[False, True])
    assert m.paired_correct == PairedCounts(
        n=int(rows.sum()), worse=int(right[1, 0]), better=int(right[0, 1])
    )
    assert m.outputs is not None
    assert m.outputs.edges == (-0.5, 0.5, 1.5, 2.5, 3.5)
    assert m.outputs.champion == tuple(np.bincount(y1[ok], minlength=4).tolist())
    assert m.outputs.challenger == tuple(np.bincount(y2[ok], minlength=4).tolist())
    assert m.latency is not None
    edges = stats.latency_edges()
    assert m.latency.edges == tuple(edges.tolist())
    assert m.latency.champion == tuple(np.histogram(lat1, bins=[*edges[:-1], 1e300])[0].tolist())
    assert m.latency.challenger == tuple(np.histogram(lat2, bins=[*edges[:-1], 1e300])[0].tolist())
    assert m.abs_error_difference is None and m.paired_abs_errors is None and m.champion_abs_error is None


def test_metrics_from_pairs_without_labels_or_integer_classes_leaves_those_fields_empty() -> None:
    m = metrics_from_pairs(
        champion_prediction=np.array([0.2, 0.4]),
        challenger_prediction=np.array([0.2, 0.5]),
        champion_failed=np.array([False, False]),
        challenger_failed=np.array([False, False]),
        task="classification",
        champion_latency_ms=np.array([1.0, 2.0]),
    )
    assert m.paired_correct is None and m.outputs is None and m.latency is None
    assert m.agreement == Proportion(n=2, count=1)
    given = metrics_from_pairs(
        champion_prediction=np.array([0, 1, 1]),
        challenger_prediction=np.array([1, 1, 1]),
        champion_failed=np.array([False, False, True]),
        challenger_failed=np.array([False, False, False]),
        task="classification",
        champion_latency_ms=np.array([1.0, 2.0, 3.0]),
        challenger_latency_ms=np.array([1.0, 5.0, 9.0]),
        latency_edges=[0.0, 2.0, 4.0, math.inf],
    )
    assert given.latency == Histogram(
        edges=(0.0, 2.0, 4.0, math.inf), champion=(1, 2, 0), challenger=(1, 0, 2)
    )
    assert given.outputs == Histogram(edges=(-0.5, 0.5, 1.5), champion=(1, 1), challenger=(0, 2))


def test_metrics_from_pairs_regression_sums_absolute_errors_of_labelled_pairs() -> None:
    rng = np.random.default_rng(5)
    n = 300
    y = rng.normal(10.0, 2.0, n)
    y1, y2 = y + rng.normal(0, 1.0, n), y + rng.normal(0.3, 1.2, n)
    f1, f2 = rng.random(n) < 0.05, rng.random(n) < 0.05
    labelled = rng.random(n) < 0.5
    m = metrics_from_pairs(
        champion_prediction=y1,
        challenger_prediction=y2,
        champion_failed=f1,
        challenger_failed=f2,
        task="regression",
        label=y,
        labelled=labelled,
        output_edges=[-np.inf, 8.0, 10.0, 12.0, np.inf],
    )
    rows = ~f1 & ~f2 & labelled
    e1, e2 = np.abs(y1 - y)[rows], np.abs(y2 - y)[rows]
    k = int(rows.sum())
    d = e2 - e1
    assert m.agreement is None and m.paired_correct is None
    assert m.abs_error_difference == Moments(
        n=k, total=pytest.approx(d.sum()), total_sq=pytest.approx((d * d).sum())
    )  # type: ignore[arg-type]
    assert m.champion_abs_error is not None
    assert (m.champion_abs_error.n, m.champion_abs_error.mean) == (k, pytest.approx(e1.mean()))
    assert m.champion_abs_error.variance == pytest.approx(np.var(e1, ddof=1))
    pa = m.paired_abs_errors
    assert pa is not None and pa.n == k
    expected = (e1.sum(), (e1 * e1).sum(), e2.sum(), (e2 * e2).sum(), (e1 * e2).sum())
    assert (pa.champion, pa.champion_sq, pa.challenger, pa.challenger_sq, pa.cross) == pytest.approx(expected)
    ok = ~f1 & ~f2
    assert m.outputs is not None
    assert m.outputs.champion == tuple(
        np.histogram(y1[ok], bins=[-1e300, 8.0, 10.0, 12.0, 1e300])[0].tolist()
    )
    assert m.outputs.challenger == tuple(
        np.histogram(y2[ok], bins=[-1e300, 8.0, 10.0, 12.0, 1e300])[0].tolist()
    )
    unlabelled = metrics_from_pairs(
        champion_prediction=y1,
        challenger_prediction=y2,
        champion_failed=f1,
        challenger_failed=f2,
        task="regression",
    )
    assert unlabelled.abs_error_difference is None and unlabelled.outputs is None


# --- sufficient statistics and policy: what they refuse -------------------------------------------


def test_sufficient_statistics_refuse_impossible_counts() -> None:
    Proportion(n=3, count=3)
    Proportion(n=0, count=0)
    for bad in ({"n": 3, "count": 4}, {"n": 3, "count": -1}):
        with pytest.raises(ValueError, match="0 <= count <= n"):
            Proportion(**bad)
    PairedCounts(n=4, worse=2, better=2)
    for bad in ({"n": 4, "worse": 3, "better": 2}, {"n": 4, "worse": -1, "better": 0}, {"n": 4, "worse": 0, "better": -1}, {"n": -1, "worse": 0, "better": 0}):  # fmt: skip
        with pytest.raises(ValueError, match="worse \\+ better"):
            PairedCounts(**bad)
    Histogram(edges=(0.0, 1.0, 2.0), champion=(1, 2), challenger=(3, 4))
    with pytest.raises(ValueError, match="len\\(edges\\) - 1"):
        Histogram(edges=(0.0, 1.0, 2.0), champion=(1, 2), challenger=(3,))
    with pytest.raises(ValueError, match="len\\(edges\\) - 1"):
        Histogram(edges=(0.0, 1.0), champion=(1, 2), challenger=(3, 4))


def test_gate_and_judge_policies_refuse_settings_outside_their_ranges() -> None:
    GateSpec(margin=0.0, min_samples=0, on_fail="hold")
    with pytest.raises(ValueError, match="non-negative"):
        GateSpec(margin=-0.01)
    with pytest.raises(ValueError, match="non-negative"):
        GateSpec(min_samples=-1)
    with pytest.raises(ValueError, match="unknown on_fail"):
        GateSpec(on_fail="pause")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown gate role"):
        GateSpec(role="optional")  # type: ignore[arg-type]
    JudgePolicy(veto_alpha=0.49, alpha=0.49, srm_alpha=0.49, latency_p99=GateSpec(margin=1.0))
    for bad in ({"veto_alpha": 0.0}, {"veto_alpha": 0.5}):
        with pytest.raises(ValueError, match="veto_alpha"):
            JudgePolicy(**bad)  # type: ignore[arg-type]
    for bad in ({"alpha": 0.0}, {"alpha": 0.5}, {"srm_alpha": 0.0}, {"srm_alpha": 0.5}):
        with pytest.raises(ValueError, match="alpha and srm_alpha"):
            JudgePolicy(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_star"):
        JudgePolicy(n_star=0.0)
    with pytest.raises(ValueError, match="ratio >= 1"):
        JudgePolicy(latency_p99=GateSpec(margin=0.99))


def test_default_policy_is_the_documented_one() -> None:
    p = JudgePolicy()
    assert (p.alpha, p.n_star, p.srm_alpha, p.slo_min_samples, p.srm_min_expected) == (
        0.05,
        5000.0,
        0.001,
        100,
        50.0,
    )
    assert (p.error_rate.role, p.error_rate.margin, p.error_rate.min_samples) == ("guardrail", 0.0, 200)
    assert (p.latency_p99.role, p.latency_p99.margin, p.latency_p99.min_samples) == ("guardrail", 1.2, 1000)
    assert (p.agreement.role, p.agreement.margin, p.agreement.min_samples) == ("informational", 0.9, 200)
    assert (p.accuracy.role, p.accuracy.margin, p.accuracy.min_samples) == ("required", 0.01, 200)
    assert (p.regression.role, p.regression.margin, p.regression.min_samples) == ("required", 0.05, 200)
    assert (p.drift.role, p.drift.margin, p.drift.min_samples) == ("informational", 0.2, 500)
    assert (p.coverage.role, p.coverage.margin, p.coverage.min_samples) == ("informational", 0.5, 100)
    assert (p.summary_pass, p.summary_marginal, p.final, p.agreement_stands_in) == (0.75, 0.5, False, False)
    g = GateSpec()
    assert (g.role, g.margin, g.min_samples, g.enabled, g.on_fail, g.allow_no_data) == (
        "guardrail", 0.0, 100, True, "rollback", False,
    )  # fmt: skip


def test_moments_give_numpys_mean_and_sample_variance() -> None:
    x = np.array([1.5, -2.0, 4.0, 0.25])
    m = Moments(n=4, total=float(x.sum()), total_sq=float((x * x).sum()))
    assert m.mean == pytest.approx(x.mean())
    assert m.variance == pytest.approx(np.var(x, ddof=1))
    assert math.isnan(Moments(n=0, total=0.0, total_sq=0.0).mean)
    assert math.isnan(Moments(n=1, total=2.0, total_sq=4.0).variance)
    assert Moments(n=2, total=2.0, total_sq=2.0).variance == 0.0  # two equal values


def test_paired_abs_errors_pool_field_by_field() -> None:
    a = PairedAbsErrors(n=2, champion=1.0, champion_sq=2.0, challenger=3.0, challenger_sq=4.0, cross=5.0)
    b = PairedAbsErrors(n=3, champion=10.0, champion_sq=20.0, challenger=30.0, challenger_sq=40.0, cross=50.0)
    assert a + b == PairedAbsErrors(
        n=5, champion=11.0, champion_sq=22.0, challenger=33.0, challenger_sq=44.0, cross=55.0
    )


def test_outcomes_have_labels_and_no_outcomes_mean_no_data() -> None:
    assert [o.label for o in Outcome] == ["pass", "inconclusive", "no-data", "fail"]
    assert Outcome.worst([]) == Outcome.NO_DATA
    assert Outcome.worst([Outcome.PASS, Outcome.INCONCLUSIVE]) == Outcome.INCONCLUSIVE


# --- summary and the label-delay hold ----------------------------------------------------------------


def _judgement(decision: str = "promote") -> Judgement:
    return Judgement(
        decision,
        Outcome.PASS,
        (),
        "every required gate is non-inferior: accuracy",
        Summary(1.0, "pass", 1, 1),
    )  # type: ignore[arg-type]


def test_a_label_delay_holds_only_beyond_the_maturity_plus_one_minute() -> None:
    at_tolerance = hold_for_label_delays(_judgement(), final=True, label_delay_s=160.0, maturity_s=100.0)
    assert at_tolerance.decision == "promote"
    beyond = hold_for_label_delays(_judgement(), final=True, label_delay_s=160.5, maturity_s=100.0)
    assert beyond.decision == "continue"
    assert beyond.reason == (
        "hold: labels arrive up to 160 s after their requests but label_maturity_s is 100 s: the earliest "
        "labels may be a biased sample (set label_maturity_s to at least 160 s); every required gate is "
        "non-inferior: accuracy"
    )
    assert beyond.summary == _judgement().summary


def test_summary_bands_are_inclusive_at_their_thresholds() -> None:
    # accuracy passes, error rate decided too; the summary counts decided gates only
    policy = replace(
        NOTHING,
        accuracy=GateSpec(role="required", margin=0.01, min_samples=200),
        summary_pass=0.5,
        summary_marginal=0.25,
    )
    good = PairedCounts(n=20_000, worse=500, better=500)
    one_of_two = judge(
        shadow(paired_correct=good, paired_errors=PairedCounts(n=20_000, worse=60, better=60)),
        replace(policy, error_rate=GateSpec(margin=0.0)),
    )
    assert (one_of_two.summary.passing, one_of_two.summary.counted) == (1, 2)
    assert one_of_two.summary.score == 0.5 and one_of_two.summary.band == "pass"
    marginal = judge(
        shadow(paired_correct=good, paired_errors=PairedCounts(n=20_000, worse=60, better=60)),
        replace(policy, error_rate=GateSpec(margin=0.0), summary_pass=0.6, summary_marginal=0.5),
    )
    assert marginal.summary.band == "marginal"
    failing = judge(
        shadow(paired_correct=good, paired_errors=PairedCounts(n=20_000, worse=60, better=60)),
        replace(policy, error_rate=GateSpec(margin=0.0), summary_pass=0.9, summary_marginal=0.6),
    )
    assert failing.summary.band == "fail"
    empty = judge(shadow(), NOTHING)
    assert empty.summary.band == "no-data" and math.isnan(empty.summary.score)
    assert (empty.summary.passing, empty.summary.counted, empty.summary.descriptive) == (0, 0, True)
    assert empty.decision == "continue" and empty.outcome == Outcome.NO_DATA
    assert empty.reason == "continue: no required gate configured"


# --- vetoes, value by value -------------------------------------------------------------------------


def test_srm_veto_reports_the_dirichlet_multinomial_bayes_factor_of_scipy() -> None:
    u1, u2, w = 1_400, 600, 0.25
    m = StepMetrics(
        mode="canary",
        champion=Proportion(n=6_000, count=0),
        challenger=Proportion(n=3_000, count=0),
        challenger_weight=w,
        units=(u1, u2),
    )
    v = verdict(judge(m, NOTHING), "srm")
    theta = np.array([1 - w, w])
    log_bf = sps.dirichlet_multinomial.logpmf([u1, u2], 100.0 * theta, u1 + u2) - sps.multinomial.logpmf(
        [u1, u2], u1 + u2, theta
    )
    assert (v.role, v.outcome) == ("veto", Outcome.FAIL)
    assert v.statistic == pytest.approx(log_bf, rel=1e-9)
    assert v.p_value == pytest.approx(math.exp(-log_bf), rel=1e-9)
    assert (v.bound, v.effect, v.margin, v.n_champion, v.n_challenger) == (0.001, 0.3, w, u1, u2)
    assert (
        v.reason
        == f"sample-ratio mismatch: challenger share of routing keys 0.3000 vs 0.2500, p = {v.p_value:.3g}"
    )
    fine = verdict(judge(replace(m, units=(1_500, 500)), NOTHING), "srm")
    assert fine.outcome == Outcome.PASS
    assert fine.reason.startswith(
        "split as configured: challenger share of routing keys 0.2500 vs 0.2500, p = "
    )
    by_request = verdict(
        judge(replace(m, units=None, challenger=Proportion(n=2_000, count=0)), NOTHING), "srm"
    )
    assert (by_request.n_champion, by_request.n_challenger, by_request.effect) == (6_000, 2_000, 0.25)
    assert "share of requests" in by_request.reason
    assert not any(v.gate == "srm" for v in judge(replace(m, mode="shadow"), NOTHING).verdicts)
    assert not any(v.gate == "srm" for v in judge(replace(m, challenger_weight=None), NOTHING).verdicts)


def test_srm_waits_until_the_smaller_arm_expects_enough_units() -> None:
    m = StepMetrics(
        mode="canary",
        champion=Proportion(n=900, count=0),
        challenger=Proportion(n=100, count=0),
        challenger_weight=0.75,  # the champion is the smaller arm: expects 0.25 x 160 = 40 < 50 keys
        units=(20, 140),
    )
    v = verdict(judge(m, NOTHING), "srm")
    assert (v.outcome, v.bound, v.margin, v.n_champion, v.n_challenger) == (
        Outcome.NO_DATA,
        0.001,
        0.75,
        20,
        140,
    )
    assert v.reason == "burn-in: the smaller arm expects 40 of 50 routing keys"
    assert math.isnan(v.statistic) and math.isnan(v.effect) and v.p_value is None
    at_minimum = verdict(judge(replace(m, units=(50, 150)), NOTHING), "srm")
    assert at_minimum.outcome == Outcome.PASS  # 0.25 x 200 = 50: the test runs
    fewer = verdict(judge(replace(m, units=(50, 150)), replace(NOTHING, srm_min_expected=51.0)), "srm")
    assert fewer.outcome == Outcome.NO_DATA
    assert fewer.reason == "burn-in: the smaller arm expects 50 of 51 routing keys"


def test_error_rate_slo_veto_reports_the_rate_its_bound_and_the_exact_mixture_p_value() -> None:
    count, n2, slo = 300, 10_000, 0.02
    m = shadow(challenger=Proportion(n=n2, count=count), champion=Proportion(n=9_000, count=10))
    v = verdict(judge(m, replace(NOTHING, error_rate_slo=slo)), "error_rate_slo")
    rate, se = count / n2, bernoulli_se(count, n2)
    assert v.outcome == Outcome.FAIL
    assert (v.effect, v.margin, v.n_champion, v.n_challenger) == (rate, slo, 9_000, n2)
    assert v.statistic == pytest.approx((rate - slo) / se, rel=1e-12)
    assert v.bound == pytest.approx(rate - half_width(se, n2), rel=1e-9)
    assert v.p_value is not None and v.p_value <= 0.05
    assert v.reason == (
        f"challenger error rate 0.03, lower bound {v.bound:.4g} vs SLO 0.02, p = {v.p_value:.3g} (H0: rate <= SLO)"
    )
    burn_in = verdict(
        judge(replace(m, challenger=Proportion(n=99, count=50)), replace(NOTHING, error_rate_slo=slo)),
        "error_rate_slo",
    )
    assert (burn_in.outcome, burn_in.n_challenger, burn_in.margin) == (Outcome.NO_DATA, 99, slo)
    assert burn_in.reason == "burn-in: 99 of 100 requests"
    at_minimum = verdict(
        judge(replace(m, challenger=Proportion(n=100, count=50)), replace(NOTHING, error_rate_slo=slo)),
        "error_rate_slo",
    )
    assert at_minimum.outcome == Outcome.FAIL
    # an SLO of 1 (every request may fail) can never be breached
    assert (
        verdict(judge(m, replace(NOTHING, error_rate_slo=1.0 - 1e-12)), "error_rate_slo").outcome
        == Outcome.PASS
    )


def test_latency_slo_veto_counts_the_share_above_the_slo_from_the_histogram() -> None:
    edges = (0.0, 10.0, 20.0, 40.0, 80.0, math.inf)
    challenger = (5_000, 3_000, 1_500, 400, 100)  # 5% at or above 40 ms, 1% at or above 80 ms
    h = Histogram(edges=edges, champion=(9_000, 1_000, 0, 0, 0), challenger=challenger)
    v = verdict(judge(shadow(latency=h), replace(NOTHING, latency_p99_slo_ms=30.0)), "latency_p99_slo")
    above = 1_500 * (40 - 30) / 20 + 400 + 100  # linear inside the 20-40 bucket
    share = above / 10_000
    assert v.outcome == Outcome.FAIL
    assert (v.margin, v.n_champion, v.n_challenger) == (30.0, 10_000, 10_000)
    assert v.statistic == pytest.approx((share - 0.01) / bernoulli_se(above, 10_000), rel=1e-12)
    # p99: 9,900 of 10,000 lie below 80 ms, so the 0.99 quantile is the 80 ms edge itself
    assert v.effect == pytest.approx(80.0)
    p40 = float(stats.exceedance_p_value(500, 10_000, share=0.01, side="greater"))
    assert v.p_value == pytest.approx(p40, rel=1e-12)  # the 40 ms edge is the first one above the SLO
    assert v.reason.endswith(f"{share:.2%} above the 30 ms SLO, p = {p40:.3g} (H0: p99 <= SLO)")
    assert v.reason.startswith("challenger p99 80 ms (lower bound ")
    ok = verdict(judge(shadow(latency=h), replace(NOTHING, latency_p99_slo_ms=80.0)), "latency_p99_slo")
    assert ok.outcome == Outcome.PASS  # 1% at or above 80 ms proves nothing above 1%
    few = Histogram(edges=edges, champion=(1, 0, 0, 0, 0), challenger=(90, 9, 0, 0, 0))
    burn_in = verdict(
        judge(shadow(latency=few), replace(NOTHING, latency_p99_slo_ms=30.0)), "latency_p99_slo"
    )
    assert (burn_in.outcome, burn_in.n_champion, burn_in.n_challenger) == (Outcome.NO_DATA, 1, 99)
    assert burn_in.reason == "burn-in: 99 of 100 requests"
    assert not any(
        v.gate == "latency_p99_slo"
        for v in judge(shadow(), replace(NOTHING, latency_p99_slo_ms=30.0)).verdicts
    )


def test_a_veto_alpha_replaces_alpha_for_the_slo_vetoes_only() -> None:
    # 2.6% errors against a 2% SLO over 10,000 requests: proven at 0.05, not at 1e-6
    m = shadow(challenger=Proportion(n=10_000, count=260))
    loose = verdict(judge(m, replace(NOTHING, error_rate_slo=0.02)), "error_rate_slo")
    strict = verdict(judge(m, replace(NOTHING, error_rate_slo=0.02, veto_alpha=1e-6)), "error_rate_slo")
    assert loose.outcome == Outcome.FAIL and strict.outcome == Outcome.PASS
    assert strict.p_value == loose.p_value


# --- drift and coverage, value by value ---------------------------------------------------------


def test_drift_verdict_reports_psi_of_scipy_and_its_chi_square_threshold() -> None:
    edges = (-0.5, 0.5, 1.5, 2.5)
    champion, challenger = (5_000, 3_000, 2_000), (4_000, 3_000, 3_000)
    policy = replace(NOTHING, drift=GateSpec(role="guardrail", margin=0.05, min_samples=500))
    v = verdict(
        judge(shadow(outputs=Histogram(edges=edges, champion=champion, challenger=challenger)), policy),
        "drift",
    )
    pe, pa = np.array(champion) / 10_000, np.array(challenger) / 10_000
    psi = float(np.sum(rel_entr(pa, pe) + rel_entr(pe, pa)))
    threshold = sps.chi2.ppf(0.99, 2) * (2 / 10_000)
    assert v.outcome == Outcome.FAIL
    assert v.effect == pytest.approx(psi, rel=1e-9)
    assert v.bound == pytest.approx(threshold, rel=1e-9)
    assert v.statistic == pytest.approx(psi / (2 / 10_000), rel=1e-9)
    assert (v.margin, v.n_champion, v.n_challenger) == (0.05, 10_000, 10_000)
    assert v.reason == f"drift: PSI {psi:.4g} > 0.05 and above noise {threshold:.4g}"
    at_margin = verdict(
        judge(
            shadow(outputs=Histogram(edges=edges, champion=champion, challenger=challenger)),
            replace(policy, drift=GateSpec(margin=psi)),
        ),
        "drift",
    )
    assert at_margin.outcome == Outcome.PASS and at_margin.reason == f"PSI {psi:.4g} <= {psi:.4g}"
    burn_in = verdict(
        judge(shadow(outputs=Histogram(edges=edges, champion=(200, 200, 99), challenger=champion)), policy),
        "drift",
    )
    assert (burn_in.outcome, burn_in.n_champion, burn_in.n_challenger) == (Outcome.NO_DATA, 499, 10_000)
    assert burn_in.reason == "burn-in: 499 of 500 outputs"
    assert verdict(judge(shadow(), policy), "drift").reason == "no output histogram"


@pytest.mark.parametrize(("count", "outcome"), [(1_100, Outcome.PASS), (1_040, Outcome.INCONCLUSIVE)])
def test_coverage_verdict_is_the_lower_bound_of_the_scored_share(count: int, outcome: Outcome) -> None:
    n = 2_000
    policy = replace(NOTHING, coverage=GateSpec(role="required", margin=0.5, min_samples=100))
    v = verdict(judge(shadow(coverage=Proportion(n=n, count=count)), policy), "coverage")
    share, se = count / n, bernoulli_se(count, n)
    lower, upper = share - half_width(se, n), share + half_width(se, n)
    assert v.outcome == outcome
    assert (v.bound, v.effect) == (pytest.approx(lower, rel=1e-9), share)
    assert (v.interval.lower, v.interval.upper) == (
        pytest.approx(lower, rel=1e-9),
        pytest.approx(upper, rel=1e-9),
    )  # type: ignore[union-attr]
    assert v.statistic == pytest.approx((0.5 - share) / se, rel=1e-12)
    assert (v.n_champion, v.n_challenger, v.margin) == (n, count, 0.5)
    scored = f"{count} of {n} sampled requests scored ({share:.1%})"
    if outcome == Outcome.PASS:
        assert v.reason == f"enough scored: {scored}, lower bound {lower:.4g} > 0.5"
    else:
        assert v.reason == f"too little scored: {scored}, lower bound {lower:.4g} <= 0.5"


def test_coverage_without_a_sample_or_in_burn_in_has_no_data() -> None:
    policy = replace(NOTHING, coverage=GateSpec(role="required", margin=0.5, min_samples=100))
    assert (
        verdict(judge(shadow(coverage=Proportion(n=0, count=0)), policy), "coverage").reason
        == "no shadow sample"
    )
    v = verdict(judge(shadow(coverage=Proportion(n=99, count=90)), policy), "coverage")
    assert (v.outcome, v.n_champion, v.n_challenger) == (Outcome.NO_DATA, 99, 90)
    assert v.reason == "burn-in: 99 of 100 sampled requests"
    assert (
        verdict(judge(shadow(coverage=Proportion(n=100, count=100)), policy), "coverage").outcome
        == Outcome.PASS
    )


# --- burn-in boundaries of the harm gates ----------------------------------------------------------


def test_each_gate_starts_exactly_at_its_min_samples() -> None:
    spec = GateSpec(role="required", margin=0.01, min_samples=300)
    acc = replace(NOTHING, accuracy=spec)
    below = verdict(judge(shadow(paired_correct=PairedCounts(n=299, worse=0, better=0)), acc), "accuracy")
    assert (below.outcome, below.n_champion, below.reason) == (
        Outcome.NO_DATA,
        299,
        "burn-in: 299 of 300 labelled pairs",
    )
    assert (
        verdict(judge(shadow(paired_correct=PairedCounts(n=300, worse=0, better=0)), acc), "accuracy").outcome
        != Outcome.NO_DATA
    )
    unpaired = shadow(
        champion_correct=Proportion(n=400, count=300), challenger_correct=Proportion(n=299, count=200)
    )
    v = verdict(judge(unpaired, acc), "accuracy")
    assert (v.outcome, v.n_champion, v.n_challenger, v.reason) == (
        Outcome.NO_DATA,
        400,
        299,
        "burn-in: 299 of 300 labelled rows",
    )
    assert verdict(judge(shadow(), acc), "accuracy").reason == "no labelled outcomes yet"
    err = replace(NOTHING, error_rate=spec)
    v = verdict(judge(shadow(paired_errors=PairedCounts(n=299, worse=0, better=0)), err), "error_rate")
    assert (v.outcome, v.reason) == (Outcome.NO_DATA, "burn-in: 299 of 300 pairs")
    v = verdict(
        judge(shadow(champion=Proportion(n=299, count=0), challenger=Proportion(n=500, count=0)), err),
        "error_rate",
    )
    assert (v.outcome, v.n_champion, v.n_challenger, v.reason) == (
        Outcome.NO_DATA,
        299,
        500,
        "burn-in: 299 of 300 requests",
    )
    assert (
        verdict(
            judge(shadow(champion=Proportion(n=300, count=0), challenger=Proportion(n=300, count=0)), err),
            "error_rate",
        ).outcome
        != Outcome.NO_DATA
    )
    agr = replace(NOTHING, agreement=replace(spec, margin=0.9))
    v = verdict(judge(shadow(agreement=Proportion(n=299, count=299)), agr), "agreement")
    assert (v.outcome, v.n_champion, v.reason) == (Outcome.NO_DATA, 299, "burn-in: 299 of 300 pairs")
    assert verdict(judge(shadow(), agr), "agreement").reason == "no compared predictions"
    assert (
        verdict(judge(shadow(agreement=Proportion(n=300, count=300)), agr), "agreement").outcome
        == Outcome.PASS
    )


# --- the error tail of the regression gate --------------------------------------------------------


def _regression_metrics(**fields: object) -> StepMetrics:
    pa = PairedAbsErrors(
        n=5_000,
        champion=5_000.0,
        champion_sq=7_000.0,
        challenger=4_900.0,
        challenger_sq=6_900.0,
        cross=5_500.0,
    )
    return shadow(
        paired_abs_errors=pa, champion_abs_error=Moments(n=5_000, total=5_000.0, total_sq=7_000.0), **fields
    )


def test_regression_bulk_and_tail_must_both_pass_and_harm_takes_twice_the_smaller_p() -> None:
    policy = replace(NOTHING, regression=GateSpec(role="required", margin=0.05, min_samples=200))
    bulk = verdict(judge(_regression_metrics(), policy), "regression")
    assert bulk.outcome == Outcome.PASS
    same_tail = ErrorTail(
        cap=3.0, quantile=0.99, champion=Proportion(n=5_000, count=50), challenger=Proportion(n=5_000, count=50),
        paired=PairedCounts(n=5_000, worse=10, better=10),
    )  # fmt: skip
    both = verdict(judge(_regression_metrics(error_tail=same_tail), policy), "regression")
    assert both.outcome == Outcome.PASS
    assert both.reason.startswith(
        bulk.reason
        + "; tail: non-inferior: share of errors above the champion's 0.99 quantile (3) +0.000% (paired)"
    )
    heavy_tail = replace(
        same_tail, paired=PairedCounts(n=5_000, worse=260, better=10)
    )  # 5% more above the cap
    j = judge(_regression_metrics(error_tail=heavy_tail), policy)
    v = verdict(j, "regression")
    tail_p = stats.confidence_sequence_p_value(
        250 / 5_000,
        math.sqrt(stats.tango_null_variance(260, 10, 5_000, null=0.01).variance),
        5_000,
        null=0.01,
    ).p_value
    assert v.outcome == Outcome.FAIL and j.decision == "rollback"
    assert v.p_value == pytest.approx(min(1.0, 2.0 * tail_p), rel=1e-9)  # Bonferroni over bulk and tail
    assert "share of errors above the champion's 0.99 quantile (3) +5.000% (paired)" in v.reason
    unsure = replace(same_tail, paired=PairedCounts(n=5_000, worse=40, better=10))
    held = verdict(judge(_regression_metrics(error_tail=unsure), policy), "regression")
    assert held.outcome == Outcome.INCONCLUSIVE
    assert (
        held.reason.startswith("inconclusive: MAE change ")
        and " passes, but inconclusive: share of errors" in held.reason
    )


def test_the_tail_falls_back_to_the_two_arms_and_is_skipped_in_burn_in() -> None:
    policy = replace(NOTHING, regression=GateSpec(role="required", margin=0.05, min_samples=200))
    unpaired = ErrorTail(
        cap=3.0,
        quantile=0.99,
        champion=Proportion(n=5_000, count=50),
        challenger=Proportion(n=4_000, count=300),
    )
    v = verdict(judge(_regression_metrics(error_tail=unpaired), policy), "regression")
    fm = stats.farrington_manning(50, 5_000, 300, 4_000, null=0.01)
    p = stats.confidence_sequence_p_value(
        300 / 4_000 - 50 / 5_000, math.sqrt(fm.variance), 9_000, null=0.01
    ).p_value
    assert v.outcome == Outcome.FAIL
    assert v.p_value == pytest.approx(min(1.0, 2.0 * p), rel=1e-9)
    assert "(unpaired)" in v.reason
    young = ErrorTail(
        cap=3.0, quantile=0.99, champion=Proportion(n=5_000, count=50), challenger=Proportion(n=199, count=100),
        paired=PairedCounts(n=199, worse=100, better=0),
    )  # fmt: skip
    alone = verdict(judge(_regression_metrics(), policy), "regression")
    assert verdict(judge(_regression_metrics(error_tail=young), policy), "regression") == alone


# --- the harm gates' reasons and numbers --------------------------------------------------------


def test_a_passing_accuracy_gate_says_which_bound_cleared_the_margin() -> None:
    n, worse, better = 20_000, 500, 520
    policy = replace(NOTHING, accuracy=GateSpec(role="required", margin=0.01, min_samples=200))
    v = verdict(
        judge(shadow(paired_correct=PairedCounts(n=n, worse=worse, better=better)), policy), "accuracy"
    )
    se = math.sqrt(stats.tango_null_variance(worse, better, n, null=0.01).variance)
    lower = 0.001 - half_width(se, n)
    assert v.outcome == Outcome.PASS
    assert (v.effect, v.margin, v.n_champion, v.n_challenger) == (pytest.approx(0.001), 0.01, n, n)
    assert (
        v.reason
        == f"non-inferior: accuracy difference +0.001 (paired, Tango score variance), lower bound {lower:.4g} > -0.01"
    )


def test_an_undecided_gate_shows_its_bounds_and_whether_they_include_the_margin() -> None:
    policy = replace(NOTHING, error_rate=GateSpec(role="guardrail", margin=0.001, min_samples=200))
    n, worse, better = 4_000, 30, 25
    v = verdict(
        judge(shadow(paired_errors=PairedCounts(n=n, worse=worse, better=better)), policy), "error_rate"
    )
    diff = (worse - better) / n
    se = math.sqrt(stats.tango_null_variance(worse, better, n, null=0.001).variance)
    lo, hi = diff - half_width(se, n), diff + half_width(se, n)
    assert v.outcome == Outcome.INCONCLUSIVE
    assert (v.bound, v.interval.lower, v.interval.upper) == (  # type: ignore[union-attr]
        pytest.approx(hi, rel=1e-9),
        pytest.approx(lo, rel=1e-9),
        pytest.approx(hi, rel=1e-9),
    )
    assert v.reason == (
        f"inconclusive: error rate difference +0.00125 (paired, Tango score variance), bounds {lo:.4g}..{hi:.4g} include 0.001"
    )
    # an agreement proven below its minimum on a hold gate: the bounds lie past the limit, no harm decided
    agr = replace(NOTHING, agreement=GateSpec(role="informational", margin=0.9, min_samples=200))
    low = verdict(judge(shadow(agreement=Proportion(n=20_000, count=17_000)), agr), "agreement")
    assert low.outcome == Outcome.FAIL
    assert low.reason.startswith("below: agreement 0.85 vs minimum 0.9, upper bound ")
    assert low.reason.endswith(" < 0.9, p = " + f"{low.p_value:.3g}")
    assert "Holm-adjusted" not in low.reason  # informational: outside the harm family


def test_agreement_uses_the_score_variance_at_the_limit() -> None:
    n, count = 20_000, 18_300
    agr = replace(NOTHING, agreement=GateSpec(role="informational", margin=0.9, min_samples=200))
    v = verdict(judge(shadow(agreement=Proportion(n=n, count=count)), agr), "agreement")
    se = math.sqrt(0.1 * 0.9 / n)  # the disagreement share's variance at the limit 0.1
    disagree = 1 - count / n
    assert v.outcome == Outcome.PASS
    assert v.bound == pytest.approx(1 - (disagree + half_width(se, n)), rel=1e-9)
    assert v.statistic == pytest.approx((disagree - 0.1) / se, rel=1e-9)
    assert v.effect == pytest.approx(count / n)
    assert v.reason.startswith("non-inferior: agreement 0.915 vs minimum 0.9, lower bound ")


def test_a_harm_reason_names_the_bound_and_the_holm_adjusted_p_value() -> None:
    policy = replace(
        NOTHING,
        error_rate=GateSpec(role="guardrail", margin=0.0, min_samples=200),
        accuracy=GateSpec(role="required", margin=0.01, min_samples=200),
    )
    m = shadow(
        paired_errors=PairedCounts(n=20_000, worse=200, better=20),
        paired_correct=PairedCounts(n=20_000, worse=500, better=500),
    )
    j = judge(m, policy)
    v = verdict(j, "error_rate")
    raw = stats.confidence_sequence_p_value(180 / 20_000, math.sqrt(220) / 20_000, 20_000, null=0.0).p_value
    acc_raw = verdict(judge(m, replace(policy, error_rate=OFF)), "accuracy").p_value
    adjusted = stats.holm([raw, acc_raw])
    assert v.p_value == pytest.approx(adjusted[0], rel=1e-9)
    assert verdict(j, "accuracy").p_value == pytest.approx(adjusted[1], rel=1e-9)
    lower = 180 / 20_000 - half_width(math.sqrt(220) / 20_000, 20_000)
    assert v.bound == pytest.approx(lower, rel=1e-9)
    assert v.reason == (
        f"harm: error rate difference +0.009 (paired, Tango score variance), lower bound {lower:.4g} > 0, "
        f"Holm-adjusted p = {v.p_value:.3g}"
    )
    assert j.reason == "harm: error_rate: " + v.reason.removeprefix("harm: ")
    assert (j.decision, j.outcome) == ("rollback", Outcome.FAIL)


def test_unpaired_accuracy_lets_the_challenger_play_farrington_mannings_control() -> None:
    a, b = Proportion(n=10_000, count=9_000), Proportion(n=8_000, count=7_300)
    policy = replace(NOTHING, accuracy=GateSpec(role="required", margin=0.01, min_samples=200))
    v = verdict(judge(shadow(champion_correct=a, challenger_correct=b), policy), "accuracy")
    loss = 0.9 - 7_300 / 8_000
    fm = stats.farrington_manning(7_300, 8_000, 9_000, 10_000, null=0.01)  # champion minus challenger
    assert fm.estimate == pytest.approx(loss)
    se = math.sqrt(fm.variance)
    assert v.effect == pytest.approx(-loss)
    assert v.bound == pytest.approx(-(loss + half_width(se, 18_000)), rel=1e-9)
    assert v.statistic == pytest.approx((loss - 0.01) / se, rel=1e-9)
    assert (v.n_champion, v.n_challenger) == (10_000, 8_000)
    assert "(unpaired, Farrington-Manning variance)" in v.reason


# --- the regression gate's three ways in ---------------------------------------------------------


def test_regression_from_per_arm_moments_in_canary_mode() -> None:
    rng = np.random.default_rng(7)
    e1, e2 = np.abs(rng.normal(0, 1.0, 3_000)), np.abs(rng.normal(0, 0.95, 2_000))
    base = Moments(n=3_000, total=float(e1.sum()), total_sq=float((e1 * e1).sum()))
    chal = Moments(n=2_000, total=float(e2.sum()), total_sq=float((e2 * e2).sum()))
    policy = replace(NOTHING, regression=GateSpec(role="required", margin=0.05, min_samples=200))
    v = verdict(
        judge(shadow(mode="canary", champion_abs_error=base, challenger_abs_error=chal), policy), "regression"
    )
    w = 1.05
    mean = e2.mean() - w * e1.mean()
    se = math.sqrt(np.var(e2, ddof=1) / 2_000 + w * w * np.var(e1, ddof=1) / 3_000)
    upper = mean + half_width(se, 5_000)
    assert v.outcome == Outcome.PASS
    assert v.bound == pytest.approx(upper / e1.mean() + 0.05, rel=1e-9)  # relative MAE change
    assert v.effect == pytest.approx(e2.mean() / e1.mean() - 1.0, rel=1e-9)
    assert v.statistic == pytest.approx(mean / se, rel=1e-9)
    assert (v.n_champion, v.n_challenger) == (3_000, 2_000)
    assert v.reason.startswith(
        f"non-inferior: MAE change {e2.mean() / e1.mean() - 1:+.2%} (unpaired, direct test of |e2| - 1.05 |e1|)"
    )
    young = shadow(
        mode="canary", champion_abs_error=base, challenger_abs_error=Moments(n=199, total=1.0, total_sq=1.0)
    )
    y = verdict(judge(young, policy), "regression")
    assert (y.outcome, y.n_champion, y.n_challenger, y.reason) == (
        Outcome.NO_DATA,
        3_000,
        199,
        "burn-in: 199 of 200 labelled rows",
    )
    assert (
        verdict(judge(shadow(champion_abs_error=base), policy), "regression").reason
        == "no labelled challenger errors yet"
    )
    assert verdict(judge(shadow(), policy), "regression").reason == "no labelled regression outcomes yet"
    empty = Moments(n=0, total=0.0, total_sq=0.0)
    assert (
        verdict(judge(shadow(champion_abs_error=empty), policy), "regression").reason
        == "no labelled regression outcomes yet"
    )


def test_regression_from_the_difference_moments_bounds_the_variance_by_cauchy_schwarz() -> None:
    rng = np.random.default_rng(9)
    e1 = np.abs(rng.normal(0, 1.0, 1_000))
    e2 = np.abs(e1 + rng.normal(0, 0.2, 1_000))
    d = e2 - e1
    diff = Moments(n=1_000, total=float(d.sum()), total_sq=float((d * d).sum()))
    base = Moments(n=1_000, total=float(e1.sum()), total_sq=float((e1 * e1).sum()))
    policy = replace(NOTHING, regression=GateSpec(role="required", margin=0.05, min_samples=200))
    v = verdict(judge(shadow(abs_error_difference=diff, champion_abs_error=base), policy), "regression")
    mean = d.mean() - 0.05 * e1.mean()
    sd = math.sqrt(np.var(d, ddof=1)) + 0.05 * math.sqrt(
        np.var(e1, ddof=1)
    )  # sd(d - m e1) <= sd(d) + m sd(e1)
    se = sd / math.sqrt(1_000)
    assert v.statistic == pytest.approx(mean / se, rel=1e-9)
    assert v.interval.upper == pytest.approx((mean + half_width(se, 1_000)) / e1.mean() + 0.05, rel=1e-9)  # type: ignore[union-attr]
    assert v.reason.endswith("(paired, direct test of |e2| - 1.05 |e1|), " + v.reason.rsplit(", ", 1)[1])
    young = verdict(
        judge(shadow(abs_error_difference=replace(diff, n=199), champion_abs_error=base), policy),
        "regression",
    )
    assert (young.outcome, young.reason) == (Outcome.NO_DATA, "burn-in: 199 of 200 labelled pairs")


def test_paired_regression_is_the_t_test_of_e2_minus_w_e1() -> None:
    rng = np.random.default_rng(13)
    e1 = np.abs(rng.normal(0, 1.0, 2_000))
    e2 = np.abs(e1 * 1.02 + rng.normal(0, 0.1, 2_000))
    pa = PairedAbsErrors(
        n=2_000, champion=float(e1.sum()), champion_sq=float((e1 * e1).sum()), challenger=float(e2.sum()),
        challenger_sq=float((e2 * e2).sum()), cross=float((e1 * e2).sum()),
    )  # fmt: skip
    policy = replace(NOTHING, regression=GateSpec(role="required", margin=0.05, min_samples=200))
    v = verdict(judge(shadow(paired_abs_errors=pa), policy), "regression")
    y = e2 - 1.05 * e1
    se = float(sps.sem(y))
    assert v.statistic == pytest.approx(y.mean() / se, rel=1e-6)
    assert v.bound == pytest.approx((y.mean() + half_width(se, 2_000)) / e1.mean() + 0.05, rel=1e-6)
    assert v.effect == pytest.approx(e2.mean() / e1.mean() - 1, rel=1e-9)
    young = verdict(judge(shadow(paired_abs_errors=replace(pa, n=199)), policy), "regression")
    assert (young.outcome, young.n_champion, young.reason) == (
        Outcome.NO_DATA,
        199,
        "burn-in: 199 of 200 labelled pairs",
    )


# --- latency ---------------------------------------------------------------------------------------


def test_latency_verdict_reports_the_p99_ratio_read_off_both_histograms() -> None:
    edges = (0.0, 10.0, 20.0, 40.0, 80.0, math.inf)
    champion = (6_000, 3_000, 900, 90, 10)
    challenger = (6_000, 3_000, 900, 90, 10)
    policy = replace(NOTHING, latency_p99=GateSpec(role="required", margin=1.2, min_samples=1_000))
    v = verdict(
        judge(shadow(latency=Histogram(edges=edges, champion=champion, challenger=challenger)), policy),
        "latency_p99",
    )
    # the 0.99 quantile: 9,900 of 10,000 lie below 40 ms, the bucket [40, 80) holds the next 90
    assert v.effect == pytest.approx(1.0)
    assert v.statistic == pytest.approx(1.0 - 1.2)
    assert (v.margin, v.n_champion, v.n_challenger) == (1.2, 10_000, 10_000)
    assert v.reason.startswith("inconclusive: p99 ratio 1 (40 vs 40 ms); p99 bounds challenger ")
    assert v.reason.endswith("tolerated 1.2 x champion or 0 ms")
    floor = verdict(
        judge(
            shadow(latency=Histogram(edges=edges, champion=champion, challenger=challenger)),
            replace(policy, latency_floor_ms=100.0),
        ),
        "latency_p99",
    )
    assert floor.outcome == Outcome.PASS  # every challenger p99 bound lies under the 100 ms floor
    assert floor.reason.startswith("non-inferior: p99 ratio 1 (40 vs 40 ms)")
    assert ", p = " in floor.reason and floor.reason.endswith(
        "tolerated 1.2 x champion or 100 ms, p = " + floor.reason.rsplit("p = ", 1)[1]
    )
    few = Histogram(edges=edges, champion=(999, 0, 0, 0, 0), challenger=(5_000, 0, 0, 0, 0))
    b = verdict(judge(shadow(latency=few), policy), "latency_p99")
    assert (b.outcome, b.n_champion, b.n_challenger, b.reason) == (
        Outcome.NO_DATA,
        999,
        5_000,
        "burn-in: 999 of 1000 requests",
    )
    assert verdict(judge(shadow(), policy), "latency_p99").reason == "no latency histogram"


# --- how the verdicts combine ---------------------------------------------------------------------


def test_the_decision_reason_lists_what_promotion_waits_for() -> None:
    policy = replace(
        NOTHING,
        accuracy=GateSpec(role="required", margin=0.01, min_samples=200),
        error_rate=GateSpec(role="guardrail", margin=0.0, min_samples=200),
    )
    few = {"champion": Proportion(n=100, count=0), "challenger": Proportion(n=100, count=0)}
    j = judge(shadow(paired_correct=PairedCounts(n=1_000, worse=30, better=25), **few), policy)
    assert j.decision == "continue"
    assert (
        j.reason == "continue: accuracy inconclusive, error_rate no-data (blocks promotion until it has data)"
    )
    assert j.outcome == Outcome.INCONCLUSIVE
    waived = replace(policy, error_rate=GateSpec(role="guardrail", min_samples=200, allow_no_data=True))
    assert (
        judge(shadow(paired_correct=PairedCounts(n=1_000, worse=30, better=25), **few), waived).reason
        == "continue: accuracy inconclusive"
    )


def test_a_veto_reason_names_each_failing_veto() -> None:
    m = shadow(
        challenger=Proportion(n=10_000, count=500),
        paired_correct=PairedCounts(n=20_000, worse=500, better=500),
    )
    policy = replace(NOTHING, accuracy=GateSpec(role="required", margin=0.01), error_rate_slo=0.01)
    j = judge(m, policy)
    v = verdict(j, "error_rate_slo")
    assert (j.decision, j.outcome, j.veto, j.harm, j.promote_eligible) == (
        "veto",
        Outcome.FAIL,
        True,
        False,
        False,
    )
    assert j.reason == f"veto: error_rate_slo: {v.reason}"


def test_a_promotion_through_agreement_says_so() -> None:
    policy = replace(
        NOTHING,
        accuracy=GateSpec(role="required", margin=0.02, min_samples=200),
        agreement=GateSpec(role="informational", margin=0.5, min_samples=200),
        agreement_stands_in=True,
    )
    j = judge(shadow(agreement=Proportion(n=20_000, count=19_900)), policy)
    proxy = verdict(j, "agreement_proxy")
    assert (proxy.role, proxy.outcome, proxy.margin) == ("proxy", Outcome.PASS, pytest.approx(0.98))
    assert proxy.reason.startswith(
        "stands in for accuracy on a step that is not the last: non-inferior: agreement 0.995 vs minimum 0.98"
    )
    assert (j.decision, j.promote_eligible) == ("promote", True)
    assert j.reason == "every required gate is non-inferior: accuracy (through agreement)"
    assert j.outcome == Outcome.NO_DATA  # accuracy itself has no labels
    # the agreement gate's own, higher minimum wins over 1 - margin
    strict = replace(policy, agreement=GateSpec(role="informational", margin=0.999, min_samples=200))
    assert (
        verdict(judge(shadow(agreement=Proportion(n=20_000, count=19_900)), strict), "agreement_proxy").margin
        == 0.999
    )
    for off in (replace(policy, final=True), replace(policy, agreement_stands_in=False),
                replace(policy, accuracy=GateSpec(role="guardrail", margin=0.02)),
                replace(policy, accuracy=GateSpec(enabled=False, role="required", margin=0.02))):  # fmt: skip
        assert not any(
            v.gate == "agreement_proxy"
            for v in judge(shadow(agreement=Proportion(n=20_000, count=19_900)), off).verdicts
        )


def test_a_hold_gate_holds_until_every_labelled_gate_passes() -> None:
    policy = replace(
        NOTHING,
        accuracy=GateSpec(role="required", margin=0.01, min_samples=200),
        agreement=GateSpec(role="guardrail", margin=0.9, min_samples=200, on_fail="hold"),
    )
    low = Proportion(n=20_000, count=17_000)
    j = judge(shadow(agreement=low), policy)
    a = verdict(j, "agreement")
    assert a.outcome == Outcome.FAIL and j.decision == "continue"
    assert j.reason == f"hold (not harm; labels decide): agreement: {a.reason}"
    proven = judge(
        shadow(agreement=low, paired_correct=PairedCounts(n=20_000, worse=500, better=600)), policy
    )
    assert proven.decision == "promote"
    assert proven.reason == "every required gate is non-inferior: accuracy"


# --- the fixed-horizon quality gate (ROC AUC, DeLong) and hold-role quality gates --------------------


def _auc_verdict(margin: float, shift: float, role: str = "guardrail") -> tuple[Verdict, float, float, float]:
    from controller.core import metrics as q

    rng = np.random.default_rng(21)
    y = rng.random(400) < 0.4
    s1 = y * 1.0 + rng.normal(0, 0.7, 400)
    s2 = y * (1.0 + shift) + rng.normal(0, 0.7, 400)
    spec = q.MetricSpec(metric="roc_auc", role=role, margin=margin, horizon=400)  # type: ignore[arg-type]
    auc = q.Auc(
        horizon=400, available=400, paired=True, labels=tuple(y), champion=tuple(s1), challenger=tuple(s2)
    )
    m = shadow(quality=q.QualityStats(auc=auc))
    v = verdict(judge(m, replace(NOTHING, quality=q.QualityPolicy(gates=(spec,)))), "roc_auc")
    a1, a2, var = q.delong(y, s1, s2)
    return v, a1, a2, math.sqrt(var)


def test_a_fixed_horizon_gate_uses_one_sided_normal_bounds_and_the_normal_p_value() -> None:
    z = sps.norm.ppf(0.95)
    v, a1, a2, se = _auc_verdict(margin=0.08, shift=0.0)
    diff = a2 - a1
    assert v.outcome == Outcome.PASS
    assert v.bound == pytest.approx(diff - z * se, rel=1e-9)  # the lower bound of the AUC change
    assert (v.interval.lower, v.interval.upper) == (
        pytest.approx(diff - z * se),
        pytest.approx(diff + z * se),
    )  # type: ignore[union-attr]
    assert v.effect == pytest.approx(diff)
    assert v.statistic == pytest.approx((-diff - 0.08) / se, rel=1e-9)
    assert v.p_value == pytest.approx(sps.norm.sf((-diff - 0.08) / se), rel=1e-9)
    assert (v.margin, v.n_champion, v.n_challenger, v.role) == (0.08, 400, 400, "guardrail")
    assert v.reason.startswith("non-inferior: ROC AUC ")
    assert v.reason.endswith(f"(paired DeLong, fixed horizon 400), lower bound {diff - z * se:.4g} > -0.08")
    worse, b1, b2, se2 = _auc_verdict(margin=0.0, shift=-0.5)
    assert worse.outcome == Outcome.FAIL
    assert worse.bound == pytest.approx((b2 - b1) + z * se2, rel=1e-9)  # the upper bound proves the loss
    assert f"upper bound {(b2 - b1) + z * se2:.4g} < 0" in worse.reason
    unsure, c1, c2, _ = _auc_verdict(margin=0.0, shift=-0.05)
    assert unsure.outcome == Outcome.INCONCLUSIVE
    assert unsure.reason.endswith("(paired DeLong, fixed horizon 400), bounds include 0")


def test_a_hold_quality_gate_keeps_its_numbers_and_holds_instead_of_rolling_back() -> None:
    v, a1, a2, se = _auc_verdict(margin=0.0, shift=-0.5, role="hold")
    z = sps.norm.ppf(0.95)
    assert (v.role, v.outcome, v.margin) == ("hold", Outcome.FAIL, 0.0)
    assert (v.interval.lower, v.interval.upper) == (
        pytest.approx(a2 - a1 - z * se),
        pytest.approx(a2 - a1 + z * se),
    )  # type: ignore[union-attr]
    assert v.p_value == pytest.approx(sps.norm.sf((a1 - a2) / se), rel=1e-9)
    assert (v.n_champion, v.n_challenger) == (400, 400)


def test_a_quality_gate_before_its_horizon_reports_its_counts() -> None:
    from controller.core import metrics as q

    spec = q.MetricSpec(metric="accuracy", role="guardrail", margin=0.01, min_samples=500)
    cells = {(0, 0): 100, (0, 1): 10, (1, 0): 10, (1, 1): 80}  # (label, predicted class) -> rows
    conf = q.Confusion(names=("a", "b"), champion=cells, challenger={k: 2 * c for k, c in cells.items()})
    m = shadow(quality=q.QualityStats(confusion=conf))
    v = verdict(judge(m, replace(NOTHING, quality=q.QualityPolicy(gates=(spec,)))), "accuracy")
    assert (v.outcome, v.margin) == (Outcome.NO_DATA, 0.01)
    assert (v.n_champion, v.n_challenger) == (200, 400)
    assert v.reason == "burn-in: 200 of 500 labelled rows"


# --- cluster-robust variances: the keys each gate reads ------------------------------------------


def _clusters_of(groups: list[list[float]], weights: list[list[float]] | None = None) -> stats.ClusterSums:
    b = weights or [[0.0] * len(g) for g in groups]
    m = [len(g) for g in groups]
    a_ = [sum(g) for g in groups]
    b_ = [sum(x) for x in b]
    return stats.ClusterSums(
        clusters=len(groups), rows=float(sum(m)), mm=float(np.dot(m, m)), ma=float(np.dot(m, a_)),
        mb=float(np.dot(m, b_)), aa=float(np.dot(a_, a_)), ab=float(np.dot(a_, b_)), bb=float(np.dot(b_, b_)),
    )  # fmt: skip


def test_paired_regression_inflates_its_variance_by_the_clusters_design_effect() -> None:
    rng = np.random.default_rng(17)
    k, size = 200, 10
    shared = np.repeat(rng.normal(0, 0.5, k), size)  # rows of one request share an error
    e1 = np.abs(rng.normal(0, 1.0, k * size) + shared)
    e2 = np.abs(e1 * 1.0 + rng.normal(0, 0.05, k * size) + 0.2 * shared)
    pa = PairedAbsErrors(
        n=k * size, champion=float(e1.sum()), champion_sq=float((e1 * e1).sum()), challenger=float(e2.sum()),
        challenger_sq=float((e2 * e2).sum()), cross=float((e1 * e2).sum()),
    )  # fmt: skip
    w = 1.05
    y = e2 - w * e1
    groups_a = [list(e2[i * size : (i + 1) * size]) for i in range(k)]
    groups_b = [list(e1[i * size : (i + 1) * size]) for i in range(k)]
    sums = _clusters_of(groups_a, groups_b)
    policy = replace(NOTHING, regression=GateSpec(role="required", margin=0.05, min_samples=200))
    v = verdict(
        judge(shadow(paired_abs_errors=pa, clusters={"abs_error.paired": sums}), policy), "regression"
    )
    # CR1 over clusters of y_k - mean m_k, against N/(N-1) sum_i (y_i - mean)^2
    mean = y.mean()
    yk = np.array([sum(a) - w * sum(b) for a, b in zip(groups_a, groups_b, strict=True)])
    robust = k / (k - 1) * float(np.sum((yk - mean * size) ** 2))
    independent = (k * size) / (k * size - 1) * float(np.sum((y - mean) ** 2))
    deff = max(1.0, robust / independent)
    assert deff > 1.5
    se = math.sqrt(np.var(y, ddof=1) * deff / (k * size))
    assert v.statistic == pytest.approx(mean / se, rel=1e-6)


def test_unpaired_regression_reads_each_arms_clusters() -> None:
    rng = np.random.default_rng(19)
    k, size = 150, 8
    e1 = np.abs(np.repeat(rng.normal(0, 0.7, k), size) + rng.normal(0, 0.5, k * size))
    e2 = np.abs(np.repeat(rng.normal(0, 0.7, k), size) + rng.normal(0, 0.5, k * size))
    base = Moments(n=k * size, total=float(e1.sum()), total_sq=float((e1 * e1).sum()))
    chal = Moments(n=k * size, total=float(e2.sum()), total_sq=float((e2 * e2).sum()))
    g1 = [list(e1[i * size : (i + 1) * size]) for i in range(k)]
    g2 = [list(e2[i * size : (i + 1) * size]) for i in range(k)]

    def deff(e: np.ndarray, g: list[list[float]]) -> float:
        mu = e.mean()
        robust = k / (k - 1) * sum((sum(x) - mu * size) ** 2 for x in g)
        return max(1.0, robust / (e.size / (e.size - 1) * float(np.sum((e - mu) ** 2))))

    policy = replace(NOTHING, regression=GateSpec(role="required", margin=0.05, min_samples=200))
    clusters = {"abs_error.champion": _clusters_of(g1), "abs_error.challenger": _clusters_of(g2)}
    v = verdict(
        judge(
            shadow(mode="canary", champion_abs_error=base, challenger_abs_error=chal, clusters=clusters),
            policy,
        ),
        "regression",
    )
    w = 1.05
    se = math.sqrt(
        np.var(e2, ddof=1) / e2.size * deff(e2, g2) + w * w * np.var(e1, ddof=1) / e1.size * deff(e1, g1)
    )
    assert deff(e1, g1) > 1.5 and deff(e2, g2) > 1.5
    assert v.statistic == pytest.approx((e2.mean() - w * e1.mean()) / se, rel=1e-6)


def test_the_paired_tail_reads_its_clusters() -> None:
    policy = replace(NOTHING, regression=GateSpec(role="required", margin=0.05, min_samples=200))
    # 100 requests of 50 rows; the challenger's extra tail rows come in whole requests
    pc = PairedCounts(n=5_000, worse=150, better=50)
    groups = [[1.0] * 50, [1.0] * 50, [1.0] * 50] + [[0.0] * 50 for _ in range(97)]
    groups[3] = [-1.0] * 50  # one request where only the champion was above the cap
    tail = ErrorTail(
        cap=3.0,
        quantile=0.99,
        champion=Proportion(n=5_000, count=60),
        challenger=Proportion(n=5_000, count=160),
        paired=pc,
    )
    plain = verdict(judge(_regression_metrics(error_tail=tail), policy), "regression")
    clustered = verdict(
        judge(
            _regression_metrics(error_tail=tail, clusters={"abs_error_tail.paired": _clusters_of(groups)}),
            policy,
        ),
        "regression",
    )
    assert clustered.p_value is not None and plain.p_value is not None
    assert clustered.p_value > plain.p_value  # clustered rows carry less evidence


def test_bulk_harm_keeps_the_bonferroni_p_of_the_mean_test_when_the_tail_is_fine() -> None:
    policy = replace(NOTHING, regression=GateSpec(role="required", margin=0.05, min_samples=200))
    pa = PairedAbsErrors(
        n=5_000,
        champion=5_000.0,
        champion_sq=7_000.0,
        challenger=6_000.0,
        challenger_sq=9_000.0,
        cross=7_500.0,
    )
    m = shadow(paired_abs_errors=pa, champion_abs_error=Moments(n=5_000, total=5_000.0, total_sq=7_000.0))
    bulk = verdict(judge(m, policy), "regression")
    tail = ErrorTail(
        cap=3.0, quantile=0.99, champion=Proportion(n=5_000, count=50), challenger=Proportion(n=5_000, count=50),
        paired=PairedCounts(n=5_000, worse=10, better=10),
    )  # fmt: skip
    both = verdict(judge(replace(m, error_tail=tail), policy), "regression")
    assert bulk.outcome == Outcome.FAIL and both.outcome == Outcome.FAIL
    assert bulk.p_value is not None and both.p_value == pytest.approx(min(1.0, 2.0 * bulk.p_value), rel=1e-9)
    assert both.bound == pytest.approx(bulk.bound, rel=1e-9)  # the failing bound is the mean test's


# --- the remaining fields, keys and boundaries ------------------------------------------------------


def _paired_deff(worse_by_cluster: list[tuple[int, int, int]], null: float) -> float:
    """Design effect of d = +1 (worse), -1 (better), 0 over clusters of (worse, better, rows), at d = null."""
    rows = np.concatenate(
        [np.r_[np.ones(w), -np.ones(b), np.zeros(r - w - b)] for w, b, r in worse_by_cluster]
    )
    yk = np.array([w - b - null * r for w, b, r in worse_by_cluster], dtype=float)
    k = len(worse_by_cluster)
    robust = k / (k - 1) * float(np.sum(yk**2))
    independent = rows.size / (rows.size - 1) * float(np.sum((rows - null) ** 2))
    return max(1.0, robust / independent)


def _cluster_sums_of_counts(cells: list[tuple[int, int, int]]) -> stats.ClusterSums:
    """ClusterSums of a = worse - better per cluster (clusters of ``rows`` rows)."""
    groups = [[1.0] * w + [-1.0] * b + [0.0] * (r - w - b) for w, b, r in cells]
    return _clusters_of(groups)


@pytest.mark.parametrize(
    ("gate", "key", "field"),
    [("accuracy", "correct.paired", "paired_correct"), ("error_rate", "errors.paired", "paired_errors")],
)
def test_paired_gates_inflate_tangos_variance_by_their_clusters(gate: str, key: str, field: str) -> None:
    cells = [(3, 0, 20)] * 30 + [(0, 1, 20)] * 30 + [(0, 0, 20)] * 40  # 100 clusters of 20 rows
    worse, better, n = 90, 30, 2_000
    margin = 0.01
    policy = replace(NOTHING, **{gate: GateSpec(role="guardrail", margin=margin, min_samples=200)})  # type: ignore[arg-type]
    m = shadow(
        **{field: PairedCounts(n=n, worse=worse, better=better)},
        clusters={key: _cluster_sums_of_counts(cells)},
    )
    v = verdict(judge(m, policy), gate)
    tango = stats.tango_null_variance(worse, better, n, null=margin).variance
    deff = _paired_deff(cells, margin)
    assert deff > 1.5
    se = math.sqrt(tango * deff)
    sign = -1.0 if gate == "accuracy" else 1.0
    assert v.statistic == pytest.approx(((worse - better) / n - margin) / se, rel=1e-9)
    assert v.interval.upper - v.interval.lower == pytest.approx(2 * half_width(se, n), rel=1e-9)  # type: ignore[union-attr]
    assert sign * v.effect == pytest.approx((worse - better) / n)


def test_unpaired_gates_read_each_arms_clusters() -> None:
    # canary: 100 keys per arm of 20 requests each; errors come in whole keys on the challenger
    champion, challenger = Proportion(n=2_000, count=20), Proportion(n=2_000, count=60)
    chal_groups = [[1.0] * 20] * 3 + [[0.0] * 20] * 97
    champ_groups = [[1.0] * 1 + [0.0] * 19] * 20 + [[0.0] * 20] * 80
    policy = replace(NOTHING, error_rate=GateSpec(role="guardrail", margin=0.0, min_samples=200))
    plain = verdict(
        judge(shadow(mode="canary", champion=champion, challenger=challenger), policy), "error_rate"
    )
    chal_only = verdict(
        judge(
            shadow(
                mode="canary",
                champion=champion,
                challenger=challenger,
                clusters={"errors.challenger": _clusters_of(chal_groups)},
            ),
            policy,
        ),
        "error_rate",
    )
    champ_only = verdict(
        judge(
            shadow(
                mode="canary",
                champion=champion,
                challenger=challenger,
                clusters={"errors.champion": _clusters_of(champ_groups)},
            ),
            policy,
        ),
        "error_rate",
    )
    fm = stats.farrington_manning(20, 2_000, 60, 2_000, null=0.0)
    r1, r2 = fm.restricted

    def deff(groups: list[list[float]], r: float) -> float:
        rows = np.concatenate([np.array(g) for g in groups])
        robust = len(groups) / (len(groups) - 1) * sum((sum(g) - r * len(g)) ** 2 for g in groups)
        return max(1.0, robust / (rows.size / (rows.size - 1) * float(np.sum((rows - r) ** 2))))

    se_chal = math.sqrt(r1 * (1 - r1) / 2_000 + r2 * (1 - r2) / 2_000 * deff(chal_groups, r2))
    assert deff(chal_groups, r2) > 2
    assert chal_only.statistic == pytest.approx(0.02 / se_chal, rel=1e-9)
    assert champ_only.statistic == pytest.approx(
        0.02 / math.sqrt(r1 * (1 - r1) / 2_000 * deff(champ_groups, r1) + r2 * (1 - r2) / 2_000), rel=1e-9
    )
    assert plain.statistic == pytest.approx(0.02 / math.sqrt(fm.variance), rel=1e-9)
    assert (plain.n_champion, plain.n_challenger) == (2_000, 2_000)
    assert "(unpaired, Farrington-Manning variance)" in plain.reason
    # accuracy in canary mode: the challenger's rows are Farrington-Manning's first arm
    acc = replace(NOTHING, accuracy=GateSpec(role="required", margin=0.01, min_samples=200))
    a, b = Proportion(n=2_000, count=1_800), Proportion(n=2_000, count=1_790)
    right = [[1.0] * 20] * 89 + [[1.0] * 10 + [0.0] * 10] + [[0.0] * 20] * 10
    base = verdict(judge(shadow(mode="canary", champion_correct=a, challenger_correct=b), acc), "accuracy")
    clustered = verdict(
        judge(
            shadow(
                mode="canary",
                champion_correct=a,
                challenger_correct=b,
                clusters={"correct.challenger": _clusters_of(right)},
            ),
            acc,
        ),
        "accuracy",
    )
    assert abs(clustered.statistic) < abs(base.statistic)
    only_one = verdict(judge(shadow(mode="canary", champion_correct=a), acc), "accuracy")
    assert (only_one.outcome, only_one.reason) == (Outcome.NO_DATA, "no labelled outcomes yet")


def test_agreement_reads_its_clusters_and_reports_both_counts() -> None:
    agr = replace(NOTHING, agreement=GateSpec(role="informational", margin=0.9, min_samples=200))
    a = Proportion(n=2_000, count=1_900)
    groups = [[1.0] * 20] * 5 + [[0.0] * 20] * 95  # disagreement in whole requests
    plain = verdict(judge(shadow(agreement=a), agr), "agreement")
    clustered = verdict(
        judge(shadow(agreement=a, clusters={"agreement": _clusters_of(groups)}), agr), "agreement"
    )
    rows = np.concatenate([np.array(g) for g in groups])
    robust = 100 / 99 * sum((sum(g) - 0.1 * 20) ** 2 for g in groups)
    deff = max(1.0, robust / (2_000 / 1_999 * float(np.sum((rows - 0.1) ** 2))))
    assert clustered.statistic == pytest.approx(plain.statistic / math.sqrt(deff), rel=1e-9)
    assert (plain.n_champion, plain.n_challenger) == (2_000, 2_000)


def test_the_agreement_proxy_carries_its_own_harm_p_value() -> None:
    policy = replace(
        NOTHING,
        accuracy=GateSpec(role="required", margin=0.02, min_samples=200),
        agreement=GateSpec(role="informational", margin=0.5, min_samples=200),
        agreement_stands_in=True,
    )
    n, count = 20_000, 19_900
    proxy = verdict(judge(shadow(agreement=Proportion(n=n, count=count)), policy), "agreement_proxy")
    se = math.sqrt(0.02 * 0.98 / n)
    expected = stats.confidence_sequence_p_value(1 - count / n, se, n, null=0.02, side="greater").p_value
    assert proxy.p_value == pytest.approx(expected, rel=1e-9)


def test_latency_bounds_are_ratios_of_the_two_arms_quantile_sequences() -> None:
    rng = np.random.default_rng(4)
    edges = stats.latency_edges()
    h1 = stats.histogram_counts(rng.lognormal(3.0, 0.5, 20_000), edges)
    h2 = stats.histogram_counts(rng.lognormal(3.5, 0.5, 20_000), edges)
    policy = replace(NOTHING, latency_p99=GateSpec(role="guardrail", margin=1.2, min_samples=1_000))
    h = Histogram(edges=tuple(edges.tolist()), champion=tuple(h1.tolist()), challenger=tuple(h2.tolist()))
    v = verdict(judge(shadow(latency=h), policy), "latency_p99")
    r = stats.quantile_ratio_test(h1, h2, edges, q=0.99, ratio=1.2, alpha=0.05)
    assert v.outcome == Outcome.FAIL
    assert v.bound == pytest.approx(r.challenger.lower / r.champion.upper, rel=1e-12)  # the failing bound
    assert (v.interval.lower, v.interval.upper) == (  # type: ignore[union-attr]
        pytest.approx(r.challenger.lower / r.champion.upper),
        pytest.approx(r.challenger.upper / r.champion.lower),
    )
    same = Histogram(edges=h.edges, champion=h.champion, challenger=h.champion)
    ok = verdict(judge(shadow(latency=same), policy), "latency_p99")
    r0 = stats.quantile_ratio_test(h1, h1, edges, q=0.99, ratio=1.2, alpha=0.05)
    assert ok.outcome == Outcome.PASS
    assert ok.bound == pytest.approx(r0.challenger.upper / r0.champion.lower, rel=1e-12)
    exactly = Histogram(edges=(0.0, 10.0, 20.0, math.inf), champion=(1_000, 0, 0), challenger=(1_000, 0, 0))
    assert (
        verdict(judge(shadow(latency=exactly), policy), "latency_p99").outcome != Outcome.NO_DATA
    )  # 1000 of 1000


def test_a_fixed_horizon_gate_without_variance_is_decided_by_the_sign() -> None:
    from controller.core import metrics as q

    y = np.array([True] * 50 + [False] * 50)
    perfect = tuple(np.where(y, 1.0, 0.0) + np.linspace(0, 0.01, 100))
    spec = q.MetricSpec(metric="roc_auc", role="guardrail", margin=0.01, horizon=100)
    auc = q.Auc(
        horizon=100, available=100, paired=True, labels=tuple(y), champion=perfect, challenger=perfect
    )
    v = verdict(
        judge(
            shadow(quality=q.QualityStats(auc=auc)), replace(NOTHING, quality=q.QualityPolicy(gates=(spec,)))
        ),
        "roc_auc",
    )
    assert q.delong(y, perfect, perfect)[2] == 0.0  # both arms separate the classes perfectly
    assert (v.outcome, v.p_value, v.statistic) == (Outcome.PASS, 1.0, 0.0)


def test_a_moderate_tail_harm_doubles_its_p_value_for_the_two_tests() -> None:
    policy = replace(NOTHING, regression=GateSpec(role="required", margin=0.05, min_samples=200))
    tail = ErrorTail(
        cap=3.0, quantile=0.99, champion=Proportion(n=5_000, count=50), challenger=Proportion(n=5_000, count=140),
        paired=PairedCounts(n=5_000, worse=100, better=10),
    )  # fmt: skip
    v = verdict(judge(_regression_metrics(error_tail=tail), policy), "regression")
    se = math.sqrt(stats.tango_null_variance(100, 10, 5_000, null=0.01).variance)
    tail_p = stats.confidence_sequence_p_value(90 / 5_000, se, 5_000, null=0.01).p_value
    assert 1e-5 < tail_p < 1e-3
    assert v.outcome == Outcome.FAIL
    assert v.p_value == pytest.approx(2.0 * tail_p, rel=1e-9)


def test_promotion_names_every_required_gate_and_coverage_uses_the_policy_alpha() -> None:
    policy = replace(
        NOTHING,
        accuracy=GateSpec(role="required", margin=0.01, min_samples=200),
        error_rate=GateSpec(role="required", margin=0.005, min_samples=200),
    )
    m = shadow(
        paired_correct=PairedCounts(n=20_000, worse=500, better=520),
        paired_errors=PairedCounts(n=20_000, worse=60, better=60),
    )
    assert judge(m, policy).reason == "every required gate is non-inferior: error_rate, accuracy"
    n, count = 2_000, 1_100
    cov = replace(NOTHING, alpha=0.2, coverage=GateSpec(role="required", margin=0.5, min_samples=100))
    v = verdict(judge(shadow(coverage=Proportion(n=n, count=count)), cov), "coverage")
    se = bernoulli_se(count, n)
    hw = half_width(se, n, alpha=0.2)
    assert (v.bound, v.interval.upper) == (
        pytest.approx(0.55 - hw, rel=1e-9),
        pytest.approx(0.55 + hw, rel=1e-9),
    )  # type: ignore[union-attr]


def test_veto_burn_in_verdicts_carry_no_numbers() -> None:
    m = StepMetrics(
        mode="canary",
        champion=Proportion(n=10, count=0),
        challenger=Proportion(n=10, count=0),
        challenger_weight=0.5,
    )
    edges = (0.0, 10.0, math.inf)
    h = Histogram(edges=edges, champion=(5, 5), challenger=(5, 5))
    j = judge(replace(m, latency=h), replace(NOTHING, error_rate_slo=0.01, latency_p99_slo_ms=20.0))
    for gate in ("srm", "error_rate_slo", "latency_p99_slo"):
        v = verdict(j, gate)
        assert (v.role, v.outcome, v.p_value) == ("veto", Outcome.NO_DATA, None)
        assert math.isnan(v.statistic) and math.isnan(v.effect)
        assert math.isnan(v.bound) or gate == "srm"  # the SRM verdict shows its level as the bound
    assert j.decision == "continue"


def test_the_latency_slo_shows_the_lower_bound_of_the_challenger_p99() -> None:
    edges = (0.0, 10.0, 20.0, 40.0, 80.0, math.inf)
    challenger = (5_000, 3_000, 1_500, 400, 100)
    h = Histogram(edges=edges, champion=(9_000, 1_000, 0, 0, 0), challenger=challenger)
    v = verdict(judge(shadow(latency=h), replace(NOTHING, latency_p99_slo_ms=30.0)), "latency_p99_slo")
    assert v.bound == stats.quantile_confidence_sequence(challenger, edges, 0.99, alpha=0.05).lower
    assert v.bound == 40.0  # 5% at or above 40 ms proves the p99 there, 1% at 80 ms does not


def test_two_failing_hold_gates_are_both_named() -> None:
    from controller.core import metrics as q

    rng = np.random.default_rng(21)
    y = rng.random(400) < 0.4
    s1, s2 = y * 1.0 + rng.normal(0, 0.7, 400), y * 0.5 + rng.normal(0, 0.7, 400)
    specs = tuple(q.MetricSpec(metric="roc_auc", role="hold", margin=mg, horizon=400) for mg in (0.0, 0.01))
    auc = q.Auc(
        horizon=400, available=400, paired=True, labels=tuple(y), champion=tuple(s1), challenger=tuple(s2)
    )
    j = judge(shadow(quality=q.QualityStats(auc=auc)), replace(NOTHING, quality=q.QualityPolicy(gates=specs)))
    held = [v for v in j.verdicts if v.gate == "roc_auc"]
    assert [v.outcome for v in held] == [Outcome.FAIL, Outcome.FAIL]
    assert j.decision == "continue"
    assert j.reason == "hold: " + "; ".join(f"roc_auc: {v.reason}" for v in held)
