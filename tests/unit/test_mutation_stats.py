"""controller.core.stats against library and closed-form values: the tests `make mutation` runs on stats.py.

Each test compares with a source that does not share our code: statsmodels, SciPy, scikit-learn, a
published formula evaluated by another library, or counts. They were written against the mutants that
survived tests/unit/test_stats.py (bench/results/mutation.md): the method names and degrees of freedom
a result reports, the edge cases (no data, a boundary value, an invalid argument) and the one-sided
variants the published examples do not cover.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats import proportion as sm_proportion
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import normal_sample_size_one_tail
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from controller.core import stats

# --- McNemar ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("b", "c"), [(150, 86), (1, 7), (12, 3), (5, 6), (40, 40)])
def test_mcnemar_asymptotic_matches_statsmodels_chi_square(b: int, c: int) -> None:
    ours = stats.mcnemar(b, c, method="asymptotic")
    ref = sm_mcnemar([[0, b], [c, 0]], exact=False, correction=False)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours.df == 1.0
    assert ours.method == "asymptotic"


@pytest.mark.parametrize(("b", "c"), [(150, 86), (1, 7), (12, 3), (5, 7)])
def test_mcnemar_corrected_matches_statsmodels_when_the_cells_differ(b: int, c: int) -> None:
    ours = stats.mcnemar(b, c, method="corrected")
    ref = sm_mcnemar([[0, b], [c, 0]], exact=False, correction=True)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert (ours.df, ours.method) == (1.0, "corrected")


def test_mcnemar_corrected_is_zero_for_equal_cells_as_r_which_skips_the_correction() -> None:
    # R's mcnemar.test applies Yates' correction only when the table is not symmetric: b = c gives 0.
    r = stats.mcnemar(6, 6, method="corrected")
    assert r.statistic == 0.0
    assert r.p_value == 1.0


@pytest.mark.parametrize(("b", "c"), [(150, 86), (1, 7), (9, 2), (4, 4), (0, 5)])
def test_mcnemar_exact_is_scipy_binomtest_on_the_smaller_cell(b: int, c: int) -> None:
    ours = stats.mcnemar(b, c, method="exact")
    ref = sps.binomtest(min(b, c), b + c, 0.5, alternative="two-sided")
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert ours.statistic == float(min(b, c))
    assert ours.df is None
    assert ours.method == "exact"


def test_mcnemar_mid_p_subtracts_the_point_probability_and_stays_a_probability() -> None:
    # Fagerland et al. (2013): mid-p = exact p - P(X = k) for X ~ Bin(b + c, 1/2).
    r = stats.mcnemar(9, 2, method="midp")
    exact = sps.binomtest(2, 11, 0.5).pvalue
    assert r.p_value == pytest.approx(exact - sps.binom.pmf(2, 11, 0.5), rel=1e-12)
    assert (r.statistic, r.method) == (2.0, "midp")
    assert stats.mcnemar(4, 4, method="exact").p_value == 1.0  # 2 P(X <= 4) = 1.27 before the cap


def test_mcnemar_without_discordant_pairs_reports_nothing_and_refuses_bad_input() -> None:
    r = stats.mcnemar(0, 0, method="asymptotic")
    assert (r.statistic, r.p_value, r.df, r.method) == (0.0, 1.0, None, "asymptotic")
    with pytest.raises(ValueError, match="non-negative"):
        stats.mcnemar(-1, 3, method="exact")
    with pytest.raises(ValueError, match="non-negative"):
        stats.mcnemar(3, -1, method="exact")
    with pytest.raises(ValueError, match="unknown McNemar method"):
        stats.mcnemar(3, 4, method="wald")  # type: ignore[arg-type]


# --- Wilson interval and Interval -------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_wilson_interval_matches_statsmodels_elementwise_on_arrays(confidence: float) -> None:
    x = np.array([0, 1, 7, 50, 99, 100, 0, 1])
    n = np.array([100, 100, 30, 100, 100, 100, 1, 2])
    iv = stats.wilson_interval(x, n, confidence=confidence)
    lo, hi = proportion_confint(x, n, alpha=1 - confidence, method="wilson")
    np.testing.assert_allclose(iv.lower, lo, atol=1e-12)
    np.testing.assert_allclose(iv.upper, hi, atol=1e-12)
    assert iv.lower[0] == 0.0 and iv.upper[5] == 1.0


def test_wilson_interval_of_nothing_is_the_whole_unit_interval() -> None:
    assert stats.wilson_interval(0, 0) == stats.Interval(0.0, 1.0)
    one = stats.wilson_interval(3, 10, confidence=0.9)
    lo, hi = proportion_confint(3, 10, alpha=0.1, method="wilson")
    assert (one.lower, one.upper) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert isinstance(one.lower, float)


def test_interval_contains_both_of_its_ends() -> None:
    iv = stats.Interval(0.25, 0.5)
    assert iv.contains(0.25) and iv.contains(0.5) and iv.contains(0.3)
    assert not iv.contains(0.2) and not iv.contains(0.6)


# --- Confidence sequences ---------------------------------------------------------------------------


def _gb_rho(alpha: float, n_star: float) -> float:
    """GrowthBook's rho (gbstats.frequentist.sequential), for a two-sided sequence at level alpha."""
    return math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / n_star)


