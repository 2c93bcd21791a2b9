"""Sticky split: realised shares, monotone ramp, stable hashes, a per-rollout secret salt."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import mlpipes
import pytest
from scipy.stats import binom
from sqlalchemy import text

from router.split import BUCKETS, arm_for_hash, assign_arm, bucket_of, routing_key_hash
from storage import Database, Store
from storage.entities import RoutingEntry

FRAME, _ = mlpipes.churn_frame(1, seed=1)
BODY = {"dataframe_split": json.loads(FRAME.to_json(orient="split", index=False))}

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


# -- the salted split (a per-rollout secret) ----------------------------------------------------------

SALT = "00112233445566778899aabbccddeeff"


def test_pinned_hashes_catch_an_accidental_reshuffle_on_upgrade() -> None:
    # Unsalted: the hash of rollouts started before salts existed, unchanged since the first release
    # (a rollout in progress during an upgrade keeps every key on its arm).
    assert routing_key_hash("customer-1", 1) == 6339967162795786369
    assert routing_key_hash("customer-2", 1) == 8243863202226014824
    assert routing_key_hash("customer-1", 2) == 6150307711848657069
    assert routing_key_hash("user-42", 7) == 5938214617310169403
    # Salted: BLAKE2b keyed by the rollout's salt.
    assert routing_key_hash("customer-1", 1, SALT) == 3923069963957961720
    assert routing_key_hash("customer-2", 1, SALT) == 3918663901594140937
    assert routing_key_hash("customer-1", 2, SALT) == 5910050243351001796
    assert routing_key_hash("user-42", 7, SALT) == 97346277553361947


@pytest.mark.parametrize("weight", [1.0, 5.0, 50.0])
def test_salted_shares_are_within_half_a_point_of_the_weight(weight: float) -> None:
    share = sum(assign_arm(k, 7, weight, SALT) == "challenger" for k in KEYS) / len(KEYS) * 100
    assert abs(share - weight) <= 0.5


def test_salted_ramp_is_monotone_through_arm_for_hash() -> None:
    hashes = [routing_key_hash(k, 3, SALT) for k in KEYS[:20_000]]
    previous: set[int] = set()
    for weight in [0.0, 0.5, 1, 5, 10, 25, 50, 75, 99.99, 100]:
        on_challenger = {i for i, h in enumerate(hashes) if arm_for_hash(h, weight) == "challenger"}
        assert previous <= on_challenger  # a key on the challenger stays there as the weight grows
        assert abs(len(on_challenger) / len(hashes) * 100 - weight) <= 1.0
        previous = on_challenger
    assert len(previous) == len(hashes)


def _rollout(store: Store, tmp_path: Path, weight: float) -> tuple[Any, RoutingEntry]:
    champion = mlpipes.register(store, tmp_path, version="1")
    challenger = mlpipes.register(store, tmp_path, version="2", seed=7)
    deployment = mlpipes.deploy(store, "churn", champion)
    rollout = mlpipes.start_rollout(store, deployment, challenger, mode="canary", canary_weight=weight)
    return rollout, store.routing.load_table()["churn"]


def test_keys_chosen_with_the_public_hash_land_on_the_challenger_only_at_the_weights_rate(
    sqlite_store: Store, tmp_path: Path
) -> None:
    # An attacker who knows the routing hash and the rollout id (sequential) picks 2,000 keys that
    # the unkeyed hash sends to the challenger at 5 % (what 200 keys did to a healthy canary in 5 s).
    _, entry = _rollout(sqlite_store, tmp_path, 5.0)
    guessed: list[str] = []
    for i in range(200_000):
        key = f"attacker-{i}"
        if arm_for_hash(routing_key_hash(key, entry.rollout_id), 5.0) == "challenger":
            guessed.append(key)
        if len(guessed) == 2000:
            break
    assert len(guessed) == 2000
    assert entry.split_salt is not None and re.fullmatch(r"[0-9a-f]{32}", entry.split_salt)
    landed = sum(
        arm_for_hash(routing_key_hash(k, entry.rollout_id, entry.split_salt), 5.0) == "challenger"
        for k in guessed
    )
    # Binomial(2000, 0.05): mean 100, sd 9.7; 5 sd either way. Unsalted, all 2,000 would land.
    low, high = binom.ppf([3e-7, 1 - 3e-7], 2000, 0.05)
    assert low <= landed <= high, landed


def test_every_rollout_gets_its_own_salt_kept_in_storage(sqlite_store: Store, tmp_path: Path) -> None:
    rollout, entry = _rollout(sqlite_store, tmp_path, 10.0)
    sqlite_store.rollouts.update(rollout.id, expected_version=rollout.version, phase="rolled_back")
    deployment = sqlite_store.deployments.get("churn")
    challenger = sqlite_store.pipelines.get_by_ref("churn:2")
    mlpipes.start_rollout(sqlite_store, deployment, challenger, mode="canary", canary_weight=10)
    second = sqlite_store.routing.load_table()["churn"]
    assert second.rollout_id != entry.rollout_id
    assert second.split_salt is not None and second.split_salt != entry.split_salt
    # another process (a fresh connection) reads the same salt
    reopened = Store(Database(sqlite_store.db.url))
    try:
        assert reopened.routing.load_table()["churn"].split_salt == second.split_salt
    finally:
        reopened.db.dispose()


def _arm(client: Any, key: str) -> str:
    response = client.post("/v1/models/churn/invocations", json=BODY, headers={"X-Routing-Key": key})
    assert response.status_code == 200, response.get_json()
    return str(response.headers["X-Mlcanary-Arm"])


def _wait_weight(app: Any, weight: float) -> None:
    plane = app.extensions["mlcanary.dataplane"]
    deadline = time.monotonic() + 10
    while plane.route("churn").entry.canary_weight != weight:
        assert time.monotonic() < deadline, "the router did not see the new weight"
        time.sleep(0.02)


def test_a_router_answers_each_key_with_the_stored_salts_arm_sticky_across_weights_and_restarts(
    sqlite_store: Store, tmp_path: Path, make_app: Any
) -> None:
    rollout, entry = _rollout(sqlite_store, tmp_path, 20.0)
    keys = [f"user-{i}" for i in range(80)]
    expected = {k: assign_arm(k, entry.rollout_id, 20.0, entry.split_salt) for k in keys}
    assert set(expected.values()) == {"champion", "challenger"}
    app = make_app()
    assert {k: _arm(app.test_client(), k) for k in keys} == expected
    app.extensions["mlcanary.dataplane"].close(timeout=5)
    restarted = make_app()  # a new process reads the same salt: every key keeps its arm
    assert {k: _arm(restarted.test_client(), k) for k in keys} == expected
    sqlite_store.rollouts.update(rollout.id, expected_version=rollout.version, canary_weight=60.0)
    _wait_weight(restarted, 60.0)
    grown = {k: _arm(restarted.test_client(), k) for k in keys}
    assert all(grown[k] == "challenger" for k in keys if expected[k] == "challenger")
    assert grown == {k: assign_arm(k, entry.rollout_id, 60.0, entry.split_salt) for k in keys}


def test_a_rollout_stored_before_salts_existed_keeps_the_unkeyed_hash(
    sqlite_store: Store, tmp_path: Path, make_app: Any
) -> None:
    rollout, _ = _rollout(sqlite_store, tmp_path, 50.0)
    with sqlite_store.db.engine.begin() as connection:  # as migration 0008 leaves an older rollout
        connection.execute(text("UPDATE rollouts SET split_salt = NULL WHERE id = :id"), {"id": rollout.id})
    assert sqlite_store.routing.load_table()["churn"].split_salt is None
    keys = [f"user-{i}" for i in range(40)]
    client = make_app().test_client()
    assert {k: _arm(client, k) for k in keys} == {k: assign_arm(k, rollout.id, 50.0) for k in keys}
