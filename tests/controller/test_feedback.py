"""Labels through the data plane: bulk, idempotent, unknown request ids reported, bad bodies a 4xx JSON error."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import adminapp
import mlpipes
import pytest
from flask import Flask
from flask.testing import FlaskClient

from controller.http import feedback
from storage import Store
from storage.entities import Column, NewPipelineVersion, PairRecord, PipelineVersion

URL = "/v1/models/churn/feedback"


def record(request_id: str, deployment_id: int, row: int = 0) -> PairRecord:
    return PairRecord(
        request_id=request_id, row_index=row, deployment_id=deployment_id, rollout_id=None, step=None,
        received_at=datetime.now(UTC), routing_key_hash=0, served_arm="champion", champion_version_id=None,
        challenger_version_id=None,
    )  # fmt: skip


def upstream(store: Store) -> PipelineVersion:
    """A pipeline version that needs no fitting (feedback never scores)."""
    return store.pipelines.add(
        NewPipelineVersion(
            name="churn", version="1", kind="http", task="classification", input_schema=(Column("age", "float"),),
            upstream_url="http://127.0.0.1:9/", upstream_protocol="v2",
        )
    )  # fmt: skip


@pytest.fixture
def churn(store: Store) -> int:
    """A deployment "churn" that answered requests a, b (two rows) and c."""
    deployment = mlpipes.deploy(store, "churn", upstream(store))
    store.pairs.insert_many(
        [
            record("a", deployment.id),
            record("b", deployment.id),
            record("b", deployment.id, 1),
            record("c", deployment.id),
        ]
    )
    return deployment.id


def labeller_clients(app: Flask, store: Store) -> Flask:
    """Make the app's test clients send a labeller token (feedback needs one by default)."""
    token, _ = store.tokens.create(f"labeller-{id(app)}", "labeller")

    class Labeller(FlaskClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"

    app.test_client_class = Labeller
    return app


@pytest.fixture
def app(store: Store, tmp_path: Path, churn: int) -> Iterator[Flask]:
    with adminapp.running(store, tmp_path) as built:
        yield labeller_clients(built, store)


def test_the_router_role_serves_feedback_too(store: Store, tmp_path: Path, churn: int) -> None:
    with adminapp.running(store, tmp_path, role="router") as router_app:
        client = labeller_clients(router_app, store).test_client()
        response = client.post(URL, json={"labels": [{"request_id": "a", "label": 1}]})
    assert response.get_json() == {"stored": 1, "unknown_request_ids": [], "dropped_request_ids": []}


def test_labels_are_stored_and_unknown_request_ids_reported(app: Flask, store: Store) -> None:
    body = {
        "labels": [
            {"request_id": "a", "label": 1},
            {"request_id": "b", "row": 1, "label": "yes"},
            {"request_id": "nope", "label": 0},
        ]
    }
    response = app.test_client().post(URL, json=body)
    assert response.status_code == 200
    assert response.get_json() == {"stored": 3, "unknown_request_ids": ["nope"], "dropped_request_ids": []}
    assert store.labels.get("a").label == 1
    assert store.labels.get("b", 1).label == "yes"
    assert store.labels.get("nope").label == 0  # kept until its pair lands (or prune removes it)
    assert store.labels.count() == 3


def test_resending_a_batch_is_idempotent_and_the_last_label_wins(app: Flask, store: Store) -> None:
    client = app.test_client()
    body = {"labels": [{"request_id": "a", "label": 0}, {"request_id": "c", "label": 1}]}
    assert client.post(URL, json=body).get_json()["stored"] == 2
    assert client.post(URL, json=body).get_json()["stored"] == 2
    assert store.labels.count() == 2
    client.post(URL, json={"labels": [{"request_id": "a", "label": 1}]})
    assert store.labels.get("a").label == 1
    assert store.labels.count() == 2


def test_a_request_row_repeated_in_one_batch_keeps_its_last_label(app: Flask, store: Store) -> None:
    body = {"labels": [{"request_id": "a", "label": 0}, {"request_id": "a", "label": 1}]}
    response = app.test_client().post(URL, json=body)
    assert response.get_json() == {"stored": 1, "unknown_request_ids": [], "dropped_request_ids": []}
    assert store.labels.get("a").label == 1


def test_a_batch_of_only_unknown_ids_is_not_an_error(app: Flask, store: Store) -> None:
    response = app.test_client().post(URL, json={"labels": [{"request_id": "x", "label": 1}]})
    assert response.status_code == 200
    assert response.get_json() == {"stored": 1, "unknown_request_ids": ["x"], "dropped_request_ids": []}


BAD_BODIES: list[tuple[Any, str]] = [
    ([], "invalid_labels"),
    ({}, "invalid_labels"),
    ({"labels": []}, "invalid_labels"),
    ({"labels": "a"}, "invalid_labels"),
    ({"labels": [1]}, "invalid_labels"),
    ({"labels": [{"label": 1}]}, "invalid_labels"),
    ({"labels": [{"request_id": "", "label": 1}]}, "invalid_labels"),
    ({"labels": [{"request_id": 5, "label": 1}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a" * 129, "label": 1}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a"}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "label": None}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "label": [1, 2]}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "label": {"x": 1}}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "label": 1, "row": -1}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "label": 1, "row": "0"}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "label": 1, "row": True}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "label": 1, "extra": 2}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "label": 1}], "more": 1}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "outcome": "12"}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "outcome": True}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "outcome": None}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "label": 1, "outcome": [1]}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "label": 1, "outcome_base": 2}]}, "invalid_labels"),
    ({"labels": [{"request_id": "a", "outcome": 1, "outcome_base": "2"}]}, "invalid_labels"),
]


