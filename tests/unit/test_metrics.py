"""controller.core.metrics against scikit-learn (1e-9) and against closed-form variances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from controller.core import metrics as q
from controller.core.judge import JudgePolicy, Outcome, StepMetrics, judge
from controller.core.judge import Proportion as Prop

RNG = np.random.default_rng(20261205)
N = 600
Y3 = RNG.choice(["a", "b", "c"], size=N, p=[0.6, 0.3, 0.1])
A3 = np.where(RNG.random(N) < 0.7, Y3, RNG.choice(["a", "b", "c"], size=N))
B3 = np.where(RNG.random(N) < 0.6, Y3, RNG.choice(["a", "b"], size=N))
NAMES3 = ("a", "b", "c")


def _matrix(y: np.ndarray, p: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    return skm.confusion_matrix(y, p, labels=list(names)).astype(float)


@pytest.mark.parametrize(
    ("y", "p", "names"),
    [
        (Y3, A3, NAMES3),
        (Y3, B3, NAMES3),
        (Y3[:200] == "c", np.zeros(200, dtype=bool), (False, True)),  # never predicts the positive class
    ],
)
def test_confusion_metrics_match_scikit_learn(y: np.ndarray, p: np.ndarray, names: tuple) -> None:
    names_s = tuple(str(x) for x in names)
    ys, ps = np.array([str(v) for v in y]), np.array([str(v) for v in p])
    m = _matrix(ys, ps, names_s)
    present = [j for j in range(len(names)) if m[j, :].sum() + m[:, j].sum() > 0]
    labels = [names_s[j] for j in present]
    assert q.classification_value(m, "accuracy") == pytest.approx(skm.accuracy_score(ys, ps), abs=1e-9)
    assert q.classification_value(m, "balanced_accuracy") == pytest.approx(
        skm.balanced_accuracy_score(ys, ps), abs=1e-9
    )
    assert q.classification_value(m, "macro_f1", classes=present) == pytest.approx(
        skm.f1_score(ys, ps, labels=labels, average="macro", zero_division=0), abs=1e-9
    )
    for j, name in enumerate(names_s):
        if m[j, :].sum() > 0:
            assert q.classification_value(m, "recall", cls=j) == pytest.approx(
                skm.recall_score(ys, ps, labels=[name], average="macro", zero_division=0), abs=1e-9
            )
        assert q.classification_value(m, "precision", cls=j) == pytest.approx(
            skm.precision_score(ys, ps, labels=[name], average="macro", zero_division=0), abs=1e-9
        )


def test_recall_standard_error_is_the_binomial_one_and_balanced_accuracy_adds_them() -> None:
    m = _matrix(Y3, A3, NAMES3)
    n = m.sum()
    for j in range(3):
        r, f = q.influence(m, "recall", cls=j)
        var = float((m * f * f).sum()) / n**2
        nk = m[j, :].sum()
        assert var == pytest.approx(r * (1 - r) / nk, rel=1e-12)  # Wald variance of a proportion
    ba, f = q.influence(m, "balanced_accuracy")
    var = float((m * f * f).sum()) / n**2
    recalls = [m[j, j] / m[j, :].sum() for j in range(3)]
    expected = sum(r * (1 - r) / m[j, :].sum() for j, r in enumerate(recalls)) / 9
    assert var == pytest.approx(expected, rel=1e-12)


def test_paired_accuracy_difference_has_the_mcnemar_variance() -> None:
    conf = q.confusion_from_rows(Y3, A3, B3, names=NAMES3)
    est = q.estimates(
        q.QualityStats(confusion=conf),
        q.QualityPolicy(gates=(q.MetricSpec(metric="accuracy", margin=0.01, min_samples=10),)),
    )[0]
    right_a, right_b = A3 == Y3, B3 == Y3
    worse, better = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    d = (worse - better) / N
    assert est.harm == pytest.approx(d, abs=1e-12)
    assert est.se**2 == pytest.approx(((worse + better) / N - d * d) / N, rel=1e-12)


def test_proper_scores_and_regression_losses_match_scikit_learn() -> None:
    y = (RNG.random(400) < 0.3).astype(int)
    p1 = np.clip(0.3 + 0.4 * (y - 0.3) + RNG.normal(0, 0.15, 400), 0, 1)
    p1[:3] = [0.0, 1.0, 1e-20]
    p_true = np.where(y == 1, p1, 1 - p1)
    ll = -np.log(np.clip(p_true, q.EPS, 1 - q.EPS))
    moments = q.LossMoments.from_rows(ll, ll, paired=True)
    assert moments.s1 / moments.n1 == pytest.approx(skm.log_loss(y, p1, labels=[0, 1]), abs=1e-9)
    brier = (p1 - y) ** 2
    assert brier.mean() == pytest.approx(skm.brier_score_loss(y, p1), abs=1e-9)

    target = RNG.normal(10, 3, 300)
    yhat1, yhat2 = target + RNG.normal(0, 1, 300), target + RNG.normal(0.5, 1.5, 300)
    sq = q.SquaredErrorMoments.from_rows(yhat1 - target, yhat2 - target, paired=True)
    r1, r2, diff, se, _, _ = sq.difference() or (0, 0, 0, 0, 0, 0)
    assert r1 == pytest.approx(math.sqrt(skm.mean_squared_error(target, yhat1)), abs=1e-9)
    assert r2 == pytest.approx(math.sqrt(skm.mean_squared_error(target, yhat2)), abs=1e-9)
    for level in (0.1, 0.5, 0.9):
        u = target - yhat2
        loss = np.maximum(level * u, (level - 1) * u)
        assert loss.mean() == pytest.approx(skm.mean_pinball_loss(target, yhat2, alpha=level), abs=1e-9)


def test_rmse_difference_standard_error_matches_the_delta_method_on_per_row_influence() -> None:
    e1, e2 = RNG.normal(0, 1, 500), RNG.normal(0, 1.3, 500)
    sq = q.SquaredErrorMoments.from_rows(e1, e2, paired=True)
    _, _, diff, se, _, _ = sq.difference() or (0, 0, 0, 0, 0, 0)
    m1, m2 = np.mean(e1**2), np.mean(e2**2)
    influence = (e2**2 - m2) / (2 * np.sqrt(m2)) - (e1**2 - m1) / (2 * np.sqrt(m1))
    assert se == pytest.approx(math.sqrt(np.mean(influence**2) / 500), rel=1e-9)
    assert diff == pytest.approx(np.sqrt(m2) - np.sqrt(m1), rel=1e-12)


def test_roc_auc_matches_scikit_learn_and_delong_matches_its_definition() -> None:
    y = RNG.random(300) < 0.25
    s1 = np.round(y * 0.8 + RNG.normal(0, 0.5, 300), 1)  # rounded: ties
    s2 = np.round(y * 0.5 + RNG.normal(0, 0.5, 300), 1)
    assert q.roc_auc(y, s1) == pytest.approx(skm.roc_auc_score(y, s1), abs=1e-12)
    a1, a2, var = q.delong(y, s1, s2)
    assert (a1, a2) == (pytest.approx(skm.roc_auc_score(y, s1)), pytest.approx(skm.roc_auc_score(y, s2)))

    # DeLong, DeLong & Clarke-Pearson (1988) directly: psi kernel, V10 per positive, V01 per negative.
    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    v10a, v01a = components(s1)
    v10b, v01b = components(s2)
    m, n = y.sum(), (~y).sum()
    s10 = np.cov(v10a - v10b, ddof=1)
    s01 = np.cov(v01a - v01b, ddof=1)
    assert var == pytest.approx(float(s10 / m + s01 / n), rel=1e-9)


def test_reliability_curve_matches_scikit_learn_calibration_curve() -> None:
    from sklearn.calibration import calibration_curve

    y = RNG.random(500) < 0.4
    p = np.clip(0.4 + (y - 0.4) * 0.3 + RNG.normal(0, 0.2, 500), 0, 1)
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="uniform")
    curve = q.reliability_curve(y, p, bins=10)
    assert [c[0] for c in curve] == pytest.approx(list(predicted), abs=1e-9)
    assert [c[1] for c in curve] == pytest.approx(list(observed), abs=1e-9)


def _imbalanced(n: int = 20_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2% positive class: the champion finds 57% of positives, the challenger never predicts one."""
    rng = np.random.default_rng(7)
    y = rng.random(n) < 0.02
    champion = np.where(y, rng.random(n) < 0.57, rng.random(n) < 0.004)
    challenger = np.zeros(n, dtype=bool)
    return y, champion, challenger


