"""controller.core.stats against published values from sources independent of this project.

Rows R1–R12 are the table of /work/shared/reference/statistics.md; the others cite their source inline.
Tolerances: exact tests are compared exactly (as fractions where the source prints them); closed forms
are compared to the digits the source prints (half a unit of the last printed digit), or 1e-6 relative
when the source prints full precision.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from controller.core import histograms, stats


def printed(value: float, digits: int) -> float:
    """Tolerance of a value printed with ``digits`` decimals: half a unit of the last digit."""
    return 0.5 * 10.0**-digits


# --- R1, R2: McNemar -------------------------------------------------------------------------------


def test_mcnemar_matches_r_on_presidential_approval_data_r1() -> None:
    assert stats.mcnemar(150, 86, method="asymptotic").statistic == pytest.approx(
        17.356, abs=printed(17.356, 3)
    )
    assert stats.mcnemar(150, 86, method="asymptotic").p_value == pytest.approx(3.0993e-05, rel=2e-5)
    assert stats.mcnemar(150, 86, method="corrected").statistic == pytest.approx(16.818, abs=printed(0, 3))
    assert stats.mcnemar(150, 86, method="corrected").p_value == pytest.approx(4.1146e-05, rel=2e-5)
    assert stats.mcnemar(150, 86, method="exact").p_value == pytest.approx(3.7159e-05, rel=2e-5)


def test_mcnemar_small_sample_matches_fagerland_r2() -> None:
    assert stats.mcnemar(1, 7, method="exact").p_value == 18 / 256
    assert stats.mcnemar(1, 7, method="midp").p_value == pytest.approx(10 / 256, rel=1e-12)
    assert stats.mcnemar(1, 7, method="asymptotic").p_value == pytest.approx(0.0339, abs=printed(0, 4))
    assert stats.mcnemar(1, 7, method="corrected").p_value == pytest.approx(0.0771, abs=printed(0, 4))


def test_mcnemar_is_symmetric_and_uninformative_without_discordance() -> None:
    assert stats.mcnemar(7, 1, method="exact").p_value == stats.mcnemar(1, 7, method="exact").p_value
    assert stats.mcnemar(0, 0, method="midp").p_value == 1.0
    assert stats.mcnemar(4, 4, method="midp").p_value == 1.0


def test_mcnemar_has_no_default_method_unlike_r_and_statsmodels() -> None:
    # R defaults to the corrected chi-square, statsmodels to the exact test: we make callers choose.
    with pytest.raises(TypeError):
        stats.mcnemar(150, 86)  # type: ignore[call-arg]


# --- Tango -----------------------------------------------------------------------------------------


# --- Wilson and Newcombe ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "n", "lower", "upper"),
    [
        (81, 263, 0.2553, 0.3662),  # R9, Newcombe (1998) Stat Med 17:857, Table II
        (15, 148, 0.0624, 0.1605),  # same table
        (0, 20, 0.0000, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_newcombe_1998(x: int, n: int, lower: float, upper: float) -> None:
    iv = stats.wilson_interval(x, n)
    assert iv.lower == pytest.approx(lower, abs=printed(0, 4))
    assert iv.upper == pytest.approx(upper, abs=printed(0, 4))


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "lower", "upper"),
    [
        (56, 70, 48, 80, 0.0524, 0.3339),  # Newcombe (1998) Stat Med 17:873, Table II, method 10
        (9, 10, 3, 10, 0.1705, 0.8090),
    ],
)
def test_newcombe_hybrid_score_interval_matches_method_10(
    x1: int, n1: int, x2: int, n2: int, lower: float, upper: float
) -> None:
    iv = stats.newcombe_interval(x1, n1, x2, n2)
    assert iv.lower == pytest.approx(lower, abs=printed(0, 4))
    assert iv.upper == pytest.approx(upper, abs=printed(0, 4))


# --- R3, R4: Wilcoxon signed rank ------------------------------------------------------------------

# --- R5, R6: t tests -------------------------------------------------------------------------------

# --- R7 and exact tests for error rates ------------------------------------------------------------


# --- R8: SRM ---------------------------------------------------------------------------------------


def test_srm_chi_square_matches_r_goodness_of_fit_r8() -> None:
    r = stats.srm_test((89, 37, 30, 28, 2), (0.40, 0.20, 0.20, 0.19, 0.01))
    assert r.statistic == pytest.approx(5.7947, abs=printed(0, 4))
    assert r.df == 4
    assert r.p_value == pytest.approx(0.2150, abs=printed(0, 4))
    assert r.method == "ok"


def test_srm_accepts_weights_not_counts_and_flags_a_skewed_split() -> None:
    assert stats.srm_test((5000, 5000), (9, 1)).method == "srm"
    assert stats.srm_test((9000, 1000), (0.9, 0.1)).statistic == 0.0


# --- R10: Holm -------------------------------------------------------------------------------------


def test_holm_matches_worked_example_r10() -> None:
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert list(adjusted <= 0.05) == [True, False, False, True]


# --- R11: confidence sequences (GrowthBook test suite) ---------------------------------------------

GB_MEAN = 0.23437666666666668
GB_SE = 0.12983081254184736


def test_one_sided_confidence_sequence_matches_growthbook_r11() -> None:
    greater = stats.confidence_sequence(GB_MEAN, GB_SE, 6461, alpha=0.05, n_star=5000, side="greater")
    lesser = stats.confidence_sequence(GB_MEAN, GB_SE, 6461, alpha=0.05, n_star=5000, side="lesser")
    assert greater.lower == pytest.approx(-0.12656844172804982, rel=1e-6)
    assert greater.upper == math.inf
    assert lesser.upper == pytest.approx(0.5953217750613832, rel=1e-6)
    assert lesser.lower == -math.inf


def _growthbook_relative(
    sum_a: float, ss_a: float, n_a: int, sum_b: float, ss_b: float, n_b: int
) -> tuple[float, float]:
    """GrowthBook's input preparation: relative lift and its delta-method standard error."""
    ma, mb = sum_a / n_a, sum_b / n_b
    va, vb = (ss_a - sum_a**2 / n_a) / (n_a - 1), (ss_b - sum_b**2 / n_b) / (n_b - 1)
    var = vb / (ma**2 * n_b) + va * mb**2 / (ma**4 * n_a)
    return (mb - ma) / ma, math.sqrt(var)


