"""Latency histograms in plain Python: the buckets' edges and a quantile read off bucket counts.

``controller.core.stats`` re-exports both for the judge; they live here, without NumPy, because
`mlcanary rollout status` reads each arm's p50 and p99 off the step's histogram exactly as the judge
reads its p99, and importing NumPy (with the judge and the statistics around it) for two quantiles
was a third of that command's start-up (bench/cli_speed.py).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable

__all__ = ["latency_edges", "quantile_from_histogram"]


def latency_edges(
    *, start_ms: float = 0.1, stop_ms: float = 120_000.0, growth: float = 1.05
) -> tuple[float, ...]:
    """Return log-spaced histogram edges (0, start, start*g, ..., >= stop, inf) for latencies in ms.

    With growth 1.05 a quantile read from the histogram is within 5% of the true one; the recorder or a
    SQL ``GROUP BY floor(ln(ms / start) / ln(growth))`` can fill the buckets.
    """
    k = math.ceil(math.log(stop_ms / start_ms) / math.log(growth))
    return (0.0, *(start_ms * growth**i for i in range(k + 1)), math.inf)


def quantile_from_histogram(counts: Iterable[float], edges: Iterable[float], q: float) -> float:
    """Read the q-quantile off a histogram, interpolating linearly inside the bucket (NaN when empty).

    ``counts[i]`` observations lie in [edges[i], edges[i+1]); a quantile in the last, open-ended
    bucket is that bucket's lower edge.
    """
    c = [float(x) for x in counts]
    e = [float(x) for x in edges]
    total = sum(c)
    if total <= 0:
        return math.nan
    cum = list(itertools.accumulate(c))
    target = q * total
    i = min(bisect.bisect_left(cum, target), len(c) - 1)
    below = cum[i] - c[i]
    lo, hi = e[i], e[i + 1]
    if not math.isfinite(hi):
        return lo
    frac = (target - below) / c[i] if c[i] > 0 else 0.0
    return lo + frac * (hi - lo)