def test_a_bad_body_is_a_400_naming_the_problem_and_stores_nothing(app: Flask, store: Store) -> None:
    client = app.test_client()
    for body, code in BAD_BODIES:
        response = client.post(URL, json=body)
        assert response.status_code == 400, body
        error = response.get_json()["error"]
        assert error["code"] == code
        assert error["message"]
    assert store.labels.count() == 0


def test_one_bad_item_refuses_the_whole_batch(app: Flask, store: Store) -> None:
    body = {"labels": [{"request_id": "a", "label": 1}, {"request_id": "b", "label": None}]}
    response = app.test_client().post(URL, json=body)
    assert response.status_code == 400
    assert "labels[1].label" in response.get_json()["error"]["message"]
    assert store.labels.count() == 0


def test_malformed_json_non_json_and_huge_batches_are_refused(app: Flask) -> None:
    client = app.test_client()
    malformed = client.post(URL, data="{not json", content_type="application/json")
    assert (malformed.status_code, malformed.get_json()["error"]["code"]) == (400, "invalid_json")
    text = client.post(URL, data="request_id,label\na,1\n", content_type="text/csv")
    assert (text.status_code, text.get_json()["error"]["code"]) == (415, "unsupported_media_type")
    many = {"labels": [{"request_id": f"r{i}", "label": 1} for i in range(feedback.MAX_LABELS + 1)]}
    assert client.post(URL, json=many).status_code == 413


def test_an_unknown_deployment_is_a_404(app: Flask) -> None:
    response = app.test_client().post(
        "/v1/models/nope/feedback", json={"labels": [{"request_id": "a", "label": 1}]}
    )
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "deployment_not_found"


def test_labels_of_another_deployment_are_unknown_here(app: Flask, store: Store) -> None:
    other = mlpipes.deploy(store, "other", store.pipelines.get_by_ref("churn:1"))
    store.pairs.insert_many([record("z", other.id)])
    response = app.test_client().post(URL, json={"labels": [{"request_id": "z", "label": 1}]})
    # request ids are per deployment: kept pending for churn's own "z", never joined to other's
    assert response.get_json() == {"stored": 1, "unknown_request_ids": ["z"], "dropped_request_ids": []}
    assert store.labels.count(deployment_id=other.id) == 0


def test_feedback_writes_no_event(app: Flask, store: Store) -> None:
    before = store.events.list(limit=1000)
    response = app.test_client().post(URL, json={"labels": [{"request_id": "a", "label": 1}]})
    assert response.status_code == 200
    assert store.events.list(limit=1000) == before


def test_an_outcome_is_stored_next_to_the_label_or_instead_of_it(app: Flask, store: Store) -> None:
    client = app.test_client()
    body = {
        "labels": [
            {"request_id": "a", "label": 1, "outcome": 12.5},
            {"request_id": "b", "outcome": 0},
            {"request_id": "c", "label": "no"},
        ]
    }
    assert client.post(URL, json=body).get_json() == {
        "stored": 3,
        "unknown_request_ids": [],
        "dropped_request_ids": [],
    }
    a, b, c = store.labels.get("a"), store.labels.get("b"), store.labels.get("c")
    assert (a.label, a.outcome) == (1, 12.5)
    assert (b.label, b.label_class, b.outcome) == (None, None, 0.0)
    assert (c.label, c.outcome) == ("no", None)
    # sent separately later, neither erases the other
    client.post(URL, json={"labels": [{"request_id": "a", "outcome": 3}, {"request_id": "b", "label": 0}]})
    assert (store.labels.get("a").label, store.labels.get("a").outcome) == (1, 3.0)
    assert (store.labels.get("b").label, store.labels.get("b").outcome) == (0, 0.0)
    client.post(URL, json={"labels": [{"request_id": "c", "outcome": 24.9, "outcome_base": 3}]})
    assert (store.labels.get("c").outcome, store.labels.get("c").outcome_base) == (24.9, 3.0)


def test_a_non_numeric_outcome_is_a_400_naming_the_field(app: Flask, store: Store) -> None:
    response = app.test_client().post(URL, json={"labels": [{"request_id": "a", "outcome": "lots"}]})
    assert response.status_code == 400
    assert "labels[0].outcome" in response.get_json()["error"]["message"]
    assert store.labels.count() == 0
