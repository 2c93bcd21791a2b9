"""Each worker of a real `mlcanary router` pins itself to one CPU when there is a worker per core.

A real router (gunicorn master and workers) on SQLite; the workers' CPU sets are read from the
kernel. "auto" pins when there are at least as many workers as CPUs the server may use (every
worker on its own CPU, all CPUs used), "on" always, "off" never; a worker that dies is replaced by
one that takes the CPU it left. The expectations follow the CPUs this machine gives the tests.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from servers import Server, wait_for

from storage import Database
from storage import schema as db_schema

pytestmark = pytest.mark.slow

CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
needs_two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="pinning needs at least two CPUs to choose from")


def _router(tmp_path: Path, **settings: object) -> Server:
    url = f"sqlite:///{tmp_path / 'mlcanary.db'}"
    db_schema.upgrade(Database(url))
    server = Server("router", url, tmp_path / "var", **settings)
    server.wait_ready(timeout=60)
    return server


def _cpus(server: Server, expected: int) -> dict[int, list[int]]:
    wait_for(lambda: len(server.workers()) == expected, timeout=30, message=f"{expected} workers")
    return {pid: sorted(os.sched_getaffinity(pid)) for pid in server.workers()}


@needs_two_cpus
def test_with_a_worker_per_cpu_each_worker_runs_on_its_own_cpu(tmp_path: Path) -> None:
    server = _router(tmp_path, workers=len(CPUS))  # cpu_affinity: the default, auto
    try:
        cpus = _cpus(server, len(CPUS))
        assert sorted(c for pinned in cpus.values() for c in pinned) == CPUS, cpus
        assert os.sched_getaffinity(server.pid) == set(CPUS)  # the master is left alone
        # a worker that dies is replaced by one on the CPU it left
        victim, (left,) = next(iter(cpus.items()))
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: victim not in server.workers() and len(server.workers()) == len(CPUS),
            timeout=60,
            message="the replacement worker",
        )
        server.wait_ready(timeout=60)
        after = _cpus(server, len(CPUS))
        (replacement,) = set(after) - set(cpus)
        assert after[replacement] == [left], after
    finally:
        server.terminate()


@needs_two_cpus
def test_fewer_workers_than_cpus_are_not_pinned_unless_asked(tmp_path: Path) -> None:
    server = _router(tmp_path / "auto", workers=1)
    try:
        assert list(_cpus(server, 1).values()) == [CPUS]
    finally:
        server.terminate()
    server = _router(tmp_path / "on", workers=1, cpu_affinity="on")
    try:
        (pinned,) = _cpus(server, 1).values()
        assert len(pinned) == 1 and pinned[0] in CPUS
    finally:
        server.terminate()


@needs_two_cpus
def test_off_never_pins(tmp_path: Path) -> None:
    server = _router(tmp_path, workers=len(CPUS), cpu_affinity="off")
    try:
        assert all(pinned == CPUS for pinned in _cpus(server, len(CPUS)).values())
    finally:
        server.terminate()
