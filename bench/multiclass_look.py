"""Time the quality aggregates of a 3-class shadow step: proper scores from the stored probability
vectors (issue 15, migration 0011) against the binary path (from the score column) on the same rows.

    .venv/bin/python bench/multiclass_look.py --rows 1000000                       # SQLite file under /tmp
    .venv/bin/python bench/multiclass_look.py --rows 1000000 --database-url postgresql://postgres@127.0.0.1/test

Fills a scratch database (PostgreSQL: a new database beside the given one, dropped afterwards) with
``--rows`` paired rows of one shadow step, each arm's class, top probability and probability vector
(three classes), and a label for every ``--label-every``-th row (10: labels are written one ORM row at a time). Then times, ``--repeat`` times each
(median), ``storage.quality.quality_aggregates`` with the confusion cells and

* ``binary``: log loss and Brier from the score column (``positive`` given): the baseline;
* ``multiclass``: log loss and Brier from the JSON vectors (``classes`` given);
* ``multiclass+auc``: the same plus the macro one-vs-rest AUC's fixed-horizon rows (2000);

and the report's reliability scans over the whole rollout:

* ``report binary``: ``storage.report_queries.label_confusion`` with score buckets (the binary
  reliability and ROC curves' one scan): the baseline;
* ``report reliability``: ``label_proba_reliability`` (the top-label panel and one per class).

Prints one line per variant and appends them, with the load average, to
bench/results/multiclass_look.md (``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from storage import Database, Store  # noqa: E402
from storage import report_queries as rq  # noqa: E402
from storage import schema as db_schema  # noqa: E402
from storage.entities import Column, NewPipelineVersion, PairRecord  # noqa: E402
from storage.quality import quality_aggregates  # noqa: E402

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CLASSES = ("setosa", "versicolor", "virginica")


def fill(store: Store, rows: int, *, label_every: int, batch: int = 50_000, seed: int = 0) -> int:
    """Create the deployment and a shadow rollout, write ``rows`` 3-class pairs; return the rollout id."""
    ids = [
        store.pipelines.add(NewPipelineVersion(
            name="bench", version=v, kind="http", task="classification", input_schema=(Column("x", "float"),),
            classes=CLASSES, upstream_url="http://127.0.0.1:9/", upstream_protocol="v2",
        )).id
        for v in ("1", "2")
    ]  # fmt: skip
    dep = store.deployments.create("bench", ids[0])
    rollout = store.rollouts.create(
        deployment_id=dep.id, challenger_id=ids[1], mode="shadow", policy={}, created_by="bench",
        phase="shadowing", shadow_rate=1.0, now=T0,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    for start in range(0, rows, batch):
        k = min(batch, rows - start)
        y = rng.choice(3, size=k, p=[0.5, 0.3, 0.2])
        probas = []
        for strength in (2.0, 1.5):
            logits = strength * np.eye(3)[y] + rng.normal(0, 1.0, (k, 3))
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probas.append(e / e.sum(axis=1, keepdims=True))
        p1, p2 = probas[0].tolist(), probas[1].tolist()
        records, labels = [], []
        for i in range(k):
            n = start + i
            a, b = p1[i], p2[i]
            records.append(PairRecord(
                request_id=f"r{n}", row_index=0, deployment_id=dep.id, rollout_id=rollout.id, step=0,
                received_at=T0 + timedelta(milliseconds=n * 10), routing_key_hash=n, served_arm="champion",
                champion_version_id=ids[0], challenger_version_id=ids[1],
                champion_class=CLASSES[a.index(max(a))], champion_score=max(a),
                challenger_class=CLASSES[b.index(max(b))], challenger_score=max(b),
                champion_latency_ms=2.0, challenger_latency_ms=2.0,
                champion_proba=dict(zip(CLASSES, a, strict=True)), challenger_proba=dict(zip(CLASSES, b, strict=True)),
            ))  # fmt: skip
            if n % label_every == 0:
                labels.append((f"r{n}", 0, CLASSES[int(y[i])]))
        store.pairs.insert_many(records)
        store.labels.upsert_many(dep.id, labels, now=T0)
        print(f"  {start + k:,} rows", end="\r", flush=True)
    print()
    return rollout.id


@contextmanager
def scratch(database_url: str | None) -> Iterator[Database]:
    """A migrated scratch database (PostgreSQL beside ``database_url``, else a SQLite file); dropped after."""
    name: str | None = None
    if database_url:
        import psycopg
        from sqlalchemy.engine import make_url

        name = f"mlcanary_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    db = Database(url)
    try:
        db_schema.upgrade(db)
        yield db
    finally:
        db.dispose()
        if name:
            import psycopg

            with psycopg.connect(database_url, autocommit=True) as conn:  # type: ignore[arg-type]
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--label-every", type=int, default=10)
    parser.add_argument("--database-url", help="PostgreSQL server URL (a scratch database is created on it)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "multiclass_look.md")
    args = parser.parse_args()
    with scratch(args.database_url) as db:
        store = Store(db)
        t = time.perf_counter()
        rollout_id = fill(store, args.rows, label_every=args.label_every)
        print(f"{db.dialect}: filled {args.rows:,} rows in {time.perf_counter() - t:.1f} s")
        if db.dialect == "postgresql":
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")

        def look(**extra: Any) -> Callable[[], object]:
            return lambda: quality_aggregates(
                db, rollout_id=rollout_id, step=0, cohort="paired", task="classification",
                label_cutoff=T0 + timedelta(days=365), **extra,
            )  # fmt: skip

        variants: dict[str, Callable[[], object]] = {
            "binary": look(positive=CLASSES[1]),
            "multiclass": look(classes=CLASSES),
            "multiclass+auc": look(classes=CLASSES, auc_horizon=2000),
            "report binary": lambda: rq.label_confusion(db, rollout_id, score_bins=200),
            "report reliability": lambda: rq.label_proba_reliability(db, rollout_id, CLASSES, shown=CLASSES),
        }
        lines = []
        for name, run in variants.items():
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                run()
                times.append(time.perf_counter() - t)
            with open("/proc/loadavg") as f:
                load = f.read().split()[0]
            labelled = args.rows // args.label_every
            lines.append(
                f"{db.dialect}, {args.rows:,} pairs ({labelled:,} labelled), {name}: "
                f"{statistics.median(times):.2f} s (median of {args.repeat}), load {load}"
            )
            print(lines[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(f"`{' '.join(sys.argv)}`\n\n" + "".join(f"- {line}\n" for line in lines) + "\n")


if __name__ == "__main__":
    main()
