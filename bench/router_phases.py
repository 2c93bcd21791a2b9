"""CPU per request by phase: where a batched router request's CPU goes, and the batch size 3x needs.

    .venv/bin/python bench/router_phases.py [--blocks 7] [--requests 200] [--out bench/results/router_phases.md]

In one process (no gunicorn), on the router benchmark's pipeline and one-row request
(bench/router_bench.py), thread CPU time (time.thread_time, robust to a busy machine where wall times
measure the neighbours), the median of --blocks blocks:

  B     bare Flask (router_apps.baseline) per request: parse, DataFrame, predict_proba, answer
  R     the router per request (batching on, requests alone), without the model call and its frame
  F(k)  building the batch frame of k one-row requests (inputs.join_columns; frame_of for one)
  M(k)  predict_proba on that frame
  rec   the recorder thread per request (the pair written to SQLite)
  T     Flask's test client on a trivial route (the harness; taken off B and R)

Then, with H the HTTP floor's server CPU per request and W wrk's (both from a short gunicorn +
wrk run of router_apps:floor(), c=16, as router_bench runs it):

  bare Flask per request        H + W + B
  router at k requests/call     H + W + R + rec + (F(k) + M(k)) / k

A CPU-bound host's throughput is inverse to CPU per request, so their ratio is the most the batching
router can gain over bare Flask at k requests per scoring call; the table gives it for k = 1..64
and the smallest k that reaches 3x. The route refresh is per second, not per request (a stamp query
every refresh_interval): given on its own.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support"), str(ROOT / "bench")]

import httpx  # noqa: E402
import router_apps  # noqa: E402
import router_bench  # noqa: E402

from router import batcher  # noqa: E402
from router.inputs import build_batch, frame_of, join_columns  # noqa: E402
from storage import Database, Store  # noqa: E402

KS = (1, 2, 4, 8, 16, 32, 64)


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each Python thread of this process, by thread name (each thread's CPU clock)."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            used = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except OSError:  # the thread ended meanwhile
            continue
        out[thread.name] = out.get(thread.name, 0.0) + used
    return out


def per_call(fn: Callable[[], Any], n: int, blocks: int) -> float:
    """Median over blocks of the thread CPU milliseconds of one fn() call."""
    for _ in range(max(5, n // 10)):
        fn()
    results = []
    for _ in range(blocks):
        started = time.thread_time()
        for _ in range(n):
            fn()
        results.append((time.thread_time() - started) * 1000.0 / n)
    return statistics.median(results)


def http_floor(seconds: int) -> dict[str, float]:
    """Server and wrk CPU ms per request of the HTTP floor app under gunicorn at c=16 (router_bench's worker)."""
    directory = Path(tempfile.mkdtemp(prefix="router-phases-floor-"))
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(router_bench.body())}\n"
    )
    port = router_bench._port()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "--bind", f"127.0.0.1:{port}", "--workers", "2",
         "--worker-class", "controller.server.ReadBufferingWorker", "--threads", "8", "--reuse-port",
         "--config", str(ROOT / "bench" / "router_apps.py"), "--log-level", "warning", "router_apps:floor()"],
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}"}, cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1/models/churn/invocations"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.post(url, content=b"{}", headers={"Content-Type": "application/json"})
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        router_bench.wrk(url, script, 16, 1)
        return router_bench.wrk(url, script, 16, seconds, process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--requests", type=int, default=200, help="requests (or calls) per block")
    parser.add_argument("--floor-seconds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "router_phases.md")
    args = parser.parse_args()
    load_before = os.getloadavg()
    n, blocks = args.requests, args.blocks
    directory = Path(tempfile.mkdtemp(prefix="router-phases-"))
    url = router_bench.prepare(directory, "batch-champion")
    os.environ["BENCH_DATABASE_URL"] = url
    os.environ["BENCH_SPOOL_DIR"] = str(directory / "spool")
    payload = router_bench.body()
    headers = {"Content-Type": "application/json"}

    bare = router_apps.baseline().test_client()
    harness = per_call(lambda: bare.get("/metrics"), n, blocks)
    bare_request = per_call(
        lambda: bare.post("/v1/models/churn/invocations", data=payload, headers=headers), n, blocks
    )

    app = router_apps.router()
    plane = app.extensions["mlcanary.dataplane"]
    client = app.test_client()
    route = plane.route("churn")
    schema = route.entry.champion.input_schema
    one = json.loads(payload)["dataframe_split"]
    columns = {name: [row[i] for row in one["data"]] for i, name in enumerate(one["columns"])}
    batch = build_batch(columns, schema, max_rows=10_000)
    backend = route.champion

    # the model call and its frame, measured inside the router's request path and taken off it
    inside = [0.0]
    original = batcher._call

    def timed_call(b: Any, rows: Any) -> Any:
        started = time.thread_time()
        try:
            return original(b, rows)
        finally:
            inside[0] += time.thread_time() - started

    def router_request() -> None:
        reply = client.post("/v1/models/churn/invocations", data=payload, headers=headers)
        assert reply.status_code == 200, reply.data

    router_harness = per_call(lambda: client.get("/healthz"), n, blocks)
    for _ in range(50):
        router_request()
    time.sleep(1.0)
    batcher._call = timed_call  # type: ignore[assignment]
    samples = []
    before = thread_cpu()
    for _ in range(blocks):
        inside[0] = 0.0
        started = time.thread_time()
        for _ in range(n):
            router_request()
        took = time.thread_time() - started
        frames = n * per_call(lambda: frame_of(batch.columns), 20, 1) / 1000.0
        samples.append((took - inside[0] - frames) * 1000.0 / n)
    time.sleep(1.5)  # the recorder's last flush
    after = thread_cpu()
    batcher._call = original  # type: ignore[assignment]
    router_request_ms = statistics.median(samples) - router_harness
    recorder_ms = (
        (after.get("mlcanary-recorder", 0.0) - before.get("mlcanary-recorder", 0.0)) * 1000 / (n * blocks)
    )
    idle_before = thread_cpu()
    time.sleep(5.0)
    idle_after = thread_cpu()
    routes_per_s = (
        (idle_after.get("mlcanary-routes", 0.0) - idle_before.get("mlcanary-routes", 0.0)) * 1000 / 5
    )
    gauges_per_s = (
        (idle_after.get("mlcanary-gauges", 0.0) - idle_before.get("mlcanary-gauges", 0.0)) * 1000 / 5
    )

    frame_ms: dict[int, float] = {}
    model_ms: dict[int, float] = {}
    for k in KS:
        parts = [batch.columns] * k
        build = (lambda: frame_of(batch.columns)) if k == 1 else functools.partial(join_columns, parts)
        frame_ms[k] = per_call(build, max(20, n // 2), blocks)
        model_ms[k] = per_call(functools.partial(backend.predict, build()), max(20, n // 4), blocks)
    plane.close(timeout=10)
    floor = http_floor(args.floor_seconds)
    h, w = floor["cpu_ms"], floor["wrk_cpu_ms"]
    b = bare_request - harness
    bare_total = h + w + b
    fixed = h + w + router_request_ms + recorder_ms

    def router_total(k: int) -> float:
        return fixed + (frame_ms[k] + model_ms[k]) / k

    needed = next(
        (k for k in range(1, 257) if bare_total / _interp(k, fixed, frame_ms, model_ms) >= 3.0), None
    )
    lines = [
        "# CPU per request by phase (router benchmark pipeline, one-row requests)",
        "",
        f"Command: `.venv/bin/python bench/router_phases.py --blocks {blocks} --requests {n}`",
        f"Load average before / after: {' '.join(f'{x:.2f}' for x in load_before)} / "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores); thread CPU, median of {blocks} blocks.",
        "",
        "| phase | CPU ms |",
        "|---|---|",
        f"| H: HTTP floor, gunicorn server CPU per request (c=16, {floor['rps']:.0f} req/s here) | {h:.3f} |",
        f"| W: wrk's CPU per request (same cores) | {w:.3f} |",
        f"| T: Flask test client on a trivial route (harness, taken off B and R) | {harness:.3f} |",
        f"| B: bare Flask request (JSON, DataFrame, predict_proba, answer) | {b:.3f} |",
        f"| R: router request thread without the model call and its frame | {router_request_ms:.3f} |",
        f"| rec: recorder thread per request (pair to SQLite) | {recorder_ms:.3f} |",
        f"| route refresh thread, per second (not per request) | {routes_per_s:.3f} |",
        f"| gauges thread, per second (not per request) | {gauges_per_s:.3f} |",
        "",
        "| k requests per scoring call | F(k) frame ms | M(k) predict_proba ms | (F+M)/k per request "
        "| router CPU per request | bare Flask CPU per request | most the router can gain |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in KS:
        lines.append(
            f"| {k} | {frame_ms[k]:.3f} | {model_ms[k]:.3f} | {(frame_ms[k] + model_ms[k]) / k:.3f} "
            f"| {router_total(k):.3f} | {bare_total:.3f} | {bare_total / router_total(k):.2f}x |"
        )
    lines += [
        "",
        f"- fixed per-request CPU of the router (H + W + R + rec): {fixed:.3f} ms; bare Flask's: "
        f"{bare_total:.3f} ms; the ceiling as k grows: {bare_total / fixed:.2f}x",
        f"- smallest k reaching 3x bare Flask: {needed if needed is not None else 'none up to 256'} "
        "(linear between measured k)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    Store(Database(url)).db.dispose()


def _interp(k: int, fixed: float, frame_ms: dict[int, float], model_ms: dict[int, float]) -> float:
    """Router CPU per request at k requests per call, the call's cost linear between measured sizes."""
    lower = max(x for x in KS if x <= k) if k >= KS[0] else KS[0]
    upper = min((x for x in KS if x >= k), default=KS[-1])
    cost = {x: frame_ms[x] + model_ms[x] for x in KS}
    if upper == lower:
        call = cost[lower] if k <= KS[-1] else cost[KS[-1]] * k / KS[-1]
    else:
        call = cost[lower] + (cost[upper] - cost[lower]) * (k - lower) / (upper - lower)
    return fixed + call / k


if __name__ == "__main__":
    main()
