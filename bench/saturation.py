"""Saturation: N deployments shadowing identical challengers, repeated short rollouts, one run.

    .venv/bin/python bench/saturation.py [--deployments 1,3,6] [--repeats 20] [--rollout-seconds 8]
                                         [--baseline-seconds 10] [--controller-interval 0.5] [--paired-seconds 4]
                                         [--cpu-budget B] [--busy-share S] [--controller-nice K]
                                         [--cpu-affinity auto|on|off] [--next-request-wait-ms MS]
                                         [--out bench/results/saturation.md]

For each N: one `mlcanary serve` (gunicorn, 2 workers x 8 threads (its ReadBufferingWorker), controller loop every
--controller-interval s, default 0.5, the default 2 s shadow timeout) on SQLite with N deployments, each with its own champion and a challenger that
is the same fitted pipeline (ColumnTransformer + LogisticRegression) registered as another version.
wrk -c16 -t2 (--connections) sends 10-row MLflow requests round robin over the N deployments as fast as the server
answers (closed loop: saturation). First champion-only for --baseline-seconds; then --repeats times:
start a shadow rollout on every deployment (burn-in 100 requests, only harm may end it), keep the
load for --rollout-seconds, count the rollouts the controller rolled back (every one is a false
rollback: the arms are identical), abort the rest. Reported per N: false rollbacks, challenger
errors, shadow coverage (scored / sampled requests) and skips by reason, the mean queue wait,
champion throughput during the rollouts against champion-only, and champion p99 (mean of the
per-rollout p99s) against champion-only. Champion-only is measured before the rollouts and again after
them (every rollout ended); the ratios use the second, steady one (the first, right after start, can
still pay the N champions' first calls), and both are shown. With --paired-seconds (default 4), each
repeat is also followed by champion-only for that long, and each repeat's rollout throughput and p99
are compared with its own champion-only run: the medians of those paired ratios survive a load that
drifts during the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

import mlpipes  # noqa: E402
from router_bench import live_batches, mean_batch  # noqa: E402
from servers import Server, body  # noqa: E402

from controller.loop import actions  # noqa: E402
from storage import Database, Store, analytics  # noqa: E402
from storage import schema as db_schema  # noqa: E402
from storage.models import PairedOutputRow  # noqa: E402

POLICY: dict[str, Any] = {
    "mode": "shadow",
    "burn_in": 100,
    "shadow": {"min_pairs": 1_000_000},
    "gates": {"agreement": {"role": "informational", "margin": 0.9}},
}


def wrk(script: Path, url: str, seconds: float, connections: int = 16) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(2, connections)}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p99": float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit],
        "non2xx": float(errors.group(1)) if errors else 0.0,
    }


def lua(names: list[str]) -> str:
    payload = json.dumps(body(10, 3))
    paths = ", ".join(json.dumps(f"/v1/models/{n}/invocations") for n in names)
    return (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(payload)}\nlocal paths = {{{paths}}}\nlocal i = 0\n"
        "request = function()\n  i = i + 1\n  return wrk.format(nil, paths[(i % #paths) + 1])\nend\n"
    )


def run(n: int, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    root = directory / f"n{n}"
    root.mkdir()
    url = f"sqlite:///{root / 'mlcanary.db'}"
    db = Database(url)
    db_schema.upgrade(db)
    store = Store(db)
    names = [f"d{i}" for i in range(n)]
    for name in names:
        champion = mlpipes.register(store, root, name=name, version="1", seed=0)
        mlpipes.register(store, root, name=name, version="2", seed=0)  # the same model, another version
        mlpipes.deploy(store, name, champion)
    script = root / "post.lua"
    script.write_text(lua(names))
    budget = {} if args.cpu_budget is None else {"shadow_cpu_budget": args.cpu_budget}
    if args.busy_share is not None:
        budget["controller_busy_share"] = args.busy_share
    if args.controller_nice is not None:
        budget["controller_nice"] = args.controller_nice
    if args.cpu_affinity is not None:
        budget["cpu_affinity"] = args.cpu_affinity
    if args.next_request_wait_ms is not None:
        budget["next_request_wait_ms"] = args.next_request_wait_ms
    server = Server(
        "serve",
        url,
        root / "var",
        controller_interval=args.controller_interval,
        log_level="warning",
        **budget,
    )
    result: dict[str, Any] = {"n": n, "repeats": 0, "false_rollbacks": 0, "reasons": []}
    rollout_ids: list[int] = []
    loads: list[dict[str, float]] = []
    paired: list[dict[str, float]] = []  # champion-only after each repeat (--paired-seconds)
    try:
        server.wait_ready(timeout=120)
        wrk(script, server.base_url, 2, args.connections)  # warm-up
        result["baseline"] = wrk(script, server.base_url, args.baseline_seconds, args.connections)
        live_start = live_batches(server.base_url)
        for repeat in range(args.repeats):
            now = datetime.now(UTC)
            started = [
                actions.start_rollout(store, name, f"{name}:2", actor="bench", policy=POLICY, now=now)
                for name in names
            ]
            rollout_ids += [r.id for r in started]
            loads.append(wrk(script, server.base_url, args.rollout_seconds, args.connections))
            for name, r in zip(names, started, strict=True):
                current = _end(store, name, r.id)
                if current.phase == "rolled_back":
                    result["false_rollbacks"] += 1
                    result["reasons"].append(current.reason)
            result["repeats"] = repeat + 1
            if args.paired_seconds > 0:  # champion-only right after, against this repeat's rollouts
                time.sleep(1.0)  # every router has dropped the challengers; the last shadow jobs settled
                paired.append(wrk(script, server.base_url, args.paired_seconds, args.connections))
            print(f"N={n} repeat {repeat + 1}: {loads[-1]}, false rollbacks so far {result['false_rollbacks']}",
                  flush=True)  # fmt: skip
        # champion-only again, every rollout ended: the process is as old and as warm as during the
        # rollouts (the first baseline, right after start, can still pay N champions' first calls)
        live_rollouts = live_batches(server.base_url)
        result["cuts"] = share_cuts(server.base_url)
        result["baseline_after"] = wrk(script, server.base_url, args.baseline_seconds, args.connections)
        time.sleep(1.0)  # the workers publish their batch counters every 0.5 s
        result["live_batch"] = mean_batch(live_rollouts, live_batches(server.base_url))
        result["live_batch_rollouts"] = mean_batch(live_start, live_rollouts)
        server.terminate()
    finally:
        server.kill()
    sampled = scored = waited = 0
    wait_sum = 0.0
    skipped: dict[str, int] = {}
    for rollout_id in rollout_ids:
        c = analytics.coverage(db, rollout_id=rollout_id)
        sampled, scored = sampled + c.sampled, scored + c.scored
        waited, wait_sum = waited + c.wait_n, wait_sum + c.wait_sum_ms
        for reason, count in c.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
    from sqlalchemy import func, select

    with db.connection() as conn:
        p = PairedOutputRow
        errors = conn.execute(
            select(func.count()).where(
                p.rollout_id.in_(rollout_ids), p.row_index == 0, p.challenger_status == "error"
            )
        ).scalar_one()
    db.dispose()
    result.update(
        sampled=sampled,
        scored=scored,
        skipped=skipped,
        errors=int(errors),
        queue_wait_ms=wait_sum / waited if waited else None,
        rollout_rps=sum(x["rps"] for x in loads) / len(loads),
        paired_rps=[a["rps"] / b["rps"] for a, b in zip(loads, paired, strict=False)],
        paired_p99=[a["p99"] / b["p99"] for a, b in zip(loads, paired, strict=False)],
        rollout_p99=sum(x["p99"] for x in loads) / len(loads),
        non2xx=result["baseline"]["non2xx"]
        + result["baseline_after"]["non2xx"]
        + sum(x["non2xx"] for x in loads + paired),
    )
    return result


def share_cuts(base_url: str) -> dict[str, float]:
    """Return load shedding's cuts of the shadow share so far, by cause (queue, cpu), every worker."""
    cuts: dict[str, float] = {}
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    for reason, value in re.findall(
        r'^mlcanary_shadow_share_cuts_total\{[^}]*reason="(\w+)"[^}]*\} ([\d.e+]+)$', text, re.M
    ):
        cuts[reason] = cuts.get(reason, 0.0) + float(value)
    return cuts


