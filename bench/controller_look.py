"""Time one controller look (SQL aggregates of a step + judge) on big steps, SQLite and PostgreSQL.

    .venv/bin/python bench/controller_look.py [--rows 100000 1000000] [--pg postgresql://postgres@127.0.0.1:5432/test]

Each size: a shadow step with that many pairs (classification, 3% / 5% errors, 70% labelled), then
controller.loop.measure.measure + judge timed 5 times (median). Writes its own results file,
bench/results/controller_look.md (``--out``). `filled_step` (a scratch database of either dialect,
migrated, filled, analysed, dropped afterwards) is shared with bench/quality_look.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from controller.core.judge import judge  # noqa: E402
from controller.core.policy import Policy  # noqa: E402
from controller.loop.measure import measure  # noqa: E402
from storage import Database, Store  # noqa: E402
from storage import schema as db_schema  # noqa: E402
from storage.entities import Column, NewPipelineVersion, PairRecord  # noqa: E402

T0 = datetime(2026, 11, 29, tzinfo=UTC)


def fill(store: Store, rows: int) -> tuple[int, object]:
    versions = [
        store.pipelines.add(
            NewPipelineVersion(
                name="m",
                version=v,
                kind="artifact",
                task="classification",
                input_schema=(Column("x", "float"),),
                classes=(0, 1),
            )
        )
        for v in ("1", "2")
    ]
    deployment = store.deployments.create("m", versions[0].id)
    rollout = store.rollouts.create(
        deployment_id=deployment.id,
        challenger_id=versions[1].id,
        mode="shadow",
        policy={"mode": "shadow"},
        created_by="bench",
        phase="shadowing",
    )
    rng = np.random.default_rng(1)
    chunk = 50_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        y = rng.integers(0, 2, n)
        p1 = np.where(rng.random(n) < 0.8, y, 1 - y)
        p2 = np.where(rng.random(n) < 0.8, y, 1 - y)
        f1, f2 = rng.random(n) < 0.03, rng.random(n) < 0.05
        l1, l2 = rng.lognormal(1, 0.5, n), rng.lognormal(1.1, 0.5, n)
        ids = [f"{uuid.uuid4().hex}" for _ in range(n)]
        store.pairs.insert_many(
            [
                PairRecord(
                    request_id=ids[i],
                    row_index=0,
                    deployment_id=deployment.id,
                    rollout_id=rollout.id,
                    step=0,
                    received_at=T0,
                    routing_key_hash=i,
                    served_arm="champion",
                    champion_version_id=1,
                    challenger_version_id=2,
                    champion_class=None if f1[i] else str(p1[i]),
                    challenger_class=None if f2[i] else str(p2[i]),
                    champion_latency_ms=float(l1[i]),
                    challenger_latency_ms=float(l2[i]),
                    champion_error="e" if f1[i] else None,
                    challenger_error="e" if f2[i] else None,
                )
                for i in range(n)
            ]
        )
        labelled = rng.random(n) < 0.7
        store.labels.upsert_many(
            deployment.id, [(ids[i], 0, int(y[i])) for i in range(n) if labelled[i]], now=T0
        )
    return rollout.id, rollout


@contextmanager
def filled_step(dialect: str, rows: int, pg: str) -> Iterator[tuple[Store, object, float]]:
    """A scratch database (SQLite file or a new PostgreSQL database) with one filled shadow step.

    Yields the store, the rollout and the seconds the filling took; the database is dropped afterwards.
    """
    name = f"mlcanary_look_{uuid.uuid4().hex[:8]}"
    if dialect == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp()}/look.db"
    else:
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = make_url(pg).set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    try:
        db_schema.upgrade(db)
        store = Store(db)
        started = time.perf_counter()
        _, rollout = fill(store, rows)
        filled = time.perf_counter() - started
        if dialect == "postgresql":
            with psycopg.connect(
                make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
                autocommit=True,
            ) as conn:
                conn.execute("VACUUM ANALYZE paired_outputs")
        yield store, rollout, filled
    finally:
        db.dispose()
        if dialect == "postgresql":
            with psycopg.connect(pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, to print beside figures taken on a shared machine."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def time_look(store: Store, rollout: object) -> float:
    policy = Policy.parse({"mode": "shadow"})
    times = []
    for _ in range(5):
        start = time.perf_counter()
        m = measure(store, rollout, task="classification", policy=policy, now=T0 + timedelta(hours=1))  # type: ignore[arg-type]
        judge(m.metrics, policy.to_judge_policy("classification", "shadow", final=m.final))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "controller_look.md")
    args = parser.parse_args()
    before = load_average()
    results: list[tuple[str, int, float, float]] = []
    for rows in args.rows:
        for dialect in ("sqlite", "postgresql"):
            with filled_step(dialect, rows, args.pg) as (store, rollout, filled):
                look = time_look(store, rollout)
            print(f"{dialect} {rows} rows: look {look * 1000:.0f} ms (filled in {filled:.0f} s)", flush=True)
            results.append((dialect, rows, look, filled))
    lines = [
        "## One controller look on a big step",
        "",
        f"Command: `.venv/bin/python bench/controller_look.py --rows {' '.join(map(str, args.rows))}`",
        "",
        f"Load average (1, 5, 15 min) before / after: {before} / {load_average()} (2 cores).",
        "",
        "A shadow step of N pairs (classification, 70% labelled): `controller.loop.measure.measure` (the SQL aggregates "
        "of storage.analytics: counts, discordance, labelled join, latency and class histograms) plus `judge`, "
        "median of 5 looks. Nothing but aggregates leaves the database.",
        "",
        "| database | pairs in the step | one look (ms) |",
        "|---|---|---|",
        *[f"| {d} | {n:,} | {look * 1000:.0f} |" for d, n, look, _ in results],
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
