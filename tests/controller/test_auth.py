"""Admin API auth: every /api/v1 route refuses a missing, malformed, wrong, revoked or weak token, changing nothing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import adminapp
import mlpipes
import pytest
from flask import Flask
from flask.testing import FlaskClient

from controller.core.machine import ROLLOUT_ACTIONS
from controller.http import auth
from storage import Store

READS = {"GET", "HEAD", "OPTIONS"}
# Concrete values and bodies that WOULD succeed with an operator token, so a refusal is what stops them.
BODIES: dict[tuple[str, str], Any] = {
    ("/api/v1/pipelines", "POST"): {
        "name": "remote",
        "version": "1",
        "upstream": "http://127.0.0.1:9/",
        "task": "classification",
        "schema": "age:float",
    },  # fmt: skip
    ("/api/v1/deployments", "POST"): {"name": "other", "champion": "churn:1"},
    ("/api/v1/deployments/<name>/rollouts", "POST"): {"challenger": "churn:2"},
    ("/api/v1/deployments/<name>/rollout/<action>", "POST"): {"reason": "refused anyway"},
    ("/api/v1/deployments/<name>/labels", "POST"): {"labels": [{"request_id": "r1", "label": 1}]},
}
NAMES = {("/api/v1/deployments/<name>/rollouts", "POST"): "idle"}


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any]:
    return mlpipes.classifier(), mlpipes.classifier(seed=1)


@pytest.fixture
def app_data(store: Store, tmp_path: Path, models: tuple[Any, Any]) -> None:
    """A deployment "churn" with a shadowing rollout and one paired output, "idle" without a rollout."""
    v1 = mlpipes.register(store, tmp_path, model=models[0])
    v2 = mlpipes.register(store, tmp_path, version="2", model=models[1])
    churn = mlpipes.deploy(store, "churn", v1)
    mlpipes.deploy(store, "idle", v1)
    rollout = mlpipes.start_rollout(store, churn, v2)
    from datetime import UTC, datetime

    from storage.entities import PairRecord

    store.pairs.insert_many(
        [
            PairRecord(
                request_id="r1", row_index=0, deployment_id=churn.id, rollout_id=rollout.id, step=0,
                received_at=datetime.now(UTC), routing_key_hash=1, served_arm="champion",
                champion_version_id=v1.id, challenger_version_id=v2.id,
            )
        ]
    )  # fmt: skip


def admin_routes(app: Flask) -> list[tuple[str, str]]:
    """Every (rule, method) of the admin API except the public OpenAPI document."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.rule == "/api/v1/openapi.json":
            continue
        found.extend((rule.rule, method) for method in sorted(rule.methods or ()))
    return found


def concrete(rule: str, method: str, action: str = "pause") -> str:
    values = {"name": NAMES.get((rule, method), "churn"), "version": "1", "action": action, "change": action}
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: values[m.group(1)], rule)


def admin_requests(app: Flask) -> list[tuple[str, str, str]]:
    """(rule, method, url) for every admin route, the rollout action route once per action, the
    lifecycle route once per change (archive, restore)."""
    return [
        (rule, method, concrete(rule, method, action))
        for rule, method in admin_routes(app)
        for action in (
            ROLLOUT_ACTIONS
            if "<action>" in rule
            else ("archive", "restore")
            if "<change>" in rule
            else ("pause",)
        )
    ]


def snapshot(store: Store) -> Any:
    """Everything a request could change."""
    return (
        store.pipelines.list(archived=True),
        store.deployments.list(archived=True),
        store.rollouts.list(),
        store.events.list(limit=100_000),
        store.labels.count(),
        store.tokens.list(),
    )


def call(client: FlaskClient, rule: str, method: str, url: str, headers: dict[str, str]) -> Any:
    body = BODIES.get((rule, method))
    return client.open(url, method=method, json=body, headers=headers)


def bad_headers(store: Store) -> dict[str, dict[str, str]]:
    live, _ = store.tokens.create("soon-revoked", "operator")
    store.tokens.revoke("soon-revoked")
    operator, _ = store.tokens.create("real", "operator")
    return {
        "missing": {},
        "empty": {"Authorization": ""},
        "basic scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
        "scheme only": {"Authorization": "Bearer"},
        "two tokens": {"Authorization": f"Bearer {operator} {operator}"},
        "odd characters": {"Authorization": "Bearer mlc_<script>;drop"},
        "wrong": {"Authorization": "Bearer mlc_" + "x" * 43},
        "almost right": {"Authorization": f"Bearer {operator[:-1]}"},
        "revoked": {"Authorization": f"Bearer {live}"},
        "token in another header": {"X-Api-Token": operator},
    }


