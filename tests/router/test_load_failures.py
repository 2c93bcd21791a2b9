"""A version a router cannot load (issue 19): /readyz says so, and the log says it once a minute.

The champion here is a skops file holding a custom type nobody trusted (tests/support/mlpipes'
FaultyClassifier): every load is refused, as a data scientist's own transformer is before --trust-type.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import mlpipes
import pytest

from router.routes import RouteTable
from storage import Store
from storage.artifacts import store_artifact
from storage.entities import NewPipelineVersion, PipelineVersion


def untrusted(store: Store, tmp_path: Path, *, name: str) -> PipelineVersion:
    """Register a skops pipeline whose custom type is not trusted: no router can load it."""
    source = mlpipes.save(mlpipes.faulty("raises"), tmp_path / "sources", f"{name}-1", fmt="skops")
    stored, digest = store_artifact(source, tmp_path / "artifacts")
    frame, _ = mlpipes.churn_frame(5)
    return store.pipelines.add(
        NewPipelineVersion(
            name=name, version="1", kind="artifact", task="classification",
            input_schema=mlpipes.input_schema(frame), classes=(0, 1), artifact_path=str(stored),
            artifact_format="skops", sha256=digest,
        )
    )  # fmt: skip


def test_readyz_is_not_ready_while_a_champion_cannot_load_and_ready_once_it_is_gone(
    sqlite_store: Store, churn: Any, tmp_path: Path, make_app: Any, serve_wsgi: Any
) -> None:
    custom = untrusted(sqlite_store, tmp_path, name="custom")
    mlpipes.deploy(sqlite_store, "custom", custom)
    url = serve_wsgi(make_app(trust_pickle=False))
    answer = httpx.get(f"{url}/readyz", timeout=10)
    assert answer.status_code == 503
    body = answer.json()
    assert body["ready"] is False and set(body["unservable"]) == {"custom"}
    assert "not trusted" in body["failed_versions"]["custom:1"]
    # the other deployment still answers; the broken one says why
    assert (
        httpx.post(f"{url}/v1/models/churn/invocations", json=mlpipes_body(), timeout=10).status_code == 200
    )
    assert (
        httpx.post(f"{url}/v1/models/custom/invocations", json=mlpipes_body(), timeout=10).status_code == 503
    )
    sqlite_store.deployments.archive("custom", event=archived())
    ready = wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200)
    assert ready, httpx.get(f"{url}/readyz", timeout=10).json()


def test_a_challenger_that_cannot_load_leaves_the_router_ready(
    sqlite_store: Store, churn: Any, tmp_path: Path, make_app: Any, serve_wsgi: Any
) -> None:
    deployment, _ = churn
    challenger = untrusted(sqlite_store, tmp_path, name="churn-custom")
    mlpipes.start_rollout(sqlite_store, deployment, challenger, mode="shadow")
    url = serve_wsgi(make_app(trust_pickle=False))
    body = httpx.get(f"{url}/readyz", timeout=10).json()
    assert body["ready"] is True and body["unservable"] == {} and "churn-custom:1" in body["failed_versions"]


def test_a_version_that_keeps_failing_to_load_is_logged_once_a_minute_not_at_every_retry(
    sqlite_store: Store, tmp_path: Path, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    custom = untrusted(sqlite_store, tmp_path, name="custom")
    mlpipes.deploy(sqlite_store, "custom", custom)
    now = [0.0]
    attempts: list[float] = []

    def factory(version: PipelineVersion, s: Any) -> Any:
        from router.backends import create_backend

        attempts.append(now[0])
        return create_backend(version, s)

    table = RouteTable(
        sqlite_store, settings.__class__(**{**vars(settings), "trust_pickle": False}),
        backend_factory=factory, clock=lambda: now[0],
    )  # fmt: skip
    retry = table.settings.load_retry_interval
    every = table.settings.load_failure_log_interval
    assert (retry, every) == (5.0, 60.0)  # the defaults: a retry every 5 s, a log line every minute
    with caplog.at_level(logging.ERROR, logger="router.routes"):
        for tick in range(37):  # three minutes of refreshes, one per retry interval
            now[0] = tick * retry
            table.refresh()
    lines = [r for r in caplog.records if r.getMessage().startswith("cannot load custom:1")]
    assert len(attempts) == 37  # the load is tried at every retry ...
    assert len(lines) == 4  # ... and logged at 0, 60, 120 and 180 s
    assert "not trusted" in lines[0].getMessage()
    table.close()


def mlpipes_body() -> dict[str, Any]:
    import json

    frame, _ = mlpipes.churn_frame(2, seed=1)
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def archived() -> Any:
    from storage.entities import NewEvent

    return NewEvent(actor="tests", action="deployment.archive", reason="archive", message="archived custom")


def wait_for(condition: Any, *, within: float = 10.0) -> bool:
    """Poll a condition until it holds (the router refreshes its table every 0.05 s here)."""
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())