def test_two_sided_confidence_sequence_matches_growthbook_sequential_tests() -> None:
    # GrowthBook test_tests.py, TestSequentialTTest: printed to 5 decimals.
    pe, se = _growthbook_relative(1396.87, 52377.9767, 3000, 2422.7, 134698.29, 3461)
    cs = stats.confidence_sequence(pe, se, 6461, alpha=0.05, n_star=1000)
    assert (cs.lower, cs.upper) == pytest.approx((-0.55844, 1.56516), abs=printed(0, 5))
    # proportions 1396/3000 vs 2422/3461, default tuning 5000
    ma, mb = 1396 / 3000, 2422 / 3461
    var = mb * (1 - mb) / (ma**2 * 3461) + ma * (1 - ma) * mb**2 / (ma**4 * 3000)
    cs = stats.confidence_sequence((mb - ma) / ma, math.sqrt(var), 6461, alpha=0.05, n_star=5000)
    assert (cs.lower, cs.upper) == pytest.approx((0.40098, 0.60675), abs=printed(0, 5))


def test_one_sided_relative_confidence_sequence_matches_growthbook() -> None:
    pe, se = _growthbook_relative(1396.87, 52377.9767, 3000, 2422.7, 134698.29, 3461)
    greater = stats.confidence_sequence(pe, se, 6461, alpha=0.05, n_star=5000, side="greater")
    lesser = stats.confidence_sequence(pe, se, 6461, alpha=0.05, n_star=5000, side="lesser")
    assert greater.lower == pytest.approx(-0.42356454602790883, rel=1e-6)
    assert lesser.upper == pytest.approx(1.4302867177403806, rel=1e-6)