def test_balanced_accuracy_rolls_back_a_challenger_that_never_predicts_the_rare_class() -> None:
    y, a, b = _imbalanced()
    accuracy_a, accuracy_b = (a == y).mean(), (b == y).mean()
    assert accuracy_a - accuracy_b < 0.01  # inside the accuracy gate's one-point margin
    conf = q.confusion_from_rows(y, a, b, names=(False, True))
    n = y.size
    policy = JudgePolicy(
        quality=q.QualityPolicy(
            gates=(q.MetricSpec(metric="balanced_accuracy", role="required", margin=0.05),)
        )
    )
    metrics = StepMetrics(
        mode="shadow",
        champion=Prop(n=n, count=0),
        challenger=Prop(n=n, count=0),
        quality=q.QualityStats(confusion=conf),
    )
    result = judge(metrics, policy)
    gate = next(v for v in result.verdicts if v.gate == "balanced_accuracy")
    assert gate.outcome == Outcome.FAIL
    assert result.decision == "rollback"


def test_a_hold_segment_blocks_promotion_without_rolling_back() -> None:
    rng = np.random.default_rng(3)
    n = 6000
    y = rng.random(n) < 0.5
    segment = np.where(rng.random(n) < 0.2, "FR", "DE")
    champion = np.where(rng.random(n) < 0.9, y, ~y)
    challenger = np.where((segment == "FR") & (rng.random(n) < 0.35), ~y, champion)
    stats = [
        q.SegmentStats(
            column="country",
            value=v,
            confusion=q.confusion_from_rows(
                y[segment == v], champion[segment == v], challenger[segment == v], names=(False, True)
            ),
        )  # fmt: skip
        for v in ("DE", "FR")
    ]
    policy = JudgePolicy(
        quality=q.QualityPolicy(
            segments=q.SegmentPolicy(role="hold", metrics=(q.MetricSpec(metric="accuracy", margin=0.02),))
        )
    )
    metrics = StepMetrics(
        mode="shadow",
        champion=Prop(n=n, count=0),
        challenger=Prop(n=n, count=0),
        quality=q.QualityStats(segments=tuple(stats)),
    )
    result = judge(metrics, policy)
    by_gate = {v.gate: v for v in result.verdicts}
    assert by_gate["segment[country=FR].accuracy"].outcome == Outcome.FAIL
    assert by_gate["segment[country=DE].accuracy"].outcome != Outcome.FAIL
    assert result.decision == "continue" and "country=FR" in result.reason


