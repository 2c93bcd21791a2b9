"""Measure the router's CPU per proxied request in process: the request path and its threads, vs a direct call.

    .venv/bin/python bench/proxy_cpu.py [--requests 400] [--setup proxied|shadow] [--out bench/results/proxy_cpu.md]

One MLServer 1.7.1 (as bench/upstream_overhead.py starts it) serves the churn pipeline. In this one
process, one-row requests go (1) straight to MLServer through the router's own connection pool,
with the exact body the router sends, and (2) through the router's Flask app (Flask's test client,
no gunicorn) whose champion is that MLServer. Figures are CPU milliseconds per request of this
process, per thread (the request thread, the recorder, the route refresh, ...), against the direct
call's; CPU time of one process is what survives a busy machine best (wall times there measure the
neighbours). The request thread also runs Flask's test client: its cost on /healthz is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import joblib

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support"), str(ROOT / "bench")]

import mlpipes  # noqa: E402
import peers  # noqa: E402
from upstream_overhead import prepare  # noqa: E402

from controller import registry  # noqa: E402
from router import create_app  # noqa: E402
from router.backends.connections import ConnectionPool  # noqa: E402
from router.backends.encodings import configure, encode  # noqa: E402
from router.settings import RouterSettings  # noqa: E402
from storage import Database, Store  # noqa: E402

_JSON = {"Content-Type": "application/json"}


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by thread name (from /proc/self/task)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), "other")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--setup", choices=("proxied", "shadow"), default="proxied")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "proxy_cpu.md")
    args = parser.parse_args()
    n = args.requests
    load_before = os.getloadavg()[0]
    directory = Path(tempfile.mkdtemp(prefix="proxy-cpu-"))
    joblib.dump(mlpipes.classifier(seed=0), directory / "a.joblib")
    joblib.dump(mlpipes.classifier(seed=1), directory / "b.joblib")
    server = peers.start_mlserver(
        peers.peer_python("mlserver", prefetch=False), directory / "mlserver",
        {"churn": directory / "a.joblib", "churn-b": directory / "b.joblib"}, pandas={"churn", "churn-b"},
    )  # fmt: skip
    try:
        frame, _ = mlpipes.churn_frame(1, seed=42, missing=0)
        columns = {c: [v.item() if hasattr(v, "item") else v for v in frame[c]] for c in frame.columns}
        dtypes = {c.name: c.dtype for c in registry.schema_from_frame(frame)}
        direct_body = encode(configure("mlserver", None, "classification"), columns, dtypes)
        split = json.loads(frame.to_json(orient="split", index=False))
        proxied_body = json.dumps({"dataframe_split": split}).encode()
        pool = ConnectionPool(server.url, size=1, timeout=10)
        url = f"{server.url}/v2/models/churn/infer"
        for _ in range(50):
            pool.request("POST", url, direct_body, _JSON)
        started = time.thread_time()
        for _ in range(n):
            pool.request("POST", url, direct_body, _JSON)
        direct = (time.thread_time() - started) * 1000 / n

        app = create_app(Store(Database(prepare(directory, args.setup, server.url))),
                         RouterSettings(spool_dir=directory / "spool"))  # fmt: skip
        plane = app.extensions["mlcanary.dataplane"]
        deadline = time.monotonic() + 60
        while not plane.ready and time.monotonic() < deadline:
            time.sleep(0.05)
        client = app.test_client()

        def proxied() -> None:
            reply = client.post(
                "/v1/models/churn/invocations", data=proxied_body, content_type="application/json"
            )
            assert reply.status_code == 200, reply.data

        for _ in range(50):
            proxied()
        started = time.thread_time()
        for _ in range(n):
            client.get("/healthz")
        health = (time.thread_time() - started) * 1000 / n
        time.sleep(1.0)
        before = thread_cpu()
        wall = time.perf_counter()
        for _ in range(n):
            proxied()
        wall = (time.perf_counter() - wall) * 1000 / n
        time.sleep(1.0)  # the recorder's last flush, the shadow pool's last batch
        after = thread_cpu()
        plane.close()
    finally:
        server.stop()
    per_thread = {k: (after[k] - before.get(k, 0.0)) * 1000 / n for k in after}
    total = sum(per_thread.values())
    request_thread = per_thread.get("MainThread", 0.0)
    lines = [
        f"# The router's CPU per proxied request, in process ({args.setup})",
        "",
        f"Command: `.venv/bin/python bench/proxy_cpu.py --requests {n} --setup {args.setup}`",
        f"Load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} (2 cores).",
        f"Wall time per proxied request here: {wall:.2f} ms (MLServer's time included; on a busy machine, noise).",
        "",
        "| what | CPU ms per request |",
        "|---|---|",
        f"| direct call to MLServer through the router's connection pool (the HTTP client alone) | {direct:.3f} |",
        f"| Flask's test client on /healthz (the harness, in the request thread below) | {health:.3f} |",
        f"| router: request thread (test client + Flask + router + HTTP client) | {request_thread:.3f} |",
    ]
    for name, value in sorted(per_thread.items(), key=lambda kv: -kv[1]):
        if name != "MainThread" and value >= 0.0005:
            lines.append(f"| router: thread {name} | {value:.3f} |")
    lines += [
        f"| router: all threads | {total:.3f} |",
        f"| **added by the router** (all threads - direct - test client) | **{total - direct - health:.3f}** |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
