"""The data plane of one process: routes, backends, shadow pool and recorder, wired together.

    dataplane = DataPlane(store, RouterSettings())
    dataplane.start()          # in each gunicorn worker, i.e. after fork: starts the threads
    ...                        # router.http.blueprint serves requests through it
    dataplane.close(timeout=10)  # gunicorn's worker_exit: score or cancel shadow work, flush records

Per request: the routing key's hash picks the arm that answers (sticky split of the canary weight);
the answering arm runs inline, through the batcher (router.batcher: concurrent requests for the same
in-process version share one scoring call, as the deployment's batching settings allow); the other arm, when the rollout asks for it, is scored in shadow. In
canary mode a challenger that fails to answer is replaced by the champion (its error is recorded).
Every answered request becomes one PairRecord per row, written by the recorder.

A challenger called inline goes through its guards (router.breaker): a bulkhead bounds the calls
waiting on a remote challenger, a circuit breaker stops calling one that keeps failing; either way
the champion answers at once and the challenger's arm records why.

Thread safety: under gunicorn's threaded worker several requests run serve() at once. Per-request
state lives in the Exchange; what is shared is the route table (swapped whole, read without a
lock), the guards (locked), the in-flight count (locked), the shadow pool and the recorder (their
queues and counters are locked), and prometheus-client's metrics (thread-safe).

Shadow share: in canary mode the other arm shadows a share shadow_rate of requests; with a challenger
but a canary weight of 0 (mode "shadow", or the shadow phase of "shadow_then_canary") the challenger
shadows a share shadow_rate of requests, every request when shadow_rate is 0 (a shadow rollout that
scores nothing would be pointless). That configured share is the sample. Under load the shadow
pool lowers a deployment's own share (load shedding, see router.shadow: when its jobs wait too long,
or when, with this process's requests crowding each other most of the time, shadow scoring takes
more than shadow_cpu_budget of its CPU); a sampled request whose id falls outside the lowered share is
recorded as skipped ("shed"): coverage lost, not an error.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from router.backends import Backend, MissingBackend, Predictions
from router.batcher import Arrival, Batcher
from router.breaker import BUSY, CIRCUIT_OPEN, Guards, is_fault
from router.errors import BackendError, ModelUnavailable
from router.exchange import ArmResult, Exchange
from router.inputs import Batch
from router.metrics import get_metrics
from router.recorder import Recorder
from router.routes import Route, RouteTable
from router.settings import RouterSettings
from router.shadow import SHED, ShadowPool
from router.split import CHALLENGER, CHAMPION, arm_for_hash, routing_key_hash, sampled
from storage import Store
from storage.entities import PipelineVersion, RoutingEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """What the client gets: the serving arm, its version and its predictions."""

    arm: str
    version: PipelineVersion
    predictions: Predictions


class DataPlane:
    """Route, score, shadow and record prediction requests for every deployment."""

    def __init__(self, store: Store, settings: RouterSettings | None = None) -> None:
        self.store = store
        self.settings = settings or RouterSettings()
        s = self.settings
        self.routes = RouteTable(store, s)
        self.recorder = Recorder(
            store,
            spool_dir=s.spool_dir,
            batch_size=s.recorder_batch,
            flush_interval=s.recorder_flush_interval,
            queue_size=s.recorder_queue_size,
            retry_interval=s.spool_retry_interval,
        )
        self.idle = threading.Event()
        self.idle.set()
        self._owed = 0  # answers sent whose put-off work (router.http, answer first) has yet to run
        self._paid = threading.Event()
        self._paid.set()
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self._serving = 0  # requests inside serve() now
        self._crowded_s = 0.0  # seconds at least two were, up to _crowded_since
        self._crowded_since = 0.0
        self.shadow = ShadowPool(
            on_settled=self._shadow_settled,
            queue_size=s.shadow_queue_size,
            workers=s.shadow_workers,
            batch_max=s.shadow_batch_max,
            timeout_s=s.shadow_timeout_s,
            linger_s=s.shadow_linger_s,
            idle=self.idle,
            on_batch=self._count_batch,
            crowded=self.crowded_seconds,
            cpu_budget=s.shadow_cpu_budget,
        )
        self._coverage: dict[str, list[float]] = {}  # deployment -> [scored, sampled], decaying
        self.batcher = Batcher()
        self.guards = Guards(
            failures=s.breaker_failures, open_s=s.breaker_open_s, limit=s.challenger_concurrency
        )
        self.started = False
        self.closed = False
        self._stop = threading.Event()
        self._gauges: threading.Thread | None = None
        self._reported = (0, 0)
        self._reported_live = (0, 0)
        self._reported_cuts: dict[tuple[str, str], int] = {}

    @property
    def ready(self) -> bool:
        """True once the routing table is loaded (every routed version loaded and warmed) until close(),
        except while a deployment's champion cannot load (RouteTable.unservable)."""
        return self.started and self.routes.loaded and not self.closed and not self.routes.unservable()

    def start(self) -> DataPlane:
        """Load the routing table and start the threads; call once per process, after fork."""
        if self.started:
            return self
        get_metrics()
        self.recorder.start()
        self.shadow.start()
        self.routes.start()
        if self.settings.freeze_heap:
            _freeze_heap()
        if self.settings.switch_interval_s is not None:
            sys.setswitchinterval(self.settings.switch_interval_s)
        quiet_sklearn_thread_warning()
        self._gauges = threading.Thread(target=self._update_gauges, name="mlcanary-gauges", daemon=True)
        self._gauges.start()
        self.started = True
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Finish or cancel shadow work, then flush every record (to storage or the spool).

        Answers already sent whose pair and shadow work are still to be handed over (router.http,
        answer first: `owe` / `paid`) are given a quarter of the timeout to do it first.
        """
        if self.closed:
            return
        self.closed = True
        deadline = time.monotonic() + timeout
        self._paid.wait(timeout / 4)
        self.shadow.close(timeout=max(0.1, timeout / 2))
        self.recorder.close(timeout=max(0.1, deadline - time.monotonic()))
        self._stop.set()
        self.routes.close(timeout=max(0.1, deadline - time.monotonic()))
        self._publish_gauges()

    # -- the request path ---------------------------------------------------------------------------

    def route(self, deployment: str) -> Route:
        """Return the deployment's current route (NotReady, DeploymentNotFound)."""
        return self.routes.get(deployment)

    def enter(self, deployment: str | None = None, connection: object = None) -> Arrival | None:
        """Mark a request in flight (shadow work waits for none to be); call answered() once it is.

        With the deployment it asks for, the request is announced to the batcher: a lane of that
        deployment may wait for it (max_batch_delay_ms at most) while it arrives and, once scored,
        until it is answered. connection: the kept-alive client connection it came on (router.http),
        counted as returning once answered (router.batcher). Pass what this returns to serve() and
        answered().
        """
        with self._inflight_lock:
            self._inflight += 1
            self.idle.clear()
        return None if deployment is None else self.batcher.expect(deployment, connection)

    def answered(self, arrival: Arrival | None = None) -> None:
        """Mark an entered request answered (or refused): the batcher no longer waits for it.

        Call it once the response is built, before it is sent: a client that sends its next request
        once answered never finds its last one still counted (alone, a request never waits).
        """
        self.batcher.settle(arrival)
        self.batcher.done(arrival)

    def owe(self) -> None:
        """An answer is on its way with work put off until it is sent (router.http); `paid` once done."""
        with self._inflight_lock:
            self._owed += 1
            self._paid.clear()

    def paid(self) -> None:
        """The work an answer put off is done (see `owe`)."""
        with self._inflight_lock:
            self._owed = max(0, self._owed - 1)
            if not self._owed:
                self._paid.set()

    def leave(self) -> None:
        """Mark a request finished, after its response was sent."""
        with self._inflight_lock:
            self._inflight -= 1
            if self._inflight <= 0:
                self._inflight = 0
                self.idle.set()

    def crowded_seconds(self) -> float:
        """Return the seconds (cumulative) during which two or more requests were being served at once.

        One of them then waits for the CPU (the GIL) the other holds: the live path is saturated. A
        single request at a time (a client that waits for each answer, a moderate load) never counts.
        """
        with self._inflight_lock:
            if self._serving >= 2:
                return self._crowded_s + time.monotonic() - self._crowded_since
            return self._crowded_s

    def serve(
        self,
        route: Route,
        batch: Batch,
        *,
        request_id: str | None = None,
        routing_key: str | None = None,
        arrival: Arrival | None = None,
        after: list[Callable[[], None]] | None = None,
    ) -> Answer:
        """Answer a validated batch; record it; raise BackendError only if the champion fails.

        arrival: what enter() returned; it settles when the request reaches the batcher.
        after: when given, what comes once the answer is known and need not delay it (recording the
        pair, handing the other arm to the shadow pool) is appended here instead of done; the caller
        runs it once the answer is sent (router.http). Nothing of it changes the answer.
        """
        with self._inflight_lock:
            self._serving += 1
            if self._serving == 2:
                self._crowded_since = time.monotonic()
        try:
            return self._serve(route, batch, request_id, routing_key, arrival, after)
        finally:
            with self._inflight_lock:
                if self._serving == 2:
                    self._crowded_s += time.monotonic() - self._crowded_since
                self._serving -= 1

    def _serve(
        self,
        route: Route,
        batch: Batch,
        request_id: str | None,
        routing_key: str | None,
        arrival: Arrival | None,
        after: list[Callable[[], None]] | None,
    ) -> Answer:
        received_at = datetime.now(UTC)
        request_id = request_id or uuid.uuid4().hex
        entry = route.entry
        challenger = route.challenger
        key_hash = routing_key_hash(routing_key or request_id, entry.rollout_id, entry.split_salt)
        served = CHAMPION
        canary = (
            challenger is not None and entry.canary_weight > 0 and entry.mode != "shadow"
        )  # as configured_share
        if canary and arm_for_hash(key_hash, entry.canary_weight) == CHALLENGER:
            served = CHALLENGER
        exchange = (
            Exchange(request_id, received_at, entry, key_hash, served, None, columns=batch.columns)
            if batch.columns
            else Exchange(request_id, received_at, entry, key_hash, served, batch.frame)
        )
        if served == CHALLENGER:
            assert challenger is not None
            exchange.challenger = self._call_guarded(challenger, batch, exchange, arrival)
            if exchange.challenger.predictions is not None:
                _then(after, self._shadow_or_record, exchange, route)
                return Answer(CHALLENGER, challenger.version, exchange.challenger.predictions)
            exchange.served_arm = served = CHAMPION  # the challenger failed: the champion answers
            error = exchange.challenger.error or ""
            code = (
                "challenger_circuit_open"
                if error.startswith(CIRCUIT_OPEN)
                else "challenger_busy"
                if error == BUSY
                else "challenger_fallback"
            )
            get_metrics().errors.labels(entry.deployment, code).inc()
        exchange.champion = self._score(route.champion, batch, exchange, arrival)
        result = exchange.champion
        if served == CHAMPION and exchange.challenger is not None:
            _then(after, self.recorder.add, exchange)  # fallback: both arms ran inline
        else:
            _then(after, self._shadow_or_record, exchange, route)
        if result.predictions is None:
            assert isinstance(result.exception, BackendError)
            raise result.exception
        return Answer(CHAMPION, route.champion.version, result.predictions)

    def _score(
        self, backend: Backend, batch: Batch, exchange: Exchange, arrival: Arrival | None = None
    ) -> ArmResult:
        """Score the answering arm, batched with concurrent requests as the deployment's settings say."""
        entry = exchange.entry
        scored = self.batcher.score(
            backend, batch, entry.batching, deployment=entry.deployment, arrival=arrival
        )
        if scored.frame is not None:
            exchange.batch_frame, exchange.batch_offset = scored.frame, scored.offset
        return scored.result

    def _call_guarded(
        self, backend: Backend, batch: Batch, exchange: Exchange, arrival: Arrival | None = None
    ) -> ArmResult:
        """Call a challenger inline through its bulkhead and circuit breaker (router.breaker)."""
        if isinstance(backend, MissingBackend):  # fails at once, with its own reason: nothing to guard
            self.batcher.settle(arrival)
            return _call(backend, batch)
        version = backend.version
        guard = self.guards.get(version.id, remote=bool(version.upstream_url))
        if guard.bulkhead is not None and not guard.bulkhead.acquire(blocking=False):
            self.batcher.settle(arrival)
            return ArmResult(version, None, None, BUSY, ModelUnavailable(BUSY))  # no call: no latency
        try:
            if not guard.breaker.allow():
                self.batcher.settle(arrival)
                error = f"{CIRCUIT_OPEN} (last fault: {guard.breaker.last_fault})"
                return ArmResult(version, None, None, error, ModelUnavailable(error))
            try:
                result = self._score(backend, batch, exchange, arrival)
            except BaseException:
                guard.breaker.record(True)  # an allowed probe must always report back
                raise
            guard.breaker.record(is_fault(result.exception), result.error)
            return result
        finally:
            if guard.bulkhead is not None:
                guard.bulkhead.release()

    def _shadow_or_record(self, exchange: Exchange, route: Route) -> None:
        entry = exchange.entry
        if route.challenger is None:
            self.recorder.add(exchange)
            return
        rate = configured_share(entry)
        if not sampled(exchange.request_id, rate):
            self.recorder.add(exchange)
            return
        arm, backend = (
            (CHALLENGER, route.challenger) if exchange.served_arm == CHAMPION else (CHAMPION, route.champion)
        )
        share = self.shadow.share(entry.deployment)
        if share < 1.0 and not sampled(exchange.request_id, rate * share):
            # load shedding: the same hash, a lower threshold, so the scored requests stay a random sample
            exchange.settle_shadow(arm, ArmResult(backend.version, skip_reason=SHED))
            self._shadow_settled(exchange)
            return
        self.shadow.submit(exchange, arm, backend)

    # -- metrics ------------------------------------------------------------------------------------

    def _shadow_settled(self, exchange: Exchange) -> None:
        result = exchange.champion if exchange.served_arm == CHALLENGER else exchange.challenger
        if result is not None:
            arm = CHAMPION if exchange.served_arm == CHALLENGER else CHALLENGER
            name = exchange.entry.deployment
            m = get_metrics()
            counts = self._coverage.setdefault(name, [0.0, 0.0])
            counts[1] += 1
            if result.skip_reason is not None:
                m.shadow_skipped.labels(name, result.skip_reason).inc()
            else:
                counts[0] += 1
                m.shadow_scored.labels(name, arm).inc()
                if result.error is not None:
                    m.shadow_errors.labels(name, arm).inc()
                if result.wait_ms is not None:
                    m.shadow_wait.labels(name).observe(result.wait_ms / 1000.0)
        self.recorder.add(exchange)

    def _count_batch(self, size: int) -> None:
        get_metrics().shadow_batch_size.observe(size)

    def _update_gauges(self) -> None:
        while not self._stop.wait(0.5):
            self._publish_gauges()
            routed = self.routes.routes.values()
            self.guards.retain({r.challenger.version.id for r in routed if r.challenger is not None})

    def _publish_gauges(self) -> None:
        try:
            m = get_metrics()
            m.shadow_queue_depth.set(self.shadow.depth)
            for name, route in list(self.routes.routes.items()):
                entry = route.entry
                if route.challenger is None:
                    continue
                m.shadow_share.labels(name).set(configured_share(entry) * self.shadow.share(name))
            for key, count in list(self.shadow.cuts.items()):
                m.shadow_cuts.labels(*key).inc(count - self._reported_cuts.get(key, 0))
                self._reported_cuts[key] = count
            m.shadow_cpu_share.set(self.shadow.cpu_share)
            for name, counts in list(self._coverage.items()):
                if counts[1] >= 1.0:
                    m.shadow_coverage.labels(name).set(counts[0] / counts[1])
                counts[0] *= 0.98  # about 30 s of memory at one publication every 0.5 s
                counts[1] *= 0.98
            m.recorder_queue.set(self.recorder.pending)
            m.spool_rows.set(self.recorder.spool_rows)
            m.recorder_lag.set(self.recorder.lag_s)
            written, spooled = self.recorder.written, self.recorder.spooled
            m.records_written.inc(written - self._reported[0])
            m.records_spooled.inc(spooled - self._reported[1])
            self._reported = (written, spooled)
            calls, batched = self.batcher.calls, self.batcher.requests
            m.live_calls.inc(calls - self._reported_live[0])
            m.live_batched.inc(batched - self._reported_live[1])
            self._reported_live = (calls, batched)
        except Exception:  # metrics must never take the data plane down
            log.exception("cannot publish gauges")


