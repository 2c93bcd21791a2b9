"""Pure statistics for judging a champion against a challenger.

Everything here is numpy/scipy only: no web, database, clock or global random state. Functions take
plain numbers or arrays and return small frozen dataclasses, so the judge (``controller.core.judge``) and the
benchmarks can call them on sufficient statistics or, where noted, on whole numpy arrays at once. SciPy
is imported inside the functions that use it, not at the top: it costs half a second, and
`mlcanary rollout status` imports this module (through the policy) without computing a statistic.

Sign conventions used throughout
--------------------------------
* Paired correctness tables: ``b`` = pairs where the **champion is right and the challenger wrong**
  (the challenger loses), ``c`` = pairs where the **champion is wrong and the challenger right** (the
  challenger wins). The challenger-minus-champion accuracy difference is ``(c - b) / n``.
* A non-inferiority ``margin`` is a positive number: how much *worse* the challenger may be. The null
  hypothesis of a non-inferiority test is "the challenger is worse by at least the margin".
* "greater" / "lesser" sides follow GrowthBook: a one-sided "greater" interval is ``[lower, +inf)`` and
  tests whether the quantity is greater than a null value, "lesser" is ``(-inf, upper]``.

Library differences that are pinned by tests (see ``tests/unit/test_stats.py``)
------------------------------------------------------------------------------
* McNemar: R's ``mcnemar.test`` defaults to the continuity-corrected chi-square, statsmodels to the
  exact binomial test. Here ``method`` is required, there is no default.
* Jensen–Shannon: SciPy's ``jensenshannon`` returns the *distance* (square root of the divergence)
  in nats. ``jensen_shannon`` here returns both the divergence and the distance, in bits (base 2), so
  the divergence lies in [0, 1].
* ``scipy.stats.chisquare`` wants expected counts; ``srm_test`` takes weights and scales them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from controller.core import histograms
from controller.core.histograms import quantile_from_histogram

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]
Side = Literal["two-sided", "greater", "lesser"]
Alternative = Literal["two-sided", "greater", "less"]

__all__ = [
    "AgreementResult",
    "ClusterSums",
    "ConfidenceSequencePValue",
    "Interval",
    "KappaResult",
    "MeanDifference",
    "NullVariance",
    "PairsPlan",
    "PsiResult",
    "QuantileRatioTest",
    "SrmBayesFactor",
    "TestResult",
    "agreement",
    "cohen_kappa",
    "confidence_sequence",
    "confidence_sequence_p_value",
    "design_effect",
    "exceedance_p_value",
    "farrington_manning",
    "histogram_counts",
    "holm",
    "jensen_shannon",
    "ks_test",
    "latency_edges",
    "mcnemar",
    "mcnemar_sample_size",
    "newcombe_interval",
    "plan_labelled_pairs",
    "psi",
    "psi_from_counts",
    "quantile_confidence_sequence",
    "quantile_from_histogram",
    "quantile_ratio_test",
    "share_above",
    "srm_bayes_factor",
    "srm_test",
    "tango_null_variance",
    "wilson_interval",
]


# --------------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A closed interval; either end may be infinite for one-sided intervals."""

    lower: float
    upper: float

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper


@dataclass(frozen=True)
class TestResult:
    """A test statistic with its p-value and, when it has one, its degrees of freedom."""

    __test__ = False  # not a pytest test class

    statistic: float
    p_value: float
    df: float | None = None
    method: str = ""


@dataclass(frozen=True)
class MeanDifference:
    """A difference of means with its t test and confidence interval."""

    estimate: float
    std_error: float
    statistic: float
    df: float
    p_value: float
    interval: Interval


@dataclass(frozen=True)
class AgreementResult:
    """Share of identical predictions with its Wilson interval."""

    agree: int
    n: int
    share: float
    interval: Interval


@dataclass(frozen=True)
class KappaResult:
    """Cohen's kappa with observed and chance agreement."""

    kappa: float
    observed: float
    expected: float


@dataclass(frozen=True)
class PsiResult:
    """Population stability index with its sample-size-aware noise floor."""

    psi: float
    noise_floor: float
    threshold: float
    bins: int
    n_expected: int
    n_actual: int

    @property
    def exceeds_noise(self) -> bool:
        return self.psi > self.threshold


@dataclass(frozen=True)
class ConfidenceSequencePValue:
    """Always-valid p-value read off an asymptotic confidence sequence."""

    p_value: float
    rho: float


@dataclass(frozen=True)
class PairsPlan:
    """How many labelled pairs a paired non-inferiority check needs."""

    fixed_n: int
    always_valid_n: int
    discordance: float
    difference: float
    margin: float


# --------------------------------------------------------------------------------------------------
# Paired proportions
# --------------------------------------------------------------------------------------------------


