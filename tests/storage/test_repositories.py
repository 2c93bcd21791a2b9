"""The repository suite; every test runs on SQLite and on PostgreSQL (schema built by the migrations)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from dbtools import truncate_postgres
from sqlalchemy import event

from storage import AlreadyExists, ConcurrentUpdate, Database, InvalidState, NotFound, Store
from storage.entities import Column, NewEvent, NewPipelineVersion, PairRecord


def _version(name: str = "churn", version: str = "1", **extra: object) -> NewPipelineVersion:
    fields: dict[str, object] = {
        "name": name,
        "version": version,
        "kind": "artifact",
        "task": "classification",
        "input_schema": (Column("age", "float"), Column("plan", "str")),
        "classes": (0, 1),
        "artifact_path": "/tmp/x.skops",
        "artifact_format": "skops",
        "sha256": "ab" * 32,
        "offline_metrics": {"accuracy": 0.91, "holdout_size": 1000},
        "metadata": {"owner": "ml-team"},
    }
    fields.update(extra)
    return NewPipelineVersion(**fields)  # type: ignore[arg-type]


def _pair(request_id: str, deployment_id: int, rollout_id: int | None = None, **extra: object) -> PairRecord:
    fields: dict[str, object] = {
        "request_id": request_id,
        "row_index": 0,
        "deployment_id": deployment_id,
        "rollout_id": rollout_id,
        "step": 0,
        "received_at": datetime(2026, 11, 29, 10, 0, tzinfo=UTC),
        "routing_key_hash": 1234,
        "served_arm": "champion",
        "champion_version_id": 1,
        "challenger_version_id": 2,
        "champion_output": {"class": 1, "proba": [0.2, 0.8]},
        "challenger_output": {"class": 0, "proba": [0.6, float("nan")]},
        "champion_class": "1",
        "champion_score": 0.8,
        "challenger_class": "0",
        "challenger_score": 0.4,
        "champion_latency_ms": 1.5,
        "challenger_latency_ms": 2.5,
        "raw_input": {"age": 31.0, "plan": "pro"},
    }
    fields.update(extra)
    return PairRecord(**fields)  # type: ignore[arg-type]


def _deployment(store: Store) -> tuple[int, int, int]:
    champion = store.pipelines.add(_version(version="1"))
    challenger = store.pipelines.add(_version(version="2"))
    deployment = store.deployments.create("churn", champion.id)
    return deployment.id, champion.id, challenger.id


def test_registered_version_round_trips_as_an_entity(store: Store) -> None:
    stored = store.pipelines.add(_version())
    loaded = store.pipelines.get_by_ref("churn:1")
    assert loaded == stored
    assert loaded.input_schema == (Column("age", "float"), Column("plan", "str"))
    assert loaded.offline_metrics["accuracy"] == 0.91
    assert loaded.created_at.tzinfo is not None
    assert [v.ref for v in store.pipelines.list()] == ["churn:1"]


def test_duplicate_name_and_version_is_refused_and_writes_nothing(store: Store) -> None:
    store.pipelines.add(_version())
    with pytest.raises(AlreadyExists, match="churn:1"):
        store.pipelines.add(_version(task="regression"))
    assert len(store.pipelines.list()) == 1


def test_unknown_version_is_not_found_and_a_lookup_error(store: Store) -> None:
    with pytest.raises(NotFound):
        store.pipelines.get_by_ref("churn:9")
    with pytest.raises(LookupError):
        store.pipelines.get(42)


def test_one_active_rollout_per_deployment(store: Store) -> None:
    deployment_id, _, challenger_id = _deployment(store)
    store.rollouts.create(
        deployment_id=deployment_id, challenger_id=challenger_id, mode="shadow", policy={}, created_by="t"
    )
    with pytest.raises(InvalidState, match="already has active rollout"):
        store.rollouts.create(
            deployment_id=deployment_id, challenger_id=challenger_id, mode="shadow", policy={}, created_by="t"
        )


def test_rollout_update_checks_the_version_and_writes_events_atomically(store: Store) -> None:
    deployment_id, _, challenger_id = _deployment(store)
    rollout = store.rollouts.create(
        deployment_id=deployment_id,
        challenger_id=challenger_id,
        mode="canary",
        policy={"a": 1},
        created_by="t",
    )
    event = NewEvent(actor="controller", action="advance", reason="gates_passed", message="step 1")
    moved = store.rollouts.update(
        rollout.id, expected_version=1, events=[event], phase="progressing", canary_weight=5.0
    )
    assert (moved.version, moved.phase, moved.canary_weight) == (2, "progressing", 5.0)
    with pytest.raises(ConcurrentUpdate):
        store.rollouts.update(rollout.id, expected_version=1, events=[event], phase="rolled_back")
    assert store.rollouts.get(rollout.id).phase == "progressing"
    assert [e.reason for e in store.events.list(rollout_id=rollout.id)] == ["gates_passed"]


def test_promotion_makes_the_challenger_champion_in_the_same_transaction(store: Store) -> None:
    deployment_id, _, challenger_id = _deployment(store)
    rollout = store.rollouts.create(
        deployment_id=deployment_id, challenger_id=challenger_id, mode="canary", policy={}, created_by="t",
        phase="progressing", canary_weight=50.0,
    )  # fmt: skip
    store.rollouts.update(rollout.id, expected_version=1, promote_challenger=True, phase="promoted")
    assert store.deployments.get("churn").champion_id == challenger_id
    table = store.routing.load_table()
    assert table["churn"].champion.id == challenger_id and table["churn"].challenger is None


def test_routing_table_names_champion_challenger_and_weights(store: Store) -> None:
    deployment_id, champion_id, challenger_id = _deployment(store)
    assert store.routing.load_table()["churn"].challenger is None
    store.rollouts.create(
        deployment_id=deployment_id, challenger_id=challenger_id, mode="canary", policy={}, created_by="t",
        phase="progressing", canary_weight=25.0, shadow_rate=1.0,
    )  # fmt: skip
    entry = store.routing.load_table()["churn"]
    assert (entry.champion.id, entry.challenger and entry.challenger.id) == (champion_id, challenger_id)
    assert (entry.mode, entry.canary_weight, entry.shadow_rate, entry.step) == ("canary", 25.0, 1.0, 0)


def test_bulk_insert_stores_every_column_and_skips_replayed_rows(store: Store) -> None:
    deployment_id, _, _ = _deployment(store)
    first = [_pair(f"r{i}", deployment_id) for i in range(1200)]
    assert store.pairs.insert_many(first) == 1200
    replay = [_pair(f"r{i}", deployment_id) for i in range(1150, 1250)]
    assert store.pairs.insert_many(replay) == 50
    assert store.pairs.count(deployment_id=deployment_id) == 1250
    stored = store.pairs.list(limit=1)[0]
    assert stored.request_id == "r0" and stored.champion_score == 0.8 and stored.challenger_latency_ms == 2.5
    assert stored.challenger_output == {"class": 0, "proba": [0.6, None]}  # NaN stored as null
    assert stored.raw_input == {"age": 31.0, "plan": "pro"}
    assert stored.received_at == datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def test_labels_join_known_requests_and_report_unknown_ones(store: Store) -> None:
    deployment_id, _, _ = _deployment(store)
    store.pairs.insert_many([_pair("a", deployment_id), _pair("b", deployment_id)])
    stored, unknown = store.labels.upsert_many(deployment_id, [("a", 0, 1), ("zzz", 0, 0)])
    assert (stored, unknown) == (2, ["zzz"])  # kept: its pair may still be on its way
    stored, _ = store.labels.upsert_many(deployment_id, [("a", 0, 0)])  # idempotent: last label wins
    assert stored == 1 and store.labels.count() == 2
    label = store.labels.get("a")
    assert (label.label, label.label_class, label.label_value) == (0, "0", 0.0)


def test_a_label_that_arrives_before_its_pair_joins_it_when_the_pair_lands(store: Store) -> None:
    deployment_id, _, _ = _deployment(store)
    other = store.deployments.create("other", store.pipelines.get_by_ref("churn:1").id)
    store.pairs.insert_many([_pair("theirs", other.id)])
    stored, unknown = store.labels.upsert_many(deployment_id, [("early", 0, 1), ("theirs", 0, 1)])
    # request ids are per deployment: "theirs" is unknown here and waits for this deployment's own pair
    assert (stored, unknown) == (2, ["early", "theirs"])
    store.pairs.insert_many([_pair("early", deployment_id)])
    assert store.labels.get("early").label == 1 and store.labels.count(deployment_id=deployment_id) == 2
    assert store.labels.count(deployment_id=other.id) == 0


def test_a_bulk_label_upload_takes_a_few_statements_whatever_its_size(store: Store) -> None:
    # 3,000 labels (half new, half updates, 200 pending) must not cost a statement per label: the
    # PostgreSQL report bench's 100,000-label fill ran past 10 minutes with a SELECT per label.
    deployment_id, _, _ = _deployment(store)
    store.pairs.insert_many([_pair(f"r{i}", deployment_id) for i in range(2_800)])
    store.labels.upsert_many(deployment_id, [(f"r{i}", 0, 0) for i in range(1_500)])
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(store.db.engine, "before_cursor_execute", count)
    try:
        labels = [(f"r{i}", 0, 1) for i in range(2_800)] + [(f"early{i}", 0, 1) for i in range(200)]
        stored, unknown = store.labels.upsert_many(deployment_id, labels)
    finally:
        event.remove(store.db.engine, "before_cursor_execute", count)
    assert (stored, len(unknown)) == (3_000, 200)
    assert len(statements) <= 20, statements[:30]
    assert store.labels.count(deployment_id=deployment_id) == 3_000
    assert store.labels.get("r7", deployment_id=deployment_id).label == 1  # updated
    assert store.labels.get("r2000", deployment_id=deployment_id).label == 1  # inserted


def test_labels_of_one_batch_merge_in_order_and_an_outcome_keeps_the_label(store: Store) -> None:
    deployment_id, _, _ = _deployment(store)
    store.pairs.insert_many([_pair("a", deployment_id), _pair("b", deployment_id)])
    store.labels.store(
        deployment_id, [("a", 0, 1), ("a", 0, None, 2.5), ("a", 0, 0), ("b", 0, None, 1.0, 4.0)]
    )
    a, b = store.labels.get("a"), store.labels.get("b")
    assert (a.label, a.label_class, a.outcome, a.outcome_base) == (0, "0", 2.5, None)
    assert (b.label, b.label_class, b.outcome, b.outcome_base) == (None, None, 1.0, 4.0)
    store.labels.store(deployment_id, [("a", 0, None, 3.0), ("b", 0, 1)])  # each keeps what is not given
    a, b = store.labels.get("a"), store.labels.get("b")
    assert (a.label, a.outcome) == (0, 3.0) and (b.label, b.label_value, b.outcome, b.outcome_base) == (
        1,
        1.0,
        1.0,
        4.0,
    )


def test_pending_labels_beyond_the_limit_are_dropped_and_counted_once_per_row(store: Store) -> None:
    deployment_id, _, _ = _deployment(store)
    store.pairs.insert_many([_pair("a", deployment_id)])
    result = store.labels.store(
        deployment_id, [("x", 0, 1), ("y", 0, 1), ("x", 0, 0), ("z", 0, 1), ("a", 0, 1)], pending_limit=2
    )
    assert (result.stored, result.dropped) == (3, ("z",))
    assert store.labels.get("x", deployment_id=deployment_id).label == 0


def test_the_latest_event_of_some_actions_or_a_reason(store: Store) -> None:
    deployment_id, _, challenger_id = _deployment(store)
    rollout = store.rollouts.create(
        deployment_id=deployment_id, challenger_id=challenger_id, mode="shadow", policy={}, created_by="t"
    )
    for action, reason in [
        ("rollout.pause", "a"),
        ("rollout.resume", "b"),
        ("rollout.pause", "c"),
        ("note", "a"),
    ]:
        store.events.add(
            NewEvent(actor="op", action=action, reason=reason, message=reason, rollout_id=rollout.id)
        )
    assert store.events.latest(rollout_id=rollout.id, actions=["rollout.pause"]).reason == "c"  # type: ignore[union-attr]
    assert store.events.latest(rollout_id=rollout.id, reason="a").action == "note"  # type: ignore[union-attr]
    assert store.events.latest(rollout_id=rollout.id).action == "note"  # type: ignore[union-attr]
    assert store.events.latest(rollout_id=rollout.id, actions=["rollout.abort"]) is None
    assert store.events.latest(rollout_id=rollout.id + 1) is None


def test_tokens_are_stored_hashed_and_revocable(store: Store) -> None:
    token, entity = store.tokens.create("alice", "operator")
    assert store.tokens.verify(token) == entity
    assert store.tokens.verify(token + "x") is None
    store.tokens.revoke("alice")
    assert store.tokens.verify(token) is None
    with pytest.raises(ValueError, match="unknown role"):
        store.tokens.create("bob", "admin")


def test_events_and_analyses_are_listed_in_order(store: Store) -> None:
    deployment_id, _, challenger_id = _deployment(store)
    rollout = store.rollouts.create(
        deployment_id=deployment_id, challenger_id=challenger_id, mode="shadow", policy={}, created_by="t"
    )
    for i in range(3):
        store.events.add(
            NewEvent(actor="op", action="note", reason=f"r{i}", message="m", rollout_id=rollout.id)
        )
        store.analyses.add(
            rollout_id=rollout.id, step=0, outcome="inconclusive", verdicts=[{"i": i}], metrics={}
        )
    assert [e.reason for e in store.events.list(rollout_id=rollout.id)] == ["r0", "r1", "r2"]
    assert [a.verdicts[0]["i"] for a in store.analyses.list(rollout.id)] == [0, 1, 2]
    assert store.analyses.latest(rollout.id).verdicts == [{"i": 2}]  # type: ignore[union-attr]


def test_retention_prunes_old_rows_in_batches(store: Store) -> None:
    deployment_id, _, _ = _deployment(store)
    old = datetime(2026, 1, 1, tzinfo=UTC)
    store.pairs.insert_many(
        [_pair(f"old{i}", deployment_id, received_at=old) for i in range(25)] + [_pair("new", deployment_id)]
    )
    store.labels.upsert_many(deployment_id, [(f"old{i}", 0, 1) for i in range(25)] + [("new", 0, 0)], now=old)
    store.labels.upsert_many(deployment_id, [("new", 0, 1)])
    assert store.pairs.prune(before=old + timedelta(days=1), batch_size=10) == 25
    assert store.pairs.count() == 1
    assert store.labels.prune(before=old + timedelta(days=1), batch_size=10) == 25
    assert store.labels.count() == 1 and store.labels.get("new").label == 1


@pytest.mark.postgres
def test_two_concurrent_writers_with_the_same_version_cannot_both_win(postgres_url: str) -> None:
    truncate_postgres(postgres_url)
    store = Store(Database(postgres_url, pool_size=8))
    deployment_id, _, challenger_id = _deployment(store)
    rollout = store.rollouts.create(
        deployment_id=deployment_id, challenger_id=challenger_id, mode="canary", policy={}, created_by="t"
    )
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def write(i: int) -> None:
        barrier.wait()
        try:
            store.rollouts.update(rollout.id, expected_version=1, phase="progressing", canary_weight=float(i))
            outcomes.append("won")
        except ConcurrentUpdate:
            outcomes.append("lost")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    assert store.rollouts.get(rollout.id).version == 2
