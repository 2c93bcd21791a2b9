"""The admin API: pipelines, deployments, rollouts and their actions, events, labels, reports, errors as JSON."""

from __future__ import annotations

import io
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

from controller.http import api
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


def test_bad_deployments_are_refused(world: World) -> None:
    cases = [
        ({"name": "a b", "champion": "churn:1"}, 400, "invalid_field"),
        ({"name": "", "champion": "churn:1"}, 400, "invalid_field"),
        ({"name": "x", "champion": "churn:1", "store_raw_inputs": "no"}, 400, "invalid_field"),
        ({"name": "x", "champion": "churn:9"}, 404, "not_found"),
        ({"name": "churn", "champion": "churn:1"}, 409, "already_exists"),
        ({"name": "x"}, 400, "missing_field"),
        ([], 400, "invalid_json"),
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
