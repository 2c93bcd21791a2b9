"""docs/examples/client.py, run as written against a real `mlcanary serve` (issue 19: a Python client)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlpipes
import numpy as np
import pytest
from servers import Server

from storage import Database, Store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(tmp_path: Path, sqlite_url: str) -> tuple[Server, Store]:
    store = Store(Database(sqlite_url))
    version = mlpipes.register(store, tmp_path)
    mlpipes.deploy(store, "churn", version)
    server = Server("serve", sqlite_url, tmp_path / "var", workers=1)
    try:
        server.wait_ready()
        yield server, store  # type: ignore[misc]
    finally:
        server.kill()


def test_the_client_example_scores_rows_with_missing_values_and_its_labels_join(
    served: tuple[Server, Store], tmp_path: Path
) -> None:
    server, store = served
    frame, target = mlpipes.churn_frame(40, seed=3, missing=0.2)  # NaN in numeric and text columns
    assert frame.isna().to_numpy().any()
    frame.assign(churned=target).to_csv(tmp_path / "rows.csv", index=False)
    token, _ = store.tokens.create("client-labels", "labeller")
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "client.py"), "--url", server.base_url,
         "--deployment", "churn", "--csv", str(tmp_path / "rows.csv"), "--target", "churned", "--token", token],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    expected = mlpipes.classifier(seed=0).predict(frame)  # the same fitted pipeline, scored here
    assert np.array_equal(np.asarray(answer["predictions"]), expected)
    assert answer["request_id"].startswith("client-")
    labels = answer["labels"]
    # stored at once, or kept pending until the request's pair is written (then joined, below)
    assert labels["stored"] == 40 or labels["unknown_request_ids"] == [answer["request_id"]]
    deadline = time.monotonic() + 60
    while store.labels.count() < 40 and time.monotonic() < deadline:  # pending labels join their pair
        time.sleep(0.2)
    assert store.labels.count() == 40