def _end(store: Store, name: str, rollout_id: int) -> Any:
    """Return the rollout as the controller left it, aborting it if it is still active."""
    for _ in range(20):
        current = store.rollouts.get(rollout_id)
        if not current.active:
            return current
        try:
            actions.act(
                store, name, "abort", actor="bench", reason="benchmark repeat over", now=datetime.now(UTC)
            )
        except actions.ActionError:  # the controller updated it meanwhile: look again
            time.sleep(0.05)
    return store.rollouts.get(rollout_id)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Saturation benchmark (issue 13)",
        "",
        f"Command: `.venv/bin/python bench/saturation.py --deployments {args.deployments} --repeats {args.repeats} "
        f"--rollout-seconds {args.rollout_seconds} --baseline-seconds {args.baseline_seconds} "
        f"--controller-interval {args.controller_interval} --connections {args.connections} "
        f"--paired-seconds {args.paired_seconds:g}"
        + ("" if args.cpu_budget is None else f" --cpu-budget {args.cpu_budget:g}")
        + ("" if args.busy_share is None else f" --busy-share {args.busy_share:g}")
        + ("" if args.controller_nice is None else f" --controller-nice {args.controller_nice}")
        + ("" if args.cpu_affinity is None else f" --cpu-affinity {args.cpu_affinity}")
        + (
            ""
            if args.next_request_wait_ms is None
            else f" --next-request-wait-ms {args.next_request_wait_ms:g}"
        )
        + "`",
        "",
        f"Load average (1, 5, 15 min) at the start: {args.load_start}; at the end: {_load()}.",
        "",
        "One run; 2 shared cores; `mlcanary serve` with 2 gunicorn workers x 8 threads, SQLite, shadow timeout 2 s,",
        f"controller look every {args.controller_interval:g} s (it looks only while rollouts are active);",
        f"wrk -c{args.connections}, 10-row requests round robin over the deployments; identical challengers.",
        "",
        "| N | short rollouts | false rollbacks | challenger errors (requests) | shadow coverage | skipped (requests) "
        "| mean queue wait ms | champion-only req/s (before / after) | req/s during rollouts | throughput ratio "
        "| champion-only p99 ms (before / after) | p99 during rollouts ms | p99 ratio | non-2xx "
        "| requests per live batch (champion-only after / rollouts) | share cuts (cpu / queue) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        first, b = r["baseline"], r["baseline_after"]  # ratios against the steady (after) baseline
        coverage = (
            f"{r['scored'] / r['sampled']:.1%} ({r['scored']:,} of {r['sampled']:,})" if r["sampled"] else "-"
        )
        skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(r["skipped"].items())) or "none"
        wait = "-" if r["queue_wait_ms"] is None else f"{r['queue_wait_ms']:.0f}"
        lines.append(
            f"| {r['n']} | {r['repeats']} | {r['false_rollbacks']} | {r['errors']} | {coverage} | {skipped} | {wait} "
            f"| {first['rps']:.0f} / {b['rps']:.0f} | {r['rollout_rps']:.0f} | {r['rollout_rps'] / b['rps']:.2f} "
            f"| {first['p99']:.1f} / {b['p99']:.1f} | {r['rollout_p99']:.1f} | {r['rollout_p99'] / b['p99']:.2f} "
            f"| {r['non2xx']:.0f} | {r['live_batch']:.1f} / {r['live_batch_rollouts']:.1f} "
            f"| {r['cuts'].get('cpu', 0):.0f} / {r['cuts'].get('queue', 0):.0f} |"
        )
    if any(r["paired_rps"] for r in results):
        lines += [
            "",
            f"Paired: after each repeat's rollouts ended, champion-only for {args.paired_seconds:g} s; each repeat's",
            "rollout figures against its own champion-only run (on shared cores the load drifts between a run's",
            "first and last minute more than shadowing costs); median and quartiles over the repeats:",
            "",
            "| N | throughput ratio, median (quartiles) | p99 ratio, median (quartiles) |",
            "|---|---|---|",
        ]
        for r in results:
            if r["paired_rps"]:
                lines.append(f"| {r['n']} | {_spread(r['paired_rps'])} | {_spread(r['paired_p99'])} |")
    reasons = [reason for r in results for reason in r["reasons"]]
    if reasons:
        lines += ["", "Rollback reasons:", *[f"- {x}" for x in reasons]]
    lines += [
        "",
        "Targets: false rollbacks 0; throughput ratio >= 0.85; p99 ratio <= 1.2. A skip (`expired`: the",
        "2 s timeout passed while the job waited in the queue; `shed`: load shedding lowered the share;",
        "`queue_full` / `budget`: no room; `shutdown`) is coverage lost, never an error: before issue 13",
        "every `expired` and `queue_full` job was recorded as a challenger error.",
    ]
    return "\n".join(lines) + "\n"


