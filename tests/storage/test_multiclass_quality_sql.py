"""Multi-class classifiers: the stored probability vectors round-trip, and the SQL proper scores and the
fixed-horizon macro one-vs-rest AUC equal scikit-learn on the same rows (both databases)."""

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
from storage.quality import quality_aggregates

T0 = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
N = 400
CLASSES = ("setosa", "versicolor", "virginica")


def _rollout(store: Store) -> int:
    v1, v2 = (
        store.pipelines.add(
            NewPipelineVersion(
                name="iris", version=v, kind="http", task="classification",
                input_schema=(Column("petal", "float"),), classes=CLASSES, upstream_url="http://127.0.0.1:9/",
                upstream_protocol="v2",
            )
        )
        for v in ("1", "2")
    )  # fmt: skip
    deployment = mlpipes.deploy(store, "iris", v1)
    return store.rollouts.create(
        deployment_id=deployment.id, challenger_id=v2.id, mode="shadow", policy={}, created_by="t",
        phase="shadowing", canary_weight=0.0, shadow_rate=1.0,
    ).id  # fmt: skip


def _proba(y: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    logits = strength * np.eye(3)[y] + rng.normal(0, 1.0, (y.size, 3))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _vector(p: np.ndarray) -> dict[str, float]:
    return {c: float(v) for c, v in zip(CLASSES, p, strict=True)}


def _write(
    store: Store, rollout_id: int, served: np.ndarray, p1: np.ndarray, p2: np.ndarray, y: np.ndarray
) -> None:
    deployment_id = store.rollouts.get(rollout_id).deployment_id
    records = []
    for i in range(N):
        records.append(
            PairRecord(
                request_id=f"r{i}", row_index=0, deployment_id=deployment_id, rollout_id=rollout_id, step=0,
                received_at=T0 + timedelta(seconds=i), routing_key_hash=i, served_arm=str(served[i]),
                champion_version_id=None, challenger_version_id=None, champion_latency_ms=1.0,
                challenger_latency_ms=1.0, champion_class=CLASSES[int(p1[i].argmax())],
                challenger_class=CLASSES[int(p2[i].argmax())], champion_score=float(p1[i].max()),
                challenger_score=float(p2[i].max()), champion_proba=_vector(p1[i]), challenger_proba=_vector(p2[i]),
            )
        )  # fmt: skip
    store.pairs.insert_many(records)
    store.labels.upsert_many(deployment_id, [(f"r{i}", 0, CLASSES[int(y[i])]) for i in range(N)], now=T0)


def _data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=N, p=[0.5, 0.3, 0.2])
    p1 = _proba(y, 2.5, rng)
    p1[:5] = np.eye(3)[(y[:5] + 1) % 3]  # certain and wrong: log loss is clipped at -ln(eps)
    return y, p1, _proba(y, 1.0, rng)


def test_probability_vectors_round_trip_through_storage(store: Store) -> None:
    y, p1, p2 = _data(3)
    rollout = _rollout(store)
    _write(store, rollout, np.full(N, "champion"), p1, p2, y)
    stored = {p.request_id: p for p in store.pairs.list(rollout_id=rollout, limit=N)}
    assert stored["r7"].champion_proba == pytest.approx(_vector(p1[7]), abs=1e-15)
    assert stored["r7"].challenger_proba == pytest.approx(_vector(p2[7]), abs=1e-15)


def test_paired_multiclass_proper_scores_and_auc_match_scikit_learn(store: Store) -> None:
    y, p1, p2 = _data(4)
    rollout = _rollout(store)
    _write(store, rollout, np.full(N, "champion"), p1, p2, y)
    agg = quality_aggregates(
        store.db, rollout_id=rollout, step=0, cohort="paired", task="classification",
        label_cutoff=T0 + timedelta(days=1), classes=CLASSES, auc_horizon=300,
    )  # fmt: skip
    stats = stats_from_aggregates(agg, task="classification", classes=CLASSES, mode="shadow")
    labels = [CLASSES[int(v)] for v in y]
    ll, brier = stats.log_loss, stats.brier
    assert ll is not None and brier is not None and ll.nd == N and brier.nd == N
    assert ll.s1 / ll.n1 == pytest.approx(skm.log_loss(labels, p1, labels=list(CLASSES)), abs=1e-9)
    assert ll.s2 / ll.n2 == pytest.approx(skm.log_loss(labels, p2, labels=list(CLASSES)), abs=1e-9)
    assert brier.s1 / brier.n1 == pytest.approx(
        skm.brier_score_loss(labels, p1, labels=list(CLASSES)), abs=1e-9
    )
    assert brier.s2 / brier.n2 == pytest.approx(
        skm.brier_score_loss(labels, p2, labels=list(CLASSES)), abs=1e-9
    )
    # the paired difference is the per-row difference's mean
    row_ll = -np.log(np.clip(p2[np.arange(N), y], q.EPS, 1 - q.EPS)) + np.log(
        np.clip(p1[np.arange(N), y], q.EPS, 1 - q.EPS)
    )
    assert ll.sd / ll.nd == pytest.approx(row_ll.mean(), abs=1e-9)
    auc = stats.auc
    assert auc is not None and auc.classes == CLASSES and auc.available == N and len(auc.labels) == 300
    a1, a2, _ = q.macro_ovr_delong(auc.labels, auc.champion_proba, auc.challenger_proba)
    assert a1 == pytest.approx(skm.roc_auc_score(y[:300], p1[:300], multi_class="ovr"), abs=1e-9)
    assert a2 == pytest.approx(skm.roc_auc_score(y[:300], p2[:300], multi_class="ovr"), abs=1e-9)


def test_served_multiclass_proper_scores_match_scikit_learn_per_arm(store: Store) -> None:
    y, p1, p2 = _data(5)
    served = np.where(np.random.default_rng(6).random(N) < 0.5, "challenger", "champion")
    rollout = _rollout(store)
    _write(store, rollout, served, p1, p2, y)
    agg = quality_aggregates(
        store.db, rollout_id=rollout, step=0, cohort="served", task="classification",
        label_cutoff=T0 + timedelta(days=1), classes=CLASSES, auc_horizon=100,
    )  # fmt: skip
    stats = stats_from_aggregates(agg, task="classification", classes=CLASSES, mode="canary")
    labels = np.array([CLASSES[int(v)] for v in y])
    one, two = served == "champion", served == "challenger"
    ll = stats.log_loss
    assert ll is not None and (ll.n1, ll.n2) == (one.sum(), two.sum())
    assert ll.s1 / ll.n1 == pytest.approx(skm.log_loss(labels[one], p1[one], labels=list(CLASSES)), abs=1e-9)
    assert ll.s2 / ll.n2 == pytest.approx(skm.log_loss(labels[two], p2[two], labels=list(CLASSES)), abs=1e-9)
    assert stats.brier is not None
    assert stats.brier.s2 / stats.brier.n2 == pytest.approx(
        skm.brier_score_loss(labels[two], p2[two], labels=list(CLASSES)), abs=1e-9
    )
    auc = stats.auc
    assert auc is not None and not auc.paired
    assert q.macro_ovr_auc(auc.challenger_labels, auc.challenger_proba) == pytest.approx(
        skm.roc_auc_score(y[two][:100], p2[two][:100], multi_class="ovr"), abs=1e-9
    )
