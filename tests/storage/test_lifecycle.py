"""Archive, restore and delete deployments and pipeline versions (issue 19 item 7), on both databases.

Refused while an active rollout uses the thing; the event log keeps the history of what is deleted.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from storage import InUse, InvalidState, NotFound, Store
from storage.entities import Column, NewEvent, NewPipelineVersion, PairRecord


def _version(version: str, **extra: object) -> NewPipelineVersion:
    return NewPipelineVersion(
        name="churn", version=version, kind="artifact", task="classification",
        input_schema=(Column("age", "float"),), classes=(0, 1), artifact_path=f"/tmp/churn-{version}.skops",
        artifact_format="skops", sha256="ab" * 32, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def _event(action: str) -> NewEvent:
    return NewEvent(actor="olivia", action=action, reason="tidy", message=action)


def _pair(request_id: str, deployment_id: int, rollout_id: int | None) -> PairRecord:
    return PairRecord(
        request_id=request_id, row_index=0, deployment_id=deployment_id, rollout_id=rollout_id, step=0,
        received_at=datetime(2026, 12, 6, 1, 0, tzinfo=UTC), routing_key_hash=7, served_arm="champion",
        champion_version_id=1, challenger_version_id=2, champion_output={"class": 1}, challenger_output=None,
        champion_class="1", champion_score=0.8, challenger_class=None, challenger_score=None,
        champion_latency_ms=1.0, challenger_latency_ms=None, raw_input=None,
    )  # fmt: skip


@pytest.fixture
def world(store: Store) -> tuple[Store, int, int, int]:
    """churn:1 champion of "churn", churn:2 registered; returns (store, deployment, v1, v2) ids."""
    v1 = store.pipelines.add(_version("1"))
    v2 = store.pipelines.add(_version("2"))
    deployment = store.deployments.create("churn", v1.id, event=_event("deployment.create"))
    return store, deployment.id, v1.id, v2.id


def _rollout(store: Store, deployment_id: int, challenger_id: int, phase: str = "shadowing") -> int:
    return store.rollouts.create(
        deployment_id=deployment_id, challenger_id=challenger_id, mode="shadow", policy={}, created_by="t",
        phase=phase, shadow_rate=1.0, event=_event("rollout.start"),
    ).id  # fmt: skip


def test_an_archived_deployment_is_not_routed_takes_no_rollout_and_comes_back_on_restore(
    world: tuple[Store, int, int, int],
) -> None:
    store, _, _, v2 = world
    archived = store.deployments.archive("churn", event=_event("deployment.archive"))
    assert archived.archived_at is not None
    assert "churn" not in store.routing.load_table()
    assert store.deployments.list() == [] and [d.name for d in store.deployments.list(archived=True)] == [
        "churn"
    ]
    assert store.deployments.get("churn").archived_at == archived.archived_at  # still readable
    with pytest.raises(InvalidState, match="archived"):
        _rollout(store, archived.id, v2)
    again = store.deployments.archive("churn", event=_event("deployment.archive"))  # no second event
    assert again.archived_at == archived.archived_at
    store.deployments.restore("churn", event=_event("deployment.restore"))
    assert "churn" in store.routing.load_table()
    actions = [e.action for e in store.events.list(deployment_id=archived.id)]
    assert actions == ["deployment.create", "deployment.archive", "deployment.restore"]


@pytest.mark.parametrize("phase", ["pending", "shadowing", "progressing", "paused", "watching"])
def test_nothing_in_an_active_rollout_can_be_archived_or_deleted(
    world: tuple[Store, int, int, int], phase: str
) -> None:
    store, deployment_id, v1, v2 = world
    rollout_id = _rollout(store, deployment_id, v2, phase=phase)
    events_before = len(store.events.list())
    for attempt in (
        lambda: store.deployments.archive("churn", event=_event("deployment.archive")),
        lambda: store.deployments.delete("churn", event=_event("deployment.delete")),
        lambda: store.pipelines.archive(v2, event=_event("pipeline.archive")),
        lambda: store.pipelines.delete(v2, event=_event("pipeline.delete")),
    ):
        with pytest.raises(InUse, match=f"active rollout {rollout_id}"):
            attempt()
    with pytest.raises(InUse, match="champion of deployment 'churn'"):
        store.pipelines.archive(v1, event=_event("pipeline.archive"))
    assert store.deployments.get("churn").archived_at is None
    assert store.pipelines.get(v2).archived_at is None
    assert len(store.events.list()) == events_before  # nothing written


def test_an_archived_version_is_hidden_and_can_be_no_champion_or_challenger(
    world: tuple[Store, int, int, int],
) -> None:
    store, deployment_id, _, v2 = world
    store.pipelines.archive(v2, event=_event("pipeline.archive"))
    assert [v.version for v in store.pipelines.list()] == ["1"]
    assert [v.version for v in store.pipelines.list(archived=True)] == ["1", "2"]
    with pytest.raises(InvalidState, match="churn:2 is archived"):
        store.deployments.create("churn-eu", v2)
    with pytest.raises(InvalidState, match="churn:2 is archived"):
        _rollout(store, deployment_id, v2)
    store.pipelines.restore(v2, event=_event("pipeline.restore"))
    assert _rollout(store, deployment_id, v2) > 0
    archived = [e for e in store.events.list() if e.action.startswith("pipeline.")]
    assert [(e.action, e.details["pipeline_version_id"]) for e in archived] == [
        ("pipeline.archive", v2),
        ("pipeline.restore", v2),
    ]


def test_a_version_with_a_history_is_not_deleted_but_an_unused_one_is(
    world: tuple[Store, int, int, int],
) -> None:
    store, deployment_id, v1, v2 = world
    with pytest.raises(InUse, match="champion of deployment 'churn'"):
        store.pipelines.delete(v1, event=_event("pipeline.delete"))
    rollout_id = _rollout(store, deployment_id, v2)
    store.rollouts.update(rollout_id, expected_version=1, phase="rolled_back")
    with pytest.raises(InUse, match=f"rollout {rollout_id}, whose history needs it; archive it instead"):
        store.pipelines.delete(v2, event=_event("pipeline.delete"))
    unused = store.pipelines.add(_version("3"))
    deleted = store.pipelines.delete(unused.id, event=_event("pipeline.delete"))
    assert deleted.ref == "churn:3"
    with pytest.raises(NotFound):
        store.pipelines.get(unused.id)
    assert not store.pipelines.artifact_shared("/tmp/churn-3.skops")
    assert store.pipelines.artifact_shared("/tmp/churn-2.skops")
    (event,) = [e for e in store.events.list() if e.action == "pipeline.delete"]
    assert event.details == {"pipeline_version_id": unused.id, "ref": "churn:3"}


def test_deleting_a_deployment_removes_its_data_and_keeps_its_events(
    world: tuple[Store, int, int, int],
) -> None:
    store, deployment_id, v1, v2 = world
    other = store.deployments.create("other", v1)
    rollout_id = _rollout(store, deployment_id, v2)
    store.analyses.add(rollout_id=rollout_id, step=0, outcome="continue", verdicts=[], metrics={})
    store.pairs.insert_many([_pair(f"r{i}", deployment_id, rollout_id) for i in range(5)])
    store.pairs.insert_many([_pair("kept", other.id, None)])
    store.labels.upsert_many(deployment_id, [("r0", 0, 1), ("r1", 0, 0), ("early", 0, 1)])
    store.labels.upsert_many(other.id, [("kept", 0, 1)])
    store.rollouts.update(rollout_id, expected_version=1, phase="aborted")
    history = [(e.id, e.action, e.message) for e in store.events.list(deployment_id=deployment_id)]
    assert [a for _, a, _ in history] == ["deployment.create", "rollout.start"]

    counts = store.deployments.delete("churn", event=_event("deployment.delete"))

    assert counts == {"analyses": 1, "paired_outputs": 5, "labels": 3, "rollouts": 1}
    with pytest.raises(NotFound):
        store.deployments.get("churn")
    assert (store.pairs.count(), store.labels.count()) == (1, 1)  # the other deployment's are untouched
    assert store.rollouts.list() == []
    kept = {e.id: e for e in store.events.list()}
    for event_id, action, message in history:  # every event of its history is still in the log
        assert (kept[event_id].action, kept[event_id].message) == (action, message)
        assert kept[event_id].deployment_id is None and kept[event_id].details["deployment"] == "churn"
    assert kept[history[1][0]].details["rollout_id"] == rollout_id
    (deleted,) = [e for e in kept.values() if e.action == "deployment.delete"]
    assert deleted.details["deployment_id"] == deployment_id
    assert deleted.details["deleted"] == counts
    # the name is free again, and the versions it used can now be deleted or archived
    assert store.deployments.create("churn", v1).id != deployment_id
    store.pipelines.archive(v2, event=_event("pipeline.archive"))