def _spread(values: list[float]) -> str:
    if len(values) < 4:
        return f"{statistics.median(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})"
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return f"{q2:.2f} ({q1:.2f}-{q3:.2f})"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", default="1,3,6")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rollout-seconds", type=float, default=8.0)
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--controller-interval", type=float, default=0.5)
    parser.add_argument(
        "--paired-seconds", type=float, default=4.0, help="champion-only after each repeat (0: none)"
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk's connections (closed loop)")
    parser.add_argument(
        "--cpu-budget", type=float, default=None, help="MLCANARY_SHADOW_CPU_BUDGET (default: the setting's)"
    )
    parser.add_argument(
        "--busy-share",
        type=float,
        default=None,
        help="MLCANARY_CONTROLLER_BUSY_SHARE (default: the setting's; 1: looks back to back when slow)",
    )
    parser.add_argument(
        "--controller-nice",
        type=int,
        default=None,
        help="MLCANARY_CONTROLLER_NICE (default: the setting's; 0: the controller on equal footing)",
    )
    parser.add_argument(
        "--cpu-affinity",
        choices=("auto", "on", "off"),
        default=None,
        help="MLCANARY_CPU_AFFINITY (default: the setting's, auto: a worker per CPU here, so pinned)",
    )
    parser.add_argument(
        "--next-request-wait-ms",
        type=float,
        default=None,
        help="MLCANARY_NEXT_REQUEST_WAIT_MS (default: the setting's, 2; 0: threads never wait)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "saturation.md")
    args = parser.parse_args()
    args.load_start = _load()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install -y wrk")
    directory = Path(tempfile.mkdtemp(prefix="saturation-bench-"))
    results = []
    try:
        for n in (int(x) for x in args.deployments.split(",")):
            started = time.monotonic()
            results.append(run(n, args, directory))
            print(json.dumps(results[-1]), f"({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    text = report(results, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
