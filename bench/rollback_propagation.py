"""Measure how fast a rollback reaches every router process: committed update -> champion-only answers.

    .venv/bin/python bench/rollback_propagation.py [--repeats 20] [--workers 2] [--refresh 0.25] \
        [--out bench/results/rollback_propagation.md]

Setup: `mlcanary router` (gunicorn, N sync workers) on SQLite on loopback; a deployment with a canary
at 50% (shadow rate 0). Each repeat starts a fresh rollout at 50%, waits until the routers answer
with the challenger, rolls it back with controller.loop.actions.act(..., "rollback") (one committed update), and from
that moment sends requests from 4 concurrent clients, each on a fresh connection (so every worker
keeps getting requests), all with routing keys that the split sends to the challenger. The
propagation time is when the last answer carrying ``X-Mlcanary-Arm: challenger`` arrived, measured
from the commit; probing continues for 3 x refresh after it, to be sure no worker still routes to it.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import statistics
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

from controller.loop import actions  # noqa: E402
from router.split import assign_arm  # noqa: E402
from storage import Database, Store  # noqa: E402
from storage import schema as db_schema  # noqa: E402

CLIENTS = 4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _row() -> dict[str, Any]:
    frame, _ = mlpipes.churn_frame(1, seed=5, missing=0.0)
    return {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in frame.iloc[0].to_dict().items()
    }


def _challenger_keys(rollout_id: int, salt: str | None, n: int = 200) -> list[str]:
    # The split is keyed by the rollout's secret salt; the bench reads it from storage as routers do.
    keys: list[str] = []
    i = 0
    while len(keys) < n:
        key = f"user-{rollout_id}-{i}"
        if assign_arm(key, rollout_id, 50.0, salt) == "challenger":
            keys.append(key)
        i += 1
    return keys


def _ask(url: str, key: str, body: dict[str, Any], client: httpx.Client | None = None) -> str:
    # A fresh connection per request (sync workers close it anyway): gunicorn hands each accepted
    # connection to whichever worker is free, so every worker keeps being probed.
    post = client.post if client is not None else httpx.post
    response = post(url, json=body, headers={"X-Routing-Key": key, "Connection": "close"}, timeout=10)
    response.raise_for_status()
    return response.headers.get("X-Mlcanary-Arm", "?")


def _probe(
    url: str, keys: list[str], body: dict[str, Any], *, start: float, quiet_for: float, limit: float
) -> tuple[float, int]:
    """Send requests until quiet_for seconds passed without a challenger answer; return (last one, requests)."""
    last = [0.0]
    sent = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def client(offset: int) -> None:
        i = offset
        http = httpx.Client()
        while not stop.is_set():
            arm = _ask(url, keys[i % len(keys)], body, http)
            now = time.monotonic()
            with lock:
                sent[0] += 1
                if arm == "challenger":
                    last[0] = max(last[0], now - start)
            i += CLIENTS

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    while True:
        time.sleep(0.02)
        elapsed = time.monotonic() - start
        if elapsed - last[0] >= quiet_for or elapsed > limit:
            break
    stop.set()
    for t in threads:
        t.join(timeout=15)
    return last[0], sent[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--refresh", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rollback_propagation.md")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="mlcanary-rollback-"))
    url = f"sqlite:///{directory / 'mlcanary.db'}"
    db = Database(url)
    db_schema.upgrade(db)
    store = Store(db)
    champion = mlpipes.register(store, directory, version="1")
    challenger = mlpipes.register(store, directory, version="2", seed=3)
    deployment = mlpipes.deploy(store, "churn", champion)
    port = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLCANARY_")}
    env["MLCANARY_REFRESH_INTERVAL"] = str(args.refresh)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller",
            "--database-url",
            url,
            "--data-dir",
            str(directory),
            "router",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(directory / "router.log").open("wb"),
    )
    endpoint = f"http://127.0.0.1:{port}/v1/models/churn/invocations"
    body = {"dataframe_records": [_row()]}
    times: list[float] = []
    requests = 0
    probe_s = 0.0
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(
                    "the router did not start: " + (directory / "router.log").read_text()[-2000:]
                )
            time.sleep(0.2)
        for repeat in range(args.repeats):
            rollout = store.rollouts.create(
                deployment_id=deployment.id,
                challenger_id=challenger.id,
                mode="canary",
                policy={"mode": "canary"},
                created_by="bench",
                phase="progressing",
                canary_weight=50.0,
                shadow_rate=0.0,
            )
            keys = _challenger_keys(rollout.id, store.routing.load_table()[deployment.name].split_salt)
            seen: set[str] = set()
            deadline = time.monotonic() + 30
            while len(seen) < 20:  # the routers have the canary: challenger-keyed requests get the challenger
                if _ask(endpoint, keys[len(seen) % len(keys)], body) == "challenger":
                    seen.add(keys[len(seen) % len(keys)])
                if time.monotonic() > deadline:
                    raise SystemExit("the canary never reached the routers")
            time.sleep(args.refresh * 2)  # let every worker pick it up before the rollback
            actions.act(store, "churn", "rollback", actor="bench", reason="propagation benchmark")
            committed = time.monotonic()
            last, sent = _probe(endpoint, keys, body, start=committed, quiet_for=3 * args.refresh, limit=10.0)
            times.append(last)
            requests += sent
            probe_s += time.monotonic() - committed
            print(
                f"repeat {repeat + 1}/{args.repeats}: last challenger answer {last * 1000:.0f} ms after the commit "
                f"({sent} requests)",
                flush=True,
            )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        db.dispose()

    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    load = os.getloadavg()[0]
    lines = [
        "## Rollback propagation",
        "",
        f"Command: `.venv/bin/python bench/rollback_propagation.py --repeats {args.repeats} "
        f"--workers {args.workers} --refresh {args.refresh}`",
        "",
        f"`mlcanary router`, {args.workers} gunicorn sync workers, SQLite on loopback, refresh interval "
        f"{args.refresh} s; canary at 50%; {CLIENTS} clients, a fresh connection per request, routing keys that "
        f"the split sends to the challenger; {requests} probe requests in all, one every "
        f"{probe_s / max(requests, 1) * 1000:.0f} ms on average (the resolution). Time from the committed rollback "
        f"(controller.loop.actions.act(..., rollback) returned) to the last answer from the challenger; 0 means no challenger "
        f"answer came after the commit ({sum(t == 0 for t in times)} of {len(times)} repeats). "
        f"{os.cpu_count()} cores, load average {load:.1f} at the end.",
        "",
        "| repeats | median ms | p95 ms | max ms | target |",
        "|---|---|---|---|---|",
        f"| {len(times)} | {statistics.median(times) * 1000:.0f} | {p95 * 1000:.0f} | {max(times) * 1000:.0f} | "
        f"< 1000 ms |",
        "",
        "Every router process polls the routing table every refresh interval, so the bound is one refresh "
        "interval plus one table load plus the requests already in flight.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
