"""The parity gate on real fitted pipelines: each typical training/serving skew is caught and explained."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import mlpipes
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from controller import registry
from router import parity
from router.backends import create_backend
from router.settings import RouterSettings
from storage import Database, Store
from storage.entities import Column, PipelineVersion


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Any:
    db = Database(sqlite_url)
    yield Store(db)
    db.dispose()


def research_golden(model: Any, frame: pd.DataFrame, *, features: Any = None) -> dict[str, Any]:
    """Golden set as research records it: the raw input rows and the research pipeline's outputs on them."""
    scored = frame if features is None else features
    return {
        "inputs": json.loads(frame.to_json(orient="split", index=False)),
        "outputs": {
            "prediction": [v.item() if hasattr(v, "item") else v for v in model.predict(scored)],
            "proba": model.predict_proba(scored).tolist(),
        },
    }


def register(
    store: Store,
    tmp_path: Path,
    served: Any,
    golden_set: dict[str, Any] | None,
    *,
    version: str,
    schema: tuple[Column, ...] | None = None,
    environment: dict[str, Any] | None = None,
) -> PipelineVersion:
    artifact = mlpipes.save(served, tmp_path / "src", f"m-{version}")
    return registry.register_artifact(
        store,
        name="churn",
        version=version,
        artifact=artifact,
        task="classification",
        artifact_dir=tmp_path / "artifacts",
        schema=schema or mlpipes.input_schema(mlpipes.churn_frame(5)[0]),
        golden_set=golden_set,
        environment=environment,
    )


def test_a_correct_pipeline_passes_with_no_differences(sqlite_store: Store, tmp_path: Path) -> None:
    model = mlpipes.classifier()
    golden, _ = mlpipes.churn_frame(120, seed=5)
    version = register(sqlite_store, tmp_path, model, research_golden(model, golden), version="1")

    report = parity.check(version, RouterSettings())

    assert report.checked and report.passed
    assert report.rows_checked == 120 and report.mismatched_rows == 0 and not report.mismatches
    assert not report.environment_differences and not report.decoding_changes
    assert "120 golden rows reproduced" in report.message()
    assert json.dumps(report.to_dict())  # storable as an event's details


def test_column_order_difference_between_training_and_serving_is_caught(
    sqlite_store: Store, tmp_path: Path
) -> None:
    # Research trained on a numpy array (no feature names) in its own column order; the registered
    # schema lists the columns in another order, so serving hands the pipeline permuted columns.
    frame, target = mlpipes.churn_frame(400, seed=1, missing=0.0)
    research_order = ["age", "tenure_months", "monthly_charges", "support_calls"]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(frame[research_order].to_numpy(), target)
    golden = frame[research_order].head(60)
    golden_set = research_golden(model, golden, features=golden.to_numpy())
    schema = tuple(Column(name, "float") for name in sorted(research_order))  # alphabetical: not research's
    version = register(sqlite_store, tmp_path, model, golden_set, version="order", schema=schema)

    with pytest.warns(UserWarning, match="feature names"):
        report = parity.check(version)

    assert not report.passed
    assert report.mismatched_rows > 0
    first = report.mismatches[0]
    assert first.output in ("prediction", "score")
    assert first.expected != first.actual and set(first.inputs) == set(research_order)
    assert any("reorders them to the registered schema" in n for n in report.notes)
    assert "golden rows differ" in report.message()


def test_dtype_difference_between_training_and_serving_is_caught(sqlite_store: Store, tmp_path: Path) -> None:
    # Research one-hot encoded an integer plan code; the registered schema calls it str, so serving
    # decodes 1 as "1", which the fitted encoder has never seen.
    frame, target = mlpipes.churn_frame(400, seed=2, missing=0.0)
    frame = frame.assign(plan_code=frame["plan"].map({"basic": 1, "plus": 2, "pro": 3}).astype("int64"))
    columns = ["tenure_months", "monthly_charges", "plan_code"]
    model = Pipeline([
        ("prepare", ColumnTransformer([
            ("numeric", StandardScaler(), ["tenure_months", "monthly_charges"]),
            ("code", OneHotEncoder(handle_unknown="ignore"), ["plan_code"]),
        ])),
        ("model", LogisticRegression(max_iter=500)),
    ]).fit(frame[columns], target)  # fmt: skip
    golden = frame[columns].head(80)
    schema = (
        Column("tenure_months", "float"),
        Column("monthly_charges", "float"),
        Column("plan_code", "str"),
    )
    version = register(
        sqlite_store, tmp_path, model, research_golden(model, golden), version="dtype", schema=schema
    )

    report = parity.check(version)

    assert not report.passed
    assert report.error is not None or report.mismatched_rows > 0
    assert report.decoding_summary.get("plan_code") == 80
    change = next(c for c in report.decoding_changes if c.column == "plan_code")
    assert (
        isinstance(change.sent, int)
        and isinstance(change.decoded, str)
        and change.decoded == str(change.sent)
    )
    assert "plan_code in 80 rows" in report.message()


