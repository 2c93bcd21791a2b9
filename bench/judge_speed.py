"""Time evaluating every gate on 1,000,000 pairs: building StepMetrics from arrays, then judge().

Run: ``.venv/bin/python bench/judge_speed.py [--pairs 1000000] [--repeat 5]``. Target: < 1 s.
In production the controller gets StepMetrics from SQL aggregates, so judge() alone is the steady-state
cost; building from arrays is the upper bound when rows are in memory.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from controller.core import stats
from controller.core.judge import GateSpec, JudgePolicy, judge, metrics_from_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    n = args.pairs
    label = rng.integers(0, 3, n)
    champ = np.where(rng.random(n) < 0.9, label, rng.integers(0, 3, n))
    chal = np.where(rng.random(n) < 0.9, label, rng.integers(0, 3, n))
    lat1 = rng.lognormal(3.0, 0.5, n)
    lat2 = rng.lognormal(3.02, 0.5, n)
    fail1, fail2 = rng.random(n) < 0.002, rng.random(n) < 0.002
    y = rng.normal(size=n)
    pred1, pred2 = y + rng.normal(0, 0.5, n), y + rng.normal(0, 0.5, n)
    edges = stats.latency_edges()
    out_edges = np.concatenate([[-np.inf], np.linspace(-3, 3, 19), [np.inf]])
    policy = JudgePolicy(
        error_rate_slo=0.01,
        latency_p99_slo_ms=500.0,
        agreement=GateSpec(role="guardrail", margin=0.7),
        drift=GateSpec(role="guardrail", margin=0.2),
    )

    def classification() -> tuple[float, float, str]:
        t0 = time.perf_counter()
        m = metrics_from_pairs(
            champion_prediction=champ,
            challenger_prediction=chal,
            champion_failed=fail1,
            challenger_failed=fail2,
            label=label,
            task="classification",
            champion_latency_ms=lat1,
            challenger_latency_ms=lat2,
            latency_edges=edges,
        )
        t1 = time.perf_counter()
        j = judge(m, policy)
        return t1 - t0, time.perf_counter() - t1, j.decision

    def regression() -> tuple[float, float, str]:
        t0 = time.perf_counter()
        m = metrics_from_pairs(
            champion_prediction=pred1,
            challenger_prediction=pred2,
            champion_failed=fail1,
            challenger_failed=fail2,
            label=y,
            task="regression",
            champion_latency_ms=lat1,
            challenger_latency_ms=lat2,
            latency_edges=edges,
            output_edges=out_edges,
        )
        t1 = time.perf_counter()
        j = judge(m, policy)
        return t1 - t0, time.perf_counter() - t1, j.decision

    print(f"{n:,} pairs, median of {args.repeat} runs\n")
    print("| task | build StepMetrics from arrays | judge() all gates | total | decision |")
    print("|---|---|---|---|---|")
    for name, fn in (("classification", classification), ("regression", regression)):
        runs = [fn() for _ in range(args.repeat)]
        build = statistics.median(r[0] for r in runs)
        decide = statistics.median(r[1] for r in runs)
        print(
            f"| {name} | {build * 1000:.0f} ms | {decide * 1000:.2f} ms | {(build + decide) * 1000:.0f} ms "
            f"| {runs[-1][2]} |"
        )


if __name__ == "__main__":
    main()
