"""Benchmark mlcanary in front of MLServer against clients calling MLServer directly.

    .venv/bin/python bench/upstream_overhead.py [--seconds 8] [--rounds 3] [--worker threads|sync]
        [--nginx] [--rawhop] [--rawloop [--steps]] [--alternate N [--block K]] [--server-cpus LIST]
        [--baseline DIR]
        [--out bench/results/upstream_overhead.md]

One MLServer 1.7.1 (the environment under .cache/peers/mlserver, built on first use like the tests
do; sklearn runtime, parallel_workers 0) serves the churn pipeline (ColumnTransformer +
LogisticRegression, joblib) as "churn" and a second fit as "churn-b". Three setups, one run, one-row
requests, wrk closed loop at c=1 and at saturation (c=16):
  direct   wrk -> MLServer /v2/models/churn/infer, the exact body mlcanary sends (v2-columns,
           content_type pd, outputs predict + predict_proba)
  proxied  wrk -> mlcanary router (gunicorn, 2 workers, SQLite) /v1/models/churn/invocations;
           champion = the MLServer upstream (--upstream-kind mlserver); pairs recorded
  shadow   as proxied, plus a challenger upstream ("churn-b" on the same MLServer) shadowing every request
  hop      wrk -> a bare WSGI app on the same gunicorn worker that forwards direct's body as it is to
           MLServer through the router's own connection pool (bench/router_apps.py hop()): what one
           Python HTTP hop costs on the product's worker, the router's work aside
  plainhop the same app, its POSTs claimed by the worker's plain path (bench/router_apps.py plain_hop()):
           the hop without gunicorn's parser and response objects, as the router's scoring routes run
  nginx    (--nginx, nginx installed: apt-get install -y nginx-light) wrk -> nginx, 2 worker processes,
           proxy_pass to MLServer over kept-alive upstream connections, direct's body as it is: what
           one hop costs a native proxy on the same machine (the same processes woken per request)
  rawhop   (--rawhop) wrk -> bench/raw_hop.py, a thread per connection forwarding bytes on blocking
           sockets: the least a Python hop costs here (it measured what nginx's does, BENCHMARKS.md
           "Thirteenth session"), so what the worker adds over it is the worker's, not Python's
  loophop, loopflat, looprouter
           (--rawloop) wrk -> bench/raw_loop.py: raw_hop's loop (a thread per connection, blocking
           sockets) answering with the worker's plain-path functions and one app, the bare hop
           (direct's body), the flat floor (proxied's body: bench/router_apps.py flat(), the least
           a validating router does, no data plane) or the router (proxied's body and database): the
           router's own work without the serving worker's event loop and hand-offs, and how much of
           it any Python router would pay (loopflat - loophop). With --steps, looprouter times
           the router's steps and the report gives each one's thread CPU per request (the timers
           add a few microseconds per step: read the steps against each other)
The router's workers are what `mlcanary router` runs (--worker threads, the default: gunicorn's
threaded worker with the read-buffering event loop, 8 threads each, keep-alive connections, as
MLServer's uvicorn keeps them) or gunicorn's sync workers (--worker sync: one request per worker at
a time, and a new TCP connection per request, since the sync worker closes each one).
The three setups are measured in --rounds rounds, each round every setup at c=1 and then c=16, the
setups' order rotating from round to round (the routers stay up between rounds), each setup's window
bracketed by a window of direct just before and one just after it: added latency = setup p50/p99 -
the mean of the two direct windows' p50/p99 and throughput ratio = setup req/s / their mean req/s
are computed per round and their medians reported (MLServer's own c=1 p50 moved by several ms
between runs a minute apart, and by 1-2 ms between windows of one round: one direct run per
benchmark, or per round, charged that drift to whichever setup ran while MLServer was slow).
--alternate N then measures c=1 request by request: N turns, each sending one request to every setup
in turn (direct included, the order rotating), each setup on its own kept-alive connection from one
Python client; a setup's added latency is the median over the turns of its time minus direct's in
the same turn. MLServer's own time for one row moves by several ms between windows seconds apart;
requests milliseconds apart see the same server, so this resolves the 1 ms target where rounds of
wrk could not. With --block K each turn sends K requests back to back to every setup in turn, and a
setup's time in a turn is the median of its requests after the first: c=1 as wrk's closed loop sends
it (each request as soon as the last is answered), still milliseconds from direct's; K = 1 (the
default) is request by request, each setup idle while the others are served.
--baseline DIR runs every routed setup a second time from another checkout of mlcanary (a git
worktree of an earlier commit: `git worktree add /tmp/base COMMIT`), as SETUP@base, in the same rounds
and turns: a before/after of two versions of the router measured request by request against the same
MLServer, where two runs minutes apart measured the machine (the same code's CPU per request moved
by a factor 1.6 within an hour, BENCHMARKS.md "Twelfth session"). The turns then also give each
setup's time minus its baseline's, the median over the turns. The baseline runs with this checkout's
virtual environment and reads a database this checkout migrated, so it must read the current schema.
An A/A run (the same commit as its own baseline) differed by up to 0.36 ms per setup (where each
instance's pinned worker sits against MLServer): repeat with new instances before trusting less.
--server-cpus LIST gives MLServer CPUs of its own (every thread of its processes moved there once it
is up) and runs everything else, the routers, nginx and the clients, on the other CPUs: the
deployment docs/pipelines.md advises (the model server in its own pod or on its own cores), where the
shared default measures the router's code refilling caches MLServer's ~10 ms of scoring emptied
between two requests on the same core. Direct is measured with the same placement.
Server-side CPU per request (MLServer, plus the router's gunicorn master and workers, from /proc)
is the figure that survives a busy machine: on 2 shared cores, latency and throughput measure the
other tenants as much as the proxy. The router's part of it (its gunicorn processes alone) is given
too: MLServer's own CPU per request grows with the machine's load, the router's much less.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import joblib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support"), str(ROOT / "bench")]

import mlpipes  # noqa: E402
import peers  # noqa: E402
from router_bench import _port, answered, rotated, wait_answering, wrk  # noqa: E402

from controller import registry  # noqa: E402
from router.backends.encodings import configure, encode  # noqa: E402
from router.backends.upstream import UpstreamTools  # noqa: E402
from storage import Database, Store  # noqa: E402
from storage import schema as db_schema  # noqa: E402

SETUPS = ("direct", "hop", "plainhop", "proxied", "shadow")
HOPS = ("hop", "plainhop")  # forward direct's body as it is; nothing stored


def prepare(directory: Path, setup: str, url: str) -> str:
    """A migrated SQLite database with deployment "churn": champion the MLServer upstream (and a shadow)."""
    database = f"sqlite:///{directory / f'{setup}.db'}"
    db = Database(database)
    db_schema.upgrade(db)
    store = Store(db)
    sample, _ = mlpipes.churn_frame(20, seed=7)
    schema = registry.schema_from_frame(sample)

    def upstream(version: str, model: str) -> Any:
        return registry.register_upstream(
            store, name="churn", version=version, url=f"{url}/v2/models/{model}", protocol=None,
            task="classification", schema=schema, classes=(0, 1), kind="mlserver",
            tools=UpstreamTools(), sample=sample,
        )  # fmt: skip

    champion = upstream("1", "churn")
    deployment = mlpipes.deploy(store, "churn", champion)
    if setup == "shadow":
        mlpipes.start_rollout(store, deployment, upstream("2", "churn-b"), mode="shadow", shadow_rate=1.0)
    db.dispose()
    return database


def lua(directory: Path, name: str, payload: str) -> Path:
    script = directory / f"{name}.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(payload)}\n"
    )
    return script


def process_tree(roots: list[int]) -> dict[int, float]:
    """These processes and all their descendants (from /proc): pid -> user + system CPU seconds."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    wanted = set(roots)
    while more := {pid for pid, parent in parents.items() if parent in wanted} - wanted:
        wanted |= more
    return {pid: times.get(pid, 0.0) for pid in wanted}


