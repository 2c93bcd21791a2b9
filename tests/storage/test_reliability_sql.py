"""The report's multi-class reliability sums in SQL equal sklearn's ``calibration_curve`` (both databases).

Twelve classes (more than the report's ten panels), vectors with a class left out (it counts as 0),
probabilities exactly on bin edges (0, 0.1, 0.5, 1: sklearn's bins hold edge_i < p <= edge_i+1, and
the first takes 0), rows without a label, a failed challenger, and a row of another rollout.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import mlpipes
import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from storage import Store
from storage import report_queries as rq
from storage.entities import Column, NewPipelineVersion, PairRecord

T0 = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
CLASSES = tuple(f"k{i}" for i in range(12))
N = 600


def _rollouts(store: Store) -> tuple[int, int]:
    v1, v2 = (
        store.pipelines.add(
            NewPipelineVersion(
                name="many", version=v, kind="http", task="classification", input_schema=(Column("x", "float"),),
                classes=CLASSES, upstream_url="http://127.0.0.1:9/", upstream_protocol="v2",
            )
        )
        for v in ("1", "2")
    )  # fmt: skip
    deployment = mlpipes.deploy(store, "many", v1)
    ids = []
    for phase in ("rolled_back", "shadowing"):
        ids.append(
            store.rollouts.create(
                deployment_id=deployment.id, challenger_id=v2.id, mode="shadow", policy={}, created_by="t",
                phase=phase, canary_weight=0.0, shadow_rate=1.0,
            ).id
        )  # fmt: skip
    return ids[0], ids[1]


def _vectors(rng: np.random.Generator, y: np.ndarray, strength: float) -> np.ndarray:
    logits = strength * np.eye(len(CLASSES))[y] + rng.normal(0, 1.0, (y.size, len(CLASSES)))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    # rows exactly on bin edges, summing to 1
    p[0] = 0.0
    p[0, :3] = (0.1, 0.4, 0.5)
    p[1] = 0.0
    p[1, y[1]] = 1.0
    p[2] = 0.0
    p[2, [0, 1, 2, 3]] = (0.3, 0.2, 0.2, 0.3)
    return p


def test_reliability_bins_equal_sklearns_calibration_curve(store: Store) -> None:
    other, rollout_id = _rollouts(store)
    deployment_id = store.rollouts.get(rollout_id).deployment_id
    rng = np.random.default_rng(4)
    y = rng.choice(
        len(CLASSES), size=N, p=np.linspace(2.0, 0.2, len(CLASSES)) / np.linspace(2.0, 0.2, 12).sum()
    )
    p = {"champion": _vectors(rng, y, 3.0), "challenger": _vectors(rng, y, 1.0)}
    records, labels, kept = [], [], []
    for i in range(N):
        arms = {}
        for arm in ("champion", "challenger"):
            vector = {c: float(v) for c, v in zip(CLASSES, p[arm][i], strict=True)}
            if i % 13 == 4:  # a class left out of the vector: probability 0
                vector.pop(CLASSES[11], None)
                p[arm][i, 11] = 0.0
            arms |= {f"{arm}_class": CLASSES[int(p[arm][i].argmax())], f"{arm}_score": float(p[arm][i].max()),
                     f"{arm}_proba": vector, f"{arm}_latency_ms": 1.0}  # fmt: skip
        failed = i % 17 == 6
        if failed:
            arms |= {"challenger_class": None, "challenger_score": None, "challenger_proba": None,
                     "challenger_error": "boom", "challenger_status": "error"}  # fmt: skip
        records.append(
            PairRecord(
                request_id=f"r{i}", row_index=0, deployment_id=deployment_id, rollout_id=rollout_id, step=0,
                received_at=T0 + timedelta(seconds=i), routing_key_hash=i, served_arm="champion",
                champion_version_id=None, challenger_version_id=None, **arms,
            )
        )  # fmt: skip
        if i % 9 != 2:
            labels.append((f"r{i}", 0, CLASSES[int(y[i])]))
            if not failed:
                kept.append(i)
    # a labelled row of the earlier rollout never counts
    records.append(
        PairRecord(
            request_id="old", row_index=0, deployment_id=deployment_id, rollout_id=other, step=0, received_at=T0,
            routing_key_hash=1, served_arm="champion", champion_version_id=None, challenger_version_id=None,
            champion_class="k0", challenger_class="k0", champion_proba={"k0": 0.95}, challenger_proba={"k0": 0.95},
        )
    )  # fmt: skip
    labels.append(("old", 0, "k0"))
    store.pairs.insert_many(records)
    store.labels.upsert_many(deployment_id, labels, now=T0)

    shown = ["k0", "k3", "k11"]
    out = rq.label_proba_reliability(store.db, rollout_id, CLASSES, shown=shown, bins=10)
    assert set(out) == {"top", *shown}
    yk = y[kept]
    for arm in ("champion", "challenger"):
        pk = p[arm][kept]
        panels = {"top": (pk.argmax(axis=1) == yk, pk.max(axis=1))}
        panels |= {c: (yk == CLASSES.index(c), pk[:, CLASSES.index(c)]) for c in shown}
        for name, (events, prob) in panels.items():
            bins = out[name][arm]
            prob_true, prob_pred = calibration_curve(events, prob, n_bins=10, strategy="uniform")
            cells = [bins[b] for b in sorted(bins)]
            assert sum(c[2] for c in cells) == len(kept), name
            assert [c[1] / c[2] for c in cells] == pytest.approx(list(prob_true), abs=1e-12), name
            assert [c[0] / c[2] for c in cells] == pytest.approx(list(prob_pred), abs=1e-9), name
            # the edge rows sit where sklearn puts them: p = 0.1 in bin 0, p = 1 in bin 9
            counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], prob), minlength=10)
            assert {b: c[2] for b, c in bins.items()} == {b: int(n) for b, n in enumerate(counts) if n}, name
