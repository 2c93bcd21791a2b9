"""Bulk insert of paired outputs: mlcanary's storage path against the raw driver, in one run.

    .venv/bin/python bench/storage_bench.py [--rows 100000] [--batch 1000] [--pg URL]

Measures rows/s on SQLite (WAL, synchronous=NORMAL) and PostgreSQL for batches of --batch rows:
`Store.pairs.insert_many` (what the router's recorder calls) beside the raw driver on the same rows
(sqlite3 executemany in one transaction per batch; psycopg COPY per batch). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from storage import Database, Store
from storage import schema as db_schema
from storage.entities import Column, NewPipelineVersion, PairRecord
from storage.models import PAIR_COLUMNS
from storage.repositories import _pair_tuple


def records(n: int, deployment_id: int, prefix: str) -> list[PairRecord]:
    now = datetime.now(UTC)
    return [
        PairRecord(
            request_id=f"{prefix}-{i}", row_index=0, deployment_id=deployment_id, rollout_id=None, step=0,
            received_at=now, routing_key_hash=i * 7919, served_arm="champion", champion_version_id=1,
            challenger_version_id=2, champion_output={"class": 1, "score": 0.73}, challenger_output={"class": 0,
            "score": 0.41}, champion_class="1", champion_score=0.73, challenger_class="0", challenger_score=0.41,
            champion_latency_ms=1.2, challenger_latency_ms=1.9,
            raw_input={"age": 41.0, "plan": "pro", "tenure_months": 12.0},
        )
        for i in range(n)
    ]  # fmt: skip


def prepare(url: str) -> Store:
    db = Database(url)
    db_schema.upgrade(db)
    store = Store(db)
    v = store.pipelines.add(
        NewPipelineVersion(
            name="b",
            version="1",
            kind="artifact",
            task="classification",
            input_schema=(Column("a", "float"),),
        )
    )
    store.deployments.create("bench", v.id)
    return store


def interleaved(paths: dict, rows: int) -> dict[str, float]:  # type: ignore[type-arg]
    """Time every path batch by batch, taking turns, so machine noise falls on all alike; rows/s each."""
    spent = dict.fromkeys(paths, 0.0)
    for batches in zip(*(batches for _fn, batches in paths.values()), strict=True):
        for (name, (fn, _all)), batch in zip(paths.items(), batches, strict=True):
            start = time.perf_counter()
            fn(batch)
            spent[name] += time.perf_counter() - start
    return {name: rows / seconds for name, seconds in spent.items()}


def chunks(items: list, size: int) -> list[list]:  # type: ignore[type-arg]
    return [items[i : i + size] for i in range(0, len(items), size)]


def bench_sqlite(rows: int, batch: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="mlcanary-bench-"))
    store = prepare(f"sqlite:///{folder / 'ours.db'}")
    raw_store = prepare(f"sqlite:///{folder / 'raw.db'}")
    raw_store.db.dispose()
    tuples = [_pair_tuple(r, sqlite=True) for r in records(rows, 1, "raw")]
    conn = sqlite3.connect(folder / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    sql = f"INSERT INTO paired_outputs ({', '.join(PAIR_COLUMNS)}) VALUES ({', '.join('?' for _ in PAIR_COLUMNS)})"

    def raw(chunk: list[tuple[object, ...]]) -> None:
        conn.execute("BEGIN")
        conn.executemany(sql, chunk)
        conn.execute("COMMIT")

    def raw_converting(chunk: list[PairRecord]) -> None:
        raw([_pair_tuple(r, sqlite=True) for r in chunk])

    result = interleaved(
        {
            "ours": (store.pairs.insert_many, chunks(records(rows, 1, "ours"), batch)),
            "raw": (raw, chunks(tuples, batch)),
            "raw+convert": (raw_converting, chunks(records(rows, 1, "conv"), batch)),
        },
        rows,
    )
    assert store.pairs.count() == rows
    return result


def bench_postgres(rows: int, batch: int, admin_url: str) -> dict[str, float]:
    name = f"mlcanary_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        store = prepare(url)
        tuples = [_pair_tuple(r, sqlite=False) for r in records(rows, 1, "raw")]
        columns = ", ".join(PAIR_COLUMNS)
        with psycopg.connect(
            make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        ) as conn:

            def raw(chunk: list[tuple[object, ...]]) -> None:
                with conn.cursor() as cur, cur.copy(f"COPY paired_outputs ({columns}) FROM STDIN") as copy:
                    for row in chunk:
                        copy.write_row(row)
                conn.commit()

            def raw_converting(chunk: list[PairRecord]) -> None:
                raw([_pair_tuple(r, sqlite=False) for r in chunk])

            result = interleaved(
                {
                    "ours": (store.pairs.insert_many, chunks(records(rows, 1, "ours"), batch)),
                    "raw": (raw, chunks(tuples, batch)),
                    "raw+convert": (raw_converting, chunks(records(rows, 1, "conv"), batch)),
                },
                rows,
            )
        assert store.pairs.count() == 3 * rows  # every path wrote to the same table
        return result
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {
        "sqlite": bench_sqlite(args.rows, args.batch),
        "postgresql": bench_postgres(args.rows, args.batch, args.pg),
    }
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.rows:,} rows in batches of {args.batch:,}, one transaction per batch, paths interleaved")
    print()
    print(
        "| database | raw driver | mlcanary `insert_many` rows/s | raw driver rows/s | ratio | raw driver + the same "
        "row conversion, rows/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for db, r in results.items():
        raw_name = "sqlite3 executemany" if db == "sqlite" else "psycopg COPY"
        print(
            f"| {db} | {raw_name} | {r['ours']:,.0f} | {r['raw']:,.0f} | {r['ours'] / r['raw']:.2f} | "
            f"{r['raw+convert']:,.0f} | {r['ours'] / r['raw+convert']:.2f} |"
        )


if __name__ == "__main__":
    main()
