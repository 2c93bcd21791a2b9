"""Shadow scoring off the request path: bounded lanes per deployment, micro-batches, honest outcomes.

A request that wants the other arm's opinion submits a job with `put_nowait` semantics: when the
queue is full the job is skipped at once, never waited for. Jobs wait in one lane per deployment.
Workers take one lane's jobs at a time (up to shadow_batch_max), group them by backend, build one
frame per group from the requests' converted columns, call predict once per group and hand each
request its slice. Batching is what keeps shadowing cheap: scoring 100 rows costs scikit-learn
about as much as one.

So a worker lingers: a lane is ready when batch_max jobs are queued in it or when its oldest has
waited linger_s; of the ready lanes the one whose oldest job is oldest goes first (round robin by
age). Then the worker waits (at most linger_s again) for the process to have no request in flight,
so that shadow work runs between requests rather than competing with them for the GIL.

Every job ends in exactly one `on_settled`, with one of three outcomes (`ArmResult.status`):
- ok: scored; `latency_ms` is the call's own time, `wait_ms` its time in the queue;
- error (the arm's fault): the backend raised or answered garbage, or its own call — timed from
  the moment the call started, never from when the job was queued — ran past shadow_timeout_s;
- skipped (the router's doing, never the arm's; `skip_reason`): the queue was full ("queue_full"),
  the deployment's share of it was full ("budget"), the timeout passed while the job still waited
  ("expired"), the router shut down first ("shutdown"), or the host starved the call of CPU
  ("starved", below). Load shedding ("shed") happens before a job is submitted, in the data plane.

The call's time excludes what the host took from it: on Linux the scoring thread's run-queue wait
(/proc/self/task/TID/schedstat: runnable, but no CPU free) is subtracted before comparing with the
timeout, so an overloaded machine is not charged to the arm. A call that stays under the timeout by
that measure but runs three timeouts of wall time is settled as skipped ("starved"), so its record
is not held back forever. Latencies recorded are wall times, like the champion's.

Fairness between deployments (per-deployment budgets): a lane may hold at most queue_size divided
by the number of busy lanes; at most one call per deployment runs at a time; and when a call runs
past the timeout the watchdog charges it and starts a replacement worker, so a hanging challenger
holds one thread, never the pool (replacements are capped at max_stuck).

Load shedding: each lane has a share in (0, 1]. The watchdog looks every control interval: when a
lane's jobs expire or are refused, or its oldest job has waited too long (half the timeout, or
two lingers when that is longer, but below the timeout), the share halves (at most once per
interval, down to min_share); when the lane's oldest job is younger than half that, the share grows
by share_step. A lane whose own call ran past the timeout
recently is left alone: that backlog is the arm's slowness, already charged, not the router's load. The data plane scores only requests whose
id falls in the share (`split.sampled`), so the scored sample stays a random one.

CPU shedding: a pool that keeps up can still slow the champion, because its scoring takes the CPU
(and the GIL) the live requests need. So the pool also watches its own cost: every cpu_window_s it
compares the CPU time its calls took (each worker's `time.thread_time`, per lane) with the whole
process's (`time.process_time`). When the live path was saturated over the window (`crowded`, the
seconds during which two or more requests were being served at once, so that one waited for the
CPU the other held, grew by at least SATURATED of the window) and shadow scoring took
more than cpu_budget of the process's CPU, each lane above its part of the budget (the budget divided
among the lanes that scored) has its share cut in proportion (times part / spent, kept within
0.25..0.75: scoring's cost falls more slowly than the share, a micro-batch costs more than its rows).
The share grows again by share_step each control interval once the live path is no longer
saturated, and by one share_step per window while it stays saturated with shadow scoring under
CALM of the budget, so the share settles where shadow scoring takes about the budget. At a load
the process answers one request at a time (a moderate rate, or one client waiting for each answer)
nothing is cut: coverage stays whole.
Every cut is counted by cause (`cuts`: "queue" for queue age and refusals, "cpu" for the budget).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import pandas as pd

from router.backends import Backend, predict_parts
from router.errors import BackendError
from router.exchange import ArmResult, Exchange
from router.inputs import join_columns

log = logging.getLogger(__name__)

QUEUE_FULL = "queue_full"
BUDGET = "budget"
EXPIRED = "expired"
SHUTDOWN = "shutdown"
SHED = "shed"
STARVED = "starved"
TIMED_OUT = "shadow_timeout: its own scoring ran past the shadow timeout"
# why a lane's share was cut (ShadowPool.cuts, the metric mlcanary_shadow_share_cuts_total)
CUT_QUEUE = "queue"  # its jobs waited too long, expired or were refused
CUT_CPU = "cpu"  # shadow scoring took more than its CPU budget while the live path was saturated
SATURATED = 0.75  # the live path is saturated when requests crowded each other this much of a window
CALM = 0.8  # at saturation the share grows again only while shadow CPU is below this much of the budget


@dataclass
class ShadowJob:
    exchange: Exchange
    arm: str
    backend: Backend
    queued_at: float  # by the pool's clock (timeouts)
    started_at: float | None = field(default=None)  # pool clock, when its call started
    starved_at_start: float = 0.0  # the scoring thread's run-queue wait (s) when its call started
    arrived: float = field(default_factory=time.monotonic)  # real time (lingering)
    done: bool = False  # settled by the watchdog (expired or charged)

    @property
    def wait_ms(self) -> float | None:
        return None if self.started_at is None else (self.started_at - self.queued_at) * 1000.0


@dataclass
class _Lane:
    """One deployment's queue, its call in progress, and its load-shedding share."""

    queue: deque[ShadowJob] = field(default_factory=deque)
    running: list[ShadowJob] | None = None  # reserved or scoring (one call per deployment at a time)
    worker: int | None = None  # the thread scoring it
    tid: int | None = None  # its native id (for its run-queue wait)
    stuck: bool = False  # its call ran past the timeout; a replacement worker was started
    share: float = 1.0
    pressure: int = 0  # jobs expired or refused since the last control step
    last_cut: float = float("-inf")
    cpu_s: float = 0.0  # CPU time its calls took in the current CPU window
    charged_at: float = float("-inf")  # when a call of this lane last ran past the timeout