def test_always_valid_p_value_is_the_exact_root_of_growthbook_bisection() -> None:
    # GrowthBook bisects to pValue = 0.46316491943359384 (tolerance 1e-6 on the bound); ours is closed form.
    p = stats.confidence_sequence_p_value(GB_MEAN, GB_SE, 6461, alpha=0.05, n_star=5000, side="greater")
    assert p.p_value == pytest.approx(0.46316491943359384, abs=2e-4)
    at_p = stats.confidence_sequence(GB_MEAN, GB_SE, 6461, alpha=p.p_value, rho=p.rho, side="greater")
    assert at_p.lower == pytest.approx(0.0, abs=1e-12)


def test_confidence_sequence_is_wider_than_the_fixed_n_interval_and_vectorises() -> None:
    cs = stats.confidence_sequence(np.zeros(3), np.full(3, 0.01), np.array([100, 1000, 10000]), alpha=0.05)
    fixed = sps.norm.ppf(0.975) * 0.01
    assert np.all(cs.upper > fixed)  # type: ignore[operator]


# --- R12: sample size ------------------------------------------------------------------------------


def test_connor_sample_size_matches_r12() -> None:
    n = stats.mcnemar_sample_size(0.45, 0.05, alpha=0.05, power=0.8)
    assert n == pytest.approx(22.01, abs=printed(0, 2))
    assert math.ceil(n) == 23


def test_plan_needs_more_pairs_when_monitoring_continuously() -> None:
    plan = stats.plan_labelled_pairs(margin=0.01, discordance=0.05, alpha=0.05, power=0.8)
    z = sps.norm.ppf(0.95) + sps.norm.ppf(0.8)
    assert plan.fixed_n == math.ceil(z**2 * 0.05 / 0.01**2)
    assert plan.always_valid_n > plan.fixed_n


# --- distributions and agreement -------------------------------------------------------------------


def test_jensen_shannon_reports_bits_and_pins_scipy_distance_in_nats() -> None:
    # SciPy jensenshannon docs: ([1, 0, 0], [0, 1, 0], base 2) = 1.0; ([1, 0], [0.5, 0.5]) = 0.46450140402245893
    assert stats.jensen_shannon([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]) == pytest.approx((1.0, 1.0))
    divergence, distance = stats.jensen_shannon([1.0, 0.0], [0.5, 0.5])
    assert distance == pytest.approx(0.46450140402245893 / math.sqrt(math.log(2)), rel=1e-12)
    assert divergence == pytest.approx(0.46450140402245893**2 / math.log(2), rel=1e-12)


def test_cohen_kappa_matches_textbook_example() -> None:
    # Wikipedia "Cohen's kappa" worked example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> 0.4
    r = stats.cohen_kappa([[20, 5], [10, 15]])
    assert (r.observed, r.expected) == pytest.approx((0.7, 0.5))
    assert r.kappa == pytest.approx(0.4)


def test_agreement_counts_identical_predictions_with_wilson_interval() -> None:
    r = stats.agreement(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 1]))
    assert (r.agree, r.n, r.share) == (3, 4, 0.75)
    assert stats.agreement(agree=81, n=263).interval.lower == pytest.approx(0.2553, abs=printed(0, 4))


def test_psi_noise_floor_predicts_the_null_expectation() -> None:
    rng = np.random.default_rng(11)
    values = [stats.psi(rng.normal(size=2000), rng.normal(size=1000), bins=10).psi for _ in range(400)]
    floor = stats.psi(rng.normal(size=2000), rng.normal(size=1000), bins=10)
    assert floor.noise_floor == pytest.approx(9 * (1 / 2000 + 1 / 1000))
    assert np.mean(values) == pytest.approx(floor.noise_floor, rel=0.15)
    assert np.mean(np.array(values) > floor.threshold) < 0.03


def test_psi_sees_a_real_shift_above_the_noise() -> None:
    rng = np.random.default_rng(3)
    r = stats.psi(rng.normal(size=5000), rng.normal(0.5, 1.0, size=5000))
    assert r.exceeds_noise and r.psi > 0.1


def test_ks_test_matches_scipy_and_is_silent_on_identical_samples() -> None:
    x = np.arange(100.0)
    assert stats.ks_test(x, x).statistic == 0.0
    assert stats.ks_test(x, x).p_value == 1.0
    assert stats.ks_test(x, x + 50).statistic == pytest.approx(0.5)


