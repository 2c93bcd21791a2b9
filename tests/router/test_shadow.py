"""Shadow scoring: micro-batches, drops, timeouts — and a faulty challenger never touches the answer."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlpipes
import pandas as pd
import pytest

from router.backends import create_backend
from router.exchange import Exchange
from router.inputs import build_batch, join_columns
from router.settings import RouterSettings
from router.shadow import EXPIRED, QUEUE_FULL, TIMED_OUT, ShadowPool
from router.split import sampled
from storage import Store

FRAME, _ = mlpipes.churn_frame(30, seed=9)


def _exchanges(store: Store, n: int) -> list[Exchange]:
    entry = store.routing.load_table()["churn"]
    return [
        Exchange(
            f"r{i}", datetime.now(UTC), entry, i, "champion", FRAME.iloc[i : i + 1].reset_index(drop=True)
        )
        for i in range(n)
    ]


def _wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_queued_shadow_work_is_scored_in_one_micro_batch_with_per_request_results(
    sqlite_store: Store, churn: Any, tmp_path: Path, settings: RouterSettings
) -> None:
    challenger = mlpipes.register(sqlite_store, tmp_path, version="2", seed=4)
    backend = create_backend(challenger, settings)
    settled: list[Exchange] = []
    idle = threading.Event()  # a request is "in flight" until we say otherwise
    pool = ShadowPool(on_settled=settled.append, idle=idle, linger_s=2.0, batch_max=100, timeout_s=10)
    pool.start()
    exchanges = _exchanges(sqlite_store, 20)
    for exchange in exchanges:
        assert pool.submit(exchange, "challenger", backend)
    idle.set()
    _wait(lambda: len(settled) == 20)
    pool.close()
    assert pool.batches == 1
    expected = backend.predict(FRAME.iloc[:20])
    for i, exchange in enumerate(exchanges):
        assert exchange.challenger is not None and exchange.challenger.predictions is not None
        assert exchange.challenger.predictions.outputs == expected.outputs[i : i + 1]
        assert exchange.challenger.predictions.scores == pytest.approx(expected.scores[i : i + 1])  # type: ignore[index]


def test_a_full_queue_skips_and_counts_without_waiting(
    sqlite_store: Store, churn: Any, tmp_path: Path, settings: RouterSettings
) -> None:
    slow = mlpipes.register(sqlite_store, tmp_path, version="2", fault="sleeps", delay=0.5)
    backend = create_backend(slow, settings)
    settled: list[Exchange] = []
    pool = ShadowPool(on_settled=settled.append, queue_size=2, workers=1, linger_s=0.001, timeout_s=5)
    pool.start()
    exchanges = _exchanges(sqlite_store, 10)  # made before the clock starts: only the submits are timed
    started = time.monotonic()
    accepted = [pool.submit(e, "challenger", backend) for e in exchanges]
    assert time.monotonic() - started < 0.5  # a submit that waited for room would wait out a 0.5 s call
    assert accepted.count(False) == pool.dropped >= 7
    dropped = [e for e in settled if e.challenger is not None and e.challenger.skip_reason == QUEUE_FULL]
    assert len(dropped) == pool.dropped
    assert all(e.challenger is not None and e.challenger.status == "skipped" for e in dropped)
    assert all(e.challenger is not None and e.challenger.error is None for e in dropped)
    pool.close(timeout=5)
    assert len(settled) == 10  # every request settled exactly once


def test_a_hanging_shadow_call_is_charged_as_timed_out_from_its_start(
    sqlite_store: Store, churn: Any, tmp_path: Path, settings: RouterSettings
) -> None:
    hung = mlpipes.register(sqlite_store, tmp_path, version="2", fault="sleeps", delay=3.0)
    backend = create_backend(hung, settings)
    settled: list[Exchange] = []
    pool = ShadowPool(on_settled=settled.append, linger_s=0.001, timeout_s=0.3)
    pool.start()
    exchanges = _exchanges(sqlite_store, 3)
    for exchange in exchanges:
        pool.submit(exchange, "challenger", backend)
    _wait(lambda: len(settled) == 3, timeout=2.0)
    assert len(settled) == 3
    assert all(e.challenger is not None and e.challenger.error == TIMED_OUT for e in exchanges)
    assert all(e.challenger is not None and e.challenger.latency_ms >= 300 for e in exchanges)  # type: ignore[operator]
    pool.close(timeout=0.2)


def _baseline(make_app: Any, body: Any, n: int) -> list[tuple[int, Any]]:
    """Answers of the champion alone (no rollout), with request ids of their own."""
    app = make_app()
    answers = [_answer(app.test_client(), body, f"base{i}") for i in range(n)]
    app.extensions["mlcanary.dataplane"].close(timeout=5)
    return answers


def _answer(client: Any, body: Any, request_id: str) -> tuple[int, Any]:
    response = client.post("/v1/models/churn/invocations", json=body, headers={"X-Request-Id": request_id})
    response.close()  # as a server does once it is sent: the request leaves the data plane
    return response.status_code, response.json


BODY = {"dataframe_split": json.loads(FRAME.iloc[:3].to_json(orient="split", index=False))}


@pytest.mark.parametrize("fault", ["raises", "sleeps", "garbage", "missing"])
def test_a_faulty_shadow_challenger_never_changes_the_champions_answer(
    sqlite_store: Store, churn: Any, tmp_path: Path, make_app: Any, fault: str
) -> None:
    deployment, _ = churn
    baseline = _baseline(make_app, BODY, 5)
    if fault == "missing":
        challenger = mlpipes.register(sqlite_store, tmp_path, version="2")
        Path(challenger.artifact_path or "").unlink()
    else:
        challenger = mlpipes.register(sqlite_store, tmp_path, version="2", fault=fault, delay=2.0)
    mlpipes.start_rollout(sqlite_store, deployment, challenger, mode="shadow")
    app = make_app(shadow_timeout_s=0.3)
    client = app.test_client()
    answers = [_answer(client, BODY, f"q{i}") for i in range(5)]
    assert answers == baseline
    app.extensions["mlcanary.dataplane"].close(timeout=5)
    pairs = [p for p in sqlite_store.pairs.list() if p.request_id.startswith("q")]
    assert len(pairs) == 15
    assert all(p.champion_error is None and p.champion_class for p in pairs)
    # every challenger call that ran failed; a job queued behind a hanging call never started: skipped
    assert {p.challenger_status for p in pairs} <= {"error", "skipped"}
    assert any(p.challenger_status == "error" and p.challenger_error for p in pairs)
    if fault != "sleeps":
        assert all(p.challenger_status == "error" for p in pairs)


def test_in_canary_a_failing_challenger_is_replaced_by_the_champion(
    sqlite_store: Store, churn: Any, tmp_path: Path, make_app: Any
) -> None:
    deployment, _ = churn
    baseline = _baseline(make_app, BODY, 4)
    challenger = mlpipes.register(sqlite_store, tmp_path, version="2", fault="raises")
    mlpipes.start_rollout(
        sqlite_store, deployment, challenger, mode="canary", canary_weight=100, shadow_rate=1
    )
    app = make_app()
    client = app.test_client()
    responses = [
        client.post("/v1/models/churn/invocations", json=BODY, headers={"X-Request-Id": f"q{i}"})
        for i in range(4)
    ]
    assert [(r.status_code, r.json) for r in responses] == baseline
    assert {r.headers["X-Mlcanary-Arm"] for r in responses} == {"champion"}
    app.extensions["mlcanary.dataplane"].close(timeout=5)
    pairs = [p for p in sqlite_store.pairs.list() if p.request_id.startswith("q")]
    assert len(pairs) == 12
    assert all(p.served_arm == "champion" and "always fails" in (p.challenger_error or "") for p in pairs)


def _validated(store: Store, n: int, *, missing: float = 0.3) -> list[Exchange]:
    """Exchanges built as the router builds them: the frame and its converted columns."""
    entry = store.routing.load_table()["churn"]
    frame, _ = mlpipes.churn_frame(n, seed=5, missing=missing)
    out = []
    for i in range(n):
        row = json.loads(frame.iloc[i : i + 1].to_json(orient="split", index=False))
        columns = {name: [r[k] for r in row["data"]] for k, name in enumerate(row["columns"])}
        batch = build_batch(columns, entry.champion.input_schema, max_rows=10)
        out.append(
            Exchange(f"v{i}", datetime.now(UTC), entry, i, "champion", batch.frame, columns=batch.columns)
        )
    return out


def test_joined_columns_equal_the_concatenated_frames_with_their_dtype_promotions(
    sqlite_store: Store, churn: Any
) -> None:
    exchanges = _validated(sqlite_store, 40)
    joined = join_columns([e.columns for e in exchanges if e.columns is not None])
    pd.testing.assert_frame_equal(joined, pd.concat([e.frame for e in exchanges], ignore_index=True))


def test_raw_inputs_read_from_the_columns_equal_the_frames_records(sqlite_store: Store, churn: Any) -> None:
    for exchange in _validated(sqlite_store, 10):
        expected = exchange.frame.to_dict("records")
        got = [r.raw_input for r in exchange.to_records()]
        assert [{k: type(v) for k, v in r.items()} for r in got] == [
            {k: type(v) for k, v in r.items()} for r in expected
        ]
        assert json.dumps(got) == json.dumps(expected)  # NaN for NaN


def test_jobs_arriving_within_the_linger_share_one_batch_and_a_full_batch_goes_at_once(
    sqlite_store: Store, churn: Any, tmp_path: Path, settings: RouterSettings
) -> None:
    challenger = mlpipes.register(sqlite_store, tmp_path, version="2", seed=4)
    backend = create_backend(challenger, settings)
    settled: list[Exchange] = []
    pool = ShadowPool(on_settled=settled.append, linger_s=0.5, batch_max=8, timeout_s=10)
    pool.start()
    exchanges = _validated(sqlite_store, 13)
    for exchange in exchanges[:5]:  # trickling in: they wait for each other
        assert pool.submit(exchange, "challenger", backend)
        time.sleep(0.02)
    assert settled == []
    started = time.monotonic()
    for exchange in exchanges[5:]:  # 8 queued: a full batch is scored without lingering
        assert pool.submit(exchange, "challenger", backend)
    _wait(lambda: len(settled) == 8, timeout=2.0)
    assert len(settled) == 8 and time.monotonic() - started < 0.4
    _wait(lambda: len(settled) == 13, timeout=2.0)
    pool.close()
    assert pool.batches == 2
    expected = backend.predict(pd.concat([e.frame for e in exchanges], ignore_index=True))
    assert [e.challenger.predictions.outputs[0] for e in exchanges] == expected.outputs  # type: ignore[union-attr]


def _lane_exchanges(store: Store, deployment: str, n: int, prefix: str) -> list[Exchange]:
    entry = store.routing.load_table()[deployment]
    return [
        Exchange(
            f"{prefix}{i}",
            datetime.now(UTC),
            entry,
            i,
            "champion",
            FRAME.iloc[i : i + 1].reset_index(drop=True),
        )
        for i in range(n)
    ]


def test_a_job_that_waited_past_the_timeout_is_skipped_not_charged_and_its_queue_wait_is_kept_apart(
    sqlite_store: Store, churn: Any, tmp_path: Path, settings: RouterSettings
) -> None:
    # each call takes 0.1 s of its own, far under the 0.6 s timeout even on a loaded machine; one job
    # per call: the rest queue up, and at most 0.6 / 0.1 = 6 calls start within the first job's timeout
    slow = create_backend(
        mlpipes.register(sqlite_store, tmp_path, version="2", fault="sleeps", delay=0.1), settings
    )
    settled: list[Exchange] = []
    pool = ShadowPool(on_settled=settled.append, batch_max=1, linger_s=0.001, timeout_s=0.6, shed=False)
    pool.start()
    jobs = _exchanges(sqlite_store, 12)
    for exchange in jobs:
        pool.submit(exchange, "challenger", slow)
    _wait(lambda: len(settled) == 12, timeout=10.0)
    pool.close()
    results = [e.challenger for e in jobs]
    assert all(r is not None and r.status in ("ok", "skipped") for r in results)  # never the arm's error
    skipped = [r for r in results if r is not None and r.status == "skipped"]
    scored = [r for r in results if r is not None and r.status == "ok"]
    assert len(skipped) >= 5 and scored  # at most 0.6 / 0.1 = 6 calls start in the first job's timeout
    assert all(r.skip_reason == EXPIRED and r.error is None and r.latency_ms is None for r in skipped)
    assert all(r.wait_ms is not None and r.wait_ms >= 600 for r in skipped)
    assert all(r.latency_ms is not None and r.latency_ms >= 100 and r.wait_ms is not None for r in scored)
    records = [r for e in jobs for r in e.to_records()]
    assert {(r.challenger_status, r.skip_reason) for r in records} == {("ok", None), ("skipped", EXPIRED)}
    assert all(r.challenger_error is None for r in records)


def test_a_hanging_challenger_does_not_starve_another_deployments_shadow_work(
    sqlite_store: Store, churn: Any, tmp_path: Path, settings: RouterSettings
) -> None:
    champion = sqlite_store.pipelines.get_by_ref("churn:1")
    mlpipes.deploy(sqlite_store, "other", champion)
    hung = create_backend(
        mlpipes.register(sqlite_store, tmp_path, version="2", fault="sleeps", delay=4.0), settings
    )
    healthy = create_backend(mlpipes.register(sqlite_store, tmp_path, version="3", seed=4), settings)
    settled: list[Exchange] = []
    pool = ShadowPool(on_settled=settled.append, workers=1, linger_s=0.001, timeout_s=0.5)
    pool.start()
    stuck = _lane_exchanges(sqlite_store, "churn", 5, "h")
    for exchange in stuck:
        pool.submit(exchange, "challenger", hung)
    _wait(lambda: any(e.challenger is not None for e in stuck), timeout=3.0)  # its call was charged
    others = _lane_exchanges(sqlite_store, "other", 10, "o")
    for exchange in others:  # the only worker is still inside the hanging call
        pool.submit(exchange, "challenger", healthy)
    _wait(lambda: all(e.challenger is not None for e in others), timeout=3.0)
    pool.close(timeout=0.5)
    assert [e.challenger.status for e in others] == ["ok"] * 10  # type: ignore[union-attr]
    expected = healthy.predict(FRAME.iloc[:10])
    assert [e.challenger.predictions.outputs[0] for e in others] == expected.outputs  # type: ignore[union-attr]
    charged = [e for e in stuck if e.challenger is not None and e.challenger.status == "error"]
    assert charged and all(e.challenger.error == TIMED_OUT for e in charged)  # type: ignore[union-attr]
    assert all(e.challenger is not None and e.challenger.status in ("error", "skipped") for e in stuck)


def test_load_shedding_lowers_an_overloaded_lanes_share_and_raises_it_when_it_drains(
    sqlite_store: Store, churn: Any, tmp_path: Path, settings: RouterSettings
) -> None:
    # 0.1 s per call, one job per call: 30 jobs need 3 s, far more than the 0.4 s timeout allows
    slow = create_backend(
        mlpipes.register(sqlite_store, tmp_path, version="2", fault="sleeps", delay=0.1), settings
    )
    settled: list[Exchange] = []
    pool = ShadowPool(on_settled=settled.append, batch_max=1, linger_s=0.001, timeout_s=0.4, share_step=0.25)
    pool.start()
    flood = _exchanges(sqlite_store, 30)
    for exchange in flood:
        pool.submit(exchange, "challenger", slow)
    _wait(lambda: pool.share("churn") < 1.0, timeout=5.0)
    lowered = pool.share("churn")
    _wait(lambda: len(settled) == 30, timeout=5.0)
    _wait(lambda: pool.share("churn") == 1.0, timeout=5.0)  # nothing more arrives: the lane drains
    pool.close()
    assert lowered < 1.0 and pool.share("churn") == 1.0
    outcomes = {e.challenger.status for e in flood}  # type: ignore[union-attr]
    assert "error" not in outcomes and "skipped" in outcomes  # the overload was the router's, not the arm's


def test_shedding_keeps_a_random_subset_of_the_sample_decided_by_request_id() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    full = {i for i in ids if sampled(i, 0.5)}
    shed = {i for i in ids if sampled(i, 0.5 * 0.3)}
    assert shed <= full  # a lower share keeps a subset of the same requests: deterministic by id
    assert abs(len(shed) / len(ids) - 0.15) < 0.01  # and the share it says (binomial sd 0.0025)
    assert {i for i in ids if sampled(i, 0.15)} == shed  # the same ids whichever process decides


def _shadow_everything(store: Store, churn: Any, tmp_path: Path) -> str:
    """Start a shadow rollout of a real challenger (other seed) on every request; return the deployment's name."""
    deployment, _ = churn
    challenger = mlpipes.register(store, tmp_path, version="2", seed=4)
    mlpipes.start_rollout(store, deployment, challenger, mode="shadow", shadow_rate=1.0)
    return str(deployment.name)


