"""Shadow scoring off the request path: a bounded queue, a bounded pool, micro-batches, a timeout.

A request that wants the other arm's opinion submits a job with `put_nowait` semantics: when the
queue is full the job is dropped at once (and counted), never waited for. Workers take everything
queued (up to shadow_batch_max jobs), group it by backend, build one frame per group from the
requests' converted columns, call predict once per group and hand each request its slice.
Batching is what keeps shadowing cheap: scoring 100 rows costs scikit-learn about as much as one.

So a worker lingers: it scores when batch_max jobs are queued or when the oldest has waited
linger_s, whichever comes first; the batch size follows the load (at 200 requests/s and a 0.25 s
linger about 50 requests share one predict call, at 4 requests/s one). Then it waits (at most
linger_s again) for the process to have no request in flight, so that shadow work runs between
requests rather than competing with them for the GIL. Submitting wakes a worker only when the queue
stops being empty or reaches batch_max, never once per request.

A watchdog settles, as "timeout", every job not finished shadow_timeout_s after it was queued —
whether it is still queued or its batch is stuck inside a hanging predict — so the request's record
is written anyway; a result arriving later is ignored. Every job ends in exactly one `on_settled`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from router.backends import Backend
from router.errors import BackendError
from router.exchange import ArmResult, Exchange
from router.inputs import join_columns

log = logging.getLogger(__name__)

DROPPED = "shadow_dropped: the shadow queue was full"
TIMED_OUT = "shadow_timeout: no result within the shadow timeout"
CANCELLED = "shadow_cancelled: the router shut down before scoring"


@dataclass
class ShadowJob:
    exchange: Exchange
    arm: str
    backend: Backend
    queued_at: float  # by the pool's clock (timeouts)
    started_at: float | None = field(default=None)
    arrived: float = field(default_factory=time.monotonic)  # real time (lingering)
    expired: bool = False  # settled as timed out by the watchdog


class ShadowPool:
    """Score shadow jobs in micro-batches on a few background threads."""

    def __init__(
        self,
        *,
        on_settled: Callable[[Exchange], None],
        queue_size: int = 1000,
        workers: int = 1,
        batch_max: int = 256,
        timeout_s: float = 5.0,
        linger_s: float = 0.25,
        idle: threading.Event | None = None,
        on_drop: Callable[[Exchange], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_settled = on_settled
        self.queue_size = queue_size
        self.workers = workers
        self.batch_max = batch_max
        self.timeout_s = timeout_s
        self.linger_s = linger_s
        self.idle = idle
        self.on_drop = on_drop
        self.on_batch = on_batch
        self.clock = clock
        self._enough = min(batch_max, queue_size)  # queued jobs that end a linger at once
        self.dropped = 0
        self.batches = 0
        self._queue: deque[ShadowJob] = deque()
        self._running: set[int] = set()
        self._inflight: dict[int, list[ShadowJob]] = {}
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # queue and in-flight changes (close, the watchdog)
        self._arrived = threading.Condition(lock)  # workers wait here for jobs
        self._closing = False
        self._threads: list[threading.Thread] = []

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue."""
        return len(self._queue)

    def submit(self, exchange: Exchange, arm: str, backend: Backend) -> bool:
        """Queue a shadow job without waiting; when full or closing, settle it as dropped and return False."""
        with self._cond:
            depth = len(self._queue)
            accepted = not self._closing and depth < self.queue_size
            if accepted:
                self._queue.append(ShadowJob(exchange, arm, backend, self.clock()))
                if depth == 0 or depth + 1 == self._enough:  # a worker waits for either moment
                    self._arrived.notify()
            else:
                self.dropped += 1  # under the lock: request threads submit concurrently
        if not accepted:
            if self.on_drop is not None:
                self.on_drop(exchange)
            self._settle(
                ShadowJob(exchange, arm, backend, self.clock()), ArmResult(backend.version, error=DROPPED)
            )
        return accepted

    def start(self) -> None:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"mlcanary-shadow-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        watchdog = threading.Thread(target=self._watch, name="mlcanary-shadow-watchdog", daemon=True)
        watchdog.start()
        self._threads.append(watchdog)

    def _take(self) -> list[ShadowJob] | None:
        with self._cond:
            while True:
                if not self._queue:
                    if self._closing:
                        return None
                    self._arrived.wait(0.5)
                    continue
                if self._closing or len(self._queue) >= self._enough:
                    break
                remaining = self.linger_s - (time.monotonic() - self._queue[0].arrived)
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
        if self.idle is not None and not self._closing:
            self.idle.wait(self.linger_s)
        with self._cond:
            jobs: list[ShadowJob] = []
            while self._queue and len(jobs) < self.batch_max:
                jobs.append(self._queue.popleft())
            now = self.clock()
            for job in jobs:
                job.started_at = now
            if jobs:
                self._inflight[id(jobs)] = jobs
            if self._queue:
                self._arrived.notify()  # more than one batch is waiting: wake another worker
            return jobs

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                self._score(jobs)
            except Exception:  # a worker must survive anything a pipeline does
                log.exception("shadow batch failed")
                for job in jobs:
                    self._settle(job, ArmResult(job.backend.version, error="shadow_failed: internal error"))
            finally:
                with self._cond:
                    self._inflight.pop(id(jobs), None)
                    if self._closing:  # close() waits for the pool to drain; nobody else needs waking
                        self._cond.notify_all()

    def _score(self, jobs: list[ShadowJob]) -> None:
        groups: dict[tuple[int, tuple[str, ...] | None], list[ShadowJob]] = {}
        for job in jobs:
            columns = job.exchange.columns
            key = (id(job.backend), None if columns is None else tuple(columns))
            groups.setdefault(key, []).append(job)
        for (_, names), group in groups.items():
            backend = group[0].backend
            started = time.perf_counter()
            try:
                predictions = backend.predict(_frame(group, joined=names is not None))
                error = None
            except BackendError as exc:
                predictions, error = None, exc.message
            latency = (time.perf_counter() - started) * 1000.0
            with self._cond:
                self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(group))
            offset = 0
            for job in group:
                rows = len(job.exchange.frame)
                part = None if predictions is None else predictions.slice(offset, offset + rows)
                offset += rows
                self._settle(job, ArmResult(backend.version, part, latency, error))

    def _settle(self, job: ShadowJob, result: ArmResult) -> None:
        if job.exchange.settle_shadow(job.arm, result):
            self.on_settled(job.exchange)

    def _watch(self) -> None:
        idle_period = min(1.0, self.timeout_s / 4)
        while True:
            with self._cond:
                if self._closing and not self._queue and not self._inflight:
                    return
                # sleep until the oldest unexpired job can expire (jobs queued meanwhile expire later)
                oldest = [
                    next((j.queued_at for j in b if not j.expired), None) for b in self._inflight.values()
                ]
                if self._queue:
                    oldest.append(self._queue[0].queued_at)
                due = [t for t in oldest if t is not None]
                wait = min(due) + self.timeout_s - self.clock() if due else idle_period
                self._cond.wait(min(idle_period, max(0.005, wait)))
                now = self.clock()
                expired = []
                while self._queue and now - self._queue[0].queued_at >= self.timeout_s:
                    expired.append(self._queue.popleft())
                for batch in self._inflight.values():
                    expired.extend(j for j in batch if not j.expired and now - j.queued_at >= self.timeout_s)
                for job in expired:
                    job.expired = True
            for job in expired:
                self._settle(
                    job, ArmResult(job.backend.version, latency_ms=self.timeout_s * 1000.0, error=TIMED_OUT)
                )

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking jobs, score what is queued within timeout, settle the rest as cancelled."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            self._arrived.notify_all()
            while (self._queue or self._inflight) and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            leftovers = list(self._queue) + [j for b in self._inflight.values() for j in b]
            self._queue.clear()
            self._cond.notify_all()  # the watchdog may sleep long: let it see the empty queue
        for job in leftovers:
            self._settle(job, ArmResult(job.backend.version, error=CANCELLED))
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _frame(group: list[ShadowJob], *, joined: bool) -> pd.DataFrame:
    """Return the group's rows as one frame (built from the requests' columns when they have them)."""
    if len(group) == 1:
        return group[0].exchange.frame
    if joined:
        return join_columns([job.exchange.columns for job in group if job.exchange.columns is not None])
    return pd.concat([job.exchange.frame for job in group], ignore_index=True)
