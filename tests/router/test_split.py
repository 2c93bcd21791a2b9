"""Sticky split: realised shares, monotone ramp, stable hashes."""

from __future__ import annotations

import pytest

from router.split import BUCKETS, assign_arm, bucket_of, routing_key_hash

KEYS = [f"customer-{i}" for i in range(100_000)]


@pytest.mark.parametrize("weight", [1.0, 5.0, 25.0, 50.0, 90.0])
def test_realised_challenger_share_is_within_half_a_point_of_the_weight(weight: float) -> None:
    share = sum(assign_arm(k, 7, weight) == "challenger" for k in KEYS) / len(KEYS) * 100
    assert abs(share - weight) <= 0.5


def test_ramp_is_monotone_a_key_on_the_challenger_stays_there_at_larger_weights() -> None:
    buckets = [bucket_of(routing_key_hash(k, 3)) for k in KEYS]
    weights = [0.5, 1, 5, 10, 25, 50, 75, 100]
    previous: set[int] = set()
    for weight in weights:
        on_challenger = {i for i, b in enumerate(buckets) if b < weight * 100}
        assert previous <= on_challenger
        previous = on_challenger
    assert len(previous) == len(KEYS)


def test_zero_weight_sends_nobody_and_full_weight_everybody() -> None:
    assert all(assign_arm(k, 1, 0.0) == "champion" for k in KEYS[:2000])
    assert all(assign_arm(k, 1, 100.0) == "challenger" for k in KEYS[:2000])


def test_hash_is_stable_fits_a_signed_bigint_and_depends_on_the_rollout() -> None:
    value = routing_key_hash("customer-1", 1)
    assert value == routing_key_hash("customer-1", 1)
    assert 0 <= value < 2**63
    assert value != routing_key_hash("customer-1", 2)
    assert 0 <= bucket_of(value) < BUCKETS