def cpu_seconds(roots: list[int]) -> float:
    """User + system CPU seconds of these processes and all their descendants."""
    return sum(process_tree(roots).values())


def place(server: int, cpus: set[int]) -> None:
    """--server-cpus: every thread of the model server's processes onto `cpus`, and this process (so
    the routers, nginx and wrk it starts after) onto the other CPUs."""
    rest = os.sched_getaffinity(0) - cpus
    for pid in process_tree([server]):
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), cpus)  # threads it starts later inherit it
    os.sched_setaffinity(0, rest)


def measure_once(
    endpoint: str, script: Path, connections: int, seconds: int, pids: list[int], router: int | None = None
) -> dict[str, Any]:
    """wrk at one concurrency; with it, the CPU milliseconds per request spent by `pids` (server side)
    and, given the router's gunicorn pid, by the router alone (its master and workers)."""
    before = cpu_seconds(pids)
    before_router = cpu_seconds([router]) if router is not None else 0.0
    figures = wrk(endpoint, script, connections, seconds)
    answered = max(1.0, figures["rps"] * seconds)
    figures["cpu_ms"] = (cpu_seconds(pids) - before) * 1000 / answered
    if router is not None:
        figures["router_cpu_ms"] = (cpu_seconds([router]) - before_router) * 1000 / answered
    return figures


