"""The canary challenger's circuit breaker and bulkhead, through a real data plane and a real upstream.

The challenger is an MLflow upstream on loopback (a small Flask app that counts its calls and can be
switched between failing with 503, answering, and hanging); the champion is a fitted pipeline in
process. The breaker is judged by what the upstream saw (its own call count) and by what the
clients and storage got.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import mlpipes
from flask import Flask, request

from router.breaker import BUSY, CIRCUIT_OPEN
from storage import Store

FRAME, _ = mlpipes.churn_frame(1, seed=3)
BODY = {"dataframe_split": json.loads(FRAME.to_json(orient="split", index=False))}


class Upstream:
    """A model server whose behaviour the test switches: "fail" (503), "answer" or "hang" (until released)."""

    def __init__(self) -> None:
        self.mode = "fail"
        self.calls = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.app = Flask("upstream")
        self.app.add_url_rule("/invocations", "invocations", self._invocations, methods=["POST"])

    def _invocations(self) -> Any:
        with self._lock:
            self.calls += 1
        if self.mode == "hang":
            self.release.wait(10)
        if self.mode == "fail":
            return {"error": "down"}, 503
        rows = len(request.get_json()["dataframe_split"]["data"])
        return {"predictions": [1] * rows}


def _canary(store: Store, tmp_path: Path, url: str) -> Any:
    champion = mlpipes.register(store, tmp_path, version="1")
    deployment = mlpipes.deploy(store, "churn", champion)
    remote = mlpipes.register_upstream(
        store, name="remote", version="1", url=url, protocol="mlflow", like=champion
    )
    return mlpipes.start_rollout(store, deployment, remote, mode="canary", canary_weight=100, shadow_rate=0)


def _warmed(upstream: Upstream, mode: str) -> int:
    """Wait for the router's warm-up call (it scores a new version once before routing to it), then
    switch the upstream to ``mode``; return the calls made so far, which the test then discounts."""
    deadline = time.monotonic() + 10
    while upstream.calls < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert upstream.calls == 1, "the router warms the challenger with one call before routing to it"
    upstream.mode = mode
    return upstream.calls


def _ask(client: Any, n: int) -> tuple[int, str]:
    response = client.post("/v1/models/churn/invocations", json=BODY, headers={"X-Request-Id": f"r{n}"})
    return response.status_code, str(response.headers.get("X-Mlcanary-Arm"))


def test_the_breaker_opens_after_the_failures_answers_with_the_champion_and_closes_after_a_good_probe(
    sqlite_store: Store, tmp_path: Path, make_app: Any, serve_wsgi: Any
) -> None:
    upstream = Upstream()
    upstream.mode = "answer"
    rollout = _canary(sqlite_store, tmp_path, f"{serve_wsgi(upstream.app)}/invocations")
    app = make_app(breaker_failures=2, breaker_open_s=0.5)
    client = app.test_client()
    warm = _warmed(upstream, "fail")

    failing = [_ask(client, n) for n in range(6)]
    assert failing == [(200, "champion")] * 6
    assert upstream.calls - warm == 2  # opened after two faults: the other four never reached the challenger

    time.sleep(0.6)  # open_s passed: half-open, the next request probes (and fails: open again)
    assert _ask(client, 6) == (200, "champion")
    assert _ask(client, 7) == (200, "champion")
    assert upstream.calls - warm == 3

    upstream.mode = "answer"
    assert _ask(client, 8) == (200, "champion")  # still open: not called
    assert upstream.calls - warm == 3
    time.sleep(0.6)
    recovered = [_ask(client, n) for n in range(9, 14)]
    assert recovered == [(200, "challenger")] * 5  # the probe succeeded: closed again
    assert upstream.calls - warm == 8

    app.extensions["mlcanary.dataplane"].close(timeout=5)
    pairs = {p.request_id: p for p in sqlite_store.pairs.list(rollout_id=rollout.id, limit=100)}
    assert len(pairs) == 14
    errors = [pairs[f"r{n}"].challenger_error or "" for n in range(9)]
    tried = [0, 1, 6]
    assert all("503" in errors[n] and not errors[n].startswith(CIRCUIT_OPEN) for n in tried)
    assert all(errors[n].startswith(CIRCUIT_OPEN) and "503" in errors[n] for n in range(9) if n not in tried)
    assert all(
        pairs[f"r{n}"].served_arm == "champion" and pairs[f"r{n}"].champion_class is not None
        for n in range(9)
    )
    assert all(pairs[f"r{n}"].served_arm == "challenger" for n in range(9, 14))


def test_beyond_the_bulkhead_the_champion_answers_at_once_while_the_others_wait(
    sqlite_store: Store, tmp_path: Path, make_app: Any, serve_wsgi: Any
) -> None:
    upstream = Upstream()
    upstream.mode = "answer"
    rollout = _canary(sqlite_store, tmp_path, f"{serve_wsgi(upstream.app)}/invocations")
    app = make_app(challenger_concurrency=2, breaker_failures=50, upstream_timeout_s=10.0)
    warm = _warmed(upstream, "hang")
    answers: dict[int, tuple[int, str]] = {}

    def ask(n: int) -> None:
        answers[n] = _ask(app.test_client(), n)

    hanging = [threading.Thread(target=ask, args=(n,)) for n in range(2)]
    for thread in hanging:
        thread.start()
    deadline = time.monotonic() + 10
    while upstream.calls - warm < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (
        upstream.calls - warm == 2
    )  # both slots of the bulkhead are held by calls waiting on the challenger
    extra = [_ask(app.test_client(), n) for n in range(2, 6)]  # answered while the two still wait
    assert extra == [(200, "champion")] * 4
    assert upstream.calls - warm == 2
    assert all(thread.is_alive() for thread in hanging)
    upstream.release.set()
    for thread in hanging:
        thread.join(10)
    assert answers == {0: (200, "challenger"), 1: (200, "challenger")}

    app.extensions["mlcanary.dataplane"].close(timeout=5)
    pairs = {p.request_id: p for p in sqlite_store.pairs.list(rollout_id=rollout.id, limit=100)}
    assert [pairs[f"r{n}"].challenger_error for n in range(2, 6)] == [BUSY] * 4
