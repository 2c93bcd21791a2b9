"""The report's grouped scans read range by range (SQLite) against a plain recomputation (SQLite and PostgreSQL).

A small real rollout whose rows cross minute boundaries and steps, with failed and skipped arms,
missing latencies and scores, labels and a row without a step: ``class_score_table`` and
``latency_buckets`` fed the step spans (SQLite then runs one query per (step, minute) range) must
equal the same functions without them (one GROUP BY over the rollout) and counts made in Python from
the rows as written; ``labelled_metrics`` (both arms in one scan) must equal a Python recount.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import Float, func, literal, select

from controller.loop.measure import LATENCY
from storage import Store, repro_queries
from storage import report_queries as rq
from storage.entities import Column, NewPipelineVersion, PairRecord

T0 = datetime(2026, 12, 1, 9, 58, 30, tzinfo=UTC)


def _rollout(store: Store) -> tuple[int, int, list[PairRecord], dict[str, str]]:
    ids = [
        store.pipelines.add(
            NewPipelineVersion(name="m", version=v, kind="artifact", task="classification",
                               input_schema=(Column("x", "float"),), classes=("a", "b", "c"))
        ).id
        for v in ("1", "2")
    ]  # fmt: skip
    deployment = store.deployments.create("m", ids[0])
    rollout = store.rollouts.create(
        deployment_id=deployment.id, challenger_id=ids[1], mode="shadow", policy={}, created_by="t",
        phase="shadowing",
    )  # fmt: skip
    rng = np.random.default_rng(11)
    records = []
    for i in range(600):
        step = None if i == 7 else (0 if i < 300 else 1)
        fails = i % 17 == 0
        skipped = i % 23 == 0
        s1, s2 = float(rng.random()), float(rng.random())
        records.append(
            PairRecord(
                request_id=f"r{i}", row_index=0, deployment_id=deployment.id, rollout_id=rollout.id, step=step,
                received_at=T0 + timedelta(seconds=float(rng.integers(0, 400)) + i / 1000),
                routing_key_hash=i, served_arm="champion", champion_version_id=ids[0],
                challenger_version_id=ids[1], champion_class="abc"[i % 3], champion_score=s1,
                challenger_class=None if fails or skipped else "abc"[(i // 2) % 3],
                challenger_score=None if fails or skipped or i % 29 == 0 else s2 - 0.03,  # a few below 0
                champion_latency_ms=float(rng.lognormal(1.0, 1.0)) if i % 31 else None,
                challenger_latency_ms=None if skipped else float(rng.lognormal(1.2, 1.5)),
                challenger_error="boom" if fails else None,
                challenger_status="skipped" if skipped else None,
                skip_reason="queue_full" if skipped else None,
            )
        )  # fmt: skip
    store.pairs.insert_many(records)
    labels = {f"r{i}": "abc"[(i * 7) % 3] for i in range(0, 600, 4)}
    store.labels.upsert_many(deployment.id, [(r, 0, y) for r, y in labels.items()], now=T0)
    return deployment.id, rollout.id, records, labels


def _bucket(ms: float) -> int:
    """The judge's latency bucket (controller.core.stats.latency_edges), computed in Python."""
    if ms < LATENCY.start_ms:
        return 0
    return min(1 + math.floor(math.log(ms / LATENCY.start_ms) / math.log(LATENCY.growth)), LATENCY.count - 1)


def test_range_by_range_scans_equal_one_grouped_scan_and_a_recount(store: Store) -> None:
    _, rollout_id, records, _ = _rollout(store)
    spans = rq.step_spans(store.db, rollout_id)
    assert {s for s, *_ in spans} == {None, 0, 1}

    latency = rq.latency_buckets(store.db, rollout_id, latency=LATENCY, spans=spans, bucket="minute")
    assert latency == rq.latency_buckets(store.db, rollout_id, latency=LATENCY)
    for arm in ("champion", "challenger"):
        expected: dict[int, int] = {}
        for r in records:
            ms = getattr(r, f"{arm}_latency_ms")
            if ms is not None:
                expected[_bucket(ms)] = expected.get(_bucket(ms), 0) + 1
        assert latency[arm] == expected
        assert sum(expected.values()) > 500

    bins = 20
    fast = rq.class_score_table(store.db, rollout_id, bins=bins, spans=spans, bucket="minute")
    plain = rq.class_score_table(store.db, rollout_id, bins=bins)
    assert sorted(fast, key=repr) == sorted(plain, key=repr)
    recount: dict[tuple[object, ...], int] = {}
    for r in records:
        if r.challenger_error is None and r.challenger_class is not None:
            b2 = None if r.challenger_score is None else math.floor(r.challenger_score * bins)
            key = (r.champion_class, r.challenger_class, math.floor(r.champion_score * bins), b2)
            recount[key] = recount.get(key, 0) + 1
    assert {tuple(row[:4]): row[4] for row in fast} == recount
    assert any(k[3] is not None and k[3] < 0 for k in recount)  # floor, not truncation, below zero


def test_floor_is_the_integer_floor_on_every_database(store: Store) -> None:
    with store.db.session(write=False) as s:
        for x in (-2.5, -1.0, -0.25, 0.0, 0.75, 3.0, 7.999):
            assert s.execute(select(func.floor(literal(x)))).scalar() == math.floor(x)
        assert s.execute(select(func.floor(literal(None, type_=Float())))).scalar() is None


def test_labelled_metrics_in_one_scan_equal_a_recount_per_arm(store: Store) -> None:
    _, rollout_id, records, labels = _rollout(store)
    found = repro_queries.labelled_metrics(store.db, rollout_id)
    for arm in ("champion", "challenger"):
        scored = [
            r
            for r in records
            if r.request_id in labels
            and getattr(r, f"{arm}_error") is None
            and getattr(r, f"{arm}_class") is not None
        ]
        assert found[arm].labelled == len(scored) > 0
        assert found[arm].correct == sum(getattr(r, f"{arm}_class") == labels[r.request_id] for r in scored)
        assert found[arm].version_id == getattr(scored[0], f"{arm}_version_id")
        assert found[arm].abs_error_sum == 0.0
    assert found["challenger"].labelled < found["champion"].labelled