def test_metrics_show_shadow_outcomes_queue_wait_and_the_effective_share(
    sqlite_store: Store, churn: Any, tmp_path: Path, make_app: Any
) -> None:
    _shadow_everything(sqlite_store, churn, tmp_path)
    app = make_app()
    client = app.test_client()
    for i in range(6):
        assert _answer(client, BODY, f"m{i}")[0] == 200
    _wait(lambda: b"mlcanary_shadow_scored_total" in client.get("/metrics").data)
    app.extensions["mlcanary.dataplane"]._publish_gauges()
    text = client.get("/metrics").data.decode()
    scored = re.search(
        r'^mlcanary_shadow_scored_total\{arm="challenger",deployment="churn"\} ([\d.]+)$', text, re.M
    )
    assert scored is not None and float(scored.group(1)) >= 1
    assert re.search(r'^mlcanary_shadow_queue_wait_seconds_count\{deployment="churn"\} [1-9]', text, re.M)
    assert re.search(r'^mlcanary_shadow_effective_share\{deployment="churn"\} 1\.0$', text, re.M)
    assert re.search(r'^mlcanary_shadow_coverage\{deployment="churn"\} 1\.0$', text, re.M)


def _hammer(app: Any, stop: threading.Event, answers: list[int], prefix: str) -> None:
    """Send requests back to back (a closed loop) until stop is set; keep the status codes."""
    client = app.test_client()
    i = 0
    while not stop.is_set():
        answers.append(_answer(client, BODY, f"{prefix}{i}")[0])
        i += 1


