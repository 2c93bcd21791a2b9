"""The SQL aggregates of one step give the judge exactly what judge.metrics_from_pairs gives on the same rows.

Every test runs on SQLite and on PostgreSQL (schema from the migrations).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from controller.core import judge, stats
from controller.loop.measure import metrics_from_aggregates, value_edges
from storage import Store
from storage.analytics import step_aggregates
from storage.entities import Column, NewPipelineVersion, PairRecord

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def _deploy(store: Store, task: str) -> tuple[int, int]:
    def version(v: str) -> Any:
        return store.pipelines.add(
            NewPipelineVersion(
                name="m",
                version=v,
                kind="artifact",
                task=task,
                input_schema=(Column("x", "float"),),
                classes=(0, 1, 2) if task == "classification" else None,
            )
        )

    champion, challenger = version("1"), version("2")
    deployment = store.deployments.create("m", champion.id)
    rollout = store.rollouts.create(
        deployment_id=deployment.id,
        challenger_id=challenger.id,
        mode="shadow",
        policy={},
        created_by="tests",
        phase="shadowing",
    )
    return deployment.id, rollout.id


def _rows(rng: np.random.Generator, n: int, task: str) -> dict[str, np.ndarray]:
    if task == "classification":
        y = rng.integers(0, 3, n)
        p1 = np.where(rng.random(n) < 0.8, y, rng.integers(0, 3, n))
        p2 = np.where(rng.random(n) < 0.75, y, rng.integers(0, 3, n))
    else:
        y = rng.normal(50, 10, n)
        p1 = y + rng.normal(0, 3, n)
        p2 = y + rng.normal(0.5, 3.5, n)
    return {
        "y": y,
        "p1": p1,
        "p2": p2,
        "f1": rng.random(n) < 0.03,
        "f2": rng.random(n) < 0.06,
        "l1": rng.lognormal(1.0, 0.6, n),
        "l2": rng.lognormal(1.2, 0.6, n),
        "labelled": rng.random(n) < 0.7,
        "old": rng.random(n) < 0.8,  # received before the label cutoff
    }


def _insert(
    store: Store,
    deployment_id: int,
    rollout_id: int,
    d: dict[str, np.ndarray],
    task: str,
    *,
    step: int = 0,
    prefix: str = "r",
) -> None:
    records, labels = [], []
    for i in range(d["y"].size):
        rid = f"{prefix}{step}-{i}"
        out: dict[str, Any] = {}
        for arm, key, fail, lat in (("champion", "p1", "f1", "l1"), ("challenger", "p2", "f2", "l2")):
            failed = bool(d[fail][i])
            out[f"{arm}_latency_ms"] = float(d[lat][i])
            out[f"{arm}_error"] = "boom" if failed else None
            if not failed:
                if task == "classification":
                    out[f"{arm}_class"] = str(int(d[key][i]))
                else:
                    out[f"{arm}_value"] = float(d[key][i])
        records.append(
            PairRecord(
                request_id=rid,
                row_index=0,
                deployment_id=deployment_id,
                rollout_id=rollout_id,
                step=step,
                received_at=T0 if d["old"][i] else T0 + timedelta(hours=2),
                routing_key_hash=i,
                served_arm="champion",
                champion_version_id=1,
                challenger_version_id=2,
                **out,
            )
        )
        if d["labelled"][i]:
            labels.append((rid, 0, int(d["y"][i]) if task == "classification" else float(d["y"][i])))
    store.pairs.insert_many(records)
    store.labels.upsert_many(deployment_id, labels)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_sql_aggregates_match_metrics_from_pairs(store: Store, task: str) -> None:
    deployment_id, rollout_id = _deploy(store, task)
    rng = np.random.default_rng(7)
    d = _rows(rng, 1500, task)
    _insert(store, deployment_id, rollout_id, d, task)
    _insert(
        store, deployment_id, rollout_id, _rows(rng, 300, task), task, step=1
    )  # another step: never pooled

    from controller.loop.measure import LATENCY

    aggregates = step_aggregates(
        store.db,
        rollout_id=rollout_id,
        step=0,
        cohort="paired",
        task=task,  # type: ignore[arg-type]
        label_cutoff=T0 + timedelta(hours=1),
        latency=LATENCY,
    )
    got = metrics_from_aggregates(aggregates, task=task)  # type: ignore[arg-type]

    ok = ~d["f1"] & ~d["f2"]
    expected = judge.metrics_from_pairs(
        champion_prediction=d["p1"],
        challenger_prediction=d["p2"],
        champion_failed=d["f1"],
        challenger_failed=d["f2"],
        task=task,  # type: ignore[arg-type]
        label=d["y"],
        labelled=d["labelled"] & d["old"],
        champion_latency_ms=d["l1"],
        challenger_latency_ms=d["l2"],
        latency_edges=stats.latency_edges(),
        output_edges=None
        if task == "classification"
        else value_edges(
            min(d["p1"][ok].min(), d["p2"][ok].min()), max(d["p1"][ok].max(), d["p2"][ok].max())
        ),
    )
    for name in (
        "mode",
        "champion",
        "challenger",
        "paired_errors",
        "agreement",
        "paired_correct",
        "latency",
        "outputs",
    ):
        assert getattr(got, name) == getattr(expected, name), name
    if task == "regression":
        a, b = got.paired_abs_errors, expected.paired_abs_errors
        assert a is not None and b is not None and a.n == b.n
        for f in ("champion", "champion_sq", "challenger", "challenger_sq", "cross"):
            assert getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-9), f
    for name in ("abs_error_difference", "champion_abs_error"):
        a, b = getattr(got, name), getattr(expected, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.n == b.n
            assert a.total == pytest.approx(b.total, rel=1e-9, abs=1e-9)
            assert a.total_sq == pytest.approx(b.total_sq, rel=1e-9)
    policy = judge.JudgePolicy()
    assert judge.judge(got, policy).decision == judge.judge(expected, policy).decision


def test_canary_cohorts_are_the_rows_each_arm_answered(store: Store) -> None:
    deployment_id, rollout_id = _deploy(store, "classification")
    records = []
    for i in range(40):
        arm = "challenger" if i < 10 else "champion"
        records.append(
            PairRecord(
                request_id=f"c{i}",
                row_index=0,
                deployment_id=deployment_id,
                rollout_id=rollout_id,
                step=2,
                received_at=T0,
                routing_key_hash=i,
                served_arm=arm,
                champion_version_id=1,
                challenger_version_id=2,
                champion_class="1",
                challenger_class="1" if i % 2 else "0",
                champion_latency_ms=1.0 if arm == "champion" or i % 2 else None,
                challenger_latency_ms=2.0 if arm == "challenger" or i % 2 else None,
                challenger_error="boom" if i == 3 else None,
            )
        )
    store.pairs.insert_many(records)
    store.labels.upsert_many(deployment_id, [(f"c{i}", 0, 1) for i in range(40)])
    from controller.loop.measure import LATENCY

    a = step_aggregates(
        store.db,
        rollout_id=rollout_id,
        step=2,
        cohort="served",
        task="classification",
        label_cutoff=T0,
        latency=LATENCY,
    )
    m = metrics_from_aggregates(a, task="classification", challenger_weight=0.25)
    assert m.mode == "canary"
    assert (m.champion.n, m.champion.count) == (30, 0)
    assert (m.challenger.n, m.challenger.count) == (10, 1)
    assert m.challenger_correct == judge.Proportion(n=9, count=4)  # i=1,5,7,9 answer "1"; i=3 failed
    assert m.champion_correct == judge.Proportion(n=30, count=30)
    assert m.agreement is not None and m.agreement.n == 19  # rows where both ran and both succeeded
    assert m.latency is not None and sum(m.latency.challenger) == 10
    assert m.units == (30, 10)  # every request came from its own routing key here


def test_canary_units_are_distinct_routing_keys_not_requests(store: Store) -> None:
    deployment_id, rollout_id = _deploy(store, "classification")
    records = [
        PairRecord(
            request_id=f"k{i}",
            row_index=0,
            deployment_id=deployment_id,
            rollout_id=rollout_id,
            step=1,
            received_at=T0,
            routing_key_hash=7 if i < 30 else i,
            served_arm="challenger" if i < 30 else "champion",
            champion_version_id=1,
            challenger_version_id=2,
            champion_class="1",
            challenger_class="1",
            champion_latency_ms=1.0,
            challenger_latency_ms=1.0,
        )
        for i in range(50)
    ]  # one busy client (key 7) sent 30 requests to the challenger; 20 clients sent one each to the champion
    store.pairs.insert_many(records)
    from controller.loop.measure import LATENCY

    a = step_aggregates(
        store.db,
        rollout_id=rollout_id,
        step=1,
        cohort="served",
        task="classification",
        label_cutoff=None,
        latency=LATENCY,
    )
    assert (a.champion.units, a.challenger.units) == (20, 1)
    assert (a.champion.n, a.challenger.n) == (20, 30)


def test_labels_younger_than_the_maturity_do_not_count(store: Store) -> None:
    deployment_id, rollout_id = _deploy(store, "classification")
    d = _rows(np.random.default_rng(3), 200, "classification")
    d["labelled"][:] = True
    _insert(store, deployment_id, rollout_id, d, "classification")
    from controller.loop.measure import LATENCY

    before = step_aggregates(
        store.db,
        rollout_id=rollout_id,
        step=0,
        cohort="paired",
        task="classification",
        label_cutoff=T0 - timedelta(seconds=1),
        latency=LATENCY,
    )
    after = step_aggregates(
        store.db,
        rollout_id=rollout_id,
        step=0,
        cohort="paired",
        task="classification",
        label_cutoff=T0 + timedelta(hours=3),
        latency=LATENCY,
    )
    assert before.labelled_pairs == 0
    assert after.labelled_pairs == int((~d["f1"] & ~d["f2"]).sum())


def test_the_unit_is_the_request_and_skipped_shadow_jobs_are_coverage_lost_not_errors(store: Store) -> None:
    """Requests of 1..10 rows: errors, pairs and latencies count requests; skips count only as coverage."""
    deployment_id, rollout_id = _deploy(store, "classification")
    rng = np.random.default_rng(13)
    sizes = rng.integers(1, 11, 60)
    fate = rng.choice(["ok", "error", "skipped"], size=60, p=[0.6, 0.2, 0.2])
    reasons = rng.choice(["expired", "shed", "queue_full"], size=60)
    records, agree_rows = [], 0
    for i, (size, what) in enumerate(zip(sizes, fate, strict=True)):
        classes = rng.integers(0, 2, (2, int(size)))
        agreed = int((classes[0] == classes[1]).sum()) if what == "ok" else 0
        agree_rows += agreed
        for row in range(int(size)):
            challenger: dict[str, Any] = {}
            if what == "ok":
                challenger = {"challenger_class": str(classes[1, row]), "challenger_latency_ms": 5.0}
            elif what == "error":
                challenger = {"challenger_error": "RuntimeError: boom", "challenger_latency_ms": 5.0}
            else:
                challenger = {"challenger_status": "skipped", "skip_reason": str(reasons[i])}
            records.append(
                PairRecord(
                    request_id=f"q{i}",
                    row_index=row,
                    deployment_id=deployment_id,
                    rollout_id=rollout_id,
                    step=0,
                    received_at=T0,
                    routing_key_hash=i,
                    served_arm="champion",
                    champion_version_id=1,
                    challenger_version_id=2,
                    champion_class=str(classes[0, row]),
                    champion_latency_ms=1.0,
                    shadow_wait_ms=None if what == "skipped" else 2.0,
                    **challenger,
                )
            )
    store.pairs.insert_many(records)
    from controller.loop.measure import LATENCY

    a = step_aggregates(
        store.db, rollout_id=rollout_id, step=0, cohort="paired", task="classification", label_cutoff=None,
        latency=LATENCY,
    )  # fmt: skip
    ran = fate != "skipped"
    assert a.requests == 60
    assert (a.pairs, a.challenger.n, a.challenger.failed) == (ran.sum(), ran.sum(), (fate == "error").sum())
    assert a.worse == (fate == "error").sum() and a.better == 0
    assert sum(a.challenger.latency.values()) == ran.sum()  # one latency per request, not per row
    assert (a.compared, a.agreed) == (sizes[fate == "ok"].sum(), agree_rows)  # agreement keeps rows
    expected_skips = {
        str(r): int(((fate == "skipped") & (reasons == r)).sum()) for r in set(reasons[fate == "skipped"])
    }
    assert (a.coverage.sampled, a.coverage.scored, a.coverage.skipped) == (60, ran.sum(), expected_skips)
    assert a.coverage.wait_n == ran.sum() and a.coverage.wait_sum_ms == pytest.approx(2.0 * ran.sum())
    metrics = metrics_from_aggregates(a, task="classification")
    assert metrics.challenger == judge.Proportion(n=int(ran.sum()), count=int((fate == "error").sum()))
    assert metrics.coverage == judge.Proportion(n=60, count=int(ran.sum()))


def test_canary_cluster_sums_paired_errors_and_tail_match_the_rows(store: Store) -> None:
    """Per-routing-key sums, the canary's paired share and the catastrophic-error counts, by numpy."""
    deployment_id, rollout_id = _deploy(store, "regression")
    rng = np.random.default_rng(11)
    n = 400
    key = rng.integers(0, 60, n)  # uneven: several requests per routing key
    served = np.where(key % 4 == 0, "challenger", "champion")
    both = rng.random(n) < 0.5  # the other arm also scored in shadow
    y = rng.normal(10, 2, n)
    p1 = y + rng.normal(0, 1, n)
    p2 = y + rng.standard_t(2, n)
    records = [
        PairRecord(
            request_id=f"q{i}",
            row_index=0,
            deployment_id=deployment_id,
            rollout_id=rollout_id,
            step=3,
            received_at=T0,
            routing_key_hash=int(key[i]),
            served_arm=str(served[i]),
            champion_version_id=1,
            challenger_version_id=2,
            champion_value=float(p1[i]) if served[i] == "champion" or both[i] else None,
            challenger_value=float(p2[i]) if served[i] == "challenger" or both[i] else None,
            champion_latency_ms=1.0 if served[i] == "champion" or both[i] else None,
            challenger_latency_ms=1.0 if served[i] == "challenger" or both[i] else None,
        )
        for i in range(n)
    ]
    store.pairs.insert_many(records)
    store.labels.upsert_many(deployment_id, [(f"q{i}", 0, float(y[i])) for i in range(n)])
    from controller.loop.measure import LATENCY

    a = step_aggregates(
        store.db,
        rollout_id=rollout_id,
        step=3,
        cohort="served",
        task="regression",
        label_cutoff=T0,
        latency=LATENCY,
    )
    e1, e2 = np.abs(p1 - y), np.abs(p2 - y)
    assert a.diff_n == int(both.sum())
    np.testing.assert_allclose(
        a.pair_abs,
        [e1[both].sum(), (e1[both] ** 2).sum(), e2[both].sum(), (e2[both] ** 2).sum(), (e1 * e2)[both].sum()],
        rtol=1e-9,
    )
    # cluster sums of the challenger's own rows, by routing key
    mine = served == "challenger"
    keys = np.unique(key[mine])
    m_k = np.array([np.sum(mine & (key == k)) for k in keys], dtype=float)
    a_k = np.array([e2[mine & (key == k)].sum() for k in keys])
    c = a.clusters["abs_error.challenger"]
    assert c.clusters == keys.size and c.rows == m_k.sum()
    assert (c.mm, c.ma, c.aa) == pytest.approx(
        (np.dot(m_k, m_k), np.dot(m_k, a_k), np.dot(a_k, a_k)), rel=1e-9
    )
    # paired clusters: a = challenger's |error|, b = champion's, over rows both scored
    keys = np.unique(key[both])
    a_k = np.array([e2[both & (key == k)].sum() for k in keys])
    b_k = np.array([e1[both & (key == k)].sum() for k in keys])
    p = a.clusters["abs_error.paired"]
    assert p.clusters == keys.size and p.ab == pytest.approx(np.dot(a_k, b_k), rel=1e-9)
    # catastrophic errors: above the upper edge of the log bucket of the champion's 99th percentile
    t = a.error_tail
    assert t is not None
    base = e1[(served == "champion")]
    assert np.mean(base <= t.cap) >= 0.99 and t.cap <= np.quantile(base, 0.99, method="higher") * 1.02 + 1e-9
    assert (t.champion_n, t.champion_above) == (base.size, int(np.sum(base > t.cap)))
    assert t.challenger_above == int(np.sum(e2[mine] > t.cap))
    assert (t.worse, t.better) == (
        int(np.sum(both & (e2 > t.cap) & (e1 <= t.cap))),
        int(np.sum(both & (e1 > t.cap) & (e2 <= t.cap))),
    )
    # the paired cohort of a canary step, clustered by routing key: same pairs, same key clusters
    pa = step_aggregates(
        store.db,
        rollout_id=rollout_id,
        step=3,
        cohort="paired",
        task="regression",
        label_cutoff=T0,
        latency=LATENCY,
        cluster_by="routing_key",
    )
    assert pa.diff_n == a.diff_n and pa.clusters["abs_error.paired"] == p
    by_request = step_aggregates(
        store.db,
        rollout_id=rollout_id,
        step=3,
        cohort="paired",
        task="regression",
        label_cutoff=T0,
        latency=LATENCY,
    )
    assert by_request.clusters["abs_error.paired"].clusters == int(both.sum())  # one row per request
    m = metrics_from_aggregates(a, task="regression", challenger_weight=0.25, paired=True)
    assert m.paired_abs_errors is not None and m.paired_abs_errors.n == int(both.sum())
    unpaired = metrics_from_aggregates(a, task="regression", challenger_weight=0.25)
    assert unpaired.paired_abs_errors is None and unpaired.challenger_abs_error is not None