def start_rawhop(upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    """bench/raw_hop.py forwarding to the MLServer; its URL."""
    port = _port()
    address = urlsplit(upstream)
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "raw_hop.py"),
            str(port),
            str(address.hostname),
            str(address.port),
        ]
    )
    ready = f"http://127.0.0.1:{port}/v2/health/ready"
    wait_answering(lambda: httpx.get(ready).status_code == 200, process, 20, "rawhop")
    return process, f"http://127.0.0.1:{port}/v2/models/churn/infer"


def app_env(directory: Path, setup: str, server: peers.PeerServer, database: str) -> dict[str, str]:
    """The environment bench/router_apps.py's apps read, for one setup (database "" for a hop)."""
    metrics = directory / f"metrics-{setup}"
    metrics.mkdir()
    return {
        **os.environ,
        "BENCH_DATABASE_URL": database,
        "BENCH_SPOOL_DIR": str(directory / f"spool-{setup}"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "BENCH_UPSTREAM_URL": f"{server.url}/v2/models/churn/infer",
    }


def start_rawloop(
    directory: Path, server: peers.PeerServer, setup: str, steps: Path | None
) -> tuple[subprocess.Popen[bytes], str]:
    """bench/raw_loop.py answering as loophop (the bare hop), loopflat (the flat floor) or looprouter; its URL."""
    port = _port()
    mode, path = {
        "looprouter": ("router", "/v1/models/churn/invocations"),
        "loopflat": ("flat", "/v1/models/churn/invocations"),
    }.get(setup, ("hop", "/v2/models/churn/infer"))
    database = prepare(directory, setup, server.url) if mode != "hop" else ""
    command = [sys.executable, str(ROOT / "bench" / "raw_loop.py"), str(port), mode]
    process = subprocess.Popen(
        command + (["--steps", str(steps)] if steps is not None else []),
        env=app_env(directory, setup, server, database),
    )
    ready = f"http://127.0.0.1:{port}/ready"
    wait_answering(lambda: httpx.get(ready).status_code == 200, process, 60, f"raw loop ({mode})")
    return process, f"http://127.0.0.1:{port}{path}"


def start_nginx(directory: Path, upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    """nginx (2 workers, as the router) proxying to the MLServer over kept-alive connections; its URL."""
    if shutil.which("nginx") is None:
        sys.exit("--nginx needs nginx: apt-get install -y nginx-light")
    port = _port()
    config = directory / "nginx.conf"
    config.write_text(
        f"worker_processes 2; daemon off; pid {directory}/nginx.pid; error_log {directory}/nginx.log warn;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ access_log off; upstream model {{ server {urlsplit(upstream).netloc}; keepalive 32; }}\n"
        f"  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://model; proxy_http_version 1.1;"
        ' proxy_set_header Connection ""; } } }\n'
    )
    process = subprocess.Popen(["nginx", "-c", str(config), "-p", str(directory)])
    ready = f"http://127.0.0.1:{port}/v2/health/ready"
    wait_answering(lambda: httpx.get(ready).status_code > 0, process, 20, "nginx")  # any answer: nginx is up
    return process, f"http://127.0.0.1:{port}/v2/models/churn/infer"


class Router:
    """One router (gunicorn, 2 workers) in front of the MLServer, for one setup, kept up for every round."""

    def __init__(
        self,
        setup: str,
        directory: Path,
        server: peers.PeerServer,
        args: argparse.Namespace,
        root: Path = ROOT,
    ) -> None:
        self.setup = setup
        self.name = setup if root == ROOT else f"{setup}@base"  # --baseline: another checkout's router
        if root != ROOT:
            directory = directory / "base"
            directory.mkdir(exist_ok=True)
        self.database = "" if setup in HOPS else prepare(directory, setup, server.url)
        port = _port()
        env = {
            **app_env(directory, setup, server, self.database),
            "PYTHONPATH": f"{root}:{root / 'bench'}",
            "BENCH_NEXT_REQUEST_WAIT_MS": str(args.next_request_wait_ms),
        }
        worker = (
            ["--worker-class", "sync"]
            if args.worker == "sync"
            else ["--worker-class", "router_apps.BenchWorker", "--threads", str(args.threads)]
        )
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "--bind", f"127.0.0.1:{port}", "--workers", "2",
             *worker, "--config", str(root / "bench" / "router_apps.py"),
             "--log-level", "warning", _APPS.get(setup, "router_apps:router()")],
            env=env, cwd=root,
        )  # fmt: skip
        self.endpoint = f"http://127.0.0.1:{port}/v1/models/churn/invocations"
        self.ready = f"http://127.0.0.1:{port}/v2/models/churn/ready"
        self.base = f"http://127.0.0.1:{port}"

    def wait_ready(self) -> None:
        wait_answering(lambda: httpx.get(self.ready).status_code == 200, self.process, 60, self.name)

    def stop(self) -> dict[str, Any] | None:
        """Stop gracefully (pairs flushed) and count what was stored, against the requests answered."""
        served = answered(self.base)
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        if self.setup in HOPS:
            return None  # nothing is stored
        store = Store(Database(self.database))
        pairs = store.pairs.list(limit=10_000_000)
        return {
            "answered": served,
            "pairs": len(pairs),
            "champion_errors": sum(1 for p in pairs if p.champion_error),
            "error_kinds": sorted({(p.champion_error or "")[:80] for p in pairs if p.champion_error}),
            "challenger_answers": sum(1 for p in pairs if p.challenger_class is not None),
        }


