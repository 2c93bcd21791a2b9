"""Which CPU a starting worker pins itself to (controller.server.choose_cpu), and the setting's check."""

from __future__ import annotations

import pytest

from controller.config import ConfigError, Settings
from controller.server import choose_cpu


def test_workers_starting_together_spread_over_distinct_cpus() -> None:
    # none pinned yet: each worker's rank among the unpinned picks a different CPU
    assert [choose_cpu([0, 1], [], rank) for rank in range(2)] == [0, 1]
    assert [choose_cpu([2, 5, 7], [], rank) for rank in range(3)] == [2, 5, 7]


def test_a_worker_takes_the_least_used_cpu() -> None:
    assert choose_cpu([0, 1], [0], 0) == 1
    assert choose_cpu([0, 1], [1], 0) == 0
    assert choose_cpu([0, 1, 2, 3], [0, 1, 3], 0) == 2
    # a replacement for a dead worker takes the CPU it left, whatever its rank
    assert choose_cpu([0, 1, 2], [0, 2], 5) == 1


def test_more_workers_than_cpus_share_them_evenly() -> None:
    taken: list[int] = []
    for _ in range(6):
        taken.append(choose_cpu([0, 1], taken, 0))
    assert sorted(taken) == [0, 0, 0, 1, 1, 1]


def test_cpus_outside_the_allowed_set_are_ignored() -> None:
    # a sibling pinned before the server's CPU set changed does not count against the allowed CPUs
    assert choose_cpu([2, 3], [0, 0, 2], 0) == 3


@pytest.mark.parametrize("value", ["auto", "on", "off"])
def test_the_setting_takes_auto_on_and_off(value: str) -> None:
    assert Settings.from_env({"MLCANARY_CPU_AFFINITY": value}).cpu_affinity == value


def test_the_setting_refuses_anything_else() -> None:
    with pytest.raises(ConfigError, match="cpu_affinity must be auto, on or off, got 'yes'"):
        Settings.from_env({"MLCANARY_CPU_AFFINITY": "yes"})
