"""The feedback endpoint cannot be flooded (issue 17 item 5) and refuses labels that mean nothing (issue 19 item 3).

Labeller tokens by default, a bound on labels per request and per second, labels of unknown request
ids kept only within a bounded pending window (time and count) and joined when their pair lands,
labels checked against the deployment's classes (classification) or as finite numbers (regression).
Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import adminapp
import mlpipes
import pytest
from flask import Flask

from storage import Store
from storage.entities import PairRecord

URL = "/v1/models/churn/feedback"


def _pair(request_id: str, deployment_id: int) -> PairRecord:
    return PairRecord(
        request_id=request_id, row_index=0, deployment_id=deployment_id, rollout_id=None, step=None,
        received_at=datetime.now(UTC), routing_key_hash=0, served_arm="champion", champion_version_id=None,
        challenger_version_id=None, champion_class="1",
    )  # fmt: skip


@pytest.fixture
def churn(store: Store, tmp_path: Path) -> int:
    """A classifier deployment (classes 0 and 1) that answered requests a, b and c."""
    deployment = mlpipes.deploy(store, "churn", mlpipes.register(store, tmp_path, version="1"))
    store.pairs.insert_many([_pair(r, deployment.id) for r in "abc"])
    return deployment.id


def _labels(*pairs: tuple[str, Any]) -> dict[str, Any]:
    return {"labels": [{"request_id": r, "label": v} for r, v in pairs]}


@pytest.fixture
def app(store: Store, tmp_path: Path, churn: int) -> Iterator[Flask]:
    with adminapp.running(
        store, tmp_path, feedback_pending_max=3, feedback_max_labels=20, feedback_rate=1.0
    ) as built:
        yield built


def test_feedback_needs_a_labeller_token_which_can_do_nothing_else(
    app: Flask, store: Store, tmp_path: Path
) -> None:
    client = app.test_client()
    body = _labels(("a", 1))
    assert client.post(URL, json=body).status_code == 401
    assert (
        client.post(URL, json=body, headers={"Authorization": "Bearer mlc_not-a-real-token"}).status_code
        == 401
    )
    assert client.post(URL, json=body, headers=adminapp.bearer(store, "viewer")).status_code == 403
    labeller = adminapp.bearer(store, "labeller")
    assert client.post(URL, json=body, headers=labeller).status_code == 200
    assert client.get("/api/v1/deployments", headers=labeller).status_code == 403
    assert client.post("/api/v1/deployments/churn/rollout/rollback", headers=labeller).status_code == 403
    assert store.labels.count() == 1
    with adminapp.running(store, tmp_path / "open", feedback_auth="open") as open_app:
        assert open_app.test_client().post(URL, json=_labels(("b", 0))).status_code == 200


def test_labels_are_checked_against_the_classes_and_a_bad_one_is_named(app: Flask, store: Store) -> None:
    client = app.test_client()
    labeller = adminapp.bearer(store, "labeller")
    for bad in ("yes", True, 2, 0.5, "", "1.0x"):
        response = client.post(URL, json=_labels(("a", 1), ("b", bad)), headers=labeller)
        assert response.status_code == 400, bad
        message = response.get_json()["error"]["message"]
        assert "labels[1].label" in message and "classes 0, 1" in message, message
    assert store.labels.count() == 0
    response = client.post(URL, json=_labels(("a", 1), ("b", "0"), ("c", 1.0)), headers=labeller)
    assert response.status_code == 200 and response.get_json()["stored"] == 3


def test_regression_labels_must_be_finite_numbers(store: Store, tmp_path: Path) -> None:
    deployment = mlpipes.deploy(
        store, "spend", mlpipes.register(store, tmp_path, name="spend", kind="regression")
    )
    store.pairs.insert_many([_pair("a", deployment.id)])
    with adminapp.running(store, tmp_path) as app:
        client, labeller = app.test_client(), adminapp.bearer(store, "labeller")
        for bad in ("3.5", "high", True):
            response = client.post("/v1/models/spend/feedback", json=_labels(("a", bad)), headers=labeller)
            assert response.status_code == 400 and "finite number" in response.get_json()["error"]["message"]
        response = client.post("/v1/models/spend/feedback", json=_labels(("a", 41.5)), headers=labeller)
        assert response.status_code == 200
    assert store.labels.get("a").label_value == 41.5


def test_labels_of_unknown_requests_are_kept_only_within_the_pending_window(
    app: Flask, store: Store, churn: int
) -> None:
    client, labeller = app.test_client(), adminapp.bearer(store, "labeller")
    response = client.post(URL, json=_labels(*[(f"u{i}", 1) for i in range(5)]), headers=labeller)
    assert response.get_json() == {
        "stored": 3, "unknown_request_ids": [f"u{i}" for i in range(5)], "dropped_request_ids": ["u3", "u4"],
    }  # fmt: skip
    assert store.labels.count() == 3
    store.pairs.insert_many([_pair("u0", churn), _pair("u1", churn)])  # two pairs land: their labels join
    response = client.post(URL, json=_labels(("v0", 0), ("v1", 0), ("v2", 0)), headers=labeller)
    assert response.get_json()["dropped_request_ids"] == ["v2"]  # room for 3 - 1 pending (u2)
    assert store.labels.count(deployment_id=churn) == 5
    # pending labels older than the window (an hour by default) are dropped at the next feedback
    store.labels.store(churn, [("old", 0, 1)], now=datetime.now(UTC) - timedelta(hours=2))
    client.post(URL, json=_labels(("a", 1)), headers=labeller)
    with pytest.raises(LookupError):
        store.labels.get("old")
    assert store.labels.get("u0").label == 1  # joined labels are never expired as pending


def test_labels_per_request_and_per_second_are_bounded(app: Flask, store: Store) -> None:
    client, labeller = app.test_client(), adminapp.bearer(store, "labeller")
    many = _labels(*[("a", 1)] * 21)
    response = client.post(URL, json=many, headers=labeller)
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "too_many_labels"
    assert client.post(URL, json=_labels(*[("a", 1)] * 20), headers=labeller).status_code == 200
    limited = client.post(URL, json=_labels(("b", 1), ("c", 1), ("a", 0)), headers=labeller)
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert store.labels.get("a").label == 1 and store.labels.count() == 1
