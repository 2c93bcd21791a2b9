"""The scoring routes' fast path (router.http.FastScoring) answers exactly what Flask's views answer.

Each request is sent twice to the same app: once through the app as a server calls it (the fast
path in front) and once to the Flask app behind it (`FastScoring.wsgi_app`, the views, hooks and
error handlers), and the two answers must be equal: status, headers, body. In role "router" and
in role "serve" (whose after_request hook adds a header to every answer).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlpipes
import pytest
from adminapp import running
from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

from router.http import FastScoring
from storage import Store

FRAME, _ = mlpipes.churn_frame(2, seed=5)
SPLIT = {"dataframe_split": json.loads(FRAME.to_json(orient="split", index=False))}


@pytest.fixture(params=["router", "serve"])
def app(request: Any, sqlite_store: Store, tmp_path: Path) -> Iterator[Flask]:
    champion = mlpipes.register(sqlite_store, tmp_path, name="churn", version="1")
    mlpipes.deploy(sqlite_store, "churn", champion)
    with running(sqlite_store, tmp_path, role=request.param, max_body_bytes=20_000) as built:
        yield built


def _v2_body() -> dict[str, Any]:
    return {
        "id": "v2-id",
        "inputs": [
            {"name": c, "shape": [len(FRAME)], "data": json.loads(FRAME[c].to_json(orient="values"))}
            for c in FRAME.columns
        ],
    }


CASES: dict[str, dict[str, Any]] = {
    "mlflow": {"path": "/v1/models/churn/invocations", "json": SPLIT},
    "mlflow-csv": {
        "path": "/v1/models/churn/invocations",
        "data": FRAME.to_csv(index=False),
        "content_type": "text/csv",
    },
    "v2": {"path": "/v2/models/churn/infer", "json": _v2_body()},
    "v2-version-in-path": {"path": "/v2/models/churn/versions/7/infer", "json": _v2_body()},
    "routing-key": {"path": "/v1/models/churn/invocations", "json": SPLIT, "headers": {"X-Routing-Key": "k"}},
    "bad-json": {"path": "/v1/models/churn/invocations", "data": "{not", "content_type": "application/json"},
    "too-large": {
        "path": "/v1/models/churn/invocations",
        "data": "x" * 30_000,
        "content_type": "application/json",
    },
    "media-type": {"path": "/v2/models/churn/infer", "data": "a=b", "content_type": "text/plain"},
    "unknown": {"path": "/v1/models/nope/invocations", "json": SPLIT},
    "not-utf8-name": {"path": "/v1/models/caf\u00e9/invocations", "json": SPLIT},
    "bad-request-id": {
        "path": "/v1/models/churn/invocations",
        "json": SPLIT,
        "headers": {"X-Request-Id": "a b\x01"},
    },
    "wrong-type": {"path": "/v2/models/churn/infer", "json": {"inputs": "x"}},
    "empty-body": {"path": "/v1/models/churn/invocations", "data": b"", "content_type": "application/json"},
    "get": {"path": "/v1/models/churn/invocations", "method": "GET"},
    "trailing-slash": {"path": "/v1/models/churn/invocations/", "json": SPLIT},
}


def _answer(app: Any, case: dict[str, Any], request_id: str) -> tuple[str, dict[str, str], bytes]:
    headers = {"X-Request-Id": request_id, **case.get("headers", {})}
    options = {k: v for k, v in case.items() if k not in ("path", "headers")}
    environ = EnvironBuilder(
        path=case["path"], method=options.pop("method", "POST"), headers=headers, **options
    )
    body, status, answer_headers = run_wsgi_app(app, environ.get_environ(), buffered=True)
    data = b"".join(body)
    text = data.replace(request_id.encode(), b"<id>")
    kept = {k: v.replace(request_id, "<id>") for k, v in answer_headers.items() if k != "Content-Length"}
    return status, kept, text


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_fast_path_answers_what_the_views_answer(app: Flask, name: str) -> None:
    fast = app.wsgi_app
    assert isinstance(fast, FastScoring)
    case = CASES[name]
    through_fast = _answer(fast, case, f"fast-{name}")
    through_views = _answer(fast.wsgi_app, case, f"view-{name}")
    assert through_fast == through_views
    assert through_fast[1]["Content-Type"] == "application/json"
    if app.config.get("MLCANARY_SETTINGS") is not None:  # serve: its hook's header, on both paths
        assert through_fast[1]["X-Content-Type-Options"] == "nosniff"


def test_scoring_requests_skip_the_views_and_the_rest_reach_them(app: Flask) -> None:
    """A POST to a scoring route never reaches Flask's view; a chunked body and other methods do."""
    called: list[str] = []
    original = app.view_functions["mlcanary_router.invocations"]

    def view(deployment: str) -> Any:
        called.append(deployment)
        return original(deployment)

    app.view_functions["mlcanary_router.invocations"] = view
    client = app.test_client()
    assert client.post("/v1/models/churn/invocations", json=SPLIT).status_code == 200
    assert called == []
    environ = EnvironBuilder(
        path="/v1/models/churn/invocations",
        method="POST",
        input_stream=io.BytesIO(json.dumps(SPLIT).encode()),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
    ).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input_terminated"] = True  # as gunicorn says of a chunked body it decodes
    body, status, _ = run_wsgi_app(app.wsgi_app, environ, buffered=True)
    assert status.startswith("200"), b"".join(body)
    assert called == ["churn"]


