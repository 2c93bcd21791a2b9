"""A whole rollout of a 3-class model judged on its probabilities (both databases).

Real fitted iris pipelines, registered as artifacts, answer through the router's in-process backend
(class, top probability and the whole vector, as the router records them); labels arrive as the
feedback endpoint stores them; the control loop runs with a fake clock. The challenger is the
champion at temperature 4: every row keeps its class — accuracy, agreement and every confusion metric
are equal — but its probabilities are badly calibrated, which only the proper scores see.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import irispipes
import mlpipes
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from controller.core import metrics as q
from controller.loop import actions
from controller.loop.control import evaluate_once
from controller.registry import offline_metrics
from controller.reports.build import build_report
from router.backends import InProcessBackend
from storage import Store
from storage.entities import PairRecord

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
_ids = itertools.count()


def _traffic(store: Store, backends: dict[str, InProcessBackend], n: int, seed: int, now: datetime) -> None:
    r = store.rollouts.latest(store.deployments.get("iris").id)
    assert r is not None
    frame, species = irispipes.iris_frame(n, seed=seed)
    answers = {arm: b.predict(frame) for arm, b in backends.items()}
    records, labels = [], []
    for i in range(n):
        number = next(_ids)
        out: dict[str, Any] = {}
        for arm, p in answers.items():
            assert p.scores is not None and p.probabilities is not None
            out |= {f"{arm}_class": str(p.outputs[i]), f"{arm}_score": p.scores[i],
                    f"{arm}_proba": p.probabilities[i], f"{arm}_latency_ms": 2.0}  # fmt: skip
        records.append(
            PairRecord(
                request_id=f"i-{number}", row_index=0, deployment_id=r.deployment_id, rollout_id=r.id,
                step=r.step_index, received_at=now, routing_key_hash=number, served_arm="champion",
                champion_version_id=r.champion_id, challenger_version_id=r.challenger_id, **out,
            )
        )  # fmt: skip
        labels.append((f"i-{number}", 0, str(species[i])))
    store.pairs.insert_many(records)
    store.labels.upsert_many(r.deployment_id, labels, now=now)


def test_a_challenger_with_equal_accuracy_but_miscalibrated_probabilities_is_rolled_back_on_log_loss(
    store: Store, tmp_path: Path
) -> None:
    model = irispipes.fit(LogisticRegression(max_iter=500))
    champion = irispipes.register(store, tmp_path, version="1", model=model, holdout=True)
    tempered = irispipes.Tempered(model, temperature=4.0).fit(None)
    challenger = irispipes.register(store, tmp_path, version="2", model=tempered, holdout=True)
    mlpipes.deploy(store, "iris", champion)
    backends = {
        "champion": InProcessBackend(champion, trust_pickle=True),
        "challenger": InProcessBackend(challenger, trust_pickle=True),
    }
    policy = {
        "mode": "shadow",
        "shadow": {"min_pairs": 500},
        "metrics": {
            "log_loss": {"role": "guardrail", "margin": 0.05},
            "roc_auc": {"role": "informational", "horizon": 300},
        },
    }
    actions.start_rollout(store, "iris", "iris:2", actor="alice", policy=policy, now=T0)
    now = T0
    for tick in range(8):
        r = store.rollouts.latest(store.deployments.get("iris").id)
        assert r is not None
        if not r.active:
            break
        if r.phase != "pending":
            _traffic(store, backends, 400, seed=100 + tick, now=now)
        now += timedelta(seconds=60)
        evaluate_once(store, now=now)
    final = store.rollouts.latest(store.deployments.get("iris").id)
    assert final is not None and final.phase == "rolled_back"
    verdicts = {v["gate"]: v for v in store.events.list(rollout_id=final.id)[-1].details["verdicts"]}
    assert verdicts["log_loss"]["outcome"] == "fail"
    assert verdicts["log_loss"]["effect"] > 0.05  # the tempered probabilities cost log loss
    assert verdicts["accuracy"]["outcome"] != "fail", "accuracy alone would not have caught it"
    assert verdicts["balanced_accuracy"]["outcome"] != "fail"
    assert verdicts["brier"]["outcome"] != "no-data"  # informational, measured from the same vectors
    assert "macro one-vs-rest" in verdicts["roc_auc"]["reason"]  # tested at its horizon (300 of 400 rows)
    assert store.deployments.get("iris").champion_id == champion.id
    # online versus offline: the registered holdout values (sklearn's multi-class definitions) sit beside
    # the online ones; the champion's online log loss reproduces its offline one
    rows = {m["gate"]: m for m in build_report(store, "iris")["quality"]["metrics"]}
    for gate in ("log_loss", "brier", "roc_auc"):
        assert rows[gate]["champion"]["offline"] == champion.offline_metrics[gate]
        assert rows[gate]["challenger"]["offline"] == challenger.offline_metrics[gate]
    assert rows["log_loss"]["champion"]["versus_offline"] == "reproduced"
    assert rows["log_loss"]["challenger"]["offline"] > rows["log_loss"]["champion"]["offline"] + 0.2


def test_offline_multiclass_metrics_use_the_online_definitions() -> None:
    """The registered holdout values equal what the gates compute online from the same rows."""
    model = irispipes.fit(LogisticRegression(max_iter=500))
    frame, species = irispipes.iris_frame(500, seed=41)
    offline = offline_metrics(model, "classification", frame, species)
    proba = model.predict_proba(frame)
    codes = np.searchsorted(model.classes_, species)
    p_true = np.clip(proba[np.arange(len(codes)), codes], q.EPS, 1 - q.EPS)
    assert offline["log_loss"] == pytest.approx(float(np.mean(-np.log(p_true))), abs=1e-12)
    hits = np.eye(3)[codes]
    assert offline["brier"] == pytest.approx(float(np.mean(((proba - hits) ** 2).sum(axis=1))), abs=1e-12)
    assert offline["roc_auc"] == pytest.approx(q.macro_ovr_auc(codes, proba), abs=1e-12)