def test_preprocessing_fitted_on_different_data_is_caught(sqlite_store: Store, tmp_path: Path) -> None:
    research = mlpipes.classifier(seed=0)
    served = copy.deepcopy(research)
    other, _ = mlpipes.churn_frame(400, seed=9)
    other = other.assign(monthly_charges=other["monthly_charges"] * 1.5 + 20)  # another population
    numeric = list(mlpipes.NUMERIC + mlpipes.INTEGER + mlpipes.BOOLEAN)
    served.named_steps["prepare"].named_transformers_["numeric"].fit(other[numeric])  # scaler refit elsewhere
    golden, _ = mlpipes.churn_frame(100, seed=4)
    version = register(sqlite_store, tmp_path, served, research_golden(research, golden), version="refit")

    report = parity.check(version)

    assert not report.passed
    assert report.mismatched_rows >= 90  # every score moves
    scores = [m for m in report.mismatches if m.output == "score"]
    assert scores and all(m.relative_error is not None and m.relative_error > 1e-6 for m in scores)
    assert not report.decoding_changes  # the inputs arrived intact: the artifact is what differs
    assert f"{report.mismatched_rows} of 100 golden rows differ" in report.message()


def test_a_library_version_that_changes_outputs_is_caught_and_the_environment_difference_warned(
    sqlite_store: Store, tmp_path: Path
) -> None:
    model = mlpipes.classifier()
    golden, _ = mlpipes.churn_frame(50, seed=6)
    golden_set = research_golden(model, golden)
    # Research ran another scikit-learn whose solver gave scores 1e-6 (relative) away from ours.
    golden_set["outputs"]["proba"] = [
        [1 - q * (1 + 1e-6), q * (1 + 1e-6)] for _, q in golden_set["outputs"]["proba"]
    ]
    research_env = {**registry.environment_fingerprint(), "scikit-learn": "1.3.2", "numpy": "1.26.4"}
    version = register(sqlite_store, tmp_path, model, golden_set, version="lib", environment=research_env)

    report = parity.check(version)

    assert not report.passed and report.mismatched_rows == 50
    assert {m.output for m in report.mismatches} == {"score"}  # the classes still agree
    assert report.mismatches[0].relative_error == pytest.approx(1e-6, rel=0.5)
    differing = {d.key: (d.research, d.serving) for d in report.environment_differences}
    assert differing["scikit-learn"][0] == "1.3.2" and differing["numpy"][0] == "1.26.4"
    assert "scikit-learn 1.3.2 -> " in report.message()


def test_a_library_version_within_tolerance_passes_but_still_warns(
    sqlite_store: Store, tmp_path: Path
) -> None:
    model = mlpipes.classifier()
    golden, _ = mlpipes.churn_frame(50, seed=6)
    golden_set = research_golden(model, golden)
    golden_set["outputs"]["proba"] = [[p, q * (1 + 1e-12)] for p, q in golden_set["outputs"]["proba"]]
    research_env = {**registry.environment_fingerprint(), "scikit-learn": "1.3.2"}
    version = register(sqlite_store, tmp_path, model, golden_set, version="lib-ok", environment=research_env)

    report = parity.check(version)

    assert report.passed and report.environment_differs
    assert [d.key for d in report.environment_differences] == ["scikit-learn"]


def test_a_looser_tolerance_accepts_what_the_default_refuses(sqlite_store: Store, tmp_path: Path) -> None:
    model = mlpipes.classifier()
    golden, _ = mlpipes.churn_frame(40, seed=6)
    golden_set = research_golden(model, golden)
    golden_set["outputs"]["proba"] = [[p, q * (1 + 1e-7)] for p, q in golden_set["outputs"]["proba"]]
    version = register(sqlite_store, tmp_path, model, golden_set, version="tol")

    assert not parity.check(version).passed
    assert parity.check(version, rtol=1e-6).passed


