"""Adaptive batching of live requests: concurrent requests for one version scored in one call.

Scoring one row costs a scikit-learn pipeline about as much as scoring a hundred: nearly all of a
request's model time is per-call overhead. So within one router process, requests of one deployment
that want the same backend, with the same input columns of the same types, share a lane:

- a request that finds its lane idle becomes the lane's leader and scores at once, unless other
  requests of its deployment are in flight in this process outside any lane: arriving (announced
  with `expect`, not yet queued) or leaving (scored, their response not yet built: `done`). Then it
  waits for them, at most max_batch_delay_ms (or until max_batch_rows are queued, or until none of
  the deployment's requests is outside a lane any more). Alone, it never waits; requests of other
  deployments can never join it, so it never waits for them;
- requests that arrive while the lane is scoring queue up; when the call ends, the oldest of them
  leads the next batch, by the same rule. Waiting for the leaving requests is what keeps batches
  whole under a closed loop of clients (each sends its next request once answered): a leader that
  scored at once would score only the requests that queued during the last call, and the process's
  requests would settle into two alternating half-size batches (c=16 over 2 processes: ~4 requests
  per call of the 8 in flight, bench/results/router_batch_batch.md). While the leader waits, the
  process's CPU runs the other requests' parsing and answering, which it has to do anyway;
- a request answered on a kept-alive connection leaves that connection *returning* for
  max_batch_delay_ms: its client's next request is on its way (a closed loop sends it once answered),
  so a leader waits for it as well, and stops once it arrived (`expect` with the same connection) or
  the delay ran out. Waiting only for requests already in the process still split batches, because
  the answered clients' next requests arrived just after the leader had stopped waiting (c=16 over 2
  processes: 4.2 requests per call; with returning connections 5-6.5). A request's own connection is
  never returning for it (its arrival ends that), so one client waiting for each answer never waits;
  a connection that closes after its answer is never counted;
- the leader joins the requests' converted columns into one frame (`inputs.join_columns`), calls
  the backend once, and hands each request its slice of the predictions. The frame and each
  request's offset in it are handed back too, so the shadow arm scores the same frame.

Isolation: requests are validated one by one before they reach a lane, so a request with a bad
row is refused (400) alone. When a batch of several requests fails in the backend with an error
about the input (model_error, model_rejected_input, invalid_model_output), each request is scored
again alone, so a request the model rejects never fails its neighbours; an unavailable or timed-out
model (model_unavailable, model_timeout) fails every request of that batch with its code, as
today. Requests of different lanes (deployments, versions, arms, column names or types) are never
mixed.

Only in-process pipelines are batched. An HTTP upstream (a model server) is called once per request
as before: model servers batch on their own (MLServer's adaptive batching, Triton's dynamic
batcher), and the upstream's timeout, bulkhead and circuit breaker stay per request.

Lanes are keyed by the deployment, the backend object (a version's backend lives as long as it is
routed), the column names and their dtypes. The lock is held only to queue, take and hand back,
never while scoring, so request threads parse and validate while a batch is scored: the GIL passes
between request threads and the scoring leader once per batch, not once per request. Each request
sleeps on a lock of its own: a call's end wakes only the requests it scored and the oldest one still
queued (it leads the next batch); the others sleep on (a shared condition woke every queued request
at every call's end, each to find its result not yet in and sleep again).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from router.backends import Backend, InProcessBackend, Predictions, predict_batch
from router.errors import BackendError, ModelTimeout, ModelUnavailable
from router.exchange import ArmResult
from router.inputs import Batch, join_columns
from storage.entities import BatchingConfig


@dataclass(frozen=True)
class Scored:
    """One request's share of a batch call: its result, and the frame it was scored in (with its offset)."""

    result: ArmResult
    frame: pd.DataFrame | None = None  # the batch frame, when the call scored several requests
    offset: int = 0  # the request's first row in frame
    size: int = 1  # requests scored in the call


class _Waiter:
    """A request in a lane: its batch, and the lock its thread sleeps on until it is woken."""

    __slots__ = ("arrival", "batch", "failure", "scored", "sleeping", "wake")

    def __init__(self, batch: Batch, arrival: Arrival | None = None) -> None:
        self.batch = batch
        self.arrival = arrival
        self.scored: Scored | None = None
        # an unexpected exception of the call (re-raised in each thread)
        self.failure: BaseException | None = None
        self.sleeping = False  # its thread sleeps on wake (set and cleared under the batcher's lock)
        self.wake = threading.Lock()
        self.wake.acquire()

    def rouse(self) -> None:
        """Wake its thread if it sleeps (batcher lock held): its result is in, or it may lead the lane."""
        if self.sleeping:
            self.sleeping = False
            self.wake.release()


@dataclass
class _Lane:
    queue: deque[_Waiter] = field(default_factory=deque)
    rows: int = 0  # rows queued
    busy: bool = False  # a leader is gathering or scoring


