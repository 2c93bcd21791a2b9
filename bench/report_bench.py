"""Time build_report + render_html over a rollout with many paired outputs (SQLite and PostgreSQL).

    .venv/bin/python bench/report_bench.py --rows 1000000                       # SQLite file under /tmp
    .venv/bin/python bench/report_bench.py --rows 1000000 --database-url postgresql://postgres@127.0.0.1/test

Fills a fresh database (PostgreSQL: a new database created beside the given one, dropped afterwards)
with one deployment, one shadow rollout and ``--rows`` paired classification rows written through
``store.pairs.insert_many`` in batches (COPY on PostgreSQL, executemany on SQLite), a label for every
tenth row, raw inputs with a categorical and a numeric column, and 50 stored analyses. Then times the
report without segments and with two segment columns, ``--repeat`` times each, and prints the medians,
then each scan of the report once on its own (one after another, so their sum is the report's work,
which build_report spreads over four connections).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from controller.loop.measure import LATENCY
from controller.reports import build as reports
from storage import Database, Store, repro_queries
from storage import report_queries as rq
from storage import schema as db_schema
from storage.entities import Column, NewPipelineVersion, PairRecord

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _version(store: Store, version: str) -> int:
    return store.pipelines.add(NewPipelineVersion(
        name="bench", version=version, kind="http", task="classification",
        input_schema=(Column("plan", "str"), Column("age", "float")), classes=(0, 1),
        upstream_url="http://127.0.0.1:9/", upstream_protocol="v2",
    )).id  # fmt: skip


def fill(store: Store, rows: int, *, batch: int = 50_000, seed: int = 0) -> int:
    """Create the deployment and rollout and write ``rows`` paired outputs; return the rollout id."""
    champion, challenger = _version(store, "1"), _version(store, "2")
    dep = store.deployments.create("bench", champion)
    rollout = store.rollouts.create(
        deployment_id=dep.id,
        challenger_id=challenger,
        mode="shadow",
        policy={},
        created_by="bench",
        phase="shadowing",
        shadow_rate=1.0,
        now=T0,
    )
    rng = np.random.default_rng(seed)
    plans = np.array(["basic", "plus", "pro"])
    labels: list[tuple[str, int, int]] = []
    for start in range(0, rows, batch):
        k = min(batch, rows - start)
        s1 = rng.random(k)
        s2 = np.clip(s1 + rng.normal(0, 0.08, k), 0, 1)
        lat1 = rng.lognormal(1.0, 0.3, k)
        lat2 = rng.lognormal(1.1, 0.3, k)
        plan = plans[rng.integers(0, 3, k)]
        age = rng.normal(45, 12, k).round(0)
        dropped = rng.random(k) < 0.002
        y = (rng.random(k) < s1).astype(int)
        records = []
        for i in range(k):
            n = start + i
            c1, c2 = int(s1[i] > 0.5), int(s2[i] > 0.5)
            drop = bool(dropped[i])
            records.append(PairRecord(
                request_id=f"r{n}", row_index=0, deployment_id=dep.id, rollout_id=rollout.id, step=0,
                received_at=T0 + timedelta(milliseconds=n * 10), routing_key_hash=n, served_arm="champion",
                champion_version_id=champion, challenger_version_id=challenger,
                champion_output=c1, champion_class=str(c1), champion_score=float(s1[i]),
                challenger_output=None if drop else c2, challenger_class=None if drop else str(c2),
                challenger_score=None if drop else float(s2[i]),
                champion_latency_ms=float(lat1[i]), challenger_latency_ms=None if drop else float(lat2[i]),
                challenger_error="shadow_dropped: the shadow queue was full" if drop else None,
                raw_input={"plan": str(plan[i]), "age": float(age[i])},
            ))  # fmt: skip
            if n % 10 == 0:
                labels.append((f"r{n}", 0, int(y[i])))
        store.pairs.insert_many(records)
        print(f"  {start + k:,} rows", end="\r", flush=True)
    print()
    t = time.perf_counter()
    for start in range(0, len(labels), 20_000):
        store.labels.upsert_many(dep.id, labels[start : start + 20_000], now=T0)
    print(
        f"  {len(labels):,} labels stored (store.labels.upsert_many, 20,000 a call) in {time.perf_counter() - t:.1f} s"
    )
    for a in range(50):
        verdicts = [
            {
                "gate": "agreement",
                "role": "required",
                "outcome": "inconclusive" if a < 40 else "pass",
                "statistic": -1.0,
                "bound": 0.85 + a * 0.002,
                "effect": 0.93,
                "margin": 0.9,
                "n_champion": (a + 1) * rows // 50,
                "n_challenger": (a + 1) * rows // 50,
                "reason": "bench",
            }
        ]
        store.analyses.add(
            rollout_id=rollout.id,
            step=0,
            outcome=verdicts[0]["outcome"],
            verdicts=verdicts,
            metrics={},
            now=T0 + timedelta(minutes=a),
        )
    return rollout.id


def scan_times(store: Store, rollout_id: int, rows: int) -> dict[str, float]:
    """Time each scan of a classification report once, one after another (seconds)."""
    db = store.db
    spans = rq.step_spans(db, rollout_id)
    first, last = min(s[2] for s in spans), max(s[3] for s in spans)
    unit = reports._bucket_unit((first.timestamp(), last.timestamp()))  # the report's own choice
    scans = {
        "step spans (index only)": lambda: rq.step_spans(db, rollout_id),
        f"overview per step and {unit}": lambda: rq.step_counts(db, rollout_id, bucket=unit, spans=spans),
        "class x score table": lambda: rq.class_score_table(
            db, rollout_id, bins=reports.SCORE_BINS, spans=spans, bucket=unit),
        "latency histograms, both arms": lambda: rq.latency_buckets(
            db, rollout_id, latency=LATENCY, spans=spans, bucket=unit),
        "labels: confusion + ROC histogram": lambda: rq.label_confusion(db, rollout_id, score_bins=reports.AUC_BINS),
        "KS sample": lambda: rq.numeric_sample(db, rollout_id, "score", limit=20_000, total=rows),
        "reproducibility: labelled_metrics": lambda: repro_queries.labelled_metrics(db, rollout_id),
        "latency over time: sample": lambda: rq.latency_sample(db, rollout_id, limit=reports.LATENCY_SAMPLE, total=rows),
        "regression curves: labelled sample": lambda: rq.label_regression_sample(
            db, rollout_id, limit=reports.CURVE_SAMPLE, total=rows),
    }  # fmt: skip
    out = {}
    for name, scan in scans.items():
        t = time.perf_counter()
        scan()
        out[name] = time.perf_counter() - t
    return out


@contextlib.contextmanager
def filled_store(database_url: str | None, rows: int) -> Iterator[tuple[Store, int]]:
    """A scratch database (PostgreSQL when a server URL is given, else SQLite) filled with ``rows``
    paired rows of one rollout; yields the store and the rollout id, and drops the database after."""
    scratch: str | None = None
    if database_url:
        import psycopg
        from sqlalchemy.engine import make_url

        scratch = f"mlcanary_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{scratch}"')
        url = make_url(database_url).set(database=scratch).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    db = Database(url)
    try:
        db_schema.upgrade(db)
        store = Store(db)
        t = time.perf_counter()
        rollout_id = fill(store, rows)
        print(f"{db.dialect}: filled {rows:,} paired rows in {time.perf_counter() - t:.1f} s")
        if db.dialect == "postgresql":
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE paired_outputs")
        yield store, rollout_id
    finally:
        db.dispose()
        if scratch:
            import psycopg

            with psycopg.connect(database_url, autocommit=True) as conn:  # type: ignore[arg-type]
                conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", help="PostgreSQL server URL (a scratch database is created on it)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with filled_store(args.database_url, args.rows) as (store, rollout_id):
        dialect = store.db.dialect
        for segments in ((), ("plan", "age")):
            build, render = [], []
            for _ in range(args.repeat):
                t = time.perf_counter()
                report = reports.build_report(store, "bench", segments=segments)
                t1 = time.perf_counter()
                page = reports.render_html(report)
                build.append(t1 - t)
                render.append(time.perf_counter() - t1)
            with open("/proc/loadavg") as f:
                load = f.read().split()[0]
            print(
                f"{dialect}, {args.rows:,} rows, segments {list(segments) or 'none'}, load {load}: build_report "
                f"{statistics.median(build):.2f} s + render_html {statistics.median(render):.3f} s = "
                f"{statistics.median(build) + statistics.median(render):.2f} s (median of {args.repeat}; "
                f"page {len(page) / 1024:.0f} KiB)"
            )
        for name, seconds in scan_times(store, rollout_id, args.rows).items():
            print(f"  scan {name}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
