"""Prometheus metrics of the data plane, created on first use in each process.

Under several gunicorn workers set PROMETHEUS_MULTIPROC_DIR (an empty directory) before the
workers start: every process then writes its values to files there and /metrics adds them up.
The metrics are created lazily (and prometheus_client's value class chosen then), so the variable
only has to be set before the first request, not before import. Without the variable the normal
in-process registry is used. The server's child_exit hook should call `mark_process_dead(pid)`.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

_lock = threading.Lock()
_metrics: Metrics | None = None

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class Metrics:
    requests: Any  # Counter(deployment, arm, protocol)
    errors: Any  # Counter(deployment, code)
    latency: Any  # Histogram(deployment, arm), seconds on the request path
    shadow_queue_depth: Any  # Gauge
    shadow_skipped: Any  # Counter(deployment, reason): shadow jobs that never started scoring
    shadow_scored: Any  # Counter(deployment, arm): shadow jobs scored (answered or failed)
    shadow_batch_size: Any  # Histogram
    shadow_errors: Any  # Counter(deployment, arm): the arm's own failures (raised, garbage, too slow)
    shadow_wait: Any  # Histogram(deployment), seconds a shadow job waited in the queue
    shadow_share: Any  # Gauge(deployment): effective shadow share after load shedding
    shadow_coverage: Any  # Gauge(deployment): scored / sampled shadow jobs, recent
    shadow_cuts: Any  # Counter(deployment, reason): load shedding's cuts of the share, by cause
    shadow_cpu_share: Any  # Gauge: shadow scoring's part of the process's CPU, last window
    recorder_lag: Any  # Gauge, seconds between a request and its write
    recorder_queue: Any  # Gauge, rows in memory
    spool_rows: Any  # Gauge, rows in this process's spool
    records_written: Any  # Counter
    records_spooled: Any  # Counter
    live_calls: Any  # Counter: scoring calls of the answering arm through the batcher
    live_batched: Any  # Counter: requests those calls scored (mean batch = batched / calls)
    _children: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False, compare=False)

    def child(self, metric: Any, *values: str) -> Any:
        """Return `metric.labels(*values)`, kept for the next request with the same labels.

        prometheus-client's labels() checks and joins the values and takes a lock on every call
        (~2-3 us each, two or three times per request); the child it returns is the same object
        every time, so it is looked up once per label set.
        """
        key = (id(metric), *values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def get_metrics() -> Metrics:
    """Return this process's metrics, creating them on first call."""
    global _metrics
    if _metrics is not None:
        return _metrics
    with _lock:
        if _metrics is None:
            from prometheus_client import Counter, Gauge, Histogram, values

            values.ValueClass = values.get_value_class()  # honour PROMETHEUS_MULTIPROC_DIR set after import
            _metrics = Metrics(
                requests=Counter(
                    "mlcanary_requests", "Answered prediction requests", ["deployment", "arm", "protocol"]
                ),
                errors=Counter(
                    "mlcanary_request_errors", "Requests answered with an error", ["deployment", "code"]
                ),
                latency=Histogram(
                    "mlcanary_request_latency_seconds",
                    "Time to answer a prediction request",
                    ["deployment", "arm"],
                    buckets=LATENCY_BUCKETS,
                ),
                shadow_queue_depth=Gauge(
                    "mlcanary_shadow_queue_depth", "Shadow jobs waiting", multiprocess_mode="livesum"
                ),
                shadow_skipped=Counter(
                    "mlcanary_shadow_skipped",
                    "Shadow jobs that never started scoring (coverage lost, not an arm's error)",
                    ["deployment", "reason"],
                ),
                shadow_scored=Counter(
                    "mlcanary_shadow_scored",
                    "Shadow jobs whose call ran (answered or failed)",
                    ["deployment", "arm"],
                ),
                shadow_wait=Histogram(
                    "mlcanary_shadow_queue_wait_seconds",
                    "Time a shadow job waited in the router's queue before its call started",
                    ["deployment"],
                    buckets=LATENCY_BUCKETS,
                ),
                shadow_share=Gauge(
                    "mlcanary_shadow_effective_share",
                    "Share of requests shadowed now: the configured share times load shedding's",
                    ["deployment"],
                    multiprocess_mode="livemin",
                ),
                shadow_coverage=Gauge(
                    "mlcanary_shadow_coverage",
                    "Share of the configured shadow sample scored, last ~30 s",
                    ["deployment"],
                    multiprocess_mode="livemin",
                ),
                shadow_cuts=Counter(
                    "mlcanary_shadow_share_cuts",
                    "Times load shedding lowered a deployment's shadow share, by cause: queue (jobs waited "
                    "too long or were refused) or cpu (shadow scoring over its CPU budget at saturation)",
                    ["deployment", "reason"],
                ),
                shadow_cpu_share=Gauge(
                    "mlcanary_shadow_cpu_share",
                    "Part of the process's CPU time shadow scoring took, last window (the budget applies at "
                    "saturation)",
                    multiprocess_mode="livemax",
                ),
                shadow_batch_size=Histogram(
                    "mlcanary_shadow_batch_size",
                    "Requests scored per shadow micro-batch",
                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                ),
                shadow_errors=Counter(
                    "mlcanary_shadow_errors",
                    "Shadow calls that failed: raised, garbage, or their own scoring past the timeout",
                    ["deployment", "arm"],
                ),
                recorder_lag=Gauge(
                    "mlcanary_recorder_lag_seconds",
                    "Age of the oldest record in the last write",
                    multiprocess_mode="livemax",
                ),
                recorder_queue=Gauge(
                    "mlcanary_recorder_queue_rows",
                    "Paired rows waiting in memory",
                    multiprocess_mode="livesum",
                ),
                spool_rows=Gauge(
                    "mlcanary_spool_rows",
                    "Paired rows in the local spool, not yet stored",
                    multiprocess_mode="livesum",
                ),
                records_written=Counter("mlcanary_records_written", "Paired rows stored"),
                records_spooled=Counter("mlcanary_records_spooled", "Paired rows written to the spool"),
                live_calls=Counter(
                    "mlcanary_live_batches", "Scoring calls on the live path (adaptive batching)"
                ),
                live_batched=Counter(
                    "mlcanary_live_batched_requests",
                    "Requests scored by those calls (requests per live batch = this / mlcanary_live_batches)",
                ),
            )
    return _metrics


def exposition() -> tuple[bytes, str]:
    """Return the metrics page and its content type (aggregated over processes in multiprocess mode)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    get_metrics()
    if multiprocess():
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (call from gunicorn's child_exit hook)."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid)