def test_cpu_shedding_cuts_the_share_while_the_live_path_is_saturated_and_restores_it_after(
    sqlite_store: Store, churn: Any, tmp_path: Path, make_app: Any
) -> None:
    name = _shadow_everything(sqlite_store, churn, tmp_path)
    # every request shadowed one by one (linger 1 ms): shadow scoring takes about half the CPU, far
    # over a 5% budget; a long timeout keeps the queue young, so any cut is the CPU's
    app = make_app(shadow_cpu_budget=0.05, shadow_timeout_s=5.0)
    plane = app.extensions["mlcanary.dataplane"]
    stop = threading.Event()
    answers: list[int] = []
    threads = [
        threading.Thread(target=_hammer, args=(app, stop, answers, f"s{t}-"), daemon=True) for t in range(8)
    ]
    for thread in threads:
        thread.start()
    try:
        _wait(lambda: plane.shadow.cuts.get((name, "cpu"), 0) >= 1, timeout=60.0)
        lowered = plane.shadow.share(name)
        # keep the load on a moment after the cut: requests outside the lowered share are shed
        cut_at = len(answers)
        _wait(lambda: len(answers) >= cut_at + 20, timeout=60.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert plane.shadow.cuts.get((name, "cpu"), 0) >= 1 and lowered < 1.0
    _wait(lambda: plane.shadow.share(name) == 1.0, timeout=60.0)  # the load stopped: it comes back
    assert plane.shadow.share(name) == 1.0
    plane._publish_gauges()
    text = app.test_client().get("/metrics").data.decode()
    cuts = re.search(
        r'^mlcanary_shadow_share_cuts_total\{deployment="churn",reason="cpu"\} ([\d.]+)$', text, re.M
    )
    assert cuts is not None and float(cuts.group(1)) >= 1
    plane.close(timeout=10)
    assert answers and set(answers) == {200}  # shedding never touches the answers
    pairs = [
        p
        for p in sqlite_store.pairs.list(limit=10_000_000)
        if p.request_id.startswith("s") and p.row_index == 0
    ]
    statuses = {p.challenger_status for p in pairs}
    assert "error" not in statuses and "ok" in statuses
    assert any(p.skip_reason == "shed" for p in pairs)  # coverage lost, never an error


def test_below_saturation_shadow_scoring_is_never_cut_for_cpu(
    sqlite_store: Store, churn: Any, tmp_path: Path, make_app: Any
) -> None:
    name = _shadow_everything(sqlite_store, churn, tmp_path)
    # a budget so small that shadow scoring is over it at once; but one request at a time never crowds
    app = make_app(shadow_cpu_budget=0.001, shadow_timeout_s=5.0)
    plane = app.extensions["mlcanary.dataplane"]
    client = app.test_client()
    sent, until = 0, time.monotonic() + 3.0  # a few CPU windows of it
    while sent < 20 or time.monotonic() < until:  # a client that waits for each answer: one at a time
        assert _answer(client, BODY, f"low{sent}")[0] == 200
        sent += 1
    plane.close(timeout=10)
    assert plane.shadow.cpu_share > 0.001  # over the budget, measured...
    assert not plane.shadow.cuts and plane.shadow.share(name) == 1.0  # ...but never cut
    pairs = [p for p in sqlite_store.pairs.list(limit=10_000_000) if p.request_id.startswith("low")]
    assert len(pairs) == 3 * sent and {p.challenger_status for p in pairs} == {"ok"}


class _Live:
    """A live path crowded until stop(); called, its crowded seconds (ShadowPool's `crowded`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since = time.monotonic()
        self._busy = 0.0
        self.saturated = True

    def stop(self) -> None:
        with self._lock:
            self._busy += time.monotonic() - self._since
            self.saturated = False

    def __call__(self) -> float:
        with self._lock:
            return self._busy + (time.monotonic() - self._since if self.saturated else 0.0)


def test_cpu_shedding_cuts_only_the_deployment_whose_scoring_takes_the_cpu(
    sqlite_store: Store, churn: Any, tmp_path: Path, settings: RouterSettings
) -> None:
    champion = sqlite_store.pipelines.get_by_ref("churn:1")
    mlpipes.deploy(sqlite_store, "other", champion)
    heavy = create_backend(mlpipes.register(sqlite_store, tmp_path, version="2", seed=4), settings)
    # the other challenger waits 0.5 s per call (an upstream, say) and takes almost no CPU
    light = create_backend(
        mlpipes.register(sqlite_store, tmp_path, version="3", fault="sleeps", delay=0.5), settings
    )
    heavy.predict(FRAME)  # warm, as the router warms a version before routing to it: a first call's
    light.predict(FRAME.iloc[:1])  # one-off costs (lazy imports, caches) are not scoring's CPU
    live = _Live()
    answering = create_backend(champion, settings)

    def serve() -> None:  # the live path: the champion scores 30-row requests back to back
        while live.saturated:
            answering.predict(FRAME)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    settled: list[Exchange] = []
    pool = ShadowPool(
        on_settled=settled.append, workers=2, linger_s=0.001, timeout_s=5.0, crowded=live, cpu_budget=0.3
    )
    pool.start()
    entries = sqlite_store.routing.load_table()
    stop = threading.Event()

    def feed() -> None:  # as the data plane does: only requests whose id falls in the lane's share
        i = 0
        light_due = time.monotonic()
        while not stop.is_set():
            # 30-row requests to the heavy one as fast as they come, a one-row request to the light one
            # five times a second (its calls mostly wait: a few rows each, little CPU however busy the machine)
            light_turn = time.monotonic() >= light_due
            if light_turn:
                light_due += 0.2
            for name, backend, frame in (("churn", heavy, FRAME), ("other", light, FRAME.iloc[:1])):
                request_id = f"{name}-{i}"
                if (name == "churn" or light_turn) and sampled(request_id, pool.share(name)):
                    exchange = Exchange(request_id, datetime.now(UTC), entries[name], i, "champion", frame)
                    pool.submit(exchange, "challenger", backend)
            i += 1
            time.sleep(0.002)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        _wait(lambda: pool.cuts.get(("churn", "cpu"), 0) >= 2, timeout=60.0)
    finally:
        stop.set()
        feeder.join(10)
    assert pool.cuts.get(("churn", "cpu"), 0) >= 2 and pool.share("churn") < 1.0
    assert pool.cuts.get(("other", "cpu"), 0) == 0 and pool.share("other") == 1.0  # its part was free
    live.stop()  # the live path is idle again: the share comes back
    server.join(10)
    _wait(lambda: pool.share("churn") == 1.0, timeout=60.0)
    pool.close()
    assert pool.share("churn") == 1.0
    assert all(e.challenger is not None and e.challenger.status != "error" for e in settled)