def test_confidence_sequence_lesser_side_is_open_below_and_matches_growthbook_r11() -> None:
    iv = stats.confidence_sequence(0.23437666666666668, 0.12983081254184736, 6461, side="lesser")
    assert iv.lower == -math.inf
    assert iv.upper == pytest.approx(0.5953217750613832, rel=1e-9)
    greater = stats.confidence_sequence(0.23437666666666668, 0.12983081254184736, 6461, side="greater")
    assert greater.upper == math.inf


def test_confidence_sequence_with_no_observations_is_unbounded() -> None:
    iv = stats.confidence_sequence(np.array([0.1, 0.1]), np.array([0.0, 0.01]), np.array([0, 100]))
    assert iv.lower[0] == -math.inf and iv.upper[0] == math.inf
    assert math.isfinite(iv.lower[1]) and math.isfinite(iv.upper[1])


def test_confidence_sequence_given_rho_uses_it_in_the_waudby_smith_half_width() -> None:
    # Two-sided half-width sqrt(s^2) sqrt(2 (n r^2 + 1) / (n r)^2 log(sqrt(n r^2 + 1) / alpha)), r given.
    se, n, alpha, r = 0.02, 400.0, 0.1, 0.03
    s2 = se * se * n
    half = math.sqrt(s2) * math.sqrt(
        2 * (n * r * r + 1) / (n * r) ** 2 * math.log(math.sqrt(n * r * r + 1) / alpha)
    )
    iv = stats.confidence_sequence(0.5, se, n, alpha=alpha, rho=r)
    assert (iv.lower, iv.upper) == (
        pytest.approx(0.5 - half, rel=1e-12),
        pytest.approx(0.5 + half, rel=1e-12),
    )
    default = stats.confidence_sequence(0.5, se, n, alpha=alpha, n_star=800.0)
    r0 = _gb_rho(alpha, 800.0)
    half0 = math.sqrt(s2) * math.sqrt(
        2 * (n * r0 * r0 + 1) / (n * r0) ** 2 * math.log(math.sqrt(n * r0 * r0 + 1) / alpha)
    )
    assert default.upper == pytest.approx(0.5 + half0, rel=1e-12)


def test_always_valid_p_value_lesser_side_mirrors_greater_and_is_one_on_the_wrong_side() -> None:
    se, n = 0.01, 2000
    up = stats.confidence_sequence_p_value(0.03, se, n, null=0.0, side="greater").p_value
    down = stats.confidence_sequence_p_value(-0.03, se, n, null=0.0, side="lesser").p_value
    assert up == pytest.approx(down, rel=1e-12)
    assert 0.0 < up < 0.05
    assert stats.confidence_sequence_p_value(0.03, se, n, side="lesser").p_value == 1.0
    assert stats.confidence_sequence_p_value(0.03, se, 0, side="greater").p_value == 1.0
    # The null shifts the mean: testing 0.05 against null 0.02 is testing 0.03 against 0.
    shifted = stats.confidence_sequence_p_value(0.05, se, n, null=0.02, side="greater").p_value
    assert shifted == pytest.approx(up, rel=1e-9)
    # p <= alpha exactly when the one-sided sequence at level alpha excludes the null.
    for alpha in (0.01, 0.05, 0.2):
        p = stats.confidence_sequence_p_value(0.03, se, n, alpha=alpha).p_value
        lower = stats.confidence_sequence(0.03, se, n, alpha=alpha, side="greater").lower
        assert (p <= alpha) == (lower > 0.0)
        assert stats.confidence_sequence_p_value(0.03, se, n, alpha=alpha).rho == pytest.approx(
            _gb_rho(2 * alpha, 5000.0), rel=1e-12
        )


# --- Histograms and latency --------------------------------------------------------------------------


def test_latency_edges_are_log_spaced_from_zero_to_infinity_past_the_stop() -> None:
    e = stats.latency_edges(start_ms=1.0, stop_ms=100.0, growth=2.0)
    np.testing.assert_allclose(e, [0.0, 1, 2, 4, 8, 16, 32, 64, 128, np.inf])
    d = stats.latency_edges()
    assert d[0] == 0.0 and d[1] == pytest.approx(0.1) and d[-1] == math.inf
    assert d[-2] >= 120_000.0 > d[-3]
    np.testing.assert_allclose(d[2:-1] / d[1:-2], 1.05)


