"""Benchmark the data plane against a bare Flask app scoring the same pipeline.

    .venv/bin/python bench/router_bench.py [--seconds 8] [--rate 100] [--out bench/results/router.md]
                                           [--worker threads|sync|both] [--threads 8]

Four setups, one run, same pipeline (ColumnTransformer + LogisticRegression, one row per request),
same gunicorn (2 workers, the worker model of `mlcanary serve` by default: controller.server's
ReadBufferingWorker with 8 threads; --worker sync for the sync workers of before), SQLite storage:
  1 baseline   bare Flask, DataFrame per call, predict_proba
  2 champion   router, no rollout (champion answers, pairs recorded)
  3 shadow     router, challenger shadows every request
  4 canary     router, 50% canary, the other arm shadows every request
Saturation: wrk -c16 -t2 (closed loop). Moderate: wrk -c1, and an open-loop Python client at a
fixed rate (requests at fixed times; latency from send to answer). Shadow drops come from /metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

import mlpipes  # noqa: E402

from storage import Database, Store  # noqa: E402
from storage import schema as db_schema  # noqa: E402

SETUPS = ("baseline", "champion", "shadow", "canary")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(directory: Path, setup: str) -> str:
    """Create a migrated SQLite database with the deployment set up for one benchmark setup."""
    url = f"sqlite:///{directory / f'{setup}.db'}"
    db = Database(url)
    db_schema.upgrade(db)
    store = Store(db)
    champion = mlpipes.register(store, directory / setup, version="1")
    challenger = mlpipes.register(store, directory / setup, version="2", seed=3)
    deployment = mlpipes.deploy(store, "churn", champion)
    if setup == "shadow":
        mlpipes.start_rollout(store, deployment, challenger, mode="shadow", shadow_rate=1.0)
    elif setup == "canary":
        mlpipes.start_rollout(store, deployment, challenger, mode="canary", canary_weight=50, shadow_rate=1.0)
    db.dispose()
    return url


def body() -> str:
    frame, _ = mlpipes.churn_frame(1, seed=42, missing=0)
    return json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))})


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": ms("50"), "p99": ms("99"), "non2xx": float(errors.group(1)) if errors else 0.0}


def fixed_rate(url: str, payload: str, rate: float, seconds: float) -> dict[str, float]:
    """Send requests at fixed times (open loop); return p50/p99 of send→answer in ms."""
    latencies: list[float] = []
    lock = threading.Lock()
    total = int(rate * seconds)
    start = time.perf_counter() + 0.2

    def run(offset: int, step: int) -> None:
        with httpx.Client(timeout=10) as client:
            for i in range(offset, total, step):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent = time.perf_counter()
                response = client.post(url, content=payload, headers={"Content-Type": "application/json"})
                elapsed = (time.perf_counter() - sent) * 1000
                assert response.status_code == 200, response.text
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=run, args=(k, 4)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    latencies.sort()
    return {
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99) - 1],
        "n": float(len(latencies)),
    }


def dropped(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return sum(
        float(v)
        for v in re.findall(
            r'^mlcanary_shadow_skipped_total\{[^}]*reason="(?:queue_full|budget)"[^}]*\} ([\d.e+]+)$',
            text,
            re.M,
        )
    )


def batches(base: str) -> tuple[float, float]:
    """Return (shadowed requests, shadow micro-batches) so far, summed over the workers."""
    text = httpx.get(f"{base}/metrics", timeout=5).text

    def value(name: str) -> float:
        found = re.search(rf"^{name} ([\d.e+]+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    return value("mlcanary_shadow_batch_size_sum"), value("mlcanary_shadow_batch_size_count")


def mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float:
    count = after[1] - before[1]
    return (after[0] - before[0]) / count if count else 0.0


def run_setup(
    setup: str, directory: Path, args: argparse.Namespace, script: Path, payload: str, worker_model: str
) -> dict[str, Any]:
    directory = directory / worker_model
    directory.mkdir(exist_ok=True)
    url = prepare(directory, setup)
    port = _port()
    metrics_dir = directory / f"metrics-{setup}"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "BENCH_DATABASE_URL": url,
        "BENCH_SPOOL_DIR": str(directory / f"spool-{setup}"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
    }
    factory = "router_apps:baseline()" if setup == "baseline" else "router_apps:router()"
    worker = (
        ["--worker-class", "sync"]
        if worker_model == "sync"
        else ["--worker-class", "controller.server.ReadBufferingWorker", "--threads", str(args.threads)]
    )
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            *worker,
            "--config",
            str(ROOT / "bench" / "router_apps.py"),
            "--log-level",
            "warning",
            factory,
        ],  # fmt: skip
        env=env,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    endpoint = f"{base}/v1/models/churn/invocations"
    try:
        deadline = time.monotonic() + 120  # a shared, loaded machine can take that long to import and load
        while True:
            try:
                if (
                    httpx.post(
                        endpoint, content=payload, headers={"Content-Type": "application/json"}
                    ).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{setup} ({worker_model}) did not start")
            time.sleep(0.2)
        wrk(endpoint, script, 16, 2)  # warm-up
        result: dict[str, Any] = {"setup": setup, "worker": worker_model}
        shadowing = setup in ("shadow", "canary")
        start = batches(base) if shadowing else (0.0, 0.0)
        result["fixed"] = fixed_rate(endpoint, payload, args.rate, args.seconds)
        time.sleep(1.0)  # the last micro-batches linger a moment
        result["dropped_moderate"] = dropped(base) if shadowing else 0.0
        moderate = batches(base) if shadowing else (0.0, 0.0)
        result["c1"] = wrk(endpoint, script, 1, args.seconds)
        before = batches(base) if shadowing else (0.0, 0.0)
        result["c16"] = wrk(endpoint, script, 16, args.seconds)
        time.sleep(1.0)
        result["dropped_total"] = dropped(base) if shadowing else 0.0
        after = batches(base) if shadowing else (0.0, 0.0)
        result["batch_moderate"] = mean_batch(start, moderate)
        result["batch_c16"] = mean_batch(before, after)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    if setup != "baseline":
        store = Store(Database(url))
        result["pairs"] = store.pairs.count()
        result["with_challenger"] = sum(
            1 for p in store.pairs.list(limit=2000) if p.challenger_class is not None or p.challenger_error
        )
    return result


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Router benchmark",
        "",
        f"Command: `.venv/bin/python bench/router_bench.py --seconds {args.seconds} --rate {args.rate:g} "
        f"--worker {args.worker}`",
        "",
        "One run; 2 cores; gunicorn 2 workers; one-row MLflow `dataframe_split` requests;",
        "ColumnTransformer + LogisticRegression champion (challenger: same pipeline, other seed); SQLite.",
        "With --worker both, each setup runs under sync workers, then under the threaded worker.",
    ]
    for model in dict.fromkeys(r["worker"] for r in results):
        lines += ["", f"## {_worker(model, args)}", ""]
        lines += _table([r for r in results if r["worker"] == model], args)
    return "\n".join(lines) + "\n"


def _table(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    by = {r["setup"]: r for r in results}
    lines = [
        f"| setup | fixed {args.rate:g} req/s p50 / p99 ms | wrk c=1 req/s | c=1 p50 / p99 ms "
        "| wrk c=16 req/s | c=16 p50 / p99 ms | shadow drops (moderate / total) "
        "| requests per shadow batch (moderate / c=16) | pairs stored |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f, c1, c16 = r["fixed"], r["c1"], r["c16"]
        lines.append(
            f"| {r['setup']} | {f['p50']:.2f} / {f['p99']:.2f} | {c1['rps']:.0f} | {c1['p50']:.2f} / {c1['p99']:.2f} "
            f"| {c16['rps']:.0f} | {c16['p50']:.2f} / {c16['p99']:.2f} "
            f"| {r['dropped_moderate']:.0f} / {r['dropped_total']:.0f} "
            f"| {_batch(r)} | {r.get('pairs', '-')} |"
        )
    if all(s in by for s in SETUPS):
        b, c, s = by["baseline"], by["champion"], by["shadow"]
        lines += [
            "",
            "Targets:",
            f"- (2)/(1) throughput at c=16: {c['c16']['rps'] / b['c16']['rps']:.2f} (target ≥ 0.85)",
            f"- (3)/(2) throughput at c=16: {s['c16']['rps'] / c['c16']['rps']:.2f} (target ≥ 0.85)",
            f"- p99 (3)/(2) at a fixed {args.rate:g} req/s: {s['fixed']['p99'] / c['fixed']['p99']:.2f} (target ≤ 1.2)",
            f"- p99 (3)/(2) at wrk c=1: {s['c1']['p99'] / c['c1']['p99']:.2f}",
            f"- shadow drops at moderate load: {s['dropped_moderate']:.0f} (shadow), "
            f"{by['canary']['dropped_moderate']:.0f} (canary)",
        ]
    return lines


def _worker(model: str, args: argparse.Namespace) -> str:
    if model == "sync":
        return "sync workers"
    return f"ReadBufferingWorker x {args.threads} threads"


def _batch(result: dict[str, Any]) -> str:
    if result["setup"] not in ("shadow", "canary"):
        return "-"
    return f"{result['batch_moderate']:.1f} / {result['batch_c16']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--worker", choices=("threads", "sync", "both"), default="threads")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "router.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    directory = Path(tempfile.mkdtemp(prefix="router-bench-"))
    payload = body()
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(payload)}\n"
    )
    results = []
    models = ("sync", "threads") if args.worker == "both" else (args.worker,)
    for setup in args.setups.split(","):
        for model in models:
            results.append(run_setup(setup, directory, args, script, payload, model))
            print(json.dumps(results[-1]), flush=True)
    text = report(results, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
