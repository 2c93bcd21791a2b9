"""A router restarted in the middle of a canary rollout gives every routing key the same arm as before.

Real `mlcanary router` processes on one SQLite file: the first serves 300 routing keys under a 30%
canary, is stopped with SIGTERM, a new one starts and serves the same keys. Assignment is a pure
function of (routing key, rollout, weight) and the weight lives in storage, so nothing may move.
A second deployment keeps raw inputs out of storage (privacy), across the restart too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlpipes
import pytest
from loadgen import Load, Report
from servers import Server, body

from storage import Database, Store

pytestmark = pytest.mark.slow

KEYS = 300


def _serve_keys(server: Server, prefix: str, path: str = "/v1/models/churn/invocations") -> Report:
    return (
        Load(
            server.base_url,
            path=path,
            body=lambda n: body(1, n),
            threads=4,
            count=KEYS,
            duration=60,
            prefix=prefix,
            routing_keys=lambda n: f"customer-{n}",
        )
        .start()
        .join()
    )


def test_sticky_assignments_and_weights_survive_a_router_restart_mid_rollout(
    sqlite_url: str, tmp_path: Path, launch: Callable[..., Server]
) -> None:
    store = Store(Database(sqlite_url))
    champion = mlpipes.register(store, tmp_path, version="1")
    challenger = mlpipes.register(store, tmp_path, version="2", seed=4)
    deployment = mlpipes.deploy(store, "churn", champion)
    mlpipes.deploy(store, "private", champion, store_raw_inputs=False)
    rollout = mlpipes.start_rollout(
        store, deployment, challenger, mode="canary", canary_weight=30, shadow_rate=0.5
    )

    first = launch("router", sqlite_url)
    first.wait_ready()
    before = _serve_keys(first, "before")
    private_before = _serve_keys(first, "private-a", "/v1/models/private/invocations")
    assert first.terminate() == 0, first.output()
    second = launch("router", sqlite_url)
    second.wait_ready()
    after = _serve_keys(second, "after")
    private_after = _serve_keys(second, "private-b", "/v1/models/private/invocations")
    assert second.terminate() == 0, second.output()

    assert before.failed == [] and after.failed == []
    arms_before = {r.routing_key: r.arm for r in before.results}
    arms_after = {r.routing_key: r.arm for r in after.results}
    assert len(arms_before) == KEYS
    assert arms_after == arms_before, "every routing key keeps its arm"
    share = sum(arm == "challenger" for arm in arms_before.values()) / KEYS
    assert 0.2 < share < 0.4, f"about 30% answered by the challenger, got {share:.0%}"
    unchanged = store.rollouts.get(rollout.id)
    assert (unchanged.phase, unchanged.canary_weight, unchanged.shadow_rate, unchanged.version) == (
        rollout.phase,
        rollout.canary_weight,
        rollout.shadow_rate,
        rollout.version,
    )
    served = {p.request_id: p.served_arm for p in store.pairs.list(rollout_id=rollout.id, limit=10_000)}
    assert {r.request_id: r.arm for r in before.results + after.results} == served, (
        "storage agrees with clients"
    )

    private = store.deployments.get("private")
    private_pairs = [p for p in store.pairs.list(limit=100_000) if p.deployment_id == private.id]
    assert len(private_pairs) == len(private_before.answered) + len(private_after.answered) == 2 * KEYS
    assert all(p.raw_input is None for p in private_pairs), "raw inputs excluded for this deployment"
    assert all(p.raw_input is not None for p in store.pairs.list(rollout_id=rollout.id, limit=10))
    store.db.dispose()
