"""Warm before routing: a challenger that starts cold (slow load, slow first call) is never charged for it."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import faults
import mlpipes
from servers import body, wait_for

from router import create_app
from router.settings import RouterSettings
from storage import Store

FIRST_CALL_S = 2.0
TIMEOUT_S = 0.5  # the cold first call alone would run past it


def test_a_cold_challenger_started_while_traffic_flows_is_never_charged_for_its_start(
    store: Store, tmp_path: Path, settings: RouterSettings
) -> None:
    champion = mlpipes.register(store, tmp_path, version="1")
    deployment = mlpipes.deploy(store, "churn", champion)
    cold = faults.register_cold(store, tmp_path, version="2", load_s=2.0, first_call_s=FIRST_CALL_S)
    app = create_app(store, replace(settings, shadow_timeout_s=TIMEOUT_S, shadow_linger_s=0.01))
    plane = app.extensions["mlcanary.dataplane"]
    stop = threading.Event()
    statuses: list[int] = []

    def clients(n: int) -> None:
        client = app.test_client()
        i = 0
        while not stop.is_set():
            response = client.post(
                "/v1/models/churn/invocations", json=body(10, i), headers={"X-Request-Id": f"c{n}-{i}"}
            )
            statuses.append(response.status_code)
            i += 1

    threads = [threading.Thread(target=clients, args=(n,), daemon=True) for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(statuses) >= 20, 30, "traffic flows before the rollout")
        rollout = mlpipes.start_rollout(store, deployment, cold, mode="shadow")  # picked up while serving
        wait_for(
            lambda: (
                sum(p.challenger_status == "ok" for p in store.pairs.list(rollout_id=rollout.id, limit=5000))
                >= 300
            ),
            60,
            "the challenger scores 300 shadow rows",
        )
        ready = app.test_client().get("/readyz").json
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        plane.close(timeout=5)
    pairs = store.pairs.list(rollout_id=rollout.id, limit=100_000)
    assert set(statuses) == {200}
    assert ready["warming"] == [] and ready["warmed_ms"][cold.ref] >= FIRST_CALL_S * 1000  # it paid there
    assert [p.challenger_error for p in pairs if p.challenger_status == "error"] == []
    scored = [p for p in pairs if p.challenger_status == "ok"]
    assert scored and all(p.challenger_class == p.champion_class for p in scored)  # the same model
    # No pair carries the cold call. (A pair's latency is wall time, as the champion's is: on a loaded
    # host it may pass the timeout, which counts the arm's own time only, without being charged.)
    assert all(p.challenger_latency_ms < FIRST_CALL_S * 1000 for p in scored)
