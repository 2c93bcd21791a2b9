"""The clock: one way to learn the time, injected where the control plane needs it.

A ``Clock`` is a function returning an aware UTC datetime. The composition roots (``create_app``, the
CLI, ``mlcanary controller``) take one, ``system_clock`` by default, and pass it down by keyword
(``clock=``); code that acts at one instant receives that instant as ``now`` (the decision core never
reads a clock). Tests inject a fixed or stepping clock the same way.

The router's monotonic clocks (timeouts, retry intervals) are a different thing: durations, not dates.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]

__all__ = ["Clock", "system_clock"]


def system_clock() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)