def mcnemar(b: int, c: int, *, method: Literal["exact", "midp", "asymptotic", "corrected"]) -> TestResult:
    """Test two paired proportions for equality with McNemar's test (two-sided).

    Null hypothesis: the two discordant cells are equally likely, P(b) = P(c), i.e. the champion and
    the challenger have the same accuracy. ``b`` and ``c`` are the discordant counts (see the module
    docstring for which is which; the test is symmetric).

    Methods (Fagerland, Lydersen & Laake 2013): ``exact`` conditional binomial test on b of b + c with
    p = 1/2; ``midp`` the exact p-value minus the point probability of the observed table;
    ``asymptotic`` chi-square (b - c)^2 / (b + c) on 1 df; ``corrected`` Edwards' continuity
    correction (|b - c| - 1)^2 / (b + c), R's default. The statistic is the chi-square for the two
    asymptotic methods and min(b, c) for the exact ones.
    """
    from scipy import stats as sps

    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    m = b + c
    if m == 0:
        return TestResult(statistic=0.0, p_value=1.0, method=method)
    if method in ("exact", "midp"):
        k = min(b, c)
        p = 2.0 * float(sps.binom.cdf(k, m, 0.5))
        if method == "midp":
            p -= float(sps.binom.pmf(k, m, 0.5))
        p = min(p, 1.0)
        return TestResult(statistic=float(k), p_value=p, method=method)
    if method == "asymptotic":
        stat = (b - c) ** 2 / m
    elif method == "corrected":
        stat = max(abs(b - c) - 1, 0) ** 2 / m
    else:
        raise ValueError(f"unknown McNemar method {method!r}")
    return TestResult(statistic=float(stat), p_value=float(sps.chi2.sf(stat, 1)), df=1.0, method=method)


