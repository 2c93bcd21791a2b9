"""Under a closed loop of kept-alive clients, `mlcanary serve` scores each round in one batch, not two halves.

A real `mlcanary serve` (gunicorn, 1 worker, the product's threaded worker with keep-alive), a real
fitted churn classifier whose calls take 20 ms (tests/support/batchpipes.py), and CLIENTS clients
each sending its next request as soon as it has its answer, on its own kept-alive connection. A
leader that waited only for requests already inside the process scored the answered clients' next
requests in the following call: the process's requests settled into two alternating half-size
batches (CLIENTS / 2 per call). Counting an answered kept-alive connection as returning for the
batch delay keeps each round whole. The batch size is read from the server's own /metrics.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import batchpipes
import httpx
import mlpipes
import pytest
from servers import Server, body, wait_for

from storage import Database, Store
from storage.entities import BatchingConfig

pytestmark = pytest.mark.slow

CLIENTS = 6
ROUNDS = 25


def test_a_closed_loop_of_kept_alive_clients_is_scored_in_whole_rounds(
    tmp_path: Path, sqlite_template: Path, launch: Callable[..., Server]
) -> None:
    path = tmp_path / "mlcanary.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    store = Store(Database(url))
    version = batchpipes.register(store, tmp_path, tag="loop", delay=0.02)
    mlpipes.deploy(store, "churn", version)
    # a generous delay: a loaded CI machine may take a few ms to turn an answer into the next request
    store.deployments.update("churn", batching=BatchingConfig(max_batch_delay_ms=50.0))
    store.db.dispose()
    server = launch("serve", url, workers=1, threads=2 * CLIENTS)
    server.wait_ready(timeout=90)
    failures: list[str] = []
    start = threading.Barrier(CLIENTS)

    def client(c: int) -> None:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:  # one kept-alive connection
            start.wait()
            for i in range(ROUNDS):
                answer = http.post("/v1/models/churn/invocations", json=body(1, offset=c * ROUNDS + i))
                if answer.status_code != 200:
                    failures.append(answer.text)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    wait_for(
        lambda: server.metric("mlcanary_live_batched_requests_total") >= CLIENTS * ROUNDS,
        timeout=10,
        message="the live batch counters to be published",
    )
    requests = server.metric("mlcanary_live_batched_requests_total")
    calls = server.metric("mlcanary_live_batches_total")

    assert not failures, failures[:3]
    assert requests == CLIENTS * ROUNDS
    # whole rounds: CLIENTS per call but for the first rounds and stragglers; two halves would give 3
    assert requests / calls >= 0.75 * CLIENTS, f"{requests / calls:.2f} requests per call"