def test_histogram_counts_match_numpy_and_clip_out_of_range_values() -> None:
    rng = np.random.default_rng(3)
    values = rng.exponential(20.0, size=500)
    edges = stats.latency_edges(start_ms=1.0, stop_ms=400.0, growth=1.5)
    ours = stats.histogram_counts(values, edges)
    ref, _ = np.histogram(values, bins=edges[:-1].tolist() + [1e12])
    np.testing.assert_array_equal(ours, ref)
    # -1 falls below the first edge and counts in the first bucket, exactly an edge counts above it.
    np.testing.assert_array_equal(
        stats.histogram_counts([-1.0, 1.0, 2.0, 5.0], [0.0, 1.0, 2.0, 3.0]), [1, 1, 2]
    )


def test_quantile_from_histogram_interpolates_inside_the_bucket() -> None:
    # 10 values spread evenly over [1, 2): the median is at 1.5, the 10% quantile at 1.1.
    assert stats.quantile_from_histogram([0, 10, 0], [0.0, 1.0, 2.0, 3.0], 0.5) == pytest.approx(1.5)
    assert stats.quantile_from_histogram([0, 10, 0], [0.0, 1.0, 2.0, 3.0], 0.1) == pytest.approx(1.1)
    assert stats.quantile_from_histogram([5, 5, 0], [0.0, 1.0, 2.0, 3.0], 0.75) == pytest.approx(1.5)
    assert stats.quantile_from_histogram([1, 1, 2], [0.0, 1.0, 2.0, math.inf], 0.9) == 2.0
    assert stats.quantile_from_histogram([2, 0], [0.0, 1.0, 2.0], 1.0) == pytest.approx(1.0)
    assert math.isnan(stats.quantile_from_histogram([0, 0], [0.0, 1.0, 2.0], 0.5))


def test_share_above_counts_whole_buckets_and_a_linear_part_of_the_threshold_bucket() -> None:
    edges = [0.0, 10.0, 20.0, 40.0, math.inf]
    counts = [4, 10, 6, 3]
    assert stats.share_above(counts, edges, 15.0) == pytest.approx(5 + 6 + 3)
    assert stats.share_above(counts, edges, 10.0) == pytest.approx(10 + 6 + 3)
    assert stats.share_above(counts, edges, 30.0) == pytest.approx(3 + 3)
    assert stats.share_above(counts, edges, 100.0) == 3.0  # the open last bucket counts whole
    assert stats.share_above(counts, edges, 0.0) == pytest.approx(23.0)
    assert stats.share_above(counts, edges, math.inf) == 3.0  # past every edge: still the open bucket
    # a zero-width last bucket cannot be split linearly: it counts whole
    assert stats.share_above([1, 2, 3], [0.0, 10.0, 20.0, 20.0], 25.0) == 3.0


# --- Distributions and agreement ---------------------------------------------------------------------


def test_psi_is_the_symmetric_kl_divergence_of_scipy_with_its_chi_square_noise_floor() -> None:
    e = np.array([30, 50, 20, 0])
    a = np.array([20, 40, 35, 5])
    r = stats.psi_from_counts(e, a)
    pe = np.maximum(e / e.sum(), 1e-4)
    pa = np.maximum(a / a.sum(), 1e-4)
    assert r.psi == pytest.approx(np.sum(rel_entr(pa, pe) + rel_entr(pe, pa)), rel=1e-9)
    scale = 1 / 100 + 1 / 100
    assert (r.bins, r.n_expected, r.n_actual) == (4, 100, 100)
    assert r.noise_floor == pytest.approx(3 * scale)
    assert r.threshold == pytest.approx(sps.chi2.ppf(0.99, 3) * scale)
    assert stats.psi_from_counts(e, a, quantile=0.9).threshold == pytest.approx(sps.chi2.ppf(0.9, 3) * scale)
    assert r.exceeds_noise == (r.psi > r.threshold)
    coarse = stats.psi_from_counts(e, a, eps=0.01)
    pe2, pa2 = np.maximum(e / 100, 0.01), np.maximum(a / 100, 0.01)
    assert coarse.psi == pytest.approx(np.sum(rel_entr(pa2, pe2) + rel_entr(pe2, pa2)), rel=1e-9)


def test_psi_of_an_empty_histogram_is_undefined_and_one_bin_keeps_one_degree_of_freedom() -> None:
    empty = stats.psi_from_counts([0, 0], [3, 4])
    assert (
        math.isnan(empty.psi) and math.isnan(empty.threshold) and (empty.n_expected, empty.n_actual) == (0, 7)
    )
    assert math.isnan(stats.psi_from_counts([3, 4], [0, 0]).noise_floor)
    one = stats.psi_from_counts([10, 0], [5, 0])
    assert one.psi == 0.0 and one.bins == 1
    assert one.noise_floor == pytest.approx(1 / 10 + 1 / 5)