def test_a_missing_value_encoding_that_differs_between_json_and_pandas_is_caught(
    sqlite_store: Store, tmp_path: Path
) -> None:
    # Research wrote missing categories as "" (a sentinel) and the encoder learnt "" as a category;
    # the JSON protocol decodes "" as a missing value (NaN), which that encoder has never seen.
    frame, target = mlpipes.churn_frame(400, seed=3, missing=0.15)
    for name in mlpipes.CATEGORICAL:
        frame[name] = frame[name].astype(object).where(frame[name].notna(), "")
    numeric = list(mlpipes.NUMERIC + mlpipes.INTEGER)
    model = Pipeline([
        ("prepare", ColumnTransformer([
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), list(mlpipes.CATEGORICAL)),
        ])),
        ("model", LogisticRegression(max_iter=500)),
    ]).fit(frame, target)  # fmt: skip
    golden = frame.head(120)
    blanks = int((golden[list(mlpipes.CATEGORICAL)] == "").any(axis=1).sum())
    assert blanks > 0
    version = register(sqlite_store, tmp_path, model, research_golden(model, golden), version="blank")

    report = parity.check(version)

    assert not report.passed
    assert 0 < report.mismatched_rows <= blanks
    for m in report.mismatches:  # only rows with a blank category differ
        assert "" in (m.inputs["plan"], m.inputs["region"])
    change = report.decoding_changes[0]
    assert change.sent == "" and change.decoded is None and "decoded as missing" in change.note
    assert sum(report.decoding_summary.values()) >= blanks
    assert "decoded inputs differently" in report.message()


def test_a_version_without_golden_set_is_reported_unchecked(sqlite_store: Store, tmp_path: Path) -> None:
    version = mlpipes.register(sqlite_store, tmp_path, version="plain")
    report = parity.check(version)
    assert report.passed and not report.checked and "no golden set" in report.message()


def test_a_pipeline_that_cannot_load_fails_parity_with_the_reason(
    sqlite_store: Store, tmp_path: Path
) -> None:
    model = mlpipes.classifier()
    golden, _ = mlpipes.churn_frame(10, seed=6)
    version = register(sqlite_store, tmp_path, model, research_golden(model, golden), version="gone")
    Path(version.artifact_path or "").write_bytes(b"tampered")
    report = parity.check(version)
    assert not report.passed and report.error is not None and "sha" in report.error.lower()


def test_a_router_backend_can_be_reused_and_stays_open(sqlite_store: Store, tmp_path: Path) -> None:
    model = mlpipes.classifier()
    golden, _ = mlpipes.churn_frame(30, seed=8)
    version = register(sqlite_store, tmp_path, model, research_golden(model, golden), version="reuse")
    backend = create_backend(version, RouterSettings())
    assert parity.check(version, backend=backend).passed
    assert len(backend.predict(golden)) == 30


def test_large_golden_sets_are_sent_in_batches_a_client_could_send(
    sqlite_store: Store, tmp_path: Path
) -> None:
    model = mlpipes.classifier()
    golden, _ = mlpipes.churn_frame(250, seed=8)
    version = register(sqlite_store, tmp_path, model, research_golden(model, golden), version="big")
    report = parity.check(version, RouterSettings(max_rows=100))
    assert report.passed and report.rows_checked == 250


def test_an_environment_recorded_without_a_fingerprint_shows_no_differences() -> None:
    assert parity.environment_differences({}, parity.serving_environment()) == ()


def test_regression_values_are_compared_within_tolerance(sqlite_store: Store, tmp_path: Path) -> None:
    model = mlpipes.regressor()
    golden, _ = mlpipes.churn_frame(40, seed=2)
    values = [float(v) for v in model.predict(golden)]
    values[7] += 0.5
    golden_set = {
        "inputs": json.loads(golden.to_json(orient="split", index=False)),
        "outputs": {"prediction": values},
    }
    artifact = mlpipes.save(model, tmp_path / "src", "reg")
    version = registry.register_artifact(
        sqlite_store,
        name="spend",
        version="1",
        artifact=artifact,
        task="regression",
        artifact_dir=tmp_path / "artifacts",
        schema=mlpipes.input_schema(golden),
        golden_set=golden_set,
    )
    report = parity.check(version)
    assert not report.passed and report.mismatched_rows == 1
    (m,) = report.mismatches
    assert m.row == 7 and m.output == "prediction" and np.isclose(m.expected - m.actual, 0.5)


# ------------------------------------------------------------------------------ where the gate runs
def _skewed_pair(store: Store, tmp_path: Path) -> tuple[PipelineVersion, PipelineVersion, PipelineVersion]:
    """A champion, a correct challenger and a challenger whose scaler was fitted on other data."""
    research = mlpipes.classifier(seed=0)
    golden, _ = mlpipes.churn_frame(60, seed=4)
    champion = register(store, tmp_path, research, research_golden(research, golden), version="1")
    good = mlpipes.classifier(seed=1, c=0.5)
    correct = register(store, tmp_path, good, research_golden(good, golden), version="2")
    served = copy.deepcopy(research)
    other, _ = mlpipes.churn_frame(400, seed=9)
    numeric = list(mlpipes.NUMERIC + mlpipes.INTEGER + mlpipes.BOOLEAN)
    served.named_steps["prepare"].named_transformers_["numeric"].fit(other[numeric] * 1.7)
    skewed = register(store, tmp_path, served, research_golden(research, golden), version="3-skewed")
    return champion, correct, skewed


