"""Shutdown under load: SIGTERM loses no record; SIGKILL of a worker loses at most its flush window.

Real `mlcanary router` processes (gunicorn, 2 workers) on loopback, 4 client threads, a shadow
rollout so that every answer also waits for shadow scoring before it is recorded.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import mlpipes
import pytest
from loadgen import Load
from servers import Server, body

from storage import Database, Store

pytestmark = pytest.mark.slow

FLUSH_WINDOW_S = 0.2  # RouterSettings.recorder_flush_interval, the default `mlcanary router` runs with


def _world(store: Store, tmp_path: Path, *, shadow: bool = True) -> None:
    champion = mlpipes.register(store, tmp_path, version="1")
    deployment = mlpipes.deploy(store, "churn", champion)
    if shadow:
        challenger = mlpipes.register(store, tmp_path, version="2", seed=4)
        mlpipes.start_rollout(store, deployment, challenger, mode="shadow", shadow_rate=1.0)


def test_sigterm_under_load_stores_every_answered_request_exactly_once(
    database_url: str, tmp_path: Path, launch: Callable[..., Server]
) -> None:
    store = Store(Database(database_url))
    _world(store, tmp_path)
    server = launch("router", database_url)
    server.wait_ready()
    load = Load(
        server.base_url, body=lambda n: body(2, n), threads=4, count=20_000, duration=30, prefix="term"
    ).start()
    load.wait_sent(300)
    assert server.terminate() == 0, server.output()  # under load: requests in flight are drained
    report = load.stop()
    answered = report.answered
    assert len(answered) >= 300
    assert len(set(answered)) == len(answered)
    stored = store.pairs.existing_request_ids(answered)
    assert stored == set(answered), f"{len(set(answered) - stored)} answered requests lost"
    assert store.pairs.count() == 2 * len(answered), "one pair per answered row, no duplicates"
    shadowed = [p for p in store.pairs.list(limit=100_000) if p.challenger_latency_ms is not None]
    assert shadowed, "the shadow arm ran"
    print(
        f"SIGTERM under load: {len(answered)} answered, {store.pairs.count()} rows stored, "
        f"{len(report.failed)} refused after the stop began"
    )
    store.db.dispose()


@pytest.mark.postgres
def test_sigkill_of_a_worker_loses_at_most_what_it_answered_in_its_last_flush_window(
    postgres_url: str, tmp_path: Path, launch: Callable[..., Server]
) -> None:
    from dbtools import truncate_postgres

    truncate_postgres(postgres_url)
    store = Store(Database(postgres_url))
    _world(store, tmp_path, shadow=False)  # the recorder's window alone (shadow work would add its latency)
    server = launch("router", postgres_url)
    server.wait_ready()
    load = Load(
        server.base_url, body=lambda n: body(1, n), threads=4, count=20_000, duration=30, prefix="kill"
    ).start()
    load.wait_sent(400)
    victim = server.workers()[0]
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    load.wait_sent(load.sent + 300)  # gunicorn replaces the worker; the other one keeps answering
    assert server.terminate() == 0, server.output()
    report = load.stop()
    answered = {r.request_id: r for r in report.results if r.status == 200}
    lost = set(answered) - store.pairs.existing_request_ids(answered)
    window = [r for r in answered.values() if killed_at - FLUSH_WINDOW_S - 1.0 <= r.answered_at <= killed_at]
    late = sorted(killed_at - answered[i].answered_at for i in lost)
    print(
        f"SIGKILL of a worker: {len(answered)} answered, {len(lost)} lost; lost answers were "
        f"{late[0] if late else 0:.3f}..{late[-1] if late else 0:.3f} s before the kill; "
        f"{len(window)} answered in the last {FLUSH_WINDOW_S + 1.0:.1f} s; failed: {report.statuses()}"
    )
    assert all(r.answered_at <= killed_at + 0.05 for r in (answered[i] for i in lost)), (
        "nothing answered after the kill is lost"
    )
    # Only records still in the dead worker's memory are lost: those of its last flush window (plus the
    # write in progress). A generous second covers scheduling on a loaded machine.
    assert all(delay <= FLUSH_WINDOW_S + 1.0 for delay in late), late
    assert store.pairs.count() == len(answered) - len(lost), "no duplicates"
    store.db.dispose()


def test_a_worker_that_exits_leaves_the_others_and_its_replacement_serving(
    database_url: str, tmp_path: Path, launch: Callable[..., Server]
) -> None:
    """A worker leaving by itself (gunicorn exits it with sys.exit) must not tear down what the master owns.

    The exiting worker unwinds through the master's frames it was forked from: a clean-up there (the
    Prometheus multiprocess folder) ran in the worker and its replacement then failed to boot, which
    halts gunicorn. Found by CI when a SIGTERM reached the master while a replaced worker was booting.
    """
    store = Store(Database(database_url))
    _world(store, tmp_path, shadow=False)
    server = launch("router", database_url)
    server.wait_ready()
    first, second = server.workers()[:2]
    os.kill(first, signal.SIGTERM)  # graceful exit of one worker: gunicorn replaces it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"the master stopped: {server.output()}"
        current = server.workers()
        if first not in current and len(current) == 2:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"no replacement worker: {server.output()}")
    os.kill(second, signal.SIGTERM)  # the replacement's metrics must survive the other worker leaving too
    server.wait_ready()
    time.sleep(1.0)
    assert server.process.poll() is None, f"the master stopped: {server.output()}"
    assert len(server.workers()) == 2, server.output()
    assert (
        httpx.post(f"{server.base_url}/v1/models/churn/invocations", json=body(1, 0), timeout=10).status_code
        == 200
    )
    assert server.metric("mlcanary_requests_total") >= 1
    assert server.terminate() == 0, server.output()
    store.db.dispose()