def configured_share(entry: RoutingEntry) -> float:
    """Return the share of requests a rollout with a challenger asks to shadow (see the module docstring)."""
    canary = entry.canary_weight > 0 and entry.mode != "shadow"
    return entry.shadow_rate if canary else (entry.shadow_rate or 1.0)


_SKLEARN_THREAD_WARNING = "`sklearn.utils.parallel.delayed` should be used with"


def quiet_sklearn_thread_warning() -> None:
    """Drop scikit-learn's spurious "cannot propagate the configuration" warning (once per process).

    Serving threads score at the same time. scikit-learn's Parallel (ColumnTransformer uses it,
    even with n_jobs=None) captures the process-wide `warnings.filters` list, which another
    thread's `warnings.catch_warnings` + `resetwarnings` may have emptied for a moment (the
    filter list is not thread-safe before Python 3.14); it then warns, on stderr, for every
    call. Nothing is lost: the pipelines here run in the calling thread, with its own config.
    A filter cannot silence it (the filter list is what is emptied), so the display is wrapped.
    """
    show = warnings.showwarning
    if getattr(show, "_mlcanary_quiet", False):
        return

    def showwarning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
        if str(message).startswith(_SKLEARN_THREAD_WARNING):
            return
        show(message, category, *args, **kwargs)  # type: ignore[arg-type]

    showwarning._mlcanary_quiet = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


