"""Operators' actions on real storage (SQLite and PostgreSQL): checked, applied once, audited."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.core.policy import PolicyError
from controller.loop import actions
from controller.loop.control import evaluate_once
from storage import ConcurrentUpdate, NotFound, Store
from storage.entities import Column, NewPipelineVersion

T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def _setup(store: Store, task: str = "classification") -> None:
    for v, t in (("1", "classification"), ("2", task)):
        store.pipelines.add(
            NewPipelineVersion(
                name="churn", version=v, kind="artifact", task=t, input_schema=(Column("age", "float"),)
            )
        )
    store.deployments.create("churn", store.pipelines.get_by_ref("churn:1").id)


def test_start_stores_the_complete_validated_policy_and_audits_it(store: Store) -> None:
    _setup(store)
    r = actions.start_rollout(
        store,
        "churn",
        "churn:2",
        actor="alice",
        mode="canary",
        policy={"canary": {"steps": [10, 50]}},
        reason="new features",
        now=T0,
    )
    assert (r.phase, r.mode, r.created_by) == ("pending", "canary", "alice")
    assert r.policy["canary"]["steps"] == [10.0, 50.0] and r.policy["shadow"]["min_pairs"] == 500
    [event] = store.events.list(rollout_id=r.id)
    assert (event.action, event.actor, event.reason, event.message) == (
        "rollout.create",
        "alice",
        "created",
        "new features",
    )
    evaluate_once(store, now=T0)
    started = store.rollouts.get(r.id)
    assert (started.phase, started.canary_weight, started.shadow_rate) == ("progressing", 10.0, 1.0)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda s: actions.start_rollout(s, "nope", "churn:2", actor="a"), NotFound, "no deployment"),
        (lambda s: actions.start_rollout(s, "churn", "churn:9", actor="a"), NotFound, "churn:9"),
        (
            lambda s: actions.start_rollout(s, "churn", "churn:1", actor="a"),
            actions.ActionError,
            "already the champion",
        ),
        (
            lambda s: actions.start_rollout(s, "churn", "churn:2", actor="a", policy={"x": 1}),
            PolicyError,
            "x: unknown",
        ),
        (
            lambda s: actions.start_rollout(s, "churn", "churn:2", actor="a", mode="sideways"),
            PolicyError,
            "mode",
        ),
        (lambda s: actions.act(s, "churn", "pause", actor="a"), actions.ActionError, "no active rollout"),
        (lambda s: actions.act(s, "nope", "rollback", actor="a"), NotFound, "no deployment"),
    ],
)
def test_operator_mistakes_are_refused_clearly(
    store: Store, call: Any, error: type[Exception], message: str
) -> None:
    _setup(store)
    with pytest.raises(error, match=message):
        call(store)
    assert store.rollouts.list() == []


def test_a_second_rollout_is_refused_while_one_is_active(store: Store) -> None:
    _setup(store)
    actions.start_rollout(store, "churn", "churn:2", actor="a")
    with pytest.raises(actions.ActionError, match="already has active rollout"):
        actions.start_rollout(store, "churn", "churn:2", actor="b")


def test_a_task_mismatch_is_refused(store: Store) -> None:
    _setup(store, task="regression")
    with pytest.raises(actions.ActionError, match="is a regression"):
        actions.start_rollout(store, "churn", "churn:2", actor="a")


def test_actions_need_an_actor_and_check_the_rollout_belongs_to_the_deployment(store: Store) -> None:
    _setup(store)
    r = actions.start_rollout(store, "churn", "churn:2", actor="a")
    with pytest.raises(actions.ActionError, match="actor"):
        actions.act(store, "churn", "abort", actor="")
    store.deployments.create("other", store.pipelines.get_by_ref("churn:1").id)
    with pytest.raises(actions.ActionError, match="does not belong"):
        actions.act(store, "other", "abort", actor="a", rollout_id=r.id)
    assert actions.act(store, "churn", "abort", actor="a", rollout_id=r.id).phase == "aborted"


def test_expected_version_guards_against_acting_on_a_rollout_that_moved_on(store: Store) -> None:
    _setup(store)
    r = actions.start_rollout(store, "churn", "churn:2", actor="a")
    evaluate_once(store, now=T0)  # the controller starts it: version 2
    with pytest.raises(ConcurrentUpdate):
        actions.act(store, "churn", "pause", actor="a", expected_version=r.version)
    assert actions.act(store, "churn", "pause", actor="a", expected_version=r.version + 1).phase == "paused"


def test_an_action_racing_the_controller_is_retried_on_fresh_state_and_rechecked(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    _setup(store)
    actions.start_rollout(store, "churn", "churn:2", actor="a")
    evaluate_once(store, now=T0)
    real_update = store.rollouts.update
    raced: list[bool] = []

    def update_after_a_rival(rollout_id: int, **kw: Any) -> Any:
        if not raced:  # the controller (or another operator) writes first
            raced.append(True)
            actions.act(store, "churn", "pause", actor="rival")
        return real_update(rollout_id, **kw)

    monkeypatch.setattr(store.rollouts, "update", update_after_a_rival)
    r = actions.act(store, "churn", "rollback", actor="alice")
    assert r.phase == "rolled_back"
    assert [(e.action, e.actor) for e in store.events.list(rollout_id=r.id)][-2:] == [
        ("rollout.pause", "rival"),
        ("rollout.rollback", "alice"),
    ]


def test_promotion_makes_the_challenger_champion(store: Store, tmp_path: Path) -> None:
    _setup(store)
    actions.start_rollout(store, "churn", "churn:2", actor="a", mode="shadow")
    evaluate_once(store, now=T0)
    r = actions.act(store, "churn", "promote", actor="a")  # shadow-only: the next step is promotion
    assert (r.phase, r.canary_weight, r.shadow_rate) == ("promoted", 100.0, 0.0)
    assert store.deployments.get("churn").champion_id == store.pipelines.get_by_ref("churn:2").id
    assert store.routing.load_table()["churn"].challenger is None
