"""Tuning of the data plane, passed explicitly; nothing is read from the environment here.

The product's entry points build these from controller.config.Settings (controller.app.router_settings
copies every field both share); the defaults of shared fields equal Settings' (a test checks), so a
router built here directly behaves as `mlcanary router` does.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path


def _default_spool_dir() -> Path:
    return Path(tempfile.gettempdir()) / "mlcanary-spool"


@dataclass(frozen=True, kw_only=True)
class RouterSettings:
    """Every knob of a router process; defaults suit one host with a few workers.

    refresh_interval: seconds between two looks at the routing table (a change is live within it):
        each reads a small stamp of what routing depends on, and the whole table only if it changed.
    table_reload_interval: the whole table is read at least this often even when the stamp is the
        same (a backstop for a change written to the database around mlcanary's repositories).
    load_retry_interval: seconds before a version that failed to load is tried again.
    load_failure_log_interval: a version that keeps failing to load is logged once per this many
        seconds (and at once when the reason changes), not at every retry.
    shadow_queue_size / shadow_workers / shadow_batch_max: the bounded shadow queue, the threads
        scoring it, and the most requests scored in one micro-batch.
    shadow_timeout_s: a shadow call whose own scoring (from the moment it started) runs this long is the
        arm's error; a job still queued this long is skipped (see router.shadow).
    shadow_linger_s: the longest a shadow job waits for later ones to share its micro-batch (a batch
        is scored sooner once shadow_batch_max jobs are queued); then the worker waits, at most as
        long again, for the process to be idle (no request in flight), so that shadow work runs
        between requests. Longer: bigger batches, less CPU per shadowed request, later records. It is
        capped at a quarter of shadow_timeout_s, so lingering never spends more than half the timeout.
    shadow_cpu_budget: the most of a router process's CPU time shadow scoring may take while the
        process is saturated (two or more requests being served at once, one waiting for the
        other's CPU, at least 75% of a second); beyond it the shadow share of the deployments
        scoring most is cut, and it grows back when the pressure goes (router.shadow). Below
        saturation shadow scoring is never cut for CPU. 1 turns this off. The default, 0.15, is
        1 minus the champion's 0.85 throughput target; measured at saturation (bench/saturation.py,
        N=1), shadow scoring of an identical challenger took 2-5% of the process's CPU and a
        gradient-boosting one against a linear champion 2-7% (peaks near 20% for one second), so
        such challengers keep their whole sample and only a costlier one is cut.
    recorder_batch / recorder_flush_interval / recorder_queue_size: rows per insert, the longest a
        record waits before a write, and the records held in memory (beyond them, records go
        straight to the spool).
    spool_dir: where records go while the database is unavailable (one JSON-lines file per process).
    spool_retry_interval: seconds between attempts to reach the database again after a failure.
    max_body_bytes / max_rows: the largest request accepted (413 / 400 beyond).
    trust_pickle: allow joblib/pickle artifacts (they can run code when loaded).
    freeze_heap: once the routing table is loaded at start, `gc.freeze()` what is alive (the
        loaded pipelines and libraries) so that full garbage collections, which the router's
        short-lived-but-promoted request objects set off, no longer rescan it (a pause of 50-120 ms
        each on a 2-core host). Once per process; turn off when embedding in an app that minds.
    upstream_timeout_s / upstream_pool_size: HTTP upstream backends' timeout and pooled connections.
    breaker_failures / breaker_open_s: a challenger called inline (canary) that fails this many
        times in a row is not called for breaker_open_s seconds (the champion answers its share at
        once, the challenger's arm records "circuit_open"); then one probe at a time decides.
    challenger_concurrency: the most calls to a remote (upstream) challenger in flight at once in
        this process; a request beyond it is answered by the champion ("challenger_busy"). Keep it
        below the serving threads, so that a hanging challenger cannot hold every thread.
    switch_interval_s: the interpreter's thread switch interval in a router process (None leaves
        Python's 5 ms). Shadow batches run scikit-learn's Python-level work holding the GIL; a
        shorter interval lets a request thread take the GIL back sooner, so a request that lands
        during a shadow batch waits less.
    """

    refresh_interval: float = 0.25
    table_reload_interval: float = 30.0
    load_retry_interval: float = 5.0
    load_failure_log_interval: float = 60.0
    shadow_queue_size: int = 10_000
    shadow_workers: int = 1
    shadow_batch_max: int = 256
    shadow_timeout_s: float = 2.0
    shadow_linger_s: float = 0.25
    shadow_cpu_budget: float = 0.15
    recorder_batch: int = 1000
    recorder_flush_interval: float = 0.2
    recorder_queue_size: int = 50_000
    spool_dir: Path = field(default_factory=_default_spool_dir)
    spool_retry_interval: float = 1.0
    max_body_bytes: int = 10 * 1024 * 1024
    max_rows: int = 10_000
    trust_pickle: bool = False
    freeze_heap: bool = True
    upstream_timeout_s: float = 5.0
    upstream_pool_size: int = 20
    breaker_failures: int = 3
    breaker_open_s: float = 5.0
    challenger_concurrency: int = 4
    switch_interval_s: float | None = 0.0005

    def __post_init__(self) -> None:
        object.__setattr__(self, "spool_dir", Path(self.spool_dir))
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or isinstance(value, bool | Path):
                continue
            if value <= 0:
                raise ValueError(f"RouterSettings.{f.name} must be positive, got {value!r}")
        if self.shadow_cpu_budget > 1:
            raise ValueError(
                f"RouterSettings.shadow_cpu_budget must be at most 1, got {self.shadow_cpu_budget!r}"
            )
