"""storage.quality's SQL aggregates equal the metrics computed from the same rows in numpy / scikit-learn."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import mlpipes
import numpy as np
import pytest
from sklearn import metrics as skm

from controller.core import metrics as q
from controller.loop.quality import stats_from_aggregates
from storage import Store
from storage.entities import Column, NewPipelineVersion, PairRecord
from storage.quality import SegmentColumn, quality_aggregates

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
N = 400


def _deployment(store: Store, task: str) -> int:
    v1, v2 = (
        store.pipelines.add(
            NewPipelineVersion(
                name="m", version=v, kind="http", task=task, input_schema=(Column("age", "float"),),
                classes=(0, 1) if task == "classification" else None, upstream_url="http://127.0.0.1:9/",
                upstream_protocol="v2",
            )
        )
        for v in ("1", "2")
    )  # fmt: skip
    deployment = mlpipes.deploy(store, "m", v1)
    rollout = store.rollouts.create(
        deployment_id=deployment.id, challenger_id=v2.id, mode="shadow", policy={}, created_by="t",
        phase="shadowing", canary_weight=0.0, shadow_rate=1.0,
    )  # fmt: skip
    return rollout.id


def _write(store: Store, rollout_id: int, rows: list[dict[str, object]], labels: list[tuple]) -> None:
    deployment_id = store.rollouts.get(rollout_id).deployment_id
    store.pairs.insert_many(
        [
            PairRecord(
                request_id=f"r{i}", row_index=0, deployment_id=deployment_id, rollout_id=rollout_id, step=0,
                received_at=T0 + timedelta(seconds=i), routing_key_hash=i, champion_version_id=None,
                challenger_version_id=None, champion_latency_ms=1.0, challenger_latency_ms=1.0,
                **row,  # type: ignore[arg-type]
            )
            for i, row in enumerate(rows)
        ]
    )  # fmt: skip
    store.labels.upsert_many(deployment_id, labels, now=T0)


def test_paired_classification_aggregates_match_scikit_learn(store: Store) -> None:
    rng = np.random.default_rng(11)
    y = rng.random(N) < 0.3
    s1 = np.clip(0.3 + 0.4 * (y - 0.3) + rng.normal(0, 0.2, N), 0.0, 1.0)
    s2 = np.clip(0.3 + 0.2 * (y - 0.3) + rng.normal(0, 0.25, N), 0.0, 1.0)
    a, b = s1 > 0.5, s2 > 0.5
    age = rng.choice([20.0, 40.0, 70.0], N)
    rollout = _deployment(store, "classification")
    rows = [
        {"served_arm": "champion", "champion_class": str(int(a[i])), "challenger_class": str(int(b[i])),
         "champion_score": float(s1[i]), "challenger_score": float(s2[i]), "raw_input": {"age": float(age[i])}}
        for i in range(N)
    ]  # fmt: skip
    _write(store, rollout, rows, [(f"r{i}", 0, int(y[i])) for i in range(N)])
    agg = quality_aggregates(
        store.db, rollout_id=rollout, step=0, cohort="paired", task="classification",
        label_cutoff=T0 + timedelta(days=1), positive="1", auc_horizon=300,
        segments=(SegmentColumn("age", (30.0, 60.0)),),
    )  # fmt: skip
    stats = stats_from_aggregates(agg, task="classification", classes=("0", "1"), mode="shadow")
    m1, m2 = stats.confusion.arm_matrices()  # type: ignore[union-attr]
    assert m1.tolist() == skm.confusion_matrix(y, a).tolist()
    assert m2.tolist() == skm.confusion_matrix(y, b).tolist()
    ll = stats.log_loss
    assert ll is not None and ll.nd == N
    assert ll.s1 / ll.n1 == pytest.approx(skm.log_loss(y, s1), abs=1e-9)
    assert ll.s2 / ll.n2 == pytest.approx(skm.log_loss(y, s2), abs=1e-9)
    assert stats.brier is not None
    assert stats.brier.s2 / stats.brier.n2 == pytest.approx(skm.brier_score_loss(y, s2), abs=1e-9)
    auc = stats.auc
    assert auc is not None and auc.available == N and len(auc.labels) == 300  # the first 300 by arrival
    assert q.roc_auc(auc.labels, auc.champion) == pytest.approx(
        skm.roc_auc_score(y[:300], s1[:300]), abs=1e-12
    )
    by_segment = {s.value: s for s in stats.segments}
    assert set(by_segment) == {"<30", "[30, 60)", ">=60"}
    young = age < 30
    assert by_segment["<30"].confusion is not None
    assert (
        by_segment["<30"].confusion.arm_matrices()[1].tolist()
        == skm.confusion_matrix(y[young], b[young]).tolist()
    )


def test_served_outcomes_and_regression_losses_match_numpy(store: Store) -> None:
    rng = np.random.default_rng(12)
    target = rng.normal(10, 3, N)
    v1, v2 = target + rng.normal(0, 1, N), target + rng.normal(0.3, 1.5, N)
    served = np.where(rng.random(N) < 0.5, "challenger", "champion")
    revenue = rng.normal(5, 2, N)
    visits = rng.integers(1, 4, N).astype(float)
    rollout = _deployment(store, "regression")
    rows = [
        {"served_arm": str(served[i]), "champion_value": float(v1[i]), "challenger_value": float(v2[i])}
        for i in range(N)
    ]
    _write(
        store,
        rollout,
        rows,
        [(f"r{i}", 0, float(target[i]), float(revenue[i]), float(visits[i])) for i in range(N)],
    )
    agg = quality_aggregates(
        store.db, rollout_id=rollout, step=0, cohort="served", task="regression",
        label_cutoff=T0 + timedelta(days=1), quantiles=(0.9,), outcome=True,
    )  # fmt: skip
    stats = stats_from_aggregates(agg, task="regression", classes=(), mode="canary")
    champ, chal = served == "champion", served == "challenger"
    sq = stats.squared_error
    assert sq is not None and sq.paired_n == 0
    r1, r2, *_ = sq.difference() or ()
    assert r1 == pytest.approx(np.sqrt(skm.mean_squared_error(target[champ], v1[champ])), abs=1e-9)
    assert r2 == pytest.approx(np.sqrt(skm.mean_squared_error(target[chal], v2[chal])), abs=1e-9)
    pin = stats.pinball[0.9]
    assert pin.s2 / pin.n2 == pytest.approx(
        skm.mean_pinball_loss(target[chal], v2[chal], alpha=0.9), abs=1e-9
    )
    o = stats.outcome
    assert o is not None and (o.n1, o.n2) == (int(champ.sum()), int(chal.sum()))
    assert o.s2 / o.n2 == pytest.approx(revenue[chal].mean(), abs=1e-9)
    assert o.ratio1 is not None and o.ratio2 is not None
    per_visit, _ = q.ratio_of_sums(*o.ratio1)
    assert per_visit == pytest.approx(revenue[champ].sum() / visits[champ].sum(), abs=1e-12)


def test_served_confusion_counts_each_arm_on_the_requests_it_answered(store: Store) -> None:
    rng = np.random.default_rng(13)
    y = rng.random(N) < 0.2
    a, b = np.where(rng.random(N) < 0.85, y, ~y), np.zeros(N, dtype=bool)  # the challenger never says 1
    served = np.where(rng.random(N) < 0.3, "challenger", "champion")
    rollout = _deployment(store, "classification")
    rows = [
        {"served_arm": str(served[i]), "champion_class": str(int(a[i])), "challenger_class": str(int(b[i]))}
        for i in range(N)
    ]
    _write(store, rollout, rows, [(f"r{i}", 0, int(y[i])) for i in range(N)])
    agg = quality_aggregates(
        store.db, rollout_id=rollout, step=0, cohort="served", task="classification",
        label_cutoff=T0 + timedelta(days=1), positive="1",
    )  # fmt: skip
    stats = stats_from_aggregates(agg, task="classification", classes=("0", "1"), mode="canary")
    assert stats.confusion is not None and stats.confusion.paired is None
    m1, m2 = stats.confusion.arm_matrices()
    champ, chal = served == "champion", served == "challenger"
    assert m1.tolist() == skm.confusion_matrix(y[champ], a[champ], labels=[False, True]).tolist()
    assert m2.tolist() == skm.confusion_matrix(y[chal], b[chal], labels=[False, True]).tolist()
    spec = q.MetricSpec(metric="balanced_accuracy", role="required", margin=0.05, min_samples=10)
    est = q.estimates(stats, q.QualityPolicy(gates=(spec,)))[0]
    assert est.challenger == pytest.approx(skm.balanced_accuracy_score(y[chal], b[chal]), abs=1e-12)
    assert est.se**2 == pytest.approx(est.se_champion**2 + est.se_challenger**2, rel=1e-12)  # unpaired
