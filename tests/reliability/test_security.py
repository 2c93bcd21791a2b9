"""Security promises the other suites do not already cover.

Covered elsewhere (see the report): the auth table over every admin route with missing, malformed,
wrong, revoked and under-privileged tokens (tests/controller/test_auth.py); tokens stored hashed
(tests/storage/test_repositories.py); pickles only with the opt-in and a tampered artifact refused at
load (tests/controller/test_registry.py). Here: no cookie-borne authority (so no CSRF), a CSP with no
external origin on every HTML page, malicious uploads over HTTP, and retention that never blocks writers.
"""

from __future__ import annotations

import io
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import adminapp
import mlpipes
import pytest
from flask import Flask

from storage import Store
from storage.entities import PairRecord


@pytest.fixture
def app_data(store: Store, tmp_path: Path) -> None:
    """A deployment "churn" with a rollout of churn:2 (stored before the app starts)."""
    v1 = mlpipes.register(store, tmp_path, version="1")
    v2 = mlpipes.register(store, tmp_path, version="2", seed=3)
    churn = mlpipes.deploy(store, "churn", v1)
    mlpipes.start_rollout(store, churn, v2)


def test_dashboard_actions_cannot_be_forged_cross_site(app: Flask, store: Store) -> None:
    client = app.test_client()
    operator = adminapp.bearer(store, "operator")
    # Authority is only ever a bearer header a browser never adds by itself: no response sets a cookie,
    # a cross-site form post (with any cookie) is refused, and no origin is allowed to read the API.
    for path in ("/", "/api/v1/deployments", "/api/v1/deployments/churn", "/api/v1/openapi.json"):
        response = client.get(path, headers=operator)
        assert "Set-Cookie" not in response.headers, path
    client.set_cookie("session", "stolen", domain="localhost")
    forged = client.post(
        "/api/v1/deployments/churn/rollout/rollback",
        data={"reason": "csrf"},
        headers={"Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert forged.status_code == 401
    assert store.rollouts.list()[0].phase == "shadowing"
    preflight = client.options(
        "/api/v1/deployments/churn/rollout/rollback",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers


def _directives(policy: str) -> dict[str, list[str]]:
    return {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}


def test_every_html_page_has_a_csp_that_allows_no_external_origin(app: Flask, store: Store) -> None:
    client = app.test_client()
    operator = adminapp.bearer(store, "operator")
    pages = [client.get("/"), client.get("/api/v1/deployments/churn/report?format=html", headers=operator)]
    for page in pages:
        assert page.status_code == 200 and page.mimetype == "text/html"
        directives = _directives(page.headers["Content-Security-Policy"])
        assert directives["default-src"] == ["'self'"] and directives["frame-ancestors"] == ["'none'"]
        for name, sources in directives.items():
            for source in sources:
                assert source.startswith("'") or source in ("data:",), f"{name} allows {source}"


def _upload(client: Any, headers: dict[str, str], filename: str, content: bytes, version: str) -> Any:
    return client.post(
        "/api/v1/pipelines",
        headers=headers,
        content_type="multipart/form-data",
        data={
            "name": "evil",
            "version": version,
            "task": "classification",
            "artifact": (io.BytesIO(content), filename),
        },
    )


def test_malicious_uploads_are_refused_with_a_clear_error_and_write_nothing(
    app: Flask, store: Store, tmp_path: Path
) -> None:
    client = app.test_client()
    operator = adminapp.bearer(store, "operator")
    skops = (tmp_path / "sources" / "churn-1.skops").read_bytes()
    joblib_file = mlpipes.save(mlpipes.faulty("raises"), tmp_path / "j", "p", fmt="joblib").read_bytes()
    artifacts = (tmp_path / "var" / "artifacts").resolve()

    def files_in_store() -> set[Path]:
        return {f for f in artifacts.rglob("*") if f.is_file()} if artifacts.exists() else set()

    versions_before = {v.ref for v in store.pipelines.list()}
    files_before = files_in_store()
    accepted: list[str] = []
    cases = {
        "traversal": ("../../../../tmp/evil-traversal.skops", skops),
        "absolute": ("/tmp/evil-absolute.skops", skops),
        "pickle without opt-in": ("model.joblib", joblib_file),
        "pickle disguised as skops": ("model.skops", joblib_file),
        "not a model": ("model.skops", b"PK\x03\x04 this is not a skops file"),
    }
    for number, (name, (filename, content)) in enumerate(cases.items()):
        response = _upload(client, operator, filename, content, str(number))
        if name in ("traversal", "absolute") and response.status_code == 201:
            stored = Path(store.pipelines.get_by_ref(f"evil:{number}").artifact_path or "").resolve()
            assert artifacts in stored.parents, f"{name}: stored outside the artifact store at {stored}"
            accepted.append(f"evil:{number}")
            continue
        assert 400 <= response.status_code < 500, (
            name,
            response.status_code,
            response.get_data(as_text=True),
        )
        message = response.get_json()["error"]["message"]
        assert message and len(message) < 500, name
        if name == "pickle without opt-in":
            assert "pickle" in message.lower() or "trust" in message.lower(), message
    assert not Path("/tmp/evil-traversal.skops").exists() and not Path("/tmp/evil-absolute.skops").exists()
    # Refused uploads write nothing: the only new versions are the accepted (confined) ones, and the
    # artifact store holds no new file but those of the accepted versions (content-addressed: two
    # accepted uploads of the same bytes share one file).
    assert {v.ref for v in store.pipelines.list()} - versions_before == set(accepted)
    kept = {Path(store.pipelines.get_by_ref(ref).artifact_path or "").resolve() for ref in accepted}
    assert files_in_store() - files_before == kept


def test_retention_prunes_old_pairs_in_batches_while_writers_keep_writing(store: Store) -> None:
    deployment_id = mlpipes.deploy(store, "keep", store.pipelines.add(_version())).id
    old = datetime.now(UTC) - timedelta(days=40)
    for start in range(0, 20_000, 5000):
        store.pairs.insert_many([_pair(f"old-{i}", deployment_id, old) for i in range(start, start + 5000)])
    waits: list[tuple[float, float]] = []
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            began = time.monotonic()
            store.pairs.insert_many(
                [_pair(f"new-{n}-{i}", deployment_id, datetime.now(UTC)) for i in range(20)]
            )
            waits.append((began, time.monotonic() - began))
            n += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(0.3)
    began = time.monotonic()
    pruned = store.pairs.prune(before=datetime.now(UTC) - timedelta(days=30), batch_size=500)
    took = time.monotonic() - began
    stop.set()
    thread.join(10)
    assert pruned == 20_000
    assert store.pairs.count() == 20 * len(waits), "no new pair pruned, every write stored"
    during = [w for t, w in waits if began <= t <= began + took]
    assert during, "writers committed while the prune ran"
    assert max(during) < max(0.8 * took, 0.5), "no writer waited for the whole prune"


def _version() -> Any:
    from storage.entities import Column, NewPipelineVersion

    return NewPipelineVersion(
        name="m", version="1", kind="artifact", task="classification", input_schema=(Column("x", "float"),)
    )


def _pair(request_id: str, deployment_id: int, at: datetime) -> PairRecord:
    return PairRecord(
        request_id=request_id,
        row_index=0,
        deployment_id=deployment_id,
        rollout_id=None,
        step=0,
        received_at=at,
        routing_key_hash=1,
        served_arm="champion",
        champion_version_id=1,
        challenger_version_id=None,
        champion_class="1",
        champion_latency_ms=1.0,
    )
