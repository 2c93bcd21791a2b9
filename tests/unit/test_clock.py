"""Ages for `prune --older-than` and POST /api/v1/prune: parsed, bounded, refused with a clear message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from controller.clock import parse_age


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90)),
     ("36500d", timedelta(days=36_500))],
)  # fmt: skip
def test_an_age_is_a_number_and_a_unit(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "d", "0d", "-3d", "3w", "1.5h", "3 d", "30"])
def test_a_malformed_age_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="positive number followed by d, h or m"):
        parse_age(text)


@pytest.mark.parametrize("text", ["36501d", "1000000d", "99999999999999999999m", "876601h"])
def test_an_age_beyond_a_hundred_years_is_refused_rather_than_overflowing(text: str) -> None:
    with pytest.raises(ValueError, match="at most 36500 days"):
        parse_age(text)
    assert datetime(2026, 12, 6, tzinfo=UTC) - parse_age("36500d") < datetime(2026, 12, 6, tzinfo=UTC)
