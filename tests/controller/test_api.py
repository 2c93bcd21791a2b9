"""The admin API: pipelines, deployments, rollouts and their actions, events, labels, reports, errors as JSON."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import adminapp
import joblib
import mlpipes
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from controller import encoding
from controller.http import api, documents
from storage import Store
from storage.entities import Deployment, PairRecord, PipelineVersion

API = "/api/v1"


@dataclass
class World:
    app: Flask
    client: FlaskClient
    store: Store
    operator: dict[str, str]
    viewer: dict[str, str]
    v1: PipelineVersion
    v2: PipelineVersion
    churn: Deployment
    tmp_path: Path

    def get(self, url: str, **kw: Any) -> Any:
        return self.client.get(API + url, headers=kw.pop("headers", self.viewer), **kw)

    def post(self, url: str, body: Any = None, **kw: Any) -> Any:
        return self.client.post(API + url, json=body, headers=kw.pop("headers", self.operator), **kw)


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any]:
    """Two fitted churn classifiers, fitted once for the module."""
    return mlpipes.classifier(), mlpipes.classifier(seed=1)


@pytest.fixture
def app_data(
    store: Store, tmp_path: Path, models: tuple[Any, Any]
) -> tuple[PipelineVersion, PipelineVersion, Deployment]:
    """Versions churn:1 (champion of deployment "churn") and churn:2, stored before the app starts."""
    v1 = mlpipes.register(store, tmp_path, model=models[0])
    v2 = mlpipes.register(store, tmp_path, version="2", model=models[1])
    return v1, v2, mlpipes.deploy(store, "churn", v1)


@pytest.fixture
def world(
    app: Flask,
    client: FlaskClient,
    store: Store,
    tmp_path: Path,
    app_data: tuple[PipelineVersion, PipelineVersion, Deployment],
) -> World:
    """The shared app and client with the versions, an operator and a viewer token."""
    v1, v2, deployment = app_data
    return World(
        app, client, store, adminapp.bearer(store, "operator", "olivia"),
        adminapp.bearer(store, "viewer", "victor"), v1, v2, deployment, tmp_path,
    )  # fmt: skip


def error_of(response: Any) -> tuple[int, str]:
    return response.status_code, response.get_json()["error"]["code"]


# ------------------------------------------------------------------------------------------ pipelines
UPSTREAM = {
    "name": "remote", "version": "1", "upstream": "http://127.0.0.1:9/v2", "protocol": "v2",
    "task": "classification", "schema": [{"name": "age", "dtype": "float"}], "classes": [0, 1],
    "metrics": {"accuracy": 0.8},
}  # fmt: skip


def test_an_upstream_registered_by_json_is_listed_and_shown(world: World) -> None:
    response = world.post("/pipelines", UPSTREAM)
    assert response.status_code == 201, response.get_json()
    assert response.headers["Location"] == f"{API}/pipelines/remote/1"
    body = response.get_json()
    assert (body["ref"], body["kind"], body["upstream_url"], body["classes"]) == (
        "remote:1", "http", "http://127.0.0.1:9/v2", [0, 1],
    )  # fmt: skip
    refs = [p["ref"] for p in world.get("/pipelines").get_json()["pipelines"]]
    assert refs == ["churn:1", "churn:2", "remote:1"]
    assert [p["ref"] for p in world.get("/pipelines?name=remote").get_json()["pipelines"]] == ["remote:1"]
    shown = world.get("/pipelines/remote/1").get_json()
    assert shown["input_schema"] == [{"name": "age", "dtype": "float"}]
    assert shown["offline_metrics"] == {"accuracy": 0.8}
    event = world.store.events.list(limit=100)[-1]
    assert (event.action, event.actor) == ("pipeline.register", "olivia")


def test_bad_upstream_registrations_are_4xx_and_store_nothing(world: World) -> None:
    cases = [
        ({**UPSTREAM, "task": "ranking"}, 400, "invalid_registration"),
        ({**UPSTREAM, "protocol": "grpc"}, 400, "invalid_registration"),
        ({**UPSTREAM, "upstream": "ftp://x"}, 400, "invalid_registration"),
        ({**UPSTREAM, "schema": "age:complex"}, 400, "invalid_registration"),
        ({**UPSTREAM, "schema": 5}, 400, "invalid_field"),
        ({**UPSTREAM, "classes": "01"}, 400, "invalid_field"),
        ({**UPSTREAM, "metrics": [1]}, 400, "invalid_field"),
        ({**UPSTREAM, "name": "a/b"}, 400, "invalid_registration"),
        ({**UPSTREAM, "kind": "tfserving"}, 400, "invalid_registration"),
        ({**UPSTREAM, "upstream_settings": {"encoding": "grpc"}}, 400, "invalid_registration"),
        ({**UPSTREAM, "upstream_settings": {"retries": -1}}, 400, "invalid_registration"),
        ({**UPSTREAM, "kind": "mlflow", "protocol": "v2"}, 400, "invalid_registration"),
        ({**UPSTREAM, "sample": [[1.0]]}, 400, "invalid_field"),
        ({**UPSTREAM, "sample": {"columns": ["age"], "data": [[1.0]]}}, 400, "invalid_registration"),
        ({**UPSTREAM, "surprise": 1}, 400, "unknown_field"),
        ({k: v for k, v in UPSTREAM.items() if k != "task"}, 400, "missing_field"),
        ({**UPSTREAM, "name": "churn", "version": "1"}, 409, "already_exists"),
    ]
    for body, status, code in cases:
        assert error_of(world.post("/pipelines", body)) == (status, code), body
    assert error_of(world.client.post(f"{API}/pipelines", data="x", headers=world.operator)) == (
        415, "unsupported_media_type",
    )  # fmt: skip
    assert [v.ref for v in world.store.pipelines.list()] == ["churn:1", "churn:2"]


def test_an_artifact_uploaded_with_its_holdout_gets_offline_metrics(world: World) -> None:
    model_path = mlpipes.save(mlpipes.classifier(seed=3), world.tmp_path / "up", "model")
    frame, target = mlpipes.churn_frame(120, seed=9)
    holdout = frame.assign(churn=target).to_csv(index=False).encode()
    form = {
        "name": "churn", "version": "3", "task": "classification", "target": "churn",
        "metadata": '{"team": "risk"}', "artifact": (model_path.open("rb"), "model.skops"),
        "holdout": (io.BytesIO(holdout), "holdout.csv"),
    }  # fmt: skip
    response = world.client.post(f"{API}/pipelines", data=form, headers=world.operator)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["kind"] == "artifact" and body["artifact_format"] == "skops" and len(body["sha256"]) == 64
    assert body["offline_metrics"]["holdout_size"] == 120
    assert 0.5 < body["offline_metrics"]["accuracy"] <= 1.0
    assert body["metadata"] == {"team": "risk"}
    assert Path(world.store.pipelines.get_by_ref("churn:3").artifact_path or "").is_file()


def test_a_pickle_upload_is_refused_unless_the_server_trusts_pickle(world: World) -> None:
    path = world.tmp_path / "model.joblib"
    joblib.dump(mlpipes.classifier(), path)
    form = {
        "name": "churn",
        "version": "9",
        "task": "classification",
        "artifact": (path.open("rb"), "m.joblib"),
    }
    response = world.client.post(f"{API}/pipelines", data=form, headers=world.operator)
    assert error_of(response) == (400, "invalid_registration")
    assert "pickle" in response.get_json()["error"]["message"]
    bad = [
        ({"name": "churn", "version": "9", "task": "classification"}, "missing_field"),
        ({"name": "churn", "version": "9", "task": "classification", "artifact": (io.BytesIO(b"x"), "m.exe")},
         "invalid_field"),
        ({"name": "churn", "version": "9", "task": "classification", "artifact": (io.BytesIO(b"x"), "m.skops"),
          "metrics": "{nope"}, "invalid_field"),
        ({"name": "churn", "version": "9", "task": "classification", "artifact": (io.BytesIO(b"x"), "m.skops"),
          "surprise": "1"}, "unknown_field"),
        ({"name": "churn", "version": "9", "task": "classification", "artifact": (io.BytesIO(b"garbage"), "m.skops")},
         "invalid_registration"),
    ]  # fmt: skip
    for form, code in bad:
        response = world.client.post(
            f"{API}/pipelines", data=form, headers=world.operator, content_type="multipart/form-data"
        )
        assert error_of(response) == (400, code), form
    assert [v.ref for v in world.store.pipelines.list()] == ["churn:1", "churn:2"]


def test_an_unknown_pipeline_version_is_a_404(world: World) -> None:
    assert error_of(world.get("/pipelines/churn/7")) == (404, "not_found")


# ------------------------------------------------------------------------------------------ deployments
def test_a_deployment_is_created_listed_and_shown(world: World) -> None:
    response = world.post(
        "/deployments", {"name": "churn-eu", "champion": "churn:2", "store_raw_inputs": False}
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"{API}/deployments/churn-eu"
    listed = world.get("/deployments").get_json()["deployments"]
    assert [(d["name"], d["champion"], d["phase"]) for d in listed] == [
        ("churn", "churn:1", "stable"), ("churn-eu", "churn:2", "stable"),
    ]  # fmt: skip
    shown = world.get("/deployments/churn-eu").get_json()
    assert shown["store_raw_inputs"] is False
    assert shown["weights"] == {"champion": 100.0, "challenger": 0.0, "shadow_rate": 0.0}
    assert shown["rollout"] is None and shown["live"] is None and shown["last_analysis"] is None
    event = world.store.events.list(limit=100)[-1]
    assert (event.action, event.actor) == ("deployment.create", "olivia")


def test_a_deployment_keeps_the_batching_settings_it_was_created_with(world: World) -> None:
    body = {
        "name": "fast",
        "champion": "churn:1",
        "batching": {"max_batch_rows": 32, "max_batch_delay_ms": 2},
    }
    assert world.post("/deployments", body).status_code == 201
    shown = world.get("/deployments/fast").get_json()
    assert shown["batching"] == {"enabled": True, "max_batch_delay_ms": 2, "max_batch_rows": 32}
    assert world.store.routing.load_table()["fast"].batching.max_batch_rows == 32  # what routers read
    default = world.get("/deployments/churn").get_json()["batching"]
    assert default == {"enabled": True, "max_batch_delay_ms": 2.0, "max_batch_rows": 256}


def test_patch_changes_the_batching_settings_given_and_keeps_the_others(world: World) -> None:
    patch = world.client.patch(
        f"{API}/deployments/churn", json={"batching": {"max_batch_rows": 16}}, headers=world.operator
    )
    assert patch.status_code == 200, patch.get_json()
    assert patch.get_json()["batching"] == {"enabled": True, "max_batch_delay_ms": 2.0, "max_batch_rows": 16}
    off = world.client.patch(
        f"{API}/deployments/churn", json={"batching": {"enabled": False}}, headers=world.operator
    )
    assert off.get_json()["batching"] == {"enabled": False, "max_batch_delay_ms": 2.0, "max_batch_rows": 16}
    table = world.store.routing.load_table()["churn"].batching  # what routers read
    assert (table.enabled, table.max_batch_rows) == (False, 16)
    event = world.store.events.list(limit=100)[-1]
    assert (event.action, event.actor) == ("deployment.configure", "olivia")


def test_bad_batching_patches_are_4xx_and_change_nothing(world: World) -> None:
    cases = [
        ({"batching": {"enabled": "yes"}}, world.operator, 400, "invalid_field"),
        ({"batching": {"max_batch_rows": 0}}, world.operator, 400, "invalid_field"),
        ({"batching": {"max_batch_rows": 2.5}}, world.operator, 400, "invalid_field"),
        ({"batching": {"max_batch_delay_ms": 1001}}, world.operator, 400, "invalid_field"),
        ({"batching": {"max_batch_delay_ms": None}}, world.operator, 400, "invalid_field"),
        ({"batching": {"rows": 5}}, world.operator, 400, "invalid_field"),
        ({"batching": {}}, world.operator, 400, "invalid_field"),
        ({"batching": [1]}, world.operator, 400, "invalid_field"),
        ({"store_raw_inputs": False}, world.operator, 400, "unknown_field"),
        ({}, world.operator, 400, "missing_field"),
        ({"batching": {"max_batch_rows": 8}}, world.viewer, 403, "forbidden"),
    ]
    for body, headers, status, code in cases:
        answer = world.client.patch(f"{API}/deployments/churn", json=body, headers=headers)
        assert error_of(answer) == (status, code), body
    missing = world.client.patch(
        f"{API}/deployments/nope", json={"batching": {"enabled": False}}, headers=world.operator
    )
    assert error_of(missing) == (404, "not_found")
    assert world.store.deployments.get("churn").batching.max_batch_rows == 256
    assert not [e for e in world.store.events.list(limit=100) if e.action == "deployment.configure"]


def test_restoring_a_deployment_whose_champion_was_archived_is_refused_naming_the_version(
    world: World,
) -> None:
    assert world.post("/deployments/churn/archive").status_code == 200
    assert world.post("/pipelines/churn/1/archive").status_code == 200
    refused = world.post("/deployments/churn/restore")
    assert error_of(refused) == (409, "conflict")
    assert "champion churn:1 is archived; restore it first" in refused.get_json()["error"]["message"]
    assert world.store.deployments.get("churn").archived_at is not None  # nothing changed
    assert world.post("/pipelines/churn/1/restore").status_code == 200
    assert world.post("/deployments/churn/restore").get_json()["archived_at"] is None


def test_bad_deployments_are_refused(world: World) -> None:
    cases = [
        ({"name": "a b", "champion": "churn:1"}, 400, "invalid_field"),
        ({"name": "", "champion": "churn:1"}, 400, "invalid_field"),
        ({"name": "x", "champion": "churn:1", "store_raw_inputs": "no"}, 400, "invalid_field"),
        ({"name": "x", "champion": "churn:9"}, 404, "not_found"),
        ({"name": "churn", "champion": "churn:1"}, 409, "already_exists"),
        ({"name": "x"}, 400, "missing_field"),
        ([], 400, "invalid_json"),
        ({"name": "x", "champion": "churn:1", "batching": {"enabled": "yes"}}, 400, "invalid_field"),
        ({"name": "x", "champion": "churn:1", "batching": {"max_batch_rows": 0}}, 400, "invalid_field"),
        ({"name": "x", "champion": "churn:1", "batching": {"max_batch_delay_ms": -1}}, 400, "invalid_field"),
        ({"name": "x", "champion": "churn:1", "batching": {"rows": 5}}, 400, "invalid_field"),
        ({"name": "x", "champion": "churn:1", "batching": [1]}, 400, "invalid_field"),
    ]
    for body, status, code in cases:
        assert error_of(world.post("/deployments", body)) == (status, code), body
    assert error_of(world.get("/deployments/nope")) == (404, "not_found")
    assert [d.name for d in world.store.deployments.list()] == ["churn"]


def pair(world: World, rollout_id: int, step: int, i: int, **fields: Any) -> PairRecord:
    return PairRecord(
        request_id=f"req-{step}-{i}", row_index=0, deployment_id=world.churn.id, rollout_id=rollout_id, step=step,
        received_at=datetime.now(UTC) - timedelta(seconds=100 - i), routing_key_hash=i,
        champion_version_id=world.v1.id, challenger_version_id=world.v2.id, **fields,
    )  # fmt: skip


def test_a_deployment_shows_live_figures_of_the_current_step_and_the_last_verdicts(world: World) -> None:
    rollout = mlpipes.start_rollout(world.store, world.churn, world.v2, mode="canary", canary_weight=25)
    old_step = [
        pair(world, rollout.id, 7, i, served_arm="champion", champion_latency_ms=999.0) for i in range(5)
    ]
    rows = [
        pair(world, rollout.id, 0, i, served_arm="challenger" if i % 4 == 0 else "champion",
             champion_latency_ms=float(i + 1), challenger_latency_ms=None if i % 10 == 9 else 2.0 * (i + 1),
             challenger_error="boom" if i % 10 == 9 else None)
        for i in range(100)
    ]  # fmt: skip
    world.store.pairs.insert_many(old_step + rows)
    verdicts = [{"gate": "error_rate", "outcome": "inconclusive", "reason": "bound straddles the margin"}]
    world.store.analyses.add(
        rollout_id=rollout.id, step=0, outcome="inconclusive", verdicts=verdicts, metrics={"n": 100}
    )
    shown = world.get("/deployments/churn").get_json()
    assert (shown["phase"], shown["mode"], shown["challenger"], shown["step_index"]) == (
        "progressing", "canary", "churn:2", 0,
    )  # fmt: skip
    assert shown["weights"] == {"champion": 75.0, "challenger": 25.0, "shadow_rate": 1.0}
    live = shown["live"]
    assert (live["rollout_id"], live["step"], live["requests"]) == (rollout.id, 0, 100)
    champion, challenger = live["arms"]["champion"], live["arms"]["challenger"]
    assert (champion["served"], challenger["served"]) == (75, 25)
    assert (champion["scored"], champion["errors"], champion["error_rate"]) == (100, 0, 0.0)
    assert (challenger["scored"], challenger["errors"], challenger["error_rate"]) == (100, 10, 0.1)
    # read off the judge's log buckets (5 % wide), as the judge and the report read them: np.percentile's
    # 50.5 and 99.01 within the buckets' resolution
    assert champion["latency_ms"]["n"] == 100 and champion["latency_ms"]["p50"] == pytest.approx(
        50.5, rel=0.05
    )
    assert champion["latency_ms"]["p99"] == pytest.approx(99.01, rel=0.05)
    assert challenger["latency_ms"]["n"] == 90
    assert shown["last_analysis"]["outcome"] == "inconclusive"
    assert shown["last_analysis"]["verdicts"] == verdicts
    assert shown["rollout"]["id"] == rollout.id


def test_the_polled_status_document_equals_the_one_built_from_direct_scans(world: World) -> None:
    rollout = mlpipes.start_rollout(world.store, world.churn, world.v2, mode="canary", canary_weight=25)
    for batch in range(3):  # the first GET builds the app's kept sums, the others add the new rows
        world.store.pairs.insert_many(
            [
                pair(world, rollout.id, 0, 100 * batch + i, served_arm="challenger" if i % 4 == 0 else "champion",
                     champion_latency_ms=float(i + 1), challenger_latency_ms=None if i % 10 == 9 else 3.0 * i,
                     challenger_error="boom" if i % 10 == 9 else None)
                for i in range(100)
            ]
        )  # fmt: skip
        polled = world.get("/deployments/churn").get_json()["live"]
        direct = documents.live_figures(world.store, world.store.rollouts.get(rollout.id))
        assert polled == json.loads(encoding.dumps(direct))
        assert polled["requests"] == 100 * (batch + 1)


def test_the_dashboard_the_report_and_the_judge_read_the_same_latency_quantiles(world: World) -> None:
    rollout = mlpipes.start_rollout(world.store, world.churn, world.v2, mode="canary", canary_weight=25)
    rng = np.random.default_rng(7)
    latencies = rng.lognormal(mean=3.0, sigma=0.8, size=(400, 2))
    world.store.pairs.insert_many(
        [
            pair(world, rollout.id, 0, i, served_arm="champion", champion_latency_ms=float(latencies[i, 0]),
                 challenger_latency_ms=float(latencies[i, 1]))
            for i in range(400)
        ]
    )  # fmt: skip
    live = world.get("/deployments/churn").get_json()["live"]["arms"]
    report = world.get("/deployments/churn/report").get_json()["arms"]
    for index, arm in enumerate(("champion", "challenger")):
        shown, reported = live[arm]["latency_ms"], report[arm]["latency_ms"]
        assert (shown["n"], reported["n"]) == (400, 400)
        assert (shown["p50"], shown["p99"]) == (reported["p50"], reported["p99"])  # one definition
        assert shown["p99"] == pytest.approx(np.percentile(latencies[:, index], 99), rel=0.05)


# ------------------------------------------------------------------------------------------ rollouts
def test_a_rollout_is_started_with_a_policy_and_listed(world: World) -> None:
    policy = {"mode": "canary", "canary": {"steps": [10, 50, 100]}}
    body = {"challenger": "churn:2", "policy": policy, "reason": "retrained on May data"}
    response = world.post("/deployments/churn/rollouts", body)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["phase"], body["mode"], body["challenger"], body["champion"]) == (
        "pending", "canary", "churn:2", "churn:1",
    )  # fmt: skip
    assert body["policy"]["canary"]["steps"] == [10.0, 50.0, 100.0]
    assert body["created_by"] == "olivia"
    assert world.store.events.list(limit=100)[-1].message == "retrained on May data"
    listed = world.get("/deployments/churn/rollouts").get_json()["rollouts"]
    assert [r["id"] for r in listed] == [body["id"]]
    assert error_of(world.post("/deployments/churn/rollouts", {"challenger": "churn:2"})) == (
        409, "invalid_transition",
    )  # fmt: skip


def test_the_split_salt_of_a_rollout_is_never_shown_by_the_api(world: World) -> None:
    started = world.post(
        "/deployments/churn/rollouts", {"challenger": "churn:2", "policy": {"mode": "canary"}}
    )
    assert started.status_code == 201, started.get_json()
    with world.store.db.engine.connect() as connection:
        salt = connection.execute(
            text("SELECT split_salt FROM rollouts WHERE id = :id"), {"id": started.get_json()["id"]}
        ).scalar_one()
    assert isinstance(salt, str) and len(salt) == 32  # 16 random bytes, hex
    pages = [started] + [
        world.get(url)
        for url in (
            "/deployments",
            "/deployments/churn",
            "/deployments/churn/rollouts",
            "/deployments/churn/events",
        )
    ]
    for page in pages:
        assert page.status_code == 200 or page is started
        assert salt not in page.get_data(as_text=True)
        assert "split_salt" not in page.get_data(as_text=True)


def test_an_invalid_policy_is_a_422_naming_the_field(world: World) -> None:
    cases = [
        {"challenger": "churn:2", "policy": {"canary": {"steps": [50, 10]}}},
        {"challenger": "churn:2", "policy": {"alpha": 3}},
        {"challenger": "churn:2", "policy": {"surprise": True}},
        {"challenger": "churn:2", "mode": "yolo"},
    ]
    for body in cases:
        response = world.post("/deployments/churn/rollouts", body)
        assert error_of(response) == (422, "invalid_policy"), body
    message = world.post("/deployments/churn/rollouts", cases[1]).get_json()["error"]["message"]
    assert "alpha" in message
    assert "surprise" in world.post("/deployments/churn/rollouts", cases[2]).get_json()["error"]["message"]
    assert world.store.rollouts.list() == []


def test_bad_rollout_starts_are_4xx(world: World) -> None:
    cases = [
        ({"challenger": "churn:9"}, 404, "not_found"),
        ({"challenger": "churn:1"}, 409, "invalid_transition"),
        ({"challenger": "churn:2", "policy": "/etc/passwd"}, 400, "invalid_field"),
        ({"challenger": "churn:2", "extra": 1}, 400, "unknown_field"),
        ({}, 400, "missing_field"),
    ]
    for body, status, code in cases:
        assert error_of(world.post("/deployments/churn/rollouts", body)) == (status, code), body
    assert error_of(world.post("/deployments/nope/rollouts", {"challenger": "churn:2"})) == (404, "not_found")
    assert world.store.rollouts.list() == []


def test_operator_actions_move_the_rollout_and_are_audited_with_their_reason(world: World) -> None:
    mlpipes.start_rollout(world.store, world.churn, world.v2)
    paused = world.post("/deployments/churn/rollout/pause", {"reason": "weekend freeze"})
    assert paused.status_code == 200 and paused.get_json()["phase"] == "paused"
    assert error_of(world.post("/deployments/churn/rollout/pause")) == (409, "invalid_transition")
    assert world.post("/deployments/churn/rollout/resume").get_json()["phase"] == "shadowing"
    promoted = world.post("/deployments/churn/rollout/promote", {"full": True, "reason": "looks good"})
    assert promoted.get_json()["phase"] == "promoted"
    assert world.get("/deployments/churn").get_json()["champion"] == "churn:2"
    assert error_of(world.post("/deployments/churn/rollout/rollback")) == (409, "invalid_transition")
    events = world.get("/deployments/churn/events").get_json()["events"]
    manual = [(e["action"], e["actor"]) for e in events if e["action"].startswith("rollout.")]
    assert manual[:3] == [
        ("rollout.pause", "olivia"),
        ("rollout.resume", "olivia"),
        ("rollout.promote", "olivia"),
    ]
    assert events[0]["details"].get("operator_reason") == "weekend freeze"


def test_rollback_and_abort_end_the_rollout_without_changing_the_champion(world: World) -> None:
    mlpipes.start_rollout(world.store, world.churn, world.v2, mode="canary", canary_weight=5)
    assert (
        world.post("/deployments/churn/rollout/rollback", {"reason": "errors"}).get_json()["phase"]
        == "rolled_back"
    )
    world.store.rollouts.create(deployment_id=world.churn.id, challenger_id=world.v2.id, mode="shadow", policy={},
                                created_by="tests")  # fmt: skip
    assert world.post("/deployments/churn/rollout/abort").get_json()["phase"] == "aborted"
    assert world.get("/deployments/churn").get_json()["champion"] == "churn:1"


def test_bad_action_requests_are_4xx(world: World) -> None:
    assert error_of(world.post("/deployments/churn/rollout/pause")) == (
        409,
        "invalid_transition",
    )  # no rollout
    mlpipes.start_rollout(world.store, world.churn, world.v2)
    cases = [
        ("/deployments/churn/rollout/explode", None, 404, "unknown_action"),
        ("/deployments/nope/rollout/pause", None, 404, "not_found"),
        ("/deployments/churn/rollout/pause", {"full": True}, 400, "unknown_field"),
        ("/deployments/churn/rollout/promote", {"full": "yes"}, 400, "invalid_field"),
        ("/deployments/churn/rollout/promote", {"reason": 5}, 400, "invalid_field"),
        ("/deployments/churn/rollout/promote", [], 400, "invalid_json"),
    ]
    for url, body, status, code in cases:
        assert error_of(world.post(url, body)) == (status, code), (url, body)
    assert world.store.rollouts.list()[0].phase == "shadowing"


def test_events_are_paged_by_after_id_and_limit(world: World) -> None:
    for i in range(5):
        world.post("/deployments/churn/labels", {"labels": [{"request_id": f"x{i}", "label": 1}]})
    first = world.get("/deployments/churn/events?limit=2").get_json()
    assert len(first["events"]) == 2
    rest = world.get(f"/deployments/churn/events?after_id={first['next_after_id']}").get_json()
    assert len(rest["events"]) == 3
    assert rest["events"][0]["id"] > first["events"][-1]["id"]
    for query in ("limit=0", "limit=5000", "after_id=-1", "after_id=abc"):
        assert error_of(world.get(f"/deployments/churn/events?{query}")) == (400, "invalid_parameter"), query


def test_operator_labels_are_stored_and_the_upload_is_audited(world: World) -> None:
    world.store.pairs.insert_many([pair(world, None, None, 1, served_arm="champion")])  # type: ignore[arg-type]
    body = {"labels": [{"request_id": "req-None-1", "label": 1}, {"request_id": "ghost", "label": 0}]}
    response = world.post("/deployments/churn/labels", body)
    assert response.get_json() == {"stored": 2, "unknown_request_ids": ["ghost"], "dropped_request_ids": []}
    event = world.store.events.list(limit=100)[-1]
    assert (event.action, event.actor, event.details) == (
        "labels.upload",
        "olivia",
        {"stored": 2, "unknown": 1},
    )
    assert error_of(world.post("/deployments/churn/labels", {"labels": []})) == (400, "invalid_labels")
    assert error_of(world.post("/deployments/nope/labels", body)) == (404, "not_found")


# ------------------------------------------------------------------------------------------ reports, pages
def test_the_report_is_json_html_or_markdown(world: World) -> None:
    mlpipes.start_rollout(world.store, world.churn, world.v2)
    as_json = world.get("/deployments/churn/report")
    assert as_json.status_code == 200 and as_json.mimetype == "application/json"
    assert as_json.get_json()["deployment"]["name"] == "churn"
    html = world.get("/deployments/churn/report?format=html")
    assert html.status_code == 200 and html.mimetype == "text/html"
    policy = html.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "http" not in policy
    assert world.get(
        "/deployments/churn/report", headers={**world.viewer, "Accept": "text/html"}
    ).mimetype == ("text/html")
    assert world.get("/deployments/churn/report?format=markdown").mimetype == "text/markdown"
    assert error_of(world.get("/deployments/churn/report?format=pdf")) == (400, "invalid_parameter")
    assert error_of(world.get("/deployments/churn/report?rollout=x")) == (400, "invalid_parameter")
    assert error_of(world.get("/deployments/nope/report")) == (404, "not_found")


def test_the_dashboard_page_and_its_assets_load_without_a_token_under_a_strict_policy(world: World) -> None:
    response = world.client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert (
        "script-src 'self';" in policy
        and "connect-src 'self'" in policy
        and "frame-ancestors 'none'" in policy
    )
    page = response.get_data(as_text=True)
    for asset in ("/static/dashboard.js", "/static/dashboard.css"):
        assert asset in page
        served = world.client.get(asset)
        assert served.status_code == 200, asset
        served.close()
    response.close()


def test_inline_scripts_are_allowed_by_hash_only() -> None:
    policy = api.content_security_policy(
        b"<html><script>alert(1)</script><script src='/static/a.js'></script>"
    )
    assert "'sha256-" in policy and "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    assert api.content_security_policy(b"<p>plain</p>").startswith("default-src 'self'; script-src 'self';")


def test_bad_input_anywhere_is_a_4xx_json_error_never_a_500(world: World) -> None:
    mlpipes.start_rollout(world.store, world.churn, world.v2)
    writes = [
        "/pipelines", "/deployments", "/deployments/churn/rollouts", "/deployments/churn/rollout/promote",
        "/deployments/churn/labels",
    ]  # fmt: skip
    garbage: list[dict[str, Any]] = [
        {"data": "{", "content_type": "application/json"},
        {"data": "null", "content_type": "application/json"},
        {"data": '"text"', "content_type": "application/json"},
        {"data": "[1, 2]", "content_type": "application/json"},
        {"data": '{"name": {"$gt": 1}, "champion": [1], "challenger": 5, "labels": 3}', "content_type": "application/json"},
        {"data": "\xff\xfe", "content_type": "application/json"},
        {"data": "a=1", "content_type": "application/x-www-form-urlencoded"},
    ]  # fmt: skip
    for url in writes:
        for request in garbage:
            response = world.client.post(API + url, headers=world.operator, **request)
            assert 400 <= response.status_code < 500, (url, request, response.get_data(as_text=True))
            assert response.get_json()["error"]["message"]
    assert world.store.rollouts.list()[0].phase == "shadowing"


def test_artifact_uploads_have_their_own_size_limit(
    store: Store, tmp_path: Path, models: tuple[Any, Any]
) -> None:
    model_path = mlpipes.save(models[0], tmp_path / "up", "model")
    size = model_path.stat().st_size
    assert size > 2000

    def upload(client: FlaskClient, headers: dict[str, str], version: str) -> Any:
        form = {
            "name": "churn",
            "version": version,
            "task": "classification",
            "artifact": (model_path.open("rb"), "m.skops"),
        }
        return client.post(f"{API}/pipelines", data=form, headers=headers, content_type="multipart/form-data")

    with adminapp.running(store, tmp_path, max_body_bytes=2000, max_upload_bytes=size * 10) as app:
        client, operator = app.test_client(), adminapp.bearer(store, "operator")
        assert upload(client, operator, "1").status_code == 201  # larger than a scoring body may be
        labels = {"labels": [{"request_id": f"r{i}", "label": 1} for i in range(200)]}
        response = client.post(f"{API}/deployments/churn/labels", json=labels, headers=operator)
        assert error_of(response) == (413, "payload_too_large")
    with adminapp.running(store, tmp_path, max_upload_bytes=size // 2) as app:
        response = upload(app.test_client(), adminapp.bearer(store, "operator", "second"), "2")
        assert error_of(response) == (413, "payload_too_large")
    assert [v.ref for v in store.pipelines.list()] == ["churn:1"]


# ------------------------------------------------------------------------------------------ dashboard
def _dashboard_rollout(world: World) -> Any:
    policy = {"shadow": {"min_pairs": 50}, "canary": {"steps": [25, 100]}}
    return world.store.rollouts.create(
        deployment_id=world.churn.id, challenger_id=world.v2.id, mode="shadow_then_canary", policy=policy,
        created_by="tests", phase="shadowing",
    )  # fmt: skip


def test_the_dashboard_endpoint_shows_plan_progress_time_series_gates_and_timeline(world: World) -> None:
    rollout = _dashboard_rollout(world)
    start = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
    rng = np.random.default_rng(3)
    rows, expected = [], {"ran": 0, "errors": 0, "skipped": 0, "sampled": 0, "requests": 0}
    for i in range(120):  # one request a second for two minutes; every fifth has three rows
        fate = ("ok", "ok", "ok", "error", "skipped")[i % 5] if i % 7 else None  # None: not sampled
        latency = None if fate in ("skipped", None) else float(rng.lognormal(2.0, 0.5))
        for row in range(3 if i % 5 == 0 else 1):
            rows.append(
                PairRecord(
                    request_id=f"d-{i}", row_index=row, deployment_id=world.churn.id, rollout_id=rollout.id,
                    step=0, received_at=start + timedelta(seconds=i), routing_key_hash=i,
                    served_arm="champion", champion_version_id=world.v1.id, challenger_version_id=world.v2.id,
                    champion_latency_ms=5.0, champion_status="ok", challenger_latency_ms=latency,
                    challenger_status=fate, challenger_error="boom" if fate == "error" else None,
                    skip_reason="queue_full" if fate == "skipped" else None,
                )
            )  # fmt: skip
        expected["requests"] += 1
        expected["sampled"] += fate is not None
        expected["ran"] += fate in ("ok", "error")
        expected["errors"] += fate == "error"
        expected["skipped"] += fate == "skipped"
    world.store.pairs.insert_many(rows)
    looks = [(30, 0.02, -0.01, 0.05), (60, 0.01, -0.005, 0.03), (90, 0.004, -0.002, 0.012)]
    for seconds, effect, lower, upper in looks:
        verdicts = [
            {"gate": "error_rate", "role": "required", "outcome": "inconclusive", "effect": effect,
             "margin": 0.01, "interval": {"lower": lower, "upper": upper}, "n_champion": seconds,
             "n_challenger": seconds, "reason": "bound straddles the margin"},
            {"gate": "drift", "role": "informational", "outcome": "pass", "effect": 0.01, "margin": 0.2},
        ]  # fmt: skip
        world.store.analyses.add(
            rollout_id=rollout.id, step=0, outcome="inconclusive", verdicts=verdicts,
            metrics={"samples": seconds // 2, "judgement": "error_rate inconclusive"},
            now=start + timedelta(seconds=seconds),
        )  # fmt: skip
    world.post("/deployments/churn/rollout/pause", {"reason": "lunch"})

    body = world.get("/deployments/churn/dashboard").get_json()
    assert body["rollout_id"] == rollout.id
    assert (body["state"]["phase"], body["state"]["tone"], body["state"]["active"]) == (
        "paused",
        "held",
        True,
    )
    assert [(s["label"], s["status"]) for s in body["plan"]] == [
        ("shadow", "current"),
        ("canary 25%", "next"),
    ]
    progress = body["progress"]
    assert (progress["samples"], progress["needed"], progress["unit"]) == (45, 50, "pairs")
    assert progress["text"] == "45/50 pairs; next: canary 25%"
    # one sentence everywhere: the dashboard says what the status document (and the report) says
    assert body["verdict"] == world.get("/deployments/churn").get_json()["verdict"]
    assert re.match(r"Paused at \d\d:\d\d UTC by olivia: lunch\. Shadow step 1 of 2 ", body["verdict"])

    series = body["series"]
    assert series["bucket_s"] == 2  # 119 s from first to last request, cut into at most 60 buckets
    points = series["points"]
    assert len(points) == 60
    assert sum(p["requests"] for p in points) == expected["requests"]  # requests, not rows
    assert sum(p["ran"]["challenger"] for p in points) == expected["ran"]
    assert sum(p["sampled"] for p in points) == expected["sampled"]
    assert sum(p["skipped"] for p in points) == expected["skipped"]
    assert sum(p["scored"] for p in points) == expected["ran"]
    assert all(p["share"] == {"champion": 1.0, "challenger": 0.0} for p in points)
    assert all(p["p99_ms"]["champion"] == pytest.approx(5.0, rel=0.05) for p in points)
    assert [p["at"] for p in points[:2]] == ["2026-01-05T12:00:00+00:00", "2026-01-05T12:00:02+00:00"]
    first, second = (
        points[0],
        points[1],
    )  # seconds 0-1: request 0 not sampled (i % 7 == 0), 1 ok; 2-3: ok, error
    assert (first["sampled"], first["scored"], first["coverage"]) == (1, 1, 1.0)
    assert (second["sampled"], second["scored"], second["error_rate"]["challenger"]) == (2, 2, 0.5)
    errors = sum((p["error_rate"]["challenger"] or 0) * p["ran"]["challenger"] for p in points)
    assert errors == pytest.approx(expected["errors"])
    assert [g["gate"] for g in series["gates"]] == ["error_rate"]  # the required gates only
    gate = series["gates"][0]
    assert (gate["threshold"], gate["margin"], gate["role"]) == (0.01, 0.01, "required")
    assert [(g["effect"], g["lower"], g["upper"]) for g in gate["looks"]] == [x[1:] for x in looks]
    timeline = body["timeline"]
    assert timeline[0]["action"] == "rollout.pause" and timeline[0]["actor"] == "olivia"
    assert [e["id"] for e in timeline] == sorted((e["id"] for e in timeline), reverse=True)


def test_the_dashboard_says_what_happened_last_after_a_rollback(world: World) -> None:
    assert world.get("/deployments/churn/dashboard").get_json()["state"]["tone"] == "idle"
    assert world.get("/deployments/churn/dashboard").get_json()["plan"] is None
    _dashboard_rollout(world)
    world.post("/deployments/churn/rollout/rollback", {"reason": "bad feature"})
    body = world.get("/deployments/churn/dashboard").get_json()
    assert (body["state"]["label"], body["state"]["tone"], body["state"]["active"]) == (
        "rolled back", "bad", False,
    )  # fmt: skip
    assert body["state"]["age_s"] >= 0
    assert re.fullmatch(r"Rolled back at \d\d:\d\d UTC by olivia: bad feature\.", body["verdict"])
    assert [s["status"] for s in body["plan"]] == ["rolled_back", "skipped"]
    assert body["progress"]["text"] == "Rolled back during shadow after 0 pairs"
    listed = world.get("/deployments").get_json()["deployments"][0]
    assert (listed["phase"], listed["state"]["label"], listed["state"]["tone"]) == (
        "stable",
        "rolled back",
        "bad",
    )


def test_the_dashboard_endpoint_refuses_bad_calls(world: World) -> None:
    assert error_of(world.get("/deployments/nope/dashboard")) == (404, "not_found")
    assert error_of(world.get("/deployments/churn/dashboard?events=0")) == (400, "invalid_parameter")
    assert error_of(world.get("/deployments/churn/dashboard", headers={})) == (401, "missing_token")


def test_operators_create_list_and_revoke_tokens_and_viewers_cannot(world: World) -> None:
    created = world.post("/tokens", {"name": "grafana", "role": "viewer"})
    assert created.status_code == 201, created.get_json()
    secret = created.get_json()["token"]
    assert created.headers["Cache-Control"] == "no-store"
    assert world.get("/deployments", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    listed = world.get("/tokens", headers=world.operator).get_json()["tokens"]
    assert {t["name"] for t in listed} >= {"olivia", "victor", "grafana"}
    assert all("token" not in t for t in listed)  # never a secret in a listing
    assert error_of(world.get("/tokens")) == (403, "forbidden")  # a viewer: not even the names
    revoked = world.client.delete(f"{API}/tokens/grafana", headers=world.operator)
    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"] is not None
    assert world.get("/deployments", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    actions = [
        (e.action, e.actor) for e in world.store.events.list(limit=100) if e.action.startswith("token.")
    ]
    assert actions == [("token.create", "olivia"), ("token.revoke", "olivia")]


def test_bad_token_requests_are_4xx_and_create_nothing(world: World) -> None:
    cases = [
        ({"name": "x", "role": "admin"}, world.operator, 400, "invalid_field"),
        ({"name": "a b"}, world.operator, 400, "invalid_field"),
        ({"name": ""}, world.operator, 400, "invalid_field"),
        ({"role": "viewer"}, world.operator, 400, "missing_field"),
        ({"name": "x", "secret": "mine"}, world.operator, 400, "unknown_field"),
        ({"name": "olivia"}, world.operator, 409, "already_exists"),
        ({"name": "x"}, world.viewer, 403, "forbidden"),
    ]
    for body, headers, status, code in cases:
        assert error_of(world.post("/tokens", body, headers=headers)) == (status, code), body
    assert error_of(world.client.delete(f"{API}/tokens/nope", headers=world.operator)) == (404, "not_found")
    assert {t.name for t in world.store.tokens.list()} == {"olivia", "victor"}


def test_prune_deletes_old_pairs_and_labels_and_refuses_a_malformed_age(world: World) -> None:
    rollout = mlpipes.start_rollout(world.store, world.churn, world.v2)
    old = [pair(world, rollout.id, 0, i, served_arm="champion") for i in range(3)]
    world.store.pairs.insert_many(old)
    assert error_of(world.post("/prune", {"older_than": "soon"})) == (400, "invalid_field")
    assert error_of(world.post("/prune", {"older_than": "1m", "batch_size": 0})) == (400, "invalid_field")
    assert error_of(world.post("/prune", {"older_than": "1m"}, headers=world.viewer)) == (403, "forbidden")
    assert len(world.store.pairs.list(limit=100)) == 3  # nothing deleted by the refusals
    kept = world.post("/prune", {"older_than": "1d"}).get_json()
    assert (kept["pairs"], kept["labels"]) == (0, 0)
    pruned = world.post("/prune", {"older_than": "1m"}).get_json()  # the pairs are 100 s old
    assert (pruned["pairs"], pruned["labels"]) == (3, 0)
    assert world.store.pairs.list(limit=100) == []
    assert world.store.events.list(limit=100)[-1].action == "data.prune"
