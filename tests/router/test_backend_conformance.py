"""One suite over every backend: in-process, V2 upstream and MLflow upstream (a real server on loopback).

The upstream model server is itself an mlcanary router serving the same registered pipeline, so
both protocols are exercised end to end with a real HTTP hop.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlpipes
import numpy as np
import pytest

from router.backends import Backend, create_backend
from router.errors import BackendError, InvalidOutput, ModelTimeout, ModelUnavailable
from router.settings import RouterSettings
from storage import Store
from storage.artifacts import load_artifact
from storage.entities import PipelineVersion

FRAME, _ = mlpipes.churn_frame(25, seed=5)


@pytest.fixture(params=["inprocess", "v2", "mlflow"])
def backend_for(
    request: pytest.FixtureRequest,
    sqlite_store: Store,
    settings: RouterSettings,
    make_app: Any,
    serve_wsgi: Any,
) -> Iterator[Callable[[PipelineVersion], Backend]]:
    """Turn a registered artifact version into a backend of the parametrised kind."""
    kind = request.param
    backends: list[Backend] = []

    def make(version: PipelineVersion) -> Backend:
        if kind == "inprocess":
            backend = create_backend(version, settings)
        else:
            name = f"up{version.id}"
            mlpipes.deploy(sqlite_store, name, version)
            base = serve_wsgi(make_app())
            url = f"{base}/v2/models/{name}" if kind == "v2" else f"{base}/v1/models/{name}/invocations"
            remote = mlpipes.register_upstream(
                sqlite_store, name=f"remote-{name}", version="1", url=url, protocol=kind, like=version
            )
            backend = create_backend(remote, settings)
        backends.append(backend)
        return backend

    yield make
    for backend in backends:
        backend.close()


def _pipeline(version: PipelineVersion) -> Any:
    assert version.artifact_path and version.sha256 and version.artifact_format
    return load_artifact(
        version.artifact_path, sha256=version.sha256, fmt=version.artifact_format, trust_pickle=True
    )


def test_classifier_answers_the_pipelines_classes_and_positive_class_scores(
    backend_for: Any, sqlite_store: Store, tmp_path: Path
) -> None:
    version = mlpipes.register(sqlite_store, tmp_path, name="clf", version="1")
    predictions = backend_for(version).predict(FRAME)
    pipeline = _pipeline(version)
    assert predictions.outputs == pipeline.predict(FRAME).tolist()
    if predictions.scores is not None:  # MLflow servers answer classes only
        assert np.allclose(predictions.scores, pipeline.predict_proba(FRAME)[:, 1])


def test_regressor_answers_the_pipelines_values(
    backend_for: Any, sqlite_store: Store, tmp_path: Path
) -> None:
    version = mlpipes.register(sqlite_store, tmp_path, name="reg", version="1", kind="boosted")
    predictions = backend_for(version).predict(FRAME)
    assert np.allclose(predictions.outputs, _pipeline(version).predict(FRAME))
    assert predictions.scores is None


def test_one_prediction_per_row_for_single_rows_and_batches(
    backend_for: Any, sqlite_store: Store, tmp_path: Path
) -> None:
    backend = backend_for(mlpipes.register(sqlite_store, tmp_path, name="clf", version="1"))
    assert len(backend.predict(FRAME.iloc[:1])) == 1
    assert len(backend.predict(FRAME)) == len(FRAME)


@pytest.mark.parametrize("fault", ["raises", "garbage"])
def test_a_failing_pipeline_raises_a_backend_error_and_nothing_else(
    backend_for: Any, sqlite_store: Store, tmp_path: Path, fault: str
) -> None:
    backend = backend_for(mlpipes.register(sqlite_store, tmp_path, name="bad", version="1", fault=fault))
    with pytest.raises(BackendError):
        backend.predict(FRAME)


def test_garbage_shape_in_process_is_an_invalid_output(
    sqlite_store: Store, tmp_path: Path, settings: Any
) -> None:
    version = mlpipes.register(sqlite_store, tmp_path, name="bad", version="1", fault="garbage")
    with pytest.raises(InvalidOutput):
        create_backend(version, settings).predict(FRAME)


def test_a_tampered_artifact_is_never_served(sqlite_store: Store, tmp_path: Path, settings: Any) -> None:
    version = mlpipes.register(sqlite_store, tmp_path, name="clf", version="1")
    assert version.artifact_path
    with open(version.artifact_path, "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ModelUnavailable, match="changed after registration"):
        create_backend(version, settings).predict(FRAME)


def test_an_upstream_that_hangs_times_out(
    sqlite_store: Store, tmp_path: Path, settings: Any, make_app: Any, serve_wsgi: Any
) -> None:
    slow = mlpipes.register(sqlite_store, tmp_path, name="slow", version="1", fault="sleeps", delay=3.0)
    mlpipes.deploy(sqlite_store, "slow", slow)
    base = serve_wsgi(make_app())
    remote = mlpipes.register_upstream(
        sqlite_store, name="remote", version="1", url=f"{base}/v2/models/slow", protocol="v2", like=slow
    )
    backend = create_backend(remote, settings)
    started = time.monotonic()
    with pytest.raises(ModelTimeout):
        backend.predict(FRAME)
    assert time.monotonic() - started < 2.5
    backend.close()


@pytest.mark.parametrize("protocol", ["v2", "mlflow"])
def test_an_unreachable_upstream_is_unavailable(
    sqlite_store: Store, tmp_path: Path, settings: Any, protocol: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    like = mlpipes.register(sqlite_store, tmp_path, name="clf", version="1")
    remote = mlpipes.register_upstream(
        sqlite_store,
        name="remote",
        version="1",
        url=f"http://127.0.0.1:{port}/x",
        protocol=protocol,
        like=like,
    )
    backend = create_backend(remote, settings)
    with pytest.raises(ModelUnavailable):
        backend.predict(FRAME)
    backend.close()
