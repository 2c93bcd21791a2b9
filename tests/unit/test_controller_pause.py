"""The controller's pause between passes: the rest of its interval, but never looking more than its busy share."""

from __future__ import annotations

import pytest

from controller.config import ConfigError, Settings
from controller.loop.control import pause_after


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