class Arrival:
    """A request announced to the batcher (`Batcher.expect`): arriving, then leaving, then done.

    It settles once: when it is queued in a lane, or when it ends without reaching one (refused,
    answered by an upstream). Settling again is a no-op. Scored in a lane, it is leaving until
    `Batcher.done` (its response is built, about to be sent).
    """

    __slots__ = ("connection", "deployment", "leaving", "pending", "window_s")

    def __init__(self, deployment: str, connection: Any = None) -> None:
        self.deployment = deployment
        self.connection = connection  # the kept-alive client connection it came on (None: not kept alive)
        self.pending = True  # announced, not yet queued in a lane (or ended without one)
        self.leaving = False  # scored in a lane, its response not yet built (Batcher.done)
        self.window_s = 0.0  # once answered, how long its connection counts as returning (its lane's delay)


class Batcher:
    """Score requests through per-(backend, columns) lanes, several requests per call when they overlap."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # lingering leaders: a request queued, or left
        self._lanes: dict[tuple[Any, ...], _Lane] = {}
        self._arriving: dict[str, int] = {}  # deployment -> requests announced, not yet settled
        self._leaving: dict[str, int] = {}  # deployment -> requests scored in a lane, not yet answered
        # deployment -> {connection: monotonic time until which it counts as returning}: kept-alive
        # connections whose client has its answer and has not sent its next request yet
        self._returning: dict[str, dict[Any, float]] = {}
        self.calls = 0  # backend calls made through lanes
        self.requests = 0  # requests they scored
        self.lingered: Counter[str] = Counter()  # deployment -> leaders that waited for others outside lanes
        self.lingered_alone: Counter[str] = Counter()  # of them, those nobody joined while they waited

    def expect(self, deployment: str, connection: Any = None) -> Arrival:
        """Announce a request of deployment that may reach a lane soon: an idle lane's leader may wait for it.

        connection: a key of the kept-alive client connection it came on (None if the connection
        closes after the answer): once answered, the connection counts as returning for a moment.
        """
        arrival = Arrival(deployment, connection)
        with self._lock:
            self._arriving[deployment] = self._arriving.get(deployment, 0) + 1
            if connection is not None:
                returning = self._returning.get(deployment)
                if returning is not None and returning.pop(connection, None) is not None and not returning:
                    del self._returning[deployment]
        return arrival

    def settle(self, arrival: Arrival | None) -> None:
        """Mark an announced request as no longer arriving (it queued, or will never queue); idempotent."""
        if arrival is None or not arrival.pending:
            return
        with self._lock:
            self._settle(arrival)

    def done(self, arrival: Arrival | None) -> None:
        """Mark an announced request answered (its response built): a leader no longer waits for it; idempotent."""
        if arrival is None or not arrival.leaving:
            return
        with self._lock:
            self._unmark_leaving(arrival, answered=True)

    def arriving(self, deployment: str) -> int:
        """Return the requests of deployment announced and not yet settled."""
        with self._lock:
            return self._arriving.get(deployment, 0)

    def leaving(self, deployment: str) -> int:
        """Return the requests of deployment scored in a lane and not yet answered."""
        with self._lock:
            return self._leaving.get(deployment, 0)

    def returning(self, deployment: str) -> int:
        """Return the kept-alive connections of deployment answered within their lane's delay, not back yet."""
        with self._lock:
            return self._back(deployment)

    def _outside(self, deployment: str) -> int:  # lock held
        outside = self._arriving.get(deployment, 0) + self._leaving.get(deployment, 0)
        return outside + self._back(deployment)

    def _back(self, deployment: str) -> int:  # lock held
        """Connections of deployment still returning (forgets those whose time ran out)."""
        returning = self._returning.get(deployment)
        if not returning:
            return 0
        now = time.monotonic()
        for connection in [c for c, until in returning.items() if until <= now]:
            del returning[connection]
        if not returning:
            del self._returning[deployment]
        return len(returning)

    def _unmark_leaving(self, arrival: Arrival, *, answered: bool = False) -> None:  # lock held
        if not arrival.leaving:
            return
        arrival.leaving = False
        _drop_one(self._leaving, arrival.deployment)
        if answered and arrival.connection is not None and arrival.window_s > 0:
            # its client has the answer: on a closed loop, its next request is on its way
            until = time.monotonic() + arrival.window_s
            self._returning.setdefault(arrival.deployment, {})[arrival.connection] = until
        self._arrived.notify_all()  # a lingering leader looks again

    def _settle(self, arrival: Arrival) -> None:  # lock held
        if not arrival.pending:
            return
        arrival.pending = False
        _drop_one(self._arriving, arrival.deployment)
        self._arrived.notify_all()  # a lingering leader looks again: it joined, or it never will

    def score(
        self,
        backend: Backend,
        batch: Batch,
        config: BatchingConfig,
        *,
        deployment: str = "",
        arrival: Arrival | None = None,
    ) -> Scored:
        """Score one validated request of deployment, in a batch with concurrent ones when config allows.

        arrival, when the request was announced with `expect`, settles as the request queues (or is
        scored without a lane).
        """
        if (
            not config.enabled
            or not isinstance(backend, InProcessBackend)
            or not batch.columns
            or batch.rows >= config.max_batch_rows
        ):
            self.settle(arrival)
            return Scored(_call(backend, batch))  # an upstream reads the columns: no frame is built
        key = (
            deployment,
            id(backend),
            backend.version.id,
            # numpy dtypes as they are (hashable; str() of one costs ~4 us, seven of them a request's 30)
            *((n, a.dtype if isinstance(a, np.ndarray) else str(a.dtype)) for n, a in batch.columns.items()),
        )
        me = _Waiter(batch, arrival)
        with self._lock:
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane()
            lane.queue.append(me)
            lane.rows += batch.rows
            if arrival is not None:
                self._settle(arrival)  # wakes this deployment's lingering leaders
                self._unmark_leaving(arrival)  # queued again (a canary fallback to the champion)
            while True:
                if me.scored is not None or me.failure is not None:
                    break
                if not lane.busy:
                    lane.busy = True  # this thread leads the next batch
                    self._lead(backend, key, lane, config, deployment)
                    continue  # handed back (lead hands it its own result), or not taken: wait again
                me.sleeping = True  # woken (rouse) when its result is in, or to lead the lane
                self._lock.release()
                try:
                    me.wake.acquire()
                finally:
                    self._lock.acquire()
        if me.failure is not None:
            raise me.failure
        assert me.scored is not None
        return me.scored

    def _lead(
        self,
        backend: Backend,
        key: tuple[Any, ...],
        lane: _Lane,
        config: BatchingConfig,
        deployment: str,
    ) -> None:
        """Gather (lock held on entry and exit), score without the lock, hand back, free the lane."""
        delay_s = config.max_batch_delay_ms / 1000.0
        if delay_s > 0 and self._outside(deployment) > 0:
            self.lingered[deployment] += 1
            queued = len(lane.queue)
            deadline = time.monotonic() + delay_s
            while lane.rows < config.max_batch_rows and self._outside(deployment) > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)  # a returning connection's time runs out with the deadline
            if len(lane.queue) == queued:
                self.lingered_alone[deployment] += 1
        taken: list[_Waiter] = []
        rows = 0
        while lane.queue and (not taken or rows + lane.queue[0].batch.rows <= config.max_batch_rows):
            waiter = lane.queue.popleft()
            taken.append(waiter)
            rows += waiter.batch.rows
        lane.rows -= rows
        self._lock.release()
        try:
            self._score(backend, taken)
        except BaseException as exc:  # never leave waiters hanging on a lane nobody frees
            for waiter in taken:
                if waiter.scored is None:
                    waiter.failure = exc
        finally:
            self._lock.acquire()
            self.calls += 1
            self.requests += len(taken)
            for waiter in taken:  # scored (or failed): leaving until answered (done)
                if waiter.arrival is not None and not waiter.arrival.leaving:
                    waiter.arrival.leaving = True
                    waiter.arrival.window_s = delay_s
                    name = waiter.arrival.deployment
                    self._leaving[name] = self._leaving.get(name, 0) + 1
            lane.busy = False
            for waiter in taken:  # only the requests of this batch wake up ...
                waiter.rouse()
            if lane.queue:  # ... and the oldest queued one, to lead the next batch
                lane.queue[0].rouse()
            else:  # forget idle lanes (a version no longer routed leaves none behind)
                self._lanes.pop(key, None)

    def _score(self, backend: Backend, taken: list[_Waiter]) -> None:
        if len(taken) == 1:
            taken[0].scored = Scored(_call(backend, taken[0].batch.frame))
            return
        frame = join_columns([w.batch.columns for w in taken])
        result = _call(backend, frame)
        if result.predictions is None and _about_input(result.exception):
            for waiter in taken:  # isolate the request the model refused: score each alone
                waiter.scored = Scored(_call(backend, waiter.batch.frame))
            return
        offset = 0
        for waiter in taken:
            rows = waiter.batch.rows
            part: Predictions | None = None
            if result.predictions is not None:
                part = result.predictions.slice(offset, offset + rows)
            own = ArmResult(result.version, part, result.latency_ms, result.error, result.exception)
            waiter.scored = Scored(own, frame, offset, len(taken))
            offset += rows


def _about_input(exc: Exception | None) -> bool:
    """Whether a backend error may come from one request's rows (not the model being unreachable)."""
    return isinstance(exc, BackendError) and not isinstance(exc, ModelUnavailable | ModelTimeout)


def _call(backend: Backend, rows: pd.DataFrame | Batch) -> ArmResult:
    """Call the backend once; its BackendError becomes the arm's error, with the call's own time."""
    started = time.perf_counter()
    try:
        predictions = predict_batch(backend, rows) if isinstance(rows, Batch) else backend.predict(rows)
    except BackendError as exc:
        return ArmResult(backend.version, None, (time.perf_counter() - started) * 1000.0, exc.message, exc)
    return ArmResult(backend.version, predictions, (time.perf_counter() - started) * 1000.0)


def _drop_one(counts: dict[str, int], deployment: str) -> None:
    """Count one request of deployment fewer; forget the deployment at zero."""
    left = counts.get(deployment, 0) - 1
    if left > 0:
        counts[deployment] = left
    else:
        counts.pop(deployment, None)
