"""The routing table of one process: read from storage by a background thread, swapped atomically.

Requests never query the database: they read `RouteTable.routes`, a dict replaced as a whole (one
reference assignment) after every change. Backends are cached per pipeline version id (a version's
artifact never changes) and loaded by the refresh thread, never by a request. A version that fails
to load is a MissingBackend until load_retry_interval has passed, then tried again; the failure is
logged once per load_failure_log_interval (a minute), not at every retry. While a deployment's
champion artifact cannot load in this process (an untrusted type, a missing module, a pickle without
trust_pickle), the process is not ready (`unservable`, /readyz 503): its requests would fail here, and
another router configured right could serve them. An HTTP upstream that is down leaves the process
ready (every router sees the same server; see docs/pipelines.md), and so does a challenger that cannot
load: the champion answers its requests. Both are listed in `failures`.

Warm before routing: a newly loaded version is scored once, in this process, on its golden rows
(or, without a golden set, on one typical row built from its input profile or schema) before the
new routes are swapped in, so no request — answered or shadowed — pays its cold start (lazy
imports, first-call caches, an upstream's first connection), and no shadow call of a challenger is
timed over it. `warming` names the versions being loaded now (/readyz shows them).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router import parity
from router.backends import Backend, MissingBackend, create_backend
from router.errors import DeploymentNotFound, NotReady
from router.parity import DEFAULT_ATOL, DEFAULT_RTOL
from router.settings import RouterSettings
from storage import StorageError, Store
from storage.entities import NewEvent, PipelineVersion, RoutingEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """One deployment's routing entry with its loaded backends."""

    entry: RoutingEntry
    champion: Backend
    challenger: Backend | None