# --- latency ---------------------------------------------------------------------------------------


def test_histogram_quantile_is_within_the_bucket_growth() -> None:
    rng = np.random.default_rng(2)
    x = rng.lognormal(3.0, 0.6, 50_000)
    edges = stats.latency_edges(growth=1.05)
    q = stats.quantile_from_histogram(stats.histogram_counts(x, edges), edges, 0.99)
    assert q == pytest.approx(np.quantile(x, 0.99), rel=0.05)


def _numpy_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """The NumPy reading the judge used before controller.core.histograms (the reference)."""
    c, e = np.asarray(counts, dtype=float), np.asarray(edges, dtype=float)
    cum = np.cumsum(c)
    target = q * c.sum()
    i = min(int(np.searchsorted(cum, target, side="left")), c.size - 1)
    lo, hi = e[i], e[i + 1]
    if not math.isfinite(hi):
        return float(lo)
    return float(lo + ((target - (cum[i] - c[i])) / c[i] if c[i] > 0 else 0.0) * (hi - lo))


def test_plain_python_latency_histograms_read_what_numpy_reads() -> None:
    # `rollout status` reads p50/p99 without NumPy (controller.core.histograms): same edges, same figures
    for start, stop, growth in ((0.1, 120_000.0, 1.05), (1.0, 500.0, 1.25), (2.0, 64.0, 2.0)):
        k = math.ceil(math.log(stop / start) / math.log(growth))
        numpy_edges = np.concatenate([[0.0], start * growth ** np.arange(k + 1), [np.inf]])
        ours = stats.latency_edges(start_ms=start, stop_ms=stop, growth=growth)
        # NumPy's vectorised power may differ from the scalar one in the last bit, depending on the CPU's
        # instruction set: the same edges to a few ulps (buckets are filled in SQL by index, not by edge)
        np.testing.assert_allclose(ours, numpy_edges, rtol=1e-14, atol=0)
        plain = histograms.latency_edges(start_ms=start, stop_ms=stop, growth=growth)
        np.testing.assert_allclose(plain, numpy_edges, rtol=1e-14, atol=0)
        assert len(plain) == len(numpy_edges) and plain[0] == 0.0 and plain[-1] == math.inf
    rng = np.random.default_rng(7)
    edges = stats.latency_edges()
    for size in (1, 7, 400, 20_000):
        counts = stats.histogram_counts(rng.lognormal(3.0, 1.0, size), edges)
        for q in (0.0, 0.01, 0.5, 0.9, 0.99, 1.0):
            expected = _numpy_quantile(counts, edges, q)
            assert stats.quantile_from_histogram(counts, edges, q) == pytest.approx(expected, rel=1e-12)
            assert histograms.quantile_from_histogram(
                tuple(counts.tolist()), tuple(edges), q
            ) == pytest.approx(expected, rel=1e-12)


# --- Variance under the null hypothesis (issue 14) -------------------------------------------------


def _fm_mle(x1: int, n1: int, x2: int, n2: int, null: float) -> float:
    """Independent path: maximise the two-binomial likelihood under p2 - p1 = null numerically."""
    from scipy.optimize import minimize_scalar

    def negloglik(r2: float) -> float:
        r1 = r2 - null
        return -(
            x2 * math.log(r2)
            + (n2 - x2) * math.log(1 - r2)
            + x1 * math.log(r1)
            + (n1 - x1) * math.log(1 - r1)
        )

    lo, hi = max(0.0, null) + 1e-12, min(1.0, 1.0 + null) - 1e-12
    return float(minimize_scalar(negloglik, bounds=(lo, hi), method="bounded", options={"xatol": 1e-14}).x)


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "null"),
    [(30, 400, 45, 380, 0.01), (3, 3000, 0, 300, 0.002), (900, 1000, 170, 200, -0.01)],
)
def test_farrington_manning_restricted_estimates_maximise_the_null_likelihood(
    x1: int, n1: int, x2: int, n2: int, null: float
) -> None:
    r = stats.farrington_manning(x1, n1, x2, n2, null=null)
    r2 = _fm_mle(x1, n1, x2, n2, null)
    assert r.restricted[1] == pytest.approx(r2, abs=1e-7)
    assert r.restricted[1] - r.restricted[0] == pytest.approx(null, abs=1e-12)
    expected_var = r2 * (1 - r2) / n2 + (r2 - null) * (1 - r2 + null) / n1
    assert r.variance == pytest.approx(expected_var, rel=1e-6)


