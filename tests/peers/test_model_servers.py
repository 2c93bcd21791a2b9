"""mlcanary in front of the model servers people run, each a real process on loopback.

For every server and encoding: a shadow rollout whose challenger is the server and whose champion is
the same fitted pipeline in process. Every row must give a complete pair, the challenger's answers
must be the server's own (asked directly, with a request written here by hand), and both arms must
agree with scikit-learn's predict on the same rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import mlpipes
import pandas as pd
import peers
import pytest
from peers import NUMERIC, Models, frame_of

from controller import registry
from controller.loop import actions
from router import parity
from router.backends.upstream import UpstreamTools
from router.settings import RouterSettings
from storage import Store
from storage.entities import PipelineVersion

# The first run builds the servers' environments inside a fixture (minutes): a longer timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

REQUESTS, ROWS = 8, 3


def _champion(store: Store, tmp_path: Path, model: Any, sample: pd.DataFrame) -> PipelineVersion:
    """Register the same fitted pipeline as an in-process version (skops)."""
    path = mlpipes.save(model, tmp_path / "sources", "champion")
    return registry.register_artifact(
        store, name="churn", version="1", artifact=path, task="classification",
        artifact_dir=tmp_path / "artifacts", sample=sample,
    )  # fmt: skip


def _shadow(store: Store, make_app: Any, champion: PipelineVersion, challenger: PipelineVersion,
            frame: pd.DataFrame) -> list[Any]:  # fmt: skip
    """Serve REQUESTS requests of ROWS rows through a shadow rollout; return the pairs, in row order."""
    deployment = mlpipes.deploy(store, "churn", champion)
    mlpipes.start_rollout(store, deployment, challenger, mode="shadow")
    app = make_app()
    client = app.test_client()
    for i in range(REQUESTS):
        part = frame.iloc[i * ROWS : (i + 1) * ROWS]
        body = {"dataframe_split": json.loads(part.to_json(orient="split", index=False))}
        response = client.post(
            "/v1/models/churn/invocations", json=body, headers={"X-Request-Id": f"q{i:02d}"}
        )
        assert response.status_code == 200, response.json
        assert response.headers["X-Mlcanary-Arm"] == "champion"
    app.extensions["mlcanary.dataplane"].close(timeout=20)
    pairs = sorted(store.pairs.list(), key=lambda p: (p.request_id, p.row_index))
    assert not [e for e in store.events.list() if e.action == "router.parity_failed"]
    return pairs


def _check_pairs(pairs: list[Any], direct: list[Any], expected: list[Any]) -> None:
    assert len(pairs) == REQUESTS * ROWS
    assert all(p.champion_error is None and p.challenger_error is None for p in pairs), [
        p.challenger_error for p in pairs if p.challenger_error
    ][:1]
    assert [p.challenger_class for p in pairs] == [str(v) for v in direct]
    assert [p.champion_class for p in pairs] == [str(v) for v in expected]
    assert [p.challenger_class for p in pairs] == [p.champion_class for p in pairs]


def _post(url: str, body: dict[str, Any]) -> Any:
    response = httpx.post(url, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _v2_pandas_body(frame: pd.DataFrame) -> dict[str, Any]:
    """What KServe's and MLServer's docs send: one input per column and content_type pd."""
    types = {"f": "FP64", "i": "INT64", "b": "BOOL"}
    inputs = [
        {"name": c, "shape": [len(frame)], "datatype": types.get(frame[c].dtype.kind, "BYTES"),
         "data": [None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in frame[c]]}
        for c in frame.columns
    ]  # fmt: skip
    return {"inputs": inputs, "parameters": {"content_type": "pd"}}


def _v2_tensor_body(frame: pd.DataFrame, name: str = "input-0") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": list(frame.shape), "datatype": "FP64",
                        "data": frame.to_numpy().tolist()}]}  # fmt: skip


def _flat(data: list[Any]) -> list[Any]:
    return [x for v in data for x in (v if isinstance(v, list) else [v])]


def _register(store: Store, url: str, kind: str, frame: pd.DataFrame, **settings: Any) -> PipelineVersion:
    return registry.register_upstream(
        store, name="churn-remote", version=kind, url=url, protocol=None, task="classification",
        schema=registry.schema_from_frame(frame), classes=(0, 1), kind=kind, settings=settings,
        tools=UpstreamTools(timeout_s=30), sample=frame, golden=frame.head(12),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ MLServer


def test_mlserver_pandas_model_shadows_with_its_own_answers_and_probabilities(
    mlserver: peers.PeerServer, models: Models, store: Store, make_app: Any, tmp_path: Path
) -> None:
    frame = frame_of(REQUESTS * ROWS, seed=11)  # with missing values: MLServer's pd codec reads null
    champion = _champion(store, tmp_path, models.columns, frame)
    challenger = _register(store, f"{mlserver.url}/v2/models/churn", "mlserver", frame)
    assert challenger.upstream_config and challenger.upstream_config["encoding"] == "v2-columns"
    assert challenger.golden_set and challenger.golden_set["outputs"]["prediction"] == (
        models.columns.predict(frame.head(12)).tolist()
    )
    answer = _post(
        f"{mlserver.url}/v2/models/churn/infer",
        {**_v2_pandas_body(frame), "outputs": [{"name": "predict"}, {"name": "predict_proba"}]},
    )
    outputs = {o["name"]: o for o in answer["outputs"]}
    direct = _flat(outputs["predict"]["data"])
    pairs = _shadow(store, make_app, champion, challenger, frame)
    _check_pairs(pairs, direct, models.columns.predict(frame).tolist())
    proba = models.columns.predict_proba(frame)[:, 1]
    served = _flat(outputs["predict_proba"]["data"])[1::2]
    assert [p.challenger_score for p in pairs] == pytest.approx(served, rel=1e-12, abs=1e-15)
    assert [p.challenger_score for p in pairs] == pytest.approx(proba.tolist(), rel=1e-9)


def test_mlserver_numpy_model_is_sent_one_2d_tensor(
    mlserver: peers.PeerServer, models: Models, store: Store, make_app: Any, tmp_path: Path
) -> None:
    frame = frame_of(REQUESTS * ROWS, seed=12, numeric_only=True).fillna(50.0)
    champion = _champion(store, tmp_path, models.tensor, frame)
    challenger = _register(store, f"{mlserver.url}/v2/models/tensor", "mlserver", frame, encoding="v2-tensor")
    answer = _post(f"{mlserver.url}/v2/models/tensor/infer", _v2_tensor_body(frame))
    direct = _flat(answer["outputs"][0]["data"])
    pairs = _shadow(store, make_app, champion, challenger, frame)
    _check_pairs(pairs, direct, models.tensor.predict(frame.to_numpy()).tolist())
    proba = models.tensor.predict_proba(frame.to_numpy())[:, 1]
    assert [p.challenger_score for p in pairs] == pytest.approx(proba.tolist(), rel=1e-9)


def test_registration_refuses_an_encoding_the_server_cannot_read_with_its_error(
    mlserver: peers.PeerServer, store: Store
) -> None:
    frame = frame_of(5, seed=13, numeric_only=True).fillna(1.0)
    with pytest.raises(
        registry.RegistrationError, match=r"probe failed: x:1 answered 500: .*Error"
    ) as caught:
        registry.register_upstream(
            store, name="x", version="1", url=f"{mlserver.url}/v2/models/churn", protocol=None,
            task="classification", schema=registry.schema_from_frame(frame), kind="mlserver",
            settings={"encoding": "v2-tensor"}, tools=UpstreamTools(timeout_s=30), sample=frame,
        )  # fmt: skip
    assert "\n" not in str(caught.value)
    assert store.pipelines.list() == []


def test_a_changed_model_behind_the_same_url_fails_the_parity_gate_at_load_and_at_rollout_start(
    mlserver: peers.PeerServer, models: Models, store: Store, make_app: Any, tmp_path: Path,
    settings: RouterSettings,
) -> None:  # fmt: skip
    frame = frame_of(20, seed=14, numeric_only=True).fillna(50.0)
    champion = _champion(store, tmp_path, models.tensor, frame)
    deployment = mlpipes.deploy(store, "churn", champion)
    url = f"{mlserver.url}/v2/models/swapped"
    folder = models.directory / "mlserver" / "swapped"
    folder.mkdir(exist_ok=True)
    (folder / "model.joblib").write_bytes(models.tensor_path.read_bytes())
    settings_json = {"name": "swapped", "implementation": "mlserver_sklearn.SKLearnModel",
                     "parameters": {"uri": "./model.joblib", "version": "v1"}}  # fmt: skip
    (folder / "model-settings.json").write_text(json.dumps(settings_json))
    assert httpx.post(f"{mlserver.url}/v2/repository/models/swapped/load", timeout=60).status_code == 200
    version = _register(store, url, "mlserver", frame, encoding="v2-tensor")
    assert parity.check(version, settings).passed

    other = mlpipes.classifier(seed=5)  # a different model, same name and URL
    numeric = frame_of(300, seed=15, numeric_only=True).fillna(50.0).to_numpy()
    other_tensor = type(models.tensor)(models.tensor.steps).fit(
        numeric, other.predict(frame_of(300, seed=15))
    )
    import joblib

    joblib.dump(other_tensor, folder / "model.joblib")
    assert httpx.post(f"{mlserver.url}/v2/repository/models/swapped/unload", timeout=60).status_code == 200
    assert httpx.post(f"{mlserver.url}/v2/repository/models/swapped/load", timeout=60).status_code == 200

    with pytest.raises(actions.ActionError, match="parity gate"):
        actions.start_rollout(
            store, "churn", version.ref, actor="tests", mode="shadow",
            parity_check=lambda v, **kw: parity.check(v, settings, **kw),
        )  # fmt: skip
    mlpipes.start_rollout(store, deployment, version, mode="shadow")
    app = make_app()
    failures = [e for e in store.events.list() if e.action == "router.parity_failed"]
    assert failures and "churn-remote:mlserver" in failures[0].message
    response = app.test_client().post(
        "/v1/models/churn/invocations",
        json={"dataframe_split": json.loads(frame.head(2).to_json(orient="split", index=False))},
    )
    assert response.status_code == 200 and response.headers["X-Mlcanary-Arm"] == "champion"


def test_v2_tensor_request_bytes_equal_tritonclients_own_encoding(mlserver_python: Path) -> None:
    from router.backends.encodings import configure, encode

    frame = frame_of(4, seed=16, numeric_only=True).fillna(0.5)
    columns = {c: frame[c].tolist() for c in NUMERIC}
    dtypes = dict.fromkeys(NUMERIC, "float")
    for datatype, dtype in (("FP64", "float64"), ("FP32", "float32")):
        config = configure(
            "triton", None, "classification", {"tensor_datatype": datatype, "request_outputs": ["output__0"]}
        )
        ours = encode(config, columns, dtypes, request_id="r1")
        theirs = peers.triton_request(mlserver_python, {
            "id": "r1", "outputs": ["output__0"],
            "inputs": [{"name": "input__0", "datatype": datatype, "dtype": dtype,
                        "array": frame.to_numpy().tolist()}],
        })  # fmt: skip
        assert ours == theirs
    ints = {c: [int(v) for v in frame[c]] for c in NUMERIC}
    config = configure("triton", None, "classification", {"tensor_datatype": "INT64", "tensor_name": "x"})
    ours = encode(config, ints, dtypes, request_id="r2")
    theirs = peers.triton_request(mlserver_python, {
        "id": "r2", "outputs": [],
        "inputs": [{"name": "x", "datatype": "INT64", "dtype": "int64",
                    "array": [[int(v) for v in row] for row in frame.to_numpy()]}],
    })  # fmt: skip
    assert json.loads(ours) == {
        k: v for k, v in json.loads(theirs).items() if k != "parameters"
    }  # tritonclient asks for binary outputs when none are named; mlcanary reads JSON outputs


# ------------------------------------------------------------------------------------------ KServe


def test_kserve_pandas_model_shadows_with_its_own_answers(
    kserve_server: peers.PeerServer, models: Models, store: Store, make_app: Any, tmp_path: Path
) -> None:
    frame = frame_of(REQUESTS * ROWS, seed=21)
    champion = _champion(store, tmp_path, models.columns, frame)
    challenger = _register(store, f"{kserve_server.url}/v2/models/churn", "kserve", frame)
    answer = _post(f"{kserve_server.url}/v2/models/churn/infer", _v2_pandas_body(frame))
    direct = _flat(answer["outputs"][0]["data"])
    pairs = _shadow(store, make_app, champion, challenger, frame)
    _check_pairs(pairs, direct, models.columns.predict(frame).tolist())
    assert all(p.challenger_score is None for p in pairs)  # KServe's sklearn convention: classes only


def test_kserve_numpy_model_is_sent_one_2d_tensor(
    kserve_server: peers.PeerServer, models: Models, store: Store, make_app: Any, tmp_path: Path
) -> None:
    frame = frame_of(REQUESTS * ROWS, seed=22, numeric_only=True).fillna(50.0)
    champion = _champion(store, tmp_path, models.tensor, frame)
    challenger = _register(
        store, f"{kserve_server.url}/v2/models/tensor", "kserve", frame, encoding="v2-tensor"
    )
    answer = _post(f"{kserve_server.url}/v2/models/tensor/infer", _v2_tensor_body(frame))
    direct = _flat(answer["outputs"][0]["data"])
    pairs = _shadow(store, make_app, champion, challenger, frame)
    _check_pairs(pairs, direct, models.tensor.predict(frame.to_numpy()).tolist())


# ------------------------------------------------------------------------------------------ MLflow


def test_mlflow_models_serve_shadows_with_its_own_answers(
    mlflow_server: peers.PeerServer, models: Models, store: Store, make_app: Any, tmp_path: Path
) -> None:
    frame = frame_of(REQUESTS * ROWS, seed=31)
    champion = _champion(store, tmp_path, models.columns, frame)
    challenger = _register(store, f"{mlflow_server.url}/invocations", "mlflow", frame)
    assert challenger.upstream_protocol == "mlflow"
    answer = _post(
        f"{mlflow_server.url}/invocations",
        {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))},
    )
    pairs = _shadow(store, make_app, champion, challenger, frame)
    _check_pairs(pairs, answer["predictions"], models.columns.predict(frame).tolist())