def test_roc_auc_waits_for_its_fixed_horizon_then_tests_once_with_the_delong_normal_bound() -> None:
    from scipy.stats import norm

    spec = q.MetricSpec(metric="roc_auc", role="guardrail", margin=0.02, horizon=300)
    policy = JudgePolicy(quality=q.QualityPolicy(gates=(spec,)))
    y = RNG.random(300) < 0.3
    s1, s2 = y * 1.0 + RNG.normal(0, 0.6, 300), y * 0.3 + RNG.normal(0, 0.6, 300)

    def verdict(auc: q.Auc) -> object:
        m = StepMetrics(mode="shadow", champion=Prop(n=300, count=0), challenger=Prop(n=300, count=0),
                        quality=q.QualityStats(auc=auc))  # fmt: skip
        return next(v for v in judge(m, policy).verdicts if v.gate == "roc_auc")

    early = verdict(q.Auc(horizon=300, available=250, paired=True))
    assert early.outcome == Outcome.NO_DATA and "250 of 300" in early.reason  # type: ignore[attr-defined]
    at = q.Auc(
        horizon=300, available=900, paired=True, labels=tuple(y), champion=tuple(s1), challenger=tuple(s2)
    )
    v = verdict(at)
    a1, a2, var = q.delong(y, s1, s2)
    p = float(norm.sf(((a1 - a2) - 0.02) / np.sqrt(var)))
    assert v.outcome == Outcome.FAIL  # type: ignore[attr-defined]
    # Holm over the step's fixed family (error rate, latency p99, accuracy and regression, the no-data
    # ones at p = 1, and this AUC gate): the smallest p-value is multiplied by the family's size, 5
    assert v.p_value == pytest.approx(5 * p, rel=1e-9)  # type: ignore[attr-defined]
    assert v.interval.upper == pytest.approx((a2 - a1) + norm.ppf(0.95) * np.sqrt(var), rel=1e-9)  # type: ignore[attr-defined]