def test_psi_of_samples_cuts_equal_frequency_bins_on_the_expected_sample() -> None:
    expected = np.arange(1000.0)
    actual = np.arange(1000.0) + 500.0
    r = stats.psi(expected, actual, bins=4)
    ex_counts = [250, 250, 250, 250]
    ac_counts = [0, 0, 250, 750]  # cuts at 249.75, 499.5, 749.25
    ref = stats.psi_from_counts(ex_counts, ac_counts)
    assert r.psi == pytest.approx(ref.psi, rel=1e-12)
    assert r.bins == 4
    assert stats.psi(expected, actual, bins=4, eps=0.01).psi == pytest.approx(
        stats.psi_from_counts(ex_counts, ac_counts, eps=0.01).psi, rel=1e-12
    )


def test_jensen_shannon_matches_scipy_in_bits_with_empty_cells_and_unnormalised_input() -> None:
    p = [10, 0, 30, 60]
    q = [0.2, 0.5, 0.3, 0.0]
    div, dist = stats.jensen_shannon(p, q)
    ref = jensenshannon(p, q, base=2)
    assert dist == pytest.approx(ref, rel=1e-9)
    assert div == pytest.approx(ref**2, rel=1e-9)
    assert stats.jensen_shannon([1, 0], [0, 1]) == (pytest.approx(1.0), pytest.approx(1.0))
    assert stats.jensen_shannon([2, 2], [5, 5]) == (0.0, 0.0)


def test_cohen_kappa_matches_scikit_learn_on_the_rows_of_the_table() -> None:
    table = np.array([[20, 5, 1], [10, 30, 4], [2, 3, 25]])
    y1 = np.repeat(np.repeat(np.arange(3), 3), table.ravel())
    y2 = np.repeat(np.tile(np.arange(3), 3), table.ravel())
    r = stats.cohen_kappa(table)
    assert r.kappa == pytest.approx(cohen_kappa_score(y1, y2), rel=1e-12)
    assert r.observed == pytest.approx(75 / 100)
    assert r.expected == pytest.approx(float(np.sum(table.sum(0) * table.sum(1))) / 100**2)
    assert stats.cohen_kappa([[7, 0], [0, 0]]).kappa == 1.0  # both raters always say the same class
    # counts in the billions: kappa depends on shares only (integer arithmetic would overflow)
    big = stats.cohen_kappa(table * 200_000_000)
    assert big.kappa == pytest.approx(r.kappa, rel=1e-12)


def test_agreement_from_arrays_equals_agreement_from_counts() -> None:
    r = stats.agreement([1, 2, 3, 4, 5], [1, 2, 0, 4, 0], confidence=0.9)
    assert (r.agree, r.n, r.share) == (3, 5, 0.6)
    lo, hi = proportion_confint(3, 5, alpha=0.1, method="wilson")
    assert (r.interval.lower, r.interval.upper) == (pytest.approx(lo), pytest.approx(hi))
    assert stats.agreement(agree=3, n=5, confidence=0.9) == r
    # arrays win unless both counts are given
    assert stats.agreement([1, 2, 3, 4, 5], [1, 2, 0, 4, 0], agree=5, confidence=0.9) == r
    assert stats.agreement([1, 2, 3, 4, 5], [1, 2, 0, 4, 0], n=9, confidence=0.9) == r
    assert stats.agreement([1, 2], [1, 2]).interval == stats.wilson_interval(2, 2, confidence=0.95)
    assert math.isnan(stats.agreement(agree=0, n=0).share)


def test_srm_test_reports_its_degrees_of_freedom_and_level() -> None:
    obs, w = (520, 480), (1, 1)
    ref = sps.chisquare(obs, [500, 500])
    r = stats.srm_test(obs, w)
    assert (r.statistic, r.p_value, r.df) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue), 1.0)
    assert r.method == "ok"
    assert stats.srm_test(obs, w, alpha=0.25).method == "srm"  # p = 0.206


def test_holm_matches_statsmodels_and_keeps_the_input_order() -> None:
    p = np.array([0.2, 0.001, 0.04, 0.03, 0.5, 0.04])
    np.testing.assert_allclose(stats.holm(p), multipletests(p, method="holm")[1], rtol=1e-12)
    assert stats.holm([]).size == 0


# --- Score tests and design effects ------------------------------------------------------------------


@pytest.mark.parametrize(("x1", "n1", "x2", "n2", "null"), [(30, 200, 45, 250, 0.0), (3, 40, 0, 60, 0.0)])
def test_farrington_manning_p_value_matches_statsmodels_score_test(
    x1: int, n1: int, x2: int, n2: int, null: float
) -> None:
    r = stats.farrington_manning(x1, n1, x2, n2, null=null)
    ref = sm_proportion.test_proportions_2indep(
        x2, n2, x1, n1, value=null, method="score", compare="diff", alternative="larger", correction=False
    )
    assert r.estimate == pytest.approx(x2 / n2 - x1 / n1)
    assert r.null == null
    assert r.statistic == pytest.approx(ref.statistic, rel=1e-6)
    assert r.p_value == pytest.approx(ref.pvalue, rel=1e-6)