def wilson_interval(successes: ArrayLike, n: ArrayLike, *, confidence: float = 0.95) -> Interval:
    """Return the Wilson score interval for a binomial proportion (Newcombe 1998, method 3).

    Inverts the score test of H0: p = p0 without continuity correction. Accepts arrays; the
    interval's ends are then arrays too.
    """
    from scipy import stats as sps

    x = np.asarray(successes, dtype=float)
    m = np.asarray(n, dtype=float)
    z = float(sps.norm.ppf(0.5 + confidence / 2.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = x / m
        centre = (p + z * z / (2 * m)) / (1 + z * z / m)
        half = z * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / (1 + z * z / m)
        lower = np.where(m > 0, centre - half, 0.0)
        upper = np.where(m > 0, centre + half, 1.0)
    lower = np.where(x <= 0, 0.0, lower)
    upper = np.where(x >= m, 1.0, upper)
    if lower.ndim == 0:
        return Interval(float(lower), float(upper))
    return Interval(lower, upper)  # type: ignore[arg-type]


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, *, confidence: float = 0.95) -> Interval:
    """Return Newcombe's hybrid score interval for p1 - p2 of two independent proportions.

    Method 10 of Newcombe (1998, Stat Med 17:873): combine the Wilson intervals (l_i, u_i) of each
    proportion as lower = d - sqrt((p1 - l1)^2 + (u2 - p2)^2), upper = d + sqrt((u1 - p1)^2 +
    (p2 - l2)^2). Unpaired.
    """
    p1, p2 = x1 / n1, x2 / n2
    w1 = wilson_interval(x1, n1, confidence=confidence)
    w2 = wilson_interval(x2, n2, confidence=confidence)
    d = p1 - p2
    lower = d - math.sqrt((p1 - w1.lower) ** 2 + (w2.upper - p2) ** 2)
    upper = d + math.sqrt((w1.upper - p1) ** 2 + (p2 - w2.lower) ** 2)
    return Interval(lower, upper)


# --------------------------------------------------------------------------------------------------
# Always-valid inference
# --------------------------------------------------------------------------------------------------


def _cs_rho(alpha: float, n_star: float, side: Side) -> float:
    a = alpha if side == "two-sided" else 2.0 * alpha
    return math.sqrt((-2.0 * math.log(a) + math.log(-2.0 * math.log(a) + 1.0)) / n_star)


def confidence_sequence(
    mean: ArrayLike,
    std_error: ArrayLike,
    n: ArrayLike,
    *,
    alpha: float = 0.05,
    n_star: float = 5000.0,
    side: Side = "two-sided",
    rho: float | None = None,
) -> Interval:
    """Return the asymptotic confidence sequence of Waudby-Smith et al. (2023) at this look.

    Covers the true mean (difference) at every n simultaneously with probability 1 - alpha, so it may
    be looked at after every observation. Computed exactly as GrowthBook's gbstats: with s^2 =
    std_error^2 * n and rho tuned so the sequence is tightest at ``n_star`` observations,
    two-sided half-width = sqrt(s^2) * sqrt(2 (n rho^2 + 1) / (n rho)^2 * log(sqrt(n rho^2 + 1) / alpha)),
    one-sided half-width = sqrt(s^2 * 2 (n rho^2 + 1) / (n rho)^2 * log(1 + sqrt(n rho^2 + 1) / (2 alpha))),
    rho = sqrt((-2 log a + log(-2 log a + 1)) / n_star) with a = alpha (two-sided) or 2 alpha
    (one-sided). ``n`` is the number of observations behind the estimate (pairs for paired data; the sum
    of both arms for two independent samples, as GrowthBook). Accepts arrays (vectorised over looks or
    rollouts). Null hypothesis of the implied test: the mean equals a value outside the sequence.
    """
    m = np.asarray(mean, dtype=float)
    se = np.asarray(std_error, dtype=float)
    nn = np.asarray(n, dtype=float)
    r = _cs_rho(alpha, n_star, side) if rho is None else rho
    s2 = se * se * nn
    nr2 = nn * r * r
    with np.errstate(divide="ignore", invalid="ignore"):
        if side == "two-sided":
            hw = np.sqrt(s2) * np.sqrt(2.0 * (nr2 + 1.0) / (nn * r) ** 2 * np.log(np.sqrt(nr2 + 1.0) / alpha))
        else:
            hw = np.sqrt(
                s2 * 2.0 * (nr2 + 1.0) / (nn * r) ** 2 * np.log(1.0 + np.sqrt(nr2 + 1.0) / (2.0 * alpha))
            )
        hw = np.where(nn > 0, hw, np.inf)
    lower = m - hw if side != "lesser" else np.full_like(m - hw, -np.inf)
    upper = m + hw if side != "greater" else np.full_like(m + hw, np.inf)
    if np.ndim(lower) == 0:
        return Interval(float(lower), float(upper))
    return Interval(lower, upper)  # type: ignore[arg-type]


def confidence_sequence_p_value(
    mean: ArrayLike,
    std_error: ArrayLike,
    n: ArrayLike,
    *,
    null: float = 0.0,
    alpha: float = 0.05,
    n_star: float = 5000.0,
    side: Literal["greater", "lesser"] = "greater",
) -> ConfidenceSequencePValue:
    """Return the always-valid one-sided p-value of the confidence sequence for H0: mean <= null.

    For ``side="greater"`` the null hypothesis is mean <= ``null`` (``"lesser"``: mean >= ``null``).
    The p-value is the smallest alpha' at which the one-sided sequence (rho fixed at the design
    ``alpha``, as GrowthBook's bisection does) excludes ``null``; solving the half-width equation gives
    the closed form p = K / (2 (exp(x) - 1)) with K = sqrt(n rho^2 + 1) and
    x = (mean - null)^2 (n rho)^2 / (s^2 2 (n rho^2 + 1)). p <= alpha exactly when the sequence at
    level alpha excludes ``null``, so it can be Holm-adjusted and is valid under continuous monitoring.
    """
    m = np.asarray(mean, dtype=float) - null
    se = np.asarray(std_error, dtype=float)
    nn = np.asarray(n, dtype=float)
    r = _cs_rho(alpha, n_star, "greater")
    s2 = se * se * nn
    nr2 = nn * r * r
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x = m * m * (nn * r) ** 2 / (s2 * 2.0 * (nr2 + 1.0))
        p = np.sqrt(nr2 + 1.0) / (2.0 * np.expm1(x))
    right_side = m > 0 if side == "greater" else m < 0
    p = np.where(right_side & (nn > 0), np.clip(np.nan_to_num(p, nan=1.0, posinf=1.0), 0.0, 1.0), 1.0)
    return ConfidenceSequencePValue(p_value=float(p) if p.ndim == 0 else p, rho=r)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------------


def latency_edges(*, start_ms: float = 0.1, stop_ms: float = 120_000.0, growth: float = 1.05) -> FloatArray:
    """Return log-spaced histogram edges [0, start, start*g, ..., >= stop, inf] for latencies in ms.

    The array of ``controller.core.histograms.latency_edges`` (the one definition, in plain Python).
    """
    return np.asarray(histograms.latency_edges(start_ms=start_ms, stop_ms=stop_ms, growth=growth))


def histogram_counts(values: ArrayLike, edges: ArrayLike) -> npt.NDArray[np.int64]:
    """Count values into buckets [edges[i], edges[i+1]); len(result) = len(edges) - 1."""
    e = np.asarray(edges, dtype=float)
    idx = np.searchsorted(e, np.asarray(values, dtype=float), side="right") - 1
    idx = np.clip(idx, 0, e.size - 2)
    return np.bincount(idx, minlength=e.size - 1).astype(np.int64)


def share_above(counts: ArrayLike, edges: ArrayLike, threshold: float) -> float:
    """Return how many observations of a histogram lie above ``threshold`` (linear inside the bucket)."""
    c = np.asarray(counts, dtype=float)
    e = np.asarray(edges, dtype=float)
    i = int(np.searchsorted(e, threshold, side="right")) - 1
    i = min(max(i, 0), c.size - 1)
    above = float(c[i + 1 :].sum())
    lo, hi = e[i], e[i + 1]
    if math.isfinite(hi) and hi > lo:
        above += float(c[i]) * (hi - threshold) / (hi - lo)
    else:
        above += float(c[i])
    return float(above)


# --------------------------------------------------------------------------------------------------
# Distributions and agreement
# --------------------------------------------------------------------------------------------------


def psi_from_counts(
    expected_counts: ArrayLike, actual_counts: ArrayLike, *, eps: float = 1e-4, quantile: float = 0.99
) -> PsiResult:
    """Compute the population stability index of two histograms over the same bins, with a noise floor.

    PSI = sum_i (a_i - e_i) ln(a_i / e_i) over bin shares (empty shares floored at ``eps``). It is a
    descriptive distance, not a test; its behaviour under the null hypothesis "both samples come from
    the same distribution" gives the noise floor. Derivation: with bin probabilities p_i, a second-order
    expansion of ln(a/e) around p gives PSI ~ sum_i (a_i - e_i)^2 / p_i, and under the null
    E[(a_i - e_i)^2] = p_i (1 - p_i) (1/n1 + 1/n2), so E[PSI] ~ (B - 1)(1/n1 + 1/n2) for B non-empty
    bins, and PSI / (1/n1 + 1/n2) is approximately chi-square on B - 1 df. ``noise_floor`` is that
    expectation; ``threshold`` is the chi-square ``quantile`` (default 99%) scaled the same way. A PSI
    below the threshold is indistinguishable from sampling noise at these sample sizes.
    """
    from scipy import stats as sps

    e = np.asarray(expected_counts, dtype=float)
    a = np.asarray(actual_counts, dtype=float)
    n1, n2 = e.sum(), a.sum()
    if n1 <= 0 or n2 <= 0:
        return PsiResult(math.nan, math.nan, math.nan, int(e.size), int(n1), int(n2))
    pe = np.maximum(e / n1, eps)
    pa = np.maximum(a / n2, eps)
    value = float(np.sum((pa - pe) * np.log(pa / pe)))
    bins = int(np.count_nonzero((e + a) > 0))
    scale = 1.0 / n1 + 1.0 / n2
    df = max(bins - 1, 1)
    return PsiResult(
        psi=value,
        noise_floor=float(df * scale),
        threshold=float(sps.chi2.ppf(quantile, df) * scale),
        bins=bins,
        n_expected=int(n1),
        n_actual=int(n2),
    )


def psi(expected: ArrayLike, actual: ArrayLike, *, bins: int = 10, eps: float = 1e-4) -> PsiResult:
    """Compute PSI of two samples with ``bins`` equal-frequency bins cut on the expected sample.

    See ``psi_from_counts`` for the noise floor. Ties in the expected sample may merge bins.
    """
    ex = np.asarray(expected, dtype=float)
    ac = np.asarray(actual, dtype=float)
    inner = np.unique(np.quantile(ex, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    return psi_from_counts(histogram_counts(ex, edges), histogram_counts(ac, edges), eps=eps)


def jensen_shannon(p: ArrayLike, q: ArrayLike) -> tuple[float, float]:
    """Return the Jensen–Shannon (divergence, distance) of two discrete distributions, in bits.

    JSD = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2, base 2, so 0 <= JSD <= 1; the distance is
    sqrt(JSD) (a metric). SciPy's ``jensenshannon`` returns the distance in nats by default. Inputs are
    normalised to sum to one. Descriptive, no null hypothesis.
    """
    pp = np.asarray(p, dtype=float)
    qq = np.asarray(q, dtype=float)
    pp, qq = pp / pp.sum(), qq / qq.sum()
    m = (pp + qq) / 2.0

    def kl(x: FloatArray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    div = max(0.5 * (kl(pp) + kl(qq)), 0.0)
    return div, math.sqrt(div)


def ks_test(x: ArrayLike, y: ArrayLike) -> TestResult:
    """Compare two samples' distributions with the two-sample Kolmogorov–Smirnov test.

    Null hypothesis: both samples come from the same continuous distribution. Statistic D = sup|F1 - F2|.
    """
    from scipy import stats as sps

    res = sps.ks_2samp(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return TestResult(statistic=float(res.statistic), p_value=float(res.pvalue), method="ks")


def agreement(
    champion: ArrayLike | None = None,
    challenger: ArrayLike | None = None,
    *,
    agree: int | None = None,
    n: int | None = None,
    confidence: float = 0.95,
) -> AgreementResult:
    """Return the share of identical predictions with its Wilson interval.

    Give either the two prediction arrays or the counts ``agree`` and ``n``. Fixed-n interval; the
    judge's agreement gate uses a confidence sequence.
    """
    if agree is None or n is None:
        a = np.asarray(champion)
        b = np.asarray(challenger)
        agree, n = int(np.count_nonzero(a == b)), int(a.size)
    share = agree / n if n else math.nan
    return AgreementResult(agree, n, share, wilson_interval(agree, n, confidence=confidence))


def cohen_kappa(table: ArrayLike) -> KappaResult:
    """Compute Cohen's kappa, chance-corrected agreement, from a k x k confusion table of two raters.

    kappa = (p_o - p_e) / (1 - p_e) with p_o the diagonal share and p_e the agreement expected from the
    margins. Descriptive.
    """
    t = np.asarray(table, dtype=float)
    total = t.sum()
    po = float(np.trace(t)) / total
    pe = float(np.sum(t.sum(axis=0) * t.sum(axis=1))) / total**2
    kappa = (po - pe) / (1.0 - pe) if pe < 1.0 else 1.0
    return KappaResult(float(kappa), po, pe)


def srm_test(
    observed_counts: Sequence[int], expected_weights: Sequence[float], *, alpha: float = 0.001
) -> TestResult:
    """Detect a sample-ratio mismatch with Pearson's chi-square goodness-of-fit test.

    Null hypothesis: traffic was split in the configured proportions. Weights are normalised and scaled
    to expected counts (``scipy.stats.chisquare`` wants counts). ``method`` is "srm" when p < alpha
    (a mismatch), "ok" otherwise. Fixed-n: the small default alpha absorbs repeated looks.
    """
    from scipy import stats as sps

    obs = np.asarray(observed_counts, dtype=float)
    w = np.asarray(expected_weights, dtype=float)
    exp = w / w.sum() * obs.sum()
    res = sps.chisquare(obs, exp)
    p = float(res.pvalue)
    return TestResult(
        statistic=float(res.statistic), p_value=p, df=float(obs.size - 1), method="srm" if p < alpha else "ok"
    )


def holm(p_values: ArrayLike) -> FloatArray:
    """Return Holm step-down adjusted p-values (controls the family-wise error rate).

    Sort ascending, multiply the i-th smallest (0-based) by (m - i), take the running maximum, cap at 1,
    and return in the input order. Reject H_i when adjusted p_i <= alpha.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adj
    return out


# --------------------------------------------------------------------------------------------------
# Variance under the null hypothesis (score tests) and cluster-robust design effects
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NullVariance:
    """A difference estimate with its variance under H0: difference = ``null`` (a score test).

    ``restricted``: the maximum-likelihood estimates of the two cell or arm probabilities under the
    null hypothesis; ``statistic``: (estimate - null) / sqrt(variance); ``p_value``: fixed-n, one-sided
    for "estimate > null" (use ``1 - p_value`` for the other side).
    """

    estimate: float
    null: float
    variance: float
    statistic: float
    p_value: float
    restricted: tuple[float, float]


def _null_result(estimate: float, null: float, var: float, restricted: tuple[float, float]) -> NullVariance:
    from scipy import stats as sps

    if var <= 0.0:
        z = 0.0 if estimate == null else math.copysign(math.inf, estimate - null)
    else:
        z = (estimate - null) / math.sqrt(var)
    return NullVariance(estimate, null, max(var, 0.0), z, float(sps.norm.sf(z)), restricted)


def farrington_manning(x1: int, n1: int, x2: int, n2: int, *, null: float) -> NullVariance:
    """Test H0: p2 - p1 = ``null`` for two independent proportions with the Farrington–Manning score test.

    ``x1`` of ``n1`` (the champion), ``x2`` of ``n2`` (the challenger); the estimate is x2/n2 - x1/n1.
    The variance is p1~(1 - p1~)/n1 + p2~(1 - p2~)/n2 at the maximum-likelihood estimates restricted to
    p2~ - p1~ = null, from the closed-form cubic root of Farrington & Manning (1990, Stat Med 9:1447),
    without Miettinen–Nurminen's n/(n-1) factor (statsmodels ``test_proportions_2indep(method="score",
    correction=False)``). Unlike the Wald variance it is positive with zero events, so a rare
    outcome cannot look certain before it has been seen.
    """
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both arms need observations")
    if not -1.0 < null < 1.0:
        raise ValueError("the null difference must lie in (-1, 1)")
    # Farrington & Manning's notation: group 1 = challenger, group 2 = champion, H0: q1 - q2 = delta.
    q1, q2, m1, m2, delta = x2 / n2, x1 / n1, n2, n1, null
    theta = m2 / m1
    a = 1.0 + theta
    b = -(1.0 + theta + q1 + theta * q2 + delta * (theta + 2.0))
    c = delta * delta + delta * (2.0 * q1 + theta + 1.0) + q1 + theta * q2
    d = -q1 * delta * (1.0 + delta)
    v = b**3 / (3.0 * a) ** 3 - b * c / (6.0 * a * a) + d / (2.0 * a)
    u2 = b * b / (3.0 * a) ** 2 - c / (3.0 * a)
    u = math.copysign(math.sqrt(max(u2, 0.0)), v) if v != 0 else math.sqrt(max(u2, 0.0))
    if u == 0.0:
        r1 = -b / (3.0 * a)
    else:
        w = (math.pi + math.acos(min(1.0, max(-1.0, v / u**3)))) / 3.0
        r1 = 2.0 * u * math.cos(w) - b / (3.0 * a)
    r1 = min(1.0, max(0.0, r1))
    r2 = min(1.0, max(0.0, r1 - delta))
    var = r1 * (1.0 - r1) / m1 + r2 * (1.0 - r2) / m2
    return _null_result(q1 - q2, null, var, (r2, r1))


def tango_null_variance(worse: int, better: int, n: int, *, null: float) -> NullVariance:
    """Test H0: (worse - better)/n has expectation ``null`` for paired binary outcomes (Tango 1998).

    ``worse``: pairs where only the challenger is bad (McNemar's b), ``better``: only the champion (c).
    The variance is (p_b~ + p_c~ - null^2)/n at Tango's restricted maximum-likelihood estimates of the
    two discordant cells under p_b - p_c = null (Tango 1998, Stat Med 17:891; Nam 1997's score test
    is the same statistic). With null 0 it is McNemar's (b - c)/sqrt(b + c) scaled to a proportion.
    """
    if n <= 0:
        raise ValueError("n must be positive")
    if not -1.0 < null < 1.0:
        raise ValueError("the null difference must lie in (-1, 1)")
    d0 = -null  # Tango's delta = p12 - p21 with x12 = better, x21 = worse
    x12, x21 = better, worse
    a_coef = 2.0 * n
    b_coef = -x12 - x21 + (2.0 * n - x12 + x21) * d0
    c_coef = -x21 * d0 * (1.0 - d0)
    disc = max(b_coef * b_coef - 4.0 * a_coef * c_coef, 0.0)
    q21 = max((math.sqrt(disc) - b_coef) / (2.0 * a_coef), 0.0)
    q12 = max(q21 + d0, 0.0)
    var = (q12 + q21 - d0 * d0) / n
    return _null_result((worse - better) / n, null, var, (q21, q12))


@dataclass(frozen=True, kw_only=True)
class ClusterSums:
    """Per-cluster totals of rows m_k and of two per-row quantities a_k, b_k, summed as cross products.

    ``clusters`` = K; ``rows`` = N = sum m_k; ``mm`` = sum m_k^2, ``ma`` = sum m_k a_k, ``mb``, ``aa`` = sum a_k^2, ``ab``, ``bb``.
    A cluster is a routing key (canary: the split is sticky per key) or a request (rows of one
    multi-row request). Storage computes them with one GROUP BY inside one aggregate.
    """

    clusters: int
    rows: float = 0.0
    mm: float = 0.0
    ma: float = 0.0
    mb: float = 0.0
    aa: float = 0.0
    ab: float = 0.0
    bb: float = 0.0

    def __add__(self, other: ClusterSums) -> ClusterSums:
        """Pool two disjoint sets of clusters (e.g. two rollout steps, each key counted per step)."""
        return ClusterSums(
            clusters=self.clusters + other.clusters,
            rows=self.rows + other.rows,
            mm=self.mm + other.mm,
            ma=self.ma + other.ma,
            mb=self.mb + other.mb,
            aa=self.aa + other.aa,
            ab=self.ab + other.ab,
            bb=self.bb + other.bb,
        )

    def residual_sq(self, *, weight: float = 0.0, null: float) -> float:
        """Return sum_k (a_k - weight b_k - null m_k)^2."""
        w, c = weight, null
        return (
            self.aa
            - 2.0 * w * self.ab
            + w * w * self.bb
            - 2.0 * c * (self.ma - w * self.mb)
            + c * c * self.mm
        )


def design_effect(
    clusters: ClusterSums, row_residual_sq: float, *, weight: float = 0.0, null: float
) -> float:
    """Return the cluster-robust inflation of a mean's variance, at least 1 (Kish's design effect).

    The mean of y = a - weight b over N rows has the cluster-robust (sandwich, delta-method) variance
    K/(K-1) sum_k (y_k - mu m_k)^2 / N^2 (Liang & Zeger 1986; for a ratio of per-cluster sums, the
    delta method of Cochran 1977, 6.13), and the independent-rows variance sum_i (y_i - mu)^2 / N^2.
    N/(N-1) sum_i (y_i - mu)^2 / N^2, each with its small-sample factor (CR1 and the usual n - 1), so
    one-row clusters give exactly 1. Their ratio, evaluated at mu = ``null`` (the same residuals the
    score test uses), multiplies the variance under the null. ``row_residual_sq`` = sum_i (y_i -
    null)^2 over the N = ``clusters.rows`` rows. Floored at 1: a negative
    within-cluster correlation never makes the test bolder. 1 when K < 2.
    """
    k = clusters.clusters
    n = clusters.rows
    if k < 2 or row_residual_sq <= 0.0:
        return 1.0
    robust = k / (k - 1.0) * max(clusters.residual_sq(weight=weight, null=null), 0.0)
    independent = (n / (n - 1.0) if n > 1 else 1.0) * row_residual_sq
    return max(1.0, robust / independent)


# --------------------------------------------------------------------------------------------------
# Sequential sample-ratio mismatch
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SrmBayesFactor:
    """Dirichlet-multinomial Bayes factor against the configured split, and its always-valid p-value."""

    bayes_factor: float
    log_bayes_factor: float
    p_value: float
    min_expected: float


def srm_bayes_factor(
    observed_counts: Sequence[int], expected_weights: Sequence[float], *, concentration: float = 100.0
) -> SrmBayesFactor:
    """Test the traffic split sequentially with the Dirichlet-multinomial Bayes factor (Lindon & Malek 2022).

    Null hypothesis: units fall into the arms with the configured probabilities theta (weights,
    normalised). Alternative: the probabilities follow a Dirichlet(concentration * theta) prior. The
    Bayes factor BF_n = [Gamma(A) / Gamma(A + n)] prod_i Gamma(a_i + x_i) / Gamma(a_i) / prod_i
    theta_i^x_i (A = sum a_i) is a nonnegative martingale under the null, so by Ville's inequality
    p_n = min(1, 1/BF_n) is an always-valid p-value: the controller may re-test at every look without
    inflating the false-alarm rate ("Anytime-valid inference for multinomial count data", NeurIPS
    2022). ``min_expected``: the smallest expected count, for the caller's burn-in.
    """
    from scipy.special import gammaln

    x = np.asarray(observed_counts, dtype=float)
    w = np.asarray(expected_weights, dtype=float)
    theta = w / w.sum()
    alpha_i = concentration * theta
    n = float(x.sum())
    log_bf = float(
        gammaln(alpha_i.sum())
        - gammaln(alpha_i.sum() + n)
        + np.sum(gammaln(alpha_i + x) - gammaln(alpha_i))
        - np.sum(np.where(x > 0, x * np.log(theta), 0.0))
    )
    return SrmBayesFactor(
        bayes_factor=math.exp(min(log_bf, 700.0)),
        log_bayes_factor=log_bf,
        p_value=min(1.0, math.exp(-log_bf)),
        min_expected=float((theta * n).min()),
    )


# --------------------------------------------------------------------------------------------------
# Always-valid exceedance shares and quantiles (latency)
# --------------------------------------------------------------------------------------------------


def exceedance_p_value(
    exceed: ArrayLike, n: ArrayLike, *, share: float, side: Literal["greater", "lesser"]
) -> FloatArray:
    """Return the always-valid p-value for a share of events, from a one-sided beta-binomial mixture.

    Null hypothesis (``greater``): P(event) <= ``share``; (``lesser``): P(event) >= ``share``. The test
    martingale mixes the binomial likelihood ratio (q / share)^S ((1 - q) / (1 - share))^(n - S) over
    q ~ Beta(1, (1 - share)/share) (mean ``share``) truncated to the alternative (q > share, resp.
    q < share): the beta-binomial boundary of Howard, Ramdas, McAuliffe & Sekhon (2021, Ann Stat
    49:1055) and of Howard & Ramdas (2022, Bernoulli 28:1704) for quantiles. Exact, not asymptotic:
    valid with zero events and under continuous monitoring (p = min(1, 1/M_n), Ville's inequality), and
    monotone in S, so searching thresholds costs nothing. Vectorised over ``exceed`` and ``n``.
    """
    from scipy.special import betainc, betaincc, betaln

    s = np.asarray(exceed, dtype=float)
    nn = np.asarray(n, dtype=float)
    p0 = float(share)
    if not 0.0 < p0 < 1.0:
        raise ValueError("share must lie in (0, 1)")
    a, b = 1.0, (1.0 - p0) / p0
    tail = betaincc if side == "greater" else betainc
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_post = betaln(a + s, b + nn - s) + np.log(tail(a + s, b + nn - s, p0))
        log_prior = betaln(a, b) + math.log(float(tail(a, b, p0)))
        log_m = log_post - log_prior - s * math.log(p0) - (nn - s) * math.log1p(-p0)
        p = np.exp(-log_m)
    p = np.where(nn > 0, np.clip(np.nan_to_num(p, nan=1.0, posinf=1.0), 0.0, 1.0), 1.0)
    return p


def quantile_confidence_sequence(counts: ArrayLike, edges: ArrayLike, q: float, *, alpha: float) -> Interval:
    """Return a time-uniform confidence sequence for the q-quantile from histogram counts.

    The lower end is the largest edge e with P(X >= e) > 1 - q proven by ``exceedance_p_value`` at
    level alpha/2, the upper end the smallest edge with P(X >= e) < 1 - q proven (Howard & Ramdas
    2022, Theorem 1's construction with a beta-binomial boundary, read on the bucket edges: the ends
    are conservative to one bucket). Valid at every look simultaneously; (0, inf) with too little data.
    """
    c = np.asarray(counts, dtype=float)
    e = np.asarray(edges, dtype=float)[:-1]
    n = c.sum()
    at_or_above = np.cumsum(c[::-1])[::-1]
    greater = exceedance_p_value(at_or_above, n, share=1.0 - q, side="greater") <= alpha / 2.0
    lesser = exceedance_p_value(at_or_above, n, share=1.0 - q, side="lesser") <= alpha / 2.0
    lower = float(e[greater].max()) if greater.any() else 0.0
    upper = float(e[lesser].min()) if lesser.any() else math.inf
    return Interval(lower, upper)


@dataclass(frozen=True)
class QuantileRatioTest:
    """Always-valid comparison of two arms' q-quantiles against a tolerated ratio and a floor.

    ``harm_p``: p-value of "challenger quantile > ratio x champion quantile and > floor";
    ``pass_p``: p-value of "challenger quantile <= max(ratio x champion quantile, floor)".
    ``champion`` / ``challenger``: each arm's confidence sequence at level alpha / 2.
    """

    harm_p: float
    pass_p: float
    champion: Interval
    challenger: Interval


def quantile_ratio_test(
    champion: ArrayLike,
    challenger: ArrayLike,
    edges: ArrayLike,
    *,
    q: float,
    ratio: float,
    floor: float = 0.0,
    alpha: float = 0.05,
) -> QuantileRatioTest:
    """Test challenger's q-quantile against ``ratio`` times the champion's, both estimated, always valid.

    Harm (H0: Q2 <= max(ratio Q1, floor)) is proven at level a when some edges e_i >= max(ratio e_j,
    floor) have P2(X >= e_i) > 1 - q and P1(X >= e_j) < 1 - q both proven at a/2 — then Q2 >= e_i >=
    ratio e_j > ratio Q1. Non-inferiority (H0: Q2 > max(ratio Q1, floor)) is proven when P2(X >= e_i)
    < 1 - q and either e_i <= floor (at level a) or P1(X >= e_j) > 1 - q with e_i <= ratio e_j (both at
    a/2). Each share test is ``exceedance_p_value`` (exact, anytime valid); the union bound over the two
    arms gives the factor 2, and monotonicity makes the search over edges free. Any dependence between
    the arms is allowed (paired shadow requests too). The champion's quantile is never taken as known.
    """
    c1 = np.asarray(champion, dtype=float)
    c2 = np.asarray(challenger, dtype=float)
    e = np.asarray(edges, dtype=float)[:-1]
    n1, n2 = c1.sum(), c2.sum()
    s1 = np.cumsum(c1[::-1])[::-1]
    s2 = np.cumsum(c2[::-1])[::-1]
    # Only edges from the first occupied bucket to just above the last can decide (the tests are
    # monotone in the counts): drop the empty ends of the log histogram.
    occupied = np.flatnonzero((c1 + c2) > 0)
    if occupied.size:
        lo, hi = int(occupied[0]), min(int(occupied[-1]) + 1, e.size - 1)
        e, s1, s2 = e[lo : hi + 1], s1[lo : hi + 1], s2[lo : hi + 1]
    tail = 1.0 - q
    p2_above = exceedance_p_value(s2, n2, share=tail, side="greater")  # Q2 >= e_i
    p2_below = exceedance_p_value(s2, n2, share=tail, side="lesser")  # Q2 < e_i
    p1_above = exceedance_p_value(s1, n1, share=tail, side="greater")  # Q1 >= e_j
    p1_below = exceedance_p_value(s1, n1, share=tail, side="lesser")  # Q1 < e_j
    # For each challenger edge e_i, the best champion edge: harm needs some e_j > 0 with ratio e_j <=
    # e_i (prefix minimum of p1_below), non-inferiority some e_j with ratio e_j >= e_i (suffix minimum
    # of p1_above). O(E log E) instead of all pairs.
    positive = e > 0
    p1_below_pos = np.where(positive, p1_below, 1.0)
    prefix = np.minimum.accumulate(p1_below_pos)
    suffix = np.minimum.accumulate(p1_above[::-1])[::-1]
    j_harm = np.searchsorted(ratio * e, e, side="right") - 1  # last j with ratio e_j <= e_i
    j_pass = np.searchsorted(ratio * e, e, side="left")  # first j with ratio e_j >= e_i
    best_below = np.where(j_harm >= 0, prefix[np.clip(j_harm, 0, e.size - 1)], 1.0)
    best_above = np.where(j_pass < e.size, suffix[np.clip(j_pass, 0, e.size - 1)], 1.0)
    harm = np.where(e >= floor, 2.0 * np.maximum(p2_above, best_below), 1.0)
    both = 2.0 * np.maximum(p2_below, best_above)
    under_floor = np.where((e <= floor) & positive, p2_below, 1.0)
    harm_p = float(min(1.0, harm.min()))
    pass_p = float(min(1.0, both.min(), under_floor.min()))

    def bounds(above: FloatArray, below: FloatArray) -> Interval:  # as quantile_confidence_sequence
        lower = e[above <= alpha / 2.0]
        upper = e[below <= alpha / 2.0]
        return Interval(
            float(lower.max()) if lower.size else 0.0, float(upper.min()) if upper.size else math.inf
        )

    return QuantileRatioTest(
        harm_p=harm_p,
        pass_p=pass_p,
        champion=bounds(p1_above, p1_below),
        challenger=bounds(p2_above, p2_below),
    )


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


def mcnemar_sample_size(p01: float, p10: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Return the pairs McNemar's two-sided test needs (Connor 1987), before rounding up.

    Detects p01 != p10 (discordant cell probabilities) with the given power:
    n = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2, psi = p01 + p10,
    delta = p01 - p10. Round up with ``math.ceil``.
    """
    from scipy import stats as sps

    psi_ = p01 + p10
    delta = p01 - p10
    za = float(sps.norm.ppf(1 - alpha / 2))
    zb = float(sps.norm.ppf(power))
    return (za * math.sqrt(psi_) + zb * math.sqrt(psi_ - delta**2)) ** 2 / delta**2


def plan_labelled_pairs(
    *,
    margin: float,
    discordance: float,
    difference: float = 0.0,
    alpha: float = 0.05,
    power: float = 0.8,
    n_star: float | None = None,
) -> PairsPlan:
    """Tell how many labelled pairs a paired accuracy non-inferiority check needs.

    Null hypothesis of the check: accuracy(challenger) - accuracy(champion) <= -margin. ``discordance``
    is the expected share of pairs where exactly one arm is right, ``difference`` the expected true
    difference (0 = equally good). ``fixed_n``: one-sided Wald-type formula with the paired variance
    psi - d^2, n = (z_{1-alpha} + z_{power})^2 (psi - d^2) / (d + margin)^2 (Connor's formula with a
    shifted null). ``always_valid_n``: smallest n at which the one-sided confidence sequence's expected
    lower bound minus z_{power} standard errors clears -margin (found by doubling and bisection); it is
    what the judge needs when it may look at any time.
    """
    from scipy import stats as sps

    if margin + difference <= 0:
        raise ValueError("difference must be above -margin for the check to succeed")
    var = discordance - difference**2
    za = float(sps.norm.ppf(1 - alpha))
    zb = float(sps.norm.ppf(power))
    fixed = math.ceil((za + zb) ** 2 * var / (difference + margin) ** 2)
    ns = float(n_star) if n_star is not None else float(fixed)

    def ok(n: int) -> bool:
        se = math.sqrt(var / n)
        cs = confidence_sequence(difference - zb * se, se, n, alpha=alpha, n_star=ns, side="greater")
        return cs.lower > -margin

    hi = max(fixed, 2)
    while not ok(hi):
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return PairsPlan(
        fixed_n=fixed, always_valid_n=hi, discordance=discordance, difference=difference, margin=margin
    )
