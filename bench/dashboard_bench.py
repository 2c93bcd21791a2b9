"""Time one dashboard poll of a rollout with many paired outputs, with and without the series cache, against
the status document's work (its baseline, fetched on the same poll), on SQLite and PostgreSQL.

    .venv/bin/python bench/dashboard_bench.py --rows 1000000                   # SQLite file under /tmp
    .venv/bin/python bench/dashboard_bench.py --rows 1000000 --database-url postgresql://postgres@127.0.0.1/test

Fills a fresh database with report_bench's rollout (one shadow step, ``--rows`` paired rows 10 ms
apart, labels, 50 analyses). Then polls as the page does, writing ``--new-rows`` paired rows (the
traffic of one 3 s poll interval) before each poll: ``--repeat`` polls of
``controller.http.dashboard.overview`` without a cache (before: every poll aggregates the whole
rollout), then ``--polls`` polls with a ``storage.series.SeriesCache`` (after: the first builds the
sums, the others aggregate the rows of the last ``settle_s`` seconds; the cache's clock advances 3 s per
poll), each beside ``documents.deployment_json(detail=True)`` given the same cache (the status document's live
figures come from it, as the admin API's do). Prints the medians (the cached medians leave out the first,
building poll, printed on its own) and the load average.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

import numpy as np
from report_bench import T0, filled_store

from controller.http import dashboard, documents
from storage import Store
from storage.entities import PairRecord
from storage.series import SeriesCache


def more_rows(store: Store, rollout_id: int, start: int, k: int, rng: np.random.Generator) -> None:
    """Write ``k`` paired rows continuing report_bench's fill (10 ms apart from row ``start``)."""
    rollout = store.rollouts.get(rollout_id)
    s1 = rng.random(k)
    records = [
        PairRecord(
            request_id=f"n{start + i}", row_index=0, deployment_id=rollout.deployment_id, rollout_id=rollout_id,
            step=0, received_at=T0 + timedelta(milliseconds=(start + i) * 10), routing_key_hash=start + i,
            served_arm="champion", champion_version_id=rollout.champion_id,
            challenger_version_id=rollout.challenger_id, champion_output=int(s1[i] > 0.5),
            champion_class=str(int(s1[i] > 0.5)), champion_score=float(s1[i]), challenger_output=int(s1[i] > 0.45),
            challenger_class=str(int(s1[i] > 0.45)), challenger_score=float(s1[i]),
            champion_latency_ms=float(rng.lognormal(1.0, 0.3)), challenger_latency_ms=float(rng.lognormal(1.1, 0.3)),
            raw_input={"plan": "basic", "age": 40.0},
        )
        for i in range(k)
    ]  # fmt: skip
    store.pairs.insert_many(records)


def load() -> str:
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", help="PostgreSQL server URL (a scratch database is created on it)")
    parser.add_argument("--repeat", type=int, default=3, help="polls without the cache")
    parser.add_argument("--polls", type=int, default=15, help="polls with the cache (the first builds it)")
    parser.add_argument("--new-rows", type=int, default=1_000, help="rows written before each poll")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    with filled_store(args.database_url, args.rows) as (store, rollout_id):
        dialect = store.db.dialect
        deployment = store.deployments.get("bench")
        now = datetime.now(UTC)
        written = args.rows

        def poll(cache: SeriesCache | None) -> tuple[float, float, dict]:
            nonlocal written
            more_rows(store, rollout_id, written, args.new_rows, rng)
            written += args.new_rows
            t = time.perf_counter()
            documents.deployment_json(store, deployment, detail=True, now=now, cache=cache)
            status = time.perf_counter() - t
            t = time.perf_counter()
            body = dashboard.overview(store, deployment, now=now, cache=cache)
            return status, time.perf_counter() - t, body

        loads = [load()]
        before = [poll(None) for _ in range(args.repeat)]
        clock = [0.0]
        cache = SeriesCache(clock=lambda: clock[0])
        after = []
        for _ in range(args.polls):
            after.append(poll(cache))
            clock[0] += 3.0
        loads.append(load())
        direct = dashboard.overview(store, deployment, now=now)["series"]
        cached = after[-1][2]["series"]
        same = sum(p["requests"] for p in direct["points"]) == sum(p["requests"] for p in cached["points"])
        rollout = store.rollouts.get(rollout_id)
        same_live = documents.live_figures(store, rollout) == documents.live_figures(
            store, rollout, cache=cache
        )
        status = statistics.median([s for s, _, _ in before])
        status_warm = statistics.median([s for s, _, _ in after[1:]])
        full = statistics.median([d for _, d, _ in before])
        warm = statistics.median([d for _, d, _ in after[1:]])
        print(
            f"{dialect}, {args.rows:,} rows + {args.new_rows:,} new rows per poll, load {loads[0]} -> {loads[1]}: "
            f"status document without the cache {status:.3f} s, with it {status_warm:.3f} s (the first, building "
            f"it, {after[0][0]:.3f} s); dashboard endpoint without the cache {full:.3f} s "
            f"(median of {args.repeat}), with the cache {warm:.3f} s (median of {args.polls - 1} polls; on the "
            f"first poll, after the status document built the sums, {after[0][1]:.3f} s); {len(cached['points'])} buckets of "
            f"{cached['bucket_s']} s against {len(direct['points'])} of "
            f"{direct['bucket_s']} s uncached; same request count: {same}; same live figures: {same_live}"
        )


if __name__ == "__main__":
    main()
