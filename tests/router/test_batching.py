"""Adaptive batching on the live path, through real HTTP on loopback, on SQLite and PostgreSQL.

Concurrent clients call a router app served by a threaded server. The champion is a real fitted
churn classifier that records every call it receives (tests/support/batchpipes.py) and takes 30 ms
per call, so concurrent requests overlap. Answers are compared with the same fitted pipeline
scoring each request alone; pairs stored with the requests answered; the model's own record of
its calls says how requests were batched.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import batchpipes
import httpx
import mlpipes
import numpy as np
import pandas as pd
import pytest

from router.backends import InProcessBackend, Predictions
from router.batcher import Batcher
from router.errors import ModelUnavailable
from router.inputs import build_batch
from storage import Store
from storage.entities import BatchingConfig, PipelineVersion

THREADS = 12
INNER = mlpipes.classifier(seed=0)  # what the recording classifier delegates to


def _body(frame: pd.DataFrame) -> dict[str, Any]:
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def _requests(n: int, seed: int) -> list[pd.DataFrame]:
    """n request frames of 1-3 rows each, cut from one churn table (some values missing)."""
    table, _ = mlpipes.churn_frame(3 * n, seed=seed, missing=0.1)
    rng = np.random.default_rng(seed)
    frames, at = [], 0
    for _ in range(n):
        size = int(rng.integers(1, 4))
        frames.append(table.iloc[at : at + size].reset_index(drop=True))
        at += size
    return frames


def _expected(frame: pd.DataFrame) -> tuple[list[Any], list[float]]:
    proba = INNER.predict_proba(frame)
    return INNER.classes_[proba.argmax(axis=1)].tolist(), proba[:, 1].tolist()


def _send_all(
    base: str, deployment: str, bodies: list[dict[str, Any]], prefix: str
) -> dict[str, httpx.Response]:
    """POST every body from THREADS client threads at once; return request id -> response."""
    answers: dict[str, httpx.Response] = {}
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def client(t: int) -> None:
        with httpx.Client(timeout=30) as http:
            start.wait()
            for i in range(t, len(bodies), THREADS):
                rid = f"{prefix}{i}"
                response = http.post(
                    f"{base}/v1/models/{deployment}/invocations",
                    json=bodies[i],
                    headers={"X-Request-Id": rid},
                )
                with lock:
                    answers[rid] = response

    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return answers


def _router(store: Store, make_app: Callable[..., Any], deployments: list[str]) -> tuple[Any, Any]:
    app = make_app(store)
    plane = app.extensions["mlcanary.dataplane"]
    assert plane.ready and set(deployments) <= set(plane.routes.routes)
    return app, plane


def _deploy(store: Store, tmp_path: Path, name: str, tag: str, batching: BatchingConfig) -> PipelineVersion:
    version = batchpipes.register(store, tmp_path / name, tag=tag, name=name)
    store.deployments.create(name, version.id, batching=batching)
    return version


def test_concurrent_requests_share_calls_and_each_gets_what_scoring_it_alone_gives(
    store: Store, tmp_path: Path, make_app: Any, serve_wsgi: Any
) -> None:
    _deploy(store, tmp_path, "churn", "shared", BatchingConfig())
    app, plane = _router(store, make_app, ["churn"])
    batchpipes.reset("shared")  # forget the warm-up call
    frames = _requests(60, seed=3)
    base = serve_wsgi(app)
    answers = _send_all(base, "churn", [_body(f) for f in frames], "r")
    outside = plane.batcher.leaving("churn") + plane.batcher.arriving("churn")  # answered: none
    plane.close(timeout=10)

    assert {rid: r.status_code for rid, r in answers.items()} == {f"r{i}": 200 for i in range(60)}
    assert outside == 0  # every request counted out before its client had the answer
    for i, frame in enumerate(frames):
        classes, _ = _expected(frame)
        assert answers[f"r{i}"].json()["predictions"] == classes
    calls = batchpipes.calls("shared")
    assert sum(rows for rows, _ in calls) == sum(len(f) for f in frames)  # every row scored exactly once
    assert len(calls) < 60 / 2  # on average more than two requests per call
    assert max(rows for rows, _ in calls) <= BatchingConfig().max_batch_rows
    pairs = store.pairs.list(limit=1000)
    assert len(pairs) == sum(len(f) for f in frames)  # one pair per row of every answered request
    by_row = {(p.request_id, p.row_index): p for p in pairs}
    for i, frame in enumerate(frames):
        classes, scores = _expected(frame)
        for k in range(len(frame)):
            pair = by_row[(f"r{i}", k)]
            assert pair.champion_class == str(classes[k])
            assert pair.champion_score == pytest.approx(scores[k], rel=1e-9, abs=1e-12)


def test_requests_whose_column_types_differ_are_never_scored_together(
    store: Store, tmp_path: Path, make_app: Any, serve_wsgi: Any
) -> None:
    _deploy(store, tmp_path, "churn", "types", BatchingConfig())
    app, plane = _router(store, make_app, ["churn"])
    batchpipes.reset("types")
    frames = _requests(48, seed=5)
    for frame in frames[::2]:  # half the requests: an int column with a missing value (float64)
        frame["support_calls"] = frame["support_calls"].astype("float64")
        frame.loc[0, "support_calls"] = np.nan
    base = serve_wsgi(app)
    answers = _send_all(base, "churn", [_body(f) for f in frames], "t")
    plane.close(timeout=10)

    assert all(r.status_code == 200 for r in answers.values()) and len(answers) == 48
    calls = batchpipes.calls("types")
    float_rows = sum(rows for rows, dtypes in calls if dtypes["support_calls"] == "float64")
    int_rows = sum(rows for rows, dtypes in calls if dtypes["support_calls"] == "int64")
    assert float_rows == sum(len(f) for f in frames[::2])  # no int request ever joined a float call
    assert int_rows == sum(len(f) for f in frames[1::2])
    assert len(calls) < 48  # and still batched within each kind


def test_a_bad_request_among_good_ones_fails_alone_with_the_code_it_gets_unbatched(
    store: Store, tmp_path: Path, make_app: Any, serve_wsgi: Any
) -> None:
    _deploy(store, tmp_path, "batched", "bad-on", BatchingConfig())
    _deploy(store, tmp_path, "alone", "bad-off", BatchingConfig(enabled=False))
    app, plane = _router(store, make_app, ["batched", "alone"])
    frames = _requests(36, seed=7)
    bodies = [_body(f) for f in frames]
    bodies[5]["dataframe_split"]["data"][0][0] = "not a number"  # fails validation (age)
    bodies[11]["dataframe_split"]["data"][0][-1] = "reject"  # the model refuses it (ValueError)
    bodies[17]["dataframe_split"]["data"][0][-1] = "crash"  # the model fails on it
    base = serve_wsgi(app)
    batched = _send_all(base, "batched", bodies, "b")
    alone = _send_all(base, "alone", bodies, "a")
    plane.close(timeout=10)

    bad = {5: (400, "wrong_type"), 11: (422, "model_rejected_input"), 17: (502, "model_error")}
    for i in range(36):
        b, a = batched[f"b{i}"], alone[f"a{i}"]
        assert b.status_code == a.status_code  # the same status and code as without batching
        if i in bad:
            assert (b.status_code, b.json()["error"]["code"]) == bad[i]
            assert b.json()["error"]["code"] == a.json()["error"]["code"]
        else:
            assert b.json()["predictions"] == _expected(frames[i])[0] == a.json()["predictions"]
    assert len(batchpipes.calls("bad-on")) < len(batchpipes.calls("bad-off"))  # batching did happen
    stored = {p.request_id for p in store.pairs.list(limit=1000)}
    answered_200 = {rid for rid, r in {**batched, **alone}.items() if r.status_code == 200}
    failed_model = {"b11", "b17", "a11", "a17"}  # answered with the model's error: recorded as today
    assert stored == answered_200 | failed_model


def test_the_shadow_arm_scores_every_batched_request_and_each_gets_its_pair(
    store: Store, tmp_path: Path, make_app: Any, serve_wsgi: Any
) -> None:
    _deploy(store, tmp_path, "churn", "live", BatchingConfig())
    deployment = store.deployments.get("churn")
    challenger = mlpipes.register(store, tmp_path, version="2", seed=7)
    mlpipes.start_rollout(store, deployment, challenger, mode="shadow", shadow_rate=1)
    app, plane = _router(store, make_app, ["churn"])
    batchpipes.reset("live")
    frames = _requests(48, seed=11)
    base = serve_wsgi(app)
    answers = _send_all(base, "churn", [_body(f) for f in frames], "s")
    plane.close(timeout=10)

    assert all(r.status_code == 200 for r in answers.values()) and len(answers) == 48
    assert len(batchpipes.calls("live")) < 48
    inner_challenger = mlpipes.classifier(seed=7)
    pairs = {(p.request_id, p.row_index): p for p in store.pairs.list(limit=1000)}
    assert len(pairs) == sum(len(f) for f in frames)
    for i, frame in enumerate(frames):
        proba = inner_challenger.predict_proba(frame)
        for k in range(len(frame)):
            pair = pairs[(f"s{i}", k)]
            assert pair.challenger_status == "ok" and pair.challenger_error is None
            assert pair.challenger_class == str(inner_challenger.classes_[proba[k].argmax()])
            assert pair.challenger_score == pytest.approx(proba[k, 1], rel=1e-9, abs=1e-12)
            assert pair.champion_class == str(_expected(frame)[0][k])


def test_each_deployment_batches_as_its_own_settings_say_and_off_scores_each_request_alone(
    store: Store, tmp_path: Path, make_app: Any, serve_wsgi: Any
) -> None:
    _deploy(store, tmp_path, "off", "off", BatchingConfig(enabled=False))
    _deploy(store, tmp_path, "two", "two", BatchingConfig(max_batch_rows=2))
    _deploy(store, tmp_path, "wide", "wide", BatchingConfig(max_batch_rows=64))
    app, plane = _router(store, make_app, ["off", "two", "wide"])
    for tag in ("off", "two", "wide"):
        batchpipes.reset(tag)
    frame, _ = mlpipes.churn_frame(36, seed=13)
    bodies = [_body(frame.iloc[[i]]) for i in range(36)]  # one row each
    base = serve_wsgi(app)
    results = {name: _send_all(base, name, bodies, name) for name in ("off", "two", "wide")}
    plane.close(timeout=10)

    for name, answers in results.items():
        assert all(r.status_code == 200 for r in answers.values()) and len(answers) == 36, name
        assert [answers[f"{name}{i}"].json()["predictions"][0] for i in range(36)] == INNER.predict(
            frame
        ).tolist()
    off = [rows for rows, _ in batchpipes.calls("off")]
    two = [rows for rows, _ in batchpipes.calls("two")]
    wide = [rows for rows, _ in batchpipes.calls("wide")]
    assert off == [1] * 36  # off: one call per request, as before batching
    assert sum(two) == 36 and max(two) == 2  # never more than its 2 rows, and it did batch
    assert sum(wide) == 36 and max(wide) > 2
    assert len(store.pairs.list(limit=1000)) == 3 * 36


def test_a_model_that_is_unavailable_fails_only_the_requests_of_its_batch() -> None:
    """The batcher itself: an unavailable model fails the requests of that call (its code), not the others."""
    frame, _ = mlpipes.churn_frame(8, seed=17)
    inner = mlpipes.classifier(seed=0)

    class Flaky(InProcessBackend):
        """The churn pipeline, unreachable for its first call (a real backend around a real pipeline)."""

        def __init__(self) -> None:
            self.version = PipelineVersion(
                id=1, name="churn", version="1", kind="artifact", task="classification",
                input_schema=mlpipes.input_schema(frame), classes=(0, 1), artifact_path=None,
                artifact_format=None, sha256=None, upstream_url=None, upstream_protocol=None,
                offline_metrics={}, golden_set=None, profile=None, environment={}, metadata={},
                created_at=pd.Timestamp.now(tz="UTC").to_pydatetime(),
            )  # fmt: skip
            self.pipeline = inner
            self._classify = self._proba = True
            self._classes = np.array([0, 1], dtype=object)
            self.calls = 0
            self.entered = threading.Event()
            self.go = threading.Event()
            self.frames: list[int] = []

        def predict(self, frame: pd.DataFrame) -> Predictions:
            self.frames.append(len(frame))
            self.calls += 1
            self.entered.set()
            self.go.wait(10)
            if self.calls == 2:  # the second call: the model cannot be reached
                raise ModelUnavailable("the model is unreachable")
            return super().predict(frame)

    backend = Flaky()
    batcher = Batcher()
    config = BatchingConfig(max_batch_delay_ms=0)
    outcomes: dict[int, Any] = {}

    def request(i: int) -> None:
        batch = build_batch(
            {c: frame[c].iloc[[i]].tolist() for c in frame.columns}, backend.version.input_schema, max_rows=10
        )
        outcomes[i] = batcher.score(backend, batch, config).result

    first = threading.Thread(target=request, args=(0,))
    first.start()
    assert backend.entered.wait(10)  # request 0 is being scored alone: the next ones queue behind it
    queued = [threading.Thread(target=request, args=(i,)) for i in range(1, 4)]
    for thread in queued:
        thread.start()
    while sum(len(lane.queue) for lane in batcher._lanes.values()) < 3:
        threading.Event().wait(0.001)
    backend.go.set()
    for thread in [first, *queued]:
        thread.join(10)

    request(4)  # after the failed call

    assert backend.frames == [1, 3, 1]  # the three queued requests were one call, not retried alone
    for i in (1, 2, 3):  # that call's requests fail with the code an unbatched call gives
        assert outcomes[i].predictions is None and isinstance(outcomes[i].exception, ModelUnavailable)
    expected = inner.predict(frame.iloc[[0, 4]]).tolist()
    assert [outcomes[0].predictions.outputs[0], outcomes[4].predictions.outputs[0]] == expected


def test_a_lone_request_never_waits_for_another_deployments_traffic(
    store: Store, tmp_path: Path, make_app: Any, serve_wsgi: Any
) -> None:
    """Lane B busy with many clients; each request of A is alone in its lane and is scored at once.

    A's delay is the largest allowed (1 s): a leader that waited for B's requests in flight (which can
    never join A's lane) would take at least that long for every request of A.
    """
    delay_ms = 1000.0
    _deploy(store, tmp_path, "busy", "busy", BatchingConfig())
    _deploy(store, tmp_path, "lone", "lone", BatchingConfig(max_batch_delay_ms=delay_ms))
    app, plane = _router(store, make_app, ["busy", "lone"])
    batchpipes.reset("lone")
    base = serve_wsgi(app)
    frame, _ = mlpipes.churn_frame(8, seed=21)
    stop = threading.Event()
    busy_answers: list[int] = []

    def busy_client(t: int) -> None:
        with httpx.Client(timeout=30) as http:
            for i in range(200):  # bounded: stops with the lone client, at the latest after 200 requests
                if stop.is_set():
                    return
                r = http.post(f"{base}/v1/models/busy/invocations", json=_body(frame.iloc[[i % 8]]))
                busy_answers.append(r.status_code)

    clients = [threading.Thread(target=busy_client, args=(t,)) for t in range(THREADS - 2)]
    for thread in clients:
        thread.start()
    try:
        while len(busy_answers) < THREADS:  # B's lane is busy
            threading.Event().wait(0.005)
        took, lone = [], []
        with httpx.Client(timeout=30) as http:
            for i in range(5):
                started = time.perf_counter()
                lone.append(http.post(f"{base}/v1/models/lone/invocations", json=_body(frame.iloc[[i]])))
                took.append(time.perf_counter() - started)
        busy_during = len(busy_answers)
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    plane.close(timeout=10)

    assert [r.status_code for r in lone] == [200] * 5
    assert [r.json()["predictions"][0] for r in lone] == INNER.predict(frame.iloc[:5]).tolist()
    assert busy_during < 200 * len(clients) and set(busy_answers) == {200}  # B was busy throughout
    assert [rows for rows, _ in batchpipes.calls("lone")] == [1] * 5  # each alone, at once
    assert max(took) < delay_ms / 1000.0  # below one configured delay, however loaded the machine
    assert plane.batcher.lingered["lone"] == 0  # nobody of A was arriving: A's leader never waited


def _lane_backend(store: Store, tmp_path: Path, tag: str) -> InProcessBackend:
    """A real in-process backend around the recording churn classifier (no per-call sleep)."""
    version = batchpipes.register(store, tmp_path / tag, tag=tag, name=tag, delay=0.0)
    backend = InProcessBackend(version, trust_pickle=True)
    batchpipes.reset(tag)
    return backend


def _lane(
    store: Store, tmp_path: Path, tag: str, delay_ms: float
) -> tuple[InProcessBackend, Batcher, BatchingConfig]:
    """A lane's backend (the recording classifier), a fresh batcher, and batching with delay_ms."""
    return _lane_backend(store, tmp_path, tag), Batcher(), BatchingConfig(max_batch_delay_ms=delay_ms)


def _one_row(backend: InProcessBackend, i: int) -> Any:
    frame, _ = mlpipes.churn_frame(8, seed=23)
    return build_batch(
        {c: frame[c].iloc[[i]].tolist() for c in frame.columns}, backend.version.input_schema, max_rows=10
    )


def test_an_idle_lanes_leader_waits_for_its_own_deployments_arriving_request_and_no_longer(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """The leader waits while a request of its deployment is arriving, and stops as soon as it joined."""
    delay_ms = 1000.0
    backend, batcher, config = _lane(sqlite_store, tmp_path, "own", delay_ms)
    first, second = batcher.expect("a"), batcher.expect("a")
    other = batcher.expect("b")  # another deployment's request arriving: never waited for
    outcomes: dict[int, Any] = {}

    def request(i: int, arrival: Any) -> None:
        outcomes[i] = batcher.score(backend, _one_row(backend, i), config, deployment="a", arrival=arrival)

    started = time.perf_counter()
    leader = threading.Thread(target=request, args=(0, first))
    leader.start()
    while batcher.lingered["a"] == 0:  # the leader waits for the second request of "a"
        threading.Event().wait(0.001)
    request(1, second)
    leader.join(10)
    elapsed = time.perf_counter() - started

    assert [rows for rows, _ in batchpipes.calls("own")] == [2]  # one call for both
    assert outcomes[0].size == outcomes[1].size == 2
    assert batcher.lingered == {"a": 1} and batcher.lingered_alone == {}
    assert batcher.arriving("a") == 0 and batcher.arriving("b") == 1
    assert elapsed < delay_ms / 1000.0  # it stopped waiting once nobody else of "a" could come
    batcher.settle(other)
    batcher.settle(other)  # settling twice counts once
    assert batcher.arriving("b") == 0


def test_a_leader_stops_waiting_when_the_arriving_request_gives_up_without_joining(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """A request announced and then refused (it never reaches a lane) ends the wait at once."""
    delay_ms = 1000.0
    backend, batcher, config = _lane(sqlite_store, tmp_path, "gives", delay_ms)
    first, refused = batcher.expect("a"), batcher.expect("a")
    outcome: list[Any] = []
    started = time.perf_counter()
    leader = threading.Thread(
        target=lambda: outcome.append(
            batcher.score(backend, _one_row(backend, 0), config, deployment="a", arrival=first)
        )
    )
    leader.start()
    while batcher.lingered["a"] == 0:
        threading.Event().wait(0.001)
    batcher.settle(refused)  # e.g. its body was invalid: a 400, no lane
    leader.join(10)
    elapsed = time.perf_counter() - started

    assert [rows for rows, _ in batchpipes.calls("gives")] == [1]
    assert outcome[0].result.predictions is not None
    assert batcher.lingered_alone == {"a": 1}
    assert elapsed < delay_ms / 1000.0


def test_a_leader_waits_for_its_deployments_answered_request_to_come_back_and_scores_them_together(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """A request scored but not yet answered (leaving) is waited for, as is its client's next request.

    Under a closed loop of clients each answer brings the client's next request: a leader that scored
    at once would split the process's requests into two alternating half-size batches.
    """
    delay_ms = 1000.0
    backend, batcher, config = _lane(sqlite_store, tmp_path, "back", delay_ms)
    answered = batcher.expect("a")
    first = batcher.score(backend, _one_row(backend, 0), config, deployment="a", arrival=answered)
    assert first.size == 1 and batcher.lingered["a"] == 0  # alone: scored at once
    assert batcher.leaving("a") == 1  # scored, not answered yet

    leader_arrival = batcher.expect("a")
    outcomes: dict[int, Any] = {}

    def request(i: int, arrival: Any) -> None:
        outcomes[i] = batcher.score(backend, _one_row(backend, i), config, deployment="a", arrival=arrival)

    started = time.perf_counter()
    leader = threading.Thread(target=request, args=(1, leader_arrival))
    leader.start()
    while batcher.lingered["a"] == 0:  # the leader waits for the answered request's client
        threading.Event().wait(0.001)
    again = batcher.expect("a")  # that client's next request arrives ...
    batcher.done(answered)  # ... once it was answered
    request(2, again)
    leader.join(10)
    elapsed = time.perf_counter() - started

    assert [rows for rows, _ in batchpipes.calls("back")] == [1, 2]
    assert outcomes[1].size == outcomes[2].size == 2
    assert elapsed < delay_ms / 1000.0  # nobody of "a" outside a lane: it stopped waiting at once
    assert batcher.leaving("a") == 2 and batcher.arriving("a") == 0
    batcher.done(leader_arrival)
    batcher.done(again)
    batcher.done(again)  # done twice counts once
    assert batcher.leaving("a") == 0


def test_a_leader_stops_waiting_for_a_scored_request_once_it_is_answered(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """A scored request whose client sends nothing more ends the wait once it is answered."""
    delay_ms = 1000.0
    backend, batcher, config = _lane(sqlite_store, tmp_path, "sent", delay_ms)
    answered = batcher.expect("a")
    batcher.score(backend, _one_row(backend, 0), config, deployment="a", arrival=answered)
    outcome: list[Any] = []
    started = time.perf_counter()
    leader = threading.Thread(
        target=lambda: outcome.append(
            batcher.score(backend, _one_row(backend, 1), config, deployment="a", arrival=batcher.expect("a"))
        )
    )
    leader.start()
    while batcher.lingered["a"] == 0:
        threading.Event().wait(0.001)
    batcher.done(answered)
    leader.join(10)
    elapsed = time.perf_counter() - started

    assert [rows for rows, _ in batchpipes.calls("sent")] == [1, 1]
    assert outcome[0].size == 1 and batcher.lingered_alone == {"a": 1}
    assert elapsed < delay_ms / 1000.0


def test_a_leader_waits_for_an_answered_kept_alive_connections_next_request(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """A client answered on a kept-alive connection is about to send again: the next leader waits for it.

    Under a closed loop the answered clients' next requests arrive just after a leader that waited only
    for requests already in the process had stopped waiting: batches split in two.
    """
    delay_ms = 1000.0
    backend, batcher, config = _lane(sqlite_store, tmp_path, "loop", delay_ms)
    answered = batcher.expect("a", ("127.0.0.1", "5001"))
    batcher.score(backend, _one_row(backend, 0), config, deployment="a", arrival=answered)
    batcher.done(answered)  # answered: its client has its answer, its next request is on its way
    assert batcher.leaving("a") == 0 and batcher.returning("a") == 1

    outcomes: dict[int, Any] = {}

    def request(i: int, arrival: Any) -> None:
        outcomes[i] = batcher.score(backend, _one_row(backend, i), config, deployment="a", arrival=arrival)

    started = time.perf_counter()
    leader = threading.Thread(target=request, args=(1, batcher.expect("a", ("127.0.0.1", "5002"))))
    leader.start()
    while batcher.lingered["a"] == 0:  # the leader waits for the returning connection
        threading.Event().wait(0.001)
    again = batcher.expect("a", ("127.0.0.1", "5001"))  # the client's next request, same connection
    assert batcher.returning("a") == 0  # back: no longer returning
    request(2, again)
    leader.join(10)
    elapsed = time.perf_counter() - started

    assert [rows for rows, _ in batchpipes.calls("loop")] == [1, 2]
    assert outcomes[1].size == outcomes[2].size == 2
    assert elapsed < delay_ms / 1000.0  # it stopped waiting once the connection was back


def test_a_request_never_waits_for_its_own_connection_nor_for_one_that_closed(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """One client waiting for each answer is never delayed; a connection closed after its answer never counts."""
    backend, batcher, config = _lane(sqlite_store, tmp_path, "own_conn", 1000.0)
    closed = batcher.expect("a")  # a connection that closes after the answer: no connection key
    batcher.score(backend, _one_row(backend, 0), config, deployment="a", arrival=closed)
    batcher.done(closed)
    assert batcher.returning("a") == 0
    connection = ("127.0.0.1", "6001")
    for i in range(1, 4):  # c=1 on a kept-alive connection: each request follows its own answer
        arrival = batcher.expect("a", connection)
        started = time.perf_counter()
        scored = batcher.score(backend, _one_row(backend, i), config, deployment="a", arrival=arrival)
        assert scored.size == 1 and time.perf_counter() - started < 0.5  # far below the 1 s delay
        batcher.done(arrival)
        assert batcher.returning("a") == 1  # its own connection, until its next request
    assert batcher.lingered == {}
    assert [rows for rows, _ in batchpipes.calls("own_conn")] == [1] * 4


def test_a_returning_connection_that_sends_nothing_holds_a_leader_at_most_the_delay(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """A kept-alive client that does not come back costs the next leader at most max_batch_delay_ms."""
    delay_ms = 150.0
    backend, batcher, config = _lane(sqlite_store, tmp_path, "gone", delay_ms)
    answered = batcher.expect("a", ("127.0.0.1", "7001"))
    batcher.score(backend, _one_row(backend, 0), config, deployment="a", arrival=answered)
    batcher.done(answered)
    started = time.perf_counter()
    second = batcher.expect("a")  # on a connection that closes after it
    scored = batcher.score(backend, _one_row(backend, 1), config, deployment="a", arrival=second)
    elapsed = time.perf_counter() - started
    assert scored.size == 1 and batcher.lingered_alone == {"a": 1}
    assert elapsed < 10 * delay_ms / 1000.0  # bounded by the delay (generous: a loaded machine)
    assert batcher.returning("a") == 0  # its time ran out: forgotten
    batcher.done(second)
    # once forgotten, the next leader scores at once
    batcher.score(backend, _one_row(backend, 2), config, deployment="a", arrival=batcher.expect("a"))
    assert batcher.lingered == {"a": 1}
