"""The clock: one way to learn the time, injected where the control plane needs it.

A ``Clock`` is a function returning an aware UTC datetime. The composition roots (``create_app``, the
CLI, ``mlcanary controller``) take one, ``system_clock`` by default, and pass it down by keyword
(``clock=``); code that acts at one instant receives that instant as ``now`` (the decision core never
reads a clock). Tests inject a fixed or stepping clock the same way.

The router's monotonic clocks (timeouts, retry intervals) are a different thing: durations, not dates.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]

__all__ = ["Clock", "parse_age", "system_clock"]


def system_clock() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


MAX_AGE = timedelta(days=36_500)


def parse_age(text: str) -> timedelta:
    """Parse an age such as 30d, 12h or 90m (`prune --older-than`, POST /api/v1/prune); ValueError if not."""
    units = {"d": "days", "h": "hours", "m": "minutes"}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) <= 0:
        raise ValueError(f"{text!r}: write a positive number followed by d, h or m (e.g. 30d)")
    # a bound keeps `now - age` a date (an age of a million days overflowed into a 500)
    if len(number) > 9 or timedelta(**{units[unit]: int(number)}) > MAX_AGE:
        raise ValueError(f"{text!r}: at most {MAX_AGE.days} days (100 years)")
    return timedelta(**{units[unit]: int(number)})
