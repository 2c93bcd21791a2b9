"""Benchmark the data plane against a bare Flask app scoring the same pipeline, and the HTTP floor.

    .venv/bin/python bench/router_bench.py [--seconds 8] [--rate 100] [--out bench/results/router.md]
                                           [--worker threads|sync|both] [--threads 32] [--setups ...]
                                           [--cpu-affinity auto|off] [--next-request-wait-ms 2]

Setups, one run, same pipeline (ColumnTransformer + LogisticRegression, one row per request),
same gunicorn (2 workers, the worker model of `mlcanary serve` by default: controller.server's
ReadBufferingWorker with 32 threads and one listening socket per worker, gunicorn's --reuse-port;
--worker sync for the sync workers of before; --shared-socket for one socket shared by the workers,
as before; --cpu-affinity off for the threaded worker without its CPU pinning, which is on by
default when there is a worker per CPU, as here; --next-request-wait-ms 0 for the worker whose threads
hand every kept-alive connection back to the event loop, as before), SQLite storage:
  0 floor           a bare WSGI app that parses the JSON and answers a constant (the HTTP floor)
  1 baseline        bare Flask, DataFrame per call, predict_proba
  2 champion        router, no rollout, adaptive batching off (each request scored alone)
  3 shadow          router, challenger shadows every request, batching off
  4 canary          router, 50% canary, the other arm shadows every request, batching off
  5 batch-champion  router, no rollout, adaptive batching on (the default)
  6 batch-shadow    router, challenger shadows every request, batching on
  7 batch-canary    router, 50% canary + shadow, batching on
Saturation: wrk -c16 and -c64, -t2 (closed loop). Moderate: wrk -c1, and an open-loop Python client
at a fixed rate (requests at fixed times; latency from send to answer). Shadow skips, requests
answered and requests per live batch come from /metrics; pairs stored from the database after a
graceful stop (one row per request: pairs stored must equal requests answered).
--c1-rounds N then starts the bare app and the batch-* setups at once and measures each at c=1 for
--c1-seconds in turn, N rounds, the order rotating: the router's c=1 p50 minus the bare app's, per
round (within a repeat the setups are a setup's length apart, and the machine drifts more than that).
--repeats 0 runs only these rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

import mlpipes  # noqa: E402

from storage import Database, Store  # noqa: E402
from storage import schema as db_schema  # noqa: E402
from storage.entities import BatchingConfig  # noqa: E402

SETUPS = (
    "floor",
    "baseline",
    "champion",
    "shadow",
    "canary",
    "batch-champion",
    "batch-shadow",
    "batch-canary",
)
ROUTED = SETUPS[2:]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(directory: Path, setup: str, batching: BatchingConfig | None = None) -> str:
    """Create a migrated SQLite database with the deployment set up for one benchmark setup."""
    url = f"sqlite:///{directory / f'{setup}.db'}"
    db = Database(url)
    db_schema.upgrade(db)
    store = Store(db)
    champion = mlpipes.register(store, directory / setup, version="1")
    challenger = mlpipes.register(store, directory / setup, version="2", seed=3)
    deployment = mlpipes.deploy(store, "churn", champion)
    kind = setup.removeprefix("batch-")
    if kind == setup:  # the setups of before batching: each request scored alone
        store.deployments.update("churn", batching=BatchingConfig(enabled=False))
    elif batching is not None:
        store.deployments.update("churn", batching=batching)
    if kind == "shadow":
        mlpipes.start_rollout(store, deployment, challenger, mode="shadow", shadow_rate=1.0)
    elif kind == "canary":
        mlpipes.start_rollout(store, deployment, challenger, mode="canary", canary_weight=50, shadow_rate=1.0)
    db.dispose()
    return url


def body() -> str:
    frame, _ = mlpipes.churn_frame(1, seed=42, missing=0)
    return json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))})


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by a process and its live children (gunicorn's arbiter and workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def wrk(
    url: str, script: Path, connections: int, seconds: int, server: int | None = None
) -> dict[str, float]:
    """Run wrk; with server (gunicorn's pid), add the server's and wrk's CPU milliseconds per answer.

    CPU per request survives a busy machine better than throughput: the throughput a quiet host's
    two cores could reach is about 2000 / (server + wrk CPU ms per request).
    """
    cpu = process_cpu(server) if server is not None else 0.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    sent = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = float(errors.group(1)) if errors else 0.0
    result = {"rps": rps, "p50": ms("50"), "p99": ms("99"), "non2xx": non2xx, "ok": sent - non2xx}
    if server is not None and sent:
        done = resource.getrusage(resource.RUSAGE_CHILDREN)
        result["cpu_ms"] = (process_cpu(server) - cpu) * 1000.0 / sent
        result["wrk_cpu_ms"] = (
            (done.ru_utime + done.ru_stime - children.ru_utime - children.ru_stime) * 1000.0 / sent
        )
    return result


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
            r'^mlcanary_shadow_skipped_total\{[^}]*reason="(?:queue_full|budget|shed|expired)"[^}]*\} ([\d.e+]+)$',
            text,
            re.M,
        )
    )


def _value(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([\d.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def batches(base: str) -> tuple[float, float]:
    """Return (shadowed requests, shadow micro-batches) so far, summed over the workers."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return _value(text, "mlcanary_shadow_batch_size_sum"), _value(text, "mlcanary_shadow_batch_size_count")


def live_batches(base: str) -> tuple[float, float]:
    """Return (requests scored through the batcher, its scoring calls) so far, summed over the workers."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return _value(text, "mlcanary_live_batched_requests_total"), _value(text, "mlcanary_live_batches_total")


def answered(base: str) -> float:
    """Return the prediction requests answered 200 so far (every worker), from /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r"^mlcanary_requests_total\{[^}]*\} ([\d.e+]+)$", text, re.M))


def mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float:
    count = after[1] - before[1]
    return (after[0] - before[0]) / count if count else 0.0


def start_setup(
    setup: str, directory: Path, args: argparse.Namespace, payload: str, worker_model: str
) -> tuple[subprocess.Popen[bytes], str, str, str]:
    """Start one setup's gunicorn and wait until it answers; (process, database URL, base URL, endpoint)."""
    directory = directory / worker_model
    directory.mkdir(exist_ok=True)
    url = prepare(
        directory,
        setup,
        BatchingConfig().replace(max_batch_delay_ms=args.batch_delay_ms, max_batch_rows=args.batch_rows),
    )
    port = _port()
    metrics_dir = directory / f"metrics-{setup}"
    metrics_dir.mkdir()
    env = {
        **os.environ,
        "BENCH_DATABASE_URL": url,
        "BENCH_SPOOL_DIR": str(directory / f"spool-{setup}"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
        "BENCH_CPU_AFFINITY": args.cpu_affinity,
        "BENCH_NEXT_REQUEST_WAIT_MS": str(args.next_request_wait_ms),
    }
    factory = {"floor": "router_apps:floor()", "baseline": "router_apps:baseline()"}.get(
        setup, "router_apps:router()"
    )
    worker = (
        ["--worker-class", "sync"]
        if worker_model == "sync"
        else ["--worker-class", "router_apps.BenchWorker", "--threads", str(args.threads)]
    )
    if not args.shared_socket:
        worker.append("--reuse-port")  # as controller.server.run: each worker listens on its own socket
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
    # a shared, loaded machine can take 120 s to import and load
    wait_answering(
        lambda: (
            httpx.post(endpoint, content=payload, headers={"Content-Type": "application/json"}).status_code
            == 200
        ),
        process,
        120,
        f"{setup} ({worker_model})",
    )
    return process, url, base, endpoint


def rotated(names: list[str], turn: int) -> list[str]:
    """The names in order, starting at the turn's: each setup goes first in its turn, in alternation."""
    start = turn % len(names)
    return names[start:] + names[:start]


def wait_answering(
    answers: Callable[[], bool], process: subprocess.Popen[bytes] | None, timeout_s: float, what: str
) -> None:
    """Wait until answers() is true (a refused connection counts as not yet); kill process and raise
    if it exits or timeout_s passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if answers():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or (process is not None and process.poll() is not None):
            if process is not None:
                process.kill()
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.2)


def run_setup(
    setup: str, directory: Path, args: argparse.Namespace, script: Path, payload: str, worker_model: str
) -> dict[str, Any]:
    process, url, base, endpoint = start_setup(setup, directory, args, payload, worker_model)
    try:
        wrk(endpoint, script, 16, 2)  # warm-up
        result: dict[str, Any] = {"setup": setup, "worker": worker_model}
        shadowing = setup.endswith(("shadow", "canary"))
        routed = setup in ROUTED
        start = batches(base) if shadowing else (0.0, 0.0)
        result["fixed"] = fixed_rate(endpoint, payload, args.rate, args.seconds)
        time.sleep(1.0)  # the last micro-batches linger a moment
        result["dropped_moderate"] = dropped(base) if shadowing else 0.0
        moderate = batches(base) if shadowing else (0.0, 0.0)
        result["c1"] = wrk(endpoint, script, 1, args.seconds, process.pid)
        before = batches(base) if shadowing else (0.0, 0.0)
        live_before = live_batches(base) if routed else (0.0, 0.0)
        result["c16"] = wrk(endpoint, script, 16, args.seconds, process.pid)
        live_after = live_batches(base) if routed else (0.0, 0.0)
        result["c64"] = wrk(endpoint, script, 64, args.seconds, process.pid)
        time.sleep(1.0)
        result["dropped_total"] = dropped(base) if shadowing else 0.0
        after = batches(base) if shadowing else (0.0, 0.0)
        result["batch_moderate"] = mean_batch(start, moderate)
        result["batch_c16"] = mean_batch(before, after)
        result["live_batch_c16"] = mean_batch(live_before, live_after)
        result["answered"] = answered(base) if routed else 0.0
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    if setup in ROUTED:
        store = Store(Database(url))
        result["pairs"] = store.pairs.count()
        result["with_challenger"] = sum(
            1 for p in store.pairs.list(limit=2000) if p.challenger_class is not None or p.challenger_error
        )
    return result


def c1_rounds(
    directory: Path, args: argparse.Namespace, script: Path, payload: str
) -> dict[str, list[float]]:
    """c=1 p50 of the bare app and the batching setups, all up at once, measured in alternation.

    Each round runs wrk -c1 for --c1-seconds on every setup, the order rotating from round to round,
    so the router and the bare app are compared seconds apart, not a setup's length apart: this
    machine's speed drifts by more than the 0.3 ms being resolved within a minute.
    """
    names = [name for name in args.setups.split(",") if name == "baseline" or name.startswith("batch-")]
    place = directory / "c1-rounds"
    place.mkdir()
    running = {name: start_setup(name, place, args, payload, "threads") for name in names}
    p50: dict[str, list[float]] = {name: [] for name in names}
    try:
        for _, _, _, endpoint in running.values():
            wrk(endpoint, script, 1, 2)  # warm-up
        for round_ in range(args.c1_rounds):
            order = rotated(names, round_)
            for name in order:
                p50[name].append(wrk(running[name][3], script, 1, args.c1_seconds)["p50"])
            print(
                json.dumps({"c1_round": round_, **{name: runs[-1] for name, runs in p50.items()}}), flush=True
            )
    finally:
        for process, *_ in running.values():
            process.send_signal(signal.SIGTERM)
        for process, *_ in running.values():
            process.wait(60)
    return p50


def _c1_report(p50: dict[str, list[float]], args: argparse.Namespace) -> list[str]:
    lines = [
        "",
        f"## c=1 p50 in alternation ({args.c1_rounds} rounds of {args.c1_seconds} s, every setup up at once)",
        "",
        "Each round measures the bare app and each batching setup at c=1, one after the other (order",
        "rotating); the router's c=1 p50 minus the bare app's is taken per round, against the bare app",
        "of the same round (target: <= +0.3 ms).",
        "",
        "| setup | c=1 p50 ms, median | minus the bare app's, median (each round) |",
        "|---|---|---|",
    ]
    bare = p50["baseline"]
    for name, runs in p50.items():
        if name == "baseline":
            lines.append(f"| baseline | {statistics.median(runs):.2f} | - |")
            continue
        diff = [a - b for a, b in zip(runs, bare, strict=True)]
        lines.append(
            f"| {name} | {statistics.median(runs):.2f} | {statistics.median(diff):+.2f} "
            f"({', '.join(f'{d:+.2f}' for d in diff)}) |"
        )
    return lines


def _command(args: argparse.Namespace) -> str:
    return (
        f"Command: `.venv/bin/python bench/router_bench.py --seconds {args.seconds} --rate {args.rate:g} "
        f"--worker {args.worker} --threads {args.threads} --cpu-affinity {args.cpu_affinity} --next-request-wait-ms {args.next_request_wait_ms:g} --setups {args.setups}"
        + (f" --batch-delay-ms {args.batch_delay_ms:g}" if args.batch_delay_ms is not None else "")
        + (f" --batch-rows {args.batch_rows}" if args.batch_rows is not None else "")
        + (" --shared-socket" if args.shared_socket else "")
        + (f" --repeats {args.repeats}" if args.repeats != 1 else "")
        + (f" --c1-rounds {args.c1_rounds} --c1-seconds {args.c1_seconds}" if args.c1_rounds else "")
        + "`"
    )


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Router benchmark",
        "",
        _command(args),
        "",
        f"One run; 2 cores; load average at the start {args.load_start}, at the end {_load()}; gunicorn 2 workers; "
        "one-row MLflow "
        "`dataframe_split` requests;",
        "ColumnTransformer + LogisticRegression champion (challenger: same pipeline, other seed); SQLite.",
        "With --worker both, each setup runs under sync workers, then under the threaded worker.",
    ]
    if args.repeats > 1:
        lines += [
            f"Each setup ran {args.repeats} times, the whole sequence of setups repeated (setups of one repeat",
            "minutes apart, repeats further apart); the tables give each figure's median over the repeats, and",
            "the ratios to bare Flask are also given repeat by repeat (against the bare app of the same repeat).",
        ]
    for model in dict.fromkeys(r["worker"] for r in results):
        lines += ["", f"## {_worker(model, args)}", ""]
        mine = [r for r in results if r["worker"] == model]
        lines += _table(_medians(mine), args)
        if args.repeats > 1:
            lines += _per_repeat(mine)
    return "\n".join(lines) + "\n"


def _medians(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per setup: each numeric figure's median over the repeats (pairs: all must match)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["setup"], []).append(r)

    def merge(values: list[Any]) -> Any:
        if isinstance(values[0], dict):
            return {k: merge([v[k] for v in values if k in v]) for k in values[0]}
        if isinstance(values[0], bool) or not isinstance(values[0], int | float):
            return values[0]
        return statistics.median(values)

    merged = []
    for runs in by.values():
        one = merge(runs)
        if "pairs" in one:  # pairs == answered is checked over every repeat, not on medians
            one["answered"] = sum(r["answered"] for r in runs)
            one["pairs"] = sum(r["pairs"] for r in runs)
        merged.append(one)
    return merged


def _per_repeat(results: list[dict[str, Any]]) -> list[str]:
    """The batching router against the bare app of the same repeat, repeat by repeat."""
    lines = ["", "Repeat by repeat (each against the bare app of the same repeat):"]
    repeats = sorted({r["repeat"] for r in results})
    for name in ("batch-champion", "batch-shadow"):
        c16, c64, c1 = [], [], []
        for rep in repeats:
            by = {r["setup"]: r for r in results if r["repeat"] == rep}
            b, r = by.get("baseline"), by.get(name)
            if b is None or r is None:
                continue
            c16.append(f"{r['c16']['rps'] / b['c16']['rps']:.2f}x")
            c64.append(f"{r['c64']['rps'] / b['c64']['rps']:.2f}x")
            c1.append(f"{r['c1']['p50'] - b['c1']['p50']:+.2f}")
        if c16:
            lines.append(
                f"- {name}: throughput c=16 {', '.join(c16)}; c=64 {', '.join(c64)}; "
                f"c=1 p50 minus the bare app's {', '.join(c1)} ms"
            )
    return lines


def _table(results: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    by = {r["setup"]: r for r in results}
    lines = [
        f"| setup | fixed {args.rate:g} req/s p50 / p99 ms | wrk c=1 req/s | c=1 p50 / p99 ms "
        "| wrk c=16 req/s | c=16 p50 / p99 ms | wrk c=64 req/s | c=64 p50 / p99 ms "
        "| shadow skips: no room, shed, expired (moderate / total) | requests per shadow batch (moderate / c=16) "
        "| requests per live batch (c=16) | answered / pairs stored "
        "| server CPU ms per request c=1 / c=16 / c=64 | wrk CPU ms per request c=16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        f, c1, c16, c64 = r["fixed"], r["c1"], r["c16"], r["c64"]
        stored = f"{r['answered']:.0f} / {r['pairs']}" if "pairs" in r else "-"
        live = f"{r['live_batch_c16']:.1f}" if r["setup"] in ROUTED else "-"
        lines.append(
            f"| {r['setup']} | {f['p50']:.2f} / {f['p99']:.2f} | {c1['rps']:.0f} | {c1['p50']:.2f} / {c1['p99']:.2f} "
            f"| {c16['rps']:.0f} | {c16['p50']:.2f} / {c16['p99']:.2f} "
            f"| {c64['rps']:.0f} | {c64['p50']:.2f} / {c64['p99']:.2f} "
            f"| {r['dropped_moderate']:.0f} / {r['dropped_total']:.0f} "
            f"| {_batch(r)} | {live} | {stored} "
            f"| {_cpu(c1)} / {_cpu(c16)} / {_cpu(c64)} | {c16.get('wrk_cpu_ms', float('nan')):.3f} |"
        )
    lines += ["", "Targets:"]
    b = by.get("baseline")
    c, s = by.get("champion"), by.get("shadow")
    if b and c:
        lines.append(f"- (2)/(1) throughput at c=16: {c['c16']['rps'] / b['c16']['rps']:.2f} (target ≥ 0.85)")
    if c and s:
        lines += [
            f"- (3)/(2) throughput at c=16: {s['c16']['rps'] / c['c16']['rps']:.2f} (target ≥ 0.85)",
            f"- p99 (3)/(2) at a fixed {args.rate:g} req/s: {s['fixed']['p99'] / c['fixed']['p99']:.2f} (target ≤ 1.2)",
        ]
    bc, bs = by.get("batch-champion"), by.get("batch-shadow")
    if bc and bs:
        lines += [
            f"- (6)/(5) throughput at c=16: {bs['c16']['rps'] / bc['c16']['rps']:.2f} (target ≥ 0.85); "
            f"fixed-rate p99 (6)/(5): {bs['fixed']['p99'] / bc['fixed']['p99']:.2f} (target ≤ 1.2)",
        ]
    if b:
        for name in ("batch-champion", "batch-shadow"):
            r = by.get(name)
            if r is None:
                continue
            lines.append(
                f"- {name} vs bare Flask: throughput c=16 {r['c16']['rps'] / b['c16']['rps']:.2f}x, "
                f"c=64 {r['c64']['rps'] / b['c64']['rps']:.2f}x (target ≥ 3); "
                f"p99 at c=16 {r['c16']['p99']:.1f} vs {b['c16']['p99']:.1f} ms (target ≤); "
                f"p50 at c=1 {r['c1']['p50']:.2f} vs {b['c1']['p50']:.2f} ms (target ≤ bare + 0.3)"
            )
    if b and "cpu_ms" in b["c16"]:
        for name in ("batch-champion", "batch-shadow"):
            r = by.get(name)
            if r is None or "cpu_ms" not in r["c16"]:
                continue
            lines.append(
                f"- {name} vs bare Flask by CPU per request (what a quiet, CPU-bound host turns into "
                f"throughput): c=16 {b['c16']['cpu_ms']:.2f} / {r['c16']['cpu_ms']:.2f} ms = "
                f"{b['c16']['cpu_ms'] / r['c16']['cpu_ms']:.2f}x, c=64 {b['c64']['cpu_ms']:.2f} / "
                f"{r['c64']['cpu_ms']:.2f} ms = {b['c64']['cpu_ms'] / r['c64']['cpu_ms']:.2f}x"
            )
    floor = by.get("floor")
    if floor:
        for name in ("batch-champion", "batch-shadow"):
            r = by.get(name)
            if r is not None:
                lines.append(
                    f"- {name} against the HTTP floor: c=16 {r['c16']['rps'] / floor['c16']['rps']:.2f}, "
                    f"c=64 {r['c64']['rps'] / floor['c64']['rps']:.2f} of the floor's throughput"
                )
    routed = [r for r in results if "pairs" in r]
    if routed:
        ok = all(round(r["answered"]) == r["pairs"] for r in routed)
        lines.append(f"- pairs stored == requests answered in every routed setup: {'yes' if ok else 'NO'}")
    return lines


def _cpu(run: dict[str, float]) -> str:
    return f"{run['cpu_ms']:.2f}" if "cpu_ms" in run else "-"


def _worker(model: str, args: argparse.Namespace) -> str:
    if model == "sync":
        return "sync workers"
    return f"ReadBufferingWorker x {args.threads} threads"


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _batch(result: dict[str, Any]) -> str:
    if not result["setup"].endswith(("shadow", "canary")):
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
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument(
        "--batch-delay-ms", type=float, default=None, help="batch-* setups (default: the default)"
    )
    parser.add_argument("--batch-rows", type=int, default=None, help="batch-* setups (default: the default)")
    parser.add_argument(
        "--cpu-affinity",
        choices=("auto", "off"),
        default="auto",
        help="the threaded worker's CPU pinning (MLCANARY_CPU_AFFINITY): auto, the default, or off",
    )
    parser.add_argument(
        "--next-request-wait-ms",
        type=float,
        default=2.0,
        help="how long the threaded worker's thread waits for a kept-alive connection's next request "
        "(MLCANARY_NEXT_REQUEST_WAIT_MS; default the default, 0 never: the worker of before)",
    )
    parser.add_argument(
        "--shared-socket",
        action="store_true",
        help="one listening socket shared by the workers (before: no --reuse-port)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="run the whole sequence of setups this many times (0: none)"
    )
    parser.add_argument(
        "--c1-rounds",
        type=int,
        default=0,
        help="then measure c=1 of baseline and the batch-* setups in alternation, this many rounds",
    )
    parser.add_argument(
        "--c1-seconds", type=int, default=2, help="wrk time per setup and round (--c1-rounds)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "router.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    args.load_start = _load()
    directory = Path(tempfile.mkdtemp(prefix="router-bench-"))
    payload = body()
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(payload)}\n"
    )
    results = []
    models = ("sync", "threads") if args.worker == "both" else (args.worker,)
    for repeat in range(args.repeats):
        for setup in args.setups.split(","):
            for model in models:
                place = directory / f"repeat-{repeat}"
                place.mkdir(exist_ok=True)
                results.append({**run_setup(setup, place, args, script, payload, model), "repeat": repeat})
                print(json.dumps(results[-1]), flush=True)
    text = report(results, args) if results else f"# Router benchmark\n\n{_command(args)}\n"
    if args.c1_rounds:
        text += "\n".join(_c1_report(c1_rounds(directory, args, script, payload), args)) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
