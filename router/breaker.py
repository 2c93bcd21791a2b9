"""Bulkheads and circuit breakers for a challenger called inline (canary mode), one per version.

In canary mode the challenger answers its share of requests itself; a challenger that hangs would
make each of those requests wait the whole upstream timeout on a serving thread, and enough of them
take every thread of the process, so every deployment starves. Two guards, per challenger version
and per router process, keep that to a bounded cost:

- the bulkhead: at most `limit` calls to a remote (HTTP upstream) challenger wait at once; a
  request beyond it is answered by the champion at once. In-process challengers have no bulkhead:
  their calls are CPU-bound under the GIL, a limit would only turn contention into fallbacks.
- the circuit breaker: after `failures` faults in a row (timeouts, unreachable, 5xx, unreadable
  answers; a refused input is the input's fault, not a fault of the model) it opens: for `open_s`
  seconds the challenger is not called and the champion answers its share at once. Then it is
  half-open: one request at a time probes the challenger; a success closes the breaker, a fault
  opens it again for another `open_s`.

Every request the guards send to the champion is recorded with the challenger's error
(CIRCUIT_OPEN or BUSY), so the fault counts against the challenger in the rollout's error gates.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.errors import BackendError, InputRejected

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

CIRCUIT_OPEN = "circuit_open: the challenger failed repeatedly; the champion answers until a probe succeeds"
BUSY = "challenger_busy: too many calls to the challenger in flight; the champion answered"
# A request answered by the champion because the breaker is open records CIRCUIT_OPEN followed by
# the last fault seen ("... (last fault: model_timeout: ...)"), BUSY alone when the bulkhead was full.


def is_fault(exception: Exception | None) -> bool:
    """Whether a call's outcome counts against the backend (a refused input does not)."""
    return isinstance(exception, BackendError) and not isinstance(exception, InputRejected)


class CircuitBreaker:
    """Closed → open after `failures` faults in a row → half-open after `open_s` → closed or open."""

    def __init__(self, failures: int = 3, open_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.failures = failures
        self.open_s = open_s
        self.clock = clock
        self.state = CLOSED
        self.opened = 0  # times the breaker opened (metrics, tests)
        self.last_fault: str | None = None
        self._faults = 0
        self._opened_at = 0.0
        self._probing = False
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Whether this call may go to the backend; in half-open state only one probe at a time."""
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == OPEN:
                if self.clock() - self._opened_at < self.open_s:
                    return False
                self.state = HALF_OPEN
            if self._probing:
                return False
            self._probing = True
            return True

    def record(self, fault: bool, message: str | None = None) -> None:
        """Report the outcome of an allowed call (message: what the fault was)."""
        with self._lock:
            if fault:
                self.last_fault = message
            if not fault:
                self._faults = 0
                self.state = CLOSED
                self._probing = False
                return
            self._faults += 1
            if self.state == HALF_OPEN or self._faults >= self.failures:
                if self.state != OPEN:
                    self.opened += 1
                self.state = OPEN
                self._opened_at = self.clock()
                self._probing = False


@dataclass
class Guard:
    """The bulkhead (None: unbounded) and the breaker of one challenger version in this process."""

    breaker: CircuitBreaker
    bulkhead: threading.BoundedSemaphore | None


class Guards:
    """One Guard per version id, created on first use; safe to share between serving threads."""

    def __init__(self, *, failures: int, open_s: float, limit: int) -> None:
        self.failures = failures
        self.open_s = open_s
        self.limit = limit
        self._guards: dict[int, Guard] = {}
        self._lock = threading.Lock()

    def get(self, version_id: int, *, remote: bool) -> Guard:
        guard = self._guards.get(version_id)
        if guard is None:
            with self._lock:
                guard = self._guards.get(version_id)
                if guard is None:
                    guard = Guard(
                        CircuitBreaker(self.failures, self.open_s),
                        threading.BoundedSemaphore(self.limit) if remote else None,
                    )
                    self._guards[version_id] = guard
        return guard

    def retain(self, version_ids: set[int]) -> None:
        """Forget the guards of versions no longer routed."""
        with self._lock:
            for version_id in set(self._guards) - version_ids:
                del self._guards[version_id]