def test_farrington_manning_and_tango_refuse_impossible_arguments() -> None:
    with pytest.raises(ValueError, match="observations"):
        stats.farrington_manning(0, 0, 1, 5, null=0.0)
    with pytest.raises(ValueError, match="observations"):
        stats.farrington_manning(0, 5, 0, 0, null=0.0)
    for bad in (1.0, -1.0):
        with pytest.raises(ValueError, match=r"\(-1, 1\)"):
            stats.farrington_manning(1, 5, 1, 5, null=bad)
        with pytest.raises(ValueError, match=r"\(-1, 1\)"):
            stats.tango_null_variance(1, 2, 10, null=bad)
    with pytest.raises(ValueError, match="positive"):
        stats.tango_null_variance(0, 0, 0, null=0.0)


@pytest.mark.parametrize(
    ("worse", "better", "n", "null"), [(30, 12, 400, 0.02), (5, 9, 120, -0.03), (0, 0, 50, 0.01)]
)
def test_tango_restricted_estimates_maximise_the_multinomial_likelihood_under_the_null(
    worse: int, better: int, n: int, null: float
) -> None:
    # Maximise x_b log p_b + x_c log p_c + (n - x_b - x_c) log(1 - p_b - p_c) subject to p_b - p_c = null.
    def negloglik(pc: float) -> float:
        pb = pc + null
        rest = 1.0 - pb - pc
        return -(worse * math.log(pb) + better * math.log(pc) + (n - worse - better) * math.log(rest))

    lo = max(0.0, -null) + 1e-12
    hi = (1.0 - null) / 2.0 - 1e-12
    pc = optimize.minimize_scalar(negloglik, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}).x
    r = stats.tango_null_variance(worse, better, n, null=null)
    pb_hat, pc_hat = r.restricted
    assert pc_hat == pytest.approx(pc, abs=1e-5)
    assert pb_hat == pytest.approx(pc + null, abs=1e-5)
    assert r.variance == pytest.approx((pb_hat + pc_hat - null * null) / n, rel=1e-9)
    assert r.estimate == pytest.approx((worse - better) / n)
    assert r.p_value == pytest.approx(sps.norm.sf(r.statistic), rel=1e-12)


def test_a_null_result_without_variance_is_decided_by_the_sign() -> None:
    # statsmodels' cubic differs from the score equation away from 0 (pinned in test_stats.py).
    # Farrington-Manning at null 0 with no events in either arm: variance 0, estimate = null.
    r = stats.farrington_manning(0, 10, 0, 10, null=0.0)
    assert (r.statistic, r.p_value, r.variance) == (0.0, 0.5, 0.0)


def _cluster_sums(groups: list[tuple[list[float], list[float]]]) -> stats.ClusterSums:
    m = [len(a) for a, _ in groups]
    a = [sum(x) for x, _ in groups]
    b = [sum(y) for _, y in groups]
    return stats.ClusterSums(
        clusters=len(groups),
        rows=float(sum(m)),
        mm=float(np.dot(m, m)),
        ma=float(np.dot(m, a)),
        mb=float(np.dot(m, b)),
        aa=float(np.dot(a, a)),
        ab=float(np.dot(a, b)),
        bb=float(np.dot(b, b)),
    )


def test_cluster_sums_pool_field_by_field_and_give_the_residuals_of_the_clusters() -> None:
    g1 = [([1.0, 0.0], [0.5, 0.5]), ([1.0], [2.0])]
    g2 = [([0.0, 0.0, 1.0], [1.0, 0.0, 0.0]), ([3.0], [1.0])]
    assert _cluster_sums(g1) + _cluster_sums(g2) == _cluster_sums(g1 + g2)
    s = _cluster_sums(g1 + g2)
    w, c = 0.7, 0.2
    direct = sum((sum(a) - w * sum(b) - c * len(a)) ** 2 for a, b in g1 + g2)
    assert s.residual_sq(weight=w, null=c) == pytest.approx(direct, rel=1e-12)
    assert s.residual_sq(null=c) == pytest.approx(sum((sum(a) - c * len(a)) ** 2 for a, _ in g1 + g2))


def test_design_effect_is_one_without_two_clusters_or_without_residuals() -> None:
    one = _cluster_sums([([1.0, 1.0, 0.0], [0.0, 0.0, 0.0])])
    assert stats.design_effect(one, 2.0, null=0.0) == 1.0
    two = _cluster_sums([([1.0, 1.0], [0.0, 0.0]), ([0.0, 0.0], [0.0, 0.0])])
    assert stats.design_effect(two, 0.0, null=0.0) == 1.0
    # Two clusters of identical rows: CR1 K/(K-1) sum_k (y_k - c m_k)^2 over N/(N-1) sum_i (y_i - c)^2.
    robust = 2 / 1 * ((2 - 0.5 * 2) ** 2 + (0 - 0.5 * 2) ** 2)
    independent = 4 / 3 * (4 * 0.25)
    assert stats.design_effect(two, 1.0, null=0.5) == pytest.approx(robust / independent)
    weighted = _cluster_sums([([1.0, 1.0], [1.0, 1.0]), ([0.0, 1.0], [0.0, 0.0]), ([1.0], [0.0])])
    rows = [(1.0, 1.0), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0), (1.0, 0.0)]
    w = 0.5
    y = [a - w * b for a, b in rows]
    robust_w = 3 / 2 * ((2 - w * 2) ** 2 + (1 - 0) ** 2 + 1.0)
    indep_w = 5 / 4 * sum(v * v for v in y)
    assert stats.design_effect(weighted, sum(v * v for v in y), weight=w, null=0.0) == pytest.approx(
        max(1.0, robust_w / indep_w)
    )