class ShadowPool:
    """Score shadow jobs in micro-batches on a few background threads, fairly between deployments."""

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
        on_batch: Callable[[int], None] | None = None,
        shed: bool = True,
        min_share: float = 0.02,
        share_step: float = 0.05,
        max_stuck: int = 8,
        crowded: Callable[[], float] | None = None,
        cpu_budget: float | None = None,
        cpu_window_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_settled = on_settled
        self.queue_size = queue_size
        self.workers = workers
        self.batch_max = batch_max
        self.timeout_s = timeout_s
        # lingering (for company, then for an idle moment) may take at most half the timeout
        self.linger_s = min(linger_s, timeout_s / 4)
        self.idle = idle
        self.on_batch = on_batch
        self.shed = shed
        self.min_share = min_share
        self.share_step = share_step
        self.max_stuck = max_stuck
        # CPU shedding needs both: the seconds (cumulative) the live path was crowded, and a budget
        self.crowded = crowded
        self.cpu_budget = cpu_budget
        self.cpu_window_s = cpu_window_s
        self.clock = clock
        self.control_interval = max(0.01, min(0.25, timeout_s / 8))
        self._enough = min(batch_max, queue_size)  # queued jobs that end a linger at once
        self.dropped = 0  # submissions refused (queue_full, budget, shutdown)
        self.batches = 0
        self.cuts: dict[tuple[str, str], int] = {}  # (deployment, CUT_*) -> share cuts
        self.cpu_share = 0.0  # shadow scoring's part of the process's CPU, last window
        self.saturated = False  # the live path was saturated over the last window
        self._window: tuple[float, float, float] | None = None  # (wall, process CPU, crowded) at its start
        self._calm = True  # the last window allows the share to grow (see the module docstring)
        self._lanes: dict[str, _Lane] = {}
        self._total = 0
        self._abandoned: set[int] = set()  # worker threads stuck in a charged call (they exit after it)
        self._spare = 0  # replacement workers started
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # queue and in-flight changes (close, the watchdog)
        self._arrived = threading.Condition(lock)  # workers wait here for jobs
        self._closing = False
        self._threads: list[threading.Thread] = []

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue (every lane)."""
        return self._total

    def share(self, deployment: str) -> float:
        """Return the share (0, 1] of its sampled requests the deployment's lane accepts now."""
        lane = self._lanes.get(deployment)
        return 1.0 if lane is None else lane.share

    def shares(self) -> dict[str, float]:
        """Return every known lane's current share."""
        return {name: lane.share for name, lane in list(self._lanes.items())}

    def submit(self, exchange: Exchange, arm: str, backend: Backend) -> bool:
        """Queue a shadow job without waiting; when it cannot be queued settle it as skipped, return False."""
        key = exchange.entry.deployment
        reason: str | None = None
        with self._cond:
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane()
            if self._closing:
                reason = SHUTDOWN
            elif self._total >= self.queue_size:
                reason = QUEUE_FULL
            elif len(lane.queue) >= self._budget(lane):
                reason = BUDGET
            if reason is None:
                depth = len(lane.queue)
                lane.queue.append(ShadowJob(exchange, arm, backend, self.clock()))
                self._total += 1
                if depth == 0 or depth + 1 == self._enough:  # a worker waits for either moment
                    self._arrived.notify()
            else:
                lane.pressure += 1
                self.dropped += 1
        if reason is not None:
            self._settle(exchange, arm, ArmResult(backend.version, skip_reason=reason))
        return reason is None

    def _budget(self, lane: _Lane) -> int:
        """Jobs one lane may hold: the queue divided among the lanes that have work (this one included)."""
        busy = sum(
            1 for other in self._lanes.values() if other is not lane and (other.queue or other.running)
        )
        return max(1, self.queue_size // (busy + 1))

    def start(self) -> None:
        for _ in range(self.workers):
            self._start_worker()
        watchdog = threading.Thread(target=self._watch, name="mlcanary-shadow-watchdog", daemon=True)
        watchdog.start()
        self._threads.append(watchdog)

    def _start_worker(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"mlcanary-shadow-{len(self._threads)}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    # -- workers ------------------------------------------------------------------------------------

    def _ready_lane(self) -> tuple[_Lane | None, float]:
        """Return the ready lane whose oldest job is oldest (or None) and how long until one may be."""
        now = time.monotonic()
        best: _Lane | None = None
        wait = 0.5
        for lane in self._lanes.values():
            if lane.running is not None or not lane.queue:
                continue
            head = lane.queue[0].arrived
            if not (self._closing or len(lane.queue) >= self._enough):
                remaining = self.linger_s - (now - head)
                if remaining > 0:
                    wait = min(wait, remaining)
                    continue
            if best is None or head < best.queue[0].arrived:
                best = lane
        return best, wait

    def _take(self) -> tuple[_Lane, list[ShadowJob]] | None:
        me = threading.get_ident()
        while True:
            with self._cond:
                while True:
                    if self._closing and self._total == 0:
                        return None
                    lane, wait = self._ready_lane()
                    if lane is not None:
                        break
                    self._arrived.wait(wait)
                lane.running = []  # reserved: no other worker takes this lane meanwhile
                lane.worker = me
                lane.tid = threading.get_native_id()
            if self.idle is not None and not self._closing:
                self.idle.wait(self.linger_s)
            with self._cond:
                jobs: list[ShadowJob] = []
                while lane.queue and len(jobs) < self.batch_max:
                    jobs.append(lane.queue.popleft())
                self._total -= len(jobs)
                if not jobs:  # the watchdog expired them meanwhile
                    lane.running = None
                    continue
                lane.running = jobs
                if self._total:
                    self._arrived.notify()  # more is waiting: wake another worker
                return lane, jobs

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            taken = self._take()
            if taken is None:
                return
            lane, jobs = taken
            spent = time.thread_time()
            try:
                self._score(jobs)
            except Exception:  # a worker must survive anything a pipeline does
                log.exception("shadow batch failed")
                for job in jobs:
                    result = ArmResult(job.backend.version, error="shadow_failed: internal error")
                    self._settle_job(job, result)
            if self._finish(lane, me, time.thread_time() - spent):
                return

    def _finish(self, lane: _Lane, me: int, cpu_s: float) -> bool:
        """Free the lane after its call; return True when this thread was replaced and must exit."""
        with self._cond:
            lane.cpu_s += cpu_s
            lane.running = None
            lane.worker = None
            lane.stuck = False
            self._arrived.notify()  # the lane may be ready again
            if self._closing:  # close() waits for the pool to drain
                self._cond.notify_all()
            if me in self._abandoned:  # a replacement took this thread's place
                self._abandoned.discard(me)
                self._spare -= 1
                return True
        return False

    def _score(self, jobs: list[ShadowJob]) -> None:
        groups: dict[tuple[int, tuple[str, ...] | None], list[ShadowJob]] = {}
        for job in jobs:
            columns = job.exchange.columns
            key = (id(job.backend), None if columns is None else tuple(columns))
            groups.setdefault(key, []).append(job)
        tid = threading.get_native_id()
        for (_, names), group in groups.items():
            backend = group[0].backend
            starved = run_queue_wait(tid)
            started_at = self.clock()
            for job in group:
                job.starved_at_start = starved
                job.started_at = started_at  # the call starts: from now on its time is the arm's
            started = time.perf_counter()
            try:
                if names is None:
                    predictions = backend.predict(_frame(group, joined=False))
                else:  # an upstream reads the requests' columns; a pipeline scores their frame
                    parts = [job.exchange.columns for job in group if job.exchange.columns is not None]
                    predictions = predict_parts(backend, parts, partial(_frame, group, joined=True))
                error = None
            except BackendError as exc:
                predictions, error = None, exc.message
            wall = time.perf_counter() - started
            latency = wall * 1000.0
            own = wall - (run_queue_wait(tid) - starved)
            if error is None and own >= self.timeout_s:
                predictions, error = None, TIMED_OUT  # finished, but later than the timeout allows
            with self._cond:  # request threads read the counters concurrently (gthread workers)
                self.batches += 1
            if self.on_batch is not None:
                self.on_batch(len(group))
            offset = 0
            for job in group:
                rows = job.exchange.rows
                part = None if predictions is None else predictions.slice(offset, offset + rows)
                offset += rows
                self._settle_job(job, ArmResult(backend.version, part, latency, error, wait_ms=job.wait_ms))

    def _settle_job(self, job: ShadowJob, result: ArmResult) -> None:
        if not job.done:
            self._settle(job.exchange, job.arm, result)

    def _settle(self, exchange: Exchange, arm: str, result: ArmResult) -> None:
        if exchange.settle_shadow(arm, result):
            self.on_settled(exchange)

    # -- the watchdog: timeouts, stuck calls, load shedding -----------------------------------------

    def _watch(self) -> None:
        while True:
            with self._cond:
                if (
                    self._closing
                    and self._total == 0
                    and not any(lane.running for lane in self._lanes.values())
                ):
                    return
                self._cond.wait(self.control_interval)
                now = self.clock()
                expired: list[ShadowJob] = []
                charged: list[ShadowJob] = []
                starved: list[ShadowJob] = []
                for lane in self._lanes.values():
                    while lane.queue and now - lane.queue[0].queued_at >= self.timeout_s:
                        expired.append(lane.queue.popleft())
                        self._total -= 1
                        lane.pressure += 1
                    starved_now: float | None = None
                    for job in lane.running or ():
                        if job.done:
                            continue
                        if job.started_at is not None and now - job.started_at >= self.timeout_s:
                            if starved_now is None:
                                starved_now = run_queue_wait(lane.tid)
                            own = now - job.started_at - (starved_now - job.starved_at_start)
                            if own >= self.timeout_s:
                                charged.append(job)
                                lane.charged_at = now
                                self._replace_stuck(lane)
                            elif now - job.started_at >= 3 * self.timeout_s:
                                starved.append(job)  # the host, not the arm, kept it from finishing
                                lane.pressure += 1
                        elif job.started_at is None and now - job.queued_at >= self.timeout_s:
                            expired.append(job)  # behind another group of the same call
                            lane.pressure += 1
                for job in expired + charged + starved:
                    job.done = True
                if self.shed:
                    self._control(now)
            for job in expired:
                self._settle(
                    job.exchange,
                    job.arm,
                    ArmResult(
                        job.backend.version, skip_reason=EXPIRED, wait_ms=(now - job.queued_at) * 1000.0
                    ),
                )
            for job in starved:
                self._settle(
                    job.exchange,
                    job.arm,
                    ArmResult(job.backend.version, skip_reason=STARVED, wait_ms=job.wait_ms),
                )
            for job in charged:
                assert job.started_at is not None
                self._settle(
                    job.exchange,
                    job.arm,
                    ArmResult(
                        job.backend.version,
                        latency_ms=(now - job.started_at) * 1000.0,
                        error=TIMED_OUT,
                        wait_ms=job.wait_ms,
                    ),
                )

    def _replace_stuck(self, lane: _Lane) -> None:
        """A lane's call ran past the timeout: let its thread go and start another (under the lock)."""
        if lane.stuck or lane.worker is None or self._closing:
            return
        lane.stuck = True
        if self._spare >= self.max_stuck:
            log.warning("shadow calls stuck in %d threads; not starting another", self._spare)
            return
        self._abandoned.add(lane.worker)
        self._spare += 1
        self._start_worker()

    def _control(self, now: float) -> None:
        """Lower a lane's share under pressure (queue age, or CPU at saturation); raise it when that goes.

        Under the lock.
        """
        # a job normally waits up to two lingers (for company, then for an idle moment)
        too_old = max(
            0.5 * self.timeout_s, min(0.9 * self.timeout_s, 2 * self.linger_s + 0.1 * self.timeout_s)
        )
        factors = self._cpu_step()  # None between two CPU windows
        for name, lane in self._lanes.items():
            age = now - lane.queue[0].queued_at if lane.queue else 0.0
            if lane.stuck or now - lane.charged_at < 2 * self.timeout_s:
                pass  # the backlog is the arm's own slowness (charged to it): keep its sample whole
            elif lane.pressure or age > too_old:
                if now - lane.last_cut >= max(self.control_interval, 0.25 * self.timeout_s):
                    self._cut(name, lane, 0.5, CUT_QUEUE, now)
            elif factors and name in factors:
                self._cut(name, lane, factors[name], CUT_CPU, now)
            elif age < 0.5 * too_old and lane.share < 1.0 and self._may_grow(factors):
                lane.share = min(1.0, lane.share + self.share_step)
            lane.pressure = 0

    def _may_grow(self, factors: dict[str, float] | None) -> bool:
        """Below saturation a share grows every control step; at saturation once per calm CPU window."""
        return not self.saturated or (factors is not None and self._calm)

    def _cut(self, name: str, lane: _Lane, factor: float, reason: str, now: float) -> None:
        if lane.share <= self.min_share:
            return
        lane.share = max(self.min_share, lane.share * factor)
        lane.last_cut = now
        self.cuts[(name, reason)] = self.cuts.get((name, reason), 0) + 1

    def _cpu_step(self) -> dict[str, float] | None:
        """At the end of each CPU window: measure, and return the factor for each lane over its part.

        Between windows (or without crowded and a budget) return None. Under the lock.
        """
        if self.crowded is None or self.cpu_budget is None:
            return None
        wall, cpu, crowded = time.monotonic(), time.process_time(), self.crowded()
        if self._window is None:
            self._window = (wall, cpu, crowded)
            for lane in self._lanes.values():
                lane.cpu_s = 0.0  # spent before the first window
            return None
        wall0, cpu0, crowded0 = self._window
        if wall - wall0 < self.cpu_window_s:
            return None
        self._window = (wall, cpu, crowded)
        process = cpu - cpu0
        spent = {name: lane.cpu_s for name, lane in self._lanes.items() if lane.cpu_s > 0}
        for lane in self._lanes.values():
            lane.cpu_s = 0.0
        shadow = sum(spent.values())
        self.cpu_share = min(1.0, shadow / process) if process > 0 else 0.0
        self.saturated = crowded - crowded0 >= SATURATED * (wall - wall0)
        self._calm = not self.saturated or self.cpu_share < CALM * self.cpu_budget
        if not self.saturated or self.cpu_share <= self.cpu_budget:
            return {}
        part = self.cpu_budget * process / len(spent)  # each scoring lane's part of the budget
        return {name: max(0.25, min(0.75, part / s)) for name, s in spent.items() if s > part}

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking jobs, score what is queued within timeout, settle the rest as skipped (shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            self._arrived.notify_all()
            while (self._total or any(lane.running for lane in self._lanes.values())) and (
                time.monotonic() < deadline
            ):
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            leftovers = [j for lane in self._lanes.values() for j in lane.queue]
            leftovers += [j for lane in self._lanes.values() for j in lane.running or () if not j.done]
            for lane in self._lanes.values():
                lane.queue.clear()
            self._total = 0
            for job in leftovers:
                job.done = True
            self._cond.notify_all()
            self._arrived.notify_all()
        now = self.clock()
        for job in leftovers:
            if job.started_at is not None and now - job.started_at >= self.timeout_s:
                result = ArmResult(
                    job.backend.version,
                    latency_ms=(now - job.started_at) * 1000.0,
                    error=TIMED_OUT,
                    wait_ms=job.wait_ms,
                )
            else:
                result = ArmResult(job.backend.version, skip_reason=SHUTDOWN, wait_ms=job.wait_ms)
            self._settle(job.exchange, job.arm, result)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def run_queue_wait(tid: int | None) -> float:
    """Return the seconds a thread has waited runnable for a CPU (Linux schedstat), else 0."""
    if tid is None:
        return 0.0
    try:
        with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _frame(group: list[ShadowJob], *, joined: bool) -> pd.DataFrame:
    """Return the group's rows as one frame (built from the requests' columns when they have them).

    When the group is exactly one live batch (router.batcher), its frame is reused as it is and the
    group is put in the frame's row order (the caller slices the predictions in group order).
    """
    if len(group) == 1:
        return group[0].exchange.table()
    shared = group[0].exchange.batch_frame
    if (
        shared is not None
        and all(job.exchange.batch_frame is shared for job in group)
        and sum(job.exchange.rows for job in group) == len(shared)
    ):  # the whole live batch is shadowed: score the frame it was built into, rows in its order
        group.sort(key=lambda job: job.exchange.batch_offset)
        return shared
    if joined:
        return join_columns([job.exchange.columns for job in group if job.exchange.columns is not None])
    return pd.concat([job.exchange.table() for job in group], ignore_index=True)
