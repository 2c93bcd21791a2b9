"""A 3-class pipeline's whole probability vector reaches storage: through the router's HTTP path (both
arms, shadow), through the spool and its replay, and out of a V2 server's probability tensor."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import irispipes
import mlpipes
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from router import create_app
from router.backends.encodings import UpstreamConfig, read_mlflow, read_v2
from router.settings import RouterSettings
from storage import Database, Store
from storage import schema as db_schema

FRAME, _ = irispipes.iris_frame(30, seed=5)
CHAMPION = irispipes.fit(LogisticRegression(max_iter=500))
CHALLENGER = irispipes.fit(DecisionTreeClassifier(max_depth=3, random_state=0), seed=1)


def _body(start: int, rows: int) -> dict[str, Any]:
    part = FRAME.iloc[start : start + rows]
    return {"dataframe_split": json.loads(part.to_json(orient="split", index=False))}


def _expected(model: Any, i: int) -> dict[str, float]:
    proba = model.predict_proba(FRAME.iloc[i : i + 1])[0]
    return {str(c): float(p) for c, p in zip(model.classes_, proba, strict=True)}


def _wait(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return bool(predicate())


def test_both_arms_store_their_class_probabilities_through_the_router(
    sqlite_store: Store, tmp_path: Path, make_app: Any
) -> None:
    champion = irispipes.register(sqlite_store, tmp_path, version="1", model=CHAMPION)
    challenger = irispipes.register(sqlite_store, tmp_path, version="2", model=CHALLENGER)
    deployment = mlpipes.deploy(sqlite_store, "iris", champion)
    mlpipes.start_rollout(sqlite_store, deployment, challenger, mode="shadow")
    app = make_app()
    client = app.test_client()
    for k in range(10):
        response = client.post(
            "/v1/models/iris/invocations", json=_body(3 * k, 3), headers={"X-Request-Id": f"r{k}"}
        )
        assert response.status_code == 200
    app.extensions["mlcanary.dataplane"].close(timeout=10)
    pairs = {(p.request_id, p.row_index): p for p in sqlite_store.pairs.list(limit=100)}
    assert len(pairs) == 30
    for (rid, row), pair in pairs.items():
        i = 3 * int(rid[1:]) + row
        assert pair.champion_proba == pytest.approx(_expected(CHAMPION, i), abs=1e-12)
        assert pair.challenger_proba == pytest.approx(_expected(CHALLENGER, i), abs=1e-12)
        assert pair.champion_score == pytest.approx(max(pair.champion_proba.values()), abs=1e-12)
        assert pair.champion_class == max(pair.champion_proba, key=pair.champion_proba.__getitem__)


def test_spooled_records_keep_their_probability_vectors_when_replayed(
    tmp_path: Path, sqlite_url: str, settings: RouterSettings
) -> None:
    routing = Store(Database(sqlite_url))
    mlpipes.deploy(routing, "iris", irispipes.register(routing, tmp_path, version="1", model=CHAMPION))
    later_db = Database(f"sqlite:///{tmp_path / 'later.db'}")
    later = Store(later_db)
    app = create_app(routing, settings)
    plane = app.extensions["mlcanary.dataplane"]
    plane.recorder.store = later  # no tables yet: every batch goes to the spool
    client = app.test_client()
    for k in range(5):
        assert client.post("/v1/models/iris/invocations", json=_body(2 * k, 2), headers={"X-Request-Id": f"s{k}"}).status_code == 200  # fmt: skip
    assert _wait(lambda: plane.recorder.spooled == 10)
    spooled = [
        json.loads(line) for f in settings.spool_dir.glob("*.jsonl") for line in f.read_text().splitlines()
    ]
    assert all(set(r["champion_proba"]) == set(irispipes.SPECIES) for r in spooled)
    db_schema.upgrade(later_db)  # storage comes back, with the deployment the records refer to
    mlpipes.deploy(later, "iris", irispipes.register(later, tmp_path / "again", version="1", model=CHAMPION))
    assert _wait(lambda: later.pairs.count() == 10)
    plane.close(timeout=5)
    for pair in later.pairs.list(limit=100):
        i = 2 * int(pair.request_id[1:]) + pair.row_index
        assert pair.champion_proba == pytest.approx(_expected(CHAMPION, i), abs=1e-12)
    later_db.dispose()


def test_a_v2_probability_tensor_of_three_classes_is_kept_per_row_by_class() -> None:
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    document = {
        "outputs": [
            {"name": "predict", "shape": [2], "datatype": "BYTES", "data": ["setosa", "virginica"]},
            {"name": "predict_proba", "shape": [2, 3], "datatype": "FP64", "data": proba.ravel().tolist()},
        ]
    }
    config = UpstreamConfig(class_output="predict", proba_output="predict_proba")
    answer = read_v2(config, document, "classification", irispipes.SPECIES)
    assert answer.scores == [0.7, 0.6]
    assert answer.probabilities == [dict(zip(irispipes.SPECIES, row, strict=True)) for row in proba.tolist()]
    binary = {"outputs": [document["outputs"][0], {"name": "predict_proba", "shape": [2, 2], "datatype": "FP64", "data": [0.4, 0.6, 0.9, 0.1]}]}  # fmt: skip
    assert (
        read_v2(config, binary, "classification", ("a", "b")).probabilities is None
    )  # the score says it all


def test_an_mlflow_record_with_a_probability_per_class_is_kept_as_the_rows_vector() -> None:
    rows = [
        {"class": "setosa", "probability": {"setosa": 0.8, "versicolor": 0.15, "virginica": 0.05}},
        {"class": "virginica", "probability": {"setosa": 0.1, "versicolor": 0.2, "virginica": 0.7}},
    ]
    answer = read_mlflow(UpstreamConfig(encoding="mlflow"), {"predictions": rows}, "classification")
    assert answer.outputs == ["setosa", "virginica"] and answer.scores == [0.8, 0.7]
    assert answer.probabilities == [r["probability"] for r in rows]
    plain = [{"class": "setosa", "probability": 0.8}, {"class": "virginica", "probability": 0.7}]
    answer = read_mlflow(UpstreamConfig(encoding="mlflow"), {"predictions": plain}, "classification")
    assert answer.scores == [0.8, 0.7] and answer.probabilities is None
