"""`rollout status` in words that match the state (issue 19): the operator's reason, each gate's role."""

from __future__ import annotations

from typing import Any

import pytest

from controller.cli.rollout import status_lines
from storage import Store
from storage.entities import Column, Deployment, NewPipelineVersion


@pytest.fixture
def churn(store: Store) -> Deployment:
    def version(v: str) -> int:
        return store.pipelines.add(
            NewPipelineVersion(
                name="churn", version=v, kind="http", task="classification", input_schema=(Column("age", "float"),),
                upstream_url="http://127.0.0.1:9/", upstream_protocol="v2",
            )
        ).id  # fmt: skip

    deployment = store.deployments.create("churn", version("1"))
    version("2")
    return deployment


def test_a_paused_rollout_shows_the_operators_reason_not_the_code(
    runner: Any, store: Store, churn: Deployment
) -> None:
    store.rollouts.create(deployment_id=churn.id, challenger_id=2, mode="shadow", policy={}, created_by="t",
                          phase="shadowing", shadow_rate=1.0)  # fmt: skip
    paused = runner("rollout", "pause", "churn", "--reason", "waiting for the Monday labels")
    assert paused.exit_code == 0, paused.output
    shown = runner("rollout", "status", "churn").output
    assert "paused: waiting for the Monday labels" in shown
    assert "manual_pause" not in shown


def test_status_shows_each_gates_role_and_no_red_fail_for_an_informational_gate() -> None:
    document: dict[str, Any] = {
        "name": "churn", "champion": "churn:2", "challenger": None, "weights": {},
        "rollout": {"id": 1, "phase": "promoted", "active": False, "mode": "shadow", "step_index": 0,
                    "champion": "churn:1", "challenger": "churn:2", "ended_at": "2026-12-01T00:00:00",
                    "reason": "promoted", "reason_message": "every required gate is non-inferior"},
        "live": None,
        "last_analysis": {"evaluated_at": "2026-12-01T00:00:00", "step": 0, "outcome": "pass", "verdicts": [
            {"gate": "accuracy", "role": "required", "outcome": "pass", "reason": "non-inferior"},
            {"gate": "drift", "role": "informational", "outcome": "fail", "reason": "PSI 0.31 > 0.2"},
        ]},
    }  # fmt: skip
    lines = list(status_lines(document))
    accuracy = next(line for line in lines if line.split()[:1] == ["accuracy"])
    drift = next(line for line in lines if line.split()[:1] == ["drift"])
    assert accuracy.split()[1:3] == ["required", "pass"]
    assert drift.split()[1:3] == ["informational", "noted"]
    assert "ended: every required gate is non-inferior" in lines[1]