def test_an_unexpected_failure_is_a_500_without_details_and_leaves_nothing_in_flight(app: Flask) -> None:
    plane = app.extensions["mlcanary.dataplane"]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("at /secret/path")

    plane.serve = broken
    response = app.test_client().post("/v1/models/churn/invocations", json=SPLIT)
    assert response.status_code == 500
    assert response.json == {"error": {"code": "internal_error", "message": "internal error; see the logs"}}
    assert plane._inflight == 0
    del plane.serve
    status, _, _ = _answer(app.wsgi_app, CASES["mlflow"], "after")  # run as a server does: closed once sent
    assert status == "200 OK"
    assert plane._inflight == 0


def test_a_request_hook_the_fast_path_does_not_mirror_sends_the_scoring_routes_through_flask(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """A hook added to the app (a token check on every route, say) is never skipped for scoring."""
    champion = mlpipes.register(sqlite_store, tmp_path, name="churn", version="1")
    mlpipes.deploy(sqlite_store, "churn", champion)
    with running(sqlite_store, tmp_path, role="router") as app:

        @app.before_request
        def token_check() -> Any:
            from flask import request

            if request.headers.get("Authorization") != "Bearer t":
                return {"error": {"code": "unauthorized", "message": "no token"}}, 401
            return None

        fast = app.wsgi_app
        assert isinstance(fast, FastScoring)
        assert not fast.claims("POST", "/v1/models/churn/invocations")
        client = app.test_client()
        assert client.post("/v1/models/churn/invocations", json=SPLIT).status_code == 401
        allowed = client.post(
            "/v1/models/churn/invocations", json=SPLIT, headers={"Authorization": "Bearer t"}
        )
        assert allowed.status_code == 200


def _started(app: Any, request_id: str, *, gunicorn: bool) -> tuple[list[str], Any]:
    """Call a WSGI app with a scoring request as a server does, without closing the answer yet."""
    environ = EnvironBuilder(
        path="/v1/models/churn/invocations", method="POST", json=SPLIT, headers={"X-Request-Id": request_id}
    ).get_environ()
    if gunicorn:
        environ["gunicorn.socket"] = object()  # what gunicorn (mlcanary router) puts in every environ
    status: list[str] = []
    answer = app(environ, lambda line, headers, exc_info=None: status.append(line))
    return status, answer


@pytest.mark.parametrize("path", ["fast", "views"])
def test_under_gunicorn_the_answer_goes_first_and_the_pair_is_recorded_once_it_is_sent(
    app: Flask, path: str
) -> None:
    """Recording (and the metrics) wait until the server closes the answer; elsewhere they come first."""
    plane = app.extensions["mlcanary.dataplane"]
    recorded: list[str] = []
    plane.recorder.add = lambda exchange: recorded.append(exchange.request_id)
    wsgi = app.wsgi_app if path == "fast" else app.wsgi_app.wsgi_app

    status, answer = _started(wsgi, f"{path}-1", gunicorn=True)
    body = b"".join(answer)
    assert status == ["200 OK"] and len(json.loads(body)["predictions"]) == len(FRAME)
    assert recorded == [] and plane._inflight == 1  # sent, not yet closed: nothing recorded
    assert not plane._paid.is_set()  # a closing data plane would wait for it
    answer.close()
    assert recorded == [f"{path}-1"] and plane._inflight == 0 and plane._paid.is_set()

    _, answer = _started(wsgi, f"{path}-2", gunicorn=False)  # a server that may never close it
    assert recorded == [f"{path}-1", f"{path}-2"] and plane._paid.is_set()  # nothing owed
    answer.close()
    assert plane._inflight == 0


def test_a_failure_after_the_answer_is_logged_and_the_request_still_leaves(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    plane = app.extensions["mlcanary.dataplane"]

    def broken(exchange: Any) -> None:
        raise RuntimeError("the recorder broke")

    plane.recorder.add = broken
    status, answer = _started(app.wsgi_app, "late", gunicorn=True)
    assert status == ["200 OK"] and b"predictions" in b"".join(answer)
    answer.close()
    assert plane._inflight == 0
    assert any("after a scoring answer" in r.message and r.exc_info for r in caplog.records)


def test_a_request_that_fails_after_it_was_scored_is_a_500_and_its_pair_is_still_recorded(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router import mlflow

    def broken(outputs: Any) -> Any:
        raise RuntimeError("writing the answer broke")

    plane = app.extensions["mlcanary.dataplane"]
    recorded: list[str] = []
    plane.recorder.add = lambda exchange: recorded.append(exchange.request_id)
    monkeypatch.setattr(mlflow, "write_predictions", broken)
    status, answer = _started(app.wsgi_app, "scored", gunicorn=True)
    assert status == ["500 INTERNAL SERVER ERROR"]
    assert json.loads(b"".join(answer)) == {
        "error": {"code": "internal_error", "message": "internal error; see the logs"}
    }
    assert recorded == ["scored"] and plane._inflight == 0  # done before the 500 was answered