def test_farrington_manning_at_zero_equals_statsmodels_and_pearson_chi_square() -> None:
    from statsmodels.stats.proportion import score_test_proportions_2indep

    sm = score_test_proportions_2indep(
        45, 380, 30, 400, value=0, compare="diff", correction=False, return_results=True
    )
    r = stats.farrington_manning(30, 400, 45, 380, null=0.0)
    assert r.statistic == pytest.approx(float(sm.statistic), rel=1e-9)
    chi2 = sps.chi2_contingency([[45, 335], [30, 370]], correction=False)[0]
    assert r.statistic**2 == pytest.approx(chi2, rel=1e-9)


def test_farrington_manning_pins_statsmodels_cubic_which_misses_the_score_equation() -> None:
    # statsmodels 0.14-0.15 computes Miettinen-Nurminen's cubic with count0 * diff where the paper has
    # nobs0 * diff: its restricted estimate does not zero the score, ours does (and matches the
    # numerical maximum above); the statistics differ in the fourth digit.
    from statsmodels.stats.proportion import score_test_proportions_2indep

    sm = score_test_proportions_2indep(
        45, 380, 30, 400, value=0.01, compare="diff", correction=False, return_results=True
    )
    r = stats.farrington_manning(30, 400, 45, 380, null=0.01)

    def score(r2: float) -> float:
        r1 = r2 - 0.01
        return 45 / r2 - 335 / (1 - r2) + 30 / r1 - 370 / (1 - r1)

    assert abs(score(r.restricted[1])) < 1e-6
    assert abs(score(float(sm.prop1_null))) > 0.1
    assert r.statistic == pytest.approx(float(sm.statistic), abs=1e-2)


def test_farrington_manning_variance_is_positive_without_events_unlike_wald() -> None:
    r = stats.farrington_manning(0, 3000, 0, 300, null=0.002)
    assert r.variance > 0.002 * 0.998 / 300 * 0.9  # about the challenger's binomial variance at 0.2%
    assert r.statistic < 0  # no events: evidence of non-inferiority, not of harm


def test_tango_null_variance_is_mcnemar_at_zero_r1_and_the_restricted_mle_otherwise() -> None:
    r = stats.tango_null_variance(150, 86, 1600, null=0.0)
    assert r.statistic**2 == pytest.approx(17.356, abs=printed(17.356, 3))  # R1, uncorrected McNemar
    # non-zero null: the same restricted estimate as maximising the multinomial likelihood numerically
    from scipy.optimize import minimize_scalar

    b, c, n, null = 30, 18, 400, 0.05  # H0: P(b) - P(c) = 0.05

    def negloglik(q: float) -> float:
        return -(b * math.log(q) + c * math.log(q - null) + (n - b - c) * math.log(1 - 2 * q + null))

    q = minimize_scalar(
        negloglik, bounds=(null + 1e-9, (1 + null) / 2 - 1e-9), method="bounded", options={"xatol": 1e-13}
    ).x
    r = stats.tango_null_variance(b, c, n, null=null)
    assert r.variance == pytest.approx((2 * q - null - null**2) / n, rel=1e-6)


# --- Cluster-robust design effect ------------------------------------------------------------------


def test_design_effect_matches_statsmodels_cluster_robust_variance_of_a_mean() -> None:
    import statsmodels.api as sm

    rng = np.random.default_rng(3)
    k = 40
    sizes = rng.integers(1, 30, k)
    groups = np.repeat(np.arange(k), sizes)
    y = (rng.random(groups.size) < np.repeat(rng.beta(2, 8, k), sizes)).astype(float)
    fit = sm.OLS(y, np.ones_like(y)).fit(cov_type="cluster", cov_kwds={"groups": groups})
    mean = y.mean()
    m_k = np.bincount(groups).astype(float)
    a_k = np.bincount(groups, weights=y)
    n = y.size
    sums = stats.ClusterSums(clusters=k, rows=n, mm=m_k @ m_k, ma=m_k @ a_k, aa=a_k @ a_k)
    rows = float(np.sum((y - mean) ** 2))
    deff = stats.design_effect(sums, rows, null=mean)
    # statsmodels' CR1 variance of the mean vs the usual s^2 / N
    assert deff * rows / (n - 1) / n == pytest.approx(float(fit.bse[0]) ** 2, rel=1e-9)


