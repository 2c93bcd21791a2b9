"""The sticky split against pinned values: hashes, buckets at the weight boundary, sampling.

Pinned hashes guard against an upgrade that reshuffles keys of rollouts in progress (an unkeyed hash
of a rollout started before salts existed, and a salted one); the boundary keys check the rule
"bucket < weight x 100" by calling `arm_for_hash`/`assign_arm` rather than recomputing it. These are
the unit tests `make mutation` runs against mutants of router/split.py.
"""

from __future__ import annotations

import pytest

from router.split import BUCKETS, arm_for_hash, assign_arm, bucket_of, routing_key_hash, sampled

SALT = "00112233445566778899aabbccddeeff"


@pytest.mark.parametrize(
    ("key", "rollout", "salt", "expected"),
    [
        ("customer-1", 1, None, 6339967162795786369),
        ("customer-1", 2, None, 6150307711848657069),
        ("customer-1", 1, SALT, 3923069963957961720),
        ("", None, None, 6781929703236008385),
    ],
)
def test_routing_key_hashes_are_pinned_so_an_upgrade_never_moves_a_key(
    key: str, rollout: int | None, salt: str | None, expected: int
) -> None:
    assert routing_key_hash(key, rollout, salt) == expected


def test_buckets_are_the_hash_modulo_ten_thousand() -> None:
    assert BUCKETS == 10_000
    assert bucket_of(6339967162795786369) == 6369
    assert bucket_of(9_999) == 9_999
    assert bucket_of(10_000) == 0
    assert bucket_of(123_450_100) == 100


# Keys of rollout 5 (unsalted) whose buckets sit at the boundaries of the rule, found once and pinned.
BOUNDARY_KEYS = {"k3106": 0, "k22689": 99, "k4963": 100, "k1141": 4999, "k10715": 5000, "k22708": 9999}


def test_boundary_keys_have_the_pinned_buckets() -> None:
    assert {k: bucket_of(routing_key_hash(k, 5)) for k in BOUNDARY_KEYS} == BOUNDARY_KEYS


@pytest.mark.parametrize(
    ("weight", "challenger"),
    [
        (0.0, set()),
        (0.01, {"k3106"}),
        (0.99, {"k3106"}),
        (1.0, {"k3106", "k22689"}),
        (1.01, {"k3106", "k22689", "k4963"}),
        (50.0, {"k3106", "k22689", "k4963", "k1141"}),
        (50.01, {"k3106", "k22689", "k4963", "k1141", "k10715"}),
        (99.99, {"k3106", "k22689", "k4963", "k1141", "k10715"}),
        (100.0, set(BOUNDARY_KEYS)),
    ],
)
def test_a_key_is_on_the_challenger_exactly_when_its_bucket_is_below_weight_times_100(
    weight: float, challenger: set[str]
) -> None:
    by_hash = {k for k in BOUNDARY_KEYS if arm_for_hash(routing_key_hash(k, 5), weight) == "challenger"}
    by_key = {k for k in BOUNDARY_KEYS if assign_arm(k, 5, weight) == "challenger"}
    assert by_hash == by_key == challenger
    champion = {k for k in BOUNDARY_KEYS if assign_arm(k, 5, weight) == "champion"}
    assert champion == set(BOUNDARY_KEYS) - challenger


def test_the_salt_changes_the_arm_and_is_passed_through_assign_arm() -> None:
    keys = [f"user-{i}" for i in range(400)]
    plain = [assign_arm(k, 9, 50.0) for k in keys]
    salted = [assign_arm(k, 9, 50.0, SALT) for k in keys]
    expected = ["challenger" if bucket_of(routing_key_hash(k, 9, SALT)) < 5000 else "champion" for k in keys]
    assert salted == expected
    assert plain != salted


def test_the_ramp_calls_are_monotone_for_every_key() -> None:
    keys = [f"user-{i}" for i in range(2_000)]
    weights = [0.0, 0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0]
    shares = []
    previous: set[str] = set()
    for weight in weights:
        on = {k for k in keys if assign_arm(k, 11, weight) == "challenger"}
        assert previous <= on
        previous = on
        shares.append(len(on))
    assert shares[0] == 0 and shares[-1] == len(keys)


# request ids whose sampling value (BLAKE2b, person "shadow", mod 10,000) was computed once and pinned
# (req-0: 2616, req-1: 9384, req-2: 637, req-3: 6439, req-4: 2808)
SAMPLED_AT_HALF = {"req-0": True, "req-1": False, "req-2": True, "req-3": False, "req-4": True}


def test_sampling_is_stable_per_request_id_and_pinned() -> None:
    assert {r: sampled(r, 0.5) for r in SAMPLED_AT_HALF} == SAMPLED_AT_HALF
    # a request is in the sample exactly when its value is below rate x 10,000
    assert (sampled("req-0", 0.2616), sampled("req-0", 0.2617)) == (False, True)


def test_sampling_takes_everything_at_rate_one_and_nothing_at_zero() -> None:
    ids = [f"req-{i}" for i in range(500)]
    assert all(sampled(r, 1.0) for r in ids)
    assert all(sampled(r, 1.5) for r in ids)
    assert not any(sampled(r, 0.0) for r in ids)
    assert not any(sampled(r, -0.5) for r in ids)
    share = sum(sampled(r, 0.2) for r in ids) / len(ids)
    assert 0.13 < share < 0.27  # binomial(500, 0.2): 0.2 +- 4.5 standard deviations
