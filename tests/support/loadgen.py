"""A small bounded load generator: N client threads, a fixed count or a duration, every answer recorded.

    load = Load(base_url, body=body, threads=4, count=2000, duration=30)
    load.start()
    ...                              # cut the database, kill a worker, start a rollout...
    report = load.join()             # or load.stop() to end early
    report.answered                  # request ids answered 200, in order of answer
    report.percentiles(arm="champion")

Every request carries its own X-Request-Id (``{prefix}-{thread}-{n}``) so a test can compare what the
clients were answered with what storage holds. Transport errors (refused, reset, timed out) are
recorded with status 0. Both bounds are enforced: a load never runs past ``duration`` seconds nor
sends more than ``count`` requests, whichever comes first. ``rate`` (requests per second over all
threads) paces the clients for soaks; None sends as fast as the server answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class Result:
    """One request: its id, HTTP status (0 for a transport error), latency and the arm that answered."""

    request_id: str
    status: int
    latency_ms: float
    arm: str | None
    sent_at: float  # time.time() when sent
    answered_at: float  # time.time() when the answer (or the error) arrived
    routing_key: str | None = None


@dataclass
class Report:
    """Every result of a load, in order of completion."""

    results: list[Result] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def answered(self) -> list[str]:
        """Request ids answered with 200."""
        return [r.request_id for r in self.results if r.status == 200]

    @property
    def failed(self) -> list[Result]:
        """Results that were not a 200 (HTTP errors and transport errors)."""
        return [r for r in self.results if r.status != 200]

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    @property
    def seconds(self) -> float:
        return max(1e-9, self.ended_at - self.started_at)

    @property
    def rate(self) -> float:
        """Answered requests per second."""
        return len(self.answered) / self.seconds

    def latencies(
        self, *, arm: str | None = None, since: float = 0.0, until: float = float("inf")
    ) -> list[float]:
        return sorted(
            r.latency_ms
            for r in self.results
            if r.status == 200 and (arm is None or r.arm == arm) and since <= r.sent_at < until
        )

    def percentiles(
        self, *, arm: str | None = None, since: float = 0.0, until: float = float("inf")
    ) -> dict[str, float]:
        """p50/p90/p99/max latency (ms) of the 200s, optionally of one arm or a time window."""
        values = self.latencies(arm=arm, since=since, until=until)
        if not values:
            return {
                "n": 0,
                "p50": float("nan"),
                "p90": float("nan"),
                "p99": float("nan"),
                "max": float("nan"),
            }
        return {
            "n": len(values),
            "p50": _quantile(values, 0.50),
            "p90": _quantile(values, 0.90),
            "p99": _quantile(values, 0.99),
            "max": values[-1],
        }


def _quantile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


Body = Mapping[str, Any] | Callable[[int], Mapping[str, Any]]


class Load:
    """Send POST requests from ``threads`` threads until ``count`` are sent or ``duration`` s have passed."""

    def __init__(
        self,
        base_url: str,
        *,
        path: str = "/v1/models/churn/invocations",
        body: Body,
        threads: int = 4,
        count: int = 1000,
        duration: float = 30.0,
        rate: float | None = None,
        prefix: str = "load",
        routing_keys: Callable[[int], str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        if count <= 0 or duration <= 0 or threads <= 0:
            raise ValueError("count, duration and threads must be positive")
        self.base_url = base_url
        self.path = path
        self.body = body
        self.threads = threads
        self.count = count
        self.duration = duration
        self.rate = rate
        self.prefix = prefix
        self.routing_keys = routing_keys
        self.timeout = timeout
        self.report = Report()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._issued = 0
        self._workers: list[threading.Thread] = []
        self._deadline = 0.0
        self._t0 = 0.0

    def _next(self) -> int | None:
        with self._lock:
            if self._issued >= self.count or self._stop.is_set() or time.monotonic() >= self._deadline:
                return None
            self._issued += 1
            return self._issued - 1

    def start(self) -> Load:
        self._t0 = time.monotonic()
        self._deadline = self._t0 + self.duration
        self.report.started_at = time.time()
        for t in range(self.threads):
            worker = threading.Thread(target=self._run, args=(t,), name=f"loadgen-{t}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, thread: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as client:
            while (n := self._next()) is not None:
                if self.rate:
                    due = self._t0 + n / self.rate
                    delay = due - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                request_id = f"{self.prefix}-{thread}-{n}"
                key = self.routing_keys(n) if self.routing_keys else None
                headers = {"X-Request-Id": request_id, **({"X-Routing-Key": key} if key else {})}
                body = self.body(n) if callable(self.body) else self.body
                sent = time.time()
                started = time.perf_counter()
                try:
                    response = client.post(self.path, json=body, headers=headers)
                    status, arm = response.status_code, response.headers.get("X-Mlcanary-Arm")
                except httpx.HTTPError:
                    status, arm = 0, None
                latency = (time.perf_counter() - started) * 1000.0
                result = Result(request_id, status, latency, arm, sent, time.time(), key)
                with self._lock:
                    self.report.results.append(result)
                if status == 0 and not self._stop.is_set():
                    time.sleep(0.01)  # a refused connection returns at once: do not spin

    def stop(self) -> Report:
        """Stop sending now and return the report once every thread has finished its request."""
        self._stop.set()
        return self.join()

    def join(self, timeout: float | None = None) -> Report:
        """Wait for the load to end by its bounds (at most duration + client timeout) and return the report."""
        limit = timeout if timeout is not None else self.duration + self.timeout + 5.0
        end = time.monotonic() + limit
        for worker in self._workers:
            worker.join(max(0.0, end - time.monotonic()))
        self.report.ended_at = time.time()
        return self.report

    @property
    def sent(self) -> int:
        with self._lock:
            return len(self.report.results)

    def wait_sent(self, n: int, timeout: float = 30.0) -> None:
        """Block until at least n requests have completed (or timeout)."""
        deadline = time.monotonic() + timeout
        while self.sent < n and time.monotonic() < deadline and any(w.is_alive() for w in self._workers):
            time.sleep(0.02)