@pytest.mark.parametrize("cohort", ["paired", "served"])
def test_both_arms_histograms_from_one_scan_are_each_arms_own(store: Store, cohort: str) -> None:
    """Latency and class histograms are read for both arms in one GROUP BY; each arm's must be the one
    of its own GROUP BY (``latency_histogram``) and of its own rows (classes), also in the served cohort
    where the arms' rows differ."""
    deployment_id, rollout_id = _deploy(store, "classification")
    rng = np.random.default_rng(29)
    records = []
    for i in range(400):
        arm = "champion" if rng.random() < 0.6 else "challenger"
        size = int(rng.integers(1, 4))
        fails = {a: bool(rng.random() < 0.1) for a in ("champion", "challenger")}
        skipped = bool(rng.random() < 0.1)
        latencies = {a: float(rng.lognormal(2 if a == "champion" else 2.5, 1.0)) for a in fails}
        for row in range(size):
            arms: dict[str, Any] = {}
            for a in ("champion", "challenger"):
                if a != arm and skipped:
                    arms.update({f"{a}_status": "skipped", "skip_reason": "shed"})
                elif fails[a]:
                    arms.update({f"{a}_error": "RuntimeError: boom", f"{a}_latency_ms": latencies[a]})
                else:
                    arms.update({f"{a}_class": str(rng.integers(0, 3)), f"{a}_latency_ms": latencies[a]})
            records.append(
                PairRecord(
                    request_id=f"h{i}", row_index=row, deployment_id=deployment_id, rollout_id=rollout_id,
                    step=0, received_at=T0, routing_key_hash=i % 50, served_arm=arm, champion_version_id=1,
                    challenger_version_id=2, **arms,
                )
            )  # fmt: skip
    store.pairs.insert_many(records)
    from sqlalchemy import and_

    from controller.loop.measure import LATENCY
    from storage.analytics import FIRST_ROW, P, latency_histogram, ran

    a = step_aggregates(
        store.db, rollout_id=rollout_id, step=0, cohort=cohort, task="classification",  # type: ignore[arg-type]
        label_cutoff=None, latency=LATENCY,
    )  # fmt: skip
    both_ran = and_(ran("champion"), ran("challenger"))
    for arm, got in (("champion", a.champion), ("challenger", a.challenger)):
        member = both_ran if cohort == "paired" else and_(P.served_arm == arm, ran(arm))
        where = and_(P.rollout_id == rollout_id, P.step == 0, FIRST_ROW, member)
        with store.db.connection() as conn:
            assert got.latency == latency_histogram(conn, where, arm, LATENCY), arm
        assert sum(got.latency.values()) == got.n and got.n > 0
        counted = [
            r
            for r in records
            if getattr(r, f"{arm}_class") is not None
            and (
                r.champion_class is not None and r.challenger_class is not None  # both answered
                if cohort == "paired"
                else r.served_arm == arm
            )
        ]
        expected: dict[str, int] = {}
        for r in counted:
            expected[getattr(r, f"{arm}_class")] = expected.get(getattr(r, f"{arm}_class"), 0) + 1
        assert got.classes == expected, arm
