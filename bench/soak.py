"""Soak: a router under a moderate, steady load with shadow on, on PostgreSQL, for a bounded time.

    .venv/bin/python bench/soak.py --minutes 10 --rate 40 [--pg-url postgresql://postgres@127.0.0.1:5432/test]

Starts `mlcanary router` (2 gunicorn workers) on a fresh PostgreSQL database with a shadow rollout
(every request scored by both arms), sends `rate` requests per second from 4 client threads, and
every `--every` seconds records the workers' resident memory and the latency percentiles of the
window. At the end it stops the router with SIGTERM and checks that every answered request has
exactly one stored pair. Prints a Markdown table (paste it into bench/results/reliability.md);
exits non-zero if a pair is missing or duplicated or an answer failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

import mlpipes  # noqa: E402
import psycopg  # noqa: E402
from loadgen import Load  # noqa: E402
from servers import Server, body  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from storage import Database, Store  # noqa: E402
from storage import schema as db_schema  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second, all clients")
    parser.add_argument("--every", type=float, default=30.0, help="seconds per row of the table")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before memory is compared")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    name = f"mlcanary_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(args.pg_url).set(database=name).render_as_string(hide_password=False)
    work = Path(tempfile.mkdtemp(prefix="mlcanary-soak-"))
    server = None
    try:
        db = Database(url)
        db_schema.upgrade(db)
        store = Store(db)
        champion = mlpipes.register(store, work, version="1")
        challenger = mlpipes.register(store, work, version="2", seed=4)
        deployment = mlpipes.deploy(store, "churn", champion)
        mlpipes.start_rollout(store, deployment, challenger, mode="shadow", shadow_rate=1.0)
        server = Server("router", url, work / "var")
        server.wait_ready(timeout=120)
        duration = args.minutes * 60.0
        count = int(duration * args.rate) + 1
        load = Load(
            server.base_url,
            body=lambda n: body(1, n),
            threads=4,
            count=count,
            duration=duration,
            rate=args.rate,
            prefix="soak",
        ).start()
        started = time.time()
        rows: list[tuple[float, float, dict[str, float]]] = []
        while time.time() - started < duration:
            window_start = time.time()
            time.sleep(min(args.every, max(0.1, duration - (time.time() - started))))
            rows.append(
                (window_start - started, server.rss_mb(), load.report.percentiles(since=window_start))
            )
            print(f"{rows[-1][0]:6.0f}s rss {rows[-1][1]:.0f} MiB {rows[-1][2]}", file=sys.stderr, flush=True)
        report = load.join()
        code = server.terminate()
        answered = report.answered
        stored = store.pairs.count()
        found = store.pairs.existing_request_ids(answered)
        shadowed = sum(1 for p in store.pairs.list(limit=10_000_000) if p.challenger_latency_ms is not None)
        warm = [r for r in rows if r[0] >= args.warmup]
        print(f"\nSoak: {args.minutes:g} min at {args.rate:g} req/s, shadow on, PostgreSQL, 2 workers\n")
        print("| t (s) | workers RSS (MiB) | n | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for t, rss, p in rows:
            print(
                f"| {t:.0f} | {rss:.0f} | {p['n']:.0f} | {p['p50']:.1f} | {p['p90']:.1f} | {p['p99']:.1f} | "
                f"{p['max']:.1f} |"
            )
        overall = report.percentiles()
        print(
            f"\nanswered {len(answered)} (failed {len(report.failed)}, statuses {report.statuses()}), "
            f"stored pairs {stored}, answered with a pair {len(found)}, pairs with a shadow result {shadowed}; "
            f"overall p50 {overall['p50']:.1f} / p99 {overall['p99']:.1f} ms; router exit {code}"
        )
        if warm:
            print(
                f"memory after warm-up: {warm[0][1]:.0f} -> {warm[-1][1]:.0f} MiB "
                f"(min {min(r[1] for r in warm):.0f}, max {max(r[1] for r in warm):.0f})"
            )
        ok = stored == len(answered) and found == set(answered) and not report.failed and code == 0
        print("OK: every answered request has exactly one stored pair" if ok else "FAILED")
        db.dispose()
        return 0 if ok else 1
    finally:
        if server is not None:
            server.kill()
        with psycopg.connect(args.pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