def test_start_rollout_is_blocked_by_a_failing_parity_gate_and_the_event_lists_the_rows(
    store: Store, tmp_path: Path
) -> None:
    from controller.loop import actions

    champion, correct, skewed = _skewed_pair(store, tmp_path)
    deployment = mlpipes.deploy(store, "churn", champion)

    with pytest.raises(actions.ActionError, match="parity gate: parity failed for churn:3-skewed"):
        actions.start_rollout(store, "churn", skewed.ref, actor="alice", parity_check=parity.check)

    assert store.rollouts.list(deployment_id=deployment.id) == []
    (blocked,) = [e for e in store.events.list(deployment_id=deployment.id) if e.action == "rollout.blocked"]
    assert blocked.reason == "parity_failed" and blocked.actor == "alice"
    first = blocked.details["parity"]["mismatches"][0]
    assert {"row", "output", "expected", "actual", "relative_error", "inputs"} <= set(first)
    assert blocked.details["parity"]["passed"] is False

    rollout = actions.start_rollout(store, "churn", correct.ref, actor="alice", parity_check=parity.check)
    created = [e for e in store.events.list(rollout_id=rollout.id) if e.action == "rollout.create"][0]
    assert created.details["parity"]["passed"] is True and created.details["parity"]["rows_checked"] == 60


def test_the_policy_sets_the_parity_tolerance(sqlite_store: Store, tmp_path: Path) -> None:
    from controller.loop import actions

    model = mlpipes.classifier()
    golden, _ = mlpipes.churn_frame(30, seed=6)
    golden_set = research_golden(model, golden)
    golden_set["outputs"]["proba"] = [[p, q * (1 + 1e-7)] for p, q in golden_set["outputs"]["proba"]]
    champion = mlpipes.register(sqlite_store, tmp_path, version="1")
    near = register(sqlite_store, tmp_path, model, golden_set, version="near")
    mlpipes.deploy(sqlite_store, "churn", champion)
    with pytest.raises(actions.ActionError, match="parity"):
        actions.start_rollout(sqlite_store, "churn", near.ref, actor="a", parity_check=parity.check)
    loose = {"reproducibility": {"parity_rtol": 1e-6}}
    assert actions.start_rollout(
        sqlite_store, "churn", near.ref, actor="a", policy=loose, parity_check=parity.check
    )


def test_the_admin_api_refuses_a_rollout_that_fails_parity_with_409(store: Store, tmp_path: Path) -> None:
    import adminapp

    champion, _correct, skewed = _skewed_pair(store, tmp_path)
    mlpipes.deploy(store, "churn", champion)
    with adminapp.running(store, tmp_path) as app:
        response = app.test_client().post(
            "/api/v1/deployments/churn/rollouts",
            json={"challenger": skewed.ref},
            headers=adminapp.bearer(store, "operator", "olivia"),
        )
    assert response.status_code == 409
    assert "parity failed for churn:3-skewed" in response.get_json()["error"]["message"]


def test_a_router_never_routes_a_challenger_that_fails_parity_and_records_why(
    store: Store, tmp_path: Path
) -> None:
    from router.backends import MissingBackend
    from router.routes import RouteTable

    champion, correct, skewed = _skewed_pair(store, tmp_path)
    deployment = mlpipes.deploy(store, "churn", champion)
    rollout = mlpipes.start_rollout(store, deployment, skewed, mode="canary", canary_weight=50.0)
    table = RouteTable(store, RouterSettings())
    assert table.refresh()

    route = table.get("churn")
    assert route.champion.version.id == champion.id and not isinstance(route.champion, MissingBackend)
    assert isinstance(route.challenger, MissingBackend) and "parity" in route.challenger.reason
    (event,) = [e for e in store.events.list(deployment_id=deployment.id) if e.reason == "parity_failed"]
    assert event.action == "router.parity_failed" and event.rollout_id == rollout.id
    assert event.details["parity"]["mismatched_rows"] > 0 and "champion answers" in event.message
    table.close()

    store.rollouts.update(rollout.id, expected_version=rollout.version, phase="aborted")
    mlpipes.start_rollout(store, deployment, correct, mode="canary", canary_weight=50.0)
    table = RouteTable(store, RouterSettings())
    table.refresh()
    assert not isinstance(table.get("churn").challenger, MissingBackend)
    table.close()