def test_design_effect_is_kish_cluster_size_for_identical_rows_and_one_for_singletons() -> None:
    # K clusters of m identical rows: Kish's deff 1 + (m - 1) * 1 = m, times CR1's K / (K - 1) over (N - 1) / N
    k, m = 10, 5
    z = np.array([1, 0, 0, 1, 0, 1, 0, 0, 0, 1], dtype=float)
    p = z.mean()
    sums = stats.ClusterSums(clusters=k, rows=k * m, mm=k * m * m, ma=m * m * z.sum(), aa=m * m * z @ z)
    rows = m * float(np.sum((z - p) ** 2))
    n = k * m
    assert stats.design_effect(sums, rows, null=p) == pytest.approx(m * k / (k - 1) * (n - 1) / n, rel=1e-12)
    half = stats.ClusterSums(
        clusters=k // 2, rows=k // 2 * m, mm=k // 2 * m * m, ma=m * m * z[:5].sum(), aa=m * m * z[:5] @ z[:5]
    )
    rest = stats.ClusterSums(
        clusters=k // 2, rows=k // 2 * m, mm=k // 2 * m * m, ma=m * m * z[5:].sum(), aa=m * m * z[5:] @ z[5:]
    )
    assert half + rest == sums  # pooling disjoint clusters (two steps) adds their sums
    single = stats.ClusterSums(clusters=k, rows=k, mm=k, ma=z.sum(), aa=z @ z)
    assert stats.design_effect(single, float(np.sum((z - p) ** 2)), null=p) == pytest.approx(1.0)  # floored


# --- Sequential SRM (Lindon & Malek 2022) ----------------------------------------------------------


def test_srm_bayes_factor_is_the_dirichlet_multinomial_over_multinomial_likelihood_ratio() -> None:
    counts, theta = [480, 520, 1010], np.array([0.25, 0.25, 0.5])
    r = stats.srm_bayes_factor(counts, [1, 1, 2], concentration=100.0)
    n = sum(counts)
    expected = sps.dirichlet_multinomial(100.0 * theta, n).logpmf(counts) - sps.multinomial(n, theta).logpmf(
        counts
    )
    assert r.log_bayes_factor == pytest.approx(float(expected), rel=1e-9)
    assert r.min_expected == pytest.approx(0.25 * n)


def test_srm_bayes_factor_rarely_vetoes_a_correct_split_however_often_it_looks() -> None:
    # 400 A/A canaries at 25%, a look after every 20 keys up to 4,000: the chi-square at the same level
    # re-tested at every look fires far more often than its nominal rate; the Bayes factor stays below.
    rng = np.random.default_rng(5)
    runs, looks, per_look, alpha = 300, 100, 40, 0.01
    to_challenger = rng.random((runs, looks * per_look)) < 0.25
    u2 = np.cumsum(to_challenger, axis=1)[:, per_look - 1 :: per_look]
    n = np.arange(per_look, looks * per_look + 1, per_look)[None, :]
    u1 = n - u2
    chi_p = sps.chi2.sf((u2 - 0.25 * n) ** 2 / (n * 0.25 * 0.75), 1)  # Pearson's X^2 for two cells
    bf_fired = sum(
        min(stats.srm_bayes_factor([a, b], [0.75, 0.25]).p_value for a, b in zip(u1[r], u2[r], strict=True))
        <= alpha
        for r in range(runs)
    )
    assert bf_fired / runs <= alpha + 3 * math.sqrt(alpha / runs)
    assert np.mean(chi_p.min(axis=1) <= alpha) > 3 * alpha
    assert stats.srm_bayes_factor([2400, 600], [0.75, 0.25]).p_value < 1e-3  # a real 20% split