def test_the_table_covers_every_admin_route(app: Flask, store: Store) -> None:
    rules = {rule for rule, _ in admin_routes(app)}
    assert {
        "/api/v1/pipelines", "/api/v1/pipelines/<name>/<version>", "/api/v1/deployments",
        "/api/v1/deployments/<name>", "/api/v1/deployments/<name>/rollouts",
        "/api/v1/deployments/<name>/rollout/<action>", "/api/v1/deployments/<name>/events",
        "/api/v1/deployments/<name>/labels", "/api/v1/deployments/<name>/report",
    } <= rules  # fmt: skip


def test_every_admin_route_refuses_requests_without_a_valid_token_and_changes_nothing(
    app: Flask,
    store: Store,
) -> None:
    client = app.test_client()
    cases = bad_headers(store)
    before = snapshot(store)
    for rule, method, url in admin_requests(app):
        for case, headers in cases.items():
            response = call(client, rule, method, url, headers)
            assert response.status_code == 401, (rule, method, case, response.get_data(as_text=True))
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            if method != "HEAD":
                error = response.get_json()["error"]
                assert error["code"] in ("missing_token", "malformed_token", "invalid_token"), (rule, case)
                assert error["message"]
    assert snapshot(store) == before


def test_a_viewer_token_is_refused_on_every_write_route_and_changes_nothing(
    app: Flask,
    store: Store,
) -> None:
    client = app.test_client()
    viewer = adminapp.bearer(store, "viewer")
    before = snapshot(store)
    writes = [(rule, method, url) for rule, method, url in admin_requests(app) if method not in READS]
    assert len(writes) >= 9
    for rule, method, url in writes:
        response = call(client, rule, method, url, viewer)
        assert response.status_code == 403, (rule, method, response.get_data(as_text=True))
        assert response.get_json()["error"]["code"] == "forbidden"
    assert snapshot(store) == before


# reads that need an operator: token names and roles say who may do what
OPERATOR_READS = {"/api/v1/tokens"}


def test_a_viewer_token_may_call_every_read_route_but_the_token_list(app: Flask, store: Store) -> None:
    client = app.test_client()
    viewer = adminapp.bearer(store, "viewer")
    for rule, method, url in admin_requests(app):
        if method in READS:
            response = call(client, rule, method, url, viewer)
            if rule in OPERATOR_READS and method != "OPTIONS":  # OPTIONS: Flask answers it, no view runs
                assert response.status_code == 403, (rule, method)
            else:
                assert response.status_code not in (401, 403), (rule, method)


def test_an_operator_token_may_write_and_the_event_names_the_token(app: Flask, store: Store) -> None:
    client = app.test_client()
    response = client.post(
        "/api/v1/deployments/churn/rollout/pause",
        json={"reason": "freeze"},
        headers=adminapp.bearer(store, "operator", "alice"),
    )
    assert response.status_code == 200, response.get_json()
    event = store.events.list(limit=1000)[-1]
    assert (event.action, event.actor) == ("rollout.pause", "alice")


def test_the_openapi_document_needs_no_token(app: Flask, store: Store) -> None:
    response = app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.get_json()["openapi"].startswith("3.1")


def test_a_token_revoked_after_use_is_refused_at_once(app: Flask, store: Store) -> None:
    client = app.test_client()
    headers = adminapp.bearer(store, "viewer", "bob")
    assert client.get("/api/v1/deployments", headers=headers).status_code == 200
    store.tokens.revoke("bob")
    assert client.get("/api/v1/deployments", headers=headers).status_code == 401


def test_the_bearer_scheme_is_case_insensitive(app: Flask, store: Store) -> None:
    token, _ = store.tokens.create("carol", "viewer")
    response = app.test_client().get("/api/v1/deployments", headers={"Authorization": f"bearer {token}"})
    assert response.status_code == 200


def test_reads_need_a_viewer_and_everything_else_an_operator() -> None:
    assert [auth.required_role(m) for m in ("GET", "HEAD", "OPTIONS")] == ["viewer"] * 3
    assert [auth.required_role(m) for m in ("POST", "PUT", "PATCH", "DELETE")] == ["operator"] * 4
    assert auth.Principal("a", "operator").may("viewer")
    assert not auth.Principal("a", "viewer").may("operator")
    assert not auth.Principal("a", "admin").may("viewer")
