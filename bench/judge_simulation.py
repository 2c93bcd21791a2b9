"""Seeded simulation of the judge's decision rules under continuous monitoring.

Run: ``.venv/bin/python bench/judge_simulation.py [--rollouts 2000] [--seed 7]``

(a) A/A: identical arms, a look after every 50 pairs up to 20,000. False promotion (margin 0, so any
    promotion of an identical challenger is an error of the non-inferiority test at its boundary) and
    false rollback rates must stay <= alpha.
(b) Power: labelled pairs until a 1-point accuracy drop at 5% discordance, and a 10% MAE increase, are
    rolled back, compared with the fixed-n sample size.
(c) The naive fixed-n z test under the same peeking, which inflates the error rates.

Vectorised: cumulative sums for all rollouts and looks at once; the gate rules are those of
``controller.core.judge`` applied with ``controller.core.stats`` on arrays, and a sample of rollouts is replayed
through ``judge()`` itself to check that both give the same decisions.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy import stats as sps

from controller.core import stats
from controller.core.judge import GateSpec, JudgePolicy, Moments, PairedCounts, Proportion, StepMetrics, judge

ALPHA = 0.05
STEP = 50
HORIZON = 20_000
N_STAR = 5000.0


def paired_harm(
    worse: np.ndarray, better: np.ndarray, n: np.ndarray, null: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Harm estimate (worse - better)/n and Tango's standard error under H0: harm = null (as the judge)."""
    d = (worse - better) / n
    d0 = -null  # stats.tango_null_variance, vectorised
    a = 2.0 * n
    b = -better - worse + (2.0 * n - better + worse) * d0
    c = -worse * d0 * (1.0 - d0)
    q21 = np.maximum((np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0)) - b) / (2.0 * a), 0.0)
    var = np.maximum(q21 + d0, 0.0) + q21 - d0 * d0
    return d, np.sqrt(np.maximum(var, 1e-12) / n)