class RouteTable:
    """Keep this process's routes in step with storage (poll every refresh_interval seconds)."""

    def __init__(
        self,
        store: Store,
        settings: RouterSettings,
        *,
        backend_factory: Callable[[PipelineVersion, RouterSettings], Backend] = create_backend,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.settings = settings
        self.routes: dict[str, Route] = {}
        self.loaded = False
        self.last_error: str | None = None
        self._factory = backend_factory
        self._clock = clock
        self._backends: dict[int, Backend] = {}
        self._failed_at: dict[int, float] = {}
        self._logged: dict[int, tuple[float, str]] = {}  # version id -> (when, reason) last logged
        self._parity: dict[int, bool] = {}  # version id -> passed the parity gate when loaded
        self.warming: set[str] = set()  # refs of the versions being loaded and warmed now
        self.warmed: dict[str, float] = {}  # ref -> milliseconds its warm-up call took
        self._entries: dict[str, RoutingEntry] | None = None
        self._stamp: tuple[tuple[Any, ...], ...] | None = None  # the storage stamp of the last full read
        self._read_at = float("-inf")  # when the table was last read whole (clock)
        self.reads = 0  # full reads of the table
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, deployment: str) -> Route:
        """Return a deployment's route; NotReady before the first load, DeploymentNotFound if unknown."""
        route = self.routes.get(deployment)
        if route is None:
            if not self.loaded:
                raise NotReady("the routing table is not loaded yet")
            raise DeploymentNotFound(f"no deployment named {deployment!r}")
        return route

    def refresh(self) -> bool:
        """Read the table if it changed and swap in new routes if anything did; return whether it did.

        Every call reads the table's stamp (`RoutingRepository.stamp`: one small query, no JSON of
        the versions); the whole table is read only when the stamp differs from the last load's, a
        version that failed to load is due for a retry, or table_reload_interval has passed since the
        last full read (so that even a change written around the repositories is seen at last).
        """
        retry_due = any(
            self._clock() - at >= self.settings.load_retry_interval for at in self._failed_at.values()
        )
        try:
            stamp = self.store.routing.stamp()  # before the table: a change between the two reloads again
            if (
                stamp == self._stamp
                and not retry_due
                and self._clock() - self._read_at < self.settings.table_reload_interval
            ):
                self.last_error = None
                return False
            entries = self.store.routing.load_table()
        except StorageError as exc:
            if self.last_error is None:
                log.warning("cannot read the routing table, keeping the last one: %s", exc)
            self.last_error = str(exc)
            return False
        self.last_error = None
        self.reads += 1
        self._stamp, self._read_at = stamp, self._clock()
        if entries == self._entries and not retry_due:
            return False
        routes = {
            name: Route(
                entry,
                self._checked(entry, self._backend(entry.champion), champion=True),
                None if entry.challenger is None else self._checked(entry, self._backend(entry.challenger)),
            )
            for name, entry in entries.items()
        }
        wanted = {e.champion.id for e in entries.values()} | {
            e.challenger.id for e in entries.values() if e.challenger is not None
        }
        self.routes = routes  # the atomic swap: readers see the old dict or the new one
        self._entries = entries
        self.loaded = True
        for version_id in list(self._backends):
            if version_id not in wanted:
                gone = self._backends.pop(version_id)
                self.warmed.pop(gone.version.ref, None)
                gone.close()
                self._failed_at.pop(version_id, None)
                self._logged.pop(version_id, None)
                self._parity.pop(version_id, None)
        return True

    def _checked(self, entry: RoutingEntry, backend: Backend, *, champion: bool = False) -> Backend:
        """Run the parity gate once per loaded version; a challenger that fails it is never routed.

        On failure: logged and recorded as an event (reason "parity_failed"), and the challenger is
        replaced by a MissingBackend: the champion answers every request (canary falls back to it) and
        the challenger's arm records the reason as its error. A failing champion is reported the same
        way but still serves (nothing else can).
        """
        if isinstance(backend, MissingBackend):
            return backend
        version = backend.version
        passed = self._parity.get(version.id)
        if passed is None:
            passed = self._parity[version.id] = self._parity_passes(entry, backend, champion=champion)
        if passed or champion:
            return backend
        return MissingBackend(
            version, "it failed the parity gate (research outputs not reproduced); see the events"
        )

    def _parity_passes(self, entry: RoutingEntry, backend: Backend, *, champion: bool) -> bool:
        version = backend.version
        try:
            rtol, atol = self._tolerance(entry)
            report = parity.check(version, self.settings, backend=backend, rtol=rtol, atol=atol)
        except Exception:  # the check must never take routing down: fail closed for challengers
            log.exception("parity check of %s crashed", version.ref)
            return champion
        if report.environment_differs:
            log.warning(
                "%s: %s",
                version.ref,
                "; ".join(
                    f"{d.key} {d.research} (research) != {d.serving} (serving)"
                    for d in report.environment_differences
                ),
            )
        if report.passed:
            return True
        role = "champion" if champion else "challenger"
        log.error("%s %s: %s", role, version.ref, report.message())
        try:
            self.store.events.add(
                NewEvent(
                    actor=f"router:{socket.gethostname()}:{os.getpid()}",
                    action="router.parity_failed",
                    reason="parity_failed",
                    message=f"{role} {report.message()}"
                    + ("" if champion else "; the challenger is not routed, the champion answers"),
                    deployment_id=entry.deployment_id,
                    rollout_id=None if champion else entry.rollout_id,
                    details={"role": role, "parity": report.to_dict()},
                )
            )
        except StorageError as exc:
            log.warning("cannot record the parity failure of %s: %s", version.ref, exc)
        return False

    def _tolerance(self, entry: RoutingEntry) -> tuple[float, float]:
        """Return the parity tolerance the routing entry carries (its rollout policy's), else the default."""
        rtol = DEFAULT_RTOL if entry.parity_rtol is None else entry.parity_rtol
        atol = DEFAULT_ATOL if entry.parity_atol is None else entry.parity_atol
        return float(rtol), float(atol)

    def _backend(self, version: PipelineVersion) -> Backend:
        cached = self._backends.get(version.id)
        if cached is not None and not (
            isinstance(cached, MissingBackend)
            and self._clock() - self._failed_at.get(version.id, 0.0) >= self.settings.load_retry_interval
        ):
            return cached
        self.warming.add(version.ref)
        try:
            backend = self._factory(version, self.settings)
            if isinstance(backend, MissingBackend):
                self._failed_at[version.id] = now = self._clock()
                last = self._logged.get(version.id)
                interval = self.settings.load_failure_log_interval
                if last is None or last[1] != backend.reason or now - last[0] >= interval:
                    log.error(
                        "cannot load %s: %s (retried every %gs; logged again in %gs if it still fails)",
                        version.ref, backend.reason, self.settings.load_retry_interval, interval,
                    )  # fmt: skip
                    self._logged[version.id] = (now, backend.reason)
            else:
                if self._logged.pop(version.id, None) is not None:
                    log.info("loaded %s (it had failed to load)", version.ref)
                self._failed_at.pop(version.id, None)
                self.warmed[version.ref] = warm(backend, max_rows=self.settings.max_rows)
        finally:
            self.warming.discard(version.ref)
        self._backends[version.id] = backend
        return backend

    def failures(self) -> dict[str, str]:
        """Return version ref → why it could not be loaded, for the versions currently routed."""
        return {b.version.ref: b.reason for b in self._backends.values() if isinstance(b, MissingBackend)}

    def unservable(self) -> dict[str, str]:
        """Return deployment → why its champion's artifact cannot load in this process (its requests fail)."""
        return {
            name: route.champion.reason
            for name, route in self.routes.items()
            if isinstance(route.champion, MissingBackend) and route.champion.version.kind == "artifact"
        }

    def start(self) -> None:
        """Load the table once now (so a ready process is ready at once), then poll in a thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="mlcanary-routes", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.refresh_interval):
            try:
                self.refresh()
            except Exception:  # the refresh thread must outlive any surprise
                log.exception("routing table refresh failed")

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()


def warm(backend: Backend, *, max_rows: int) -> float:
    """Score a freshly loaded backend once through the serving path; return the call's milliseconds.

    The rows are the version's golden inputs, else one typical row: per column the most frequent
    category or the middle of the numeric range from the input profile, else a neutral value of
    the column's type. A failure is logged, never raised: the version is routed anyway and its
    errors, if real, show on real requests.
    """
    from router.inputs import build_batch

    version = backend.version
    started = time.perf_counter()
    try:
        batch = build_batch(warm_rows(version), version.input_schema, max_rows=max_rows)
        backend.predict(batch.frame)
    except Exception as exc:  # warming is best effort; the version's own errors show on real requests
        log.warning("warming %s failed: %s", version.ref, exc)
    took = (time.perf_counter() - started) * 1000.0
    log.info("warmed %s in %.1f ms", version.ref, took)
    return took


_NEUTRAL = {"float": 0.0, "int": 0, "bool": False, "str": "", "category": "", "datetime": "2000-01-01"}


def warm_rows(version: PipelineVersion) -> dict[str, list[Any]]:
    """Return the columns of the rows a version is warmed on (golden rows, else one typical row)."""
    golden = version.golden_set or {}
    inputs = golden.get("inputs") if isinstance(golden, dict) else None
    if isinstance(inputs, dict) and inputs.get("columns") and inputs.get("data"):
        names = [str(c) for c in inputs["columns"]]
        data = list(inputs["data"])[: max(1, min(len(inputs["data"]), 100))]
        return {name: [row[i] for row in data] for i, name in enumerate(names)}
    profile = (version.profile or {}).get("columns", {})
    columns: dict[str, list[Any]] = {}
    for column in version.input_schema:
        p = profile.get(column.name) or {}
        value: Any = _NEUTRAL.get(column.dtype, 0.0)
        if p.get("kind") == "categorical" and p.get("shares"):
            value = max(p["shares"].items(), key=lambda kv: kv[1])[0]
        elif p.get("kind") == "numeric" and p.get("min") is not None and p.get("max") is not None:
            value = (float(p["min"]) + float(p["max"])) / 2.0
            if column.dtype == "int":
                value = int(round(value))
        columns[column.name] = [value]
    return columns
