"""Upstream versions: per-version settings, the health check at load, and the registration probe.

The upstreams here are real HTTP servers on loopback: an mlcanary router serving a registered
pipeline, or a small WSGI app that answers the way a misbehaving model server does.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import mlpipes
import pytest
from click.testing import CliRunner

from controller import registry
from controller.cli.main import cli
from router.backends import MissingBackend, create_backend, predict_parts
from router.backends.upstream import UpstreamBackend, UpstreamTools
from router.errors import ModelTimeout, ModelUnavailable
from router.inputs import build_batch, join_columns
from router.settings import RouterSettings
from storage import Store
from storage.entities import NewPipelineVersion, PipelineVersion

FRAME, _ = mlpipes.churn_frame(12, seed=41)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _upstream(
    store: Store, like: PipelineVersion, url: str, name: str = "remote", **config: Any
) -> PipelineVersion:
    base = {"encoding": "v2-columns", "request_outputs": [], "retries": 0}
    return store.pipelines.add(
        NewPipelineVersion(
            name=name, version="1", kind="http", task=like.task, input_schema=like.input_schema,
            classes=like.classes, upstream_url=url, upstream_protocol="v2",
            upstream_config={**base, **config},
        )
    )  # fmt: skip


class Flaky:
    """A WSGI model server that answers 503 to its first `failures` calls, then like mlcanary would."""

    def __init__(self, failures: int, *, delay: float = 0.0) -> None:
        self.failures = failures
        self.delay = delay
        self.calls = 0
        self.inflight = 0
        self.most_inflight = 0
        self._lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "GET":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b"{}"]
        body = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        with self._lock:
            self.calls += 1
            self.inflight += 1
            self.most_inflight = max(self.most_inflight, self.inflight)
            failing = self.calls <= self.failures
        time.sleep(self.delay)
        with self._lock:
            self.inflight -= 1
        if failing:
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"error": "warming up"}']
        rows = body["inputs"][0]["shape"][0]
        answer = {"outputs": [{"name": "predict", "shape": [rows], "datatype": "INT64", "data": [1] * rows}]}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]


# ------------------------------------------------------------------------------------------ per version


def test_retries_per_version_resend_a_request_the_server_refused_with_503(
    sqlite_store: Store, churn: Any, serve_wsgi: Any, settings: RouterSettings
) -> None:
    _, like = churn
    server = Flaky(failures=2)
    url = serve_wsgi(server) + "/v2/models/m"
    patient = create_backend(_upstream(sqlite_store, like, url, retries=2), settings)
    assert patient.predict(FRAME.head(3)).outputs == [1, 1, 1]
    assert server.calls == 3
    server.calls = 0
    impatient = create_backend(_upstream(sqlite_store, like, url, name="impatient"), settings)
    with pytest.raises(ModelUnavailable, match="warming up"):
        impatient.predict(FRAME.head(3))
    assert server.calls == 1


def test_a_versions_own_timeout_overrides_the_routers(
    sqlite_store: Store, churn: Any, serve_wsgi: Any, tmp_path: Path
) -> None:
    _, like = churn
    url = serve_wsgi(Flaky(failures=0, delay=0.8)) + "/v2/models/m"
    patient_router = RouterSettings(spool_dir=tmp_path, upstream_timeout_s=30.0)
    assert create_backend(_upstream(sqlite_store, like, url), patient_router).predict(
        FRAME.head(1)
    ).outputs == [1]
    short = create_backend(_upstream(sqlite_store, like, url, name="short", timeout_s=0.2), patient_router)
    with pytest.raises(ModelTimeout):
        short.predict(FRAME.head(1))


def test_a_versions_pool_bounds_the_connections_it_opens_to_its_server(
    sqlite_store: Store, churn: Any, serve_wsgi: Any, settings: RouterSettings
) -> None:
    _, like = churn
    server = Flaky(failures=0, delay=0.15)
    url = serve_wsgi(server) + "/v2/models/m"

    def most_inflight(version: PipelineVersion) -> int:
        backend = create_backend(version, RouterSettings(spool_dir=settings.spool_dir, upstream_timeout_s=10))
        server.most_inflight = 0
        threads = [threading.Thread(target=backend.predict, args=(FRAME.head(1),)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        backend.close()
        return server.most_inflight

    assert most_inflight(_upstream(sqlite_store, like, url, name="one", pool_size=1)) == 1
    assert most_inflight(_upstream(sqlite_store, like, url, name="many")) == 4


# ------------------------------------------------------------------------------------------ health


def test_an_upstream_down_at_load_makes_only_its_version_not_ready_and_its_errors_are_the_challengers(
    sqlite_store: Store, churn: Any, make_app: Any
) -> None:
    deployment, champion = churn
    down = _upstream(sqlite_store, champion, f"http://127.0.0.1:{_closed_port()}/v2/models/gone")
    assert isinstance(create_backend(down, RouterSettings(upstream_timeout_s=1.0)), MissingBackend)
    mlpipes.start_rollout(sqlite_store, deployment, down, mode="shadow")
    app = make_app()
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    assert client.get("/v2/models/churn/ready").status_code == 200
    assert client.get("/v2/models/churn/versions/churn:1/ready").status_code == 200
    gone = client.get("/v2/models/churn/versions/remote:1/ready")
    assert gone.status_code == 503 and "down" in gone.json["reason"]
    assert client.get("/v2/models/churn/versions/nope/ready").status_code == 404
    body = {"dataframe_split": json.loads(FRAME.head(2).to_json(orient="split", index=False))}
    responses = [client.post("/v1/models/churn/invocations", json=body) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    app.extensions["mlcanary.dataplane"].close(timeout=5)
    pairs = sqlite_store.pairs.list()
    assert len(pairs) == 6
    assert all(p.champion_error is None and p.champion_class is not None for p in pairs)
    assert all("down" in (p.challenger_error or "") for p in pairs)


# ------------------------------------------------------------------------------------------ the probe


@pytest.fixture
def remote(sqlite_store: Store, tmp_path: Path, make_app: Any, serve_wsgi: Any) -> str:
    """An mlcanary router on loopback serving a Ridge regressor as deployment "spend" (V2 URL)."""
    regressor = mlpipes.register(sqlite_store, tmp_path, name="spend", version="1", kind="regression")
    mlpipes.deploy(sqlite_store, "spend", regressor)
    return serve_wsgi(make_app()) + "/v2/models/spend"


def test_the_probe_refuses_a_regression_model_registered_as_a_classifier(
    sqlite_store: Store, remote: str
) -> None:
    before = len(sqlite_store.pipelines.list())
    with pytest.raises(registry.RegistrationError, match="task classification: it answered .*a fraction"):
        registry.register_upstream(
            sqlite_store, name="wrong", version="1", url=remote, protocol=None, task="classification",
            schema=mlpipes.input_schema(FRAME), tools=UpstreamTools(), sample=FRAME,
        )  # fmt: skip
    assert len(sqlite_store.pipelines.list()) == before


def test_the_probe_refuses_classes_that_were_not_declared(
    sqlite_store: Store, churn: Any, make_app: Any, serve_wsgi: Any
) -> None:
    url = serve_wsgi(make_app()) + "/v2/models/churn"
    with pytest.raises(
        registry.RegistrationError, match="declared classes: it answered 0, declared are 'no', 'yes'"
    ):
        registry.register_upstream(
            sqlite_store, name="wrong", version="1", url=url, protocol=None, task="classification",
            schema=mlpipes.input_schema(FRAME), classes=("no", "yes"), tools=UpstreamTools(),
            sample=FRAME,
        )  # fmt: skip
    version = registry.register_upstream(
        sqlite_store, name="right", version="1", url=url, protocol=None, task="classification",
        schema=mlpipes.input_schema(FRAME), classes=(0, 1), tools=UpstreamTools(), sample=FRAME,
        golden=FRAME,
    )  # fmt: skip
    assert version.golden_set is not None
    pipeline = mlpipes.classifier()
    assert version.golden_set["outputs"]["prediction"] == pipeline.predict(FRAME).tolist()
    assert version.golden_set["outputs"]["score"] == pytest.approx(
        pipeline.predict_proba(FRAME)[:, 1], rel=1e-12
    )


def test_the_cli_registers_an_upstream_with_a_kind_and_refuses_a_mismatch_in_one_line(
    sqlite_url: str, remote: str, tmp_path: Path
) -> None:
    sample = tmp_path / "sample.csv"
    FRAME.to_csv(sample, index=False)
    runner = CliRunner()
    base = ["--database-url", sqlite_url, "pipelines", "register", "remote", "1", "--upstream", remote,
            "--sample", str(sample)]  # fmt: skip
    refused = runner.invoke(cli, [*base, "--task", "classification"])
    assert refused.exit_code != 0
    assert len(refused.output.strip().splitlines()) == 1 and "a fraction" in refused.output
    done = runner.invoke(
        cli, [*base, "--task", "regression", "--upstream-kind", "mlserver", "--value-output", "predict",
              "--upstream-timeout", "2.5", "--upstream-retries", "1", "--golden", str(sample)],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    shown = json.loads(
        runner.invoke(cli, ["--database-url", sqlite_url, "pipelines", "show", "remote:1"]).output
    )
    config = shown["upstream_config"]
    assert (config["kind"], config["encoding"], config["timeout_s"], config["retries"]) == (
        "mlserver", "v2-columns", 2.5, 1,
    )  # fmt: skip
    assert shown["golden_set_rows"] == len(FRAME)


def test_the_probe_refuses_a_classifier_registered_as_a_regression_model(
    sqlite_store: Store, churn: Any, make_app: Any, serve_wsgi: Any
) -> None:
    url = serve_wsgi(make_app()) + "/v2/models/churn"
    with pytest.raises(
        registry.RegistrationError, match=r"task regression: it answered only integers \(0, 1\)"
    ):
        registry.register_upstream(
            sqlite_store, name="wrong", version="1", url=url, protocol=None, task="regression",
            schema=mlpipes.input_schema(FRAME), tools=UpstreamTools(), sample=FRAME,
        )  # fmt: skip
    assert [v.ref for v in sqlite_store.pipelines.list()] == ["churn:1"]


def test_a_keep_alive_connection_the_server_closed_is_replaced_without_an_error() -> None:
    """Servers (uvicorn: after 5 s idle) close keep-alive connections; the next call must not fail."""
    import socket

    from router.backends.connections import ConnectionPool

    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            accepted.append(1)
            conn.recv(65536)
            body = b'{"ok": true}'
            conn.sendall(  # keep-alive promised, then the connection is closed once idle
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body
            )  # fmt: skip
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v2/models/m/infer"
    pool = ConnectionPool(url, size=2, timeout=5)
    first = pool.request("POST", url, b"{}")
    time.sleep(0.1)  # let the server's close arrive
    second = pool.request("POST", url, b"{}")
    assert (first.status, second.status, second.body) == (200, 200, b'{"ok": true}')
    assert len(accepted) == 2
    pool.close()
    listener.close()


def test_after_an_idle_spell_every_pooled_connection_is_stale_and_the_retry_opens_a_fresh_one() -> None:
    """Several keep-alive connections closed by the server while idle: the next call still succeeds.

    The retry used to take the next idle connection, as stale as the first: the request failed.
    """
    import socket

    from router.backends.connections import ConnectionPool

    listener = socket.create_server(("127.0.0.1", 0))
    together = threading.Barrier(3)  # three requests in flight at once: three pooled connections
    accepted: list[int] = []
    body = b'{"ok": true}'
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip

    def handle(conn: socket.socket, n: int) -> None:
        conn.recv(65536)
        if n < 3:
            together.wait(5)
        conn.sendall(answer)  # keep-alive promised, then the connection is closed (as if idle too long)
        conn.close()

    def serve() -> None:
        for n in range(4):
            conn, _ = listener.accept()
            accepted.append(n)
            threading.Thread(target=handle, args=(conn, n), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v2/models/m/infer"
    pool = ConnectionPool(url, size=4, timeout=5)
    first: list[int] = []
    clients = [
        threading.Thread(target=lambda: first.append(pool.request("POST", url, b"{}").status))
        for _ in range(3)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(10)
    time.sleep(0.1)  # let the server's closes arrive
    after = pool.request("POST", url, b"{}")
    assert first == [200, 200, 200] and (after.status, after.body) == (200, body)
    assert len(accepted) == 4  # the three pooled ones, then one fresh connection for the retry
    pool.close()
    listener.close()


# ------------------------------------------------------------------------------------------ the request path


class Recording(Flaky):
    """A model server (V2 or MLflow) that answers class 1 for every row and keeps the bodies it was sent."""

    def __init__(self) -> None:
        super().__init__(failures=0)
        self.bodies: list[bytes] = []

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "POST":
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            self.bodies.append(body)
            document = json.loads(body)
            if "dataframe_split" in document:
                start_response("200 OK", [("Content-Type", "application/json")])
                return [json.dumps({"predictions": [1] * len(document["dataframe_split"]["data"])}).encode()]
            environ["wsgi.input"] = io.BytesIO(body)
        return super().__call__(environ, start_response)


@pytest.mark.parametrize("encoding", ["v2-columns", "mlflow"])
def test_an_upstream_is_sent_the_same_bytes_from_a_requests_columns_as_from_its_frame(
    sqlite_store: Store, churn: Any, serve_wsgi: Any, settings: RouterSettings, encoding: str
) -> None:
    _, like = churn
    server = Recording()
    url = serve_wsgi(server) + ("/invocations" if encoding == "mlflow" else "/v2/models/m")
    version = _upstream(sqlite_store, like, url, encoding=encoding)
    backend = create_backend(version, settings)
    assert isinstance(backend, UpstreamBackend)
    rows = mlpipes.churn_frame(40, seed=5, missing=0.3)[0]  # missing values in every kind of column
    rows["support_calls"] = rows["support_calls"].astype(object)
    rows.loc[3, "support_calls"] = None  # an int column with a missing value becomes float64
    split = json.loads(rows.to_json(orient="split", index=False))
    parts = [
        build_batch(dict(zip(split["columns"], zip(*chunk, strict=True), strict=True)), like.input_schema,
                    max_rows=100)
        for chunk in (split["data"][:1], split["data"][1:25], split["data"][25:])
    ]  # fmt: skip
    for batch in parts:
        assert backend.predict_columns(batch.columns).outputs == [1] * batch.rows
        assert backend.predict(batch.frame).outputs == [1] * batch.rows
    assert (
        predict_parts(
            backend, [b.columns for b in parts], lambda: join_columns([b.columns for b in parts])
        ).outputs
        == [1] * 40
    )
    assert backend.predict(join_columns([batch.columns for batch in parts])).outputs == [1] * 40
    bodies = server.bodies
    assert len(bodies) == 8
    assert bodies[0::2] == bodies[1::2]
    sent = json.loads(bodies[-1])
    if encoding == "mlflow":
        sent_rows = sent["dataframe_split"]["data"]
        assert (
            len(sent_rows) == 40
            and sent_rows[3][sent["dataframe_split"]["columns"].index("support_calls")] is None
        )
    else:
        calls = next(i for i in sent["inputs"] if i["name"] == "support_calls")
        assert calls["datatype"] == "INT64" and calls["data"][3] is None
        assert any(v is None for i in sent["inputs"] for v in i["data"] if i["name"] == "plan")
    backend.close()


def test_a_request_answered_by_an_upstream_never_builds_a_dataframe(
    sqlite_store: Store, churn: Any, serve_wsgi: Any, make_app: Any
) -> None:
    _, like = churn
    url = serve_wsgi(Flaky(failures=0)) + "/v2/models/m"
    mlpipes.deploy(sqlite_store, "remote", _upstream(sqlite_store, like, url))
    plane = make_app().extensions["mlcanary.dataplane"]
    route = plane.route("remote")
    batch = build_batch({c: list(v) for c, v in FRAME.head(2).to_dict("list").items()}, like.input_schema,
                        max_rows=10)  # fmt: skip
    answer = plane.serve(route, batch, request_id="r1")
    assert answer.predictions.outputs == [1, 1]
    assert "frame" not in batch.__dict__  # the cached frame was never built


def test_a_request_reaches_the_upstream_in_one_write_head_and_body_together() -> None:
    """The server's first read holds the whole request: it never wakes for a head whose body is still coming."""
    import socket

    from router.backends.connections import ConnectionPool

    listener = socket.create_server(("127.0.0.1", 0))
    reads: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            for _ in range(3):  # three requests on the kept-alive connection
                reads.append(conn.recv(65536))  # waiting already when the request arrives
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v2/models/m/infer"
    pool = ConnectionPool(url, size=1, timeout=5)
    body = b'{"inputs": "' + b"x" * 3000 + b'"}'
    for _ in range(3):
        time.sleep(0.05)  # the server is in recv() before the request is sent
        assert pool.request("POST", url, body, {"Content-Type": "application/json"}).body == b"ok"
    thread.join(5)
    pool.close()
    listener.close()
    for read in reads:
        head, _, sent = read.partition(b"\r\n\r\n")
        assert head.startswith(b"POST /v2/models/m/infer HTTP/1.1") and sent == body