_frozen_in: int | None = None  # the process whose heap was frozen


def _freeze_heap() -> None:
    """Keep the objects alive now (libraries, loaded pipelines) out of full garbage collections.

    Exchanges wait up to a few hundred milliseconds for the shadow pool and the recorder, long
    enough to be promoted to the oldest generation; that made CPython run full collections every
    few seconds under load, each scanning the ~220k objects of scikit-learn, pandas, SQLAlchemy and
    the pipelines: 50-120 ms pauses, the requests that met one answered that much later (wrk c=1
    p99 60-100 ms against 7 ms for the bare Flask app). Frozen objects are still freed by reference
    counting; only garbage cycles among them would stay (a collect() first clears today's). Once
    per process: a gunicorn worker builds its app after fork.
    """
    global _frozen_in
    if _frozen_in == os.getpid():
        return
    gc.collect()
    gc.freeze()
    _frozen_in = os.getpid()


def _then(after: list[Callable[[], None]] | None, work: Callable[..., None], *args: Any) -> None:
    """Do work now, or append it to `after` (DataPlane.serve) to be done once the answer is sent."""
    if after is None:
        work(*args)
    else:
        after.append(functools.partial(work, *args))


def _call(backend: Backend, batch: Batch) -> ArmResult:
    started = time.perf_counter()
    try:
        predictions = backend.predict(batch.frame)
    except BackendError as exc:
        return ArmResult(backend.version, None, (time.perf_counter() - started) * 1000.0, exc.message, exc)
    return ArmResult(backend.version, predictions, (time.perf_counter() - started) * 1000.0)
