"""Routing: table changes reach the router within a second (an unchanged table is not read again);
canary answers are sticky per routing key."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import mlpipes
from sqlalchemy import event

from router.routes import RouteTable
from router.settings import RouterSettings
from storage import Store
from storage.entities import BatchingConfig, NewEvent

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


def test_an_unchanged_table_is_not_read_again_and_every_change_is(
    store: Store, tmp_path: Path, settings: RouterSettings
) -> None:
    champion = mlpipes.register(store, tmp_path, version="1")
    challenger = mlpipes.register(store, tmp_path, version="2", seed=7)
    deployment = mlpipes.deploy(store, "churn", champion)
    now = [0.0]
    table = RouteTable(store, settings, clock=lambda: now[0])
    statements: list[str] = []

    def executed(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def look() -> bool:
        """One refresh a refresh interval later; return whether it read the versions (the whole table)."""
        statements.clear()
        now[0] += settings.refresh_interval
        table.refresh()
        return any("pipeline_versions" in s for s in statements)

    event.listen(store.db.engine, "before_cursor_execute", executed)
    try:
        assert look() and set(table.routes) == {"churn"}  # the first look reads it all
        for _ in range(20):
            assert not look()  # nothing changed: only the stamp
            assert len([s for s in statements if "deployments" in s]) == 1  # one query per look
        assert table.reads == 1
        rollout = mlpipes.start_rollout(store, deployment, challenger, mode="canary", canary_weight=10)
        assert look() and table.routes["churn"].challenger is not None
        assert not look()
        rollout = store.rollouts.update(rollout.id, expected_version=rollout.version, canary_weight=30.0)
        assert look() and table.routes["churn"].entry.canary_weight == 30.0
        store.deployments.update("churn", batching=BatchingConfig(max_batch_delay_ms=2.5))
        assert look() and table.routes["churn"].entry.batching.max_batch_delay_ms == 2.5
        store.rollouts.update(
            rollout.id, expected_version=rollout.version, promote_challenger=True, phase="succeeded"
        )
        assert look()
        assert table.routes["churn"].champion.version.id == challenger.id
        assert table.routes["churn"].challenger is None
        store.deployments.archive(
            "churn", event=NewEvent(actor="tests", action="archive", reason="test", message="archived")
        )
        assert look() and table.routes == {}
        assert not look()
        reads = table.reads
        now[0] += settings.table_reload_interval  # the backstop: read whole now and then, changed or not
        assert look() and table.reads == reads + 1
    finally:
        event.remove(store.db.engine, "before_cursor_execute", executed)
        table.close()
