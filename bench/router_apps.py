"""WSGI factories for the router benchmark (gunicorn "router_apps:floor()" / "baseline()" / "router()").

floor(): a bare WSGI app that parses the JSON body and answers a constant (the HTTP floor).
hop(): a bare WSGI app that forwards the body as it is to BENCH_UPSTREAM_URL through the router's own
    connection pool and answers the upstream's bytes: one Python HTTP hop, the proxy floor.
plain_hop(): hop() with its POSTs claimed by the worker's plain path (controller.server), as the
    router's scoring routes are: the hop without gunicorn's parser and response objects.
flat(): the least a validating router does per request in front of churn:1's V2 upstream (MLflow
    body in, type checks, V2 request out, classes back), with no data plane: the router path's floor.
baseline(): a bare Flask app scoring the same registered pipeline in process, DataFrame per call.
router(): the mlcanary router app over BENCH_DATABASE_URL (shadow/canary set up by router_bench.py);
    BENCH_ROUTER_SETTINGS, a JSON object of RouterSettings fields, overrides some (an A/B of a setting).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from flask import Flask, Response, request

from controller.server import ReadBufferingWorker
from router import create_app
from router.backends.connections import ConnectionPool
from router.dataplane import quiet_sklearn_thread_warning
from router.settings import RouterSettings
from storage import Database, Store
from storage.artifacts import load_artifact


class BenchWorker(ReadBufferingWorker):
    """The product's threaded worker, with the settings a benchmark A/Bs taken from its environment:
    BENCH_CPU_AFFINITY (MLCANARY_CPU_AFFINITY) and BENCH_NEXT_REQUEST_WAIT_MS
    (MLCANARY_NEXT_REQUEST_WAIT_MS); unset, the product's defaults."""

    cpu_affinity = os.environ.get("BENCH_CPU_AFFINITY", ReadBufferingWorker.cpu_affinity)
    next_request_wait_s = (
        float(os.environ["BENCH_NEXT_REQUEST_WAIT_MS"]) / 1000
        if "BENCH_NEXT_REQUEST_WAIT_MS" in os.environ
        else ReadBufferingWorker.next_request_wait_s
    )


_JSON = {"Content-Type": "application/json"}


def _empty(start_response: Callable[..., Any]) -> list[bytes]:
    """The empty 200 the bench apps answer readiness probes and /metrics with."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return [b""]


def floor() -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """Return a WSGI app that reads and parses the JSON body and answers a constant prediction."""
    answer = b'{"predictions":[0]}'

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/metrics":
            return _empty(start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        json.loads(environ["wsgi.input"].read(length))
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
        return [answer]

    return app


def hop() -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """Return a WSGI app that forwards each POST body to BENCH_UPSTREAM_URL and answers what it got.

    What any proxy written on this stack pays (gunicorn's threaded worker, http.client keep-alive
    connections) and nothing of the router's own work: no parsing, validation, routing or recording.
    """
    url = os.environ["BENCH_UPSTREAM_URL"]
    pool = ConnectionPool(url, size=16, timeout=30)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST":  # readiness and /metrics
            return _empty(start_response)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        reply = pool.request("POST", url, body, _JSON)
        start_response(
            f"{reply.status} {'OK' if reply.status == 200 else 'Error'}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(reply.body)))],
        )
        return [reply.body]

    return app


class _Claimed:
    """A WSGI app whose POSTs the product's worker answers on its plain path (what FastScoring says)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = self
        self.app = app

    def claims(self, method: str, path: str) -> bool:
        return method == "POST"

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return self.app(environ, start_response)


def plain_hop() -> _Claimed:
    """Return hop() with its POSTs claimed by the worker's plain path."""
    return _Claimed(hop())


def baseline() -> Flask:
    quiet_sklearn_thread_warning()  # as the router does: threaded workers set it off (router.dataplane)
    store = Store(Database(os.environ["BENCH_DATABASE_URL"]))
    version = store.pipelines.get_by_ref("churn:1")
    assert version.artifact_path and version.sha256
    pipeline = load_artifact(version.artifact_path, sha256=version.sha256, fmt="skops")
    columns = list(version.column_names)
    app = Flask("baseline")

    @app.post("/v1/models/churn/invocations")
    def invocations() -> Any:
        split = request.get_json()["dataframe_split"]
        frame = pd.DataFrame(split["data"], columns=split["columns"])[columns]
        proba = pipeline.predict_proba(frame)
        return {"predictions": pipeline.classes_[proba.argmax(axis=1)].tolist()}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response("", mimetype="text/plain")

    return app


def router() -> Flask:
    store = Store(Database(os.environ["BENCH_DATABASE_URL"]))
    overrides = json.loads(os.environ.get("BENCH_ROUTER_SETTINGS") or "{}")  # an A/B of a setting
    return create_app(store, RouterSettings(spool_dir=Path(os.environ["BENCH_SPOOL_DIR"]), **overrides))


def worker_exit(server: Any, worker: Any) -> None:
    plane = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("mlcanary.dataplane")
    if plane is not None:
        plane.close(timeout=20)


def flat() -> _Claimed:
    """Return the least a validating Python router could do per request: the floor of the router's path.

    The MLflow body read with orjson, each value type-checked against churn:1's schema into plain
    lists, the V2 request (v2-columns, as `encode` writes it) written with orjson, sent through the
    router's connection pool, the predicted classes read from the answer and written as the MLflow
    answer. No data plane, no arrays, no ids, no recording: the floor of a router that checks its input.
    """
    import orjson

    store = Store(Database(os.environ["BENCH_DATABASE_URL"]))
    version = store.pipelines.get_by_ref("churn:1")
    url = version.upstream_url.rstrip("/") + "/infer"
    kinds = {"float": (int, float), "int": (int,), "bool": (bool,)}
    schema = [(c.name, c.dtype, kinds.get(c.dtype, (str,))) for c in version.input_schema]
    datatypes = {"float": "FP64", "int": "INT64", "bool": "BOOL"}
    wanted = [
        {"name": name, "parameters": {"binary_data": False}}
        for name in version.upstream_config["request_outputs"]
    ]
    pool = ConnectionPool(url, size=16, timeout=30)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST":  # readiness and /metrics
            return _empty(start_response)
        split = orjson.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))[
            "dataframe_split"
        ]
        index = {name: i for i, name in enumerate(split["columns"])}
        if len(index) != len(schema):
            raise ValueError("unknown or missing columns")
        rows = split["data"]
        inputs = []
        for name, dtype, kind in schema:
            i = index[name]
            values = [row[i] for row in rows]
            for value in values:
                if value is not None and (
                    not isinstance(value, kind) or isinstance(value, bool) != (dtype == "bool")
                ):
                    raise ValueError(f"{name}: {value!r}")
            inputs.append(
                {
                    "name": name,
                    "shape": [len(rows)],
                    "datatype": datatypes.get(dtype, "BYTES"),
                    "data": values,
                }
            )
        body = orjson.dumps(
            {
                "id": "mlcanary",
                "inputs": inputs,
                "outputs": wanted,
                "parameters": {"content_type": "pd"},
            }
        )
        reply = pool.request("POST", url, body, _JSON)
        outputs = {o["name"]: o for o in orjson.loads(reply.body)["outputs"]}
        answer = orjson.dumps({"predictions": outputs["predict"]["data"]})
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
        return [answer]

    return _Claimed(app)
