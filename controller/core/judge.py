"""Turn the sufficient statistics of one rollout step into verdicts and one judgement.

Pure: ``judge(metrics, policy) -> Judgement`` reads nothing but its arguments. The controller loop
aggregates paired rows into a ``StepMetrics`` (counts, sums, sums of squares, histograms — SQL
aggregates, never all history) and acts on ``Judgement.decision``.

Gates and what "pass" / "fail" mean
-----------------------------------
Every gate asks one question with a margin from the policy and answers it with a one-sided
*confidence sequence* at level ``policy.alpha`` (``controller.core.stats.confidence_sequence``), which stays
valid however often the controller looks:

* ``pass``: the bound on the good side proves the challenger is not worse than the margin
  (non-inferiority);
* ``fail``: the bound on the bad side proves it is worse than the margin (harm). For gates with an
  always-valid p-value the harm p-values of all required and guardrail gates are Holm-adjusted together
  and a gate fails only when its adjusted p-value is <= alpha;
* ``inconclusive``: neither yet; ``no-data``: below the gate's burn-in (``min_samples``) or no
  measurements of that kind.

A tolerated degradation inside the margin is not harm. Outcomes are ordered best to worst
``pass < inconclusive < no-data < fail`` (as Argo Rollouts: worst wins when combining; no data is worse
than an undecided measurement because it says nothing at all, and failure is worst).

Roles: ``required`` gates must all pass to promote (an intersection–union test, so no multiplicity
adjustment is needed for promotion); ``guardrail`` gates need not pass but their failure means harm,
and while they have no data they block promotion (unless ``GateSpec.allow_no_data``);
``informational`` gates are reported only. A gate's ``on_fail`` says what its proven failure means:
``rollback`` (harm) or ``hold`` (the step cannot pass; agreement's default, since disagreement is not
harm) — a hold is lifted once every required labelled gate (``LABELLED_GATES``) passes. Vetoes —
sample-ratio mismatch in canary mode and the hard SLOs on the challenger's absolute error rate and p99
latency — override everything, at their own level (``JudgePolicy.veto_alpha``, ``srm_alpha``).

The harm family is fixed per step: every enabled required or guardrail gate that can roll back and has
a harm p-value (``drift`` decides by its own rule), no-data gates counted with p = 1.

Promotion evidence: on a step that is not final, agreement proven at least ``1 - accuracy.margin``
(``agreement_proxy``) satisfies a required accuracy gate, since accuracy can drop by at most the
disagreement rate; a ``final`` judgement needs every required labelled gate to pass itself.

The recommendation (``Judgement.decision``; the state machine's ``Decision`` acts on it), in
priority order: ``veto`` (any veto fails) > ``rollback`` (any required or guardrail gate
with ``on_fail="rollback"`` fails) > ``continue`` with a hold (a hold gate fails, labels have not
decided) > ``promote`` (every required gate passes or is satisfied as above, no guardrail or veto lacks
data, at least one required gate) > ``continue``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

from controller.core import metrics as quality
from controller.core import stats

Role = Literal["required", "guardrail", "informational"]
Mode = Literal["shadow", "canary"]
Recommendation = Literal["promote", "rollback", "veto", "continue"]
OnFail = Literal["rollback", "hold"]

__all__ = [
    "GateSpec",
    "Histogram",
    "Judgement",
    "JudgePolicy",
    "ErrorTail",
    "Moments",
    "PairedAbsErrors",
    "Outcome",
    "PairedCounts",
    "Proportion",
    "StepMetrics",
    "Summary",
    "Verdict",
    "arm_values",
    "judge",
    "metrics_from_pairs",
    "null_variance_at_bound",
]


class Outcome(enum.IntEnum):
    """Result of one gate, ordered best to worst; combining takes the maximum (the worst)."""

    PASS = 0
    INCONCLUSIVE = 1
    NO_DATA = 2
    FAIL = 3

    @property
    def label(self) -> str:
        return {0: "pass", 1: "inconclusive", 2: "no-data", 3: "fail"}[int(self)]

    @staticmethod
    def worst(outcomes: Sequence[Outcome]) -> Outcome:
        return max(outcomes, default=Outcome.NO_DATA)


# --------------------------------------------------------------------------------------------------
# Sufficient statistics
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Proportion:
    """``count`` events out of ``n`` trials (errors of n requests, correct of n labelled rows)."""

    n: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.count <= self.n:
            raise ValueError(f"need 0 <= count <= n, got count={self.count}, n={self.n}")


@dataclass(frozen=True, kw_only=True)
class PairedCounts:
    """Discordance of a binary outcome over ``n`` pairs in which both arms ran on the same request.

    ``worse``: pairs where the challenger is bad and the champion good (challenger errored alone /
    champion right and challenger wrong), McNemar's b. ``better``: the opposite, McNemar's c.
    """

    n: int
    worse: int
    better: int

    def __post_init__(self) -> None:
        if min(self.n, self.worse, self.better) < 0 or self.worse + self.better > self.n:
            raise ValueError("need 0 <= worse + better <= n")


@dataclass(frozen=True, kw_only=True)
class Moments:
    """Count, sum and sum of squares of a quantity: enough for its mean and variance."""

    n: int
    total: float
    total_sq: float

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        if self.n < 2:
            return math.nan
        return max((self.total_sq - self.total * self.total / self.n) / (self.n - 1), 0.0)


@dataclass(frozen=True, kw_only=True)
class Histogram:
    """Counts per bucket [edges[i], edges[i+1]) for the champion and the challenger on shared edges.

    Latencies use ``stats.latency_edges()``; predicted classes use one bucket per class (edges 0..k).
    """

    edges: tuple[float, ...]
    champion: tuple[int, ...]
    challenger: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.champion) == len(self.challenger) == len(self.edges) - 1:
            raise ValueError("a histogram needs len(edges) - 1 counts per arm")


@dataclass(frozen=True, kw_only=True)
class PairedAbsErrors:
    """Sums over ``n`` labelled pairs of each arm's absolute error e1 (champion), e2 (challenger).

    Enough for the mean and variance of e2 - (1 + m) e1 for any margin m: the direct regression test.
    """

    n: int
    champion: float
    champion_sq: float
    challenger: float
    challenger_sq: float
    cross: float  # sum of e1 * e2

    def __add__(self, other: PairedAbsErrors) -> PairedAbsErrors:
        """Pool two disjoint sets of pairs (e.g. two rollout steps)."""
        return PairedAbsErrors(
            n=self.n + other.n,
            champion=self.champion + other.champion,
            champion_sq=self.champion_sq + other.champion_sq,
            challenger=self.challenger + other.challenger,
            challenger_sq=self.challenger_sq + other.challenger_sq,
            cross=self.cross + other.cross,
        )


@dataclass(frozen=True, kw_only=True)
class ErrorTail:
    """Labelled rows whose absolute error exceeds ``cap``, the champion's ``quantile`` of |error|.

    ``champion`` / ``challenger``: rows above the cap of each arm's labelled rows; ``paired``: over
    labelled pairs, ``worse`` = only the challenger above the cap, ``better`` = only the champion.
    """

    cap: float
    quantile: float
    champion: Proportion
    challenger: Proportion
    paired: PairedCounts | None = None


@dataclass(frozen=True, kw_only=True)
class StepMetrics:
    """Sufficient statistics of one rollout step, cumulative since the step (or rollout) began.

    ``champion`` / ``challenger``: requests each arm handled and how many failed. ``challenger_weight``:
    the configured challenger share of traffic (canary; enables the SRM veto). ``units``: (champion,
    challenger) counts of the units the split randomises — distinct routing keys — which the SRM test
    counts when given (requests of one sticky key are not independent draws); else it counts requests. ``paired_errors``:
    error discordance over shadow pairs. ``agreement``: pairs compared (n) and identical predictions
    (count), classification. ``paired_correct``: correctness discordance over labelled pairs (shadow).
    ``champion_correct`` / ``challenger_correct``: labelled rows and correct ones per arm (canary).
    ``abs_error_difference``: moments of |challenger - label| - |champion - label| over labelled pairs
    (shadow regression). ``champion_abs_error`` / ``challenger_abs_error``: moments of each arm's
    absolute error (champion's gives the MAE baseline; both are used in canary mode). ``latency``:
    latency histograms. ``outputs``: histograms of predictions (class counts or binned values).
    ``coverage``: requests sampled for shadow scoring (n) and those actually scored (count); the
    rest were skipped by the router (full queue, load shedding...), never the challenger's fault.
    ``paired_abs_errors``: per-arm sums and the cross product of absolute errors over labelled pairs
    (the direct regression test); ``error_tail``: rows above a high quantile of the champion's absolute
    errors (the catastrophic-error test). ``clusters``: per-cluster sums (routing keys in canary steps,
    requests in shadow steps) for the cluster-robust variance, keyed ``errors.<arm>``,
    ``errors.paired`` (a = challenger failed - champion failed), ``correct.<arm>``, ``correct.paired``
    (a = champion right - challenger right), ``agreement`` (a = disagreement), ``abs_error.<arm>``
    (a = |error|), ``abs_error.paired`` (a = challenger's |error|, b = champion's) and
    ``abs_error_tail.paired`` (a = challenger above the cap - champion above the cap); a missing key
    means rows are independent. Absent fields make their gates report no-data.
    """

    mode: Mode
    champion: Proportion
    challenger: Proportion
    challenger_weight: float | None = None
    units: tuple[int, int] | None = None
    paired_errors: PairedCounts | None = None
    agreement: Proportion | None = None
    paired_correct: PairedCounts | None = None
    champion_correct: Proportion | None = None
    challenger_correct: Proportion | None = None
    abs_error_difference: Moments | None = None
    champion_abs_error: Moments | None = None
    challenger_abs_error: Moments | None = None
    latency: Histogram | None = None
    outputs: Histogram | None = None
    coverage: Proportion | None = None
    paired_abs_errors: PairedAbsErrors | None = None
    error_tail: ErrorTail | None = None
    clusters: Mapping[str, stats.ClusterSums] = field(default_factory=dict)
    quality: quality.QualityStats | None = None  # class-aware metrics, losses, outcome, segments


def metrics_from_pairs(
    *,
    champion_prediction: npt.ArrayLike,
    challenger_prediction: npt.ArrayLike,
    champion_failed: npt.ArrayLike,
    challenger_failed: npt.ArrayLike,
    task: Literal["classification", "regression"],
    label: npt.ArrayLike | None = None,
    labelled: npt.ArrayLike | None = None,
    champion_latency_ms: npt.ArrayLike | None = None,
    challenger_latency_ms: npt.ArrayLike | None = None,
    latency_edges: npt.ArrayLike | None = None,
    output_edges: npt.ArrayLike | None = None,
) -> StepMetrics:
    """Build shadow-mode ``StepMetrics`` from arrays of paired rows (one element per request).

    The reference for what the controller's SQL aggregates must compute; each line names its aggregate.
    Failed requests count as errors and are excluded from agreement, accuracy and regression (their
    predictions are meaningless); ``labelled`` marks rows whose ``label`` has arrived. Class predictions
    must be integer codes 0..k-1 for the output histogram; regression outputs need ``output_edges``.
    """
    champ_fail = np.asarray(champion_failed, dtype=bool)
    chal_fail = np.asarray(challenger_failed, dtype=bool)
    n = int(champ_fail.size)
    both_ok = ~champ_fail & ~chal_fail
    y1 = np.asarray(champion_prediction)
    y2 = np.asarray(challenger_prediction)
    # COUNT(*), SUM(champion_failed), SUM(challenger_failed)
    champion = Proportion(n=n, count=int(champ_fail.sum()))
    challenger = Proportion(n=n, count=int(chal_fail.sum()))
    # SUM(challenger_failed AND NOT champion_failed), SUM(champion_failed AND NOT challenger_failed)
    paired_errors = PairedCounts(
        n=n, worse=int((chal_fail & ~champ_fail).sum()), better=int((champ_fail & ~chal_fail).sum())
    )
    agreement_ = None
    paired_correct = abs_diff = champ_abs = None
    pair_abs: PairedAbsErrors | None = None
    ok_lab = both_ok if labelled is None else both_ok & np.asarray(labelled, dtype=bool)
    if task == "classification":
        # SUM(both ok), SUM(both ok AND champion_prediction = challenger_prediction)
        agreement_ = Proportion(n=int(both_ok.sum()), count=int((both_ok & (y1 == y2)).sum()))
        if label is not None:
            y = np.asarray(label)
            r1, r2 = (y1 == y) & ok_lab, (y2 == y) & ok_lab
            # SUM(labelled), SUM(champion right AND challenger wrong), SUM(champion wrong AND challenger right)
            paired_correct = PairedCounts(
                n=int(ok_lab.sum()), worse=int((r1 & ~r2).sum()), better=int((~r1 & r2).sum())
            )
    elif label is not None:
        y = np.asarray(label, dtype=float)
        e1 = np.abs(y1.astype(float) - y)[ok_lab]
        e2 = np.abs(y2.astype(float) - y)[ok_lab]
        d = e2 - e1
        # SUM(ABS(challenger - label) - ABS(champion - label)), SUM(POWER(that, 2)); SUM(ABS(champion - label)) ...
        abs_diff = Moments(n=int(d.size), total=float(d.sum()), total_sq=float(np.dot(d, d)))
        champ_abs = Moments(n=int(e1.size), total=float(e1.sum()), total_sq=float(np.dot(e1, e1)))
        # SUM(e1), SUM(e1 * e1), SUM(e2), SUM(e2 * e2), SUM(e1 * e2) over labelled pairs
        pair_abs = PairedAbsErrors(
            n=int(e1.size),
            champion=float(e1.sum()),
            champion_sq=float(np.dot(e1, e1)),
            challenger=float(e2.sum()),
            challenger_sq=float(np.dot(e2, e2)),
            cross=float(np.dot(e1, e2)),
        )
    latency = None
    if champion_latency_ms is not None and challenger_latency_ms is not None:
        # GROUP BY bucket (floor(ln(ms / start) / ln(growth))): counts per arm
        e = np.asarray(stats.latency_edges() if latency_edges is None else latency_edges, dtype=float)
        latency = Histogram(
            edges=tuple(e.tolist()),
            champion=tuple(stats.histogram_counts(champion_latency_ms, e).tolist()),
            challenger=tuple(stats.histogram_counts(challenger_latency_ms, e).tolist()),
        )
    outputs = None
    if (task == "classification" and np.issubdtype(y1.dtype, np.integer)) or output_edges is not None:
        if output_edges is None:  # one bucket per class code: GROUP BY prediction
            k = int(max(y1[both_ok].max(initial=0), y2[both_ok].max(initial=0))) + 1
            oe = np.arange(k + 1, dtype=float) - 0.5
        else:
            oe = np.asarray(output_edges, dtype=float)
        outputs = Histogram(
            edges=tuple(oe.tolist()),
            champion=tuple(stats.histogram_counts(y1[both_ok], oe).tolist()),
            challenger=tuple(stats.histogram_counts(y2[both_ok], oe).tolist()),
        )
    return StepMetrics(
        mode="shadow",
        champion=champion,
        challenger=challenger,
        paired_errors=paired_errors,
        agreement=agreement_,
        paired_correct=paired_correct,
        abs_error_difference=abs_diff,
        champion_abs_error=champ_abs,
        latency=latency,
        outputs=outputs,
        paired_abs_errors=pair_abs,
    )


# --------------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GateSpec:
    """Configuration of one gate. ``margin``'s meaning depends on the gate (see ``JudgePolicy``).

    ``on_fail``: what a proven failure means for a required or guardrail gate: ``rollback`` (harm) or
    ``hold`` (the step cannot pass while it fails, nothing rolls back: agreement's default).
    ``allow_no_data``: a guardrail without data does not block promotion (waived explicitly).
    """

    role: Role = "guardrail"
    margin: float = 0.0
    min_samples: int = 100
    enabled: bool = True
    on_fail: OnFail = "rollback"
    allow_no_data: bool = False

    def __post_init__(self) -> None:
        if self.role not in ("required", "guardrail", "informational"):
            raise ValueError(f"unknown gate role {self.role!r}")
        if self.margin < 0 or self.min_samples < 0:
            raise ValueError("margin and min_samples must be non-negative")
        if self.on_fail not in ("rollback", "hold"):
            raise ValueError(f"unknown on_fail {self.on_fail!r}")


@dataclass(frozen=True, kw_only=True)
class JudgePolicy:
    """Everything the judge needs to know about thresholds. Plain data, built by ``controller.core.policy``.

    Margins: ``error_rate`` absolute increase of the error rate tolerated; ``latency_p99`` tolerated
    ratio challenger p99 / champion p99 (e.g. 1.2); ``agreement`` minimum share of identical
    predictions (e.g. 0.9); ``accuracy`` absolute accuracy drop tolerated (0.01 = one point);
    ``regression`` relative MAE increase tolerated (0.05 = 5%); ``drift`` PSI above which outputs have
    drifted (0.2); ``coverage`` minimum share of the shadow sample actually scored (0.5). ``n_star``: the sample size at which the confidence sequences are tightest.
    ``srm_alpha``: level of the sequential sample-ratio-mismatch test. ``error_rate_slo``: hard ceiling of
    the challenger's error rate; ``latency_p99_slo_ms``: hard ceiling of its p99 — both vetoes once the
    confidence sequence proves the breach. ``srm_min_expected``: the SRM test waits until the smaller
    arm expects this many units (routing keys), so a handful of keys cannot trigger it.
    ``latency_floor_ms``: a challenger p99 at or below it never counts as latency harm.
    ``regression_error_bound``: the largest absolute error either model can make (label units), an
    assumption the policy states; with it, the regression mean test uses the variance at the least
    favourable null (``null_variance_at_bound``). ``None``: no bound assumed, the observed variance.

    Error budget: ``alpha`` is the level of the harm family (every required and guardrail gate that
    can roll back, Holm-adjusted) and of the non-inferiority bounds; ``veto_alpha`` the level of each
    SLO veto (``None``: ``alpha``); ``srm_alpha`` the SRM veto's. ``controller.core.policy`` splits the
    policy's one ``alpha`` between them. ``final``: this look may promote the challenger for good, so
    every required labelled gate (``LABELLED_GATES``) must pass itself. ``agreement_stands_in``: on a
    step that is not final, agreement proven at least ``1 - accuracy.margin`` satisfies a required
    accuracy gate (accuracy can drop by at most the disagreement rate).
    """

    alpha: float = 0.05
    n_star: float = 5000.0
    srm_alpha: float = 0.001
    error_rate_slo: float | None = None
    latency_p99_slo_ms: float | None = None
    slo_min_samples: int = 100
    srm_min_expected: float = 50.0
    latency_floor_ms: float = 0.0
    regression_error_bound: float | None = None
    error_rate: GateSpec = field(
        default_factory=lambda: GateSpec(role="guardrail", margin=0.0, min_samples=200)
    )
    latency_p99: GateSpec = field(
        default_factory=lambda: GateSpec(role="guardrail", margin=1.2, min_samples=1000)
    )
    agreement: GateSpec = field(
        default_factory=lambda: GateSpec(role="informational", margin=0.9, min_samples=200)
    )
    accuracy: GateSpec = field(
        default_factory=lambda: GateSpec(role="required", margin=0.01, min_samples=200)
    )
    regression: GateSpec = field(
        default_factory=lambda: GateSpec(role="required", margin=0.05, min_samples=200)
    )
    drift: GateSpec = field(
        default_factory=lambda: GateSpec(role="informational", margin=0.2, min_samples=500)
    )
    coverage: GateSpec = field(
        default_factory=lambda: GateSpec(role="informational", margin=0.5, min_samples=100)
    )
    summary_pass: float = 0.75
    summary_marginal: float = 0.5
    veto_alpha: float | None = None
    final: bool = False
    agreement_stands_in: bool = False
    quality: quality.QualityPolicy | None = None  # gates of controller.core.metrics

    def __post_init__(self) -> None:
        if self.veto_alpha is not None and not 0.0 < self.veto_alpha < 0.5:
            raise ValueError("veto_alpha must lie in (0, 0.5)")
        if not 0.0 < self.alpha < 0.5 or not 0.0 < self.srm_alpha < 0.5:
            raise ValueError("alpha and srm_alpha must lie in (0, 0.5)")
        if self.n_star <= 0:
            raise ValueError("n_star must be positive")
        if self.latency_p99.margin < 1.0:
            raise ValueError("the latency margin is a ratio >= 1")
        if self.regression_error_bound is not None and not self.regression_error_bound > 0.0:
            raise ValueError("regression_error_bound must be positive")


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One gate's answer with everything needed to explain it.

    ``effect``: the observed effect in the gate's natural unit (difference, ratio, share, PSI);
    ``bound``: the confidence-sequence bound that decided (the good-side bound unless the gate failed);
    ``statistic``: a z-like standardised distance from the margin (positive = towards harm);
    ``p_value``: the always-valid harm p-value after Holm, when the gate has one.
    """

    gate: str
    role: str
    outcome: Outcome
    statistic: float
    bound: float
    effect: float
    margin: float
    n_champion: int
    n_challenger: int
    reason: str
    p_value: float | None = None
    interval: stats.Interval | None = None


@dataclass(frozen=True)
class Summary:
    """Kayenta-style score: share of decided gates that pass. DESCRIPTIVE ONLY — never used to decide."""

    score: float
    band: Literal["pass", "marginal", "fail", "no-data"]
    passing: int
    counted: int
    descriptive: bool = True


@dataclass(frozen=True)
class Judgement:
    """Combined result of one step: the decision, the combined outcome, every verdict and a summary."""

    decision: Recommendation
    outcome: Outcome
    verdicts: tuple[Verdict, ...]
    reason: str
    summary: Summary

    @property
    def promote_eligible(self) -> bool:
        return self.decision == "promote"

    @property
    def harm(self) -> bool:
        return self.decision == "rollback"

    @property
    def veto(self) -> bool:
        return self.decision == "veto"


# --------------------------------------------------------------------------------------------------
# Gate evaluation
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Draft:
    """A verdict before Holm: outcome decided except for harm, which needs the adjusted p-value."""

    verdict: Verdict
    harm_p: float | None = None  # raw always-valid harm p-value
    describe: str = ""
    fail_bound: float = math.nan
    fail_reason: str = ""


def _no_data(
    gate: str, spec: GateSpec, reason: str, n1: int = 0, n2: int = 0, margin: float | None = None
) -> _Draft:
    return _Draft(
        Verdict(
            gate,
            spec.role,
            Outcome.NO_DATA,
            math.nan,
            math.nan,
            math.nan,
            spec.margin if margin is None else margin,
            n1,
            n2,
            reason,
        )
    )


def _bernoulli_se(count: float, n: float) -> float:
    """Standard error of a share with one pseudo-success and one pseudo-failure (small-sample guard)."""
    p = (count + 1.0) / (n + 2.0)
    return math.sqrt(p * (1.0 - p) / n)


def _deff(m: StepMetrics, key: str, row_residual_sq: float, *, null: float, weight: float = 0.0) -> float:
    """Cluster design effect of the quantity ``key`` (1 when its rows are independent)."""
    sums = m.clusters.get(key)
    if sums is None:
        return 1.0
    return stats.design_effect(sums, row_residual_sq, weight=weight, null=null)


def _binary_rows(x: int, n: int, r: float) -> float:
    """Sum over n binary rows with x ones of (y_i - r)^2."""
    return x * (1.0 - r) ** 2 + (n - x) * r * r


def _paired_rows(pc: PairedCounts, null: float) -> float:
    """Sum over pairs of (d_i - null)^2 with d_i = +1 (worse), -1 (better) or 0."""
    return (
        pc.worse * (1.0 - null) ** 2 + pc.better * (1.0 + null) ** 2 + (pc.n - pc.worse - pc.better) * null**2
    )


def _paired_null_se(m: StepMetrics, pc: PairedCounts, key: str, null: float) -> float:
    """Tango's standard error of (worse - better)/n under H0: difference = null, cluster-robust."""
    nv = stats.tango_null_variance(pc.worse, pc.better, pc.n, null=null)
    return math.sqrt(nv.variance * _deff(m, key, _paired_rows(pc, null), null=null))


def _unpaired_null_se(
    m: StepMetrics, a: Proportion, b: Proportion, keys: tuple[str, str], null: float
) -> float:
    """Farrington–Manning standard error of b/n - a/n under H0: difference = null, cluster-robust per arm."""
    nv = stats.farrington_manning(a.count, a.n, b.count, b.n, null=null)
    ra, rb = nv.restricted
    va = ra * (1.0 - ra) / a.n * _deff(m, keys[0], _binary_rows(a.count, a.n, ra), null=ra)
    vb = rb * (1.0 - rb) / b.n * _deff(m, keys[1], _binary_rows(b.count, b.n, rb), null=rb)
    return math.sqrt(max(va + vb, 1e-18))


def _harm_gate(
    gate: str,
    spec: GateSpec,
    policy: JudgePolicy,
    *,
    harm: float,
    se: float,
    n_cs: float,
    limit: float,
    n1: int,
    n2: int,
    describe: str,
    offset: float = 0.0,
    scale: float = 1.0,
    effect: float | None = None,
) -> _Draft:
    """Decide a gate where larger ``harm`` is worse and ``limit`` is the tolerated harm.

    Pass when the one-sided upper bound of ``harm`` is below ``limit``; the harm p-value tests
    H0: harm <= limit. ``se`` is the standard error the decision uses: for proportions the one under
    the null hypothesis harm = limit (a score test), so both one-sided tests share it. ``offset +
    scale * x`` maps harm-scale numbers to the gate's natural unit (accuracy difference, agreement
    share, relative MAE change) for the verdict and its reason.
    """
    upper = stats.confidence_sequence(
        harm, se, n_cs, alpha=policy.alpha, n_star=policy.n_star, side="lesser"
    ).upper
    lower = stats.confidence_sequence(
        harm, se, n_cs, alpha=policy.alpha, n_star=policy.n_star, side="greater"
    ).lower
    p = stats.confidence_sequence_p_value(
        harm, se, n_cs, null=limit, alpha=policy.alpha, n_star=policy.n_star, side="greater"
    )
    statistic = (
        (harm - limit) / se if se > 0 else (math.copysign(math.inf, harm - limit) if harm != limit else 0.0)
    )

    def show(x: float) -> float:
        return float(offset + scale * x)

    good, bad, lim = show(upper), show(lower), show(limit)
    good_cmp = f"lower bound {good:.4g} > {lim:.4g}" if scale < 0 else f"upper bound {good:.4g} < {lim:.4g}"
    bad_cmp = f"upper bound {bad:.4g} < {lim:.4g}" if scale < 0 else f"lower bound {bad:.4g} > {lim:.4g}"
    if upper < limit:
        outcome, why = Outcome.PASS, f"non-inferior: {describe}, {good_cmp}"
    else:
        outcome, why = (
            Outcome.INCONCLUSIVE,
            f"inconclusive: {describe}, bounds {min(good, bad):.4g}..{max(good, bad):.4g} "
            + (
                f"include {lim:.4g}"
                if min(good, bad) <= lim <= max(good, bad)
                else f"lie past {lim:.4g} on the harmful side (harm is decided by its own test and level)"
            ),
        )
    verdict = Verdict(
        gate,
        spec.role,
        outcome,
        float(statistic),
        good,
        show(harm) if effect is None else effect,
        spec.margin,
        n1,
        n2,
        why,
        p_value=p.p_value,
        interval=stats.Interval(min(good, bad), max(good, bad)),
    )
    return _Draft(verdict, harm_p=p.p_value, describe=describe, fail_bound=bad, fail_reason=bad_cmp)


def _error_rate(m: StepMetrics, policy: JudgePolicy) -> _Draft:
    spec = policy.error_rate
    n1, n2 = m.champion.n, m.challenger.n
    if m.paired_errors is not None:
        pe = m.paired_errors
        if pe.n < spec.min_samples:
            return _no_data("error_rate", spec, f"burn-in: {pe.n} of {spec.min_samples} pairs", pe.n, pe.n)
        diff = (pe.worse - pe.better) / pe.n
        se = _paired_null_se(m, pe, "errors.paired", spec.margin)
        n_cs, n1, n2 = float(pe.n), pe.n, pe.n
        how = "paired, Tango score variance"
    else:
        if min(n1, n2) < spec.min_samples:
            return _no_data(
                "error_rate", spec, f"burn-in: {min(n1, n2)} of {spec.min_samples} requests", n1, n2
            )
        diff = m.challenger.count / n2 - m.champion.count / n1
        se = _unpaired_null_se(
            m, m.champion, m.challenger, ("errors.champion", "errors.challenger"), spec.margin
        )
        n_cs = float(n1 + n2)
        how = "unpaired, Farrington-Manning variance"
    return _harm_gate(
        "error_rate",
        spec,
        policy,
        harm=diff,
        se=se,
        n_cs=n_cs,
        limit=spec.margin,
        n1=n1,
        n2=n2,
        describe=f"error rate difference {diff:+.4g} ({how})",
    )


def _accuracy(m: StepMetrics, policy: JudgePolicy) -> _Draft:
    spec = policy.accuracy
    if m.paired_correct is not None:
        pc = m.paired_correct
        if pc.n < spec.min_samples:
            return _no_data(
                "accuracy", spec, f"burn-in: {pc.n} of {spec.min_samples} labelled pairs", pc.n, pc.n
            )
        loss = (pc.worse - pc.better) / pc.n  # champion accuracy minus challenger accuracy
        se = _paired_null_se(m, pc, "correct.paired", spec.margin)
        n_cs, n1, n2, how = float(pc.n), pc.n, pc.n, "paired, Tango score variance"
    elif m.champion_correct is not None and m.challenger_correct is not None:
        a, b = m.champion_correct, m.challenger_correct
        if min(a.n, b.n) < spec.min_samples:
            return _no_data(
                "accuracy", spec, f"burn-in: {min(a.n, b.n)} of {spec.min_samples} labelled rows", a.n, b.n
            )
        loss = a.count / a.n - b.count / b.n
        # harm = champion's accuracy - challenger's: the challenger plays Farrington-Manning's control
        se = _unpaired_null_se(m, b, a, ("correct.challenger", "correct.champion"), spec.margin)
        n_cs, n1, n2, how = float(a.n + b.n), a.n, b.n, "unpaired, Farrington-Manning variance"
    else:
        return _no_data("accuracy", spec, "no labelled outcomes yet")
    return _harm_gate(
        "accuracy",
        spec,
        policy,
        harm=loss,
        se=se,
        n_cs=n_cs,
        limit=spec.margin,
        n1=n1,
        n2=n2,
        scale=-1.0,
        describe=f"accuracy difference {0.0 - loss:+.4g} ({how})",
    )


TAIL_QUANTILE = 0.99
"""The catastrophic-error test counts absolute errors above this quantile of the champion's."""
TAIL_MARGIN = 0.01
"""Tolerated increase of the share of errors above the champion's TAIL_QUANTILE (0.01: 1% -> 2%)."""


def _regression(m: StepMetrics, policy: JudgePolicy) -> _Draft:
    spec = policy.regression
    base = m.champion_abs_error
    pa = m.paired_abs_errors
    if (base is None or base.n == 0) and (pa is None or pa.n == 0):
        return _no_data("regression", spec, "no labelled regression outcomes yet")
    w = 1.0 + spec.margin
    if pa is not None or m.abs_error_difference is not None:
        if pa is not None:
            n = pa.n
            if n < spec.min_samples:
                return _no_data(
                    "regression", spec, f"burn-in: {n} of {spec.min_samples} labelled pairs", n, n
                )
            mae = pa.champion / n
            total = pa.challenger - w * pa.champion
            total_sq = pa.challenger_sq - 2.0 * w * pa.cross + w * w * pa.champion_sq
            mean = total / n
            var = max((total_sq - total * total / n) / (n - 1), 0.0)
        else:  # only the moments of d = e2 - e1 and of e1: a Cauchy-Schwarz bound on the variance
            d = m.abs_error_difference
            assert d is not None and base is not None
            n = d.n
            if n < spec.min_samples:
                return _no_data(
                    "regression", spec, f"burn-in: {n} of {spec.min_samples} labelled pairs", n, n
                )
            mae = base.mean
            mean = d.mean - spec.margin * mae
            var = (math.sqrt(d.variance) + spec.margin * math.sqrt(base.variance)) ** 2
        rows = (n - 1) * var  # sum of squared deviations from the mean
        deff = _deff(m, "abs_error.paired", rows, null=mean, weight=w) if pa is not None else 1.0
        bound = policy.regression_error_bound
        # D = |e2| - (1 + m)|e1| <= bound: the null's D (mean 0) vs the sample's (mean below 0)
        var0 = var if bound is None else null_variance_at_bound(mean, var, bound, -mean)
        se, n_cs, n1, n2, how = math.sqrt(var0 * deff / n), float(n), n, n, "paired"
    elif m.challenger_abs_error is not None and base is not None:
        c = m.challenger_abs_error
        if min(base.n, c.n) < spec.min_samples:
            return _no_data(
                "regression",
                spec,
                f"burn-in: {min(base.n, c.n)} of {spec.min_samples} labelled rows",
                base.n,
                c.n,
            )
        mae = base.mean
        mean = c.mean - w * mae
        d1 = _deff(m, "abs_error.champion", (base.n - 1) * base.variance, null=base.mean)
        d2 = _deff(m, "abs_error.challenger", (c.n - 1) * c.variance, null=c.mean)
        bound = policy.regression_error_bound
        # at the null the challenger's errors (<= bound) have a mean higher by -mean
        v2 = c.variance if bound is None else null_variance_at_bound(c.mean, c.variance, bound, -mean)
        se = math.sqrt(v2 / c.n * d2 + w * w * base.variance / base.n * d1)
        n_cs, n1, n2, how = float(base.n + c.n), base.n, c.n, "unpaired"
    else:
        return _no_data("regression", spec, "no labelled challenger errors yet")
    scale = 1.0 / mae if mae > 0 else 1.0
    bulk = _harm_gate(
        "regression",
        spec,
        policy,
        harm=mean,
        se=se,
        n_cs=n_cs,
        limit=0.0,
        n1=n1,
        n2=n2,
        offset=spec.margin,
        scale=scale,
        describe=f"MAE change {mean * scale + spec.margin:+.2%} ({how}, direct test of |e2| - {w:g} |e1|"
        + (
            ""
            if policy.regression_error_bound is None
            else f", errors up to {policy.regression_error_bound:g}"
        )
        + ")",
    )
    tail = _error_tail(m, policy)
    return bulk if tail is None else _both(bulk, tail)


def null_variance_at_bound(mean: float, var: float, bound: float, gap: float) -> float:
    """Variance at the least favourable null of a variable at most ``bound`` whose mean must rise by ``gap``.

    A sample with mean ``mean`` and variance ``var`` is ``gap`` short of the null (harm = margin). Of the
    distributions of the null, the one hardest to tell from the sample moves a share p of the mass to
    ``bound``, just enough to close the gap: p = gap / (bound - mean); its variance is
    (1 - p) var + p (1 - p) (bound - mean)^2. Rare large errors not (yet) in the sample are then in the
    variance the test uses, as the score tests of proportions use the variance at the null (Farrington
    & Manning 1990). No gap (the mean at or past the null) returns ``var``.
    """
    spread = bound - mean
    if gap <= 0.0 or spread <= 0.0:
        return var
    p = min(gap / spread, 1.0)
    return (1.0 - p) * var + p * (1.0 - p) * spread * spread


def _error_tail(m: StepMetrics, policy: JudgePolicy) -> _Draft | None:
    """Catastrophic errors: the challenger's share above the champion's high quantile, vs the champion's."""
    t = m.error_tail
    spec = policy.regression
    if t is None:
        return None
    if t.paired is not None and t.paired.n >= spec.min_samples:
        pc = t.paired
        harm = (pc.worse - pc.better) / pc.n
        se = _paired_null_se(m, pc, "abs_error_tail.paired", TAIL_MARGIN)
        n_cs, n1, n2, how = float(pc.n), pc.n, pc.n, "paired"
    elif min(t.champion.n, t.challenger.n) >= spec.min_samples:
        a, b = t.champion, t.challenger
        harm = b.count / b.n - a.count / a.n
        nv = stats.farrington_manning(a.count, a.n, b.count, b.n, null=TAIL_MARGIN)
        se, n_cs, n1, n2, how = math.sqrt(nv.variance), float(a.n + b.n), a.n, b.n, "unpaired"
    else:
        return None
    return _harm_gate(
        "regression",
        spec,
        policy,
        harm=harm,
        se=se,
        n_cs=n_cs,
        limit=TAIL_MARGIN,
        n1=n1,
        n2=n2,
        describe=f"share of errors above the champion's {t.quantile:g} quantile ({t.cap:.4g}) "
        f"{harm:+.3%} ({how})",
    )


def _both(bulk: _Draft, tail: _Draft) -> _Draft:
    """Combine the mean test and the tail test of one gate: pass needs both, harm needs either.

    Passing is an intersection-union test (no adjustment); the harm p-value is Bonferroni's
    2 min(p_mean, p_tail), so the gate keeps one p-value in the judge's Holm family.
    """
    v = bulk.verdict
    both_pass = bulk.verdict.outcome == Outcome.PASS and tail.verdict.outcome == Outcome.PASS
    p_bulk = 1.0 if bulk.harm_p is None else bulk.harm_p
    p_tail = 1.0 if tail.harm_p is None else tail.harm_p
    worst = tail if p_tail < p_bulk else bulk
    reason = f"{bulk.verdict.reason}; tail: {tail.verdict.reason}"
    outcome = Outcome.PASS if both_pass else Outcome.INCONCLUSIVE
    if not both_pass and bulk.verdict.outcome == Outcome.PASS:
        reason = f"inconclusive: {bulk.describe} passes, but {tail.verdict.reason}"
    harm_p = min(1.0, 2.0 * min(p_bulk, p_tail))
    verdict = replace(v, outcome=outcome, reason=reason, p_value=harm_p)
    return _Draft(
        verdict,
        harm_p=harm_p,
        describe=f"{bulk.describe}; {tail.describe}",
        fail_bound=worst.fail_bound,
        fail_reason=f"{worst.describe}: {worst.fail_reason}",
    )


def _agreement(m: StepMetrics, policy: JudgePolicy) -> _Draft:
    spec = policy.agreement
    if m.agreement is None:
        return _no_data("agreement", spec, "no compared predictions")
    a = m.agreement
    if a.n < spec.min_samples:
        return _no_data("agreement", spec, f"burn-in: {a.n} of {spec.min_samples} pairs", a.n, a.n)
    share = a.count / a.n
    disagree = 1.0 - share
    limit = 1.0 - spec.margin
    # score variance: the disagreement share's variance at the limit, not at the observed share
    rows = _binary_rows(a.n - a.count, a.n, limit)
    var0 = limit * (1.0 - limit) / a.n * _deff(m, "agreement", rows, null=limit)
    return _harm_gate(
        "agreement",
        spec,
        policy,
        harm=disagree,
        se=math.sqrt(max(var0, 1e-18)),
        n_cs=float(a.n),
        limit=limit,
        n1=a.n,
        n2=a.n,
        offset=1.0,
        scale=-1.0,
        describe=f"agreement {share:.4g} vs minimum {spec.margin:.4g}",
    )


def _latency(m: StepMetrics, policy: JudgePolicy) -> _Draft:
    spec = policy.latency_p99
    h = m.latency
    if h is None:
        return _no_data("latency_p99", spec, "no latency histogram")
    n1, n2 = int(sum(h.champion)), int(sum(h.challenger))
    if min(n1, n2) < spec.min_samples:
        return _no_data("latency_p99", spec, f"burn-in: {min(n1, n2)} of {spec.min_samples} requests", n1, n2)
    p99_champ = stats.quantile_from_histogram(h.champion, h.edges, 0.99)
    p99_chal = stats.quantile_from_histogram(h.challenger, h.edges, 0.99)
    r = stats.quantile_ratio_test(
        h.champion,
        h.challenger,
        h.edges,
        q=0.99,
        ratio=spec.margin,
        floor=policy.latency_floor_ms,
        alpha=policy.alpha,
    )
    ratio = p99_chal / p99_champ if p99_champ > 0 else math.inf
    cs1, cs2 = r.champion, r.challenger
    describe = (
        f"p99 ratio {ratio:.3g} ({p99_chal:.4g} vs {p99_champ:.4g} ms); p99 bounds challenger "
        f"{cs2.lower:.4g}..{cs2.upper:.4g} ms, champion {cs1.lower:.4g}..{cs1.upper:.4g} ms, "
        f"tolerated {spec.margin:g} x champion or {policy.latency_floor_ms:g} ms"
    )
    good = cs2.upper / cs1.lower if cs1.lower > 0 else math.inf
    bad = cs2.lower / cs1.upper if cs1.upper > 0 and math.isfinite(cs1.upper) else 0.0
    if r.pass_p <= policy.alpha:
        outcome, why = Outcome.PASS, f"non-inferior: {describe}, p = {r.pass_p:.3g}"
    else:
        outcome, why = Outcome.INCONCLUSIVE, f"inconclusive: {describe}"
    verdict = Verdict(
        "latency_p99",
        spec.role,
        outcome,
        ratio - spec.margin,
        good,
        ratio,
        spec.margin,
        n1,
        n2,
        why,
        p_value=r.harm_p,
        interval=stats.Interval(bad, good),
    )
    return _Draft(
        verdict,
        harm_p=r.harm_p,
        describe=describe,
        fail_bound=bad,
        fail_reason=f"challenger p99 proven above {spec.margin:g} x the champion's",
    )


def _drift(m: StepMetrics, policy: JudgePolicy) -> _Draft:
    spec = policy.drift
    h = m.outputs
    if h is None:
        return _no_data("drift", spec, "no output histogram")
    n1, n2 = int(sum(h.champion)), int(sum(h.challenger))
    if min(n1, n2) < spec.min_samples:
        return _no_data("drift", spec, f"burn-in: {min(n1, n2)} of {spec.min_samples} outputs", n1, n2)
    r = stats.psi_from_counts(h.champion, h.challenger)
    stat = r.psi / (1.0 / n1 + 1.0 / n2)
    if r.psi <= spec.margin:
        outcome, why = Outcome.PASS, f"PSI {r.psi:.4g} <= {spec.margin:.4g}"
    elif r.psi > r.threshold:
        outcome, why = (
            Outcome.FAIL,
            f"drift: PSI {r.psi:.4g} > {spec.margin:.4g} and above noise {r.threshold:.4g}",
        )
    else:
        outcome, why = (
            Outcome.INCONCLUSIVE,
            f"PSI {r.psi:.4g} > {spec.margin:.4g} but within noise {r.threshold:.4g}",
        )
    v = Verdict("drift", spec.role, outcome, stat, r.threshold, r.psi, spec.margin, n1, n2, why)
    return _Draft(v)


def _vetoes(m: StepMetrics, policy: JudgePolicy) -> list[Verdict]:
    out: list[Verdict] = []
    n1, n2 = m.champion.n, m.challenger.n
    if m.mode == "canary" and m.challenger_weight is not None:
        w = m.challenger_weight
        u1, u2 = m.units if m.units is not None else (n1, n2)
        unit = "routing keys" if m.units is not None else "requests"
        expected = min(w, 1.0 - w) * (u1 + u2)
        if expected < policy.srm_min_expected:
            out.append(
                Verdict(
                    "srm",
                    "veto",
                    Outcome.NO_DATA,
                    math.nan,
                    policy.srm_alpha,
                    math.nan,
                    w,
                    u1,
                    u2,
                    f"burn-in: the smaller arm expects {expected:.3g} of {policy.srm_min_expected:g} {unit}",
                )
            )
        else:
            # Sequential: the Dirichlet-multinomial Bayes factor is a test martingale, re-testing at
            # every look keeps the false-veto rate at srm_alpha (Lindon & Malek 2022).
            r = stats.srm_bayes_factor([u1, u2], [1.0 - w, w])
            share = u2 / (u1 + u2)
            bad = r.p_value <= policy.srm_alpha
            why = (
                f"sample-ratio mismatch: challenger share of {unit} {share:.4f} vs {w:.4f}, p = {r.p_value:.3g}"
                if bad
                else f"split as configured: challenger share of {unit} {share:.4f} vs {w:.4f}, p = {r.p_value:.3g}"
            )
            out.append(
                Verdict(
                    "srm",
                    "veto",
                    Outcome.FAIL if bad else Outcome.PASS,
                    r.log_bayes_factor,
                    policy.srm_alpha,
                    share,
                    w,
                    u1,
                    u2,
                    why,
                    p_value=r.p_value,
                )
            )
    if policy.error_rate_slo is not None:
        slo = policy.error_rate_slo
        if n2 < policy.slo_min_samples:
            out.append(
                Verdict(
                    "error_rate_slo",
                    "veto",
                    Outcome.NO_DATA,
                    math.nan,
                    math.nan,
                    math.nan,
                    slo,
                    n1,
                    n2,
                    f"burn-in: {n2} of {policy.slo_min_samples} requests",
                )
            )
        else:
            rate = m.challenger.count / n2
            se = _bernoulli_se(m.challenger.count, n2)
            lower = stats.confidence_sequence(
                rate, se, n2, alpha=policy.alpha, n_star=policy.n_star, side="greater"
            ).lower
            # decided by the exact beta-binomial mixture (H0: rate <= SLO), not the Wald bound
            slo_p = float(stats.exceedance_p_value(m.challenger.count, n2, share=slo, side="greater"))
            bad = 0.0 < slo < 1.0 and slo_p <= policy.alpha
            out.append(
                Verdict(
                    "error_rate_slo",
                    "veto",
                    Outcome.FAIL if bad else Outcome.PASS,
                    (rate - slo) / se,
                    lower,
                    rate,
                    slo,
                    n1,
                    n2,
                    f"challenger error rate {rate:.4g}, lower bound {lower:.4g} vs SLO {slo:.4g}, "
                    f"p = {slo_p:.3g} (H0: rate <= SLO)",
                    p_value=slo_p,
                )
            )
    if policy.latency_p99_slo_ms is not None and m.latency is not None:
        slo_ms = policy.latency_p99_slo_ms
        h = m.latency
        k2 = int(sum(h.challenger))
        if k2 < policy.slo_min_samples:
            out.append(
                Verdict(
                    "latency_p99_slo",
                    "veto",
                    Outcome.NO_DATA,
                    math.nan,
                    math.nan,
                    math.nan,
                    slo_ms,
                    int(sum(h.champion)),
                    k2,
                    f"burn-in: {k2} of {policy.slo_min_samples} requests",
                )
            )
        else:
            above = stats.share_above(h.challenger, h.edges, slo_ms)
            share, se = above / k2, _bernoulli_se(above, k2)
            # p99 >= e proven for an edge e >= SLO: exact share test on the counts at and above e
            e = np.asarray(h.edges[:-1], dtype=float)
            at_or_above = np.cumsum(np.asarray(h.challenger, dtype=float)[::-1])[::-1]
            p_edge = stats.exceedance_p_value(at_or_above, k2, share=0.01, side="greater")
            slo_p = float(np.min(np.where(e >= slo_ms, p_edge, 1.0)))
            lower = stats.quantile_confidence_sequence(h.challenger, h.edges, 0.99, alpha=policy.alpha).lower
            bad = slo_p <= policy.alpha
            p99 = stats.quantile_from_histogram(h.challenger, h.edges, 0.99)
            out.append(
                Verdict(
                    "latency_p99_slo",
                    "veto",
                    Outcome.FAIL if bad else Outcome.PASS,
                    (share - 0.01) / se,
                    lower,
                    p99,
                    slo_ms,
                    int(sum(h.champion)),
                    k2,
                    f"challenger p99 {p99:.4g} ms (lower bound {lower:.4g} ms); {share:.2%} above the "
                    f"{slo_ms:.4g} ms SLO, p = {slo_p:.3g} (H0: p99 <= SLO)",
                    p_value=slo_p,
                )
            )
    return out


def _coverage(m: StepMetrics, policy: JudgePolicy) -> _Draft:
    """Was enough of the shadow sample scored? Pass when the lower bound of the share clears the margin.

    Never a harm: a router that skipped requests says nothing about the challenger. It passes or
    stays inconclusive ("too little was scored"); as a required gate it holds promotion until the
    scored share is proven, with the same one-sided confidence sequence as the other gates.
    """
    spec = policy.coverage
    c = m.coverage
    if c is None or c.n == 0:
        return _no_data("coverage", spec, "no shadow sample")
    if c.n < spec.min_samples:
        return _no_data(
            "coverage", spec, f"burn-in: {c.n} of {spec.min_samples} sampled requests", c.n, c.count
        )
    share = c.count / c.n
    lower = stats.confidence_sequence(
        share,
        _bernoulli_se(c.count, c.n),
        float(c.n),
        alpha=policy.alpha,
        n_star=policy.n_star,
        side="greater",
    ).lower
    upper = stats.confidence_sequence(
        share,
        _bernoulli_se(c.count, c.n),
        float(c.n),
        alpha=policy.alpha,
        n_star=policy.n_star,
        side="lesser",
    ).upper
    described = f"{c.count} of {c.n} sampled requests scored ({share:.1%})"
    if lower > spec.margin:
        outcome, why = (
            Outcome.PASS,
            f"enough scored: {described}, lower bound {lower:.4g} > {spec.margin:.4g}",
        )
    else:
        outcome, why = (
            Outcome.INCONCLUSIVE,
            f"too little scored: {described}, lower bound {lower:.4g} <= {spec.margin:.4g}",
        )
    verdict = Verdict(
        "coverage",
        spec.role,
        outcome,
        float((spec.margin - share) / max(_bernoulli_se(c.count, c.n), 1e-12)),
        float(lower),
        float(share),
        spec.margin,
        c.n,
        c.count,
        why,
        interval=stats.Interval(float(lower), float(upper)),
    )
    return _Draft(verdict)


def _quality_draft(e: quality.HarmEstimate, policy: JudgePolicy) -> _Draft:
    """Decide one estimate of ``controller.core.metrics`` like the gates above (role "hold": harm holds)."""
    spec = GateSpec(role="guardrail" if e.role == "hold" else e.role, margin=e.margin, min_samples=0)  # type: ignore[arg-type]
    if e.no_data is not None:
        d = _no_data(e.gate, spec, e.no_data, e.n1, e.n2)
    elif e.fixed:
        d = _fixed_horizon_gate(e, spec, policy)
    else:
        d = _harm_gate(
            e.gate, spec, policy, harm=e.harm, se=e.se, n_cs=e.n_cs, limit=e.limit, n1=e.n1, n2=e.n2,
            describe=e.describe, offset=e.offset, scale=e.scale,
        )  # fmt: skip
    if e.role == "hold":
        v = d.verdict
        d = _Draft(
            Verdict(v.gate, "hold", v.outcome, v.statistic, v.bound, v.effect, v.margin, v.n_champion,
                    v.n_challenger, v.reason, p_value=v.p_value, interval=v.interval),
            harm_p=d.harm_p, describe=d.describe, fail_bound=d.fail_bound, fail_reason=d.fail_reason,
        )  # fmt: skip
    return d


def _fixed_horizon_gate(e: quality.HarmEstimate, spec: GateSpec, policy: JudgePolicy) -> _Draft:
    """Test once at a planned n: one-sided normal bounds at 1 - alpha and the normal harm p-value."""
    from scipy.stats import norm

    z = float(norm.ppf(1.0 - policy.alpha))
    upper, lower = e.harm + z * e.se, e.harm - z * e.se
    p = float(norm.sf((e.harm - e.limit) / e.se)) if e.se > 0 else (0.0 if e.harm > e.limit else 1.0)

    def show(x: float) -> float:
        return float(e.offset + e.scale * x)

    good, bad, lim = show(upper), show(lower), show(e.limit)
    good_cmp = f"lower bound {good:.4g} > {lim:.4g}" if e.scale < 0 else f"upper bound {good:.4g} < {lim:.4g}"
    bad_cmp = f"upper bound {bad:.4g} < {lim:.4g}" if e.scale < 0 else f"lower bound {bad:.4g} > {lim:.4g}"
    if upper < e.limit:
        outcome, why = Outcome.PASS, f"non-inferior: {e.describe}, {good_cmp}"
    else:
        outcome, why = Outcome.INCONCLUSIVE, f"inconclusive: {e.describe}, bounds include {lim:.4g}"
    statistic = (e.harm - e.limit) / e.se if e.se > 0 else 0.0
    verdict = Verdict(
        e.gate, spec.role, outcome, statistic, good, show(e.harm), spec.margin, e.n1, e.n2, why,
        p_value=p, interval=stats.Interval(min(good, bad), max(good, bad)),
    )  # fmt: skip
    return _Draft(verdict, harm_p=p, describe=e.describe, fail_bound=bad, fail_reason=bad_cmp)


_GATES = {
    "error_rate": _error_rate,
    "latency_p99": _latency,
    "agreement": _agreement,
    "accuracy": _accuracy,
    "regression": _regression,
    "drift": _drift,
    "coverage": _coverage,
}


def arm_values(m: StepMetrics) -> dict[str, dict[str, float]]:
    """Return what each two-arm gate compares, per arm, from the metrics it judged (for the plots).

    ``error_rate``: failed / requests; ``accuracy``: correct / labelled rows; ``regression``: mean absolute
    error; ``latency_p99``: p99 in ms read off the judge's histogram. A gate whose arms have no data yet
    is left out. Agreement, drift and coverage compare no arm against the other (their effect is the
    figure itself), so they have no entry.
    """
    out: dict[str, dict[str, float]] = {}

    def pair(gate: str, champion: float | None, challenger: float | None) -> None:
        if (
            champion is not None
            and challenger is not None
            and math.isfinite(champion)
            and math.isfinite(challenger)
        ):
            out[gate] = {"champion": float(champion), "challenger": float(challenger)}

    def share(p: Proportion | None) -> float | None:
        return p.count / p.n if p is not None and p.n else None

    pair("error_rate", share(m.champion), share(m.challenger))
    pair("accuracy", share(m.champion_correct), share(m.challenger_correct))
    c, h = m.champion_abs_error, m.challenger_abs_error
    pair("regression", c.mean if c is not None and c.n else None, h.mean if h is not None and h.n else None)
    if m.latency is not None and any(m.latency.champion) and any(m.latency.challenger):
        pair(
            "latency_p99",
            stats.quantile_from_histogram(m.latency.champion, m.latency.edges, 0.99),
            stats.quantile_from_histogram(m.latency.challenger, m.latency.edges, 0.99),
        )
    return out


def _enabled(policy: JudgePolicy, name: str) -> bool:
    spec: GateSpec = getattr(policy, name)
    return spec.enabled


# --------------------------------------------------------------------------------------------------
# Combination
# --------------------------------------------------------------------------------------------------


LABELLED_GATES: frozenset[str] = frozenset({"accuracy", "regression"})
"""Required gates that need labels: the final promotion needs each of them to pass on its own."""

HOLM_EXEMPT: frozenset[str] = frozenset({"drift"})
"""Gates decided by their own rule (PSI above its noise threshold), without a harm p-value."""


def _with_p(
    v: Verdict, outcome: Outcome, p: float, reason: str | None = None, bound: float | None = None
) -> Verdict:
    return replace(
        v, outcome=outcome, p_value=p, reason=v.reason if reason is None else reason,
        bound=v.bound if bound is None else bound,
    )  # fmt: skip


def judge(metrics: StepMetrics, policy: JudgePolicy) -> Judgement:
    """Judge one rollout step: evaluate every enabled gate and combine the verdicts into a decision.

    The harm family is fixed per step: every enabled required or guardrail gate whose failure rolls back
    (``on_fail="rollback"``) and which has a harm p-value by design (not ``HOLM_EXEMPT``); a gate without
    data counts with p = 1. Its p-values are Holm-adjusted together; a gate fails when its adjusted
    p-value is <= ``policy.alpha``. See the module docstring for the decision rules.
    """
    drafts = [_GATES[name](metrics, policy) for name in _GATES if _enabled(policy, name)]
    # the quality gates of controller.core.metrics (class-aware metrics, losses, outcome, segments)
    drafts += [_quality_draft(e, policy) for e in quality.estimates(metrics.quality, policy.quality)]
    spec_of = {name: getattr(policy, name) for name in _GATES}

    def rolls_back(d: _Draft) -> bool:
        spec = spec_of.get(d.verdict.gate)
        return d.harm_p is not None if spec is None else spec.on_fail == "rollback"

    family = [
        i
        for i, d in enumerate(drafts)
        if d.verdict.role != "informational" and d.verdict.gate not in HOLM_EXEMPT and rolls_back(d)
    ]
    raw = [1.0 if drafts[i].harm_p is None else float(drafts[i].harm_p) for i in family]  # type: ignore[arg-type]
    adjusted = dict(zip(family, stats.holm(raw).tolist() if family else [], strict=True))
    verdicts: list[Verdict] = []
    for i, d in enumerate(drafts):
        v = d.verdict
        if d.harm_p is not None:
            p_adj = float(adjusted.get(i, d.harm_p))
            if p_adj <= policy.alpha:
                label = "harm" if i in family else "below"
                adj = "Holm-adjusted " if i in family else ""
                why = f"{label}: {d.describe}, {d.fail_reason}, {adj}p = {p_adj:.3g}"
                v = _with_p(v, Outcome.FAIL, p_adj, why, d.fail_bound)
            else:
                v = _with_p(v, v.outcome, p_adj)
        verdicts.append(v)
    proxy = _agreement_proxy(metrics, policy)
    if proxy is not None:
        verdicts.append(proxy)
    veto_policy = policy if policy.veto_alpha is None else replace(policy, alpha=policy.veto_alpha)
    verdicts.extend(_vetoes(metrics, veto_policy))
    return _combine(verdicts, spec_of, policy)


def _agreement_proxy(metrics: StepMetrics, policy: JudgePolicy) -> Verdict | None:
    """Agreement tested at the accuracy margin: proven >= 1 - margin bounds the accuracy drop."""
    if not (policy.agreement_stands_in and policy.accuracy.enabled and policy.accuracy.role == "required"):
        return None
    if policy.final:
        return None
    minimum = max(policy.agreement.margin, 1.0 - policy.accuracy.margin)
    spec = replace(policy.agreement, role="required", margin=minimum, enabled=True)
    d = _GATES["agreement"](metrics, replace(policy, agreement=spec))
    return replace(
        d.verdict,
        gate="agreement_proxy",
        role="proxy",
        reason=f"stands in for accuracy on a step that is not the last: {d.verdict.reason}",
    )


def _combine(verdicts: list[Verdict], spec_of: dict[str, GateSpec], policy: JudgePolicy) -> Judgement:
    def spec(v: Verdict) -> GateSpec | None:
        return spec_of.get(v.gate)

    deciding_roles = ("required", "guardrail")
    vetoed = [v for v in verdicts if v.role == "veto" and v.outcome == Outcome.FAIL]
    failing = [v for v in verdicts if v.role in deciding_roles and v.outcome == Outcome.FAIL]
    harmed = [v for v in failing if (s := spec(v)) is None or s.on_fail == "rollback"]
    required = [v for v in verdicts if v.role == "required"]
    labelled = [v for v in required if v.gate in LABELLED_GATES]
    # A hold gate (agreement) proven below its minimum holds the step until labels decide: once every
    # required labelled gate passes, the labels have decided and the hold is lifted.
    labels_decided = bool(labelled) and all(v.outcome == Outcome.PASS for v in labelled)
    held = [] if labels_decided else [v for v in failing if v not in harmed]
    proxy = next((v for v in verdicts if v.gate == "agreement_proxy"), None)

    waiting: list[str] = []
    for v in required:
        if v.outcome == Outcome.PASS:
            continue
        if v.gate == "accuracy" and proxy is not None and proxy.outcome == Outcome.PASS:
            continue  # accuracy proven within its margin through agreement (not the final promotion)
        waiting.append(f"{v.gate} {v.outcome.label}")
    for v in verdicts:
        s = spec(v)
        no_data = v.outcome == Outcome.NO_DATA and v.role in ("guardrail", "veto")
        # The SRM check guards the split, not the challenger's quality: with few routing keys (200 keys at
        # a 5% step expect 10 on the challenger, below srm_min_expected) it can never run, and waiting for
        # it would hold every canary step of such a deployment until its budget ran out.
        if no_data and v.gate != "srm" and (s is None or not s.allow_no_data):
            waiting.append(f"{v.gate} no-data (blocks promotion until it has data)")

    deciding = required + [
        v for v in verdicts if v.role in (*deciding_roles, "veto") and v.outcome == Outcome.FAIL
    ]
    outcome = Outcome.worst([v.outcome for v in deciding]) if deciding else Outcome.NO_DATA

    decision: Recommendation
    if vetoed:
        decision, reason = "veto", "veto: " + "; ".join(f"{v.gate}: {v.reason}" for v in vetoed)
    elif harmed:
        # a harmed verdict's own reason starts "harm: ": said once, not "harm: regression: harm: ..."
        decision, reason = (
            "rollback",
            "harm: " + "; ".join(f"{v.gate}: {v.reason.removeprefix('harm: ')}" for v in harmed),
        )
    elif held:
        decision = "continue"
        reason = "hold (not harm; labels decide): " + "; ".join(f"{v.gate}: {v.reason}" for v in held)
    elif quality_held := [v for v in verdicts if v.role == "hold" and v.outcome == Outcome.FAIL]:
        decision, reason = "continue", "hold: " + "; ".join(f"{v.gate}: {v.reason}" for v in quality_held)
    elif required and not waiting:
        how = [
            "accuracy (through agreement)" if v.gate == "accuracy" and v.outcome != Outcome.PASS else v.gate
            for v in required
        ]
        decision, reason = "promote", "every required gate is non-inferior: " + ", ".join(how)
    else:
        decision = "continue"
        reason = "continue: " + (", ".join(waiting) if waiting else "no required gate configured")
    return Judgement(decision, outcome, tuple(verdicts), reason, _summary(verdicts, policy))


LABEL_DELAY_TOLERANCE_S = 60.0
"""Labels arriving this much later than ``label_maturity_s`` do not yet hold a final promotion."""


def hold_for_label_delays(
    judgement: Judgement, *, final: bool, label_delay_s: float | None, maturity_s: float
) -> Judgement:
    """Hold a final promotion while labels arrive later than ``label_maturity_s`` allows for.

    ``label_delay_s``: the longest delay between a request and its label seen in the rollout so far
    (None: no label yet). A label maturity shorter than the delays lets the earliest labels decide; if
    the delay depends on the outcome (wrong answers reported a day later, right ones within the hour)
    those labels are a biased sample, and a worse challenger looks equal or better (the simulator's
    outcome-order row promoted it in 99% of rollouts). No test can see that bias in the labels that have
    arrived, so the final promotion waits for the policy to say how long labels take: the hold names
    the delay to set. Other decisions (rollback on proven harm, earlier stages) stand.
    """
    if not final or judgement.decision != "promote" or label_delay_s is None:
        return judgement
    if label_delay_s <= maturity_s + LABEL_DELAY_TOLERANCE_S:
        return judgement
    reason = (
        f"hold: labels arrive up to {label_delay_s:.0f} s after their requests but label_maturity_s is "
        f"{maturity_s:g} s: the earliest labels may be a biased sample (set label_maturity_s to at least "
        f"{label_delay_s:.0f} s); {judgement.reason}"
    )
    return replace(judgement, decision="continue", reason=reason)


OUTCOME_LABEL_TOLERANCE = 0.05
"""Labelled share by which disagreeing pairs may trail agreeing ones before labels look outcome-dependent."""


def outcome_dependent_labels(
    agreeing: Proportion,
    disagreeing: Proportion,
    *,
    alpha: float,
    n_star: float,
    tolerance: float = OUTCOME_LABEL_TOLERANCE,
) -> str | None:
    """Return why labels look outcome-dependent, or None when they do not (or there is too little data).

    ``agreeing`` / ``disagreeing``: pairs old enough for their labels where the arms agreed / disagreed
    (``n``) and how many of them have a label (``count``). Null hypothesis: the labelled share of
    disagreeing pairs is at most ``tolerance`` below that of agreeing ones. Rejected when the always-valid
    one-sided p-value of the difference (the asymptotic confidence sequence of Waudby-Smith et al.,
    unpooled Wald standard error, as ``confidence_sequence_p_value``) is below ``alpha``, so looking at
    every step does not inflate the false holds.
    """
    if agreeing.n == 0 or disagreeing.n == 0:
        return None
    qa, qd = agreeing.count / agreeing.n, disagreeing.count / disagreeing.n
    se = math.sqrt(
        _bernoulli_se(agreeing.count, agreeing.n) ** 2 + _bernoulli_se(disagreeing.count, disagreeing.n) ** 2
    )
    p = stats.confidence_sequence_p_value(
        qa - qd, se, agreeing.n + disagreeing.n, null=tolerance, alpha=alpha, n_star=n_star, side="greater"
    ).p_value
    if p >= alpha:
        return None
    return (
        f"labels look outcome-dependent: {qd:.0%} of {disagreeing.n} disagreeing pairs labelled vs "
        f"{qa:.0%} of {agreeing.n} agreeing (p = {p:.2g} < {alpha:g}); labels of one kind of answer "
        "arrive later, so the labelled pairs are a biased sample (raise label_maturity_s to the labels' "
        "delay)"
    )


def hold_for_outcome_dependent_labels(
    judgement: Judgement,
    *,
    final: bool,
    agreeing: Proportion | None,
    disagreeing: Proportion | None,
    alpha: float,
    n_star: float,
) -> Judgement:
    """Hold a final promotion while disagreeing pairs are significantly less labelled than agreeing ones.

    Catches what ``hold_for_label_delays`` cannot see yet: labels of wrong answers that will arrive
    later than any label so far (a day, with the others after an hour and label_maturity_s set to the
    hour). The labelled pairs then over-represent the challenger's right answers where the arms
    disagree. Other decisions (rollback on proven harm, earlier stages) stand; the hold lifts once the
    late labels arrive and the shares match.
    """
    if not final or judgement.decision != "promote" or agreeing is None or disagreeing is None:
        return judgement
    why = outcome_dependent_labels(agreeing, disagreeing, alpha=alpha, n_star=n_star)
    if why is None:
        return judgement
    return replace(judgement, decision="continue", reason=f"hold: {why}; {judgement.reason}")


def _summary(verdicts: Sequence[Verdict], policy: JudgePolicy) -> Summary:
    counted = [v for v in verdicts if v.outcome != Outcome.NO_DATA]
    if not counted:
        return Summary(math.nan, "no-data", 0, 0)
    passing = sum(v.outcome == Outcome.PASS for v in counted)
    score = passing / len(counted)
    band: Literal["pass", "marginal", "fail"] = (
        "pass" if score >= policy.summary_pass else "marginal" if score >= policy.summary_marginal else "fail"
    )
    return Summary(score, band, passing, len(counted))
