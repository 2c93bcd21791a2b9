"""Archive, restore and delete through the CLI and the admin API (issue 19 item 7), on both databases."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import adminapp
import mlpipes
import pytest
from click.testing import Result
from flask import Flask
from flask.testing import FlaskClient

from storage import NotFound, Store
from storage.entities import Deployment, PipelineVersion

API = "/api/v1"


@pytest.fixture(scope="module")
def fitted() -> Any:
    return mlpipes.classifier()


@pytest.fixture
def app_data(
    store: Store, tmp_path: Path, fitted: Any
) -> tuple[PipelineVersion, PipelineVersion, Deployment]:
    """churn:1 serving deployment "churn"; churn:2 registered (another file); churn:3 the same file as 2."""
    v1 = mlpipes.register(store, tmp_path, model=fitted)
    v2 = mlpipes.register(store, tmp_path, version="2", seed=1)
    return v1, v2, mlpipes.deploy(store, "churn", v1)


def test_the_cli_archives_restores_and_deletes_and_says_what_it_refuses(
    runner: Callable[..., Result], store: Store, app_data: tuple[PipelineVersion, PipelineVersion, Deployment]
) -> None:
    v1, v2, churn = app_data
    mlpipes.start_rollout(store, churn, v2)
    refused = runner("deployments", "archive", "churn")
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines()[-1].startswith("Error: deployment 'churn' has active rollout")
    refused = runner("pipelines", "delete", "churn:2")
    assert refused.exit_code == 1 and "is in active rollout" in refused.output
    (rollout,) = store.rollouts.list(active_only=True)
    store.rollouts.update(rollout.id, expected_version=rollout.version, phase="rolled_back")

    done = runner("deployments", "archive", "churn", "--reason", "moving to churn-eu")
    assert done.exit_code == 0, done.output
    assert "archived deployment churn" in done.output
    assert runner("deployments", "list").output.strip() == "no deployments"
    assert "churn: champion churn:1 (archived" in runner("deployments", "list", "--all").output
    assert runner("rollout", "start", "churn", "--challenger", "churn:2").exit_code == 1
    assert runner("deployments", "restore", "churn").exit_code == 0
    assert runner("deployments", "list").output.strip() == "churn: champion churn:1"

    refused = runner("pipelines", "archive", "churn:1")
    assert refused.exit_code == 1 and "churn:1 is the champion of deployment 'churn'" in refused.output
    assert runner("pipelines", "archive", "churn:2", "--reason", "lost").exit_code == 0
    listed = runner("pipelines", "list").output
    assert "churn:1" in listed and "churn:2" not in listed
    assert (
        "churn:2" in runner("pipelines", "list", "--all").output
        and "(archived)" in runner("pipelines", "list", "--all").output
    )
    refused = runner("pipelines", "delete", "churn:2")
    assert refused.exit_code == 1 and "archive it instead" in refused.output

    unused = mlpipes.register(store, Path(v1.artifact_path or "").parent.parent, version="9", seed=2)
    assert unused.artifact_path and Path(unused.artifact_path).is_file()
    done = runner("pipelines", "delete", "churn:9", "--reason", "wrong file")
    assert done.exit_code == 0, done.output
    assert "deleted churn:9" in done.output and "artifact file removed" in done.output
    assert not Path(unused.artifact_path).exists()
    with pytest.raises(NotFound):
        store.pipelines.get_by_ref("churn:9")

    refused = runner("deployments", "delete", "churn")  # asks first; no answer: nothing deleted
    assert refused.exit_code == 1 and store.deployments.get("churn")
    done = runner("deployments", "delete", "churn", "--yes")
    assert done.exit_code == 0, done.output
    assert "deleted deployment churn (0 analyses, 0 paired outputs, 0 labels, 1 rollouts)" in done.output
    kept = store.events.list()
    assert {e.action for e in kept} >= {"deployment.archive", "deployment.restore", "pipeline.archive",
                                        "pipeline.delete", "deployment.delete"}  # fmt: skip
    (archived,) = [e for e in kept if e.action == "deployment.archive"]
    assert archived.reason == "moving to churn-eu" and archived.actor.startswith("cli:")
    assert archived.details["deployment"] == "churn"  # its deployment is gone; the name stays


def _answered_within(client: FlaskClient, status: int, seconds: float = 30.0) -> str:
    """Score one row until the router (refreshing every 0.05 s) answers ``status``; return the error code."""
    frame, _ = mlpipes.churn_frame(1)
    body = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    deadline = time.monotonic() + seconds
    while True:
        answer = client.post("/v1/models/churn/invocations", json=body)
        if answer.status_code == status or time.monotonic() > deadline:
            assert answer.status_code == status, answer.json
            return str((answer.json or {}).get("error", {}).get("code", ""))
        time.sleep(0.05)


def test_the_admin_api_archives_restores_and_deletes(
    app: Flask,
    client: FlaskClient,
    store: Store,
    app_data: tuple[PipelineVersion, PipelineVersion, Deployment],
) -> None:
    v1, v2, churn = app_data
    operator = adminapp.bearer(store, "operator", "olivia")
    viewer = adminapp.bearer(store, "viewer")
    rollout = mlpipes.start_rollout(store, churn, v2)

    answer = client.post(f"{API}/deployments/churn/archive", headers=operator)
    assert (answer.status_code, answer.json["error"]["code"]) == (409, "in_use")
    answer = client.delete(f"{API}/pipelines/churn/2", headers=operator)
    assert (answer.status_code, answer.json["error"]["code"]) == (409, "in_use")
    assert client.post(f"{API}/deployments/churn/archive", headers=viewer).status_code == 403
    assert client.post(f"{API}/deployments/churn/shelve", headers=operator).status_code == 404
    answer = client.post(f"{API}/deployments/churn/archive", json={"reason": 3}, headers=operator)
    assert answer.status_code == 400
    store.rollouts.update(rollout.id, expected_version=rollout.version, phase="aborted")

    answer = client.post(f"{API}/deployments/churn/archive", json={"reason": "quiet"}, headers=operator)
    assert answer.status_code == 200 and answer.json["archived_at"]
    assert client.get(f"{API}/deployments", headers=viewer).json["deployments"] == []
    listed = client.get(f"{API}/deployments?archived=true", headers=viewer).json["deployments"]
    assert [d["name"] for d in listed] == ["churn"]
    assert client.get(f"{API}/deployments?archived=maybe", headers=viewer).status_code == 400
    assert _answered_within(client, 404) == "deployment_not_found"  # routers stop serving it
    assert client.post(f"{API}/deployments/churn/restore", headers=operator).json["archived_at"] is None
    assert _answered_within(client, 200) == ""  # routed again

    answer = client.post(f"{API}/pipelines/churn/2/archive", headers=operator)
    assert answer.status_code == 200 and answer.json["archived_at"]
    names = [v["ref"] for v in client.get(f"{API}/pipelines", headers=viewer).json["pipelines"]]
    assert names == ["churn:1"]
    answer = client.post(
        f"{API}/deployments/churn/rollouts", json={"challenger": "churn:2"}, headers=operator
    )
    assert answer.status_code == 409 and "archived" in answer.json["error"]["message"]
    answer = client.delete(f"{API}/pipelines/churn/2", headers=operator)
    assert (answer.status_code, answer.json["error"]["code"]) == (409, "in_use")

    app.extensions["mlcanary.dataplane"].recorder.flush()  # the pairs of the scoring above, stored
    pairs = store.pairs.count(deployment_id=churn.id)
    assert pairs >= 1
    answer = client.delete(f"{API}/deployments/churn", json={"reason": "done"}, headers=operator)
    assert answer.status_code == 200
    assert answer.json == {"name": "churn", "deleted": {"analyses": 0, "paired_outputs": pairs, "labels": 0,
                                                        "rollouts": 1}}  # fmt: skip
    assert store.pairs.count() == 0
    assert client.get(f"{API}/deployments/churn", headers=viewer).status_code == 404
    answer = client.delete(f"{API}/pipelines/churn/2", headers=operator)  # its only rollout went too
    assert answer.status_code == 200 and answer.json["ref"] == "churn:2"
    (event,) = [e for e in store.events.list() if e.action == "deployment.delete"]
    assert (event.actor, event.reason) == ("olivia", "done")
