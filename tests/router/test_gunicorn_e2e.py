"""End to end: gunicorn with 2 sync workers serving the router app, MLflow and V2 clients, SIGTERM.

Uses the test-only entry point router_wsgi.py (create_app plus the worker_exit hook), so that the
router is tested on its own; `mlcanary router` wires the same pieces.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import mlpipes
import pytest

from storage import Database, Store

pytestmark = pytest.mark.slow

FRAME, _ = mlpipes.churn_frame(3, seed=11)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_gunicorn_router_answers_both_protocols_and_stores_every_pair_after_sigterm(
    sqlite_url: str, tmp_path: Path
) -> None:
    store = Store(Database(sqlite_url))
    champion = mlpipes.register(store, tmp_path, version="1")
    challenger = mlpipes.register(store, tmp_path, version="2", seed=5)
    deployment = mlpipes.deploy(store, "churn", champion)
    mlpipes.start_rollout(store, deployment, challenger, mode="canary", canary_weight=30, shadow_rate=1)
    port = _free_port()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "ROUTER_TEST_DATABASE_URL": sqlite_url,
        "ROUTER_TEST_SPOOL_DIR": str(tmp_path / "spool"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    here = Path(__file__).parent
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--worker-class",
            "sync",
            "--graceful-timeout",
            "30",
            "--pythonpath",
            f"{here},{here.parent / 'support'},{here.parent.parent}",
            "--config",
            str(here / "router_wsgi.py"),
            "router_wsgi:create()",
        ],  # fmt: skip
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    answered: set[str] = set()
    arms: set[str] = set()
    try:
        with httpx.Client(base_url=base, timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "router did not become ready"
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                time.sleep(0.1)
            split = json.loads(FRAME.to_json(orient="split", index=False))
            for i in range(60):
                response = client.post(
                    "/v1/models/churn/invocations",
                    json={"dataframe_split": split},
                    headers={"X-Request-Id": f"mlflow-{i}"},
                )
                assert response.status_code == 200
                assert len(response.json()["predictions"]) == 3
                answered.add(response.headers["X-Request-Id"])
                arms.add(response.headers["X-Mlcanary-Arm"])
            v2_inputs: list[dict[str, Any]] = [
                {
                    "name": name,
                    "shape": [len(FRAME), 1],
                    "datatype": {"f": "FP64", "i": "INT64", "b": "BOOL"}.get(FRAME[name].dtype.kind, "BYTES"),
                    "data": json.loads(FRAME[name].to_json(orient="values")),
                }
                for name in FRAME.columns
            ]
            for i in range(60):
                response = client.post("/v2/models/churn/infer", json={"id": f"v2-{i}", "inputs": v2_inputs})
                assert response.status_code == 200
                assert response.json()["id"] == f"v2-{i}"
                answered.add(response.headers["X-Request-Id"])
            metrics = client.get("/metrics").text
            assert "mlcanary_requests_total" in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    assert process.returncode == 0
    assert arms == {"champion", "challenger"}
    stored = store.pairs.existing_request_ids(answered)
    assert stored == answered
    assert store.pairs.count() == 3 * len(answered)
