"""The controller's pause between passes: the rest of its interval, but never looking more than its busy share.

A pass's time is its own: its wall time less what its thread waited runnable for a CPU. The last two
tests make that wait real: the test's thread is pinned to one CPU beside a busy-looping process
pinned to the same CPU, so every CPU second takes about two of wall time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller.config import ConfigError, Settings
from controller.loop import control
from controller.loop.control import pause_after, runnable_wait


def test_a_quick_pass_waits_the_rest_of_the_interval() -> None:
    assert pause_after(0.1, interval=0.5, busy_share=0.25) == pytest.approx(0.4)
    assert pause_after(0.0, interval=5.0, busy_share=0.25) == pytest.approx(5.0)


def test_a_long_pass_waits_long_enough_to_keep_within_the_busy_share() -> None:
    # a 2 s look with a 0.5 s interval: wait 6 s, so looking takes 2 s of every 8 (a quarter)
    pause = pause_after(2.0, interval=0.5, busy_share=0.25)
    assert pause == pytest.approx(6.0)
    assert 2.0 / (2.0 + pause) == pytest.approx(0.25)


def test_a_busy_share_of_one_is_the_plain_interval() -> None:
    assert pause_after(2.0, interval=0.5, busy_share=1.0) == 0.0
    assert pause_after(0.2, interval=0.5, busy_share=1.0) == pytest.approx(0.3)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_a_busy_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ConfigError, match="controller_busy_share"):
        Settings(controller_busy_share=share).validate()


@pytest.mark.parametrize("nice", [-1, 20])
def test_a_controller_niceness_outside_0_to_19_is_refused(nice: int) -> None:
    with pytest.raises(ConfigError, match="controller_nice"):
        Settings(controller_nice=nice).validate()


def _burn(cpu_seconds: float) -> None:
    """Spend cpu_seconds of this thread's CPU time."""
    start = time.thread_time()
    while time.thread_time() - start < cpu_seconds:
        pass


@pytest.fixture
def shared_cpu() -> Iterator[None]:
    """Pin this thread to one CPU, beside a process that busy-loops on the same CPU; undone after."""
    if not os.path.exists("/proc/thread-self/schedstat"):
        pytest.skip("no /proc/thread-self/schedstat (Linux with schedstats): nothing to measure with")
    before = os.sched_getaffinity(0)
    cpu = min(before)
    hog = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"]
    )
    try:
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.2)  # the hog runs
        yield
    finally:
        os.sched_setaffinity(0, before)
        hog.kill()
        hog.wait()


def test_runnable_wait_is_what_a_thread_sharing_its_cpu_waits(shared_cpu: None) -> None:
    wall, queued, cpu = time.monotonic(), runnable_wait(), time.thread_time()
    _burn(0.3)
    wall, queued, cpu = time.monotonic() - wall, runnable_wait() - queued, time.thread_time() - cpu
    assert wall > 1.5 * cpu  # the hog took its share: the setting works
    assert queued > 0.5 * (wall - cpu)  # most of the rest was spent runnable, waiting for the CPU
    assert wall - queued < 1.5 * cpu + 0.05


def test_a_pass_slowed_by_a_busy_cpu_pauses_for_its_own_time_not_its_wall_time(
    shared_cpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A look needing 0.1 s of CPU, behind a busy CPU: the pause is three times 0.1 s (busy share 1/4)."""
    stop, passes, pauses = threading.Event(), [], []

    def look(store: Any, *, now: Any, leading: Any = None) -> list[Any]:
        started = time.monotonic()
        _burn(0.1)
        passes.append(time.monotonic() - started)
        return []

    class Watched(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            pauses.append(timeout)
            if len(pauses) == 3:
                stop.set()
            return stop.is_set()

        def is_set(self) -> bool:
            return stop.is_set()

    monkeypatch.setattr(control, "evaluate_once", look)
    settings = Settings(controller_interval=0.01, controller_busy_share=0.25)
    assert control.run(None, settings, stop=Watched()) == 3  # type: ignore[arg-type]
    for wall, pause in zip(passes, pauses, strict=True):
        assert wall > 0.15  # the look waited for the CPU
        assert pause == pytest.approx(0.3, abs=0.15), (passes, pauses)  # 3 x 0.1 s of its own
        assert pause < 3 * wall * 0.8  # not 3 x its wall time