# --- Sequential SRM and exceedances ----------------------------------------------------------------


def test_srm_bayes_factor_is_scipy_dirichlet_multinomial_over_multinomial() -> None:
    counts, weights, conc = [130, 70, 50], [0.5, 0.3, 0.2], 40.0
    theta = np.array(weights) / sum(weights)
    ref = sps.dirichlet_multinomial.logpmf(counts, conc * theta, sum(counts)) - sps.multinomial.logpmf(
        counts, sum(counts), theta
    )
    r = stats.srm_bayes_factor(counts, weights, concentration=conc)
    assert r.log_bayes_factor == pytest.approx(ref, rel=1e-9)
    assert r.bayes_factor == pytest.approx(math.exp(ref), rel=1e-9)
    assert r.p_value == pytest.approx(min(1.0, math.exp(-ref)), rel=1e-9)
    assert r.min_expected == pytest.approx(250 * 0.2)
    skewed = stats.srm_bayes_factor([9000, 1000], [1, 1])
    assert skewed.p_value == 0.0 and skewed.bayes_factor == math.exp(700.0)
    assert stats.srm_bayes_factor([0, 0], [1, 3]).p_value == 1.0


def test_exceedance_p_value_refuses_a_share_outside_the_unit_interval_and_is_one_without_data() -> None:
    for share in (0.0, 1.0):
        with pytest.raises(ValueError, match="share"):
            stats.exceedance_p_value(1, 10, share=share, side="greater")
    np.testing.assert_array_equal(
        stats.exceedance_p_value([0, 0], [0, 0], share=0.1, side="greater"), [1.0, 1.0]
    )


def test_exceedance_p_value_lesser_side_is_the_lower_truncated_beta_mixture() -> None:
    # M_n = int_0^p0 L(q) Beta(q; 1, b) dq / P(q < p0) with L the likelihood ratio against p0.
    share, s, n = 0.2, 5, 100
    b = (1 - share) / share

    def integrand(q: float) -> float:
        return (q / share) ** s * ((1 - q) / (1 - share)) ** (n - s) * sps.beta.pdf(q, 1.0, b)

    mixture = sps.beta.cdf(share, 1.0, b)
    m = integrate.quad(integrand, 0.0, share, limit=200)[0] / mixture
    p = float(stats.exceedance_p_value(s, n, share=share, side="lesser"))
    assert p == pytest.approx(min(1.0, 1.0 / m), rel=1e-6)
    assert float(stats.exceedance_p_value(40, n, share=share, side="lesser")) == 1.0


# --- Planning ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("margin", "discordance", "difference"), [(0.02, 0.1, 0.0), (0.01, 0.06, 0.005)])
def test_fixed_n_plan_is_statsmodels_one_tailed_normal_sample_size(
    margin: float, discordance: float, difference: float
) -> None:
    plan = stats.plan_labelled_pairs(margin=margin, discordance=discordance, difference=difference)
    sd = math.sqrt(discordance - difference**2)
    ref = normal_sample_size_one_tail(difference + margin, 0.8, 0.05, std_null=sd, std_alternative=sd)
    assert plan.fixed_n == math.ceil(ref)
    assert (plan.discordance, plan.difference, plan.margin) == (discordance, difference, margin)
    low = stats.plan_labelled_pairs(
        margin=margin, discordance=discordance, difference=difference, alpha=0.1, power=0.9
    )
    ref2 = normal_sample_size_one_tail(difference + margin, 0.9, 0.1, std_null=sd, std_alternative=sd)
    assert low.fixed_n == math.ceil(ref2)


@pytest.mark.parametrize(
    ("margin", "disc", "diff", "alpha", "power", "n_star"),
    [
        (0.02, 0.1, 0.005, 0.05, 0.8, None),
        (0.02, 0.1, 0.005, 0.05, 0.8, 2000.0),
        (0.01, 0.05, 0.0, 0.3, 0.6, None),  # 9x the fixed n: the doubling search overshoots far
    ],
)
def test_always_valid_plan_is_the_smallest_n_whose_sequence_clears_the_margin(
    margin: float, disc: float, diff: float, alpha: float, power: float, n_star: float | None
) -> None:
    plan = stats.plan_labelled_pairs(
        margin=margin, discordance=disc, difference=diff, alpha=alpha, power=power, n_star=n_star
    )
    ns = float(plan.fixed_n) if n_star is None else n_star
    zb = sps.norm.ppf(power)

    def lower(n: int) -> float:
        se = math.sqrt((disc - diff**2) / n)
        return float(
            stats.confidence_sequence(diff - zb * se, se, n, alpha=alpha, n_star=ns, side="greater").lower
        )

    n = plan.always_valid_n
    assert lower(n) > -margin >= lower(n - 1)
    assert n > plan.fixed_n


