"""Strict edges of the HTTP servers (issue 17 items 7, 8, 9 and 10).

Chunked bodies past the limit are refused like long ones, /metrics keeps one series for unknown
deployment names, names are validated in one place for the CLI and the API and a name stored by an
older version never breaks a response header, V2 refuses cross-site simple posts, the Markdown report
escapes user text, and anonymous clients never see database text.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adminapp
import httpx
import mlpipes
import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import text
from werkzeug.serving import make_server

from storage import Database, Store

MAX_BODY = 4096
FRAME, _ = mlpipes.churn_frame(1, seed=11)


def _split_rows(rows: int) -> dict[str, Any]:
    frame, _ = mlpipes.churn_frame(rows, seed=12)
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


@pytest.fixture
def served(store: Store, tmp_path: Path) -> Iterator[tuple[Flask, str]]:
    """The real app on a loopback port (werkzeug's threaded server reads chunked bodies like gunicorn)."""
    champion = mlpipes.register(store, tmp_path, version="1")
    mlpipes.deploy(store, "churn", champion)
    with adminapp.running(store, tmp_path, max_body_bytes=MAX_BODY, feedback_auth="open") as app:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield app, f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join(5)


def _chunks(data: bytes, size: int = 100) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_a_chunked_body_past_the_limit_is_refused_with_413_and_a_short_one_is_read_whole(
    served: tuple[Flask, str], store: Store
) -> None:
    app, url = served
    big = json.dumps(_split_rows(200)).encode()
    assert len(big) > MAX_BODY
    with httpx.Client(base_url=url, timeout=10) as client:
        for path in ("/v1/models/churn/invocations", "/v2/models/churn/infer", "/v1/models/churn/feedback"):
            response = client.post(path, content=_chunks(big), headers={"Content-Type": "application/json"})
            assert response.status_code == 413, (path, response.status_code, response.text[:200])
            assert response.json()["error"]["code"] in ("payload_too_large", "request_entity_too_large")
        small = _split_rows(1)
        small["dataframe_split"]["data"][0][2] = 419999.0  # monthly_charges: the truncated value
        body = json.dumps(small).encode()
        assert len(body) < MAX_BODY
        response = client.post(
            "/v1/models/churn/invocations",
            content=_chunks(body, 7),
            headers={"Content-Type": "application/json", "X-Request-Id": "chunked"},
        )
        assert response.status_code == 200, response.text
    app.extensions["mlcanary.dataplane"].close(timeout=5)
    pairs = store.pairs.list()
    assert [p.request_id for p in pairs] == ["chunked"]
    assert pairs[0].raw_input["monthly_charges"] == 419999.0


def test_metrics_keep_one_series_for_unknown_deployment_names(served: tuple[Flask, str]) -> None:
    app, _ = served
    client = app.test_client()
    for i in range(50):
        client.post(f"/v1/models/ghost-{i}/invocations", json=_split_rows(1))
        client.post(f"/v2/models/ghost-{i}/infer", json={"inputs": []})
    assert client.post("/v1/models/churn/invocations", json=_split_rows(1)).status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "ghost-" not in metrics
    assert 'deployment="unknown"' in metrics and 'deployment="churn"' in metrics


def test_names_follow_one_rule_in_the_cli_and_the_api(
    store: Store, tmp_path: Path, database_url: str
) -> None:
    from controller.cli.main import cli

    artifact = mlpipes.save(mlpipes.classifier(), tmp_path / "sources", "m")
    bad_names = ["chürn", "churn\x01", "churn\n", "a b", ".lead", "x" * 101, "ünïcode", "tab\t"]
    runner = CliRunner()
    for name in bad_names:
        result = runner.invoke(
            cli,
            ["--database-url", database_url, "--data-dir", str(tmp_path / "var"), "pipelines", "register", name,
             "1", "--artifact", str(artifact), "--task", "classification"],
        )  # fmt: skip
        assert result.exit_code != 0 and "letters, digits" in result.output, (name, result.output)
    champion = mlpipes.register(store, tmp_path, version="1")
    with adminapp.running(store, tmp_path) as app:
        operator = adminapp.bearer(store, "operator")
        for name in bad_names:
            response = app.test_client().post(
                "/api/v1/deployments", json={"name": name, "champion": champion.ref}, headers=operator
            )
            assert response.status_code == 400, (name, response.get_data(as_text=True))
    for name in bad_names:
        result = runner.invoke(
            cli,
            ["--database-url", database_url, "--data-dir", str(tmp_path / "var"), "deployments", "create", name, "--champion",
             champion.ref],
        )  # fmt: skip
        assert result.exit_code != 0 and "letters, digits" in result.output, (name, result.output)
    assert store.deployments.list() == []


def test_a_name_stored_by_an_older_version_never_breaks_a_response_header(
    store: Store, tmp_path: Path
) -> None:
    champion = mlpipes.register(store, tmp_path, version="1")
    mlpipes.deploy(store, "churn", champion)
    with store.db.engine.begin() as conn:  # written before names were checked
        conn.execute(text("UPDATE pipeline_versions SET version = :v"), {"v": "é\u2028x\r\ny"})
    with adminapp.running(store, tmp_path) as app:
        response = app.test_client().post("/v1/models/churn/invocations", json=_split_rows(1))
    assert response.status_code == 200
    header = response.headers["X-Mlcanary-Version"]
    assert header.isascii() and header.isprintable() and "\r" not in header and "\n" not in header
    assert header == "churn:%C3%A9%E2%80%A8x%0D%0Ay"


def test_v2_refuses_cross_site_simple_posts_and_accepts_json(served: tuple[Flask, str], store: Store) -> None:
    app, _ = served
    client = app.test_client()
    frame = FRAME
    inputs = []
    for column in mlpipes.input_schema(frame):
        values = [None if v != v else v for v in frame[column.name].tolist()]
        kind = {"float": "FP64", "int": "INT64", "bool": "BOOL", "str": "BYTES"}[column.dtype]
        inputs.append({"name": column.name, "shape": [1], "datatype": kind, "data": values})
    body = json.dumps({"inputs": inputs})
    for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        response = client.post("/v2/models/churn/infer", data=body, headers={"Content-Type": media})
        assert response.status_code == 415, media
    ok = client.post("/v2/models/churn/infer", data=body, headers={"Content-Type": "application/json"})
    assert ok.status_code == 200
    app.extensions["mlcanary.dataplane"].close(timeout=5)
    assert store.pairs.count() == 1


def test_anonymous_clients_never_see_database_text(store: Store, tmp_path: Path) -> None:
    champion = mlpipes.register(store, tmp_path, version="1")
    mlpipes.deploy(store, "churn", champion)
    with adminapp.running(store, tmp_path) as app:
        client = app.test_client()
        store.db.engine.dispose()
        broken = Database("postgresql://nobody:secret@127.0.0.1:1/nowhere")
        app.extensions["mlcanary.store"] = Store(broken)  # the database goes away under the server
        answers = [
            client.get("/api/v1/deployments", headers={"Authorization": "Bearer mlc_aaaaaaaaaaaaaaaaaaaa"}),
            client.post(
                "/v1/models/churn/feedback",
                json={"labels": [{"request_id": "a", "label": 1}]},
                headers={"Authorization": "Bearer mlc_aaaaaaaaaaaaaaaaaaaa"},
            ),
        ]
        for response in answers:
            body = response.get_data(as_text=True)
            assert response.status_code == 503, body
            for secret in ("127.0.0.1", "nowhere", "nobody", "psycopg", "Traceback", "/", "SELECT"):
                assert secret not in response.get_json()["error"]["message"], (secret, body)


def test_the_markdown_report_shows_user_text_as_text() -> None:
    from controller.reports.build import _md_table

    hostile = "<img src=x onerror=alert(1)> [click](javascript:alert(1)) `code` | next"
    line = _md_table(["value"], [[hostile]])[2]
    assert "<img" not in line and "[click](" not in line and " `code`" not in line
    assert "&lt;img src=x onerror=alert(1)&gt;" in line and "\\[click\\]" in line and "\\| next" in line


def test_values_over_postgresql_limits_are_a_4xx_on_every_database(store: Store, tmp_path: Path) -> None:
    from storage.entities import Column, NewPipelineVersion

    classless = store.pipelines.add(
        NewPipelineVersion(
            name="remote", version="1", kind="http", task="classification", input_schema=(Column("age", "float"),),
            upstream_url="http://127.0.0.1:9/", upstream_protocol="v2",
        )
    )  # fmt: skip
    champion = mlpipes.register(store, tmp_path, version="1")
    challenger = mlpipes.register(store, tmp_path, version="2", seed=3)
    mlpipes.start_rollout(store, mlpipes.deploy(store, "churn", champion), challenger)
    mlpipes.deploy(store, "remote", classless)
    with adminapp.running(store, tmp_path, feedback_auth="open") as app:
        client = app.test_client()
        before = store.labels.count()
        long_label = client.post(
            "/v1/models/remote/feedback", json={"labels": [{"request_id": "a", "label": "x" * 300}]}
        )
        assert 400 <= long_label.status_code < 500, long_label.get_data(as_text=True)
        assert store.labels.count() == before
        long_reason = client.post(
            "/api/v1/deployments/churn/rollout/pause",
            json={"reason": "r" * 5000},
            headers=adminapp.bearer(store, "operator", "o" * 200),
        )
        assert long_reason.status_code < 500, long_reason.get_data(as_text=True)


def test_a_failing_champion_is_reported_to_anonymous_clients_without_its_address(
    store: Store, tmp_path: Path
) -> None:
    like = mlpipes.register(store, tmp_path, version="1")
    remote = mlpipes.register_upstream(
        store,
        name="remote",
        version="1",
        url="http://127.0.0.1:9/v2/models/secret-host",
        protocol="v2",
        like=like,
    )
    mlpipes.deploy(store, "remote", remote)
    with adminapp.running(store, tmp_path) as app:
        response = app.test_client().post("/v1/models/remote/invocations", json=_split_rows(1))
    assert response.status_code in (502, 503, 504)
    message = response.get_json()["error"]["message"]
    assert "127.0.0.1" not in message and "secret-host" not in message and "remote:1" in message
