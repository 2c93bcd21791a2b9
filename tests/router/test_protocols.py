"""MLflow (every format, CSV) and V2 (JSON, binary extension) requests against a real pipeline."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import mlpipes
import numpy as np
import pandas as pd
import pytest

FRAME, _ = mlpipes.churn_frame(4, seed=3)
FRAME.loc[0, "plan"] = np.nan
FRAME.loc[1, "age"] = np.nan


def _records() -> list[dict[str, Any]]:
    return json.loads(FRAME.to_json(orient="records"))


def _expected(champion_pipeline: Any) -> list[int]:
    return champion_pipeline.predict(FRAME).tolist()


@pytest.fixture
def client(make_app: Any, churn: Any) -> Any:
    return make_app().test_client()


@pytest.fixture
def pipeline(churn: Any) -> Any:
    from storage.artifacts import load_artifact

    _, champion = churn
    return load_artifact(champion.artifact_path, sha256=champion.sha256, fmt="skops")


def _split() -> dict[str, Any]:
    return json.loads(FRAME.to_json(orient="split", index=False))


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_split": _split()},
        {"dataframe_records": _records()},
        {"instances": _records()},
        {"inputs": {k: [r[k] for r in _records()] for k in FRAME.columns}},
        {"inputs": _split()["data"]},
        {"dataframe_split": _split(), "params": {"threshold": 0.5}},
    ],
    ids=["split", "records", "instances", "inputs-columnar", "inputs-rows", "with-params"],
)
def test_mlflow_json_formats_give_the_pipelines_own_predictions(
    client: Any, pipeline: Any, body: Any
) -> None:
    response = client.post("/v1/models/churn/invocations", json=body)
    assert response.status_code == 200, response.json
    assert response.json == {"predictions": _expected(pipeline)}
    assert response.headers["X-Mlcanary-Arm"] == "champion"
    assert response.headers["X-Mlcanary-Version"] == "churn:1"


def test_csv_body_is_scored_like_pandas_read_csv_would_read_it(client: Any, pipeline: Any) -> None:
    text = FRAME.to_csv(index=False)
    response = client.post("/v1/models/churn/invocations", data=text, content_type="text/csv")
    assert response.status_code == 200, response.json
    import io

    assert response.json["predictions"] == pipeline.predict(pd.read_csv(io.StringIO(text))).tolist()


def test_ragged_csv_is_refused_naming_the_line(client: Any) -> None:
    text = FRAME.to_csv(index=False).splitlines()
    text[2] += ",extra"
    response = client.post("/v1/models/churn/invocations", data="\n".join(text), content_type="text/csv")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "ragged_rows"
    assert "line 3" in response.json["error"]["message"]


def test_json_null_becomes_nan_in_every_column(client: Any, pipeline: Any) -> None:
    records = _records()
    for key in records[0]:
        if key not in ("support_calls", "autopay"):
            records[0][key] = None
    response = client.post("/v1/models/churn/invocations", json={"dataframe_records": records})
    assert response.status_code == 200, response.json
    expected = FRAME.copy()
    for key in ("age", "tenure_months", "monthly_charges", "plan", "region"):
        expected.loc[0, key] = np.nan
    assert response.json["predictions"] == pipeline.predict(expected).tolist()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            {"dataframe_records": [{k: v for k, v in r.items() if k != "age"} for r in _records()]},
            "missing_columns",
        ),
        ({"dataframe_records": [{**r, "colour": "red"} for r in _records()]}, "unknown_columns"),
        ({"dataframe_records": [{**r, "age": "old"} for r in _records()]}, "wrong_type"),
        ({"dataframe_records": [{**r, "support_calls": 1.5} for r in _records()]}, "wrong_type"),
        ({"dataframe_records": [{**r, "support_calls": "inf"} for r in _records()]}, "wrong_type"),
        ({"dataframe_records": [{**r, "support_calls": 1e30} for r in _records()]}, "wrong_type"),
        ({"dataframe_records": [{**r, "plan": {"x": 1}} for r in _records()]}, "wrong_type"),
        ({"dataframe_records": []}, "empty_batch"),
        ({"dataframe_split": {"columns": list(FRAME.columns), "data": [[1, 2]]}}, "ragged_rows"),
        ({"dataframe_split": _split(), "instances": _records()}, "invalid_format"),
        ({}, "invalid_format"),
        ({"dataframe_split": _split(), "params": [1]}, "invalid_input"),
    ],
    ids=[
        "missing",
        "extra",
        "wrong-float",
        "wrong-int",
        "infinite-int",  # was scored as -9223372036854775808
        "int-beyond-64-bits",  # likewise
        "nested",
        "empty",
        "ragged",
        "two-keys",
        "no-key",
        "params",
    ],
)
def test_invalid_mlflow_requests_are_400_naming_the_problem(client: Any, body: Any, code: str) -> None:
    response = client.post("/v1/models/churn/invocations", json=body)
    assert response.status_code == 400
    assert response.json["error"]["code"] == code
    assert response.json["error"]["message"]


def test_malformed_bodies_and_wrong_routes_are_json_4xx_never_500(make_app: Any, churn: Any) -> None:
    client = make_app(max_body_bytes=2000).test_client()
    cases = [
        (client.post("/v1/models/churn/invocations", data="{not json", content_type="application/json"), 400),
        (client.post("/v1/models/churn/invocations", data="x" * 5000, content_type="application/json"), 413),
        (client.post("/v1/models/churn/invocations", data="<a/>", content_type="application/xml"), 415),
        (client.post("/v1/models/nope/invocations", json={"dataframe_split": _split()}), 404),
        (client.get("/v1/models/churn/invocations"), 405),
        (client.post("/v2/models/churn/infer", data=b"\xff\xfe", content_type="application/json"), 400),
        (client.post("/v2/models/churn/infer", json={"inputs": "x"}), 400),
        (client.post("/v2/models/churn/infer", json=[1, 2]), 400),
    ]
    for response, status in cases:
        assert response.status_code == status, response.data
        assert set(response.json["error"]) == {"code", "message"}


def _v2_inputs(frame: pd.DataFrame) -> list[dict[str, Any]]:
    types = {"float": "FP64", "int": "INT64", "bool": "BOOL", "str": "BYTES"}
    schema = dict((c.name, c.dtype) for c in mlpipes.input_schema(frame))
    return [
        {
            "name": name,
            "shape": [len(frame), 1],
            "datatype": types[schema[name]],
            "data": json.loads(frame[name].to_json(orient="values")),
        }
        for name in frame.columns
    ]


def test_v2_tabular_request_answers_model_name_version_id_and_outputs(client: Any, pipeline: Any) -> None:
    response = client.post("/v2/models/churn/infer", json={"id": "req-42", "inputs": _v2_inputs(FRAME)})
    assert response.status_code == 200, response.json
    body = response.json
    assert (body["model_name"], body["model_version"], body["id"]) == ("churn", "churn:1", "req-42")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["predict"]["data"] == _expected(pipeline)
    assert outputs["predict"]["shape"] == [len(FRAME)]
    proba = pipeline.predict_proba(FRAME)[:, 1]
    assert np.allclose(outputs["score"]["data"], proba)
    assert response.headers["X-Request-Id"] == "req-42"


def _bytes_tensor(values: list[Any]) -> bytes:
    out = b""
    for v in values:
        raw = str(v).encode()
        out += struct.pack("<I", len(raw)) + raw
    return out


def test_v2_binary_tensor_extension_as_tritonclient_sends_it(client: Any, pipeline: Any) -> None:
    frame = FRAME.fillna({"plan": "basic", "age": 40.0})
    header: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": True}}
    blobs = b""
    for name in frame.columns:
        values = frame[name].to_numpy()
        if values.dtype.kind == "f":
            raw, datatype = values.astype("<f8").tobytes(), "FP64"
        elif values.dtype.kind == "i":
            raw, datatype = values.astype("<i8").tobytes(), "INT64"
        elif values.dtype.kind == "b":
            raw, datatype = values.astype(bool).tobytes(), "BOOL"
        else:
            raw, datatype = _bytes_tensor(list(values)), "BYTES"
        header["inputs"].append(
            {
                "name": name,
                "shape": [len(frame), 1],
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        blobs += raw
    head = json.dumps(header).encode()
    response = client.post(
        "/v2/models/churn/infer",
        data=head + blobs,
        content_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert response.status_code == 200, response.json
    assert response.json["outputs"][0]["data"] == pipeline.predict(frame).tolist()


def test_v2_single_two_dimensional_input_is_read_in_schema_order(client: Any, pipeline: Any) -> None:
    frame = FRAME.fillna({"plan": "basic", "age": 40.0})
    rows = json.loads(frame.to_json(orient="values"))
    body = {
        "inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "BYTES", "data": rows}]
    }
    response = client.post("/v2/models/churn/infer", json=body)
    assert response.status_code == 200, response.json
    assert response.json["outputs"][0]["data"] == pipeline.predict(frame).tolist()


def test_v2_metadata_readiness_and_health_answer(client: Any) -> None:
    meta = client.get("/v2/models/churn").json
    assert [i["name"] for i in meta["inputs"]] == list(FRAME.columns)
    assert meta["versions"] == ["churn:1"]
    assert client.get("/v2/models/churn/ready").status_code == 200
    assert client.get("/v2/models/nope/ready").status_code == 404
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json["ready"] is True


def test_v2_wrong_shapes_and_types_are_400(client: Any) -> None:
    inputs = _v2_inputs(FRAME)
    inputs[0]["data"] = inputs[0]["data"][:-1]
    assert (
        client.post("/v2/models/churn/infer", json={"inputs": inputs}).json["error"]["code"] == "ragged_rows"
    )
    inputs = _v2_inputs(FRAME)
    inputs[5]["data"] = [[1, 2]] * len(FRAME)
    response = client.post("/v2/models/churn/infer", json={"inputs": inputs})
    assert response.status_code == 400
    inputs = _v2_inputs(FRAME)[1:]
    assert (
        client.post("/v2/models/churn/infer", json={"inputs": inputs}).json["error"]["code"]
        == "missing_columns"
    )


def test_request_id_is_echoed_or_generated(client: Any) -> None:
    given = client.post(
        "/v1/models/churn/invocations", json={"dataframe_split": _split()}, headers={"X-Request-Id": "abc-1"}
    )
    assert given.headers["X-Request-Id"] == "abc-1"
    generated = client.post("/v1/models/churn/invocations", json={"dataframe_split": _split()})
    assert len(generated.headers["X-Request-Id"]) >= 16
    failed = client.post("/v1/models/churn/invocations", json={}, headers={"X-Request-Id": "abc-2"})
    assert failed.headers["X-Request-Id"] == "abc-2"


def test_regression_deployment_answers_values(make_app: Any, sqlite_store: Any, tmp_path: Any) -> None:
    version = mlpipes.register(sqlite_store, tmp_path, name="spend", version="1", kind="boosted")
    mlpipes.deploy(sqlite_store, "spend", version)
    client = make_app().test_client()
    response = client.post("/v1/models/spend/invocations", json={"dataframe_split": _split()})
    assert response.status_code == 200, response.json
    values = response.json["predictions"]
    assert len(values) == len(FRAME) and all(isinstance(v, float) and math.isfinite(v) for v in values)
