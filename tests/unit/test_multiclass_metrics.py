"""Multi-class proper scores and macro one-vs-rest ROC AUC against scikit-learn (1e-9) and DeLong."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn import metrics as skm

from controller.core import metrics as q
from controller.core.judge import JudgePolicy, Outcome, StepMetrics, judge
from controller.core.judge import Proportion as Prop

RNG = np.random.default_rng(20261206)
N = 600
K = 3


def _proba(y: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Softmax of a noisy one-hot signal: rows sum to 1, the true class favoured by ``strength``."""
    logits = strength * np.eye(K)[y] + rng.normal(0, 1.0, (y.size, K))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


Y = RNG.choice(K, size=N, p=[0.5, 0.3, 0.2])
P1 = np.round(_proba(Y, 2.0, RNG), 2)  # rounded: ties within each class's scores
P1 /= P1.sum(axis=1, keepdims=True)
P2 = _proba(Y, 1.0, RNG)


def test_macro_one_vs_rest_auc_matches_scikit_learn() -> None:
    for p in (P1, P2):
        expected = skm.roc_auc_score(Y, p, multi_class="ovr", average="macro")
        assert q.macro_ovr_auc(Y, p) == pytest.approx(expected, abs=1e-9)
    a1, a2, _ = q.macro_ovr_delong(Y, P1, P2)
    assert a1 == pytest.approx(skm.roc_auc_score(Y, P1, multi_class="ovr"), abs=1e-9)
    assert a2 == pytest.approx(skm.roc_auc_score(Y, P2, multi_class="ovr"), abs=1e-9)


def test_macro_auc_variance_with_two_classes_is_delongs() -> None:
    y = RNG.random(300) < 0.3
    s1 = np.round(np.clip(0.3 + 0.4 * y + RNG.normal(0, 0.25, 300), 0, 1), 2)
    s2 = np.clip(0.3 + 0.2 * y + RNG.normal(0, 0.25, 300), 0, 1)
    two1, two2 = np.column_stack([1 - s1, s1]), np.column_stack([1 - s2, s2])
    codes = y.astype(int)
    a1, a2, var = q.macro_ovr_delong(codes, two1, two2)
    b1, b2, expected = q.delong(y, s1, s2)
    assert (a1, a2) == (pytest.approx(b1, abs=1e-12), pytest.approx(b2, abs=1e-12))
    assert var == pytest.approx(expected, rel=1e-9)
    assert q.macro_ovr_delong(codes, two1)[2] == pytest.approx(q.delong(y, s1)[2], rel=1e-9)


def _bootstrap_macro(y: np.ndarray, p: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUC of each bootstrap resample (rows: B x n indexes), by ranks."""
    out = np.zeros(rows.shape[0])
    for k in range(K):
        pos = y[rows] == k
        ranks = rankdata(p[rows, k], axis=1)
        m = pos.sum(axis=1)
        n = rows.shape[1] - m
        out += ((ranks * pos).sum(axis=1) - m * (m + 1) / 2) / (m * n)
    return out / K


def test_paired_macro_auc_variance_agrees_with_the_bootstrap() -> None:
    rng = np.random.default_rng(7)
    rows = rng.integers(0, N, size=(2000, N))
    boot = _bootstrap_macro(Y, P2, rows) - _bootstrap_macro(Y, P1, rows)
    _, _, var = q.macro_ovr_delong(Y, P1, P2)
    assert var == pytest.approx(float(np.var(boot, ddof=1)), rel=0.15)
    _, _, var1 = q.macro_ovr_delong(Y, P1)
    assert var1 == pytest.approx(float(np.var(_bootstrap_macro(Y, P1, rows), ddof=1)), rel=0.15)


def test_the_multi_class_auc_gate_tests_once_at_its_horizon_and_fails_a_worse_challenger() -> None:
    spec = q.MetricSpec(metric="roc_auc", role="guardrail", margin=0.02, horizon=N)
    policy = JudgePolicy(quality=q.QualityPolicy(gates=(spec,)))

    def verdict(auc: q.Auc) -> object:
        m = StepMetrics(mode="shadow", champion=Prop(n=N, count=0), challenger=Prop(n=N, count=0),
                        quality=q.QualityStats(auc=auc))  # fmt: skip
        return next(v for v in judge(m, policy).verdicts if v.gate == "roc_auc")

    names = ("a", "b", "c")
    early = verdict(q.Auc(horizon=N, available=100, paired=True, classes=names))
    assert early.outcome == Outcome.NO_DATA and "100 of 600" in early.reason  # type: ignore[attr-defined]
    at = q.Auc(
        horizon=N, available=N, paired=True, classes=names, labels=tuple(int(v) for v in Y),
        champion_proba=tuple(map(tuple, P1)), challenger_proba=tuple(map(tuple, P2)),
    )  # fmt: skip
    v = verdict(at)
    assert v.outcome == Outcome.FAIL  # type: ignore[attr-defined]
    a1, a2, _ = q.macro_ovr_delong(Y, P1, P2)
    assert v.effect == pytest.approx(a2 - a1, abs=1e-12)  # type: ignore[attr-defined]
