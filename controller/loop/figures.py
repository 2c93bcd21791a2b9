"""A step's live figures as storage aggregates them: the one set of latency buckets, quantiles, shadow.

    LATENCY            the buckets storage groups latencies into (``storage.analytics.LatencyBuckets``)
    LATENCY_EDGES      their edges in ms (``controller.core.histograms.latency_edges``)
    latency_quantile   a quantile read off a stored histogram, as the judge reads its p99
    shadow_summary     the shadow sample's fate: coverage, effective share, skips, queue wait

The judge's measurement (``controller.loop.measure``), the reports and the dashboard use these, and so
does `mlcanary rollout status` on the database: which is why this module imports no NumPy, judge or
policy (bench/cli_speed.py measures the command; tests/controller/test_cli_startup.py keeps it so).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.core.histograms import latency_edges, quantile_from_histogram
from storage.analytics import Coverage, LatencyBuckets

__all__ = ["LATENCY", "LATENCY_EDGES", "latency_counts", "latency_quantile", "shadow_summary"]

LATENCY_EDGES = latency_edges()
LATENCY = LatencyBuckets(start_ms=LATENCY_EDGES[1], growth=1.05, count=len(LATENCY_EDGES) - 1)


def latency_counts(buckets: Mapping[int, int]) -> tuple[int, ...]:
    """Return a storage latency histogram (bucket -> count, buckets of LATENCY) as counts per edge."""
    counts = [0] * LATENCY.count
    for bucket, n in buckets.items():
        counts[bucket] += n
    return tuple(counts)


def latency_quantile(buckets: Mapping[int, int], q: float) -> float | None:
    """Read the q-quantile off a storage latency histogram, as the judge reads p99 (None when empty)."""
    counts = latency_counts(buckets)
    return quantile_from_histogram(counts, LATENCY_EDGES, q) if sum(counts) else None


def shadow_summary(c: Coverage, *, requests: int) -> dict[str, Any]:
    """Return the shadow sample's fate as plain data: the one definition shown by status and reports.

    ``coverage``: scored / sampled; ``effective_share``: scored / all requests of the step (what the
    router really shadowed after skips and load shedding); ``queue_wait_ms``: mean and max wait of
    the scored jobs in the router's queue.
    """
    return {
        "sampled": c.sampled,
        "scored": c.scored,
        "skipped": dict(sorted(c.skipped.items())),
        "coverage": c.share,
        "effective_share": c.scored / requests if requests else None,
        "queue_wait_ms": {
            "mean": c.wait_sum_ms / c.wait_n if c.wait_n else None,
            "max": c.wait_max_ms,
            "n": c.wait_n,
        },
    }
