"""HTTP upstream backend: a remote model server speaking V2 or MLflow, over pooled httpx connections.

upstream_url for protocol "v2" is the model's base URL (`http://host:port/v2/models/NAME`, the
request goes to `.../infer`; a URL already ending in /infer is used as is). For "mlflow" it is the
scoring URL (`http://host:port/invocations`, appended when the URL does not end with it).
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import numpy as np
import pandas as pd

from router.backends.base import Predictions, check_length, plain
from router.errors import BackendError, InputRejected, InvalidOutput, ModelTimeout, ModelUnavailable
from router.v2 import encode_request
from storage.entities import PipelineVersion


class UpstreamBackend:
    """Forward the raw input to a model server and read its answer back as Predictions."""

    def __init__(
        self,
        version: PipelineVersion,
        *,
        timeout_s: float = 5.0,
        pool_size: int = 20,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not version.upstream_url or version.upstream_protocol not in ("v2", "mlflow"):
            raise ModelUnavailable(f"{version.ref} needs an upstream_url and a protocol of v2 or mlflow")
        self.version = version
        self.protocol = version.upstream_protocol
        url = version.upstream_url.rstrip("/")
        if self.protocol == "v2":
            self.url = url if url.endswith("/infer") else url + "/infer"
        else:
            self.url = url if url.endswith("/invocations") else url + "/invocations"
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
            transport=transport,
        )

    def predict(self, frame: pd.DataFrame) -> Predictions:
        rows = len(frame)
        columns = {name: [_cell(v) for v in frame[name].tolist()] for name in frame.columns}
        if self.protocol == "v2":
            body = encode_request(columns, self.version.input_schema, request_id="mlcanary")
        else:
            data = [list(r) for r in zip(*columns.values(), strict=True)]
            body = json.dumps({"dataframe_split": {"columns": list(columns), "data": data}}).encode()
        document = self._post(body)
        try:
            predictions = self._read_v2(document) if self.protocol == "v2" else self._read_mlflow(document)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidOutput(f"{self.version.ref} answered an unreadable body: {exc}") from exc
        return check_length(self.version, predictions, rows)

    def _post(self, body: bytes) -> Any:
        try:
            response = self._client.post(self.url, content=body, headers={"Content-Type": "application/json"})
        except httpx.TimeoutException as exc:
            raise ModelTimeout(f"{self.version.ref} at {self.url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise ModelUnavailable(f"{self.version.ref} at {self.url} is unreachable: {exc}") from exc
        if response.status_code >= 400:
            text = response.text[:200]
            if response.status_code in (400, 422):
                raise InputRejected(f"{self.version.ref} refused the input ({response.status_code}): {text}")
            if response.status_code in (502, 503, 504):
                raise ModelUnavailable(f"{self.version.ref} answered {response.status_code}: {text}")
            raise BackendError(f"{self.version.ref} answered {response.status_code}: {text}")
        try:
            return response.json()
        except ValueError as exc:
            raise InvalidOutput(f"{self.version.ref} answered a body that is not JSON") from exc

    def _read_v2(self, document: Any) -> Predictions:
        outputs = {o["name"]: o for o in document["outputs"]}
        first = outputs.get("predict") or document["outputs"][0]
        labels = [plain(v) for v in _flat(first["data"])]
        scores = None
        if "score" in outputs:
            scores = [float(v) for v in _flat(outputs["score"]["data"])]
        elif "predict_proba" in outputs:
            tensor = outputs["predict_proba"]
            proba = np.asarray(_flat(tensor["data"]), dtype=np.float64).reshape(tensor["shape"])
            scores = (proba[:, 1] if proba.shape[1] == 2 else proba.max(axis=1)).tolist()
        return self._shape(labels, scores)

    def _read_mlflow(self, document: Any) -> Predictions:
        predictions = document["predictions"] if isinstance(document, dict) else document
        labels: list[Any] = []
        scores: list[float] | None = []
        for item in predictions:
            if isinstance(item, dict):
                label = next(
                    (item[k] for k in ("class", "label", "prediction", "predict") if k in item), None
                )
                labels.append(plain(label))
                score = next((item[k] for k in ("score", "probability") if k in item), None)
                if score is None or scores is None:
                    scores = None
                else:
                    scores.append(float(score))
            else:
                labels.append(plain(item))
                scores = None
        return self._shape(labels, scores)

    def _shape(self, labels: list[Any], scores: list[float] | None) -> Predictions:
        if self.version.task == "regression":
            values = []
            for v in labels:
                if isinstance(v, bool) or not isinstance(v, int | float | None):
                    raise InvalidOutput(f"{self.version.ref} answered a non-numeric value {v!r}")
                values.append(math.nan if v is None else float(v))
            return Predictions(values)
        if any(isinstance(v, dict | list) for v in labels):
            raise InvalidOutput(f"{self.version.ref} answered nested values instead of classes")
        return Predictions(labels, scores)

    def close(self) -> None:
        self._client.close()


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list) and any(isinstance(v, list) for v in data):
        return [x for v in data for x in (v if isinstance(v, list) else [v])]
    if not isinstance(data, list):
        raise TypeError("data is not a list")
    return data


def _cell(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value.item() if hasattr(value, "item") else value
