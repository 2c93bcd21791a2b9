"""The data plane under a threaded server: many requests at once in one process, none lost or counted twice.

gunicorn's threaded worker runs several requests of one process at the same time; they share the
route table, the shadow pool, the recorder and the counters. 16 client threads send through one
router app with a shadow rollout and a tiny shadow queue (so that some shadow jobs are dropped
while others are scored): every request is answered and stored exactly once, and the pool's drop
counter equals the pairs storage holds as skipped for a full queue.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import mlpipes

from router.shadow import BUDGET, QUEUE_FULL
from storage import Store

THREADS = 16
EACH = 30
FRAME, _ = mlpipes.churn_frame(1, seed=9)
BODY = {"dataframe_split": json.loads(FRAME.to_json(orient="split", index=False))}


def test_concurrent_requests_are_each_answered_and_stored_once_and_drops_are_counted_exactly(
    sqlite_store: Store, churn: Any, tmp_path: Path, make_app: Any
) -> None:
    deployment, _ = churn
    challenger = mlpipes.register(sqlite_store, tmp_path, version="2", seed=7)
    mlpipes.start_rollout(sqlite_store, deployment, challenger, mode="shadow", shadow_rate=1)
    app = make_app(shadow_queue_size=3, shadow_linger_s=0.02, switch_interval_s=0.0001)
    statuses: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def client(t: int) -> None:
        test_client = app.test_client()
        start.wait()
        for n in range(EACH):
            response = test_client.post(
                "/v1/models/churn/invocations", json=BODY, headers={"X-Request-Id": f"t{t}-{n}"}
            )
            with lock:
                statuses.append(response.status_code)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    plane = app.extensions["mlcanary.dataplane"]
    plane.close(timeout=10)

    assert statuses == [200] * (THREADS * EACH)
    pairs = sqlite_store.pairs.list(limit=10_000)
    assert sorted(p.request_id for p in pairs) == sorted(
        f"t{t}-{n}" for t in range(THREADS) for n in range(EACH)
    )
    # a job the full queue (or the deployment's share of it) refused is a skip, never the arm's error
    dropped = sum(p.challenger_status == "skipped" and p.skip_reason in (QUEUE_FULL, BUDGET) for p in pairs)
    assert not any(p.challenger_error for p in pairs)
    scored = sum(p.challenger_class is not None for p in pairs)
    assert dropped > 0 and scored > 0  # the tiny queue overflowed, and shadow work still got done
    assert plane.shadow.dropped == dropped
    assert all(p.champion_class is not None and p.champion_error is None for p in pairs)