def test_ratio_of_sums_reduces_to_the_mean_and_its_standard_error_when_the_base_is_one() -> None:
    x = RNG.normal(5, 2, 300)
    r, se = q.ratio_of_sums(300, x.sum(), 300.0, float(x @ x), 300.0, x.sum())
    assert r == pytest.approx(x.mean(), rel=1e-12)
    assert se == pytest.approx(x.std(ddof=1) / math.sqrt(300), rel=1e-9)
    # with a varying base: the linearised (Taylor) variance of sum(x) / sum(y), computed per row
    y = RNG.integers(1, 4, 300).astype(float)
    r, se = q.ratio_of_sums(300, x.sum(), y.sum(), float(x @ x), float(y @ y), float(x @ y))
    linear = (x - r * y) / y.mean()
    assert r == pytest.approx(x.sum() / y.sum(), rel=1e-12)
    assert se == pytest.approx(linear.std(ddof=1) / math.sqrt(300), rel=1e-9)


def test_a_regression_segment_with_a_worse_mae_fails_and_names_the_segment() -> None:
    rng = np.random.default_rng(5)
    north = rng.random(4000) < 0.15
    e1 = np.abs(rng.normal(0, 2, 4000))
    e2 = np.where(north, e1 * 1.6, e1 * 0.98)  # 60% worse in the north, 2% better elsewhere
    segments = tuple(
        q.SegmentStats(column="region", value=v, abs_error=q.LossMoments.from_rows(e1[m], e2[m], paired=True))
        for v, m in (("north", north), ("south", ~north))
    )
    policy = JudgePolicy(
        quality=q.QualityPolicy(segments=q.SegmentPolicy(metrics=(q.MetricSpec(metric="mae", margin=0.05),)))
    )
    metrics = StepMetrics(
        mode="shadow", champion=Prop(n=4000, count=0), challenger=Prop(n=4000, count=0),
        quality=q.QualityStats(segments=segments),
    )  # fmt: skip
    result = judge(metrics, policy)
    by_gate = {v.gate: v for v in result.verdicts}
    north_gate = by_gate["segment[region=north].mae"]
    assert north_gate.outcome == Outcome.FAIL
    assert north_gate.effect == pytest.approx(e2[north].mean() / e1[north].mean() - 1, rel=1e-9)
    assert by_gate["segment[region=south].mae"].outcome != Outcome.FAIL
    assert result.decision == "rollback" and "region=north" in result.reason