def gate(
    harm: np.ndarray, se: np.ndarray, n: np.ndarray, limit: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return (passes, raw harm p-value) for every look, the judge's rule on arrays."""
    upper = stats.confidence_sequence(harm, se, n, alpha=ALPHA, n_star=N_STAR, side="lesser").upper
    p = stats.confidence_sequence_p_value(
        harm, se, n, null=limit, alpha=ALPHA, n_star=N_STAR, side="greater"
    ).p_value
    return np.asarray(upper) < limit, np.asarray(p)


def first_decision(promote: np.ndarray, rollback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per rollout: decision at the first look where one happens (0 continue, 1 promote, 2 rollback) and its look."""
    decided = promote | rollback
    any_ = decided.any(axis=1)
    first = np.where(any_, decided.argmax(axis=1), decided.shape[1])
    rows = np.arange(decided.shape[0])
    idx = np.minimum(first, decided.shape[1] - 1)
    kind = np.where(~any_, 0, np.where(rollback[rows, idx], 2, 1))
    return kind, first


def holm2(p1: np.ndarray, p2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.minimum(p1, p2), np.maximum(p1, p2)
    a_lo = np.minimum(1.0, 2.0 * lo)
    a_hi = np.maximum(a_lo, hi)
    return np.where(p1 <= p2, a_lo, a_hi), np.where(p1 <= p2, a_hi, a_lo)


def classification_rollouts(
    rng: np.random.Generator, rollouts: int, looks: int, worse: float, better: float, err: float
) -> tuple[np.ndarray, np.ndarray]:
    c = np.cumsum(rng.multinomial(STEP, [worse, better, 1 - worse - better], size=(rollouts, looks)), axis=1)
    e = np.cumsum(rng.multinomial(STEP, [err, err, 1 - 2 * err], size=(rollouts, looks)), axis=1)
    return c, e


def decide_classification(c: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = STEP * np.arange(1, c.shape[1] + 1, dtype=float)[None, :]
    acc_h, acc_se = paired_harm(c[..., 0], c[..., 1], n)
    err_h, err_se = paired_harm(e[..., 0], e[..., 1], n)
    acc_pass, acc_p = gate(acc_h, acc_se, n, 0.0)
    _, err_p = gate(err_h, err_se, n, 0.0)
    acc_adj, err_adj = holm2(acc_p, err_p)
    rollback = (acc_adj <= ALPHA) | (err_adj <= ALPHA)
    promote = acc_pass & ~rollback
    burn = n < 200
    return first_decision(promote & ~burn, rollback & ~burn)


def regression_rollouts(
    rng: np.random.Generator, rollouts: int, looks: int, scale: float, rho: float = 0.9, chunk: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block sums of d = |r2| - |r1|, d^2 and |r1| per look: r1 ~ N(0,1), r2 = scale (rho r1 + sqrt(1-rho^2) z)."""
    s = np.empty((rollouts, looks))
    ss = np.empty((rollouts, looks))
    base = np.empty((rollouts, looks))
    for start in range(0, rollouts, chunk):
        k = min(chunk, rollouts - start)
        r1 = rng.standard_normal((k, looks * STEP), dtype=np.float32)
        r2 = scale * (
            rho * r1 + math.sqrt(1 - rho * rho) * rng.standard_normal((k, looks * STEP), dtype=np.float32)
        )
        a1 = np.abs(r1)
        d = (np.abs(r2) - a1).astype(np.float64)
        s[start : start + k] = np.cumsum(d.reshape(k, looks, STEP).sum(axis=2), axis=1)
        ss[start : start + k] = np.cumsum((d * d).reshape(k, looks, STEP).sum(axis=2), axis=1)
        base[start : start + k] = np.cumsum(a1.reshape(k, looks, STEP).sum(axis=2, dtype=np.float64), axis=1)
    return s, ss, base


def decide_regression(
    s: np.ndarray, ss: np.ndarray, base: np.ndarray, e: np.ndarray, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    n = STEP * np.arange(1, s.shape[1] + 1, dtype=float)[None, :]
    mean = s / n
    var = np.maximum((ss - s * s / n) / (n - 1), 0.0)
    limit = margin * base / n
    reg_pass, reg_p = gate(mean, np.sqrt(var / n), n, limit)
    err_h, err_se = paired_harm(e[..., 0], e[..., 1], n)
    _, err_p = gate(err_h, err_se, n, 0.0)
    reg_adj, err_adj = holm2(reg_p, err_p)
    rollback = (reg_adj <= ALPHA) | (err_adj <= ALPHA)
    promote = reg_pass & ~rollback
    burn = n < 200
    return first_decision(promote & ~burn, rollback & ~burn)


def policy(required: str) -> JudgePolicy:
    off = GateSpec(enabled=False)
    return JudgePolicy(
        alpha=ALPHA,
        n_star=N_STAR,
        accuracy=GateSpec(role="required", margin=0.0, min_samples=200) if required == "accuracy" else off,
        regression=GateSpec(role="required", margin=0.0, min_samples=200)
        if required == "regression"
        else off,
        error_rate=GateSpec(role="guardrail", margin=0.0, min_samples=200),
        latency_p99=GateSpec(enabled=False, margin=1.2),
        agreement=off,
        drift=off,
    )


def replay_classification(c: np.ndarray, e: np.ndarray, rollouts: int) -> list[int]:
    """Replay rollouts through judge() itself; return decision codes as first_decision does."""
    codes = []
    pol = policy("accuracy")
    for r in range(rollouts):
        code = 0
        for k in range(c.shape[1]):
            n = (k + 1) * STEP
            m = StepMetrics(
                mode="shadow",
                champion=Proportion(n=n, count=0),
                challenger=Proportion(n=n, count=0),
                paired_errors=PairedCounts(n=n, worse=int(e[r, k, 0]), better=int(e[r, k, 1])),
                paired_correct=PairedCounts(n=n, worse=int(c[r, k, 0]), better=int(c[r, k, 1])),
            )
            d = judge(m, pol).decision
            if d != "continue":
                code = 1 if d == "promote" else 2
                break
        codes.append(code)
    return codes


def replay_regression(
    s: np.ndarray, ss: np.ndarray, base: np.ndarray, e: np.ndarray, rollouts: int
) -> list[int]:
    codes = []
    pol = policy("regression")
    for r in range(rollouts):
        code = 0
        for k in range(s.shape[1]):
            n = (k + 1) * STEP
            m = StepMetrics(
                mode="shadow",
                champion=Proportion(n=n, count=0),
                challenger=Proportion(n=n, count=0),
                paired_errors=PairedCounts(n=n, worse=int(e[r, k, 0]), better=int(e[r, k, 1])),
                abs_error_difference=Moments(n=n, total=float(s[r, k]), total_sq=float(ss[r, k])),
                champion_abs_error=Moments(n=n, total=float(base[r, k]), total_sq=float(n)),
            )
            d = judge(m, pol).decision
            if d != "continue":
                code = 1 if d == "promote" else 2
                break
        codes.append(code)
    return codes


def quantiles(first: np.ndarray, detected: np.ndarray) -> str:
    n = (first[detected] + 1) * STEP
    if n.size == 0:
        return "-"
    q = np.quantile(n, [0.5, 0.8])
    return f"{int(q[0]):,} / {int(q[1]):,}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=10_000)
    parser.add_argument("--power-rollouts", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    looks = HORIZON // STEP
    t0 = time.perf_counter()
    print(f"alpha = {ALPHA}, look every {STEP} pairs up to {HORIZON:,}, n* = {N_STAR:g}, seed {args.seed}\n")

    # (a) A/A ---------------------------------------------------------------------------------------
    print(f"### (a) A/A: identical arms, {args.rollouts:,} rollouts, {looks} looks each\n")
    print("| scenario | false promotion | false rollback | still running at 20,000 | judge() replay agrees |")
    print("|---|---|---|---|---|")
    c, e = classification_rollouts(rng, args.rollouts, looks, 0.05, 0.05, 0.01)
    kind, _ = decide_classification(c, e)
    replay = replay_classification(c, e, 40)
    agree = int(np.sum(np.array(replay) == kind[:40]))
    print(
        f"| classification: accuracy required (margin 0, 10% discordance) + error-rate guardrail "
        f"| {np.mean(kind == 1):.4f} | {np.mean(kind == 2):.4f} | {np.mean(kind == 0):.4f} | {agree}/40 |"
    )
    s, ss, base = regression_rollouts(rng, args.rollouts, looks, 1.0)
    e2 = classification_rollouts(rng, args.rollouts, looks, 0.0, 0.0, 0.01)[1]
    kind_r, _ = decide_regression(s, ss, base, e2, 0.0)
    replay = replay_regression(s, ss, base, e2, 20)
    agree = int(np.sum(np.array(replay) == kind_r[:20]))
    print(
        f"| regression: MAE required (margin 0, errors correlated 0.9) + error-rate guardrail "
        f"| {np.mean(kind_r == 1):.4f} | {np.mean(kind_r == 2):.4f} | {np.mean(kind_r == 0):.4f} | {agree}/20 |"
    )
    # boundary of non-inferiority: challenger exactly one margin worse
    c_b, e_b = classification_rollouts(rng, args.rollouts, looks, 0.055, 0.045, 0.01)
    n = STEP * np.arange(1, looks + 1, dtype=float)[None, :]
    h, se = paired_harm(c_b[..., 0], c_b[..., 1], n, 0.01)
    passes, _ = gate(h, se, n, 0.01)
    kb, _ = first_decision(passes & (n >= 200), np.zeros_like(passes))
    print(
        f"| classification at the margin: challenger exactly 1 point worse, margin 0.01 "
        f"| {np.mean(kb == 1):.4f} | n/a | {np.mean(kb == 0):.4f} | - |"
    )

    # (c) naive peeking ----------------------------------------------------------------------------
    print("\n### (c) Naive fixed-n test under the same peeking (A/A classification data above)\n")
    z = sps.norm.ppf(1 - ALPHA)
    nn = STEP * np.arange(1, looks + 1, dtype=float)[None, :]
    disc = c[..., 0] + c[..., 1]
    zstat = np.where(
        disc > 0, (c[..., 0] - c[..., 1]) / np.sqrt(np.maximum(disc, 1)), 0.0
    )  # McNemar z, harm > 0
    naive_kind, _ = first_decision((zstat < -z) & (nn >= 200), (zstat > z) & (nn >= 200))
    single = np.mean(zstat[:, -1] > z)
    print("| rule | false promotion | false rollback |")
    print("|---|---|---|")
    print(
        f"| one-sided McNemar z at alpha = {ALPHA} after every look | {np.mean(naive_kind == 1):.4f} "
        f"| {np.mean(naive_kind == 2):.4f} |"
    )
    print(f"| same test once, at n = {HORIZON:,} only | {np.mean(zstat[:, -1] < -z):.4f} | {single:.4f} |")
    print(
        f"| confidence sequences (judge), for comparison | {np.mean(kind == 1):.4f} | {np.mean(kind == 2):.4f} |"
    )

    # (b) power ------------------------------------------------------------------------------------
    power_looks = 100_000 // STEP
    pr = args.power_rollouts
    print(f"\n### (b) Power: {pr:,} rollouts, looks every {STEP} pairs up to 100,000\n")
    print(
        "| effect | rolled back by 20,000 | by 100,000 | pairs to rollback, median / 80th pct | "
        "fixed-n pairs (power 0.8) |"
    )
    print("|---|---|---|---|---|")
    c_p, e_p = classification_rollouts(rng, pr, power_looks, 0.03, 0.02, 0.0)
    kind_p, first_p = decide_classification(c_p, e_p)
    det = kind_p == 2
    connor_one = math.ceil(stats.mcnemar_sample_size(0.03, 0.02, alpha=2 * ALPHA, power=0.8))
    connor_two = math.ceil(stats.mcnemar_sample_size(0.03, 0.02, alpha=ALPHA, power=0.8))
    print(
        f"| accuracy -1 point, 5% discordance (b = 3%, c = 2%) | {np.mean(det & (first_p < looks)):.3f} "
        f"| {np.mean(det):.3f} | {quantiles(first_p, det)} | {connor_one:,} one-sided / {connor_two:,} two-sided "
        f"(Connor 1987) |"
    )
    s_p, ss_p, base_p = regression_rollouts(rng, pr, power_looks, 1.1)
    kind_rp, first_rp = decide_regression(s_p, ss_p, base_p, np.zeros((pr, power_looks, 3)), 0.0)
    det_r = kind_rp == 2
    big = np.random.default_rng(1)
    r1 = big.standard_normal(2_000_000)
    r2 = 1.1 * (0.9 * r1 + math.sqrt(1 - 0.81) * big.standard_normal(2_000_000))
    d = np.abs(r2) - np.abs(r1)
    fixed_r = math.ceil(((sps.norm.ppf(1 - ALPHA) + sps.norm.ppf(0.8)) * d.std() / d.mean()) ** 2)
    print(
        f"| MAE +10% (residual correlation 0.9) | {np.mean(det_r & (first_rp < looks)):.3f} | {np.mean(det_r):.3f} "
        f"| {quantiles(first_rp, det_r)} | {fixed_r:,} (one-sided paired t) |"
    )
    plan = stats.plan_labelled_pairs(margin=0.01, discordance=0.05, alpha=ALPHA, power=0.8, n_star=N_STAR)
    print(
        f"\nPlanning a non-inferiority check (margin 1 point, 5% discordance, equal accuracy, power 0.8): "
        f"fixed-n {plan.fixed_n:,} labelled pairs, always-valid (n* = {N_STAR:g}) {plan.always_valid_n:,}."
    )
    print(f"\nwall time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
