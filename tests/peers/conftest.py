"""Peer model servers, once per test run: MLServer 1.7.1, a KServe 0.21 model server, `mlflow models serve`.

Models are fitted here, saved with joblib (the servers' format) and served from loopback ports. Each
server's environment is installed on first use under .cache/peers/<kind> (see tests/support/peers.py);
if that fails the tests that need it are skipped with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import mlpipes
import peers
import pytest
from peers import NUMERIC, Models
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from storage import Store

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require(kind: str, start: Callable[[Path], Any]) -> Any:
    try:
        return start(peers.peer_python(kind))
    except peers.PeerUnavailable as error:
        if IN_CI:
            pytest.fail(f"{kind}: {error}; under CI=true the peer servers are required", pytrace=False)
        pytest.skip(f"{kind} is not available here: {error}")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    directory = tmp_path_factory.mktemp("peer-models")
    columns = mlpipes.classifier(seed=3)
    frame, target = mlpipes.churn_frame(400, seed=3, missing=0)
    tensor = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
        frame[NUMERIC].to_numpy(), target
    )
    joblib.dump(columns, directory / "columns.joblib")
    joblib.dump(tensor, directory / "tensor.joblib")
    return Models(columns, tensor, directory / "columns.joblib", directory / "tensor.joblib", directory)


@pytest.fixture(scope="session")
def mlserver(models: Models) -> Iterator[peers.PeerServer]:
    """MLServer serving "churn" (content_type pd in its settings) and "tensor" (NumPy codec)."""
    server = _require(
        "mlserver",
        lambda python: peers.start_mlserver(
            python,
            models.directory / "mlserver",
            {"churn": models.columns_path, "tensor": models.tensor_path},
            pandas={"churn"},
        ),
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kserve_server(models: Models) -> Iterator[peers.PeerServer]:
    """A KServe ModelServer serving "churn" (pandas request) and "tensor" (one 2-D tensor)."""
    server = _require(
        "kserve",
        lambda python: peers.start_kserve(
            python, models.directory / "kserve", {"churn": models.columns_path, "tensor": models.tensor_path}
        ),
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(models: Models) -> Iterator[peers.PeerServer]:
    """`mlflow models serve` of the churn pipeline, saved as an MLflow model from the joblib file."""

    def start(python: Path) -> peers.PeerServer:
        model_dir = peers.mlflow_model(python, models.columns_path, models.directory / "mlflow-model")
        return peers.start_mlflow(python, models.directory / "mlflow", model_dir)

    server = _require("mlflow", start)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlserver_python() -> Path:
    """The MLServer environment's Python (it has tritonclient)."""
    return _require("mlserver", lambda python: python)


@pytest.fixture
def upstream_timeout_s() -> float:
    """Real model servers on a loaded machine: a generous upstream and shadow timeout."""
    return 10.0


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    """SQLite only: these tests are about the model servers, not storage."""
    return sqlite_store