# --- Always-valid exceedance shares and quantiles --------------------------------------------------


def test_exceedance_p_value_is_the_inverse_of_the_truncated_beta_mixture_integral() -> None:
    from scipy.integrate import quad

    p0, n = 0.01, 800
    b = (1 - p0) / p0
    for s, side in ((20, "greater"), (0, "lesser"), (3, "lesser")):
        lo, hi = (p0, 1.0) if side == "greater" else (0.0, p0)
        prior = quad(lambda q: sps.beta.pdf(q, 1, b), lo, hi, points=[p0])[0]
        lr = quad(
            lambda q, s=s: sps.beta.pdf(q, 1, b) * (q / p0) ** s * ((1 - q) / (1 - p0)) ** (n - s),
            lo,
            hi,
            points=[p0, 0.02],
            limit=200,
        )[0]
        p = float(stats.exceedance_p_value(s, n, share=p0, side=side))  # type: ignore[arg-type]
        assert p == pytest.approx(min(1.0, prior / lr), rel=1e-5)


def test_exceedance_p_value_keeps_its_level_under_continuous_monitoring() -> None:
    rng = np.random.default_rng(9)
    runs, n, p0, alpha = 2000, 3000, 0.01, 0.05
    s = np.cumsum(rng.random((runs, n)) < p0, axis=1)[:, 4::5]  # a look every 5 observations
    looks = np.arange(5, n + 1, 5)
    p = stats.exceedance_p_value(s, looks[None, :], share=p0, side="greater")
    fired = np.mean(p.min(axis=1) <= alpha)
    assert fired <= alpha
    # a doubled share is found
    s2 = np.cumsum(rng.random((200, n)) < 2 * p0, axis=1)[:, 4::5]
    assert (
        np.mean(stats.exceedance_p_value(s2, looks[None, :], share=p0, side="greater").min(axis=1) <= alpha)
        > 0.6
    )


def test_quantile_confidence_sequence_covers_the_true_p99() -> None:
    rng = np.random.default_rng(2)
    edges = stats.latency_edges()
    true = float(sps.lognorm.ppf(0.99, 0.6, scale=math.exp(1.0)))
    missed = 0
    for _ in range(200):
        x = rng.lognormal(1.0, 0.6, 4000)
        cs = stats.quantile_confidence_sequence(stats.histogram_counts(x, edges), edges, 0.99, alpha=0.05)
        missed += not cs.lower <= true <= cs.upper
    assert missed / 200 <= 0.05


def test_quantile_ratio_test_treats_the_champion_p99_as_estimated() -> None:
    rng = np.random.default_rng(4)
    edges = stats.latency_edges()
    false_harm = 0
    for _ in range(300):  # A/A at ratio 1.0, the margin the audit found rolling back 10-12%
        a = stats.histogram_counts(rng.lognormal(1.0, 0.6, 3000), edges)
        b = stats.histogram_counts(rng.lognormal(1.0, 0.6, 3000), edges)
        false_harm += stats.quantile_ratio_test(a, b, edges, q=0.99, ratio=1.0, alpha=0.05).harm_p <= 0.05
    assert false_harm / 300 <= 0.05
    a = stats.histogram_counts(rng.lognormal(1.0, 0.6, 3000), edges)
    slow = stats.histogram_counts(3 * rng.lognormal(1.0, 0.6, 3000), edges)
    r = stats.quantile_ratio_test(a, slow, edges, q=0.99, ratio=1.2, alpha=0.05)
    assert r.harm_p < 1e-3 and r.pass_p == 1.0
    assert r.challenger == stats.quantile_confidence_sequence(slow, edges, 0.99, alpha=0.05)
    assert r.champion == stats.quantile_confidence_sequence(a, edges, 0.99, alpha=0.05)
    # the same 3x slowdown is harmless below a 100 ms floor (true p99 ~ 3 x 11 ms)
    floor = stats.quantile_ratio_test(a, slow, edges, q=0.99, ratio=1.2, floor=100.0, alpha=0.05)
    assert floor.harm_p == 1.0 and floor.pass_p <= 0.05
