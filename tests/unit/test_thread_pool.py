"""The serving threads' pool of the router's gunicorn worker (controller.server.ThreadPool)."""

from __future__ import annotations

import threading
import time

import pytest

from controller.server import ThreadPool


def test_submit_returns_a_future_with_the_result_or_the_exception() -> None:
    pool = ThreadPool(2)
    assert pool.submit(lambda a, b: a + b, 2, 3).result(timeout=5) == 5
    failed = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failed.result(timeout=5)
    done: list[int] = []
    pool.submit(lambda: 7).add_done_callback(lambda f: done.append(f.result()))
    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert done == [7]
    pool.shutdown()


def test_more_work_than_threads_is_queued_and_all_of_it_runs_on_at_most_max_workers() -> None:
    pool = ThreadPool(3)
    gate = threading.Event()
    running: set[str] = set()
    lock = threading.Lock()

    def task(i: int) -> int:
        with lock:
            running.add(threading.current_thread().name)
        gate.wait(5)
        return i

    futures = [pool.submit(task, i) for i in range(10)]
    time.sleep(0.1)
    assert sum(f.running() for f in futures) == 3  # three threads busy, seven requests queued
    gate.set()
    assert [f.result(timeout=5) for f in futures] == list(range(10))
    assert len(running) == 3 and len(pool._threads) == 3
    pool.shutdown()


def test_an_idle_pool_wakes_the_thread_idle_last_and_starts_none() -> None:
    pool = ThreadPool(4)
    first = [pool.submit(time.sleep, 0.05) for _ in range(3)]  # three threads
    for f in first:
        f.result(timeout=5)
    time.sleep(0.05)
    names = [pool.submit(lambda: threading.current_thread().name).result(timeout=5) for _ in range(5)]
    assert len(set(names)) == 1  # one request at a time: always the same (warm) thread
    assert len(pool._threads) == 3
    pool.shutdown()


def test_shutdown_ends_idle_threads_finishes_running_work_and_refuses_new_work() -> None:
    pool = ThreadPool(2)
    gate = threading.Event()
    busy = pool.submit(gate.wait, 5)
    pool.submit(time.sleep, 0).result(timeout=5)  # the second thread is idle now
    time.sleep(0.05)
    pool.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(time.sleep, 0)
    gate.set()
    assert busy.result(timeout=5) is True
    for thread in pool._threads:
        thread.join(5)
        assert not thread.is_alive()


def test_shutdown_can_cancel_the_queued_work() -> None:
    pool = ThreadPool(1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 5)
    deadline = time.monotonic() + 5
    while not running.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    queued = pool.submit(time.sleep, 0)
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert running.result(timeout=5) is True
    assert queued.cancelled()
    pool._threads[0].join(5)
    assert not pool._threads[0].is_alive()