def test_a_plan_needs_a_difference_above_minus_the_margin() -> None:
    with pytest.raises(ValueError, match="^difference must be above -margin for the check to succeed$"):
        stats.plan_labelled_pairs(margin=0.02, discordance=0.1, difference=-0.02)
    # defaults: no true difference, alpha 0.05, power 0.8 (the plan in test_stats.py spells them out)
    default = stats.plan_labelled_pairs(margin=0.01, discordance=0.05)
    assert default == stats.plan_labelled_pairs(
        margin=0.01, discordance=0.05, difference=0.0, alpha=0.05, power=0.8
    )
    assert default.fixed_n == math.ceil(
        normal_sample_size_one_tail(0.01, 0.8, 0.05, std_null=math.sqrt(0.05))
    )
    tiny = stats.plan_labelled_pairs(margin=0.5, discordance=0.01)
    assert tiny.fixed_n == 1 and tiny.always_valid_n >= 2


def test_connor_sample_size_follows_alpha_and_power() -> None:
    # Connor (1987): n = (z_{1-a/2} sqrt(psi) + z_power sqrt(psi - delta^2))^2 / delta^2.
    p01, p10 = 0.3, 0.1
    za, zb = sps.norm.ppf(1 - 0.01 / 2), sps.norm.ppf(0.9)
    psi_, delta = 0.4, 0.2
    expected = (za * math.sqrt(psi_) + zb * math.sqrt(psi_ - delta**2)) ** 2 / delta**2
    assert stats.mcnemar_sample_size(p01, p10, alpha=0.01, power=0.9) == pytest.approx(expected, rel=1e-12)
    assert (
        math.ceil(stats.mcnemar_sample_size(0.45, 0.05)) == 23
    )  # R12 with the defaults, alpha 0.05, power 0.8


def test_newcombe_interval_matches_statsmodels_at_another_confidence() -> None:
    for confidence in (0.95, 0.9):
        iv = stats.newcombe_interval(56, 70, 48, 80, confidence=confidence)
        lo, hi = confint_proportions_2indep(
            56, 70, 48, 80, method="newcomb", compare="diff", alpha=1 - confidence
        )
        assert (iv.lower, iv.upper) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))


def test_ks_and_srm_name_their_method_and_srm_flags_only_p_below_alpha() -> None:
    assert stats.ks_test([1.0, 2.0, 3.0], [1.5, 2.5, 9.0]).method == "ks"
    obs, w = (520, 480), (1, 1)
    p = sps.chisquare(obs, [500, 500]).pvalue
    assert stats.srm_test(obs, w, alpha=p).method == "ok"  # "srm" when p < alpha, strictly
    assert stats.srm_test(obs, w, alpha=p * (1 + 1e-9)).method == "srm"
    assert stats.srm_test((500, 500), (1, 1)).method == "ok"
    assert stats.srm_test((400, 600), (1, 1)).method == "srm"  # default alpha 0.001, p ~ 2.5e-10


# --- always-valid p-values: arrays and undefined variances ------------------------------------------


def test_always_valid_p_value_vectorises_and_says_nothing_without_a_variance() -> None:
    r = stats.confidence_sequence_p_value(
        np.array([0.03, -0.03]), np.array([0.01, 0.01]), np.array([2000, 2000])
    )
    assert isinstance(r.p_value, np.ndarray) and r.p_value.shape == (2,)
    assert r.p_value[1] == 1.0
    assert r.p_value[0] == stats.confidence_sequence_p_value(0.03, 0.01, 2000).p_value
    assert (
        stats.confidence_sequence_p_value(0.03, math.nan, 2000).p_value == 1.0
    )  # variance undefined (n < 2)


def test_a_quantile_at_zero_in_an_empty_first_bucket_is_its_lower_edge() -> None:
    assert stats.quantile_from_histogram([0, 5], [0.0, 1.0, 2.0], 0.0) == 0.0


