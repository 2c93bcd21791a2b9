"""The dashboard's time series and sampled looks against direct counts (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import event

from controller.loop.measure import LATENCY, latency_quantile
from storage import Store, series
from storage.entities import Column, NewPipelineVersion, PairRecord

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def _rollout(store: Store) -> tuple[int, int]:
    ids = [
        store.pipelines.add(
            NewPipelineVersion(name="m", version=v, kind="artifact", task="regression",
                               input_schema=(Column("x", "float"),))
        ).id
        for v in ("1", "2")
    ]  # fmt: skip
    deployment = store.deployments.create("m", ids[0])
    rollout = store.rollouts.create(
        deployment_id=deployment.id, challenger_id=ids[1], mode="shadow", policy={}, created_by="t",
        phase="shadowing",
    )  # fmt: skip
    return deployment.id, rollout.id


def test_buckets_cover_the_rollout_with_equal_widths_and_count_requests_as_a_direct_count(
    store: Store,
) -> None:
    deployment_id, rollout_id = _rollout(store)
    rng = np.random.default_rng(5)
    seconds = rng.integers(0, 3600, 500)
    latencies = rng.lognormal(2.0, 0.6, 500)
    steps = (seconds >= 1800).astype(int)
    store.pairs.insert_many(
        [
            PairRecord(
                request_id=f"r{i}", row_index=0, deployment_id=deployment_id, rollout_id=rollout_id,
                step=int(steps[i]), received_at=T0 + timedelta(seconds=int(seconds[i])), routing_key_hash=i,
                served_arm="champion", champion_version_id=None, challenger_version_id=None,
                champion_latency_ms=float(latencies[i]), champion_status="ok",
                challenger_status="skipped" if i % 9 == 0 else "ok", skip_reason="queue_full" if i % 9 == 0 else None,
                challenger_latency_ms=None if i % 9 == 0 else 3.0,
            )
            for i in range(500)
        ]
    )  # fmt: skip
    found = series.rollout_series(store.db, rollout_id, latency=LATENCY, points=12)
    span = int(seconds.max() - seconds.min())
    assert found.width_s == -(-(span + 1) // 12)  # ceil: at most 12 buckets
    assert len({p.start for p in found.points}) <= 12
    origin = T0 + timedelta(seconds=int(seconds.min()))
    for p in found.points:
        lo = (p.start - origin).total_seconds() + seconds.min()
        inside = (seconds >= lo) & (seconds < lo + found.width_s) & (steps == p.step)
        assert p.requests == int(inside.sum())
        assert p.skipped == int(sum(1 for i in np.flatnonzero(inside) if i % 9 == 0))
        assert p.scored == p.requests - p.skipped == p.challenger.ran
        assert latency_quantile(p.champion.latency, 0.5) is not None
    assert sum(p.requests for p in found.points) == 500
    # one bucket: the whole rollout's champion median read off the judge's buckets, within their 5%
    whole = series.rollout_series(store.db, rollout_id, latency=LATENCY, points=1)
    by_step = {p.step: p for p in whole.points}
    for step in (0, 1):
        median = latency_quantile(by_step[step].champion.latency, 0.5)
        assert median is not None and abs(median / np.median(latencies[steps == step]) - 1) < 0.06


def test_a_long_rollouts_looks_are_thinned_evenly_keeping_the_first_and_the_latest(store: Store) -> None:
    _, rollout_id = _rollout(store)
    added = [
        store.analyses.add(rollout_id=rollout_id, step=0, outcome="pass", verdicts=[], metrics={},
                           now=T0 + timedelta(seconds=i)).id
        for i in range(500)
    ]  # fmt: skip
    sampled = [a.id for a in series.analysis_sample(store.db, rollout_id, points=50)]
    assert sampled[0] == added[0] and sampled[-1] == added[-1]
    assert sampled == sorted(sampled) and 40 <= len(sampled) <= 51
    gaps = np.diff(sampled[:-1])
    assert gaps.min() == gaps.max()  # evenly spread
    assert series.analysis_sample(store.db, rollout_id + 1, points=50) == []


def _pairs(
    deployment_id: int, rollout_id: int, seconds: np.ndarray, start: int, seed: int
) -> list[PairRecord]:
    rng = np.random.default_rng(seed)
    return [
        PairRecord(
            request_id=f"q{start + i}", row_index=0, deployment_id=deployment_id, rollout_id=rollout_id,
            step=int(s >= 3000), received_at=T0 + timedelta(seconds=int(s)), routing_key_hash=i,
            served_arm="challenger" if i % 4 == 0 else "champion", champion_version_id=None,
            challenger_version_id=None, champion_latency_ms=float(rng.lognormal(2.0, 0.5)),
            champion_status="error" if i % 7 == 0 else "ok", challenger_status="skipped" if i % 5 == 0 else "ok",
            challenger_latency_ms=None if i % 5 == 0 else float(rng.lognormal(2.2, 0.5)),
        )
        for i, s in enumerate(seconds)
    ]  # fmt: skip


def _direct(rows: list[PairRecord], found: series.RolloutSeries) -> None:
    """Every bucket of ``found`` holds exactly the rows whose time and step fall in it; widths are equal."""
    assert found.first is not None
    for p in found.points:
        inside = [r for r in rows if p.start <= r.received_at < p.start + timedelta(seconds=found.width_s)
                  and r.step == p.step]  # fmt: skip
        assert p.requests == len(inside)
        assert p.challenger.served == sum(r.served_arm == "challenger" for r in inside)
        assert p.champion.errors == sum(r.champion_status == "error" for r in inside)
        shadow = [r.challenger_status if r.served_arm == "champion" else r.champion_status for r in inside]
        assert p.skipped == shadow.count("skipped")
        assert sum(p.champion.latency.values()) == p.champion.ran == len(inside)
    assert sum(p.requests for p in found.points) == len(rows)


def test_the_cached_series_adds_only_new_rows_and_agrees_with_a_full_count(store: Store) -> None:
    deployment_id, rollout_id = _rollout(store)
    rng = np.random.default_rng(11)
    rows = _pairs(deployment_id, rollout_id, np.sort(rng.integers(0, 1200, 200)), 0, 1)
    store.pairs.insert_many(rows)
    clock = [0.0]
    cache = series.SeriesCache(settle_s=30.0, clock=lambda: clock[0])
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    for k, (seconds, at) in enumerate([(rng.integers(1200, 2400, 150), 3.0), (rng.integers(2400, 7200, 300), 40.0),
                                       (rng.integers(7200, 7300, 5), 80.0)]):  # fmt: skip
        found = cache.rollout_series(store.db, rollout_id, latency=LATENCY, points=12)
        _direct(rows, found)
        direct = series.rollout_series(store.db, rollout_id, latency=LATENCY, points=12)
        assert (
            direct.width_s <= found.width_s <= 1.25 * direct.width_s + 1
        )  # kept buckets merge by a whole factor
        assert len({p.start for p in found.points}) <= 12
        new = _pairs(deployment_id, rollout_id, np.sort(seconds), len(rows), k + 2)
        store.pairs.insert_many(new)
        rows += new
        clock[0] = at
    event.listen(store.db.engine, "before_cursor_execute", count)
    try:
        found = cache.rollout_series(store.db, rollout_id, latency=LATENCY, points=12)
    finally:
        event.remove(store.db.engine, "before_cursor_execute", count)
    _direct(rows, found)
    # settled rows are never read again: every aggregation after the first build reads rows above an id
    assert [s for s in statements if "GROUP BY" in s.upper() and "paired_outputs.id >" not in s] == []
    # a replayed row older than the rollout's first moves the origin: the cache starts again
    late = _pairs(deployment_id, rollout_id, np.array([-600]), len(rows), 9)
    store.pairs.insert_many(late)
    rows += late
    _direct(rows, cache.rollout_series(store.db, rollout_id, latency=LATENCY, points=12))


def _step_rows(deployment_id: int, rollout_id: int, start: int, n: int, step: int) -> list[PairRecord]:
    """Requests of two rows each (row 1 never counts) with failures, skips by two reasons and queue waits."""
    rows = []
    for i in range(start, start + n):
        skipped = "queue_full" if i % 7 == 0 else "shed" if i % 11 == 0 else None
        for row_index in (0, 1):
            rows.append(
                PairRecord(
                    request_id=f"q{i}", row_index=row_index, deployment_id=deployment_id, rollout_id=rollout_id,
                    step=step, received_at=T0 + timedelta(seconds=i * 1.7), routing_key_hash=i,
                    served_arm="challenger" if i % 5 == 0 else "champion", champion_version_id=None,
                    challenger_version_id=None, champion_latency_ms=1.0 + (i % 13) * 7.5,
                    challenger_latency_ms=None if skipped else 2.0 + (i % 19) * 11.0,
                    champion_error="boom" if i % 9 == 0 else None,
                    champion_status="error" if i % 9 == 0 else "ok",
                    challenger_status="skipped" if skipped else "ok", skip_reason=skipped,
                    shadow_wait_ms=None if skipped or i % 3 == 0 else float(i % 40),
                )
            )  # fmt: skip
    return rows


def test_the_status_documents_step_figures_from_the_cache_equal_the_direct_scans(store: Store) -> None:
    deployment_id, rollout_id = _rollout(store)
    store.pairs.insert_many(_step_rows(deployment_id, rollout_id, 0, 150, 0))
    store.pairs.insert_many(_step_rows(deployment_id, rollout_id, 150, 200, 1))
    clock = [0.0]
    cache = series.SeriesCache(settle_s=30.0, clock=lambda: clock[0])

    def direct(step: int) -> tuple[object, object]:
        return (
            store.pairs.live_figures(rollout_id, step, latency=LATENCY),
            store.pairs.coverage(rollout_id, step),
        )

    for step in (0, 1):  # the first call builds the entry
        assert cache.step_figures(store.db, rollout_id, step, latency=LATENCY) == direct(step)
    figures, coverage = cache.step_figures(store.db, rollout_id, 1, latency=LATENCY)
    assert figures.requests == 200 and figures.champion.errors > 0 and figures.challenger.served > 0
    assert set(coverage.skipped) == {"queue_full", "shed"} and coverage.wait_max_ms is not None
    # new rows: first in the unsettled tail, then settled into the kept sums
    for start in (350, 420, 500):
        store.pairs.insert_many(_step_rows(deployment_id, rollout_id, start, 70, 1))
        assert cache.step_figures(store.db, rollout_id, 1, latency=LATENCY) == direct(1)
        assert cache.rollout_series(
            store.db, rollout_id, latency=LATENCY
        ).points  # the dashboard shares the entry
        clock[0] += 31.0
    assert cache.step_figures(store.db, rollout_id, 1, latency=LATENCY)[0].requests == 410
    assert cache.step_figures(store.db, rollout_id, 0, latency=LATENCY) == direct(0)
    assert cache.step_figures(store.db, rollout_id, 2, latency=LATENCY) == direct(2)  # a step without rows