def run_rounds(
    targets: dict[str, tuple[str, Path, list[int], int | None]], args: argparse.Namespace
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Measure every setup at c=1 and c=16, round after round, the setups' order rotating each round.

    Each setup's window is bracketed by two windows of direct, one just before and one just after
    it (direct, A, direct, B, direct, ...): its added latency and throughput ratio are against the
    mean of the two (its `bracket`), so a drift of MLServer's own time, which moved by several ms
    between windows of one round, cancels to first order instead of being charged to whichever setup
    ran while MLServer was slow. direct's own figure for a round is the median of its windows.
    """
    figures: dict[str, dict[str, list[dict[str, Any]]]] = {s: {"c1": [], "c16": []} for s in targets}
    names = [name for name in targets if name != "direct"]
    for endpoint, script, _, _ in targets.values():
        wrk(endpoint, script, 4, 2)  # warm-up

    def measure(name: str, round_: int, level: str, connections: int) -> dict[str, Any]:
        endpoint, script, pids, router = targets[name]
        result = measure_once(endpoint, script, connections, args.seconds, pids, router)
        print(json.dumps({"round": round_, "setup": name, "level": level, **result}), flush=True)
        return result

    for round_ in range(args.rounds):
        for level, connections in (("c1", 1), ("c16", 16)):
            before = measure("direct", round_, level, connections)
            windows = [before]
            for name in rotated(names, round_):
                result = measure(name, round_, level, connections)
                after = measure("direct", round_, level, connections)
                result["bracket"] = {key: (before[key] + after[key]) / 2 for key in _BRACKETED}
                figures[name][level].append(result)
                windows.append(after)
                before = after
            figures["direct"][level].append({key: _median([w[key] for w in windows]) for key in windows[0]})
    return figures


_BRACKETED = ("rps", "p50", "p99", "cpu_ms")


def alternate(
    targets: dict[str, tuple[str, bytes]], turns: int, block: int = 1
) -> dict[str, dict[str, float]]:
    """c=1, request by request: each turn sends one request to every setup in turn (the order rotating
    from turn to turn), each on its own kept-alive connection; a setup's added latency is its time
    minus direct's in the same turn, the median over the turns.

    MLServer's own time for one row moved by 3-5 ms between 3 s windows of the same run, more than the
    1 ms target: rounds of wrk, seconds apart, measured that as much as the proxy. Requests sent in turn,
    milliseconds apart, see the same MLServer; what differs between them is the route.

    block: requests sent back to back to a setup in its turn, the turn's time the median of all but
    the first (c=1 in a closed loop, as wrk sends it); 1, request by request.
    """
    # the standard library's client, not the router's pool: the same client for every setup and
    # for every version of the router measured (a before/after run compares the router alone)
    connections = {
        name: http.client.HTTPConnection(urlsplit(url).netloc, timeout=30)
        for name, (url, _) in targets.items()
    }
    times: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    try:
        for turn in range(-20, turns):  # 20 turns of warm-up, not counted
            for name in rotated(names, turn):
                url, body = targets[name]
                elapsed = []
                for _ in range(block):
                    started = time.perf_counter()
                    status, data = _post(connections[name], urlsplit(url).path, body)
                    elapsed.append((time.perf_counter() - started) * 1000)
                    if status != 200:
                        sys.exit(f"{name} answered {status}: {data[:200]!r}")
                if turn >= 0:
                    times[name].append(_median(elapsed[1:]) if block > 1 else elapsed[0])
    finally:
        for connection in connections.values():
            connection.close()
    direct = times["direct"]
    figures = {
        name: {
            "p50": _median(ms),
            "p99": float(np.percentile(ms, 99)),
            "added_p50": _median([a - b for a, b in zip(ms, direct, strict=True)]),
        }
        for name, ms in times.items()
    }
    for name, ms in times.items():  # --baseline: each setup against its baseline, turn by turn
        if f"{name}@base" in times:
            base = times[f"{name}@base"]
            figures[name]["over_base_p50"] = _median([a - b for a, b in zip(ms, base, strict=True)])
    return figures


def _post(connection: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
    """POST on a kept-alive connection; once more on a new one if the server had closed it."""
    for attempt in (0, 1):
        try:
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            reply = connection.getresponse()
            return reply.status, reply.read()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            connection.close()  # the next request opens a new connection
            if attempt:
                raise
    raise AssertionError("unreachable")


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def report(
    figures: dict[str, dict[str, list[dict[str, Any]]]],
    stored: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    alternated: dict[str, dict[str, float]] | None = None,
) -> str:
    lines = [
        "# mlcanary in front of MLServer: overhead",
        "",
        f"Command: `.venv/bin/python bench/upstream_overhead.py --seconds {args.seconds} --rounds {args.rounds}"
        f" --worker {args.worker} --next-request-wait-ms {args.next_request_wait_ms:g}"
        + (" --nginx" if args.nginx else "")
        + (" --rawhop" if args.rawhop else "")
        + (" --rawloop" if args.rawloop else "")
        + (" --steps" if args.steps else "")
        + (f" --setups {','.join(args.setups)}" if args.setups != list(SETUPS[1:]) else "")
        + (f" --alternate {args.alternate}" if args.alternate else "")
        + (f" --block {args.block}" if args.alternate and args.block > 1 else "")
        + (f" --server-cpus {','.join(map(str, sorted(args.server_cpus)))}" if args.server_cpus else "")
        + (f" --baseline {args.baseline}`" if args.baseline else "`"),
        "",
        f"One run of {args.rounds} rounds; each round measures every setup at c=1 and then at c=16 ({args.seconds} s"
        " of wrk each), the setups' order rotating from round to round, each setup's window between two",
        "windows of direct; figures are medians over the rounds (direct's: of its windows), and the added",
        "latency and throughput ratio the medians of each round's difference (ratio) with the mean of the",
        "two direct windows around the setup's. "
        + (
            f"MLServer alone on CPU {','.join(map(str, sorted(args.server_cpus)))}, the router, nginx and the"
            f" clients on CPU {','.join(map(str, sorted(os.sched_getaffinity(0))))};"
            if args.server_cpus
            else "2 cores shared by the router, MLServer and wrk;"
        ),
        "one-row requests; MLServer 1.7.1 sklearn runtime (parallel_workers 0); router: gunicorn 2",
        f"workers ({_WORKERS[args.worker].format(threads=args.threads)}), SQLite; wrk closed loop.",
        f"Load average (1 min) before / after the run: {args.load_before:.1f} / {os.getloadavg()[0]:.1f}"
        " (2 cores; above 2, other processes were competing for them).",
        "",
        "| setup | c=1 req/s | c=1 p50 / p99 ms | c=16 req/s | c=16 p50 / p99 ms "
        "| server-side CPU ms per request (c=1 / c=16) | of which the router (c=1 / c=16) "
        "| pairs stored / requests answered + failed (a pair too) | challenger answers |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, by_level in figures.items():
        c1, c16 = by_level["c1"], by_level["c16"]

        def med(runs: list[dict[str, Any]], key: str) -> float:
            return _median([r[key] for r in runs])

        own = (
            f"{med(c1, 'router_cpu_ms'):.2f} / {med(c16, 'router_cpu_ms'):.2f}"
            if "router_cpu_ms" in c1[0]
            else "-"
        )
        kept = stored.get(name)
        pairs = (
            f"{kept['pairs']} / {kept['answered']:.0f} + {kept['champion_errors']} failed" if kept else "-"
        )
        lines.append(
            f"| {name} | {med(c1, 'rps'):.0f} | {med(c1, 'p50'):.2f} / {med(c1, 'p99'):.2f} | {med(c16, 'rps'):.0f} "
            f"| {med(c16, 'p50'):.2f} / {med(c16, 'p99'):.2f} | {med(c1, 'cpu_ms'):.2f} / {med(c16, 'cpu_ms'):.2f} "
            f"| {own} | {pairs} | {kept['challenger_answers'] if kept else '-'} |"
        )
    for name, kept in stored.items():
        for kind in kept["error_kinds"]:
            lines.append(f"- {name}: failed requests' error: {kind}")
    lines += [
        "",
        "Against the direct windows around each, round by round (targets: added p50 <= 1 ms, throughput"
        " ratio >= 0.85):",
        "",
    ]
    lines += ["| setup | c=1 added p50 / p99 ms (median; each round) | c=1 throughput ratio (median; each round) "
              "| c=16 added p50 / p99 ms | c=16 throughput ratio | added server-side CPU ms per request (c=1 / c=16) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in figures.items():
        if name == "direct":
            continue
        cells = []
        for level in ("c1", "c16"):
            added50 = [a["p50"] - a["bracket"]["p50"] for a in r[level]]
            added99 = [a["p99"] - a["bracket"]["p99"] for a in r[level]]
            ratio = [a["rps"] / a["bracket"]["rps"] for a in r[level]]
            each50 = ", ".join(f"{v:+.2f}" for v in added50)
            eachr = ", ".join(f"{v:.2f}" for v in ratio)
            cells += [
                f"{_median(added50):+.2f} / {_median(added99):+.2f} ({each50})",
                f"{_median(ratio):.2f} ({eachr})",
            ]
        cpu = [_median([a["cpu_ms"] - a["bracket"]["cpu_ms"] for a in r[level]]) for level in ("c1", "c16")]
        cells.append(f"{cpu[0]:+.2f} / {cpu[1]:+.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "hop" in figures:
        lines.append("")
        for name in ("proxied", "shadow"):
            if name in figures:
                runs = zip(figures[name]["c1"], figures["hop"]["c1"], strict=True)
                over = [(a["p50"] - a["bracket"]["p50"]) - (b["p50"] - b["bracket"]["p50"]) for a, b in runs]
                lines.append(
                    f"- {name} over the bare hop, c=1 p50: {_median(over):+.2f} ms "
                    f"({', '.join(f'{v:+.2f}' for v in over)}): the router's own part of the added latency"
                )
    if alternated:
        lines += [
            "",
            f"## c=1 request by request ({args.alternate} turns, every setup once per turn, the order rotating)"
            if args.block == 1
            else f"## c=1 in a closed loop, turn by turn ({args.alternate} turns, {args.block} requests back to back"
            " to every setup per turn, the order rotating; a turn's time: the median of all but the first)",
            "",
            "| setup | p50 / p99 ms | added p50 ms (median of each turn's difference with direct) "
            + (
                "| against its baseline (median of each turn's difference with SETUP@base) |"
                if args.baseline
                else "|"
            ),
            "|---|---|---|" + ("---|" if args.baseline else ""),
        ]
        for name, f in alternated.items():
            added = "-" if name == "direct" else f"{f['added_p50']:+.2f}"
            against = f"{f['over_base_p50']:+.2f}" if "over_base_p50" in f else "-"
            lines.append(
                f"| {name} | {f['p50']:.2f} / {f['p99']:.2f} | {added} |"
                + (f" {against} |" if args.baseline else "")
            )
    return "\n".join(lines) + "\n"


_APPS = {"hop": "router_apps:hop()", "plainhop": "router_apps:plain_hop()"}
_WORKERS = {
    "threads": "the product's threaded read-buffering worker, {threads} threads each, keep-alive",
    "sync": "sync, a new connection per request",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--worker", choices=("threads", "sync"), default="threads")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every setup, interleaved")
    parser.add_argument("--nginx", action="store_true", help="measure a hop through nginx too (nginx setup)")
    parser.add_argument(
        "--rawhop",
        action="store_true",
        help="measure the least Python hop too (bench/raw_hop.py, rawhop setup)",
    )
    parser.add_argument(
        "--rawloop",
        action="store_true",
        help="measure the hop, the flat floor and the router on a bare thread-per-connection loop (bench/raw_loop.py)",
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help="with --rawloop: time the router's steps in looprouter (thread CPU per request)",
    )
    parser.add_argument(
        "--alternate",
        type=int,
        default=0,
        help="then N turns at c=1, one request to every setup per turn (added latency request by request)",
    )
    parser.add_argument(
        "--setups",
        type=lambda text: [name for name in SETUPS[1:] if name in text.split(",")],
        default=list(SETUPS[1:]),
        help=f"the routed setups to measure besides direct (default: {','.join(SETUPS[1:])})",
    )
    parser.add_argument(
        "--block",
        type=int,
        default=1,
        help="with --alternate: K requests back to back to every setup per turn (c=1 in a closed loop)",
    )
    parser.add_argument(
        "--next-request-wait-ms",
        type=float,
        default=2.0,
        help="the threaded worker's wait for a kept-alive connection's next request "
        "(MLCANARY_NEXT_REQUEST_WAIT_MS; 0: the worker of before)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of mlcanary (git worktree add DIR COMMIT): its routers measured as SETUP@base",
    )
    parser.add_argument(
        "--server-cpus",
        type=lambda text: {int(cpu) for cpu in text.split(",") if cpu.strip()},
        help="CPUs for MLServer alone (e.g. 1); the routers, nginx and the clients run on the others",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "upstream_overhead.md")
    args = parser.parse_args()
    if args.steps and not args.rawloop:
        sys.exit("--steps times the router's steps in the looprouter setup: add --rawloop")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "bench" / "router_apps.py").is_file():
            sys.exit(f"--baseline {args.baseline}: not a checkout of mlcanary (no bench/router_apps.py)")
    if args.server_cpus is not None:
        allowed = os.sched_getaffinity(0)
        if not set() < args.server_cpus < allowed:
            sys.exit(
                f"--server-cpus: must be some, not all, of the CPUs this process may use ({sorted(allowed)})"
            )
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    args.load_before = os.getloadavg()[0]
    directory = Path(tempfile.mkdtemp(prefix="upstream-bench-"))
    joblib.dump(mlpipes.classifier(seed=0), directory / "a.joblib")
    joblib.dump(mlpipes.classifier(seed=1), directory / "b.joblib")
    server = peers.start_mlserver(
        peers.peer_python("mlserver", prefetch=False), directory / "mlserver",
        {"churn": directory / "a.joblib", "churn-b": directory / "b.joblib"}, pandas={"churn", "churn-b"},
    )  # fmt: skip
    routers: list[Router] = []
    natives: list[subprocess.Popen[bytes]] = []  # nginx, the raw hop, the raw loops
    steps_file = directory / "steps.md" if args.steps else None  # --steps needs --rawloop (checked)
    stored: dict[str, dict[str, Any]] = {}
    alternated: dict[str, dict[str, float]] | None = None
    try:
        if args.server_cpus is not None:
            place(server.process.pid, args.server_cpus)
        frame, _ = mlpipes.churn_frame(1, seed=42, missing=0)
        columns = {c: [v.item() if hasattr(v, "item") else v for v in frame[c]] for c in frame.columns}
        dtypes = {c.name: c.dtype for c in registry.schema_from_frame(frame)}
        direct_body = encode(configure("mlserver", None, "classification"), columns, dtypes).decode()
        proxied_body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))})
        script = lua(directory, "proxied", proxied_body)
        routers = [Router(setup, directory, server, args) for setup in args.setups]
        if args.baseline is not None:
            routers += [Router(setup, directory, server, args, args.baseline) for setup in args.setups]
        for router in routers:
            router.wait_ready()
        direct_script = lua(directory, "direct", direct_body)  # the hop forwards the same body as it is
        native: dict[str, tuple[str, Path, list[int], int | None]] = {}
        if args.nginx:
            nginx, nginx_url = start_nginx(directory, server.url)
            natives.append(nginx)
            native["nginx"] = (nginx_url, direct_script, [nginx.pid, server.process.pid], nginx.pid)
        if args.rawhop:
            rawhop, rawhop_url = start_rawhop(server.url)
            natives.append(rawhop)
            native["rawhop"] = (rawhop_url, direct_script, [rawhop.pid, server.process.pid], rawhop.pid)
        if args.rawloop:
            for name, body in (("loophop", direct_script), ("loopflat", script), ("looprouter", script)):
                loop, loop_url = start_rawloop(
                    directory, server, name, steps_file if name == "looprouter" else None
                )
                natives.append(loop)
                native[name] = (loop_url, body, [loop.pid, server.process.pid], loop.pid)
        targets: dict[str, tuple[str, Path, list[int], int | None]] = {
            "direct": (f"{server.url}/v2/models/churn/infer", direct_script, [server.process.pid], None),
            **native,
            **{
                r.name: (
                    r.endpoint,
                    direct_script if r.setup in HOPS else script,
                    [r.process.pid, server.process.pid],
                    r.process.pid,
                )
                for r in routers
            },
        }
        figures = run_rounds(targets, args)
        if args.alternate:
            bodies = {direct_script: direct_body.encode(), script: proxied_body.encode()}  # as wrk sends them
            alternated = alternate(
                {name: (t[0], bodies[t[1]]) for name, t in targets.items()},
                args.alternate,
                args.block,
            )
        time.sleep(1.5)
        for router in routers:
            kept = router.stop()
            if kept is not None:
                stored[router.name] = kept
        routers = []
    finally:
        for router in routers:
            router.process.kill()
        for native_process in natives:
            native_process.terminate()
            native_process.wait(10)
        server.stop()
    text = report(figures, stored, args, alternated)
    if steps_file is not None and steps_file.is_file():
        text += (
            "\n## The router's steps in looprouter (--steps), per request, every request of the run\n\n"
            "Inclusive: a step's time includes the indented steps under it; the upstream call's wall"
            " time is MLServer's.\n\n" + steps_file.read_text()
        )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