def _brute_force_ratio_test(
    c1: np.ndarray, c2: np.ndarray, edges: np.ndarray, q: float, ratio: float, floor: float
) -> tuple[float, float]:
    """quantile_ratio_test's definition, over every pair of edges (its docstring), without the prefix search."""
    e = edges[:-1]
    s1, s2 = np.cumsum(c1[::-1])[::-1], np.cumsum(c2[::-1])[::-1]
    tail = 1 - q
    p = {
        (arm, side): stats.exceedance_p_value(s, float(c.sum()), share=tail, side=side)
        for arm, s, c in (("1", s1, c1), ("2", s2, c2))
        for side in ("greater", "lesser")
    }
    harm, passing = 1.0, 1.0
    for i in range(e.size):
        if e[i] <= floor and e[i] > 0:
            passing = min(passing, float(p["2", "lesser"][i]))
        for j in range(e.size):
            if e[i] >= floor and e[j] > 0 and ratio * e[j] <= e[i]:
                harm = min(harm, 2 * max(float(p["2", "greater"][i]), float(p["1", "lesser"][j])))
            if ratio * e[j] >= e[i]:
                passing = min(passing, 2 * max(float(p["2", "lesser"][i]), float(p["1", "greater"][j])))
    return harm, passing


@pytest.mark.parametrize(("shift", "floor"), [(0.4, 0.0), (0.0, 0.0), (0.1, 0.0), (0.4, 60.0)])
def test_quantile_ratio_test_p_values_are_the_minimum_over_every_pair_of_edges(
    shift: float, floor: float
) -> None:
    rng = np.random.default_rng(31)
    edges = stats.latency_edges(start_ms=1.0, stop_ms=500.0, growth=1.25)
    c1 = stats.histogram_counts(rng.lognormal(3.0, 0.4, 5_000), edges).astype(float)
    c2 = stats.histogram_counts(rng.lognormal(3.0 + shift, 0.4, 5_000), edges).astype(float)
    r = stats.quantile_ratio_test(c1, c2, edges, q=0.99, ratio=1.2, floor=floor, alpha=0.05)
    harm, passing = _brute_force_ratio_test(c1, c2, edges, 0.99, 1.2, floor)
    assert r.harm_p == pytest.approx(harm, rel=1e-12, abs=1e-300)
    assert r.pass_p == pytest.approx(passing, rel=1e-12, abs=1e-300)
    assert 0.0 <= r.pass_p <= 1.0 and 0.0 <= r.harm_p <= 1.0
    cs1 = stats.quantile_confidence_sequence(c1, edges, 0.99, alpha=0.05)
    assert (r.champion.lower, r.champion.upper) == (cs1.lower, cs1.upper)


def test_quantile_ratio_test_without_data_proves_nothing() -> None:
    edges = stats.latency_edges(start_ms=1.0, stop_ms=100.0, growth=2.0)
    zero = np.zeros(edges.size - 1)
    r = stats.quantile_ratio_test(zero, zero, edges, q=0.99, ratio=1.2)
    assert (r.harm_p, r.pass_p) == (1.0, 1.0)
    assert (r.champion.lower, r.champion.upper) == (0.0, math.inf)


def test_one_exceedance_in_one_request_is_already_evidence_for_a_rare_event() -> None:
    # M_1 = E[q / p0 | q > p0] under Beta(1, (1 - p0) / p0) truncated above p0: p = 1 / M_1 < 1.
    share = 0.01
    b = (1 - share) / share
    num = integrate.quad(lambda q: (q / share) * sps.beta.pdf(q, 1.0, b), share, 1.0)[0]
    m1 = num / sps.beta.sf(share, 1.0, b)
    p = float(stats.exceedance_p_value(1, 1, share=share, side="greater"))
    assert p == pytest.approx(1.0 / m1, rel=1e-6)
    assert p < 1.0


def test_quantile_ratio_test_proves_a_tolerated_ratio_as_its_pairwise_definition_does() -> None:
    rng = np.random.default_rng(32)
    edges = stats.latency_edges(start_ms=1.0, stop_ms=500.0, growth=1.1)
    c1 = stats.histogram_counts(rng.lognormal(3.0, 0.4, 20_000), edges).astype(float)
    c2 = stats.histogram_counts(rng.lognormal(3.0, 0.4, 20_000), edges).astype(float)
    r = stats.quantile_ratio_test(c1, c2, edges, q=0.99, ratio=2.0, alpha=0.05)
    harm, passing = _brute_force_ratio_test(c1, c2, edges, 0.99, 2.0, 0.0)
    assert 0.0 < r.pass_p < 0.05
    assert r.pass_p == pytest.approx(passing, rel=1e-12)
    assert r.harm_p == pytest.approx(harm, rel=1e-12)


def test_holm_caps_adjusted_p_values_at_one_and_farrington_manning_handles_equal_shares() -> None:
    np.testing.assert_allclose(stats.holm([0.6, 0.7]), multipletests([0.6, 0.7], method="holm")[1])
    assert stats.holm([0.6, 0.7]).max() == 1.0
    # equal shares at null 0: the closed-form cubic's v is exactly 0
    r = stats.farrington_manning(5, 10, 5, 10, null=0.0)
    ref = sm_proportion.test_proportions_2indep(
        5, 10, 5, 10, value=0.0, method="score", compare="diff", alternative="larger", correction=False
    )
    assert r.variance == pytest.approx(0.5 * 0.5 * (1 / 10 + 1 / 10))
    assert (r.statistic, r.p_value) == (0.0, pytest.approx(ref.pvalue))
