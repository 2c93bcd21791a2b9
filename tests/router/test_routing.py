"""Routing: table changes reach the router within a second; canary answers are sticky per routing key."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import mlpipes

from storage import Store

FRAME, _ = mlpipes.churn_frame(2, seed=1)
BODY = {"dataframe_split": json.loads(FRAME.to_json(orient="split", index=False))}


def _arm(client: Any, key: str) -> str:
    response = client.post("/v1/models/churn/invocations", json=BODY, headers={"X-Routing-Key": key})
    assert response.status_code == 200
    return str(response.headers["X-Mlcanary-Arm"])


def test_a_rollout_and_its_rollback_reach_the_router_within_a_second(
    sqlite_store: Store, churn: Any, tmp_path: Path, make_app: Any
) -> None:
    deployment, _ = churn
    challenger = mlpipes.register(sqlite_store, tmp_path, version="2", seed=7)
    app = make_app(refresh_interval=0.25)
    client = app.test_client()
    assert _arm(client, "k") == "champion"
    rollout = mlpipes.start_rollout(sqlite_store, deployment, challenger, mode="canary", canary_weight=100)
    started = time.monotonic()
    while _arm(client, "k") != "challenger" and time.monotonic() - started < 3:
        time.sleep(0.02)
    assert time.monotonic() - started < 1.0
    sqlite_store.rollouts.update(rollout.id, expected_version=rollout.version, phase="rolled_back")
    started = time.monotonic()
    while _arm(client, "k") != "champion" and time.monotonic() - started < 3:
        time.sleep(0.02)
    assert time.monotonic() - started < 1.0


def test_canary_answers_are_sticky_per_routing_key_and_split_by_weight(
    sqlite_store: Store, churn: Any, tmp_path: Path, make_app: Any
) -> None:
    deployment, _ = churn
    challenger = mlpipes.register(sqlite_store, tmp_path, version="2", seed=7)
    mlpipes.start_rollout(
        sqlite_store, deployment, challenger, mode="canary", canary_weight=50, shadow_rate=1
    )
    app = make_app()
    client = app.test_client()
    first = {f"user-{i}": _arm(client, f"user-{i}") for i in range(60)}
    again = {key: _arm(client, key) for key in first}
    assert first == again
    assert set(first.values()) == {"champion", "challenger"}
    app.extensions["mlcanary.dataplane"].close(timeout=5)
    pairs = sqlite_store.pairs.list(limit=1000)
    assert len(pairs) == 240
    assert all(
        p.champion_class is not None and p.challenger_class is not None for p in pairs
    )  # both arms, always


def test_readiness_waits_for_the_routing_table(sqlite_store: Store, churn: Any, make_app: Any) -> None:
    app = make_app()
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    app.extensions["mlcanary.dataplane"].close(timeout=5)
    assert client.get("/readyz").status_code == 503
